"""Fused decode matvecs on weights in their file encoding (no dequantized copy in memory).

``out[t, r] = W[r] . x[t]`` for a few activation rows ``x`` (decode, small batches),
rows split across threads, each weight byte read once per call.  Activations stay
float32 (the *exact* mode: the same numbers as dequantizing and multiplying, up to
summation order).  Per block the scale is factored out of the dot product
(``d * sum(q * x)``), which is where these differ from ``dequant_row`` + dot by
float32 rounding only.

Each kernel is checked against ``x @ dequantize(W).T`` in tests/kernels/test_cpu_kernels.py.

The inner loops use explicit 8-lane vectors (``rwkvcpu/kernels/simd.py``): accumulators stay in
registers, 8 weights are loaded and converted per instruction, the per-block scale is folded in
with a vector FMA and the horizontal sum happens once per row.  Offsets that every value of a
block shares (Q4_0's -8, Q6_K's -32, Q4_K's mins) are applied once per block through block sums
of x.  Measured on the 0.1B decode, 2 threads: Q8_0 31 -> 46 tok/s, F16 26 -> 38, Q4_0 24 -> 35.
In the ragged tail of an F16 row (no Numba scalar half type) its bits are moved into a float32
(``sign<<16 | exp,mant<<13``) and scaled by 2**112, exact for normal and subnormal halves.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import dequant as dq
from .simd import (dot_f32, f16at, i8q5, i8sub, prefetch, vadd, vsub, vbits, vfma, vhsum, vload, vload_bf16, vload_f16, vload_w, vmul,
                   viq4, vkscales, vq3scales, vq5bits, vq5u32, vlane, vpair4, vq2lanes, vq3lanes, vq5lanes, vq6half, vq6lanes, vnlanes, viq4lanes, viq4nl_lanes, vxs_scales, vsplat, vstore, vsum8, vzero, vi8f, wat)

FLAGS = {"reassoc", "contract"}
ROWS = 8                 # rows per parallel task
TWO_112 = np.float32(2.0 ** 112)
FOUR, MFOUR = np.float32(4.0), np.float32(-4.0)
PF_AHEAD = 4096          # bytes: how far ahead of a row-sequential kernel its weights are prefetched


@njit(cache=True)
def block_sums(x, n):
    """[T, cols // n] float32: the sums of x's rows over each n-value block (for the offsets and
    mins that whole blocks share).  Serial and not inlined, so that the parallel kernels calling
    it before their parallel loop get no parallel loop of their own out of it (and no NumPy call
    from Python: ~3 us a matvec less)."""
    T, cols = x.shape
    out = np.empty((T, cols // n), dtype=np.float32)
    for t in range(T):
        for k in range(cols // n):
            acc = np.float32(0.0)
            for i in range(k * n, k * n + n):
                acc += x[t, i]
            out[t, k] = acc
    return out


@njit(cache=True, inline="always")
def prefetch_span(arr, byte, span):
    """Prefetch the cache lines of bytes [byte, byte + span) of arr's buffer.  The decode kernels
    read rows one after another, one long stream, yet prefetching PF_AHEAD bytes ahead in
    software still gains 8-24% from DRAM here (Q6_K 768 x 3072: 124 -> 100 us)."""
    for c in range(0, span, 64):
        prefetch(arr, byte + c)


@njit(cache=True, inline="always")
def _prefetch_ahead(raw, r, o, span):
    """``prefetch_span`` of span bytes PF_AHEAD past byte o of row r of raw (rows of bytes)."""
    prefetch_span(raw, r * raw.shape[1] + o + PF_AHEAD, span)


@njit(cache=True, inline="always")
def _prefetch_pair(raw, r):
    """``prefetch_span`` of two rows' bytes PF_AHEAD past the start of row r, for the batch kernels
    that read whole rows with no decoding of their own (F16, F32, BF16's buffer).  At 8 rows of x
    they compute long enough per row that the hardware prefetchers fell behind: the F16 head
    (65536 x 768, from DRAM) took 8.5 ms at T = 8, 6.0-6.5 with this (Zen 5, 2 threads)."""
    prefetch_span(raw, r * raw.shape[1] + PF_AHEAD, 2 * raw.shape[1])


@njit(cache=True, inline="always")
def f16lut(b, o, lut):
    """The f16 block scale at bytes b[o:o+2] as float32 through ``dq.F16_LUT`` (lut): two byte
    loads and a table load, no vector-pipe work.  ``simd.f16at`` (vpinsrw, vcvtph2ps, then a
    broadcast) took ~1.8 of ~7 cycles a 32-value block in a decode loop, on the pipes the FMAs
    and conversions need; a row's scales share a few of the table's cache lines.  Over a 0.1B
    token's 72 matrices: IQ4_NL 1.2x, Q4_0 1.05x, Q8_0 1.0-1.1x over sittings; Q4_1/Q5_0/Q5_1
    the same within noise.  (Types with one scale per 256 values keep ``f16at``.)"""
    return lut[np.int64(b[o]) | (np.int64(b[o + 1]) << 8)]


@njit(cache=True, inline="always", fastmath=FLAGS)
def _w16_tail(acc, wr, xt, c16, is_bf16):
    """acc plus the products of columns c16.. of an F16/BF16 row (a ragged end past 16 columns)."""
    for j in range(c16, wr.shape[0]):
        h = np.uint32(wr[j])
        if is_bf16:
            wv = np.array([h << 16], dtype=np.uint32).view(np.float32)[0]
        else:
            wv = np.array([((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)],
                          dtype=np.uint32).view(np.float32)[0] * TWO_112
        acc += wv * xt[j]
    return acc


def _w16_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(w16, x, out, r, t, is_bf16):
        """F16 or BF16 row r (its bits as uint16, converted 8 at a time in registers) times row t of x
        and, with ``two`` (a constant), row t + 1: each weight vector converted once for both."""
        cols = w16.shape[1]
        c16 = cols - cols % 16
        wr = w16[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        a0 = vzero()
        a1 = vzero()
        e0 = vzero()
        e1 = vzero()
        for j in range(0, c16, 16):
            w0 = vload_bf16(wr, j) if is_bf16 else vload_f16(wr, j)
            w1 = vload_bf16(wr, j + 8) if is_bf16 else vload_f16(wr, j + 8)
            a0 = vfma(w0, vload(xt, j), a0)
            a1 = vfma(w1, vload(xt, j + 8), a1)
            if two:
                e0 = vfma(w0, vload(xu, j), e0)
                e1 = vfma(w1, vload(xu, j + 8), e1)
        out[t, r] = _w16_tail(vhsum(vadd(a0, a1)), wr, xt, c16, is_bf16)
        if two:
            out[u, r] = _w16_tail(vhsum(vadd(e0, e1)), wr, xu, c16, is_bf16)
    return rows


_w16_rows1, _w16_rows2 = _w16_rows_for(False), _w16_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_16bit(w16, x, out, is_bf16):
    """F16 or BF16 weights, rows of x one at a time (``_w16_rows_for``)."""
    for task in prange((w16.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(w16.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _w16_rows1(w16, x, out, r, t, is_bf16)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_16bit(w16, x, out, is_bf16):
    """F16 or BF16 weights, rows of x in pairs (an even count)."""
    for task in prange((w16.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(w16.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _w16_rows2(w16, x, out, r, t, is_bf16)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_f32(w, x, out):
    """F32 weights: two 8-lane accumulators per row (np.matmul's sgemm at T=1 streams at half this)."""
    rows = w.shape[0]
    T = x.shape[0]
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            for t in range(T):
                out[t, r] = dot_f32(w[r], x[t])


def _q80_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(raw, raw_i8, x, out, r, t, lut):
        """Q8_0 row r times row t of x and, with ``two`` (a constant), row t + 1: each block's int8
        values converted once for both, each row's arithmetic that of the row alone."""
        b = raw[r]
        q = raw_i8[r]
        nb = x.shape[1] // 32
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc = vzero()
        acc2 = vzero()
        for k in range(nb):
            o = k * 34
            if t == 0 and k % 2 == 0:
                _prefetch_ahead(raw, r, o, 68)
            xo = k * 32
            s = vmul(vload(q, o + 2), vload(xt, xo))
            s = vfma(vload(q, o + 10), vload(xt, xo + 8), s)
            s = vfma(vload(q, o + 18), vload(xt, xo + 16), s)
            s = vfma(vload(q, o + 26), vload(xt, xo + 24), s)
            d = vsplat(f16lut(b, o, lut))
            acc = vfma(d, s, acc)
            if two:                                 # (the same loads: LLVM converts them once)
                s = vmul(vload(q, o + 2), vload(xu, xo))
                s = vfma(vload(q, o + 10), vload(xu, xo + 8), s)
                s = vfma(vload(q, o + 18), vload(xu, xo + 16), s)
                s = vfma(vload(q, o + 26), vload(xu, xo + 24), s)
                acc2 = vfma(d, s, acc2)
        out[t, r] = vhsum(acc)
        if two:
            out[u, r] = vhsum(acc2)
    return rows


_q80_rows1, _q80_rows2 = _q80_rows_for(False), _q80_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q8_0(raw, raw_i8, x, out, lut):
    """Q8_0 weights, rows of x one at a time (``_q80_rows_for``)."""
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q80_rows1(raw, raw_i8, x, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q8_0(raw, raw_i8, x, out, lut):
    """Q8_0 weights, rows of x in pairs (an even count)."""
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q80_rows2(raw, raw_i8, x, out, r, t, lut)


def _q40_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(raw, x, xsum, out, r, t, lut):
        """Q4_0 row r times row t of x and, with ``two`` (a constant), row t + 1 too: each block's
        nibbles decoded once for both, each row's arithmetic that of the row alone (so a batch of two
        gives each row the bits it gets alone).  xsum[t, k] (``block_sums``): sum of x[t] over block k
        (the -8 offset: sum((q-8)x) = sum(qx) - 8 sum(x)).  (Converting the nibbles in their lanes, as
        ``_iq4_rows_for`` does, was 3% slower here.)"""
        b = raw[r]
        nb = x.shape[1] // 32
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc = vzero()
        acc2 = vzero()
        accm = np.float32(0.0)
        accm2 = np.float32(0.0)
        for k in range(nb):
            o = k * 18
            if t == 0 and k % 4 == 0:
                _prefetch_ahead(raw, r, o, 72)
            xo = k * 32
            d = f16lut(b, o, lut)
            s = vmul(vbits(b, o + 2, 0, 15), vload(xt, xo))         # values 0..7: low nibbles
            s = vfma(vbits(b, o + 10, 0, 15), vload(xt, xo + 8), s)
            s = vfma(vbits(b, o + 2, 4, 15), vload(xt, xo + 16), s)  # values 16..23: high nibbles
            s = vfma(vbits(b, o + 10, 4, 15), vload(xt, xo + 24), s)
            acc = vfma(vsplat(d), s, acc)
            accm += d * xsum[t, k]
            if two:                                 # (the same loads: LLVM decodes them once)
                s = vmul(vbits(b, o + 2, 0, 15), vload(xu, xo))
                s = vfma(vbits(b, o + 10, 0, 15), vload(xu, xo + 8), s)
                s = vfma(vbits(b, o + 2, 4, 15), vload(xu, xo + 16), s)
                s = vfma(vbits(b, o + 10, 4, 15), vload(xu, xo + 24), s)
                acc2 = vfma(vsplat(d), s, acc2)
                accm2 += d * xsum[u, k]
        out[t, r] = vhsum(acc) - np.float32(8.0) * accm
        if two:
            out[u, r] = vhsum(acc2) - np.float32(8.0) * accm2
    return rows


_q40_rows1, _q40_rows2 = _q40_rows_for(False), _q40_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_0(raw, x, out, lut):
    """Q4_0 weights, rows of x one at a time (``_q40_rows_for``)."""
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q40_rows1(raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q4_0(raw, x, out, lut):
    """Q4_0 weights, rows of x in pairs (an even count): each weight block decoded once for two."""
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q40_rows2(raw, x, xsum, out, r, t, lut)


def _q501_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(qtype, raw, x, xsum, out, r, t, lut):
        """Q4_1, Q5_0 and Q5_1 (32-value blocks): as ``_q40_rows_for`` (row t of x, and t + 1 with
        ``two``), with Q5's fifth bits (bit i of the block's uint32 qh for value i) or-ed in
        (``i8q5``), and the block's m (Q4_1, Q5_1) times the block sum of x, as llama.cpp applies it."""
        nb = x.shape[1] // 32
        bs = 20 if qtype == dq.Q4_1 else (22 if qtype == dq.Q5_0 else 24)
        five = qtype != dq.Q4_1
        off = 16 if qtype == dq.Q5_0 else 0
        b = raw[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc = vzero()
        acc2 = vzero()
        accm = np.float32(0.0)
        accm2 = np.float32(0.0)
        for k in range(nb):
            o = k * bs
            if t == 0 and k % 2 == 0:
                _prefetch_ahead(raw, r, o, 2 * bs)
            xo = k * 32
            d = f16lut(b, o, lut)
            qs = o + bs - 16
            if five:                            # q (Q5_1) or q - 16 (Q5_0: -16..15, formed
                w = i8q5(b, qs, qs - 4)         # before the products; as q and 16 * sum(x)
                if off:                         # apart, the difference cancels ~4 bits
                    w = i8sub(w, off)           # and llama numerics then flips the
                q0 = vi8f(w, 0)                 # rounding of later activations:
                q1 = vi8f(w, 1)                 # 0.07 off llama.cpp); the 32 values
                q2 = vi8f(w, 2)                 # assembled in bytes, widened 8 at a time
                q3 = vi8f(w, 3)
            else:
                q0 = vbits(b, qs, 0, 15)
                q1 = vbits(b, qs + 8, 0, 15)
                q2 = vbits(b, qs, 4, 15)
                q3 = vbits(b, qs + 8, 4, 15)
            s = vmul(q0, vload(xt, xo))
            s = vfma(q1, vload(xt, xo + 8), s)
            s = vfma(q2, vload(xt, xo + 16), s)
            s = vfma(q3, vload(xt, xo + 24), s)
            acc = vfma(vsplat(d), s, acc)
            if qtype != dq.Q5_0:
                accm += f16lut(b, o + 2, lut) * xsum[t, k]
            if two:
                s = vmul(q0, vload(xu, xo))
                s = vfma(q1, vload(xu, xo + 8), s)
                s = vfma(q2, vload(xu, xo + 16), s)
                s = vfma(q3, vload(xu, xo + 24), s)
                acc2 = vfma(vsplat(d), s, acc2)
                if qtype != dq.Q5_0:
                    accm2 += f16lut(b, o + 2, lut) * xsum[u, k]
        out[t, r] = vhsum(acc) + accm
        if two:
            out[u, r] = vhsum(acc2) + accm2
    return rows


_q501_rows1, _q501_rows2 = _q501_rows_for(False), _q501_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True)
def iq4_x_order(x):
    """x's rows in the order ``viq4lanes`` is read in: per pair of 32-value runs (A, B), vector
    v = 4h + k, lane 4j + i holds x[run j, 16h + 4i + k] / IQ4_LANE_SCALE[k] (exact)."""
    T, cols = x.shape
    out = x.copy()
    for t in range(T):
        for p in range(0, cols - cols % 64, 64):
            for h in range(2):
                for k in range(4):
                    s = np.float32(1.0) if k < 2 else np.float32(2.0 ** (8 - 8 * k))
                    for j in range(2):
                        for i in range(4):
                            out[t, p + 8 * (4 * h + k) + 4 * j + i] = x[t, p + 32 * j + 16 * h + 4 * i + k] * s
    return out


@njit(cache=True, inline="always", fastmath=FLAGS)
def _iq4xs_pair(sc, b, q, xt, xo, acc0, acc1, a, c):
    """Sub-blocks a, c (literals) of an IQ4_XS block: their 32 bytes at q, x at xo (64 values)."""
    v = viq4lanes(b, q, q + 16)
    s2 = vpair4(sc, a, c)
    return vfma(s2, _lanes32(v, 0, xt, xo), acc0), vfma(s2, _lanes32(v, 4, xt, xo + 32), acc1)


def _iq4xs_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(raw, x, xsum, out, r, t):
        """IQ4_XS (256-value blocks, 8 signed 6-bit sub-block scales, ``vxs_scales``), row t of x and
        t + 1 with ``two`` (the decoding shared): two 32-value sub-blocks (32 bytes) at a time, their
        nibbles looked up (kvalues + 128) and converted where they lie in 32-bit lanes (``viq4lanes``)
        against x in the matching order (x: ``iq4_x_order``); the +128 comes off through the
        sub-blocks' sums of the original x (xsum).  Hot, 768 x 768 on Zen 3: 37 -> 27 us against
        ``viq4`` (look up, widen 8 values at a time).  (IQ4_NL's 18-byte blocks go one at a time:
        ``_iq4_rows_for``.)"""
        b = raw[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc0 = vzero()
        acc1 = vzero()
        accm = vzero()
        e0 = vzero()
        e1 = vzero()
        em = vzero()
        for k in range(x.shape[1] // 256):
            o = k * 136
            if t == 0:
                _prefetch_ahead(raw, r, o, 136)
            sc = vmul(vsplat(f16at(b, o)), vxs_scales(b, o))
            accm = vfma(sc, vload(xsum[t], 8 * k), accm)
            xo = k * 256
            acc0, acc1 = _iq4xs_pair(sc, b, o + 8, xt, xo, acc0, acc1, 0, 1)
            acc0, acc1 = _iq4xs_pair(sc, b, o + 40, xt, xo + 64, acc0, acc1, 2, 3)
            acc0, acc1 = _iq4xs_pair(sc, b, o + 72, xt, xo + 128, acc0, acc1, 4, 5)
            acc0, acc1 = _iq4xs_pair(sc, b, o + 104, xt, xo + 192, acc0, acc1, 6, 7)
            if two:                             # (the same loads: LLVM decodes them once)
                em = vfma(sc, vload(xsum[u], 8 * k), em)
                e0, e1 = _iq4xs_pair(sc, b, o + 8, xu, xo, e0, e1, 0, 1)
                e0, e1 = _iq4xs_pair(sc, b, o + 40, xu, xo + 64, e0, e1, 2, 3)
                e0, e1 = _iq4xs_pair(sc, b, o + 72, xu, xo + 128, e0, e1, 4, 5)
                e0, e1 = _iq4xs_pair(sc, b, o + 104, xu, xo + 192, e0, e1, 6, 7)
        out[t, r] = vhsum(vadd(acc0, acc1)) - np.float32(128.0) * vhsum(accm)
        if two:
            out[u, r] = vhsum(vadd(e0, e1)) - np.float32(128.0) * vhsum(em)
    return rows


_iq4xs_rows1, _iq4xs_rows2 = _iq4xs_rows_for(False), _iq4xs_rows_for(True)        # one row of x; two (t, t + 1)


def _iq4_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(raw, x, xsum, out, r, t, lut):
        """IQ4_NL (18-byte blocks of 32 values, one f16 scale), row t of x and t + 1 with ``two`` (the
        decoding shared): each block's kvalues + 128 converted where they lie in 32-bit lanes
        (``viq4nl_lanes``) against x in the matching order (x: ``iq4nl_x_order``), two blocks an
        iteration; the +128 comes off through the blocks' sums of the original x (xsum).  Over a 0.1B
        token's 72 matrices: 1.2x against looking up and widening 8 values at a time (``viq4``; 768 x
        768 hot: 35 -> 28 us), and 1.1x more from ``f16lut``.  Rows of an even number of blocks
        (``_bind_single`` sends the others to ``mvb_iq4_nl``): any code for an odd last block, even
        behind a branch after the loop, cost the loop 8-10%."""
        b = raw[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc0 = vzero()
        acc1 = vzero()
        accm = np.float32(0.0)
        e0 = vzero()
        e1 = vzero()
        em = np.float32(0.0)
        for k in range(0, x.shape[1] // 32, 2):
            o = k * 18
            if t == 0:
                _prefetch_ahead(raw, r, o, 36)
            xo = k * 32
            d0 = f16lut(b, o, lut)
            d1 = f16lut(b, o + 18, lut)
            acc0 = vfma(vsplat(d0), _lanes32(viq4nl_lanes(b, o + 2), 0, xt, xo), acc0)
            acc1 = vfma(vsplat(d1), _lanes32(viq4nl_lanes(b, o + 20), 0, xt, xo + 32), acc1)
            accm += d0 * xsum[t, k] + d1 * xsum[t, k + 1]
            if two:                             # (the same loads: LLVM decodes them once)
                e0 = vfma(vsplat(d0), _lanes32(viq4nl_lanes(b, o + 2), 0, xu, xo), e0)
                e1 = vfma(vsplat(d1), _lanes32(viq4nl_lanes(b, o + 20), 0, xu, xo + 32), e1)
                em += d0 * xsum[u, k] + d1 * xsum[u, k + 1]
        out[t, r] = vhsum(vadd(acc0, acc1)) - np.float32(128.0) * accm
        if two:
            out[u, r] = vhsum(vadd(e0, e1)) - np.float32(128.0) * em
    return rows


_iq4_rows1, _iq4_rows2 = _iq4_rows_for(False), _iq4_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True)
def _x_in_lanes(x, s):
    """x's rows with, per 32 values, position 8k + i holding x[4i + k] * s[k] (s: 4 powers of two,
    so exact).  Serial, once a call (like ``block_sums``)."""
    T, cols = x.shape
    out = np.empty_like(x)
    for t in range(T):
        for r in range(0, cols - cols % 32, 32):
            for k in range(4):
                for i in range(8):
                    out[t, r + 8 * k + i] = x[t, r + 4 * i + k] * s[k]
    return out


@njit(cache=True)
def lanes_x_order(x):
    """x's rows in the order the in-lane decoders are read in (``mv_q6_k``, ``mv_q4_k``), each value
    scaled by the power of two its weight carries in ``vq6lanes``/``vnlanes``: per 32 values,
    position 8k + i holds x[4i + k] * 2**(-8k)."""
    return _x_in_lanes(x, np.array([1.0, 2.0 ** -8, 2.0 ** -16, 2.0 ** -24], dtype=np.float32))


@njit(cache=True)
def iq4nl_x_order(x):
    """x's rows in ``viq4nl_lanes``' order: position 8k + i of each 32 holds x[4i + k] /
    IQ4NL_LANE_SCALE[k]."""
    return _x_in_lanes(x, np.array([1.0, 2.0 ** -8, 2.0 ** -16, 1.0], dtype=np.float32))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _lanes32(v, i, xt, xo):
    """The 32 products of vectors i..i+3 of an in-lane decoder with x read in that order (8 lanes,
    two chains)."""
    a = vfma(v[i + 2], vload(xt, xo + 16), vmul(v[i], vload(xt, xo)))
    b = vfma(v[i + 3], vload(xt, xo + 24), vmul(v[i + 1], vload(xt, xo + 8)))
    return vadd(a, b)


def _q23_k_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(qtype, raw, x, xsum16, out, r, t):
        """Q2_K (y = d sc q - dmin mn) and Q3_K (y = d sc (q - 4), q = 2 low bits + 4 * hmask bit),
        row t of x and t + 1 with ``two`` (the decoding shared): per half-block, 128 values converted
        where they lie in 32-bit lanes (``vq2lanes``, ``vq3lanes``) against x in the matching order
        (x: ``lanes_x_order``), each run's two group scales as one vector (``vpair4``); Q2_K's mins
        and Q3_K's -4 through xsum16 (group sums of the original x).  Hot, 768 x 768 on Zen 3: Q3_K
        59 -> 29 us, Q2_K 30 -> 26 us, against widening each 8 values and reducing group sums
        (``vsum8``)."""
        q2 = qtype == dq.Q2_K
        bs = 84 if q2 else 110
        b = raw[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc0 = vzero()
        acc1 = vzero()
        accm = vzero()
        e0 = vzero()
        e1 = vzero()
        em = vzero()
        for k in range(x.shape[1] // 256):
            o = k * bs
            if t == 0:
                _prefetch_ahead(raw, r, o, bs)
            if q2:
                qs = o + 16
                d = vsplat(f16at(b, o + 80))
                sc0 = vmul(d, vbits(b, o, 0, 15))
                sc1 = vmul(d, vbits(b, o + 8, 0, 15))
                dmin = vsplat(-f16at(b, o + 82))
                m0 = vmul(dmin, vbits(b, o, 4, 15))
                m1 = vmul(dmin, vbits(b, o + 8, 4, 15))
            else:
                qs = o + 32
                d = vsplat(f16at(b, o + 108))
                s0, s1 = vq3scales(b, o + 96)
                sc0 = vmul(d, s0)
                sc1 = vmul(d, s1)
                m0 = vmul(vsplat(MFOUR), sc0)
                m1 = vmul(vsplat(MFOUR), sc1)
            xo = k * 256
            for h in range(2):              # groups 8h .. 8h + 7: values 128h + 16g'
                xh = xo + 128 * h
                if q2:
                    v = vq2lanes(b, qs + 32 * h)
                elif h == 0:
                    v = vq3lanes(b, qs, o, 0)
                else:
                    v = vq3lanes(b, qs + 32, o, 4)
                sc = sc1 if h else sc0
                acc0 = vfma(vpair4(sc, 0, 1), _lanes32(v, 0, xt, xh), acc0)
                acc1 = vfma(vpair4(sc, 2, 3), _lanes32(v, 4, xt, xh + 32), acc1)
                acc0 = vfma(vpair4(sc, 4, 5), _lanes32(v, 8, xt, xh + 64), acc0)
                acc1 = vfma(vpair4(sc, 6, 7), _lanes32(v, 12, xt, xh + 96), acc1)
                accm = vfma(m1 if h else m0, vload(xsum16[t], xh // 16), accm)
                if two:
                    e0 = vfma(vpair4(sc, 0, 1), _lanes32(v, 0, xu, xh), e0)
                    e1 = vfma(vpair4(sc, 2, 3), _lanes32(v, 4, xu, xh + 32), e1)
                    e0 = vfma(vpair4(sc, 4, 5), _lanes32(v, 8, xu, xh + 64), e0)
                    e1 = vfma(vpair4(sc, 6, 7), _lanes32(v, 12, xu, xh + 96), e1)
                    em = vfma(m1 if h else m0, vload(xsum16[u], xh // 16), em)
        out[t, r] = vhsum(vadd(acc0, acc1)) + vhsum(accm)
        if two:
            out[u, r] = vhsum(vadd(e0, e1)) + vhsum(em)
    return rows


_q23_k_rows1, _q23_k_rows2 = _q23_k_rows_for(False), _q23_k_rows_for(True)        # one row of x; two (t, t + 1)


# The row bodies above with the block type a constant, one kernel each (``mv_*``: rows of x one
# at a time; ``mv2_*``: in pairs, each block decoded once for two, compiled on first use).  The
# constants are written inside the parallel loop: a value computed before it reaches the loop's
# outlined body as a run-time argument, and the type's branches would stay in the code
# (measured: 15% on IQ4_NL).
@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_1(raw, x, out, lut):
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q501_rows1(dq.Q4_1, raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q4_1(raw, x, out, lut):
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q501_rows2(dq.Q4_1, raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q5_0(raw, x, out, lut):
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q501_rows1(dq.Q5_0, raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q5_0(raw, x, out, lut):
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q501_rows2(dq.Q5_0, raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q5_1(raw, x, out, lut):
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q501_rows1(dq.Q5_1, raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q5_1(raw, x, out, lut):
    xsum = block_sums(x, 32)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q501_rows2(dq.Q5_1, raw, x, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_iq4_nl(raw, x, out, lut):
    if (x.shape[1] // 32) % 2:
        raise ValueError("mv_iq4_nl: rows of an even number of 32-value blocks only")
    xsum = block_sums(x, 32)
    xq = iq4nl_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _iq4_rows1(raw, xq, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_iq4_nl(raw, x, out, lut):
    if (x.shape[1] // 32) % 2:
        raise ValueError("mv_iq4_nl: rows of an even number of 32-value blocks only")
    xsum = block_sums(x, 32)
    xq = iq4nl_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _iq4_rows2(raw, xq, xsum, out, r, t, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_iq4_xs(raw, x, out, lut):
    xsum = block_sums(x, 32)
    xq = iq4_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _iq4xs_rows1(raw, xq, xsum, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_iq4_xs(raw, x, out, lut):
    xsum = block_sums(x, 32)
    xq = iq4_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _iq4xs_rows2(raw, xq, xsum, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q2_k(raw, x, out, lut):
    xsum16 = block_sums(x, 16)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q23_k_rows1(dq.Q2_K, raw, xq, xsum16, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q2_k(raw, x, out, lut):
    xsum16 = block_sums(x, 16)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q23_k_rows2(dq.Q2_K, raw, xq, xsum16, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q3_k(raw, x, out, lut):
    xsum16 = block_sums(x, 16)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q23_k_rows1(dq.Q3_K, raw, xq, xsum16, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q3_k(raw, x, out, lut):
    xsum16 = block_sums(x, 16)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q23_k_rows2(dq.Q3_K, raw, xq, xsum16, out, r, t)


@njit(cache=True, inline="always", fastmath=FLAGS)
def _k45_chunk(q5, b, q, qh, c):
    """The 64 values of 32 nibble bytes (chunk c, a literal) of a Q4_K/Q5_K block, in lanes."""
    if q5:
        return vq5lanes(b, q, qh, c)
    return vnlanes(b, q)


def _k45_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(q5, raw, x, xsum, out, r, t):
        """Q4_K and Q5_K row r times row t of x and, with ``two`` (a constant), row t + 1: each chunk
        decoded once for both, each row's arithmetic that of the row alone.  xsum[t, s]
        (``block_sums``): sum of x[t] over 32-value sub-block s (for the dmin * min term).  A block's
        8 scales and mins are unpacked as two vectors (``vkscales``); each 32 bytes of nibbles (Q5_K:
        with their fifth bits, bit sb of qh[i] for sub-block sb) are converted where they lie
        (``vnlanes``, ``vq5lanes``) against x in the matching order (x: ``lanes_x_order``): every
        vector holds one sub-block, whose scale is broadcast into its FMA.  Hot, 768 x 768 on Zen 3,
        against widening each 8 values and reducing 8 sub-block sums (``vsum8``): Q4_K 29 -> 27 us,
        Q5_K 40 -> 30 us."""
        bs = 176 if q5 else 144
        qo = 48 if q5 else 16
        nb = x.shape[1] // 256
        b = raw[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc0 = vzero()
        acc1 = vzero()
        accm = vzero()
        e0 = vzero()
        e1 = vzero()
        em = vzero()
        for k in range(nb):
            o = k * bs
            if t == 0:
                _prefetch_ahead(raw, r, o, bs)
            sc, mn = vkscales(b, o + 4)
            mn = vmul(vsplat(f16at(b, o + 2)), mn)
            accm = vfma(mn, vload(xsum[t], k * 8), accm)
            if two:
                em = vfma(mn, vload(xsum[u], k * 8), em)
            sc = vmul(vsplat(f16at(b, o)), sc)
            xo = k * 256
            q = o + qo
            v = _k45_chunk(q5, b, q, o + 16, 0)
            acc0 = vfma(vpair4(sc, 0, 0), _lanes32(v, 0, xt, xo), acc0)
            acc1 = vfma(vpair4(sc, 1, 1), _lanes32(v, 4, xt, xo + 32), acc1)
            if two:
                e0 = vfma(vpair4(sc, 0, 0), _lanes32(v, 0, xu, xo), e0)
                e1 = vfma(vpair4(sc, 1, 1), _lanes32(v, 4, xu, xo + 32), e1)
            v = _k45_chunk(q5, b, q + 32, o + 16, 1)
            acc0 = vfma(vpair4(sc, 2, 2), _lanes32(v, 0, xt, xo + 64), acc0)
            acc1 = vfma(vpair4(sc, 3, 3), _lanes32(v, 4, xt, xo + 96), acc1)
            if two:
                e0 = vfma(vpair4(sc, 2, 2), _lanes32(v, 0, xu, xo + 64), e0)
                e1 = vfma(vpair4(sc, 3, 3), _lanes32(v, 4, xu, xo + 96), e1)
            v = _k45_chunk(q5, b, q + 64, o + 16, 2)
            acc0 = vfma(vpair4(sc, 4, 4), _lanes32(v, 0, xt, xo + 128), acc0)
            acc1 = vfma(vpair4(sc, 5, 5), _lanes32(v, 4, xt, xo + 160), acc1)
            if two:
                e0 = vfma(vpair4(sc, 4, 4), _lanes32(v, 0, xu, xo + 128), e0)
                e1 = vfma(vpair4(sc, 5, 5), _lanes32(v, 4, xu, xo + 160), e1)
            v = _k45_chunk(q5, b, q + 96, o + 16, 3)
            acc0 = vfma(vpair4(sc, 6, 6), _lanes32(v, 0, xt, xo + 192), acc0)
            acc1 = vfma(vpair4(sc, 7, 7), _lanes32(v, 4, xt, xo + 224), acc1)
            if two:
                e0 = vfma(vpair4(sc, 6, 6), _lanes32(v, 0, xu, xo + 192), e0)
                e1 = vfma(vpair4(sc, 7, 7), _lanes32(v, 4, xu, xo + 224), e1)
        out[t, r] = vhsum(vadd(acc0, acc1)) - vhsum(accm)
        if two:
            out[u, r] = vhsum(vadd(e0, e1)) - vhsum(em)
    return rows


_k45_rows1, _k45_rows2 = _k45_rows_for(False), _k45_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_k(raw, x, out, lut):
    xsum = block_sums(x, 32)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _k45_rows1(False, raw, xq, xsum, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q4_k(raw, x, out, lut):
    """``mv_q4_k`` for rows of x in pairs (an even count): each chunk decoded once for two."""
    xsum = block_sums(x, 32)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _k45_rows2(False, raw, xq, xsum, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q5_k(raw, x, out, lut):
    xsum = block_sums(x, 32)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _k45_rows1(True, raw, xq, xsum, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q5_k(raw, x, out, lut):
    """``mv_q5_k`` for rows of x in pairs (an even count)."""
    xsum = block_sums(x, 32)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _k45_rows2(True, raw, xq, xsum, out, r, t)


def _q6k_rows_for(two):
    """The row body below, ``two`` a constant of the closure: where it is False Numba drops the second
    row's code before compiling it (a literal argument is not pruned: ~0.2 s more a kernel)."""
    @njit(cache=True, inline="always", fastmath=FLAGS)
    def rows(raw, raw_i8, x, xsum16, out, r, t):
        """Q6_K row r times row t of x and, with ``two`` (a constant), row t + 1: each half-block decoded
        once for both, each row's arithmetic that of the row alone.  Per half-block: 128 values decoded
        in place in 32-bit lanes (``vq6lanes``) against x in the matching order (``lanes_x_order``);
        each run's lanes hold two 16-value groups, whose scales (``vpair4`` of d * the 8 int8 scales)
        multiply the run's products in one FMA.  xsum16[t, g] (``block_sums``): sum of x[t] over group
        g, for the -32 offset of every value.  Hot, 768 x 768 on Zen 3: 41 -> 28 us against summing
        each group and reducing the 8 sums (``vq6half`` + ``vsum8``), which spent its time on the
        widening shuffles."""
        nb = x.shape[1] // 256
        b = raw[r]
        sb8 = raw_i8[r]
        u = t + 1 if two else t
        xt = x[t]
        xu = x[u]
        acc0 = vzero()
        acc1 = vzero()
        accm = vzero()
        e0 = vzero()
        e1 = vzero()
        em = vzero()
        for k in range(nb):
            o = k * 210
            if t == 0:
                _prefetch_ahead(raw, r, o, 210)
            d = vsplat(f16at(b, o + 208))
            for h in range(2):
                xo = k * 256 + h * 128
                v = vq6lanes(b, o + h * 64, o + 128 + h * 32)
                sc = vmul(d, vload(sb8, o + 192 + h * 8))
                acc0 = vfma(vpair4(sc, 0, 1), _lanes32(v, 0, xt, xo), acc0)
                acc1 = vfma(vpair4(sc, 2, 3), _lanes32(v, 4, xt, xo + 32), acc1)
                acc0 = vfma(vpair4(sc, 4, 5), _lanes32(v, 8, xt, xo + 64), acc0)
                acc1 = vfma(vpair4(sc, 6, 7), _lanes32(v, 12, xt, xo + 96), acc1)
                accm = vfma(sc, vload(xsum16[t], xo // 16), accm)
                if two:
                    e0 = vfma(vpair4(sc, 0, 1), _lanes32(v, 0, xu, xo), e0)
                    e1 = vfma(vpair4(sc, 2, 3), _lanes32(v, 4, xu, xo + 32), e1)
                    e0 = vfma(vpair4(sc, 4, 5), _lanes32(v, 8, xu, xo + 64), e0)
                    e1 = vfma(vpair4(sc, 6, 7), _lanes32(v, 12, xu, xo + 96), e1)
                    em = vfma(sc, vload(xsum16[u], xo // 16), em)
        out[t, r] = vhsum(vadd(acc0, acc1)) - np.float32(32.0) * vhsum(accm)
        if two:
            out[u, r] = vhsum(vadd(e0, e1)) - np.float32(32.0) * vhsum(em)
    return rows


_q6k_rows1, _q6k_rows2 = _q6k_rows_for(False), _q6k_rows_for(True)        # one row of x; two (t, t + 1)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q6_k(raw, raw_i8, x, out, lut):
    """Q6_K weights, rows of x one at a time (``_q6k_rows_for``)."""
    xsum16 = block_sums(x, 16)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(x.shape[0]):
                _q6k_rows1(raw, raw_i8, xq, xsum16, out, r, t)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv2_q6_k(raw, raw_i8, x, out, lut):
    """Q6_K weights, rows of x in pairs (an even count): each half-block decoded once for two."""
    xsum16 = block_sums(x, 16)
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(raw.shape[0], task * ROWS + ROWS)):
            for t in range(0, x.shape[0], 2):
                _q6k_rows2(raw, raw_i8, xq, xsum16, out, r, t)


@njit(cache=True, inline="always", fastmath=FLAGS)
def _q6_group(buf, i, a, b, scale, m32):
    """buf[i:i+16] = scale * ((a, b) - 32): one 16-value Q6_K group."""
    sv = vsplat(scale)
    vstore(buf, i, vmul(sv, vadd(a, m32)))
    vstore(buf, i + 8, vmul(sv, vadd(b, m32)))


@njit(cache=True, fastmath=FLAGS)           # not inline: a parallel kernel around it compiles in ~1/3 the time
def _decode_row(qtype, b, q, buf, kv, lut):
    """One weight row into float32 for the batched product: vectorised for the common types
    (equal to ``dq.dequant_row`` up to FMA rounding), ``dq.dequant_row`` for the rest."""
    cols = buf.shape[0]
    if qtype == dq.Q8_0:
        _dec32(dq.Q8_0, b, q, buf, lut)
    elif qtype == dq.Q4_0:
        _dec32(dq.Q4_0, b, q, buf, lut)
    elif qtype == dq.Q4_K:
        for k in range(cols // 256):
            o = k * 144
            sc, mn = vkscales(b, o + 4)
            sc = vmul(vsplat(f16at(b, o)), sc)
            mn = vmul(vsplat(-f16at(b, o + 2)), mn)
            for sp in range(4):
                d0 = vsplat(vlane(sc, 2 * sp))
                m0 = vsplat(vlane(mn, 2 * sp))
                d1 = vsplat(vlane(sc, 2 * sp + 1))
                m1 = vsplat(vlane(mn, 2 * sp + 1))
                base = o + 16 + sp * 32
                xo = k * 256 + sp * 64
                for c in range(0, 32, 8):
                    vstore(buf, xo + c, vfma(d0, vbits(b, base + c, 0, 15), m0))
                    vstore(buf, xo + 32 + c, vfma(d1, vbits(b, base + c, 4, 15), m1))
    elif qtype == dq.Q6_K:
        m32 = vsplat(np.float32(-32.0))
        for k in range(cols // 256):
            o = k * 210
            d = f16at(b, o + 208)
            for h in range(2):
                xo = k * 256 + h * 128
                si = o + 192 + h * 8
                v = vq6half(b, o + h * 64, o + 128 + h * 32)
                _q6_group(buf, xo, v[0], v[1], d * np.float32(q[si]), m32)      # values 16g..16g+15: scale g
                _q6_group(buf, xo + 16, v[2], v[3], d * np.float32(q[si + 1]), m32)
                _q6_group(buf, xo + 32, v[4], v[5], d * np.float32(q[si + 2]), m32)
                _q6_group(buf, xo + 48, v[6], v[7], d * np.float32(q[si + 3]), m32)
                _q6_group(buf, xo + 64, v[8], v[9], d * np.float32(q[si + 4]), m32)
                _q6_group(buf, xo + 80, v[10], v[11], d * np.float32(q[si + 5]), m32)
                _q6_group(buf, xo + 96, v[12], v[13], d * np.float32(q[si + 6]), m32)
                _q6_group(buf, xo + 112, v[14], v[15], d * np.float32(q[si + 7]), m32)
    elif qtype == dq.Q5_K:
        for k in range(cols // 256):
            o = k * 176
            sc, mn = vkscales(b, o + 4)
            sc = vmul(vsplat(f16at(b, o)), sc)
            mn = vmul(vsplat(-f16at(b, o + 2)), mn)
            for sb in range(8):
                dl = vsplat(vlane(sc, sb))
                ml = vsplat(vlane(mn, sb))
                base = o + 48 + (sb // 2) * 32
                for c in range(0, 32, 8):           # low 4 bits from qs, the fifth from bit sb of qh
                    q = vq5bits(b, base + c, 4 * (sb % 2), o + 16 + c, sb)
                    vstore(buf, k * 256 + sb * 32 + c, vfma(dl, q, ml))
    elif qtype == dq.Q4_1:
        _dec32(dq.Q4_1, b, q, buf, lut)
    elif qtype == dq.Q5_0:
        _dec32(dq.Q5_0, b, q, buf, lut)
    elif qtype == dq.Q5_1:
        _dec32(dq.Q5_1, b, q, buf, lut)
    elif qtype == dq.IQ4_NL:
        _dec32(dq.IQ4_NL, b, q, buf, lut)
    elif qtype == dq.IQ4_XS:
        for k in range(cols // 256):
            o = k * 136
            d = f16at(b, o)
            sh = np.int32(b[o + 2]) | (np.int32(b[o + 3]) << 8)
            for sb in range(8):
                ls = ((b[o + 4 + sb // 2] >> (4 * (sb % 2))) & 15) | (((sh >> (2 * sb)) & 3) << 4)
                dl = vsplat(d * np.float32(np.int32(ls) - 32))
                base = o + 8 + sb * 16
                for c in range(0, 16, 8):
                    vstore(buf, k * 256 + sb * 32 + c, vmul(dl, viq4(b, base + c, 0)))
                    vstore(buf, k * 256 + sb * 32 + 16 + c, vmul(dl, viq4(b, base + c, 4)))
    elif qtype == dq.Q2_K or qtype == dq.Q3_K:
        q2 = qtype == dq.Q2_K
        bs = 84 if q2 else 110
        for k in range(cols // 256):
            o = k * bs
            qs = o + 16 if q2 else o + 32
            d = f16at(b, o + 80) if q2 else f16at(b, o + 108)
            dmin = f16at(b, o + 82) if q2 else np.float32(0.0)
            for h in range(2):                  # value 128h + 32j + l: bits 2j of qs[32h + l]
                for j in range(4):
                    for l16 in range(2):
                        g = 8 * h + 2 * j + l16         # 16-value sub-block
                        if q2:                          # y = d * sc * q - dmin * mn
                            s = b[o + g]
                            dl = vsplat(d * np.float32(s & 15))
                            ml = vsplat(-(dmin * np.float32(s >> 4)))
                        else:                           # y = d * sc * (q - 4 + 4 * hmask bit)
                            dl = vsplat(d * np.float32(dq._k_scale6(b, o + 96, g)))
                            ml = vsplat(np.float32(0.0))
                        for c in range(0, 16, 8):
                            l = 16 * l16 + c
                            q = vbits(b, qs + 32 * h + l, 2 * j, 3)
                            if not q2:
                                q = vadd(vfma(vbits(b, o + l, 4 * h + j, 1), vsplat(FOUR), q), vsplat(MFOUR))
                            vstore(buf, k * 256 + 128 * h + 32 * j + l, vfma(dl, q, ml))
    elif qtype == dq.F16 or qtype == dq.BF16:
        h = b.view(np.uint16)
        c8 = cols - cols % 8
        if qtype == dq.F16:
            for j in range(0, c8, 8):
                vstore(buf, j, vload_f16(h, j))
        else:
            for j in range(0, c8, 8):
                vstore(buf, j, vload_bf16(h, j))
        if c8 < cols:
            dq.dequant_row(qtype, b, buf, kv, lut)      # ragged row: the scalar path for all of it
    else:
        dq.dequant_row(qtype, b, buf, kv, lut)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_buffered(qtype, raw, raw_i8, x, out, kv, lut):
    """Batches (several rows of x): decode two weight rows at a time into float32, then multiply
    them with the rows of x four at a time (8 vector accumulators in registers), so the decoding
    and every load of a weight vector is shared by the whole batch.  F32 and F16 rows skip the
    buffer (``tile2x4`` reads them, converting halves in registers): 20-40% faster at T = 8."""
    rows = raw.shape[0]
    T, cols = x.shape
    for task in prange((rows + ROWS - 1) // ROWS):
        buf = np.empty((2, cols), dtype=np.float32)
        end = min(rows, task * ROWS + ROWS)
        for r in range(task * ROWS, end, 2):
            two = r + 1 < end
            _prefetch_pair(raw, r)
            if cols % 8 == 0:               # F32 as is, F16 converted in registers (simd.vload_w): no buffer
                if qtype == dq.F16:
                    tiles2(raw[r].view(np.uint16), raw[r + 1 if two else r].view(np.uint16), x, out, r, two, 0)
                    continue
                if qtype == dq.F32:
                    tiles2(raw[r].view(np.float32), raw[r + 1 if two else r].view(np.float32), x, out, r, two, 0)
                    continue
            _decode_row(qtype, raw[r], raw_i8[r], buf[0], kv, lut)
            if two:
                _decode_row(qtype, raw[r + 1], raw_i8[r + 1], buf[1], kv, lut)
            else:
                buf[1, :] = buf[0]
            tiles2(buf[0], buf[1], x, out, r, two, 0)


# --- batches on the in-lane decoders ---------------------------------------------------------
# For a few rows of x (batched decode, prompts of up to SMALL_T tokens) the types with an in-lane
# decoder dequantize two weight rows at a time *in lane order* (``lanes_x_order``), scales and
# offsets applied, into a float32 buffer that ``tiles2`` multiplies with x in the same order.
# Against ``mv_buffered`` (``_decode_row``: values widened 8 at a time into natural order), hot
# 768 x 768 on Zen 3, T = 8 / T = 3: Q6_K 111 -> 94 / 85 -> 64 us, Q4_K 107 -> 99 / 83 -> 71,
# Q5_K 130 -> 99 / 98 -> 70, Q3_K 140 -> 110 / 111 -> 79, Q2_K 126 -> 97 / 95 -> 70, IQ4_XS
# 115 -> 94 / 81 -> 65.  At T = 8 the two ``tiles2`` passes (8 FMAs a 6 loads) are most of it.


@njit(cache=True, inline="always", fastmath=FLAGS)
def _q6_deq_run(buf, xo, v, i, s2):
    """(q - 32) * s2 of run vectors i..i+3 of ``vq6lanes`` into buf[xo:xo+32]."""
    vstore(buf, xo, vmul(vsub(v[i], vsplat(np.float32(32.0))), s2))
    vstore(buf, xo + 8, vmul(vsub(v[i + 1], vsplat(np.float32(32.0 * 2 ** 8))), s2))
    vstore(buf, xo + 16, vmul(vsub(v[i + 2], vsplat(np.float32(32.0 * 2 ** 16))), s2))
    vstore(buf, xo + 24, vmul(vsub(v[i + 3], vsplat(np.float32(32.0 * 2 ** 24))), s2))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _k45_deq(buf, xo, v, sc, mn, a, c):
    """Sub-blocks a (vectors 0-3 of v) and c (4-7) of a Q4_K/Q5_K chunk: d sc q - dmin m into
    buf[xo:xo+64] (each vector one sub-block: its scale and min broadcast, the min in the
    vector's lane scale 2**(8k))."""
    for j in range(2):
        s1 = vpair4(sc, a, a) if j == 0 else vpair4(sc, c, c)
        m1 = vpair4(mn, a, a) if j == 0 else vpair4(mn, c, c)
        vstore(buf, xo + 32 * j, vsub(vmul(v[4 * j], s1), m1))
        vstore(buf, xo + 32 * j + 8, vsub(vmul(v[4 * j + 1], s1), vmul(m1, vsplat(np.float32(2.0 ** 8)))))
        vstore(buf, xo + 32 * j + 16, vsub(vmul(v[4 * j + 2], s1), vmul(m1, vsplat(np.float32(2.0 ** 16)))))
        vstore(buf, xo + 32 * j + 24, vsub(vmul(v[4 * j + 3], s1), vmul(m1, vsplat(np.float32(2.0 ** 24)))))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _iq4xs_deq(buf, xo, v, s2):
    """(kvalue + 128 - 128) * scale of ``viq4lanes``' 8 vectors (two sub-blocks) into buf[xo:xo+64]."""
    for j in range(2):
        vstore(buf, xo + 32 * j, vmul(vsub(v[4 * j], vsplat(np.float32(128.0))), s2))
        vstore(buf, xo + 32 * j + 8, vmul(vsub(v[4 * j + 1], vsplat(np.float32(128.0))), s2))
        vstore(buf, xo + 32 * j + 16, vmul(vsub(v[4 * j + 2], vsplat(np.float32(128.0 * 2 ** 8))), s2))
        vstore(buf, xo + 32 * j + 24, vmul(vsub(v[4 * j + 3], vsplat(np.float32(128.0 * 2 ** 16))), s2))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _deq_q6_k(raw, raw_i8, r, buf):
    """Row r of a Q6_K matrix dequantized in lane order into buf."""
    b = raw[r]
    for k in range(buf.shape[0] // 256):
        o = k * 210
        _prefetch_ahead(raw, r, o, 210)
        d = vsplat(f16at(b, o + 208))
        for h in range(2):
            xh = k * 256 + 128 * h
            v = vq6lanes(b, o + h * 64, o + 128 + h * 32)
            sc = vmul(d, vload(raw_i8[r], o + 192 + h * 8))
            _q6_deq_run(buf, xh, v, 0, vpair4(sc, 0, 1))
            _q6_deq_run(buf, xh + 32, v, 4, vpair4(sc, 2, 3))
            _q6_deq_run(buf, xh + 64, v, 8, vpair4(sc, 4, 5))
            _q6_deq_run(buf, xh + 96, v, 12, vpair4(sc, 6, 7))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _deq_k45(q5, raw, raw_i8, r, buf):
    """Row r of a Q4_K (q5 False) or Q5_K matrix dequantized in lane order into buf."""
    b = raw[r]
    bs = 176 if q5 else 144
    for k in range(buf.shape[0] // 256):
        o = k * bs
        xo = k * 256
        _prefetch_ahead(raw, r, o, bs)
        sc, mn = vkscales(b, o + 4)
        sc = vmul(vsplat(f16at(b, o)), sc)
        mn = vmul(vsplat(f16at(b, o + 2)), mn)
        q = o + (48 if q5 else 16)
        _k45_deq(buf, xo, _k45_chunk(q5, b, q, o + 16, 0), sc, mn, 0, 1)
        _k45_deq(buf, xo + 64, _k45_chunk(q5, b, q + 32, o + 16, 1), sc, mn, 2, 3)
        _k45_deq(buf, xo + 128, _k45_chunk(q5, b, q + 64, o + 16, 2), sc, mn, 4, 5)
        _k45_deq(buf, xo + 192, _k45_chunk(q5, b, q + 96, o + 16, 3), sc, mn, 6, 7)


@njit(cache=True, inline="always", fastmath=FLAGS)
def _deq_k23(q2, raw, raw_i8, r, buf):
    """Row r of a Q2_K (q2 True) or Q3_K matrix dequantized in lane order into buf."""
    b = raw[r]
    bs = 84 if q2 else 110
    for k in range(buf.shape[0] // 256):
        o = k * bs
        _prefetch_ahead(raw, r, o, bs)
        if q2:
            d = vsplat(f16at(b, o + 80))
            dmin = vsplat(-f16at(b, o + 82))
            sc0 = vmul(d, vbits(b, o, 0, 15))
            sc1 = vmul(d, vbits(b, o + 8, 0, 15))
            m0 = vmul(dmin, vbits(b, o, 4, 15))
            m1 = vmul(dmin, vbits(b, o + 8, 4, 15))
        else:
            d = vsplat(f16at(b, o + 108))
            s0, s1 = vq3scales(b, o + 96)
            sc0 = vmul(d, s0)
            sc1 = vmul(d, s1)
            m0 = vmul(vsplat(MFOUR), sc0)
            m1 = vmul(vsplat(MFOUR), sc1)
        for h in range(2):
            xh = k * 256 + 128 * h
            qs = o + (16 if q2 else 32) + 32 * h
            if q2:
                v = vq2lanes(b, qs)
            elif h == 0:
                v = vq3lanes(b, qs, o, 0)
            else:
                v = vq3lanes(b, qs, o, 4)
            sc = sc1 if h else sc0
            mm = m1 if h else m0
            _k23_deq_run(buf, xh, v, 0, vpair4(sc, 0, 1), vpair4(mm, 0, 1))
            _k23_deq_run(buf, xh + 32, v, 4, vpair4(sc, 2, 3), vpair4(mm, 2, 3))
            _k23_deq_run(buf, xh + 64, v, 8, vpair4(sc, 4, 5), vpair4(mm, 4, 5))
            _k23_deq_run(buf, xh + 96, v, 12, vpair4(sc, 6, 7), vpair4(mm, 6, 7))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _deq_iq4_xs(raw, raw_i8, r, buf):
    """Row r of an IQ4_XS matrix dequantized in ``viq4lanes``' order into buf."""
    b = raw[r]
    for k in range(buf.shape[0] // 256):
        o = k * 136
        xo = k * 256
        _prefetch_ahead(raw, r, o, 136)
        sc = vmul(vsplat(f16at(b, o)), vxs_scales(b, o))
        _iq4xs_deq(buf, xo, viq4lanes(b, o + 8, o + 24), vpair4(sc, 0, 1))
        _iq4xs_deq(buf, xo + 64, viq4lanes(b, o + 40, o + 56), vpair4(sc, 2, 3))
        _iq4xs_deq(buf, xo + 128, viq4lanes(b, o + 72, o + 88), vpair4(sc, 4, 5))
        _iq4xs_deq(buf, xo + 192, viq4lanes(b, o + 104, o + 120), vpair4(sc, 6, 7))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _k23_deq_run(buf, xo, v, i, s2, m2):
    """v * s2 + m2 * 2**(8k) of run vectors i..i+3 (k = 0..3) of ``vq2lanes``/``vq3lanes`` into
    buf[xo:xo+32]: Q2_K's -dmin m, Q3_K's -4 d sc, in the values' lane scale."""
    vstore(buf, xo, vfma(v[i], s2, m2))
    vstore(buf, xo + 8, vfma(v[i + 1], s2, vmul(m2, vsplat(np.float32(2.0 ** 8)))))
    vstore(buf, xo + 16, vfma(v[i + 2], s2, vmul(m2, vsplat(np.float32(2.0 ** 16)))))
    vstore(buf, xo + 24, vfma(v[i + 3], s2, vmul(m2, vsplat(np.float32(2.0 ** 24)))))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _rows_of(task, rows):
    return task * ROWS, min(rows, task * ROWS + ROWS)


# One kernel per type (each compiles only its own decoder): two rows dequantized, then
# ``tiles2`` multiplies them with every row of x (in the decoder's order).
@njit(cache=True, inline="always", fastmath=FLAGS)
def _q6_run2(v, u, i, s2, t2, x0, x1, x2, x3, xo, a0, a1, a2, a3, e0, e1, e2, e3):
    """Run vectors i..i+3 (i a constant) of two rows' ``vq6lanes`` (v, u) as weights ((q - 32) * the
    runs' scale pairs s2, t2, as ``_q6_deq_run`` rounds them) times four rows of x at xo."""
    m = vsplat(np.float32(32.0))
    a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(vmul(vsub(v[i], m), s2), vmul(vsub(u[i], m), t2),
                                           x0, x1, x2, x3, xo, a0, a1, a2, a3, e0, e1, e2, e3)
    m = vsplat(np.float32(32.0 * 2 ** 8))
    a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(vmul(vsub(v[i + 1], m), s2), vmul(vsub(u[i + 1], m), t2),
                                           x0, x1, x2, x3, xo + 8, a0, a1, a2, a3, e0, e1, e2, e3)
    m = vsplat(np.float32(32.0 * 2 ** 16))
    a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(vmul(vsub(v[i + 2], m), s2), vmul(vsub(u[i + 2], m), t2),
                                           x0, x1, x2, x3, xo + 16, a0, a1, a2, a3, e0, e1, e2, e3)
    m = vsplat(np.float32(32.0 * 2 ** 24))
    return _f2x4(vmul(vsub(v[i + 3], m), s2), vmul(vsub(u[i + 3], m), t2),
                 x0, x1, x2, x3, xo + 24, a0, a1, a2, a3, e0, e1, e2, e3)


@njit(cache=True, inline="always", fastmath=FLAGS)
def _rows2_q6(raw, raw_i8, x, out, r, two):
    """``_rows2_32`` for Q6_K (x in ``lanes_x_order``): each half-block of the two rows converted in
    its lanes (``vq6lanes``) and used for 4 rows of x at a time; the products summed in
    ``_deq_q6_k`` + ``tiles2``'s order, so the same bits."""
    T, cols = x.shape
    rr = r + 1 if two else r
    b = raw[r]
    bb = raw[rr]
    for t0 in range(0, T, 4):
        x0, x1, x2, x3 = x4(x, t0)
        a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
        e0, e1, e2, e3 = vzero(), vzero(), vzero(), vzero()
        for k in range(cols // 256):
            o = k * 210
            if t0 == 0:
                _prefetch_ahead(raw, r, o, 210)
                _prefetch_ahead(raw, rr, o, 210)
            d = vsplat(f16at(b, o + 208))
            dd = vsplat(f16at(bb, o + 208))
            for h in range(2):
                xh = k * 256 + 128 * h
                v = vq6lanes(b, o + h * 64, o + 128 + h * 32)
                u = vq6lanes(bb, o + h * 64, o + 128 + h * 32)
                sc = vmul(d, vload(raw_i8[r], o + 192 + h * 8))
                tc = vmul(dd, vload(raw_i8[rr], o + 192 + h * 8))
                a0, a1, a2, a3, e0, e1, e2, e3 = _q6_run2(v, u, 0, vpair4(sc, 0, 1), vpair4(tc, 0, 1), x0, x1, x2, x3,
                                                          xh, a0, a1, a2, a3, e0, e1, e2, e3)
                a0, a1, a2, a3, e0, e1, e2, e3 = _q6_run2(v, u, 4, vpair4(sc, 2, 3), vpair4(tc, 2, 3), x0, x1, x2, x3,
                                                          xh + 32, a0, a1, a2, a3, e0, e1, e2, e3)
                a0, a1, a2, a3, e0, e1, e2, e3 = _q6_run2(v, u, 8, vpair4(sc, 4, 5), vpair4(tc, 4, 5), x0, x1, x2, x3,
                                                          xh + 64, a0, a1, a2, a3, e0, e1, e2, e3)
                a0, a1, a2, a3, e0, e1, e2, e3 = _q6_run2(v, u, 12, vpair4(sc, 6, 7), vpair4(tc, 6, 7), x0, x1, x2, x3,
                                                          xh + 96, a0, a1, a2, a3, e0, e1, e2, e3)
        _store2x4(out, t0, r, two, a0, a1, a2, a3, e0, e1, e2, e3)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q6_k(raw, raw_i8, x, out, lut):
    """Up to _FT_Q6_K rows of x ``_rows2_q6`` (decoded in registers for every 4 rows of x), above
    that two rows dequantized in lane order into a buffer once for ``tiles2``."""
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            if x.shape[0] <= _FT_Q6_K:
                _rows2_q6(raw, raw_i8, xq, out, r, r + 1 < r1)
            else:
                _deq_q6_k(raw, raw_i8, r, buf[0])
                _deq_q6_k(raw, raw_i8, min(r + 1, r1 - 1), buf[1])
                tiles2(buf[0], buf[1], xq, out, r, r + 1 < r1, 0)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q4_k(raw, raw_i8, x, out, lut):
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _deq_k45(False, raw, raw_i8, r, buf[0])
            _deq_k45(False, raw, raw_i8, min(r + 1, r1 - 1), buf[1])
            tiles2(buf[0], buf[1], xq, out, r, r + 1 < r1, 0)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q5_k(raw, raw_i8, x, out, lut):
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _deq_k45(True, raw, raw_i8, r, buf[0])
            _deq_k45(True, raw, raw_i8, min(r + 1, r1 - 1), buf[1])
            tiles2(buf[0], buf[1], xq, out, r, r + 1 < r1, 0)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q3_k(raw, raw_i8, x, out, lut):
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _deq_k23(False, raw, raw_i8, r, buf[0])
            _deq_k23(False, raw, raw_i8, min(r + 1, r1 - 1), buf[1])
            tiles2(buf[0], buf[1], xq, out, r, r + 1 < r1, 0)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q2_k(raw, raw_i8, x, out, lut):
    xq = lanes_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _deq_k23(True, raw, raw_i8, r, buf[0])
            _deq_k23(True, raw, raw_i8, min(r + 1, r1 - 1), buf[1])
            tiles2(buf[0], buf[1], xq, out, r, r + 1 < r1, 0)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_iq4_xs(raw, raw_i8, x, out, lut):
    xq = iq4_x_order(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _deq_iq4_xs(raw, raw_i8, r, buf[0])
            _deq_iq4_xs(raw, raw_i8, min(r + 1, r1 - 1), buf[1])
            tiles2(buf[0], buf[1], xq, out, r, r + 1 < r1, 0)


@njit(cache=True, inline="always")
def _act(v, act):
    if act == 1:
        return np.tanh(v)
    if act == 2:
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))
    return v


@njit(cache=True, fastmath=FLAGS)      # (not inline: Numba's parfor analysis trips on its tuples)
def tiles2(w0r, w1r, x, out, col, two, act):
    """out[t, col] = act(w0r . x[t]) and, with ``two``, out[t, col + 1] = act(w1r . x[t]), for every
    row t of x, by ``tile2x4`` (act 0: none, 1: tanh, 2: sigmoid)."""
    T = x.shape[0]
    for t0 in range(0, T, 4):
        s0, s1 = tile2x4(w0r, w1r, x, t0)
        for i in range(min(4, T - t0)):
            out[t0 + i, col] = _act(s0[i], act)
            if two:
                out[t0 + i, col + 1] = _act(s1[i], act)


@njit(cache=True, inline="always", fastmath=FLAGS)
def tile2x4(w0r, w1r, x, t0):
    """(w0r . x[t0 + i] for i < 4), (w1r . x[t0 + i] for i < 4): two weight rows (float32, or f16
    bits: ``simd.vload_w``) times four rows of x (rows past the end of x repeat its last), 8 vector
    accumulators in registers, each weight vector loaded once for the four."""
    cols = w0r.shape[0]
    c8 = cols - cols % 8
    x0, x1, x2, x3 = x4(x, t0)
    a00 = vzero()
    a01 = vzero()
    a02 = vzero()
    a03 = vzero()
    a10 = vzero()
    a11 = vzero()
    a12 = vzero()
    a13 = vzero()
    for j in range(0, c8, 8):
        a00, a01, a02, a03, a10, a11, a12, a13 = _f2x4(vload_w(w0r, j), vload_w(w1r, j), x0, x1, x2, x3, j,
                                                       a00, a01, a02, a03, a10, a11, a12, a13)
    s0 = (_tail(vhsum(a00), w0r, x0, c8), _tail(vhsum(a01), w0r, x1, c8),
          _tail(vhsum(a02), w0r, x2, c8), _tail(vhsum(a03), w0r, x3, c8))
    s1 = (_tail(vhsum(a10), w1r, x0, c8), _tail(vhsum(a11), w1r, x1, c8),
          _tail(vhsum(a12), w1r, x2, c8), _tail(vhsum(a13), w1r, x3, c8))
    return s0, s1


@njit(cache=True, inline="always", fastmath=FLAGS)
def _tail(acc, wr, xt, c8):
    """acc plus the products of columns c8.. (a row's ragged end past its 8-lane vectors)."""
    for j in range(c8, wr.shape[0]):
        acc += wat(wr, j) * xt[j]
    return acc


BATCH_T = 3              # from this many rows of x on, decode each weight row once for all of them

# The one-or-two-row kernels of each block type: (rows one at a time, rows in pairs).
_SINGLE = {dq.Q8_0: (mv_q8_0, mv2_q8_0), dq.Q4_0: (mv_q4_0, mv2_q4_0), dq.Q4_K: (mv_q4_k, mv2_q4_k),
           dq.Q5_K: (mv_q5_k, mv2_q5_k), dq.Q6_K: (mv_q6_k, mv2_q6_k), dq.Q4_1: (mv_q4_1, mv2_q4_1),
           dq.Q5_0: (mv_q5_0, mv2_q5_0), dq.Q5_1: (mv_q5_1, mv2_q5_1), dq.IQ4_NL: (mv_iq4_nl, mv2_iq4_nl),
           dq.IQ4_XS: (mv_iq4_xs, mv2_iq4_xs), dq.Q2_K: (mv_q2_k, mv2_q2_k), dq.Q3_K: (mv_q3_k, mv2_q3_k)}




def _bind_single(W):
    """The kernel call for one or two rows of x on W, with W's views made once: f(x, out)."""
    qtype = W.qtype
    lut = dq.F16_LUT
    if qtype == dq.F32:
        w = W.raw
        return lambda x, out: mv_f32(w, x, out)
    if qtype in (dq.F16, dq.BF16):
        w16 = W.raw.view(np.uint16)
        bf = qtype == dq.BF16
        return lambda x, out: (mv2_16bit if x.shape[0] == 2 else mv_16bit)(w16, x, out, bf)
    rb = W.row_bytes
    ri = rb.view(np.int8)
    if qtype == dq.IQ4_NL and W.shape[1] % 64:
        return None                         # an odd number of blocks: ``_iq4_rows_for`` takes pairs
    pair = _SINGLE.get(qtype)
    if pair is None:
        return None
    one, two = pair                         # two rows of x: each block decoded once for both
    w = (rb, ri) if qtype in (dq.Q8_0, dq.Q6_K) else (rb,)
    return lambda x, out: (two if x.shape[0] == 2 else one)(*w, x, out, lut)


def matvec(qtype: int, W, x: np.ndarray, out: np.ndarray) -> None:
    """``out = x @ W.T`` for a few rows of x, on W's raw encoding."""
    if x.shape[0] < BATCH_T:
        f = W.__dict__.get("_mv1", False)
        if f is False:
            f = W.__dict__["_mv1"] = _bind_single(W)
        if f is not None:
            f(x, out)
            return
    rb = W.row_bytes                        # batches, and every other block type
    f = _BATCH.get(qtype)
    if f is not None and x.shape[1] % 8 == 0:
        f(rb, rb.view(np.int8), x, out, dq.F16_LUT)
        return
    mv_buffered(qtype, rb, rb.view(np.int8), x, out, dq.KVALUES_IQ4, dq.F16_LUT)



@njit(cache=True, inline="always", fastmath=FLAGS)
def _nib4(b, qs, d, m):
    """The 32 nibbles at qs as d * q + m, 8 at a time (lows, then highs)."""
    return (vfma(d, vbits(b, qs, 0, 15), m), vfma(d, vbits(b, qs + 8, 0, 15), m),
            vfma(d, vbits(b, qs, 4, 15), m), vfma(d, vbits(b, qs + 8, 4, 15), m))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _wv32(qtype, b, q, o, lut):
    """The 32 weights of the Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL block at byte o (qtype a constant) as
    four float32 vectors (values 0-7, 8-15, 16-23, 24-31): d * q (Q8_0), d * (q - 8) (Q4_0),
    d * kvalue (IQ4_NL), d * q + m (Q4_1, Q5_1), d * (q - 16) (Q5_0), each exact in float32.  One
    call a block: each call site of an inlined function carries every branch through typing (8
    call sites compiled in 11-15 s)."""
    d = vsplat(f16lut(b, o, lut))
    if qtype == dq.Q8_0:
        return (vmul(d, vload(q, o + 2)), vmul(d, vload(q, o + 10)), vmul(d, vload(q, o + 18)),
                vmul(d, vload(q, o + 26)))
    if qtype == dq.Q4_0:
        m8 = vsplat(np.float32(-8.0))
        return (vmul(d, vadd(vbits(b, o + 2, 0, 15), m8)), vmul(d, vadd(vbits(b, o + 10, 0, 15), m8)),
                vmul(d, vadd(vbits(b, o + 2, 4, 15), m8)), vmul(d, vadd(vbits(b, o + 10, 4, 15), m8)))
    if qtype == dq.IQ4_NL:
        return (vmul(d, viq4(b, o + 2, 0)), vmul(d, viq4(b, o + 10, 0)), vmul(d, viq4(b, o + 2, 4)),
                vmul(d, viq4(b, o + 10, 4)))
    if qtype == dq.Q4_1:
        return _nib4(b, o + 4, d, vsplat(f16lut(b, o + 2, lut)))
    if qtype == dq.Q5_0:
        qh = dq._u32_at(b, o + 2)
        return (vmul(d, vq5u32(b, o + 6, 0, qh, 0, 16)), vmul(d, vq5u32(b, o + 14, 0, qh, 8, 16)),
                vmul(d, vq5u32(b, o + 6, 4, qh, 16, 16)), vmul(d, vq5u32(b, o + 14, 4, qh, 24, 16)))
    m = vsplat(f16lut(b, o + 2, lut))       # Q5_1
    qh = dq._u32_at(b, o + 4)
    return (vfma(d, vq5u32(b, o + 8, 0, qh, 0, 0), m), vfma(d, vq5u32(b, o + 16, 0, qh, 8, 0), m),
            vfma(d, vq5u32(b, o + 8, 4, qh, 16, 0), m), vfma(d, vq5u32(b, o + 16, 4, qh, 24, 0), m))


@njit(cache=True, inline="always", fastmath=FLAGS)
def _f2x4(w, v, x0, x1, x2, x3, xo, a0, a1, a2, a3, e0, e1, e2, e3):
    """One weight vector of each of two rows (w, v) times four rows of x at xo, into their 8 sums."""
    y = vload(x0, xo)
    a0 = vfma(w, y, a0)
    e0 = vfma(v, y, e0)
    y = vload(x1, xo)
    a1 = vfma(w, y, a1)
    e1 = vfma(v, y, e1)
    y = vload(x2, xo)
    a2 = vfma(w, y, a2)
    e2 = vfma(v, y, e2)
    y = vload(x3, xo)
    a3 = vfma(w, y, a3)
    e3 = vfma(v, y, e3)
    return a0, a1, a2, a3, e0, e1, e2, e3


@njit(cache=True, fastmath=FLAGS)     # not inline: compiled once for every type and caller
def _dec32(qtype, b, q, buf, lut):
    """A row of a 32-value-block type into float32, natural order (``_wv32``)."""
    bs = _bs32(qtype)
    for k in range(buf.shape[0] // 32):
        w = _wv32(qtype, b, q, k * bs, lut)
        vstore(buf, 32 * k, w[0])
        vstore(buf, 32 * k + 8, w[1])
        vstore(buf, 32 * k + 16, w[2])
        vstore(buf, 32 * k + 24, w[3])


@njit(cache=True, inline="always")
def _bs32(qtype):
    return 34 if qtype == dq.Q8_0 else (20 if qtype == dq.Q4_1 else (22 if qtype == dq.Q5_0 else (24 if qtype == dq.Q5_1 else 18)))


# Up to this many activation rows the 32-value-block batches decode in registers (``_rows2_32``),
# re-decoding the weights for every 4 rows; above, into a buffer once for all rows (``tiles2``).
# Over a 0.1B token's 72 matrices, fused against buffered: Q8_0 1.66x / 1.41x / 1.14x at
# T = 3 / 8 / 16; Q4_0 1.51x / 1.23x / 0.98x; Q4_1 1.38x / 1.20x / 1.01x; Q5_0 1.16x / 0.86x /
# 0.75x; IQ4_NL 1.30x / 0.93x / 0.81x (T = 4: Q5_1 1.11x, IQ4_NL 1.25x).  Q6_K (``_rows2_q6``, the
# 65536 x 768 head): 1.06x / 1.23x / 0.98x at T = 3 / 4 / 8.
_FT_Q8_0, _FT_Q4_0, _FT_Q4_1, _FT_Q5_0, _FT_Q5_1, _FT_IQ4_NL, _FT_Q6_K = 16, 8, 8, 4, 4, 4, 4
FUSED_T = {dq.Q8_0: _FT_Q8_0, dq.Q4_0: _FT_Q4_0, dq.Q4_1: _FT_Q4_1, dq.Q5_0: _FT_Q5_0, dq.Q5_1: _FT_Q5_1,
           dq.IQ4_NL: _FT_IQ4_NL, dq.Q6_K: _FT_Q6_K}


@njit(cache=True, inline="always", fastmath=FLAGS)
def store4(out, t, r, n, a0, a1, a2, a3):
    """out[t + i, r] = the lanes of a_i summed, for i < n (at most 4)."""
    if n > 0:
        out[t, r] = vhsum(a0)
    if n > 1:
        out[t + 1, r] = vhsum(a1)
    if n > 2:
        out[t + 2, r] = vhsum(a2)
    if n > 3:
        out[t + 3, r] = vhsum(a3)


@njit(cache=True, inline="always")
def x4(x, t0):
    """Rows t0 .. t0 + 3 of x, those past its end repeating its last (their sums are never stored)."""
    T = x.shape[0]
    return x[t0], x[min(t0 + 1, T - 1)], x[min(t0 + 2, T - 1)], x[min(t0 + 3, T - 1)]


@njit(cache=True, inline="always", fastmath=FLAGS)
def _store2x4(out, t0, r, two, a0, a1, a2, a3, e0, e1, e2, e3):
    """``store4`` of a_i to row r and (with ``two``) of e_i to row r + 1, for the rows of out there are."""
    n = min(4, out.shape[0] - t0)
    store4(out, t0, r, n, a0, a1, a2, a3)
    if two:
        store4(out, t0, r + 1, n, e0, e1, e2, e3)


@njit(cache=True, inline="always", fastmath=FLAGS)
def _rows2_32(qtype, fused_t, raw, raw_i8, x, out, r, two, lut, buf):
    """Rows r and r + 1 (with ``two``) of a 32-value-block type times every row of x.  Up to
    fused_t rows of x: each weight vector decoded in registers (``_wv32``) and used for 4 rows of x
    at a time (``_f2x4``: ``tile2x4``'s tiles with the decoding fused in, no float32 copy of the
    rows); more: both rows decoded into buf once (``_dec32``), then ``tiles2``.  Per row and
    activation row the products are summed in the same order either way, so the numbers are
    ``mv_buffered``'s."""
    T, cols = x.shape
    bs = _bs32(qtype)
    rr = r + 1 if two else r
    if T > fused_t:
        _dec32(qtype, raw[r], raw_i8[r], buf[0], lut)
        _dec32(qtype, raw[rr], raw_i8[rr], buf[1], lut)
        tiles2(buf[0], buf[1], x, out, r, two, 0)
        return
    b = raw[r]
    q = raw_i8[r]
    bb = raw[rr]
    qq = raw_i8[rr]
    for t0 in range(0, T, 4):
        x0, x1, x2, x3 = x4(x, t0)
        a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
        e0, e1, e2, e3 = vzero(), vzero(), vzero(), vzero()
        for k in range(cols // 32):
            o = k * bs
            if t0 == 0 and k % 2 == 0:
                _prefetch_ahead(raw, r, o, 2 * bs)
                _prefetch_ahead(raw, rr, o, 2 * bs)
            w = _wv32(qtype, b, q, o, lut)
            v = _wv32(qtype, bb, qq, o, lut)
            xo = k * 32
            a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(w[0], v[0], x0, x1, x2, x3, xo, a0, a1, a2, a3, e0, e1, e2, e3)
            a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(w[1], v[1], x0, x1, x2, x3, xo + 8, a0, a1, a2, a3, e0, e1, e2, e3)
            a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(w[2], v[2], x0, x1, x2, x3, xo + 16, a0, a1, a2, a3, e0, e1, e2, e3)
            a0, a1, a2, a3, e0, e1, e2, e3 = _f2x4(w[3], v[3], x0, x1, x2, x3, xo + 24, a0, a1, a2, a3, e0, e1, e2, e3)
        _store2x4(out, t0, r, two, a0, a1, a2, a3, e0, e1, e2, e3)


@njit(cache=True)
def _aligned_copy(x):
    """x in a fresh array (Numba's allocations are 32-byte aligned, NumPy's only 16: a vector
    load across two cache lines halves the loads a cycle).  A loop: ``xa[:] = x`` compiles NumPy's
    setitem, 3 s of a file's first run."""
    xa = np.empty(x.shape, dtype=np.float32)
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            xa[t, j] = x[t, j]
    return xa


# The batches of the 32-value-block types: one kernel each (a file compiles only its own), rows in
# pairs through ``_rows2_32``.
@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q8_0(raw, raw_i8, x, out, lut):
    xa = _aligned_copy(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _rows2_32(dq.Q8_0, _FT_Q8_0, raw, raw_i8, xa, out, r, r + 1 < r1, lut, buf)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q4_0(raw, raw_i8, x, out, lut):
    xa = _aligned_copy(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _rows2_32(dq.Q4_0, _FT_Q4_0, raw, raw_i8, xa, out, r, r + 1 < r1, lut, buf)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q4_1(raw, raw_i8, x, out, lut):
    xa = _aligned_copy(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _rows2_32(dq.Q4_1, _FT_Q4_1, raw, raw_i8, xa, out, r, r + 1 < r1, lut, buf)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q5_0(raw, raw_i8, x, out, lut):
    xa = _aligned_copy(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _rows2_32(dq.Q5_0, _FT_Q5_0, raw, raw_i8, xa, out, r, r + 1 < r1, lut, buf)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_q5_1(raw, raw_i8, x, out, lut):
    xa = _aligned_copy(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _rows2_32(dq.Q5_1, _FT_Q5_1, raw, raw_i8, xa, out, r, r + 1 < r1, lut, buf)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_iq4_nl(raw, raw_i8, x, out, lut):
    xa = _aligned_copy(x)
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        buf = np.empty((2, x.shape[1]), dtype=np.float32)
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _rows2_32(dq.IQ4_NL, _FT_IQ4_NL, raw, raw_i8, xa, out, r, r + 1 < r1, lut, buf)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_f16(raw, raw_i8, x, out, lut):
    """F16 rows (their bytes) read by ``tiles2`` directly, halves converted in registers, the rows
    PF_AHEAD bytes ahead prefetched (``_prefetch_pair``)."""
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _prefetch_pair(raw, r)
            tiles2(raw[r].view(np.uint16), raw[min(r + 1, r1 - 1)].view(np.uint16), x, out, r, r + 1 < r1, 0)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mvb_f32(raw, raw_i8, x, out, lut):
    """F32 rows (their bytes) read by ``tiles2`` directly (``_prefetch_pair`` ahead)."""
    for task in prange((raw.shape[0] + ROWS - 1) // ROWS):
        r0, r1 = _rows_of(task, raw.shape[0])
        for r in range(r0, r1, 2):
            _prefetch_pair(raw, r)
            tiles2(raw[r].view(np.float32), raw[min(r + 1, r1 - 1)].view(np.float32), x, out, r, r + 1 < r1, 0)


_LANES_BATCH = {dq.Q6_K: mvb_q6_k, dq.Q4_K: mvb_q4_k, dq.Q5_K: mvb_q5_k, dq.Q3_K: mvb_q3_k, dq.Q2_K: mvb_q2_k,
                dq.IQ4_XS: mvb_iq4_xs}
_BATCH = {**_LANES_BATCH, dq.Q8_0: mvb_q8_0, dq.Q4_0: mvb_q4_0, dq.Q4_1: mvb_q4_1, dq.Q5_0: mvb_q5_0,
          dq.Q5_1: mvb_q5_1, dq.IQ4_NL: mvb_iq4_nl, dq.F16: mvb_f16, dq.F32: mvb_f32}
