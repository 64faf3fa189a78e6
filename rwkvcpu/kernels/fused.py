"""Fused layer kernels: everything of a layer except its six projections, in three calls.

A decode layer is ``tmix_in`` (layer norm, token shift, the six lerps, all eight low-rank
products), the r/k/v projections, ``tmix_wkv`` (value residual, key prep, WKV, group norm, bonus,
gate: one task per (sequence, head)), the output projection, ``cmix_in`` (residual, norm, shift,
lerp) and the channel mix's two projections: 11 calls and 9 parallel regions, where the NumPy body
takes ~60 operations.  Prefill uses ``tmix_wkv`` and ``cmix_in`` after its BLAS projections and
low-rank products.  Same float32 arithmetic as the all-NumPy layer body in ``Model._cpu_layers``
up to summation order and the exp of the gates (``simd.vexp``, <= 1.3 ulp, where the body uses
NumPy's) (the body is used for recording intermediates, and as the reference: ``model.FUSED_T = 0`` and
``model.PREFILL_FUSED = False``; tests/test_model.py compares logits and states on the fixture
models); decay and state float32 as everywhere else.  In ``numerics="llama"`` the low-rank inputs
are rounded in the kernel as llama.cpp rounds them (``actquant.round_rows``; tests/test_numerics.py
checks that decode path against llama.cpp's logits).

Shapes: x rows [T, C]; low-rank matrices as the checkpoint holds them (``w1`` [D, C], ``w2`` [C, D]),
float32 or an F16 file's own bits (uint16).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .actquant import round_rows
from .cpu import _normalize, token_shift, wkv7_step
from .reference import DECAY_SCALE
from .matvec import _act, prefetch_span, tiles2
from .simd import dot_f32 as _dot
from .simd import vadd, vexp, vfma, vload, vload_w, vmul, vsigmoid, vsplat, vstore, vsum8, vzero

FLAGS = {"reassoc", "contract"}


# Compile time: Numba links a called function's code into its caller, and LLVM inlines and
# re-optimizes it at every call site, so a helper called from three places is compiled three
# times: _tmix_prep calls round_rows from one site (a loop, the array chosen by branches) and
# compiles in 1.4 s instead of 4.7.  tmix_in keeps a site per matrix: through one site (the matrix
# chosen by branches), or with one parallel region for both kinds of down task, or with tiles2
# given a non-literal act, it ran 5-30% slower.


@njit(cache=True)
def _tmix_prep(x, ln_w, ln_b, ln_eps, seg_start, seg_len, seg_slot, cache_rows, mixes, has_v, rnd,
               xr, xw, xk, xv, xaa, xg, xvr):
    """tmix_in's element-wise part (no fastmath: the same roundings as the unfused path)."""
    T, C = x.shape
    xa = np.empty((T, C), dtype=np.float32)
    for t in range(T):
        _normalize(x, t, 0, C, ln_w, ln_b, ln_eps, xa)
    prev = np.empty((T, C), dtype=np.float32)
    token_shift(xa, seg_start, seg_len, seg_slot, cache_rows, 0, prev)
    for t in range(T):
        for j in range(C):
            d = prev[t, j] - xa[t, j]
            xr[t, j] = xa[t, j] + d * mixes[0, j]
            xw[t, j] = xa[t, j] + d * mixes[1, j]
            xk[t, j] = xa[t, j] + d * mixes[2, j]
            xv[t, j] = xa[t, j] + d * mixes[3, j]
            xaa[t, j] = xa[t, j] + d * mixes[4, j]
            xg[t, j] = xa[t, j] + d * mixes[5, j]
    rounded_v = has_v and rnd[4] != 0
    if rounded_v:                           # xv also feeds the value projection: round a copy
        for t in range(T):                  # (a loop: ``xvr[:] = xv`` compiles NumPy's setitem, 3 s)
            for j in range(C):
                xvr[t, j] = xv[t, j]
    for i in range(4 if rounded_v else 3):  # one call site (see above)
        round_rows(xw if i == 0 else (xaa if i == 1 else (xg if i == 2 else xvr)), rnd[(0, 2, 6, 4)[i]])


@njit(cache=True, inline="always")
def _gate8(decay, x, b, scale):
    s = vsigmoid(vadd(b, x))
    return vexp(vmul(vsplat(scale), s)) if decay else s


@njit(cache=True, inline="always")
def _gate(decay, row, bias, c0, c1, scale):
    """row[c] = sigmoid(bias[c] + row[c]) for c in [c0, c1), or exp(scale * that) with decay: 8
    channels per vector (simd.vexp, no libm call); a ragged end goes through the same vector code
    in a padded copy, so every channel gets the same arithmetic."""
    c = c0
    while c + 8 <= c1:
        vstore(row, c, _gate8(decay, vload(row, c), vload(bias, c), scale))
        c += 8
    if c < c1:
        n = c1 - c
        bx = np.zeros(8, dtype=np.float32)
        bb = np.zeros(8, dtype=np.float32)
        bx[:n] = row[c:c1]
        bb[:n] = bias[c:c1]
        vstore(bx, 0, _gate8(decay, vload(bx, 0), vload(bb, 0), scale))
        row[c:c1] = bx[:n]


@njit(cache=True, inline="always")
def _tiles(M, xs, h, d, act, end=-1):
    """h[t, d:d+2] = act(M[d:d+2] . xs[t]) for every row t (rows of M from ``end``, default its
    length, on skipped): ``matvec.tiles2``."""
    n = M.shape[0] if end < 0 else end
    _ahead(M, d)
    tiles2(M[d], M[min(d + 1, n - 1)], xs, h, d, d + 1 < n, act)


LR_AHEAD = 8             # rows: how far ahead tmix_in prefetches its low-rank matrices


@njit(cache=True, inline="always")
def _ahead(M, d):
    """Prefetch rows d + LR_AHEAD and the next of M.  A layer's low-rank matrices (1.8 MB float32
    at 0.1B) come from memory at every token; with several rows of x each row is computed long
    enough that the hardware prefetchers fall behind: tmix_in in a step of 8 sequences (Q4_0,
    llama numerics, Zen 5, alternating processes) 1.76-1.88 -> 1.39-1.71 ms.  (One row of x is at
    the memory's speed already; prefetching tmix_wkv's next state was slower.)"""
    rb = M.shape[1] * M.itemsize
    prefetch_span(M, (d + LR_AHEAD) * rb, 2 * rb)


@njit(cache=True, inline="always", fastmath=FLAGS)
def _up8(M, h, c):
    """(M[c + i] . h for i < 8) as one vector: 8 rows of an up matrix (float32 or f16 bits,
    ``vload_w``) times one row h of a down projection's output, whose length is a multiple of 8.
    The 8 accumulators are reduced together (``vsum8``: 9 shuffles and adds for 8 sums), where
    ``tile2x4`` ends each 64-long row in a horizontal sum of its own."""
    m0, m1, m2, m3 = M[c], M[c + 1], M[c + 2], M[c + 3]
    m4, m5, m6, m7 = M[c + 4], M[c + 5], M[c + 6], M[c + 7]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    a4, a5, a6, a7 = vzero(), vzero(), vzero(), vzero()
    for j in range(0, M.shape[1], 8):
        hv = vload(h, j)
        a0 = vfma(vload_w(m0, j), hv, a0)
        a1 = vfma(vload_w(m1, j), hv, a1)
        a2 = vfma(vload_w(m2, j), hv, a2)
        a3 = vfma(vload_w(m3, j), hv, a3)
        a4 = vfma(vload_w(m4, j), hv, a4)
        a5 = vfma(vload_w(m5, j), hv, a5)
        a6 = vfma(vload_w(m6, j), hv, a6)
        a7 = vfma(vload_w(m7, j), hv, a7)
    return vsum8(a0, a1, a2, a3, a4, a5, a6, a7)


@njit(cache=True, inline="always")
def _up(M, h, out, c0, c1):
    """out[t, c0:c1] = M[c0:c1] . h[t] for every row t of h (batches): 8 output channels at a
    time (``_up8``), where ``tile2x4`` took 2 and ended each short row (D = 32 .. 320) in a
    horizontal sum: tmix_in at T = 8, Q4_K_M 0.1B, 12 layers, 1.11 -> 0.81 ms (Zen 5).  Where M's
    rows or the span are not a multiple of 8 (no released RWKV-7 shape), a dot product per
    channel."""
    c8 = c0 + (c1 - c0) // 8 * 8 if M.shape[1] % 8 == 0 else c0
    rb = M.shape[1] * M.itemsize
    for c in range(c0, c8, 8):
        prefetch_span(M, (c + 8) * rb, 8 * rb)
        for t in range(h.shape[0]):
            vstore(out[t], c, _up8(M, h[t], c))
    for c in range(c8, c1):
        for t in range(h.shape[0]):
            out[t, c] = _dot(M[c], h[t])


GATE_SPAN = 32           # output channels per task of tmix_in's up projections

# Numba's parfor fusion pass looks for parallel loops to merge: tmix_in has none to merge (each
# up loop needs every down result), and the search took 2.5 of its 15 s compile.
NO_FUSION = {"fusion": False}


@njit(cache=True, parallel=NO_FUSION, fastmath=FLAGS)
def tmix_in(x, ln_w, ln_b, ln_eps, seg_start, seg_len, seg_slot, cache_rows, mixes,
            w1, w2, w0, a1, a2, a0, v1, v2, v0, g1, g2, has_v, rnd, xr, xk, xv, w, a, vg, g):
    """The time mix up to its projections, for layer input rows x: layer norm, token shift
    (``cache_rows[slot, :C]`` holds each sequence's previous normed row and is updated), the six
    lerps (mixes: [6, C], r w k v a g) into xr, xk, xv, and the low-rank outputs: decay w,
    in-context rate a, value-residual gate vg (when has_v) and output gate g.
    Low-rank matrices as the checkpoint holds them (w1 [D, C], w2 [C, D]), each float32 or an
    F16 file's own bits (uint16: half the bytes per token; ``simd.vload_w``).
    rnd: int64[8], how each low-rank input is rounded first (``actquant.round_rows`` codes for
    w1 w2 a1 a2 v1 v2 g1 g2; all 0 in exact numerics).  Two parallel regions: every down
    projection, then every up projection (spans of GATE_SPAN output channels) and its gate
    (``simd.vexp``, 8 channels a vector).  T = 1: a dot product per matrix row; batches: the down
    projections in 2 matrix rows x 4 rows of x register tiles (``matvec.tile2x4``), the up ones 8
    output channels at a time (``_up``), each matrix row read once for all T.  (OpenBLAS sgemm
    per thread was no faster at T = 8, and needed float32 copies.)"""
    T, C = x.shape
    xw = np.empty((T, C), dtype=np.float32)
    xaa = np.empty((T, C), dtype=np.float32)
    xg = np.empty((T, C), dtype=np.float32)
    rounded_v = has_v and rnd[4] != 0
    xvr = np.empty((T, C) if rounded_v else (1, 1), dtype=np.float32)
    _tmix_prep(x, ln_w, ln_b, ln_eps, seg_start, seg_len, seg_slot, cache_rows, mixes, has_v, rnd,
               xr, xw, xk, xv, xaa, xg, xvr)
    if not rounded_v:
        xvr = xv
    nw = w1.shape[0]
    na = a1.shape[0]
    nv = v1.shape[0] if has_v else 0
    ng = g1.shape[0]
    hw = np.empty((T, nw), dtype=np.float32)
    ha = np.empty((T, na), dtype=np.float32)
    hv = np.empty((T, max(nv, 1)), dtype=np.float32)
    hg = np.empty((T, ng), dtype=np.float32)
    nd = nw + na + nv + ng
    if T == 1:
        for d in prange(nd):                    # down: h = act(M[d] . x)
            if d < nw:
                hw[0, d] = np.tanh(_dot(w1[d], xw[0]))
            elif d < nw + na:
                ha[0, d - nw] = _dot(a1[d - nw], xaa[0])
            elif d < nw + na + nv:
                hv[0, d - nw - na] = _dot(v1[d - nw - na], xvr[0])
            else:
                hg[0, d - nw - na - nv] = _act(_dot(g1[d - nw - na - nv], xg[0]), 2)
    else:                                       # down, T > 1: two rows of a matrix x every row of x
        pw = (nw + 1) // 2
        pa = (na + 1) // 2
        pv = (nv + 1) // 2
        for q in prange(pw + pa + pv + (ng + 1) // 2):
            if q < pw:
                _tiles(w1, xw, hw, 2 * q, 1)
            elif q < pw + pa:
                _tiles(a1, xaa, ha, 2 * (q - pw), 0)
            elif q < pw + pa + pv:
                _tiles(v1, xvr, hv, 2 * (q - pw - pa), 0)
            else:
                _tiles(g1, xg, hg, 2 * (q - pw - pa - pv), 2)
    round_rows(hw, rnd[1])
    round_rows(ha, rnd[3])
    if has_v:
        round_rows(hv, rnd[5])
    round_rows(hg, rnd[7])
    scale = np.float32(-DECAY_SCALE)
    for ck in prange((C + GATE_SPAN - 1) // GATE_SPAN):     # up: a span of output channels of all four
        c0 = ck * GATE_SPAN
        c1 = min(C, c0 + GATE_SPAN)
        if T == 1:
            for c in range(c0, c1):
                w[0, c] = _dot(w2[c], hw[0])
                a[0, c] = _dot(a2[c], ha[0])
                if has_v:
                    vg[0, c] = _dot(v2[c], hv[0])
                g[0, c] = _dot(g2[c], hg[0])
        else:
            _up(w2, hw, w, c0, c1)
            _up(a2, ha, a, c0, c1)
            if has_v:
                _up(v2, hv, vg, c0, c1)
            _up(g2, hg, g, c0, c1)
        for t in range(T):
            _gate(True, w[t], w0, c0, c1, scale)
            _gate(False, a[t], a0, c0, c1, scale)
            if has_v:
                _gate(False, vg[t], v0, c0, c1, scale)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def tmix_wkv(r, w, k, v, v_first, vg, a, k_k, k_a, r_k, ln_w, ln_b, n_head, l2_eps, gn_eps, has_v,
             seg_start, seg_len, seg_slot, S, out):
    """From the projections r, k, v (k and v updated in place) to the input of the output
    projection, one parallel task per (sequence, head), the time loop inside: value residual
    (v += (v_first - v) * vg), kk = L2-normalised (k * k_k), k *= 1 + (a - 1) * k_a, the WKV7 step
    with a = -kk and b = kk * a on the slot's state S[slot, h], then
    out = (GroupNorm(y) + sum(r * k * r_k) * v) * g  (g: the output gate, passed in ``out``)."""
    T, C = r.shape
    N = C // n_head
    y = np.empty((T, C), dtype=np.float32)
    for job in prange(seg_start.shape[0] * n_head):
        s = job // n_head
        h = job % n_head
        o = h * N
        St = S[seg_slot[s], h]
        sa = np.empty(N, dtype=np.float32)
        kneg = np.empty(N, dtype=np.float32)
        kb = np.empty(N, dtype=np.float32)
        for t in range(seg_start[s], seg_start[s] + seg_len[s]):
            if has_v:
                for j in range(o, o + N):
                    v[t, j] = v[t, j] + (v_first[t, j] - v[t, j]) * vg[t, j]
            q2 = np.float32(0.0)
            for j in range(o, o + N):
                q = k[t, j] * k_k[j]
                q2 += q * q
            nrm = max(np.sqrt(q2), np.float32(l2_eps))
            for j in range(N):
                kk = k[t, o + j] * k_k[o + j] / nrm
                kneg[j] = -kk
                kb[j] = kk * a[t, o + j]
            for j in range(o, o + N):
                k[t, j] = k[t, j] * (np.float32(1.0) + (a[t, j] - np.float32(1.0)) * k_a[j])
            wkv7_step(St, r[t, o:o + N], w[t, o:o + N], k[t, o:o + N], v[t, o:o + N], kneg, kb, sa,
                      y[t, o:o + N])
            bonus = np.float32(0.0)
            for j in range(o, o + N):
                bonus += r[t, j] * k[t, j] * r_k[j]
            _normalize(y, t, o, N, ln_w, ln_b, gn_eps, y)        # in place
            for j in range(o, o + N):
                out[t, j] = (y[t, j] + bonus * v[t, j]) * out[t, j]


@njit(cache=True)
def cmix_in(x, att, ln_w, ln_b, ln_eps, seg_start, seg_len, seg_slot, cache_rows, mix, out):
    """x += att (the time mix's output, in place), then the channel mix's input: layer norm,
    token shift (``cache_rows[slot, C:]``, updated) and out = xf + (prev - xf) * mix."""
    T, C = x.shape
    xf = np.empty((T, C), dtype=np.float32)
    for t in range(T):
        for j in range(C):
            x[t, j] += att[t, j]
        _normalize(x, t, 0, C, ln_w, ln_b, ln_eps, xf)
    prev = np.empty((T, C), dtype=np.float32)
    token_shift(xf, seg_start, seg_len, seg_slot, cache_rows, C, prev)
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
