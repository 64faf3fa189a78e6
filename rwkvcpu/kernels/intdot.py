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
  AVX2 ``ggml_vec_dot_*`` (so the numbers stay close to llama.cpp's, not only the rounding).
  Q4_0 instead follows llama.cpp's repacked 8-row Q4_0 kernels (which it uses on AVX2 CPUs):
  each block's lanes summed to one exact int32 per row, 8 rows' sums converted and scaled by
  one FMA (``_rows8_task``);
* they read about half as many vector operations per weight as the float32 kernels of
  ``matvec.py`` (32 products per vpmaddubsw), which is why this mode is the fast one.

Row and block bodies are ``forceinline`` functions: each compiled once and inlined by LLVM
(``alwaysinline``), where the type constants the kernels pass fold as well.  Numba's own
``inline="always"`` copies a callee's IR at every call, and the 8-row kernels nest eight calls
three deep: that cost 20-50 s of first-use compilation per kernel (now 3-11 s), for the same
machine code (bit-identical results, same speed).  The Q8_1 family (``_q32_row``) keeps
``inline="always"``: as a separate function it ran 10-15% slower.

The NumPy reference is ``x_rounded @ dequantize(W).T`` (``actquant.round_like_llama_ref``):
the integer sums are exact, so the two agree to float32 summation order
(tests/kernels/test_intdot.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import dequant as dq
from .matvec import FLAGS, ROWS, _prefetch_ahead, f16lut, store4
from .actquant import _f16r
from .simd import (i8rint, i8store, i8sums, vamax32)
from .simd import (f16at, f16x8, i16add, i16nib, i16q3sc, i16sel2, i16load, i16s8, i8bc4, i8bit, i8crumb, i8half, i8iq4, i8load, i8nib, i8nib16, i8or,
                   i8q5, i8q6,
                   i8sub, iadd, idot, imaddss,
                   imadd2, imaddp, imaddubs, i16sub, i8splat, i32load, imadd, imulc, iset8, isplat, isum8, itof, izero,
                   prefetch, vfma, vhsum, vlane, vload, vmul, vsplat, vsub, vzero)

TYPES = (dq.Q8_0, dq.Q4_0, dq.Q4_K, dq.Q6_K, dq.Q4_1, dq.Q5_0, dq.Q5_1, dq.IQ4_NL, dq.Q5_K, dq.Q2_K, dq.Q3_K,
         dq.IQ4_XS)


@njit(cache=True, inline="always")
def _scale32(xt, o):
    """``actquant.q8_1_scale`` of the block xt[o:o+32] of a row, its amax by ``vamax32`` (the same
    value: a max of absolute values): (d = f16(amax / 127), 127 / amax, amax / 127)."""
    amax = vamax32(xt, o)
    d = amax / np.float32(127.0)
    return _f16r(d), (np.float32(127.0) / amax if amax > 0 else np.float32(0.0)), d


@njit(cache=True, inline="always")
def _q8_0_block(xt, o, qt, qo, stride):
    """Q8_0 block xt[o:o+32] into qt from qo (stride 4: in a run; 32: in ``_to_lanes``' lanes):
    (d, d before its f16 rounding, the sum of the 32 q), 32 values a vector (``i8rint``: the same
    products and rint as a value at a time)."""
    d, idv, d32 = _scale32(xt, o)
    v = i8rint(xt, o, idv, False)
    i8store(qt, qo, v, stride)
    s0, s1 = i8sums(v)
    return d, d32, s0 + s1


@njit(cache=True)
def quantize_q8_0(x, xq, xd):
    """Q8_0 blocks of each row of x [T, n]: xq int8 [T, n], xd float32 [T, n/32] (the f16 scale).
    As ggml's quantize_row_q8_0: d = f16(amax / 127), q = rint(x * (127 / amax))."""
    T, n = x.shape
    for t in range(T):
        for b in range(n // 32):
            xd[t, b] = _q8_0_block(x[t], b * 32, xq[t], b * 32, 4)[0]


@njit(cache=True, inline="always")
def _k_scale(xt, o):
    """``actquant.q8_k_scale`` of the block xt[o:o+256], its amax by ``vamax32``: (iscale, d), m the
    signed value of the first largest |x| (found by a scan, bounded: a NaN block gives NaNs)."""
    amax = vamax32(xt, o)
    for j in range(1, 8):
        amax = max(amax, vamax32(xt, o + 32 * j))
    if amax == 0:
        return np.float32(0.0), np.float32(0.0)
    i = o
    while i < o + 255 and abs(xt[i]) != amax:
        i += 1
    iscale = np.float32(-127.0) / xt[i]
    return iscale, np.float32(1.0) / iscale


@njit(cache=True, inline="always")
def _q8_k_run(xt, o, iscale, qt, qo, stride):
    """The 32 values xt[o:o+32] as Q8_K, min(127, rint(iscale x)), into qt from qo (stride as
    ``_q8_0_block``): (sum of values 0-15, sum of 16-31)."""
    v = i8rint(xt, o, iscale, True)
    i8store(qt, qo, v, stride)
    return i8sums(v)


@njit(cache=True, inline="always")
def _q8_k_rows(x, xq, xd, sums, per16):
    """Q8_K blocks of each row of x into xq, xd; sums[t] the sums of q per 32 values, or (per16, a
    constant) per 16."""
    T, n = x.shape
    for t in range(T):
        xt = x[t]
        for b in range(n // 256):
            o = b * 256
            iscale, d = _k_scale(xt, o)
            xd[t, b] = d
            for j in range(8):
                s0, s1 = _q8_k_run(xt, o + 32 * j, iscale, xq[t], o + 32 * j, 4)
                if per16:
                    sums[t, 2 * (b * 8 + j)] = s0
                    sums[t, 2 * (b * 8 + j) + 1] = s1
                else:
                    sums[t, b * 8 + j] = s0 + s1


@njit(cache=True)
def quantize_q8_k(x, xq, xd, bsum32):
    """Q8_K blocks of each row of x [T, n]: xq int8, xd float32 [T, n/256], bsum32 int32
    [T, n/32] (sums of q per 32 values).  As ggml's quantize_row_q8_K: iscale = -127 / m
    (m: the signed value of largest |x|), q = min(127, rint(iscale * x)), d = 1 / iscale; 32
    values a vector (``i8rint``)."""
    _q8_k_rows(x, xq, xd, bsum32, False)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q8_0(raw, raw_i8, x, out):
    """Q8_0 weights x Q8_0 activations (llama.cpp's AVX2 ``ggml_vec_dot_q8_0_q8_0`` order: 8 int32
    lanes per block, one FMA by the product of the scales, lanes summed once per row).  Batches:
    each weight block is loaded once for 4 activation rows (the per-row arithmetic is unchanged)."""
    rows = raw.shape[0]
    T, cols = x.shape
    xq = np.empty((T, cols), dtype=np.int8)
    xd = np.empty((T, cols // 32), dtype=np.float32)
    quantize_q8_0(x, xq, xd)
    nb = cols // 32
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
                    o = k * 34
                    if t == 0 and k % 2 == 0:
                        _prefetch_ahead(raw, r, o, 68)
                    dw = f16at(b, o)
                    xo = k * 32
                    w = i8load(q, o + 2)
                    a0 = vfma(vsplat(dw * xd[t, k]), itof(idot(w, i8load(x0, xo))), a0)
                    a1 = vfma(vsplat(dw * xd[t + 1, k]), itof(idot(w, i8load(x1, xo))), a1)
                    a2 = vfma(vsplat(dw * xd[t + 2, k]), itof(idot(w, i8load(x2, xo))), a2)
                    a3 = vfma(vsplat(dw * xd[t + 3, k]), itof(idot(w, i8load(x3, xo))), a3)
                store4(out, t, r, 4, a0, a1, a2, a3)
            for t in range(T4, T):
                xt = xq[t]
                acc = vzero()
                for k in range(nb):
                    o = k * 34
                    if t == 0 and k % 2 == 0:
                        _prefetch_ahead(raw, r, o, 68)
                    s = idot(i8load(q, o + 2), i8load(xt, k * 32))
                    acc = vfma(vsplat(f16at(b, o) * xd[t, k]), itof(s), acc)
                out[t, r] = vhsum(acc)


@njit(cache=True)
def quantize_q8_1(x, xq, xd, xs):
    """Q8_1 blocks of each row of x [T, n]: ``quantize_q8_0``'s xq and xd, plus xs float32 [T, n/32],
    the block's f16 sum s = f16(d x sum q) with d = amax / 127 before its own f16 rounding (as
    ggml's AVX2 quantize_row_q8_1; Q4_1/Q5_1 multiply it by the weight block's min)."""
    T, n = x.shape
    for t in range(T):
        for b in range(n // 32):
            d, d32, s = _q8_0_block(x[t], b * 32, xq[t], b * 32, 4)
            xd[t, b] = d
            xs[t, b] = _f16r(d32 * np.float32(s))


@njit(cache=True, inline="always")
def _q32w(qtype, b, o):
    """The 32 values of the block at byte o of a Q4_1 / Q5_1 row as unsigned bytes (0..15, 0..31),
    of a Q5_0 row as signed ones (q - 16)."""
    if qtype == dq.Q4_1:
        return i8nib16(b, o + 4)
    if qtype == dq.Q5_1:
        return i8q5(b, o + 8, o + 4)
    return i8sub(i8q5(b, o + 6, o + 2), 16)


@njit(cache=True, inline="always")
def _q32_block(qtype, w, b, o, k, xt, dx, sx, acc, summ, lut):
    """One weight block w (``_q32w``) times activation block k of one row (xt: its 8-bit values,
    dx: its scale, sx: Q8_1's sum): llama.cpp's AVX2 ``ggml_vec_dot_*`` step for the type -- 8
    exact int32 lanes, one FMA by d_w x d_x into acc, and Q4_1/Q5_1's m_w x s_x into the scalar
    summ (added after the lanes are summed)."""
    xv = i8load(xt, k * 32)
    if qtype == dq.Q5_0:
        s = idot(w, xv)
    else:
        s = imadd2(imaddubs(w, xv), 1, 1)
        summ += _scale(qtype, b, o + 2, lut) * sx
    return vfma(vsplat(_scale(qtype, b, o, lut) * dx), itof(s), acc), summ


@njit(cache=True, inline="always")
def _scale(qtype, b, o, lut):
    """A block's f16 scale: Q5_0 and Q5_1 through ``dq.F16_LUT`` (``matvec.f16lut``: no vector-pipe
    work beside their fifth-bit shuffles; a 0.1B token's matrices 1.03x / 1.14x), Q4_1 in
    registers (``f16at``; the table was 0.97x there)."""
    return f16at(b, o) if qtype == dq.Q4_1 else f16lut(b, o, lut)


@njit(cache=True, inline="always")
def _q32_row(qtype, raw, xq, xd, xs, out, r, lut):
    """Q4_1, Q5_0 and Q5_1 weights x Q8_1 / Q8_0 / Q8_1 activations, one weight row at a time as
    llama.cpp's AVX2 vec_dot does it (``_q32_block``; llama.cpp has no repacked kernel for them);
    batches decode each block once for 4 activation rows, every row's arithmetic unchanged (so
    bit-identical to the row alone)."""
    T, cols = xq.shape
    nb = cols // 32
    bs = 20 if qtype == dq.Q4_1 else (22 if qtype == dq.Q5_0 else 24)
    T4 = T - T % 4
    f0 = np.float32(0.0)
    b = raw[r]
    for t in range(0, T4, 4):
        a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
        s0, s1, s2, s3 = f0, f0, f0, f0
        for k in range(nb):
            o = k * bs
            if t == 0 and k % 2 == 0:
                _prefetch_ahead(raw, r, o, 2 * bs)
            w = _q32w(qtype, b, o)
            a0, s0 = _q32_block(qtype, w, b, o, k, xq[t], xd[t, k], xs[t, k], a0, s0, lut)
            a1, s1 = _q32_block(qtype, w, b, o, k, xq[t + 1], xd[t + 1, k], xs[t + 1, k], a1, s1, lut)
            a2, s2 = _q32_block(qtype, w, b, o, k, xq[t + 2], xd[t + 2, k], xs[t + 2, k], a2, s2, lut)
            a3, s3 = _q32_block(qtype, w, b, o, k, xq[t + 3], xd[t + 3, k], xs[t + 3, k], a3, s3, lut)
        out[t, r] = vhsum(a0) + s0
        out[t + 1, r] = vhsum(a1) + s1
        out[t + 2, r] = vhsum(a2) + s2
        out[t + 3, r] = vhsum(a3) + s3
    for t in range(T4, T):
        a0 = vzero()
        s0 = f0
        for k in range(nb):
            o = k * bs
            if t == 0 and k % 2 == 0:
                _prefetch_ahead(raw, r, o, 2 * bs)
            a0, s0 = _q32_block(qtype, _q32w(qtype, b, o), b, o, k, xq[t], xd[t, k], xs[t, k], a0, s0, lut)
        out[t, r] = vhsum(a0) + s0


@njit(cache=True)
def _quantize32(x, q8_1):
    """The activation rows for ``_q32_row``: (xq, xd, xs) as Q8_1 (xs its sums) or Q8_0 (xs 0)."""
    T, cols = x.shape
    xq = np.empty((T, cols), dtype=np.int8)
    xd = np.empty((T, cols // 32), dtype=np.float32)
    xs = np.zeros((T, cols // 32), dtype=np.float32)
    if q8_1:
        quantize_q8_1(x, xq, xd, xs)
    else:
        quantize_q8_0(x, xq, xd)
    return xq, xd, xs


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q4_1(raw, x, out, lut):
    """Q4_1 weights x Q8_1 activations (``_q32_row``)."""
    xq, xd, xs = _quantize32(x, True)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _q32_row(dq.Q4_1, raw, xq, xd, xs, out, r, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q5_0(raw, x, out, lut):
    """Q5_0 weights x Q8_0 activations (``_q32_row``)."""
    xq, xd, xs = _quantize32(x, False)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _q32_row(dq.Q5_0, raw, xq, xd, xs, out, r, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q5_1(raw, x, out, lut):
    """Q5_1 weights x Q8_1 activations (``_q32_row``)."""
    xq, xd, xs = _quantize32(x, True)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _q32_row(dq.Q5_1, raw, xq, xd, xs, out, r, lut)


@njit(cache=True)
def quantize_q8_0_bs(x, xq, xd, xs):
    """``quantize_q8_0`` plus xs[t, k] = -8 x (the sum of block k's 32 values of xq[t]): the Q4_0
    offset of a whole block (``_rows8_task``)."""
    T, n = x.shape
    for t in range(T):
        for k in range(n // 32):
            d, _, s = _q8_0_block(x[t], k * 32, xq[t], k * 32, 4)
            xd[t, k] = d
            xs[t, k] = np.int32(-8) * np.int32(s)


@njit(cache=True, forceinline=True)
def _rowc(raw, i):
    """Row i of raw, or its last row past the end (the 8-row kernels' ragged last task)."""
    return raw[min(i, raw.shape[0] - 1)]


@njit(cache=True, forceinline=True)
def _prefetch_next(raw, nxt, k, span):
    """Block k's share (span bytes: 8 rows' blocks) of the next 8-row task, which starts at flat
    byte nxt: its cache lines are a few per row, too short for the hardware prefetchers."""
    for c in range(0, span, 64):
        prefetch(raw, nxt + k * span + c)


@njit(cache=True, forceinline=True)
def _store8(out, t, r, n, v):
    """out[t, r:r+n] = the first n lanes of v."""
    for i in range(n):
        out[t, r + i] = vlane(v, i)


@njit(cache=True, forceinline=True)
def _q4u(u, xv):
    return imadd2(imaddubs(u, xv), 1, 1)


@njit(cache=True, forceinline=True)
def _q4_row(b, o, xv):
    """The 8 int32 lanes of a Q4_0 block's unsigned nibbles times 8-bit x (products <= 15 x 127:
    vpmaddubsw cannot saturate)."""
    return imadd2(imaddubs(i8nib16(b, o + 2), xv), 1, 1)


@njit(cache=True, forceinline=True)
def _q4w(b, o, iq):
    """An 18-byte block's 32 values: Q4_0's unsigned nibbles, or IQ4_NL's kvalues (iq)."""
    return i8iq4(b, o + 2) if iq else i8nib16(b, o + 2)


@njit(cache=True, forceinline=True)
def _q4d(u, xv, iq):
    """``_q4w``'s values times x's block xv as 8 exact int32 lanes (signed for IQ4_NL)."""
    return idot(u, xv) if iq else _q4u(u, xv)


@njit(cache=True, forceinline=True)
def _q40_8(b0, b1, b2, b3, b4, b5, b6, b7, o, xv, c, iq):
    """A Q4_0 (IQ4_NL: iq) block of 8 rows: their exact int32 dot products with x's block xv
    (lanes summed by ``isum8``) plus c = -8 x the block sum of x (Q4_0's offset; 0 for IQ4_NL)."""
    return iadd(isum8(_q4d(_q4w(b0, o, iq), xv, iq), _q4d(_q4w(b1, o, iq), xv, iq), _q4d(_q4w(b2, o, iq), xv, iq),
                      _q4d(_q4w(b3, o, iq), xv, iq), _q4d(_q4w(b4, o, iq), xv, iq), _q4d(_q4w(b5, o, iq), xv, iq),
                      _q4d(_q4w(b6, o, iq), xv, iq), _q4d(_q4w(b7, o, iq), xv, iq)), isplat(c))


@njit(cache=True, forceinline=True)
def _q40_8x2(b0, b1, b2, b3, b4, b5, b6, b7, o, xv, xw, c, e, iq):
    """``_q40_8`` for two activation blocks xv, xw (offsets c, e), the values decoded once."""
    u0 = _q4w(b0, o, iq)
    u1 = _q4w(b1, o, iq)
    u2 = _q4w(b2, o, iq)
    u3 = _q4w(b3, o, iq)
    u4 = _q4w(b4, o, iq)
    u5 = _q4w(b5, o, iq)
    u6 = _q4w(b6, o, iq)
    u7 = _q4w(b7, o, iq)
    sa = isum8(_q4d(u0, xv, iq), _q4d(u1, xv, iq), _q4d(u2, xv, iq), _q4d(u3, xv, iq), _q4d(u4, xv, iq),
               _q4d(u5, xv, iq), _q4d(u6, xv, iq), _q4d(u7, xv, iq))
    sb = isum8(_q4d(u0, xw, iq), _q4d(u1, xw, iq), _q4d(u2, xw, iq), _q4d(u3, xw, iq), _q4d(u4, xw, iq),
               _q4d(u5, xw, iq), _q4d(u6, xw, iq), _q4d(u7, xw, iq))
    return iadd(sa, isplat(c)), iadd(sb, isplat(e))


@njit(cache=True, forceinline=True)
def _k45(b, o, sp, q5):
    """Sub-blocks 2sp and 2sp + 1 of a Q4_K block (the low and high nibbles of 32 bytes) or of a
    Q5_K block (q5: bits 2sp and 2sp + 1 of its 32 qh bytes as the fifth bits): unsigned bytes."""
    base = o + (48 if q5 else 16) + sp * 32
    lo = i8nib(b, base, False)
    hi = i8nib(b, base, True)
    if q5:
        lo = i8or(lo, i8bit(b, o + 16, 2 * sp, 4))
        hi = i8or(hi, i8bit(b, o + 16, 2 * sp + 1, 4))
    return lo, hi


@njit(cache=True, forceinline=True)
def _q4k_row(b, o, xt, xo, bs, q5):
    """One Q4_K (Q5_K: q5) block of one row: (the 8 int32 lanes of sum_j scale_j (values_j . x_j),
    the int sum_j min_j bsum_j) -- exact; x_j, bsum_j: Q8_K values and sums of sub-block j."""
    s = izero()
    m = 0
    for sp in range(4):                 # sub-blocks 2sp (low nibbles) and 2sp+1 (high), 32 bytes
        sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
        sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
        lo, hi = _k45(b, o, sp, q5)
        x0 = xo + sp * 64
        s = iadd(s, imadd2(imaddubs(lo, i8load(xt, x0)), sc0, sc0))
        s = iadd(s, imadd2(imaddubs(hi, i8load(xt, x0 + 32)), sc1, sc1))
        m += np.int32(mn0) * bs[2 * sp] + np.int32(mn1) * bs[2 * sp + 1]
    return s, m


@njit(cache=True, forceinline=True)
def _q4k_row2(b, o, xa, xb, xo, ba, bb, q5):
    """``_q4k_row`` for two activation rows xa, xb (sums ba, bb) at once: the scales, mins and
    nibbles of the block decoded once for both."""
    sa = izero()
    sb = izero()
    ma = 0
    mb = 0
    for sp in range(4):
        sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
        sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
        lo, hi = _k45(b, o, sp, q5)
        x0 = xo + sp * 64
        sa = iadd(sa, imadd2(imaddubs(lo, i8load(xa, x0)), sc0, sc0))
        sa = iadd(sa, imadd2(imaddubs(hi, i8load(xa, x0 + 32)), sc1, sc1))
        sb = iadd(sb, imadd2(imaddubs(lo, i8load(xb, x0)), sc0, sc0))
        sb = iadd(sb, imadd2(imaddubs(hi, i8load(xb, x0 + 32)), sc1, sc1))
        ma += np.int32(mn0) * ba[2 * sp] + np.int32(mn1) * ba[2 * sp + 1]
        mb += np.int32(mn0) * bb[2 * sp] + np.int32(mn1) * bb[2 * sp + 1]
    return sa, ma, sb, mb


@njit(cache=True, forceinline=True)
def _q4k_8(b0, b1, b2, b3, b4, b5, b6, b7, o, xt, xo, bs, q5):
    """A Q4_K block of 8 rows: (their int32 sums of scale x (nibbles . x), their sums of min x
    (sum of x)) as two i32x8 (``_q4k_row`` per row)."""
    s0, m0 = _q4k_row(b0, o, xt, xo, bs, q5)
    s1, m1 = _q4k_row(b1, o, xt, xo, bs, q5)
    s2, m2 = _q4k_row(b2, o, xt, xo, bs, q5)
    s3, m3 = _q4k_row(b3, o, xt, xo, bs, q5)
    s4, m4 = _q4k_row(b4, o, xt, xo, bs, q5)
    s5, m5 = _q4k_row(b5, o, xt, xo, bs, q5)
    s6, m6 = _q4k_row(b6, o, xt, xo, bs, q5)
    s7, m7 = _q4k_row(b7, o, xt, xo, bs, q5)
    return isum8(s0, s1, s2, s3, s4, s5, s6, s7), iset8(m0, m1, m2, m3, m4, m5, m6, m7)


@njit(cache=True, forceinline=True)
def _q4k_8x2(b0, b1, b2, b3, b4, b5, b6, b7, o, xa, xb, xo, ba, bb, q5):
    """``_q4k_8`` for two activation rows, each block decoded once (``_q4k_row2``)."""
    s0, m0, u0, n0 = _q4k_row2(b0, o, xa, xb, xo, ba, bb, q5)
    s1, m1, u1, n1 = _q4k_row2(b1, o, xa, xb, xo, ba, bb, q5)
    s2, m2, u2, n2 = _q4k_row2(b2, o, xa, xb, xo, ba, bb, q5)
    s3, m3, u3, n3 = _q4k_row2(b3, o, xa, xb, xo, ba, bb, q5)
    s4, m4, u4, n4 = _q4k_row2(b4, o, xa, xb, xo, ba, bb, q5)
    s5, m5, u5, n5 = _q4k_row2(b5, o, xa, xb, xo, ba, bb, q5)
    s6, m6, u6, n6 = _q4k_row2(b6, o, xa, xb, xo, ba, bb, q5)
    s7, m7, u7, n7 = _q4k_row2(b7, o, xa, xb, xo, ba, bb, q5)
    return (isum8(s0, s1, s2, s3, s4, s5, s6, s7), iset8(m0, m1, m2, m3, m4, m5, m6, m7),
            isum8(u0, u1, u2, u3, u4, u5, u6, u7), iset8(n0, n1, n2, n3, n4, n5, n6, n7))


@njit(cache=True, forceinline=True)
def _rows8_task(raw, xq, xd, xs, out, task, kq, iq):
    """Q4_0 (kq 0: Q8_0 activations), IQ4_NL (iq: Q8_0 activations), Q4_K (kq 4) or Q5_K (kq 5;
    Q8_K activations) weights, 8 weight rows per task (llama.cpp's repacked Q4_0 / IQ4_NL / Q4_K gemv
    does the same on an interleaved copy; here the file's rows are read in place).  Per block each
    row's exact int32 sum -- Q4_0: unsigned nibbles by vpmaddubsw plus -8 x the block sum of x;
    IQ4_NL: its kvalues (one vpshufb) by ``idot``; Q4_K: scale x (nibbles . x) over
    its 8 sub-blocks, and separately min x (sum of x) -- is reduced across lanes for all 8 rows
    at once (``isum8``), then converted and scaled by one FMA for 8 rows (two for Q4_K: d x d_x
    and dmin x d_x): about half the vector operations of one row at a time, x's block loaded once
    for 8 rows.  Pairs of activation rows share the decoding.  Each (activation row, weight row)
    is computed the same way whatever T is, so a batch's rows are bit-identical to the rows
    alone.  Q5_K is Q4_K with the fifth bits or-ed onto the nibbles (``_k45``).  A K block's int32
    total converts to float32 exactly below 2**24 (a relative 6e-8 past it; Q4_0's cannot reach
    it).  Rows past the end (the last task) repeat the last row
    and are not stored."""
    rows = raw.shape[0]
    T, cols = xq.shape
    nb = cols // 256 if kq else cols // 32
    bb = (176 if kq == 5 else 144) if kq else 18         # bytes per block
    rb = raw.shape[1]
    r = task * 8
    b0 = raw[r]                    # (a tuple of the 8 views trips Numba's parfor analysis)
    b1 = _rowc(raw, r + 1)
    b2 = _rowc(raw, r + 2)
    b3 = _rowc(raw, r + 3)
    b4 = _rowc(raw, r + 4)
    b5 = _rowc(raw, r + 5)
    b6 = _rowc(raw, r + 6)
    b7 = _rowc(raw, r + 7)
    n = min(8, rows - r)
    nxt = (r + 8) * rb
    for t in range(0, T - 1, 2):
        xa = xq[t]
        xb = xq[t + 1]
        a0 = vzero()
        m0 = vzero()
        a1 = vzero()
        m1 = vzero()
        for k in range(nb):
            o = k * bb
            if t == 0:
                _prefetch_next(raw, nxt, k, 8 * bb)
            dw = f16x8(b0, b1, b2, b3, b4, b5, b6, b7, o)
            da = vmul(dw, vsplat(xd[t, k]))
            db = vmul(dw, vsplat(xd[t + 1, k]))
            if kq:
                sa, ma, sb, mb = _q4k_8x2(b0, b1, b2, b3, b4, b5, b6, b7, o, xa, xb, k * 256,
                                          xs[t, k * 8:k * 8 + 8], xs[t + 1, k * 8:k * 8 + 8], kq == 5)
                dm = f16x8(b0, b1, b2, b3, b4, b5, b6, b7, o + 2)
                m0 = vfma(vmul(dm, vsplat(xd[t, k])), itof(ma), m0)
                m1 = vfma(vmul(dm, vsplat(xd[t + 1, k])), itof(mb), m1)
            else:
                sa, sb = _q40_8x2(b0, b1, b2, b3, b4, b5, b6, b7, o, i8load(xa, k * 32), i8load(xb, k * 32),
                                  0 if iq else xs[t, k], 0 if iq else xs[t + 1, k], iq)
            a0 = vfma(da, itof(sa), a0)
            a1 = vfma(db, itof(sb), a1)
        _store8(out, t, r, n, vsub(a0, m0))
        _store8(out, t + 1, r, n, vsub(a1, m1))
    if T % 2:
        t = T - 1
        xt = xq[t]
        a0 = vzero()
        m0 = vzero()
        for k in range(nb):
            o = k * bb
            if t == 0:
                _prefetch_next(raw, nxt, k, 8 * bb)
            da = vmul(f16x8(b0, b1, b2, b3, b4, b5, b6, b7, o), vsplat(xd[t, k]))
            if kq:
                sa, ma = _q4k_8(b0, b1, b2, b3, b4, b5, b6, b7, o, xt, k * 256, xs[t, k * 8:k * 8 + 8], kq == 5)
                dm = f16x8(b0, b1, b2, b3, b4, b5, b6, b7, o + 2)
                m0 = vfma(vmul(dm, vsplat(xd[t, k])), itof(ma), m0)
            else:
                sa = _q40_8(b0, b1, b2, b3, b4, b5, b6, b7, o, i8load(xt, k * 32), 0 if iq else xs[t, k], iq)
            a0 = vfma(da, itof(sa), a0)
        _store8(out, t, r, n, vsub(a0, m0))


@njit(cache=True)
def _quantize8(x, kq, iq):
    """The activation rows for ``_rows8_task``: (xq, xd, xs) as Q8_K (kq; xs: sums per 32), or
    Q8_0 (xs: -8 x the block sums, Q4_0's offset; unused for IQ4_NL)."""
    T, cols = x.shape
    xq = np.empty((T, cols), dtype=np.int8)
    xd = np.empty((T, cols // 256 if kq else cols // 32), dtype=np.float32)
    xs = np.empty((T, cols // 32), dtype=np.int32)
    if kq:
        quantize_q8_k(x, xq, xd, xs)
    elif iq:
        quantize_q8_0(x, xq, xd)
    else:
        quantize_q8_0_bs(x, xq, xd, xs)
    return xq, xd, xs


# Batches of at least this many rows use ``_lanes_row``: it costs the same for 1..8 rows, the 8-row
# kernels (``_rows8_task``) grow with the rows; the crossing measured on a 3072 x 768 matrix from DRAM.
LANES_MIN = {dq.Q4_0: 6, dq.Q4_K: 3}


@njit(cache=True)
def _to_lanes(x, kq):
    """A batch x [T, cols] quantized (Q8_K blocks if kq, else Q8_0: the rounding of
    ``quantize_q8_k`` / ``quantize_q8_0``) straight into lanes (``simd``'s layout), per group of 8
    rows tg: xi[tg, 32 g + 4 tt + i] = q[8 tg + tt, 4 g + i]; xdv[tg, 8 k + tt] the block scales;
    per 32 values j, xsv[tg, 8 j + tt] = -8 x the sum of q (Q8_0: Q4_0's offset) and
    xs16[tg, 16 (j // 2) + 2 tt + j % 2] = the sum of q as int16 (Q8_K; |sum| < 2**15).  Lanes
    past T are zero.  Serial (np.zeros in a parallel function would each be a parallel loop)."""
    T, cols = x.shape
    ntg = (T + 7) // 8
    nb = cols // 256 if kq else cols // 32
    xi = np.zeros((ntg, cols * 8), dtype=np.int8)
    xdv = np.zeros((ntg, nb * 8), dtype=np.float32)
    xsv = np.zeros((ntg, cols // 32 * 8), dtype=np.int32)
    xs16 = np.zeros((ntg, cols // 32 * 8), dtype=np.int16)
    for t in range(T):
        tg = t // 8
        tt = t % 8
        xt = x[t]
        xg = xi[tg]
        for k in range(nb):
            if kq:
                iscale, d = _k_scale(xt, k * 256)
                xdv[tg, 8 * k + tt] = d
                for j in range(k * 8, k * 8 + 8):
                    s0, s1 = _q8_k_run(xt, 32 * j, iscale, xg, 256 * j + 4 * tt, 32)
                    xsv[tg, 8 * j + tt] = np.int32(-8) * np.int32(s0 + s1)
                    xs16[tg, 16 * (j // 2) + 2 * tt + j % 2] = s0 + s1
            else:
                d, _, sm = _q8_0_block(xt, 32 * k, xg, 256 * k + 4 * tt, 32)
                xdv[tg, 8 * k + tt] = d
                xsv[tg, 8 * k + tt] = np.int32(-8) * np.int32(sm)
                xs16[tg, 16 * (k // 2) + 2 * tt + k % 2] = sm
    return xi, xdv, xsv, xs16


@njit(cache=True, forceinline=True)
def _lanes_row(raw, xi, xdv, xsv, xs16, out, r, kq):
    """Q4_0 (kq False) or Q4_K (kq True) weights times a batch of activation rows held in lanes:
    one weight row at a time against 8 activation rows.  Each 4 weight values are broadcast
    (``i8bc4``), split into nibbles and multiplied with the 8 rows' 4 values by one vpmaddubsw; a
    32-value run's 8 products stay in 16-bit lanes (|sum| <= 8 x 2 x 15 x 127 < 2**15), and one
    vpmaddwd by ones (Q4_0) or by the sub-block scale (Q4_K) gives lane t = row t's exact int32
    sum.  The block's float step is then one vector: FMA of (weight scale x row scales) by the
    converted sums -- per (weight row, activation row) the same integers and the same float
    operations in the same order as ``_rows8_task``, so each row's result is bit for bit the one it
    gets alone.  No horizontal reductions, and the nibbles are decoded once for 8 rows."""
    T = out.shape[0]
    ntg = (T + 7) // 8
    cols = xi.shape[1] // 8
    nb = cols // 256 if kq else cols // 32
    bb = 144 if kq else 18
    b = raw[r]
    for tg in range(ntg):
        xg = xi[tg]
        dg = xdv[tg]
        a = vzero()
        m = vzero()
        for k in range(nb):
            o = k * bb
            if tg == 0 and (kq or k % 4 == 0):
                _prefetch_ahead(raw, r, o, 144 if kq else 72)
            if kq:
                s = izero()
                mi = izero()
                for sp in range(4):
                    sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
                    sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
                    base = o + 16 + sp * 32
                    xo = (k * 64 + sp * 16) * 32
                    v = i8bc4(b, base)
                    lo = imaddubs(i8half(v, False), i8load(xg, xo))
                    hi = imaddubs(i8half(v, True), i8load(xg, xo + 256))
                    for g in range(1, 8):
                        v = i8bc4(b, base + 4 * g)
                        lo = i16add(lo, imaddubs(i8half(v, False), i8load(xg, xo + 32 * g)))
                        hi = i16add(hi, imaddubs(i8half(v, True), i8load(xg, xo + 256 + 32 * g)))
                    s = iadd(s, iadd(imadd2(lo, sc0, sc0), imadd2(hi, sc1, sc1)))
                    mi = iadd(mi, imaddp(i16load(xs16[tg], (k * 4 + sp) * 16), mn0, mn1))
                xv = vload(dg, k * 8)
                a = vfma(vmul(vsplat(f16at(b, o)), xv), itof(s), a)
                m = vfma(vmul(vsplat(f16at(b, o + 2)), xv), itof(mi), m)
            else:
                xo = k * 256
                v = i8bc4(b, o + 2)
                p = i16add(imaddubs(i8half(v, False), i8load(xg, xo)),
                           imaddubs(i8half(v, True), i8load(xg, xo + 128)))
                for j in range(1, 4):
                    v = i8bc4(b, o + 2 + 4 * j)
                    p = i16add(p, imaddubs(i8half(v, False), i8load(xg, xo + 32 * j)))
                    p = i16add(p, imaddubs(i8half(v, True), i8load(xg, xo + 128 + 32 * j)))
                s = iadd(imadd2(p, 1, 1), i32load(xsv[tg], k * 8))
                a = vfma(vmul(vsplat(f16at(b, o)), vload(dg, k * 8)), itof(s), a)
        res = vsub(a, m)
        for tt in range(min(8, T - 8 * tg)):
            out[8 * tg + tt, r] = vlane(res, tt)


@njit(cache=True)
def _quantize16(x):
    """Q8_K activation rows with their 16-value group sums: (xq, xd, xs16), xs16 int16 [T, n/16]
    (|sum| <= 16 x 127), for the types with 16-value scales (Q2_K, Q3_K, Q6_K)."""
    T, cols = x.shape
    xq = np.empty((T, cols), dtype=np.int8)
    xd = np.empty((T, cols // 256), dtype=np.float32)
    xs16 = np.empty((T, cols // 16), dtype=np.int16)
    _q8_k_rows(x, xq, xd, xs16, True)
    return xq, xd, xs16


@njit(cache=True, forceinline=True)
def _k23_run(q2, b, o, h, j, ga, gb, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3):
    """Run j of half h (values 128h + 32j .. +32) of a Q2_K / Q3_K block at o, decoded once into
    unsigned bytes (Q2_K: 2 bits, 0..3; Q3_K: 2 bits | the hmask bit << 2, 0..7: q + 4), times up
    to 4 activation rows, by the run's two 16-value scales (lanes ga, gb of sc; literals) into
    int32 lanes."""
    w = i8crumb(b, o + (16 if q2 else 32) + 32 * h, 2 * j)
    if not q2:
        w = i8or(w, i8bit(b, o, 4 * h + j, 2))
    sv = i16sel2(sc, ga, gb)
    xr = xo + 128 * h + 32 * j
    s0 = iadd(s0, imadd(imaddubs(w, i8load(x0, xr)), sv))
    s1 = iadd(s1, imadd(imaddubs(w, i8load(x1, xr)), sv))
    s2 = iadd(s2, imadd(imaddubs(w, i8load(x2, xr)), sv))
    s3 = iadd(s3, imadd(imaddubs(w, i8load(x3, xr)), sv))
    return s0, s1, s2, s3


@njit(cache=True, forceinline=True)
def _k23_base(q2, sc, mn, xs, g):
    """A row's block start: Q2_K 0 (its mins go apart: ``_k23_rows``); Q3_K the -4 offset,
    -4 x sum_g scale_g x (sum of x over group g), one vpmaddwd (as ``_q6_fix``)."""
    if q2:
        return izero()
    return imulc(imadd(sc, i16load(xs, g)), -4)


@njit(cache=True, forceinline=True)
def _k23_rows(q2, raw, b, xq, xs16, xd, out, r, t, n):
    """Rows t .. t+n-1 (n <= 4, a constant at each call) of a batch times Q2_K (q2) or Q3_K weight
    row r: per 256-value block the 8 runs (``_k23_run``) in int32 lanes, exact; then one FMA by
    d x d_x (Q2_K: and its mins, sum_g min_g x group sum, by dmin x d_x, subtracted at the end).
    Rows past n are clamped and never stored (dropped by the compiler), so each row's arithmetic
    does not depend on n."""
    T = xq.shape[0]
    nb = xq.shape[1] // 256
    bs = 84 if q2 else 110
    t0 = min(t + 0, T - 1)
    t1 = min(t + 1, T - 1)
    t2 = min(t + 2, T - 1)
    t3 = min(t + 3, T - 1)
    x0 = xq[t0]
    x1 = xq[t1]
    x2 = xq[t2]
    x3 = xq[t3]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    m0, m1, m2, m3 = vzero(), vzero(), vzero(), vzero()
    for k in range(nb):
        o = k * bs
        if t == 0:
            _prefetch_ahead(raw, r, o, bs)
        if q2:
            sc = i16nib(b, o, False)
            mn = i16nib(b, o, True)
            d = f16at(b, o + 80)
        else:
            sc = i16q3sc(b, o + 96)
            mn = sc
            d = f16at(b, o + 108)
        g = k * 16
        s0 = _k23_base(q2, sc, mn, xs16[t0], g)
        s1 = _k23_base(q2, sc, mn, xs16[t1], g)
        s2 = _k23_base(q2, sc, mn, xs16[t2], g)
        s3 = _k23_base(q2, sc, mn, xs16[t3], g)
        xo = k * 256
        s0, s1, s2, s3 = _k23_run(q2, b, o, 0, 0, 0, 1, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 0, 1, 2, 3, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 0, 2, 4, 5, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 0, 3, 6, 7, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 1, 0, 8, 9, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 1, 1, 10, 11, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 1, 2, 12, 13, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        s0, s1, s2, s3 = _k23_run(q2, b, o, 1, 3, 14, 15, sc, x0, x1, x2, x3, xo, s0, s1, s2, s3)
        a0 = vfma(vsplat(xd[t0, k] * d), itof(s0), a0)
        a1 = vfma(vsplat(xd[t1, k] * d), itof(s1), a1)
        a2 = vfma(vsplat(xd[t2, k] * d), itof(s2), a2)
        a3 = vfma(vsplat(xd[t3, k] * d), itof(s3), a3)
        if q2:
            dm = f16at(b, o + 82)
            m0 = vfma(vsplat(xd[t0, k] * dm), itof(imadd(mn, i16load(xs16[t0], g))), m0)
            m1 = vfma(vsplat(xd[t1, k] * dm), itof(imadd(mn, i16load(xs16[t1], g))), m1)
            m2 = vfma(vsplat(xd[t2, k] * dm), itof(imadd(mn, i16load(xs16[t2], g))), m2)
            m3 = vfma(vsplat(xd[t3, k] * dm), itof(imadd(mn, i16load(xs16[t3], g))), m3)
    out[t, r] = vhsum(a0) - vhsum(m0)
    if n > 1:
        out[t + 1, r] = vhsum(a1) - vhsum(m1)
    if n > 2:
        out[t + 2, r] = vhsum(a2) - vhsum(m2)
    if n > 3:
        out[t + 3, r] = vhsum(a3) - vhsum(m3)


@njit(cache=True, forceinline=True)
def _k23(q2, raw, xq, xd, xs16, out, r):
    """Weight row r times every activation row: 4 rows at a time, then 1 (``_k23_rows``)."""
    T = xq.shape[0]
    T4 = T - T % 4
    b = raw[r]
    for t in range(0, T4, 4):
        _k23_rows(q2, raw, b, xq, xs16, xd, out, r, t, 4)
    for t in range(T4, T):
        _k23_rows(q2, raw, b, xq, xs16, xd, out, r, t, 1)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q2_k(raw, x, out):
    """Q2_K weights x Q8_K activations (``_k23_rows``; llama.cpp's repacked Q2_K kernel sums in
    another order)."""
    xq, xd, xs16 = _quantize16(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _k23(True, raw, xq, xd, xs16, out, r)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q3_k(raw, x, out):
    """Q3_K weights x Q8_K activations (``_k23_rows``)."""
    xq, xd, xs16 = _quantize16(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _k23(False, raw, xq, xd, xs16, out, r)


@njit(cache=True, forceinline=True)
def _iq4xs_rows(raw, b, xq, xd, out, r, t, n):
    """Rows t .. t+n-1 (n <= 4, a constant at each call) of a batch times IQ4_XS weight row r: per
    32-value sub-block its kvalues (one vpshufb) times x with signs (``imaddss``), by the signed
    6-bit sub-block scale (vpmaddwd) into int32 lanes; one FMA by d x d_x per 256 (llama.cpp's
    AVX2 vec_dot does the same per block).  Rows past n: as ``_k23_rows``."""
    T = xq.shape[0]
    nb = xq.shape[1] // 256
    t0 = min(t + 0, T - 1)
    t1 = min(t + 1, T - 1)
    t2 = min(t + 2, T - 1)
    t3 = min(t + 3, T - 1)
    x0 = xq[t0]
    x1 = xq[t1]
    x2 = xq[t2]
    x3 = xq[t3]
    a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
    for k in range(nb):
        o = k * 136
        if t == 0:
            _prefetch_ahead(raw, r, o, 136)
        sh = np.int32(b[o + 2]) | (np.int32(b[o + 3]) << 8)
        s0, s1, s2, s3 = izero(), izero(), izero(), izero()
        for sb in range(8):
            ls = (((b[o + 4 + sb // 2] >> (4 * (sb % 2))) & 15) | (((sh >> (2 * sb)) & 3) << 4)) - 32
            w = i8iq4(b, o + 8 + sb * 16)
            xo = k * 256 + sb * 32
            s0 = iadd(s0, imadd2(imaddss(w, i8load(x0, xo)), ls, ls))
            s1 = iadd(s1, imadd2(imaddss(w, i8load(x1, xo)), ls, ls))
            s2 = iadd(s2, imadd2(imaddss(w, i8load(x2, xo)), ls, ls))
            s3 = iadd(s3, imadd2(imaddss(w, i8load(x3, xo)), ls, ls))
        d = f16at(b, o)
        a0 = vfma(vsplat(d * xd[t0, k]), itof(s0), a0)
        a1 = vfma(vsplat(d * xd[t1, k]), itof(s1), a1)
        a2 = vfma(vsplat(d * xd[t2, k]), itof(s2), a2)
        a3 = vfma(vsplat(d * xd[t3, k]), itof(s3), a3)
    store4(out, t, r, n, a0, a1, a2, a3)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_iq4_xs(raw, x, out):
    """IQ4_XS weights x Q8_K activations (``_iq4xs_rows``: 4 activation rows at a time, then 1)."""
    T, cols = x.shape
    xq = np.empty((T, cols), dtype=np.int8)
    xd = np.empty((T, cols // 256), dtype=np.float32)
    bsum32 = np.empty((T, cols // 32), dtype=np.int32)
    quantize_q8_k(x, xq, xd, bsum32)
    T4 = T - T % 4
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            b = raw[r]
            for t in range(0, T4, 4):
                _iq4xs_rows(raw, b, xq, xd, out, r, t, 4)
            for t in range(T4, T):
                _iq4xs_rows(raw, b, xq, xd, out, r, t, 1)


@njit(cache=True, forceinline=True)
def _q6_fix(sb, o, xs, g):
    """The -32 offset of a Q6_K block in int32 lanes: -32 x sum_g scale_g x (sum of x over group g),
    the 16 scales (int8, sign-extended) by the 16 group sums xs[g:g+16] with one vpmaddwd."""
    return imulc(imadd(i16s8(sb, o + 192), i16load(xs, g)), -32)


@njit(cache=True, forceinline=True)
def _q6_rows(raw, b, sb, xq, xs16, xd, out, r, t, n):
    """Rows t .. t+n-1 of a batch times Q6_K weight row r (b: its bytes, sb: the same as int8), each
    32-value run decoded once for the n rows.  n is a constant at every call (1, 2, 4 or 8): the
    accumulators of rows past n are never stored, so the compiler drops them; their loads are
    clamped to the last row.  Per row, the arithmetic does not depend on n."""
    T = xq.shape[0]
    nb = xq.shape[1] // 256
    t0 = min(t + 0, T - 1)
    t1 = min(t + 1, T - 1)
    t2 = min(t + 2, T - 1)
    t3 = min(t + 3, T - 1)
    t4 = min(t + 4, T - 1)
    t5 = min(t + 5, T - 1)
    t6 = min(t + 6, T - 1)
    t7 = min(t + 7, T - 1)
    x0 = xq[t0]
    x1 = xq[t1]
    x2 = xq[t2]
    x3 = xq[t3]
    x4 = xq[t4]
    x5 = xq[t5]
    x6 = xq[t6]
    x7 = xq[t7]
    a0 = vzero()
    a1 = vzero()
    a2 = vzero()
    a3 = vzero()
    a4 = vzero()
    a5 = vzero()
    a6 = vzero()
    a7 = vzero()
    for k in range(nb):
        o = k * 210
        if t == 0:
            _prefetch_ahead(raw, r, o, 210)
        dl = f16at(b, o + 208)
        s0 = _q6_fix(sb, o, xs16[t0], k * 16)
        s1 = _q6_fix(sb, o, xs16[t1], k * 16)
        s2 = _q6_fix(sb, o, xs16[t2], k * 16)
        s3 = _q6_fix(sb, o, xs16[t3], k * 16)
        s4 = _q6_fix(sb, o, xs16[t4], k * 16)
        s5 = _q6_fix(sb, o, xs16[t5], k * 16)
        s6 = _q6_fix(sb, o, xs16[t6], k * 16)
        s7 = _q6_fix(sb, o, xs16[t7], k * 16)
        for h in range(2):
            si = o + 192 + h * 8
            for p in range(4):
                wq = i8q6(b, o + h * 64, o + 128 + h * 32, p)
                c0 = sb[si + 2 * p]
                c1 = sb[si + 2 * p + 1]
                xo = k * 256 + h * 128 + p * 32
                s0 = iadd(s0, imadd2(imaddubs(wq, i8load(x0, xo)), c0, c1))
                s1 = iadd(s1, imadd2(imaddubs(wq, i8load(x1, xo)), c0, c1))
                s2 = iadd(s2, imadd2(imaddubs(wq, i8load(x2, xo)), c0, c1))
                s3 = iadd(s3, imadd2(imaddubs(wq, i8load(x3, xo)), c0, c1))
                s4 = iadd(s4, imadd2(imaddubs(wq, i8load(x4, xo)), c0, c1))
                s5 = iadd(s5, imadd2(imaddubs(wq, i8load(x5, xo)), c0, c1))
                s6 = iadd(s6, imadd2(imaddubs(wq, i8load(x6, xo)), c0, c1))
                s7 = iadd(s7, imadd2(imaddubs(wq, i8load(x7, xo)), c0, c1))
        a0 = vfma(vsplat(xd[t0, k] * dl), itof(s0), a0)
        a1 = vfma(vsplat(xd[t1, k] * dl), itof(s1), a1)
        a2 = vfma(vsplat(xd[t2, k] * dl), itof(s2), a2)
        a3 = vfma(vsplat(xd[t3, k] * dl), itof(s3), a3)
        a4 = vfma(vsplat(xd[t4, k] * dl), itof(s4), a4)
        a5 = vfma(vsplat(xd[t5, k] * dl), itof(s5), a5)
        a6 = vfma(vsplat(xd[t6, k] * dl), itof(s6), a6)
        a7 = vfma(vsplat(xd[t7, k] * dl), itof(s7), a7)
    store4(out, t, r, n, a0, a1, a2, a3)
    store4(out, t + 4, r, n - 4, a4, a5, a6, a7)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q6_k(raw, raw_i8, x, out):
    """Q6_K weights x Q8_K activations: per 32-value run the unsigned 6-bit values times x
    (vpmaddubsw: pairs <= 2 x 63 x 127, no saturation) by the run's two 16-value scales (vpmaddwd),
    summed in int32 lanes per 256; the -32 offset once per block through x's 16-value group sums
    (``_q6_fix``), not per run.  Batches: each run is decoded once for 8 activation rows, then 4, 2
    and 1 for the rest (``_q6_rows``); integer lanes are exact, so every row's numbers
    are those of the row alone."""
    rows = raw.shape[0]
    T = x.shape[0]
    xq, xd, xs16 = _quantize16(x)
    T8 = T - T % 8
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            sb = raw_i8[r]
            for t in range(0, T8, 8):
                _q6_rows(raw, b, sb, xq, xs16, xd, out, r, t, 8)
            t = T8
            if T - t >= 4:
                _q6_rows(raw, b, sb, xq, xs16, xd, out, r, t, 4)
                t += 4
            if T - t >= 2:
                _q6_rows(raw, b, sb, xq, xs16, xd, out, r, t, 2)
                t += 2
            while t < T:
                _q6_rows(raw, b, sb, xq, xs16, xd, out, r, t, 1)
                t += 1


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q4_0(raw, x, out):
    """Q4_0 weights x Q8_0 activations: ``_rows8_task`` with kq a constant written inside the
    parallel loop (so the other branch compiles out)."""
    xq, xd, xs = _quantize8(x, False, False)
    for task in prange((raw.shape[0] + 7) // 8):
        _rows8_task(raw, xq, xd, xs, out, task, 0, False)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_iq4_nl(raw, x, out):
    """IQ4_NL weights x Q8_0 activations: ``_rows8_task`` with its kvalues (llama.cpp's repacked 8-row
    IQ4_NL gemv order), batches included."""
    xq, xd, xs = _quantize8(x, False, True)
    for task in prange((raw.shape[0] + 7) // 8):
        _rows8_task(raw, xq, xd, xs, out, task, 0, True)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q4_k(raw, x, out):
    """Q4_K weights x Q8_K activations: ``_rows8_task`` with kq a constant written inside the
    parallel loop (so the other branch compiles out)."""
    xq, xd, xs = _quantize8(x, True, False)
    for task in prange((raw.shape[0] + 7) // 8):
        _rows8_task(raw, xq, xd, xs, out, task, 4, False)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvi_q5_k(raw, x, out):
    """Q5_K weights x Q8_K activations: ``_rows8_task`` as Q4_K plus the fifth bits, batches
    included (llama.cpp repacks Q5_K only for ARM; its x86 vec_dot sums in another order)."""
    xq, xd, xs = _quantize8(x, True, False)
    for task in prange((raw.shape[0] + 7) // 8):
        _rows8_task(raw, xq, xd, xs, out, task, 5, False)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvl_q4_0(raw, x, out):
    """Q4_0 weights x a batch of Q8_0 activation rows in lanes (``_lanes_row``)."""
    xi, xdv, xsv, xs16 = _to_lanes(x, False)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _lanes_row(raw, xi, xdv, xsv, xs16, out, r, False)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvl_q4_k(raw, x, out):
    """Q4_K weights x a batch of Q8_K activation rows in lanes (``_lanes_row``)."""
    xi, xdv, xsv, xs16 = _to_lanes(x, True)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            _lanes_row(raw, xi, xdv, xsv, xs16, out, r, True)


def _bind(W):
    """The kernel call for W, its views made once: f(x, out) (x float32, quantized inside)."""
    qtype = W.qtype
    rb = W.row_bytes
    ri = rb.view(np.int8)
    if qtype == dq.Q8_0:
        return lambda x, out: mvi_q8_0(rb, ri, x, out)
    if qtype == dq.Q4_0:
        return lambda x, out: (mvl_q4_0 if x.shape[0] >= LANES_MIN[dq.Q4_0] else mvi_q4_0)(rb, x, out)
    if qtype == dq.Q4_K:
        return lambda x, out: (mvl_q4_k if x.shape[0] >= LANES_MIN[dq.Q4_K] else mvi_q4_k)(rb, x, out)
    f = {dq.Q4_1: mvi_q4_1, dq.Q5_0: mvi_q5_0, dq.Q5_1: mvi_q5_1}.get(qtype)
    if f is not None:
        return lambda x, out: f(rb, x, out, dq.F16_LUT)
    f = {dq.IQ4_NL: mvi_iq4_nl, dq.Q5_K: mvi_q5_k,
         dq.Q2_K: mvi_q2_k, dq.Q3_K: mvi_q3_k, dq.IQ4_XS: mvi_iq4_xs}.get(qtype)
    if f is not None:
        return lambda x, out: f(rb, x, out)
    return lambda x, out: mvi_q6_k(rb, ri, x, out)


def matvec_q8(W, x: np.ndarray, out: np.ndarray) -> bool:
    """``out = round_like_llama(x) @ W.T`` for a few rows of x, with integer dot products, when
    W's type has a kernel here (``TYPES``); returns False (nothing done) otherwise.  Each kernel
    quantizes x itself (``quantize_q8_0`` / ``quantize_q8_k``) before its parallel loop: one call."""
    if W.qtype not in TYPES:
        return False
    f = W.__dict__.get("_mvq")
    if f is None:
        f = W.__dict__["_mvq"] = _bind(W)
    f(x, out)
    return True
