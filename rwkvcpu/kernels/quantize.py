"""Quantizers gguf-py lacks, written from ggml's published reference algorithms.

Q6_K (used by llama-quantize for ``output.weight`` of most types): per 256-value
super-block, each 16-value sub-block gets a scale from an RMSE search
(``_qx_scale``: weights x², 19 trial scales around -32/max), the sub-block scales
are quantized to int8 against one f16 super-scale ``d``, then every value is
re-quantized to 6 bits with its final ``d * scale``.  All arithmetic is float32
in the reference's order, rounding is round-half-even (ggml's ``nearest_int``),
and ``d`` is rounded to f16 by NumPy between the two passes, so the result is
bit-identical with ``llama-quantize`` (tested against the fixture files).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True, inline="always")
def _nearest(v):
    return np.int32(np.rint(np.float32(v)))


@njit(cache=True)
def _qx_scale(x, L, nmax):
    """Scale for a group ``x`` minimising the x²-weighted error of levels in [-nmax, nmax-1]; fills L."""
    n = x.shape[0]
    fmax = np.float32(0.0)
    amax = np.float32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            fmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    nm = np.float32(nmax)
    iscale = -nm / fmax
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, _nearest(iscale * x[i])))
        L[i] = l + nmax
        w = x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != 0 else np.float32(0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(nm + np.float32(0.1) * np.float32(step)) / fmax
        sumlx = np.float32(0.0)
        suml2 = np.float32(0.0)
        for i in range(n):
            l = max(-nmax, min(nmax - 1, _nearest(iscale * x[i])))
            w = x[i] * x[i]
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, _nearest(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True, parallel=True)
def _q6k_pass1(x, L, scales, inv_iscale, maxabs):
    nb = x.shape[0]
    for b in prange(nb):
        best = np.float32(0.0)
        best_abs = np.float32(0.0)
        for ib in range(16):
            s = _qx_scale(x[b, 16 * ib:16 * ib + 16], L[b, 16 * ib:16 * ib + 16], 32)
            scales[b, ib] = s
            if abs(s) > best_abs:
                best_abs = abs(s)
                best = s
        maxabs[b] = best_abs
        if best_abs >= GROUP_MAX_EPS:
            iscale = np.float32(-128.0) / best
            inv_iscale[b] = np.float32(1.0) / iscale
            for ib in range(16):
                scales[b, ib] = min(127, _nearest(iscale * scales[b, ib]))


@njit(cache=True, parallel=True)
def _q6k_pass2(x, L, qscales, d16, maxabs, out):
    nb = x.shape[0]
    for b in prange(nb):
        o = out[b]
        if maxabs[b] < GROUP_MAX_EPS:
            o[:] = 0
            continue
        for j in range(16):
            d = d16[b] * np.float32(qscales[b, j])
            if d == 0:
                continue
            for ii in range(16):
                l = max(-32, min(31, _nearest(x[b, 16 * j + ii] / d)))
                L[b, 16 * j + ii] = l + 32
        for half in range(2):
            base = 128 * half
            for l in range(32):
                q1 = L[b, base + l] & 0xF
                q2 = L[b, base + l + 32] & 0xF
                q3 = L[b, base + l + 64] & 0xF
                q4 = L[b, base + l + 96] & 0xF
                o[64 * half + l] = q1 | (q3 << 4)
                o[64 * half + l + 32] = q2 | (q4 << 4)
                o[128 + 32 * half + l] = ((L[b, base + l] >> 4) | ((L[b, base + l + 32] >> 4) << 2)
                                          | ((L[b, base + l + 64] >> 4) << 4) | ((L[b, base + l + 96] >> 4) << 6))
        for j in range(16):
            o[192 + j] = np.uint8(qscales[b, j] & 0xFF)       # int8 scale, two's complement


def quantize_q6_k(a: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> Q6_K bytes [rows, cols // 256 * 210]."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    rows, cols = a.shape
    if cols % 256:
        raise ValueError(f"Q6_K needs rows that are a multiple of 256 values, got {cols}")
    x = a.reshape(-1, 256)
    nb = x.shape[0]
    L = np.zeros((nb, 256), np.int32)
    scales = np.zeros((nb, 16), np.float32)
    inv = np.zeros(nb, np.float32)
    maxabs = np.zeros(nb, np.float32)
    _q6k_pass1(x, L, scales, inv, maxabs)
    d16 = inv.astype(np.float16)                       # round to f16 like GGML_FP32_TO_FP16
    qscales = scales.astype(np.int32)
    out = np.zeros((nb, 210), np.uint8)
    _q6k_pass2(x, L, qscales, d16.astype(np.float32), maxabs, out)
    out[:, 208:210] = np.where(maxabs[:, None] < GROUP_MAX_EPS, 0, d16.view(np.uint8).reshape(nb, 2))
    return out.reshape(rows, cols // 256 * 210)
