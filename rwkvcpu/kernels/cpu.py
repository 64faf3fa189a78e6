"""Numba CPU kernels of the RWKV-7 forward pass.

Each kernel has a NumPy twin in ``reference.py`` and a test comparing them
(``tests/kernels/test_cpu_kernels.py``).  Sequences in a batch are laid out as
consecutive rows of one ``[T_total, C]`` activation matrix; ``seg_start``,
``seg_len`` and ``seg_slot`` say which rows belong to which sequence and which
state-cache slot that sequence owns.  A kernel touches only the slots named
there, so one sequence's state can never reach another's.

``fastmath`` is limited to ``reassoc``/``contract`` on dot products (summation
order); decay and state are float32 everywhere and never use approximate
math functions.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import dequant as dq
from .blas import AVAILABLE as BLAS_INLINE, gemm_nt, tiled_matmul
from .matvec import matvec

DOT_FLAGS = {"reassoc", "contract"}


@njit(cache=True, inline="always")
def _normalize(x, t, o, n, w, b, eps, out):
    """out[t, o:o+n] = (x - mean) / sqrt(var + eps) * w + b over that segment of row t."""
    mu = np.float32(0.0)
    for j in range(n):
        mu += x[t, o + j]
    mu /= n
    var = np.float32(0.0)
    for j in range(n):
        d = x[t, o + j] - mu
        var += d * d
    var /= n
    inv = np.float32(1.0) / np.sqrt(var + np.float32(eps))
    for j in range(n):
        out[t, o + j] = (x[t, o + j] - mu) * inv * w[o + j] + b[o + j]


@njit(cache=True, parallel=True)
def layer_norm(x, w, b, eps, out):
    for t in prange(x.shape[0]):
        _normalize(x, t, 0, x.shape[1], w, b, eps, out)


@njit(cache=True, parallel=True)
def group_norm(x, w, b, n_head, eps, out):
    T, C = x.shape
    N = C // n_head
    for job in prange(T * n_head):
        _normalize(x, job // n_head, (job % n_head) * N, N, w, b, eps, out)


@njit(cache=True, parallel=True)
def l2_normalize_heads(x, n_head, eps, out):
    T, C = x.shape
    N = C // n_head
    for job in prange(T * n_head):
        t = job // n_head
        o = (job % n_head) * N
        s = np.float32(0.0)
        for j in range(N):
            s += x[t, o + j] * x[t, o + j]
        n = max(np.sqrt(s), np.float32(eps))
        for j in range(N):
            out[t, o + j] = x[t, o + j] / n


@njit(cache=True)
def token_shift(x, seg_start, seg_len, seg_slot, cache_rows, off, prev):
    """prev[t] = x[t-1] within each sequence; its first row takes the slot's saved row
    ``cache_rows[slot, off:off+C]``, which is then replaced by the sequence's last row."""
    C = x.shape[1]
    for s in range(seg_start.shape[0]):
        t0 = seg_start[s]
        n = seg_len[s]
        slot = seg_slot[s]
        for j in range(C):
            prev[t0, j] = cache_rows[slot, off + j]
        for t in range(t0 + 1, t0 + n):
            for j in range(C):
                prev[t, j] = x[t - 1, j]
        for j in range(C):
            cache_rows[slot, off + j] = x[t0 + n - 1, j]


@njit(cache=True, parallel=True)
def lerps(x, prev, mixes, out):
    """out[m, t] = x[t] + (prev[t] - x[t]) * mixes[m] for each of the M mix vectors."""
    M = mixes.shape[0]
    T, C = x.shape
    for t in prange(T):
        for j in range(C):
            d = prev[t, j] - x[t, j]
            for m in range(M):
                out[m, t, j] = x[t, j] + d * mixes[m, j]


@njit(cache=True, inline="always", fastmath=DOT_FLAGS)
def wkv7_step(St, rt, wt, kt, vt, at, bt, sa, yt):
    """One token of one head: S <- S * w[j] + (S @ a)[i] * b[j] + v[i] * k[j];  y[i] = S[i, :] . r.
    St: [N, N] (value channel i, key channel j); sa: scratch [N]."""
    N = St.shape[0]
    for i in range(N):
        acc = np.float32(0.0)
        for j in range(N):
            acc += St[i, j] * at[j]
        sa[i] = acc
    for i in range(N):
        vi = vt[i]
        si = sa[i]
        acc = np.float32(0.0)
        for j in range(N):
            sij = St[i, j] * wt[j] + si * bt[j] + vi * kt[j]
            St[i, j] = sij
            acc += sij * rt[j]
        yt[i] = acc


@njit(cache=True, parallel=True, fastmath=DOT_FLAGS)
def wkv7(r, w, k, v, a, b, seg_start, seg_len, seg_slot, S, y):
    """The WKV7 recurrence over every sequence x head, in parallel.

    r, w, k, v, a, b, y: [T_total, H, N] float32;  S: [n_slots, H, N, N] float32,
    S[slot, h, i, j]: value channel i, key channel j (``wkv7_step``).
    """
    H = r.shape[1]
    N = r.shape[2]
    for job in prange(seg_start.shape[0] * H):
        s = job // H
        h = job % H
        St = S[seg_slot[s], h]
        sa = np.empty(N, dtype=np.float32)
        for t in range(seg_start[s], seg_start[s] + seg_len[s]):
            wkv7_step(St, r[t, h], w[t, h], k[t, h], v[t, h], a[t, h], b[t, h], sa, y[t, h])


# --- matrix products on weights in their file encoding ---------------------------

SMALL_T = 16             # up to this many rows of x: fused kernels (weights streamed once); above: tiles + BLAS
TILE_BYTES = 2 << 20     # float32 bytes of one dequantized weight tile


def matmul(x: np.ndarray, W, out: np.ndarray | None = None) -> np.ndarray:
    """x [T, in] float32 times the weight W (a QTensor, [out, in]) transposed -> [T, out]."""
    rows, cols = W.shape
    T = x.shape[0]
    if out is None:
        out = np.empty((T, rows), dtype=np.float32)
    if T <= SMALL_T:
        matvec(W.qtype, W, x if x.flags.c_contiguous else np.ascontiguousarray(x), out)
        return out
    if W.qtype == dq.F32:
        gemm_nt(x, W.raw, out)
        return out
    raw = W.row_bytes
    if BLAS_INLINE:
        tiled_matmul(W.qtype, raw, x, out, TILE_BYTES)
        return out
    tile = max(1, TILE_BYTES // (4 * cols))
    buf = np.empty((min(tile, rows), cols), dtype=np.float32)
    for r0 in range(0, rows, tile):
        r1 = min(rows, r0 + tile)
        b = buf[: r1 - r0]
        dq.dequant_rows(W.qtype, raw[r0:r1], b, dq.KVALUES_IQ4, dq.F16_LUT)
        np.matmul(x, b.T, out=out[:, r0:r1])
    return out
