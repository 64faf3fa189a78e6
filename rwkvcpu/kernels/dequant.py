"""ggml block formats and their Numba dequantizers.

Every function here turns the raw bytes of whole rows of a ggml tensor into
float32.  The NumPy reference for each format is gguf-py's
``gguf.quants.dequantize`` (vectorised NumPy, and bit-for-bit equal to ggml's
own ``to_float`` on the fixture files); ``tests/kernels/test_dequant.py``
checks every kernel here against it on every tensor of every fixture GGUF.

Bit-exactness rules: no ``fastmath`` (an FMA contraction of ``d*q + m`` would
change the last bit), every product is float32 x float32 in the same order as
the reference (``(d * sc) * q``, not ``d * (sc * q)``).

Block layouts (bytes, little endian; ``f16`` scales; QK_K = 256):

========  =====  =====  ==========================================================
type      elems  bytes  layout
========  =====  =====  ==========================================================
Q8_0       32     34    d | qs[32] int8                         y = d*q
Q4_0       32     18    d | qs[16]  lo nibbles = 0..15, hi = 16..31, y = d*(q-8)
Q4_1       32     20    d | m | qs[16]                          y = d*q + m
Q5_0       32     22    d | qh u32 (bit i = 5th bit of elem i) | qs[16]   y = d*(q-16)
Q5_1       32     24    d | m | qh u32 | qs[16]                 y = d*q + m
IQ4_NL     32     18    d | qs[16]                              y = d*KVALUES[q]
Q2_K      256     84    scales[16] (lo nibble scale, hi min) | qs[64] 2-bit | d | dmin
Q3_K      256    110    hmask[32] | qs[64] 2-bit | scales[12] 6-bit signed (-32) | d
Q4_K      256    144    d | dmin | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128]
Q5_K      256    176    d | dmin | scales[12] | qh[32] | qs[128]
Q6_K      256    210    ql[128] | qh[64] | scales[16] int8 | d
IQ4_XS    256    136    d | scales_h u16 | scales_l[4] | qs[128]   (8 sub-blocks of 32)
========  =====  =====  ==========================================================
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

QK_K = 256

# ggml type ids (GGMLQuantizationType values) -> (block elements, block bytes)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
IQ4_NL, IQ4_XS, BF16 = 20, 23, 30

BLOCKS: dict[int, tuple[int, int]] = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2),
    Q8_0: (32, 34), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24),
    IQ4_NL: (32, 18),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176),
    Q6_K: (256, 210), IQ4_XS: (256, 136),
}
TYPE_NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q8_0: "Q8_0", Q4_0: "Q4_0",
              Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", IQ4_NL: "IQ4_NL",
              Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K",
              Q6_K: "Q6_K", IQ4_XS: "IQ4_XS"}

KVALUES_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                        1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


@njit(cache=True)
def _half_bits_to_f32(h):
    """IEEE half (bits in a uint32) -> float32, exactly, without a temporary array."""
    sign = (h >> 15) & 1
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = np.float32(mant) * np.float32(5.960464477539063e-08)  # 2**-24, exact
    elif exp == 31:
        v = np.float32(np.inf) if mant == 0 else np.float32(np.nan)
    else:
        v = np.float32(1.0 + mant / 1024.0) * np.float32(2.0 ** (exp - 15))
    return -v if sign else v


@njit(cache=True)
def f16_at(b, o):
    return _half_bits_to_f32(np.uint32(b[o]) | (np.uint32(b[o + 1]) << 8))


# --- one block of each format -> out[0:block] ----------------------------------

@njit(cache=True)
def _blk_q8_0(b, o, out, j):
    d = f16_at(b, o)
    for i in range(32):
        q = np.int8(b[o + 2 + i])
        out[j + i] = np.float32(q) * d


@njit(cache=True)
def _blk_q4_0(b, o, out, j):
    d = f16_at(b, o)
    for i in range(16):
        q = b[o + 2 + i]
        out[j + i] = d * np.float32(np.int32(q & 0xF) - 8)
        out[j + i + 16] = d * np.float32(np.int32(q >> 4) - 8)


@njit(cache=True)
def _blk_q4_1(b, o, out, j):
    d = f16_at(b, o)
    m = f16_at(b, o + 2)
    for i in range(16):
        q = b[o + 4 + i]
        out[j + i] = d * np.float32(q & 0xF) + m
        out[j + i + 16] = d * np.float32(q >> 4) + m


@njit(cache=True)
def _u32_at(b, o):
    return (np.uint32(b[o]) | (np.uint32(b[o + 1]) << 8)
            | (np.uint32(b[o + 2]) << 16) | (np.uint32(b[o + 3]) << 24))


@njit(cache=True)
def _blk_q5_0(b, o, out, j):
    d = f16_at(b, o)
    qh = _u32_at(b, o + 2)
    for i in range(16):
        q = b[o + 6 + i]
        lo = np.int32(q & 0xF) | np.int32(((qh >> i) & 1) << 4)
        hi = np.int32(q >> 4) | np.int32(((qh >> (i + 16)) & 1) << 4)
        out[j + i] = d * np.float32(lo - 16)
        out[j + i + 16] = d * np.float32(hi - 16)


@njit(cache=True)
def _blk_q5_1(b, o, out, j):
    d = f16_at(b, o)
    m = f16_at(b, o + 2)
    qh = _u32_at(b, o + 4)
    for i in range(16):
        q = b[o + 8 + i]
        lo = np.int32(q & 0xF) | np.int32(((qh >> i) & 1) << 4)
        hi = np.int32(q >> 4) | np.int32(((qh >> (i + 16)) & 1) << 4)
        out[j + i] = d * np.float32(lo) + m
        out[j + i + 16] = d * np.float32(hi) + m


@njit(cache=True)
def _blk_iq4_nl(b, o, out, j, kv):
    d = f16_at(b, o)
    for i in range(16):
        q = b[o + 2 + i]
        out[j + i] = d * kv[q & 0xF]
        out[j + i + 16] = d * kv[q >> 4]


@njit(cache=True)
def _blk_q2_k(b, o, out, j):
    # scales at o..o+16, qs at o+16..o+80, d at o+80, dmin at o+82
    d = f16_at(b, o + 80)
    dmin = f16_at(b, o + 82)
    for e in range(256):
        half = e // 128             # which 32-byte run of qs
        shift = ((e % 128) // 32) * 2
        q = (b[o + 16 + half * 32 + (e % 32)] >> shift) & 3
        s = b[o + e // 16]
        dl = d * np.float32(s & 0xF)
        ml = dmin * np.float32(s >> 4)
        out[j + e] = dl * np.float32(q) - ml


@njit(cache=True)
def _k_scale6(b, o, i):
    """Q3_K: 6-bit signed sub-block scale i (0..15) from the 12 packed bytes at o."""
    lo = (b[o + (i % 8)] >> (4 * (i // 8))) & 0xF
    hi = (b[o + 8 + (i % 4)] >> (2 * (i // 4))) & 3
    return np.int32(lo | (hi << 4)) - 32


@njit(cache=True)
def _blk_q3_k(b, o, out, j):
    # hmask o..o+32, qs o+32..o+96, scales o+96..o+108, d o+108
    d = f16_at(b, o + 108)
    for e in range(256):
        half = e // 128
        shift = ((e % 128) // 32) * 2
        ql = np.int32((b[o + 32 + half * 32 + (e % 32)] >> shift) & 3)
        hbit = (b[o + (e % 32)] >> (e // 32)) & 1
        q = ql - (0 if hbit else 4)
        dl = d * np.float32(_k_scale6(b, o + 96, e // 16))
        out[j + e] = dl * np.float32(q)


@njit(cache=True)
def _k_scale_min(b, o, i):
    """Q4_K/Q5_K: (scale, min) of sub-block i (0..7) from the 12 packed bytes at o."""
    if i < 4:
        sc = b[o + i] & 0x3F
        mn = b[o + 4 + i] & 0x3F
    else:
        sc = (b[o + 8 + i - 4] & 0xF) | ((b[o + i - 4] >> 2) & 0x30)
        mn = (b[o + 8 + i - 4] >> 4) | ((b[o + 4 + i - 4] >> 2) & 0x30)
    return sc, mn


@njit(cache=True)
def _blk_q4_k(b, o, out, j):
    d = f16_at(b, o)
    dmin = f16_at(b, o + 2)
    for sb in range(8):
        sc, mn = _k_scale_min(b, o + 4, sb)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(mn)
        base = o + 16 + (sb // 2) * 32
        shift = 4 * (sb % 2)
        for i in range(32):
            q = (b[base + i] >> shift) & 0xF
            out[j + sb * 32 + i] = dl * np.float32(q) - ml


@njit(cache=True)
def _blk_q5_k(b, o, out, j):
    d = f16_at(b, o)
    dmin = f16_at(b, o + 2)
    for sb in range(8):
        sc, mn = _k_scale_min(b, o + 4, sb)
        dl = d * np.float32(sc)
        ml = dmin * np.float32(mn)
        base = o + 48 + (sb // 2) * 32
        shift = 4 * (sb % 2)
        for i in range(32):
            q = ((b[base + i] >> shift) & 0xF) | (((b[o + 16 + i] >> sb) & 1) << 4)
            out[j + sb * 32 + i] = dl * np.float32(q) - ml


@njit(cache=True)
def _blk_q6_k(b, o, out, j):
    # ql o..o+128, qh o+128..o+192, scales o+192..o+208 (int8), d o+208
    d = f16_at(b, o + 208)
    for e in range(256):
        h = e // 128
        r = e % 128
        lo = (b[o + h * 64 + (r % 64)] >> (4 * (r // 64))) & 0xF
        hi = (b[o + 128 + h * 32 + (r % 32)] >> (2 * (r // 32))) & 3
        q = np.int32(lo | (hi << 4)) - 32
        dl = d * np.float32(np.int8(b[o + 192 + e // 16]))
        out[j + e] = dl * np.float32(q)


@njit(cache=True)
def _blk_iq4_xs(b, o, out, j, kv):
    d = f16_at(b, o)
    sh = np.uint32(b[o + 2]) | (np.uint32(b[o + 3]) << 8)
    for sb in range(8):
        lo = (b[o + 4 + sb // 2] >> (4 * (sb % 2))) & 0xF
        hi = (sh >> (2 * sb)) & 3
        dl = d * np.float32(np.int32(lo | (hi << 4)) - 32)
        base = o + 8 + sb * 16
        for i in range(16):
            q = b[base + i]
            out[j + sb * 32 + i] = dl * kv[q & 0xF]
            out[j + sb * 32 + i + 16] = dl * kv[q >> 4]


@njit(cache=True)
def dequant_row(qtype, b, out, kv, f16_lut):
    """Dequantize one row (its raw bytes ``b``) of any supported type into ``out``.

    F16 goes through a 65536-entry float32 table (exact); BF16 is the bf16 bits
    shifted into the high half of a float32 (exact).
    """
    _row(qtype, b, out, kv, f16_lut)


@njit(cache=True, inline="always")
def _row(qtype, b, out, kv, f16_lut):
    """``dequant_row``'s body; inlined with a constant qtype, Numba types only that type's branch."""
    n = out.shape[0]
    if qtype == F32:
        ob = out.view(np.uint8)
        for i in range(4 * n):
            ob[i] = b[i]
    elif qtype == F16:
        for i in range(n):
            out[i] = f16_lut[np.int64(b[2 * i]) | (np.int64(b[2 * i + 1]) << 8)]
    elif qtype == BF16:
        ou = out.view(np.uint32)
        for i in range(n):
            ou[i] = (np.uint32(b[2 * i]) << 16) | (np.uint32(b[2 * i + 1]) << 24)
    elif qtype == Q8_0:
        for k in range(n // 32):
            _blk_q8_0(b, k * 34, out, k * 32)
    elif qtype == Q4_0:
        for k in range(n // 32):
            _blk_q4_0(b, k * 18, out, k * 32)
    elif qtype == Q4_1:
        for k in range(n // 32):
            _blk_q4_1(b, k * 20, out, k * 32)
    elif qtype == Q5_0:
        for k in range(n // 32):
            _blk_q5_0(b, k * 22, out, k * 32)
    elif qtype == Q5_1:
        for k in range(n // 32):
            _blk_q5_1(b, k * 24, out, k * 32)
    elif qtype == IQ4_NL:
        for k in range(n // 32):
            _blk_iq4_nl(b, k * 18, out, k * 32, kv)
    elif qtype == Q2_K:
        for k in range(n // 256):
            _blk_q2_k(b, k * 84, out, k * 256)
    elif qtype == Q3_K:
        for k in range(n // 256):
            _blk_q3_k(b, k * 110, out, k * 256)
    elif qtype == Q4_K:
        for k in range(n // 256):
            _blk_q4_k(b, k * 144, out, k * 256)
    elif qtype == Q5_K:
        for k in range(n // 256):
            _blk_q5_k(b, k * 176, out, k * 256)
    elif qtype == Q6_K:
        for k in range(n // 256):
            _blk_q6_k(b, k * 210, out, k * 256)
    elif qtype == IQ4_XS:
        for k in range(n // 256):
            _blk_iq4_xs(b, k * 136, out, k * 256, kv)


F16_LUT = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True, parallel=True)
def dequant_rows(qtype, raw, out, kv, f16_lut):
    """raw: uint8 [rows, row_bytes] -> out: float32 [rows, cols], parallel over rows."""
    for r in prange(raw.shape[0]):
        dequant_row(qtype, raw[r], out[r], kv, f16_lut)


def _few_rows(qtype):
    """A kernel for a few rows of one type (a prompt's embeddings), on one thread: it compiles
    that type's decoder only (~1 s of a file's first run, where ``dequant_rows`` compiles every
    type's and a parallel region, ~7 s).  Numba caches each (the type is part of its cache key)."""
    @njit(cache=True)
    def few(raw, out, kv, f16_lut):
        for r in range(raw.shape[0]):
            _row(qtype, raw[r], out[r], kv, f16_lut)
    return few


_FEW = {q: _few_rows(q) for q in (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K,
                                  Q4_K, Q5_K, Q6_K, IQ4_XS)}


def dequant_rows_few(qtype, raw, out, kv, f16_lut):
    """``dequant_rows`` through the one type's kernel (``_few_rows``), on one thread."""
    _FEW[qtype](raw, out, kv, f16_lut)


def as_row_bytes(raw: np.ndarray) -> np.ndarray:
    """Any tensor's raw rows as uint8 [rows, row_bytes] (a view when contiguous)."""
    raw = np.ascontiguousarray(raw)
    return raw.reshape(raw.shape[0], -1).view(np.uint8)


SERIAL_VALUES = 1 << 16      # up to this many values ``dequantize`` runs on one thread


def dequantize(raw: np.ndarray, qtype: int, cols: int, serial: bool | None = None) -> np.ndarray:
    """Rows of any supported type -> float32 [rows, cols] (a new array); on one thread
    (``dequant_rows_few``) with ``serial``, or by default up to SERIAL_VALUES values."""
    if qtype == F32:
        return np.array(raw, dtype=np.float32, copy=True)
    if qtype == F16:
        return np.asarray(raw).astype(np.float32)
    if qtype == BF16:
        return bf16_to_f32(raw)
    out = np.empty((raw.shape[0], cols), dtype=np.float32)
    if serial is None:
        serial = raw.shape[0] * cols <= SERIAL_VALUES
    f = dequant_rows_few if serial else dequant_rows
    f(qtype, as_row_bytes(raw), out, KVALUES_IQ4, F16_LUT)
    return out


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16 or its bytes) -> float32, exactly (shift into the high half)."""
    u16 = np.ascontiguousarray(raw).view(np.uint16)
    return (u16.astype(np.uint32) << 16).view(np.float32)
