"""Decode matvecs on 8-bit activations with integer dot products (``numerics="llama"``).

llama.cpp's CPU backend quantizes each activation row to the weight type's ``vec_dot_type``
(Q8_0 blocks of 32 for Q4_0/Q8_0, Q8_K blocks of 256 for the K-quants) and multiplies
blocks with integer instructions.  These kernels do the same through the integer vector
operations of ``simd.py`` (vpsignb / vpmaddubsw / vpmaddwd on AVX2):

* the activation is quantized once per call, by ``quantize_q8_0`` / ``quantize_q8_k`` (the
  same rounding as ``actquant.round_like_llama``: ``xd * xq`` equals it bit for bit);
* per block the dot product is an exact int32 in 8 lanes (lane k: products 4k..4k+3),
  converted to float32 and accumulated with one FMA by the product of the two block
  scales, and the 8 lanes are summed once per row -- the accumulation order of llama.cpp's
  AVX2 ``ggml_vec_dot_*`` (so the numbers stay close to llama.cpp's, not only the rounding);
* they read about half as many vector operations per weight as the float32 kernels of
  ``matvec.py`` (32 products per vpmaddubsw), which is why this mode is the fast one.

The NumPy reference is ``x_rounded @ dequantize(W).T`` (``actquant.round_like_llama_ref``):
the integer sums are exact, so the two agree to float32 summation order
(tests/kernels/test_intdot.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import dequant as dq
from .matvec import FLAGS, ROWS
from .actquant import q8_0_scale, q8_k_scale
from .simd import (f16at, i32load, i8load, i8nib, i8nib16, i8q6, iadd, idot, imadd2, imaddubs, i16sub,
                   i8splat, itof, izero, vfma, vhsum, vsplat, vzero)

TYPES = (dq.Q8_0, dq.Q4_0, dq.Q4_K, dq.Q6_K)
_NO_X8 = np.zeros((1, 8), dtype=np.int32)      # mvi_32's x8 for Q8_0 (unused there)


@njit(cache=True)
def quantize_q8_0(x, xq, xd):
    """Q8_0 blocks of each row of x [T, n]: xq int8 [T, n], xd float32 [T, n/32] (the f16 scale).
    As ggml's quantize_row_q8_0: d = f16(amax / 127), q = rint(x * (127 / amax))."""
    T, n = x.shape
    for t in range(T):
        for b in range(n // 32):
            o = b * 32
            d, idv = q8_0_scale(x, t, o)
            xd[t, b] = d
            for i in range(32):
                xq[t, o + i] = np.int8(np.rint(x[t, o + i] * idv))


@njit(cache=True)
def quantize_q8_k(x, xq, xd, bsum32):
    """Q8_K blocks of each row of x [T, n]: xq int8, xd float32 [T, n/256], bsum32 int32
    [T, n/32] (sums of q per 32 values).  As ggml's quantize_row_q8_K: iscale = -127 / m
    (m: the signed value of largest |x|), q = min(127, rint(iscale * x)), d = 1 / iscale."""
    T, n = x.shape
    for t in range(T):
        xt = x[t]
        for b in range(n // 256):
            o = b * 256
            iscale, d = q8_k_scale(xt, o)
            xd[t, b] = d
            for j in range(8):
                s = 0
                for i in range(32):
                    q = min(np.float32(127.0), np.rint(iscale * xt[o + 32 * j + i]))
                    xq[t, o + 32 * j + i] = np.int8(q)
                    s += np.int32(q)
                bsum32[t, b * 8 + j] = s


@njit(cache=True, inline="always")
def _q4_lanes(u, xt, xo, x8t, k):
    """Q4_0 block k's 8 int32 lanes (lane j: products 4j..4j+3), exact: its unsigned nibbles u
    times x by vpmaddubsw, then plus x8t[8k + j] = -8 (x[4j] + .. + x[4j+3]): the integers of
    (nibbles - 8) . x without the offset or idot's sign trick (products <= 15 * 127: no
    saturation)."""
    return iadd(imadd2(imaddubs(u, i8load(xt, xo)), 1, 1), i32load(x8t, 8 * k))


@njit(cache=True, inline="always")
def _dot32(b, q, o, q4, xt, xo, x8t, k):
    """One Q8_0 (idot) or Q4_0 (``_q4_lanes``) block's 8 exact int32 lanes."""
    if q4:
        return _q4_lanes(i8nib16(b, o + 2), xt, xo, x8t, k)
    return idot(i8load(q, o + 2), i8load(xt, xo))


def lane_sums8(xq: np.ndarray) -> np.ndarray:
    """-8 times the sums of each 4 consecutive values of 8-bit activations [T, n]: int32 [T, n / 4]
    (the Q4_0 offset per lane of ``_dot32``).  NumPy reference of ``quantize_q8_0_q4``'s x8."""
    return xq.reshape(xq.shape[0], -1, 4).sum(-1, dtype=np.int32) * np.int32(-8)


@njit(cache=True)
def quantize_q8_0_q4(x, xq, xd, x8):
    """``quantize_q8_0`` plus x8 = ``lane_sums8(xq)`` for Q4_0 weights, in one call (the NumPy
    form cost ~11 us per matvec, more than the kernel saved)."""
    quantize_q8_0(x, xq, xd)
    T, n = xq.shape
    for t in range(T):
        for j in range(n // 4):
            o = 4 * j
            x8[t, j] = np.int32(-8) * (np.int32(xq[t, o]) + np.int32(xq[t, o + 1]) + np.int32(xq[t, o + 2])
                                       + np.int32(xq[t, o + 3]))


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_32(raw, raw_i8, q4, xq, xd, x8, out, lut):
    """Q8_0 (q4=False) or Q4_0 (q4=True: nibbles - 8; x8 = ``lane_sums8(xq)``) weights x Q8_0
    activations.  Batches: each weight block is decoded once for 4 activation rows (the per-row
    arithmetic is unchanged)."""
    rows = raw.shape[0]
    T, cols = xq.shape
    nb = cols // 32
    bs = 18 if q4 else 34
    T4 = T - T % 4
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            q = raw_i8[r]
            for t in range(0, T4, 4):
                x0 = xq[t]
                x1 = xq[t + 1]
                x2 = xq[t + 2]
                x3 = xq[t + 3]
                a0 = vzero()
                a1 = vzero()
                a2 = vzero()
                a3 = vzero()
                for k in range(nb):
                    o = k * bs
                    dw = f16at(b, o)
                    xo = k * 32
                    if q4:
                        u = i8nib16(b, o + 2)
                        s0 = _q4_lanes(u, x0, xo, x8[t], k)
                        s1 = _q4_lanes(u, x1, xo, x8[t + 1], k)
                        s2 = _q4_lanes(u, x2, xo, x8[t + 2], k)
                        s3 = _q4_lanes(u, x3, xo, x8[t + 3], k)
                    else:
                        w = i8load(q, o + 2)
                        s0 = idot(w, i8load(x0, xo))
                        s1 = idot(w, i8load(x1, xo))
                        s2 = idot(w, i8load(x2, xo))
                        s3 = idot(w, i8load(x3, xo))
                    a0 = vfma(vsplat(dw * xd[t, k]), itof(s0), a0)
                    a1 = vfma(vsplat(dw * xd[t + 1, k]), itof(s1), a1)
                    a2 = vfma(vsplat(dw * xd[t + 2, k]), itof(s2), a2)
                    a3 = vfma(vsplat(dw * xd[t + 3, k]), itof(s3), a3)
                out[t, r] = vhsum(a0)
                out[t + 1, r] = vhsum(a1)
                out[t + 2, r] = vhsum(a2)
                out[t + 3, r] = vhsum(a3)
            for t in range(T4, T):
                xt = xq[t]
                acc = vzero()
                for k in range(nb):
                    o = k * bs
                    s = _dot32(b, q, o, q4, xt, k * 32, x8[t], k)
                    d = f16at(b, o) * xd[t, k]
                    acc = vfma(vsplat(d), itof(s), acc)
                out[t, r] = vhsum(acc)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q4_k(raw, xq, xd, bsum32, out, lut):
    """Q4_K weights x Q8_K activations: per 256 one int32 sum of scale x (nibbles . q) per lane,
    one FMA by d; the mins term (dmin x min x sum of q) in 4 float lanes as llama.cpp keeps it."""
    rows = raw.shape[0]
    T, cols = xq.shape
    nb = cols // 256
    T2 = T - T % 2
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            for t in range(0, T2, 2):           # batches: each weight sub-block decoded once for 2 rows
                x0 = xq[t]
                x1 = xq[t + 1]
                acc0 = vzero()
                acc1 = vzero()
                m00 = np.float32(0.0)
                m01 = np.float32(0.0)
                m02 = np.float32(0.0)
                m03 = np.float32(0.0)
                m10 = np.float32(0.0)
                m11 = np.float32(0.0)
                m12 = np.float32(0.0)
                m13 = np.float32(0.0)
                for k in range(nb):
                    o = k * 144
                    dl = f16at(b, o)
                    dml = f16at(b, o + 2)
                    d0 = xd[t, k] * dl
                    d1 = xd[t + 1, k] * dl
                    dmin0 = -xd[t, k] * dml
                    dmin1 = -xd[t + 1, k] * dml
                    bs = k * 8
                    s0 = izero()
                    s1 = izero()
                    for sp in range(4):
                        sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
                        sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
                        mp0 = dmin0 * np.float32(np.int32(mn0) * bsum32[t, bs + 2 * sp]
                                                 + np.int32(mn1) * bsum32[t, bs + 2 * sp + 1])
                        mp1 = dmin1 * np.float32(np.int32(mn0) * bsum32[t + 1, bs + 2 * sp]
                                                 + np.int32(mn1) * bsum32[t + 1, bs + 2 * sp + 1])
                        if sp == 0:
                            m00 += mp0
                            m10 += mp1
                        elif sp == 1:
                            m01 += mp0
                            m11 += mp1
                        elif sp == 2:
                            m02 += mp0
                            m12 += mp1
                        else:
                            m03 += mp0
                            m13 += mp1
                        base = o + 16 + sp * 32
                        xo = k * 256 + sp * 64
                        wl = i8nib(b, base, False)
                        wh = i8nib(b, base, True)
                        s0 = iadd(s0, imadd2(imaddubs(wl, i8load(x0, xo)), sc0, sc0))
                        s0 = iadd(s0, imadd2(imaddubs(wh, i8load(x0, xo + 32)), sc1, sc1))
                        s1 = iadd(s1, imadd2(imaddubs(wl, i8load(x1, xo)), sc0, sc0))
                        s1 = iadd(s1, imadd2(imaddubs(wh, i8load(x1, xo + 32)), sc1, sc1))
                    acc0 = vfma(vsplat(d0), itof(s0), acc0)
                    acc1 = vfma(vsplat(d1), itof(s1), acc1)
                out[t, r] = vhsum(acc0) + ((m00 + m02) + (m01 + m03))
                out[t + 1, r] = vhsum(acc1) + ((m10 + m12) + (m11 + m13))
            for t in range(T2, T):
                xt = xq[t]
                acc = vzero()
                m0 = np.float32(0.0)
                m1 = np.float32(0.0)
                m2 = np.float32(0.0)
                m3 = np.float32(0.0)
                for k in range(nb):
                    o = k * 144
                    d = xd[t, k] * f16at(b, o)
                    dmin = -xd[t, k] * f16at(b, o + 2)
                    bs = k * 8
                    sumi = izero()
                    for sp in range(4):                 # sub-blocks 2sp (low nibbles), 2sp+1 (high)
                        sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
                        sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
                        mp = dmin * np.float32(np.int32(mn0) * bsum32[t, bs + 2 * sp]
                                               + np.int32(mn1) * bsum32[t, bs + 2 * sp + 1])
                        if sp == 0:
                            m0 += mp
                        elif sp == 1:
                            m1 += mp
                        elif sp == 2:
                            m2 += mp
                        else:
                            m3 += mp
                        base = o + 16 + sp * 32
                        xo = k * 256 + sp * 64
                        sumi = iadd(sumi, imadd2(imaddubs(i8nib(b, base, False), i8load(xt, xo)), sc0, sc0))
                        sumi = iadd(sumi, imadd2(imaddubs(i8nib(b, base, True), i8load(xt, xo + 32)), sc1, sc1))
                    acc = vfma(vsplat(d), itof(sumi), acc)
                out[t, r] = vhsum(acc) + ((m0 + m2) + (m1 + m3))


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q6_k(raw, raw_i8, xq, xd, out, lut):
    """Q6_K weights x Q8_K activations: per 32-value run (6-bit values . q) - 32 (sum of q)
    in 16-bit pairs, times the run's two 16-value scales, summed in int32 lanes per 256."""
    rows = raw.shape[0]
    T, cols = xq.shape
    nb = cols // 256
    T2 = T - T % 2
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            sb8 = raw_i8[r]
            m32 = i8splat(32)
            for t in range(0, T2, 2):           # batches: each run of 6-bit values decoded once for 2 rows
                x0 = xq[t]
                x1 = xq[t + 1]
                acc0 = vzero()
                acc1 = vzero()
                for k in range(nb):
                    o = k * 210
                    dl = f16at(b, o + 208)
                    s0 = izero()
                    s1 = izero()
                    for h in range(2):
                        si = o + 192 + h * 8
                        for p in range(4):
                            wq = i8q6(b, o + h * 64, o + 128 + h * 32, p)
                            xo = k * 256 + h * 128 + p * 32
                            c0 = sb8[si + 2 * p]
                            c1 = sb8[si + 2 * p + 1]
                            xv = i8load(x0, xo)
                            s0 = iadd(s0, imadd2(i16sub(imaddubs(wq, xv), imaddubs(m32, xv)), c0, c1))
                            xv = i8load(x1, xo)
                            s1 = iadd(s1, imadd2(i16sub(imaddubs(wq, xv), imaddubs(m32, xv)), c0, c1))
                    acc0 = vfma(vsplat(xd[t, k] * dl), itof(s0), acc0)
                    acc1 = vfma(vsplat(xd[t + 1, k] * dl), itof(s1), acc1)
                out[t, r] = vhsum(acc0)
                out[t + 1, r] = vhsum(acc1)
            for t in range(T2, T):
                xt = xq[t]
                acc = vzero()
                for k in range(nb):
                    o = k * 210
                    d = xd[t, k] * f16at(b, o + 208)
                    sumi = izero()
                    for h in range(2):
                        si = o + 192 + h * 8
                        for p in range(4):
                            xv = i8load(xt, k * 256 + h * 128 + p * 32)
                            pr = i16sub(imaddubs(i8q6(b, o + h * 64, o + 128 + h * 32, p), xv), imaddubs(m32, xv))
                            sumi = iadd(sumi, imadd2(pr, sb8[si + 2 * p], sb8[si + 2 * p + 1]))
                    acc = vfma(vsplat(d), itof(sumi), acc)
                out[t, r] = vhsum(acc)


def matvec_q8(W, x: np.ndarray, out: np.ndarray) -> bool:
    """``out = round_like_llama(x) @ W.T`` for a few rows of x, with integer dot products, when
    W's type has a kernel here (``TYPES``); returns False (nothing done) otherwise."""
    qtype = W.qtype
    if qtype not in TYPES:
        return False
    T, n = x.shape
    lut = dq.F16_LUT
    rb = W.row_bytes
    xq = np.empty((T, n), dtype=np.int8)
    if qtype in (dq.Q8_0, dq.Q4_0):
        xd = np.empty((T, n // 32), dtype=np.float32)
        if qtype == dq.Q4_0:
            x8 = np.empty((T, n // 4), dtype=np.int32)
            quantize_q8_0_q4(x, xq, xd, x8)
            mvi_32(rb, rb.view(np.int8), True, xq, xd, x8, out, lut)
        else:
            quantize_q8_0(x, xq, xd)
            mvi_32(rb, rb.view(np.int8), False, xq, xd, _NO_X8, out, lut)
        return True
    xd = np.empty((T, n // 256), dtype=np.float32)
    bsum = np.empty((T, n // 32), dtype=np.int32)
    quantize_q8_k(x, xq, xd, bsum)
    if qtype == dq.Q4_K:
        mvi_q4_k(rb, xq, xd, bsum, out, lut)
    else:
        mvi_q6_k(rb, rb.view(np.int8), xq, xd, out, lut)
    return True
