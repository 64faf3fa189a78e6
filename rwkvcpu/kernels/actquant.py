"""Activation rounding as llama.cpp's CPU backend does it ("llama" numerics).

ggml multiplies a quantized weight by an activation that it first converts to the
weight type's ``vec_dot_type``; the integer dot products that follow are exact,
so the only numerical change is that rounding of the activation.  Emulating it
(round the activation, then the exact float32 product) reproduces llama.cpp's
numbers up to float32 summation order:

=====================================  =========  ====================================
weight types                           vec_dot    rounding of each activation row
=====================================  =========  ====================================
Q4_0 Q5_0 Q8_0 IQ4_NL                  Q8_0       per 32: d = f16(amax/127), q = rint(x*127/amax)
Q4_1 Q5_1                              Q8_1       the same values (Q8_1 adds a sum of q)
Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS        Q8_K       per 256: iscale = -127/max (max: the signed
                                                  value of largest |x|), q = min(127, rint(iscale*x)),
                                                  d = 1/iscale (float32)
F16                                    F16        x rounded to f16
BF16                                   BF16       x rounded to bf16 (nearest even)
F32                                    F32        unchanged
=====================================  =========  ====================================

``rint`` is round-half-even, as ggml's AVX2 path (``_mm256_round_ps``) and
``nearest_int`` do.  The NumPy twin is ``round_like_llama_ref``; tests compare the two
bit for bit and hold the resulting logits to llama.cpp's own.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import dequant as dq
from .quantize import _f16
from .simd import F16C, f16round

Q8_0_TYPES = (dq.Q4_0, dq.Q5_0, dq.Q8_0, dq.IQ4_NL, dq.Q4_1, dq.Q5_1)
Q8_K_TYPES = (dq.Q2_K, dq.Q3_K, dq.Q4_K, dq.Q5_K, dq.Q6_K, dq.IQ4_XS)


@njit(cache=True, parallel=True)
def _q8_0(x, out):
    """Q8_0 rounding of x [T, n] into out, a block per task (the scales computed in the kernel:
    NumPy's abs / max / float16 casts over a prompt cost ~0.9 ms per 512 x 768 matrix)."""
    T, n = x.shape
    nb = n // 32
    for job in prange(T * nb):
        t = job // nb
        o = (job % nb) * 32
        d, idv = q8_0_scale(x, t, o)
        for i in range(32):
            out[t, o + i] = d * np.rint(x[t, o + i] * idv)


@njit(cache=True, parallel=True)
def _q8_k(x, out):
    for t in prange(x.shape[0]):
        _q8_k_row(x[t], out[t])


def _bf16_round(x: np.ndarray) -> np.ndarray:
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))
    return r.view(np.float32)


def round_like_llama(x: np.ndarray, qtype: int) -> np.ndarray:
    """x [T, n] float32 as llama.cpp's CPU matmul sees it against a weight of ``qtype``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == dq.F32:
        return x
    if qtype in (dq.F16, dq.BF16):          # one njit call (NumPy's float16 casts cost ~5 us a row)
        out = x.copy()
        round_rows(out, rounding_mode(qtype))
        return out
    out = np.empty_like(x)
    if qtype in Q8_0_TYPES:
        _q8_0(x, out)
    elif qtype in Q8_K_TYPES:
        _q8_k(x, out)
    else:
        raise ValueError(f"no llama.cpp activation rounding known for weight type {dq.TYPE_NAMES.get(qtype, qtype)}")
    return out


def round_like_llama_ref(x: np.ndarray, qtype: int) -> np.ndarray:
    """Plain NumPy twin of ``round_like_llama`` (block-vectorised)."""
    x = np.asarray(x, dtype=np.float32)
    T, n = x.shape
    if qtype in Q8_0_TYPES:
        b = x.reshape(T, n // 32, 32)
        amax = np.abs(b).max(-1, keepdims=True)
        d = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore"):
            idv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
        return (d * np.rint(b * idv)).reshape(T, n)
    if qtype in Q8_K_TYPES:
        b = x.reshape(T, n // 256, 256)
        idx = np.abs(b).argmax(-1)[..., None]
        mx = np.take_along_axis(b, idx, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.float32(-127.0) / mx
            d = np.float32(1.0) / iscale
            q = np.minimum(np.float32(127.0), np.rint(iscale * b))
            y = np.where(mx != 0, d * q, np.float32(0.0))
        return y.astype(np.float32).reshape(T, n)
    if qtype == dq.F16:
        with np.errstate(over="ignore"):            # beyond 65520: inf, as ggml's conversion
            return x.astype(np.float16).astype(np.float32)
    if qtype == dq.BF16:
        return _bf16_round(x)
    return round_like_llama(x, qtype)


def q8_1_sums_ref(x: np.ndarray) -> np.ndarray:
    """Plain NumPy twin of the sums Q8_1 blocks carry (``intdot.quantize_q8_1``): per 32 values,
    s = f16((amax / 127) x sum q), q the rounded values of ``round_like_llama_ref``.  ggml's Q4_1 /
    Q5_1 dot products add the weight block's min times s, where the float32 product of the rounded
    activations would use d x sum q with d already f16: the two differ by f16 roundings (<= 2**-10
    of |s|)."""
    x = np.asarray(x, dtype=np.float32)
    T, n = x.shape
    b = x.reshape(T, n // 32, 32)
    amax = np.abs(b).max(-1)
    with np.errstate(divide="ignore"):
        idv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(b * idv[..., None]).sum(-1).astype(np.float32)
    return ((amax / np.float32(127.0)).astype(np.float32) * q).astype(np.float16).astype(np.float32)


# --- the same rounding inside Numba kernels (the fused decode path in llama mode) ---------------
R_NONE, R_Q8_0, R_Q8_K, R_F16, R_BF16 = 0, 1, 2, 3, 4


def rounding_mode(qtype: int) -> int:
    """The in-kernel rounding code of ``round_like_llama`` for weight type ``qtype``."""
    if qtype in Q8_0_TYPES:
        return R_Q8_0
    if qtype in Q8_K_TYPES:
        return R_Q8_K
    return {dq.F16: R_F16, dq.BF16: R_BF16}.get(qtype, R_NONE)


@njit(cache=True, inline="always")
def _f16r(v):
    """float32 v rounded to the nearest half: F16C in registers where the CPU has it, else the
    software ``quantize._f16`` (~10 ns a value; the same numbers, tests/kernels/test_intdot.py)."""
    if F16C:
        return f16round(v)
    return _f16(v)


@njit(cache=True, inline="always")
def q8_1_scale(x, t, o):
    """(d, 1/d as ggml computes it, d before its f16 rounding) of the Q8_0/Q8_1 block
    x[t, o:o+32]: f16(amax / 127), 127 / amax, amax / 127 (Q8_1's sum s = f16(amax / 127 x sum q))."""
    amax = np.float32(0.0)
    for i in range(32):
        amax = max(amax, abs(x[t, o + i]))
    d = amax / np.float32(127.0)
    return _f16r(d), (np.float32(127.0) / amax if amax > 0 else np.float32(0.0)), d


@njit(cache=True, inline="always")
def q8_0_scale(x, t, o):
    """(d, 1/d as ggml computes it) of the Q8_0 block x[t, o:o+32]: d = f16(amax / 127), 127 / amax."""
    d, idv, _ = q8_1_scale(x, t, o)
    return d, idv


@njit(cache=True)
def round_rows(x, mode):
    """In place, ``x = round_like_llama(x, qtype)`` for the code ``mode = rounding_mode(qtype)``.
    Row lengths that the block size does not divide are left alone: such a weight is stored in
    another type (llama-quantize's fallbacks), which its own code describes."""
    T, n = x.shape
    if mode == R_Q8_0 and n % 32 == 0:
        for t in range(T):
            for b in range(n // 32):
                o = b * 32
                d, idv = q8_0_scale(x, t, o)
                for i in range(32):
                    x[t, o + i] = d * np.rint(x[t, o + i] * idv)
    elif mode == R_Q8_K and n % 256 == 0:
        for t in range(T):
            row = x[t]
            _q8_k_row(row, row)
    elif mode == R_F16:
        for t in range(T):
            for j in range(n):
                x[t, j] = _f16r(x[t, j])
    elif mode == R_BF16:
        b = x.reshape(-1).view(np.uint32)
        for i in range(b.shape[0]):
            v = b[i]
            b[i] = (v + np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


@njit(cache=True, inline="always")
def q8_k_scale(x, o):
    """(iscale, d) of the Q8_K block x[o:o+256]: iscale = -127 / m (m: the signed value of largest
    |x|, the first on ties), d = 1 / iscale; (0, 0) for an all-zero block."""
    amax = np.float32(0.0)
    mx = np.float32(0.0)
    for i in range(256):
        ax = abs(x[o + i])
        if ax > amax:
            amax = ax
            mx = x[o + i]
    if amax == 0:
        return np.float32(0.0), np.float32(0.0)
    iscale = np.float32(-127.0) / mx
    return iscale, np.float32(1.0) / iscale


@njit(cache=True)
def _q8_k_row(x, out):
    for o in range(0, x.shape[0], 256):
        iscale, d = q8_k_scale(x, o)
        for i in range(256):
            out[o + i] = d * min(np.float32(127.0), np.rint(iscale * x[o + i]))
