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
from .simd import (dot_f32, f16at, prefetch, vadd, vbits, vfma, vhsum, vload, vload_bf16, vload_f16, vload_w, vmul,
                   vq6x4, vsplat, vstore, vzero, wat)

FLAGS = {"reassoc", "contract"}
ROWS = 8                 # rows per parallel task
TWO_112 = np.float32(2.0 ** 112)
PF_AHEAD = 4096          # bytes: how far ahead of a row-sequential kernel its weights are prefetched


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


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_16bit(w16, x, out, is_bf16):
    """F16 or BF16 weights (their bits as uint16), converted 8 at a time in registers."""
    rows, cols = w16.shape
    T = x.shape[0]
    c16 = cols - cols % 16
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            wr = w16[r]
            for t in range(T):
                xt = x[t]
                a0 = vzero()
                a1 = vzero()
                if is_bf16:
                    for j in range(0, c16, 16):
                        a0 = vfma(vload_bf16(wr, j), vload(xt, j), a0)
                        a1 = vfma(vload_bf16(wr, j + 8), vload(xt, j + 8), a1)
                else:
                    for j in range(0, c16, 16):
                        a0 = vfma(vload_f16(wr, j), vload(xt, j), a0)
                        a1 = vfma(vload_f16(wr, j + 8), vload(xt, j + 8), a1)
                acc = vhsum(vadd(a0, a1))
                for j in range(c16, cols):            # ragged tail (cols not a multiple of 16)
                    h = np.uint32(wr[j])
                    if is_bf16:
                        wv = np.array([h << 16], dtype=np.uint32).view(np.float32)[0]
                    else:
                        wv = np.array([((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)],
                                      dtype=np.uint32).view(np.float32)[0] * TWO_112
                    acc += wv * xt[j]
                out[t, r] = acc


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_f32(w, x, out):
    """F32 weights: two 8-lane accumulators per row (np.matmul's sgemm at T=1 streams at half this)."""
    rows = w.shape[0]
    T = x.shape[0]
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            for t in range(T):
                out[t, r] = dot_f32(w[r], x[t])


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q8_0(raw, raw_i8, x, out, lut):
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 32
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            q = raw_i8[r]
            for t in range(T):
                xt = x[t]
                acc = vzero()
                for k in range(nb):
                    o = k * 34
                    if t == 0 and k % 2 == 0:
                        _prefetch_ahead(raw, r, o, 68)
                    xo = k * 32
                    s = vmul(vload(q, o + 2), vload(xt, xo))
                    s = vfma(vload(q, o + 10), vload(xt, xo + 8), s)
                    s = vfma(vload(q, o + 18), vload(xt, xo + 16), s)
                    s = vfma(vload(q, o + 26), vload(xt, xo + 24), s)
                    acc = vfma(vsplat(f16at(b, o)), s, acc)
                out[t, r] = vhsum(acc)


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_0(raw, x, xsum, out, lut):
    """xsum[t, k]: sum of x[t] over block k (the -8 offset: sum((q-8)x) = sum(qx) - 8 sum(x))."""
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 32
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            for t in range(T):
                xt = x[t]
                acc = vzero()
                accm = np.float32(0.0)
                for k in range(nb):
                    o = k * 18
                    if t == 0 and k % 4 == 0:
                        _prefetch_ahead(raw, r, o, 72)
                    xo = k * 32
                    d = f16at(b, o)
                    s = vmul(vbits(b, o + 2, 0, 15), vload(xt, xo))         # values 0..7: low nibbles
                    s = vfma(vbits(b, o + 10, 0, 15), vload(xt, xo + 8), s)
                    s = vfma(vbits(b, o + 2, 4, 15), vload(xt, xo + 16), s)  # values 16..23: high nibbles
                    s = vfma(vbits(b, o + 10, 4, 15), vload(xt, xo + 24), s)
                    acc = vfma(vsplat(d), s, acc)
                    accm += d * xsum[t, k]
                out[t, r] = vhsum(acc) - np.float32(8.0) * accm


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q4_k(raw, x, xsum, out, lut):
    """xsum[t, s]: sum of x[t] over 32-value sub-block s (for the dmin * min term)."""
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 256
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            for t in range(T):
                xt = x[t]
                acc = vzero()
                accm = np.float32(0.0)
                for k in range(nb):
                    o = k * 144
                    if t == 0:
                        _prefetch_ahead(raw, r, o, 144)
                    d = f16at(b, o)
                    dmin = f16at(b, o + 2)
                    for sp in range(4):                 # sub-blocks 2sp (low nibbles), 2sp+1 (high)
                        sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
                        sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
                        accm += (dmin * np.float32(mn0)) * xsum[t, k * 8 + 2 * sp]
                        accm += (dmin * np.float32(mn1)) * xsum[t, k * 8 + 2 * sp + 1]
                        base = o + 16 + sp * 32
                        xo = k * 256 + sp * 64
                        s0 = vmul(vbits(b, base, 0, 15), vload(xt, xo))
                        s1 = vmul(vbits(b, base, 4, 15), vload(xt, xo + 32))
                        for c in range(8, 32, 8):
                            s0 = vfma(vbits(b, base + c, 0, 15), vload(xt, xo + c), s0)
                            s1 = vfma(vbits(b, base + c, 4, 15), vload(xt, xo + 32 + c), s1)
                        acc = vfma(vsplat(d * np.float32(sc0)), s0, acc)
                        acc = vfma(vsplat(d * np.float32(sc1)), s1, acc)
                out[t, r] = vhsum(acc) - accm


@njit(cache=True, parallel=True, fastmath=FLAGS)
def mv_q6_k(raw, raw_i8, x, xsum16, out, lut):
    """xsum16[t, g]: sum of x[t] over 16-value group g (the -32 offset of every 6-bit value)."""
    rows = raw.shape[0]
    T, cols = x.shape
    nb = cols // 256
    for task in prange((rows + ROWS - 1) // ROWS):
        for r in range(task * ROWS, min(rows, task * ROWS + ROWS)):
            b = raw[r]
            sb8 = raw_i8[r]
            for t in range(T):
                xt = x[t]
                acc = vzero()
                accm = np.float32(0.0)
                for k in range(nb):
                    o = k * 210
                    if t == 0:
                        _prefetch_ahead(raw, r, o, 210)
                    d = f16at(b, o + 208)
                    for h in range(2):
                        # runs p = 0..3 of this half: values h*128 + 32p + (0..31), scales 2 per run
                        xo = k * 256 + h * 128
                        ql = o + h * 64
                        qh = o + 128 + h * 32
                        # g0..g7: the 16-value groups 0..7 of this half (run p = g // 2)
                        q0, q1, q2, q3 = vq6x4(b, ql, qh)
                        g0 = vmul(q0, vload(xt, xo))
                        g2 = vmul(q1, vload(xt, xo + 32))
                        g4 = vmul(q2, vload(xt, xo + 64))
                        g6 = vmul(q3, vload(xt, xo + 96))
                        q0, q1, q2, q3 = vq6x4(b, ql + 8, qh + 8)
                        g0 = vfma(q0, vload(xt, xo + 8), g0)
                        g2 = vfma(q1, vload(xt, xo + 40), g2)
                        g4 = vfma(q2, vload(xt, xo + 72), g4)
                        g6 = vfma(q3, vload(xt, xo + 104), g6)
                        q0, q1, q2, q3 = vq6x4(b, ql + 16, qh + 16)
                        g1 = vmul(q0, vload(xt, xo + 16))
                        g3 = vmul(q1, vload(xt, xo + 48))
                        g5 = vmul(q2, vload(xt, xo + 80))
                        g7 = vmul(q3, vload(xt, xo + 112))
                        q0, q1, q2, q3 = vq6x4(b, ql + 24, qh + 24)
                        g1 = vfma(q0, vload(xt, xo + 24), g1)
                        g3 = vfma(q1, vload(xt, xo + 56), g3)
                        g5 = vfma(q2, vload(xt, xo + 88), g5)
                        g7 = vfma(q3, vload(xt, xo + 120), g7)
                        si = o + 192 + h * 8
                        acc = vfma(vsplat(d * np.float32(sb8[si])), g0, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 1])), g1, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 2])), g2, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 3])), g3, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 4])), g4, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 5])), g5, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 6])), g6, acc)
                        acc = vfma(vsplat(d * np.float32(sb8[si + 7])), g7, acc)
                        for g in range(8):
                            accm += (d * np.float32(sb8[si + g])) * xsum16[t, xo // 16 + g]
                out[t, r] = vhsum(acc) - np.float32(32.0) * accm


@njit(cache=True, inline="always", fastmath=FLAGS)
def _decode_row(qtype, b, q, buf, kv, lut):
    """One weight row into float32 for the batched product: vectorised for the common types
    (equal to ``dq.dequant_row`` up to FMA rounding), ``dq.dequant_row`` for the rest."""
    cols = buf.shape[0]
    if qtype == dq.Q8_0:
        for k in range(cols // 32):
            o = k * 34
            d = vsplat(f16at(b, o))
            for c in range(0, 32, 8):
                vstore(buf, k * 32 + c, vmul(d, vload(q, o + 2 + c)))
    elif qtype == dq.Q4_0:
        m8 = vsplat(np.float32(-8.0))
        for k in range(cols // 32):
            o = k * 18
            d = vsplat(f16at(b, o))
            for c in range(0, 16, 8):
                vstore(buf, k * 32 + c, vmul(d, vadd(vbits(b, o + 2 + c, 0, 15), m8)))
                vstore(buf, k * 32 + 16 + c, vmul(d, vadd(vbits(b, o + 2 + c, 4, 15), m8)))
    elif qtype == dq.Q4_K:
        for k in range(cols // 256):
            o = k * 144
            d = f16at(b, o)
            dmin = f16at(b, o + 2)
            for sp in range(4):
                sc0, mn0 = dq._k_scale_min(b, o + 4, 2 * sp)
                sc1, mn1 = dq._k_scale_min(b, o + 4, 2 * sp + 1)
                d0 = vsplat(d * np.float32(sc0))
                m0 = vsplat(-(dmin * np.float32(mn0)))
                d1 = vsplat(d * np.float32(sc1))
                m1 = vsplat(-(dmin * np.float32(mn1)))
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
                for c in range(0, 32, 8):
                    q0, q1, q2, q3 = vq6x4(b, o + h * 64 + c, o + 128 + h * 32 + c)
                    g = c // 16              # scale g (of run p: 2p + g) covers values 16g..16g+15
                    vstore(buf, xo + c, vmul(vsplat(d * np.float32(q[si + g])), vadd(q0, m32)))
                    vstore(buf, xo + 32 + c, vmul(vsplat(d * np.float32(q[si + 2 + g])), vadd(q1, m32)))
                    vstore(buf, xo + 64 + c, vmul(vsplat(d * np.float32(q[si + 4 + g])), vadd(q2, m32)))
                    vstore(buf, xo + 96 + c, vmul(vsplat(d * np.float32(q[si + 6 + g])), vadd(q3, m32)))
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
    T = x.shape[0]
    cols = w0r.shape[0]
    c8 = cols - cols % 8
    x0 = x[t0]
    x1 = x[min(t0 + 1, T - 1)]
    x2 = x[min(t0 + 2, T - 1)]
    x3 = x[min(t0 + 3, T - 1)]
    a00 = vzero()
    a01 = vzero()
    a02 = vzero()
    a03 = vzero()
    a10 = vzero()
    a11 = vzero()
    a12 = vzero()
    a13 = vzero()
    for j in range(0, c8, 8):
        w0 = vload_w(w0r, j)
        w1 = vload_w(w1r, j)
        xv = vload(x0, j)
        a00 = vfma(w0, xv, a00)
        a10 = vfma(w1, xv, a10)
        xv = vload(x1, j)
        a01 = vfma(w0, xv, a01)
        a11 = vfma(w1, xv, a11)
        xv = vload(x2, j)
        a02 = vfma(w0, xv, a02)
        a12 = vfma(w1, xv, a12)
        xv = vload(x3, j)
        a03 = vfma(w0, xv, a03)
        a13 = vfma(w1, xv, a13)
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


def _block_sums(x: np.ndarray, n: int) -> np.ndarray:
    return x.reshape(x.shape[0], -1, n).sum(-1, dtype=np.float32)


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
        return lambda x, out: mv_16bit(w16, x, out, bf)
    rb = W.row_bytes
    ri = rb.view(np.int8)
    if qtype == dq.Q8_0:
        return lambda x, out: mv_q8_0(rb, ri, x, out, lut)
    if qtype == dq.Q4_0:
        return lambda x, out: mv_q4_0(rb, x, _block_sums(x, 32), out, lut)
    if qtype == dq.Q4_K:
        return lambda x, out: mv_q4_k(rb, x, _block_sums(x, 32), out, lut)
    if qtype == dq.Q6_K:
        return lambda x, out: mv_q6_k(rb, ri, x, _block_sums(x, 16), out, lut)
    return None


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
    mv_buffered(qtype, rb, rb.view(np.int8), x, out, dq.KVALUES_IQ4, dq.F16_LUT)
