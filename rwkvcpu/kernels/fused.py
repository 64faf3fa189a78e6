"""Fused small-T (decode) kernels: the element-wise and low-rank parts of a layer in one call each.

At decode a layer's projections take a few hundred microseconds; the ~40 NumPy operations and 8
low-rank BLAS products around them cost about as much again in call overhead (0.1B: ~8 ms of a
~21 ms token).  These kernels do the same arithmetic as the unfused path in ``Model._cpu_layers``
(which stays in use for prefill and for recording intermediates), in float32, with decay and state
float32 as everywhere else.  In ``numerics="llama"`` the low-rank inputs are rounded in the kernel
as llama.cpp rounds them (``actquant.round_rows``; tests/test_numerics.py checks that decode path
against llama.cpp's logits).  The unfused path is their NumPy
reference: ``tests/test_model.py::test_fused_decode_path_matches_unfused`` runs both on every
fixture model and compares logits and states.

Shapes: x rows [T, C]; low-rank matrices as the checkpoint holds them (``w1`` [D, C], ``w2`` [C, D]).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .actquant import round_rows
from .cpu import _normalize
from .reference import DECAY_SCALE
from .simd import dot_f32 as _dot

FLAGS = {"reassoc", "contract"}


@njit(cache=True, inline="always")
def _sig(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


@njit(cache=True, parallel=True, fastmath=FLAGS)
def _down(M, X, act, out):
    """out[t, d] = act(M[d] . X[t])  (M [D, C]); act 0: none, 1: tanh, 2: sigmoid.
    Each row of M is read once for all T rows of X."""
    for d in prange(M.shape[0]):
        for t in range(X.shape[0]):
            acc = _dot(M[d], X[t])
            if act == 1:
                acc = np.tanh(acc)
            elif act == 2:
                acc = _sig(acc)
            out[t, d] = acc


@njit(cache=True, parallel=True, fastmath=FLAGS)
def _up(M2, H, bias, kind, out):
    """out[t, c] = f(bias[c] + M2[c] . H[t]) over c in parallel (M2 [C, D]).
    kind 0: decay exp(-DECAY_SCALE * sigmoid(.)); 1: sigmoid(.); 2: plain product (bias ignored)."""
    scale = np.float32(-DECAY_SCALE)
    for c in prange(M2.shape[0]):
        for t in range(H.shape[0]):
            acc = _dot(M2[c], H[t])
            if kind == 0:
                out[t, c] = np.exp(scale * _sig(bias[c] + acc))
            elif kind == 1:
                out[t, c] = _sig(bias[c] + acc)
            else:
                out[t, c] = acc


@njit(cache=True)
def tmix_lora(xa, prev, mixes, w1, w2, w0, a1, a2, a0, v1, v2, v0, g1, g2, has_v, rnd,
              xr, xk, xv, w, a, vg, g):
    """From the normed input xa and its shifted rows prev: the lerped inputs of the r/k/v
    projections (xr, xk, xv) and the low-rank outputs: decay w, in-context rate a, the value
    residual gate vg (when has_v) and the output gate g.  mixes: [6, C] (r, w, k, v, a, g).
    rnd: int64[8], how each low-rank product's input is rounded first (``actquant.round_rows``
    codes for w1 w2 a1 a2 v1 v2 g1 g2; all 0 in exact numerics)."""
    T, C = xa.shape
    xw = np.empty((T, C), dtype=np.float32)
    xaa = np.empty((T, C), dtype=np.float32)
    xg = np.empty((T, C), dtype=np.float32)
    for t in range(T):
        for j in range(C):
            d = prev[t, j] - xa[t, j]
            xr[t, j] = xa[t, j] + d * mixes[0, j]
            xw[t, j] = xa[t, j] + d * mixes[1, j]
            xk[t, j] = xa[t, j] + d * mixes[2, j]
            xv[t, j] = xa[t, j] + d * mixes[3, j]
            xaa[t, j] = xa[t, j] + d * mixes[4, j]
            xg[t, j] = xa[t, j] + d * mixes[5, j]
    round_rows(xw, rnd[0])
    round_rows(xaa, rnd[2])
    round_rows(xg, rnd[6])
    hw = np.empty((T, w1.shape[0]), dtype=np.float32)
    _down(w1, xw, 1, hw)
    round_rows(hw, rnd[1])
    _up(w2, hw, w0, 0, w)
    ha = np.empty((T, a1.shape[0]), dtype=np.float32)
    _down(a1, xaa, 0, ha)
    round_rows(ha, rnd[3])
    _up(a2, ha, a0, 1, a)
    if has_v:
        xvr = xv
        if rnd[4] != 0:                     # xv also feeds the value projection: round a copy
            xvr = xv.copy()
            round_rows(xvr, rnd[4])
        hv = np.empty((T, v1.shape[0]), dtype=np.float32)
        _down(v1, xvr, 0, hv)
        round_rows(hv, rnd[5])
        _up(v2, hv, v0, 1, vg)
    hg = np.empty((T, g1.shape[0]), dtype=np.float32)
    _down(g1, xg, 2, hg)
    round_rows(hg, rnd[7])
    _up(g2, hg, w0, 2, g)


@njit(cache=True, fastmath=FLAGS)
def tmix_prewkv(k, v, v_first, vg, a, k_k, k_a, n_head, eps, has_v, kneg, kb):
    """In place on k and v: the value residual (v += (v_first - v) * vg), then
    kk = L2-normalised (k * k_k) per head, k *= 1 + (a - 1) * k_a; writes the WKV's
    a = -kk (kneg) and b = kk * a (kb)."""
    T, C = k.shape
    N = C // n_head
    for t in range(T):
        if has_v:
            for j in range(C):
                v[t, j] = v[t, j] + (v_first[t, j] - v[t, j]) * vg[t, j]
        for h in range(n_head):
            o = h * N
            s = np.float32(0.0)
            for j in range(N):
                q = k[t, o + j] * k_k[o + j]
                s += q * q
            nrm = max(np.sqrt(s), np.float32(eps))
            for j in range(N):
                kk = k[t, o + j] * k_k[o + j] / nrm
                kneg[t, o + j] = -kk
                kb[t, o + j] = kk * a[t, o + j]
        for j in range(C):
            k[t, j] = k[t, j] * (np.float32(1.0) + (a[t, j] - np.float32(1.0)) * k_a[j])


@njit(cache=True, fastmath=FLAGS)
def tmix_post(y, r, k, v, g, r_k, ln_w, ln_b, n_head, eps, out):
    """out = (GroupNorm(y) + bonus) * g, bonus per head = sum(r * k * r_k) * v."""
    T, C = y.shape
    N = C // n_head
    for t in range(T):
        for h in range(n_head):
            o = h * N
            _normalize(y, t, o, N, ln_w, ln_b, eps, out)
            bonus = np.float32(0.0)
            for j in range(N):
                bonus += r[t, o + j] * k[t, o + j] * r_k[o + j]
            for j in range(N):
                out[t, o + j] = (out[t, o + j] + bonus * v[t, o + j]) * g[t, o + j]


@njit(cache=True)
def cmix_pre(xf, prev, mix, out):
    """out = xf + (prev - xf) * mix."""
    T, C = xf.shape
    for t in range(T):
        for j in range(C):
            out[t, j] = xf[t, j] + (prev[t, j] - xf[t, j]) * mix[j]


@njit(cache=True)
def relu_sq(h):
    """In place: h = max(h, 0) ** 2."""
    T, F = h.shape
    for t in range(T):
        for j in range(F):
            q = max(h[t, j], np.float32(0.0))
            h[t, j] = q * q


@njit(cache=True)
def add_into(x, y):
    """In place: x += y."""
    T, C = x.shape
    for t in range(T):
        for j in range(C):
            x[t, j] += y[t, j]
