"""Fused decode matvecs on weights in their file encoding (no dequantized copy in memory).

``out[t, r] = W[r] . x[t]`` for a few activation rows ``x`` (decode, small batches),
rows split across threads, each weight byte read once per call.  Activations stay
float32 (the *exact* mode: the same numbers as dequantizing and multiplying, up to
summation order).  Per block the scale is factored out of the dot product
(``d * sum(q * x)``), which is where these differ from ``dequant_row`` + dot by
float32 rounding only.

Each kernel is checked against ``x @ dequantize(W).T`` in tests/kernels/test_cpu_kernels.py.

4-bit nibbles are split in float32 (``hi = floor(b / 16)``, ``lo = b - 16 hi``, exact) rather than
with integer masks: Numba types integer arithmetic as int64, and int64 -> float32 has no AVX2
vector instruction.  Measured gain on a 3072x768 decode matvec, 2 threads: ~7% (Q4_0, Q4_K); these
kernels run at 4-5 G weights/s whatever the type, so the bound is elsewhere (see the CPU issue).
F16 has no Numba scalar type: its bits are moved into a float32
(``sign<<16 | exp,mant<<13``) and scaled by 2**112, exact for normal and subnormal halves.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import dequant as dq

FLAGS = {"reassoc", "contract"}
ROWS = 8                 # rows per parallel task
TWO_112 = np.float32(2.0 ** 112)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_16bit(w16, x, out, is_bf16):
    """F16 or BF16 weights (their bits as uint16), converted to float32 a row at a time."""
    rows, cols = w16.shape
    T = x.shape[0]
    scale = np.float32(1.0) if is_bf16 else TWO_112
    for task in prange((rows + ROWS - 1) // ROWS):
        u = np.empty(cols, dtype=np.uint32)
        f = u.view(np.float32)
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            wr = w16[r]
            if is_bf16:
                for j in range(cols):
                    u[j] = np.uint32(wr[j]) << 16
            else:
                for j in range(cols):
                    h = np.uint32(wr[j])
                    u[j] = ((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)
            for t in range(T):
                acc = np.float32(0.0)
                for j in range(cols):
                    acc += f[j] * x[t, j]
                out[t, r] = acc * scale


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q8_0(raw, raw_i8, x, out, lut):
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 32
    for task in prange((rows + ROWS - 1) // ROWS):
        accv = np.empty(32, dtype=np.float32)     # one lane per block position: no per-block reduction
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            q = raw_i8[r]
            for t in range(T):
                accv[:] = 0.0
                for k in range(nb):
                    o = k * 34
                    d = lut[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]
                    for i in range(32):
                        accv[i] += d * (np.float32(q[o + 2 + i]) * x[t, k * 32 + i])
                out[t, r] = accv.sum()


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_0(raw, x, out, lut):
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 32
    for task in prange((rows + ROWS - 1) // ROWS):
        accv = np.empty(32, dtype=np.float32)
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            for t in range(T):
                accv[:] = 0.0
                for k in range(nb):
                    o = k * 18
                    d = lut[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]
                    for i in range(16):
                        fb = np.float32(b[o + 2 + i])          # nibbles in float32: vectorises (see _nibbles)
                        hi = np.floor(fb * np.float32(0.0625))
                        lo = fb - np.float32(16.0) * hi
                        accv[i] += d * ((lo - np.float32(8.0)) * x[t, k * 32 + i])
                        accv[i + 16] += d * ((hi - np.float32(8.0)) * x[t, k * 32 + 16 + i])
                out[t, r] = accv.sum()


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_k(raw, x, xsum, out, lut):
    """xsum[t, s]: sum of x[t] over 32-value sub-block s (for the dmin * min term)."""
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 256
    for task in prange((rows + ROWS - 1) // ROWS):
        accv = np.empty(32, dtype=np.float32)
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            for t in range(T):
                accv[:] = 0.0
                accm = np.float32(0.0)
                for k in range(nb):
                    o = k * 144
                    d = lut[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]
                    dmin = lut[np.int64(b[o + 2]) | (np.int64(b[o + 3]) << 8)]
                    for sp in range(4):                 # sub-blocks 2sp (low nibbles), 2sp+1 (high)
                        sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
                        sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
                        ds0 = d * np.float32(sc0)
                        ds1 = d * np.float32(sc1)
                        accm += (dmin * np.float32(mn0)) * xsum[t, k * 8 + 2 * sp]
                        accm += (dmin * np.float32(mn1)) * xsum[t, k * 8 + 2 * sp + 1]
                        base = o + 16 + sp * 32
                        xo = k * 256 + sp * 64
                        for i in range(32):
                            fb = np.float32(b[base + i])
                            hi = np.floor(fb * np.float32(0.0625))
                            lo = fb - np.float32(16.0) * hi
                            accv[i] += ds0 * (lo * x[t, xo + i]) + ds1 * (hi * x[t, xo + 32 + i])
                out[t, r] = accv.sum() - accm


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q6_k(raw, raw_i8, x, out, lut):
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 256
    for task in prange((rows + ROWS - 1) // ROWS):
        accv = np.empty(32, dtype=np.float32)
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            sb8 = raw_i8[r]
            for t in range(T):
                accv[:] = 0.0
                for k in range(nb):
                    o = k * 210
                    d = lut[np.int64(b[o + 208]) | (np.int64(b[o + 209]) << 8)]
                    for h in range(2):
                        for part in range(4):           # 4 runs of 32 values in each half
                            xo = k * 256 + h * 128 + part * 32
                            qlo = o + h * 64 + (part % 2) * 32
                            lsh = 4 * (part // 2)
                            qhi = o + 128 + h * 32
                            hsh = 2 * part
                            si = o + 192 + (h * 128 + part * 32) // 16
                            d0 = d * np.float32(sb8[si])
                            d1 = d * np.float32(sb8[si + 1])
                            for i in range(32):
                                q = ((np.int32(b[qlo + i]) >> lsh) & 15) | (((np.int32(b[qhi + i]) >> hsh) & 3) << 4)
                                dd = d0 if i < 16 else d1
                                accv[i] += dd * (np.float32(q - 32) * x[t, xo + i])
                out[t, r] = accv.sum()


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_buffered(qtype, raw, raw_i8, x, out, kv, lut):
    """Batches (several rows of x): decode each weight row once into float32, then dot it with
    every row of x, so the decoding cost is shared by the whole batch."""
    rows = raw.shape[0]
    T, cols = x.shape
    for task in prange((rows + ROWS - 1) // ROWS):
        buf = np.empty(cols, dtype=np.float32)
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            if qtype == dq.Q8_0:
                q = raw_i8[r]
                for k in range(cols // 32):
                    o = k * 34
                    d = lut[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]
                    for i in range(32):
                        buf[k * 32 + i] = d * np.float32(q[o + 2 + i])
            elif qtype == dq.Q4_0:
                for k in range(cols // 32):
                    o = k * 18
                    d = lut[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]
                    for i in range(16):
                        v = np.int32(b[o + 2 + i])
                        buf[k * 32 + i] = d * np.float32((v & 15) - 8)
                        buf[k * 32 + 16 + i] = d * np.float32((v >> 4) - 8)
            else:
                dq.dequant_row(qtype, b, buf, kv, lut)
            for t in range(T):
                acc = np.float32(0.0)
                for j in range(cols):
                    acc += buf[j] * x[t, j]
                out[t, r] = acc


BATCH_T = 3              # from this many rows of x on, decode each weight row once for all of them


def matvec(qtype: int, W, x: np.ndarray, out: np.ndarray) -> None:
    """``out = x @ W.T`` for a few rows of x, on W's raw encoding (any non-F32 type)."""
    lut = dq.F16_LUT
    single = x.shape[0] < BATCH_T
    if qtype in (dq.F16, dq.BF16):
        mv_16bit(W.raw.view(np.uint16), x, out, qtype == dq.BF16)
    elif single and qtype == dq.Q8_0:
        rb = W.row_bytes
        mv_q8_0(rb, rb.view(np.int8), x, out, lut)
    elif single and qtype == dq.Q4_0:
        mv_q4_0(W.row_bytes, x, out, lut)
    elif single and qtype == dq.Q4_K:
        xsum = x.reshape(x.shape[0], -1, 32).sum(-1, dtype=np.float32)
        mv_q4_k(W.row_bytes, x, xsum, out, lut)
    elif single and qtype == dq.Q6_K:
        rb = W.row_bytes
        mv_q6_k(rb, rb.view(np.int8), x, out, lut)
    else:                                   # batches, and every other block type
        rb = W.row_bytes
        mv_buffered(qtype, rb, rb.view(np.int8), x, out, dq.KVALUES_IQ4, lut)
