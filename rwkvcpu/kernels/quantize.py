"""Quantizers gguf-py lacks, written from ggml's published reference algorithms.

All of them reproduce what ``llama-quantize`` writes without an importance
matrix (ggml's ``quantize_row_*_ref`` for the K types, ``quantize_iq4_*`` with
7 scale trials for IQ4): float32 arithmetic in the reference's order (no
``fastmath``, so no FMA contraction), ggml's ``nearest_int`` (round half to
even, with its results for inf/NaN), and super-block scales rounded to f16
between the search and the final re-quantization (``_f16``, exact RNE).
The reference is ggml's C code itself: ``tests/test_convert.py`` checks every
type bit for bit against the fixture files made by llama-quantize, and
``tests/test_quantize.py`` checks round-trip error, edge cases (zero, constant,
tiny and huge blocks) and ``_f16`` against NumPy's float16 cast.

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

import math

import numpy as np
from numba import njit, prange

GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True, inline="always")
def _nearest(v):
    """ggml's nearest_int: round half to even; inf -> -4194304 and NaN -> 0, as its bit trick gives."""
    v = np.float32(v)
    if v != v:
        return np.int32(0)
    if abs(v) == np.inf:
        return np.int32(-4194304)
    return np.int32(np.rint(v))


@njit(cache=True, inline="always")
def _f16(v):
    """The float16 value nearest to float32 ``v`` (round half to even), as float32: GGML_FP32_TO_FP16."""
    a = abs(np.float64(v))
    if a == 0.0 or a != a or a == np.inf:
        return np.float32(v)
    e = math.frexp(a)[1]                       # a in [2**(e-1), 2**e): 11 significant bits
    q = math.ldexp(1.0, max(e - 11, -24))      # the spacing of f16 values there (subnormal below 2**-14)
    r = np.rint(a / q) * q
    if r > 65504.0:
        r = np.inf
    return np.float32(r if v > 0 else -r)


@njit(cache=True, inline="always")
def _absmax(x):
    """(largest |x|, the signed value that has it; the first one on ties)."""
    amax = np.float32(0.0)
    mx = np.float32(0.0)
    for i in range(x.shape[0]):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    return amax, mx


@njit(cache=True, inline="always")
def _signed_levels(x, L, nmax, iscale, off):
    """L = clamp(rint(iscale * x), -nmax, nmax-1) + off; returns the x²-weighted (sum l*x, sum l²)."""
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(x.shape[0]):
        l = max(-nmax, min(nmax - 1, _nearest(iscale * x[i])))
        L[i] = l + off
        w = x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    return sumlx, suml2


@njit(cache=True)
def _qx_scale(x, L, nmax):
    """Scale for a group ``x`` minimising the x²-weighted error of levels in [-nmax, nmax-1]; fills L."""
    n = x.shape[0]
    amax, fmax = _absmax(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    nm = np.float32(nmax)
    iscale = -nm / fmax
    sumlx, suml2 = _signed_levels(x, L, nmax, iscale, nmax)
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


# --- K-quants with a min (Q2_K, Q4_K, Q5_K): ggml's make_qkx2_quants ----------------------------

@njit(cache=True)
def _qkx2(x, w, L, Laux, nmax, rmin, rdelta, nstep, use_mad):
    """Scale and min for ``x`` on levels 0..nmax, searching nstep+1 trial scales for the least
    w-weighted error (squared, or absolute with ``use_mad``); fills L.  Returns (scale, -min)."""
    n = x.shape[0]
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if mn > 0:
        mn = np.float32(0.0)
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0), -mn
    fn = np.float32(nmax)
    iscale = fn / (mx - mn)
    scale = np.float32(1.0) / iscale
    best = np.float32(0.0)
    for i in range(n):
        l = max(0, min(nmax, _nearest(iscale * (x[i] - mn))))
        L[i] = l
        diff = scale * np.float32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best += w[i] * diff
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + fn) / (mx - mn)
        sum_l = np.float32(0.0)
        sum_l2 = np.float32(0.0)
        sum_xl = np.float32(0.0)
        for i in range(n):
            l = max(0, min(nmax, _nearest(iscale * (x[i] - mn))))
            Laux[i] = l
            fl = np.float32(l)
            sum_l += w[i] * fl
            sum_l2 += w[i] * fl * fl
            sum_xl += w[i] * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = np.float32(0.0)
                this_scale = sum_xl / sum_l2
            cur = np.float32(0.0)
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur += w[i] * diff
            if cur < best:
                for i in range(n):
                    L[i] = Laux[i]
                best = cur
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(cache=True)
def _pack_2bit(L, o, base):
    for j in range(0, 256, 128):
        for l in range(32):
            o[base + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                    | (L[j + l + 96] << 6))


@njit(cache=True, parallel=True)
def _q2k(x, out, dd):
    """Q2_K: 16 sub-blocks of 16, 2-bit levels with a min; 4-bit scale and min per sub-block."""
    for b in prange(x.shape[0]):
        xb = x[b]
        o = out[b]
        L = np.zeros(256, np.int32)
        Laux = np.zeros(16, np.int32)
        w = np.zeros(16, np.float32)
        scales = np.zeros(16, np.float32)
        mins = np.zeros(16, np.float32)
        max_scale = np.float32(0.0)
        max_min = np.float32(0.0)
        for j in range(16):
            for l in range(16):
                w[l] = abs(xb[16 * j + l])
            s, m = _qkx2(xb[16 * j:16 * j + 16], w, L[16 * j:16 * j + 16], Laux, 3,
                         np.float32(-0.5), np.float32(0.1), 15, True)
            scales[j] = s
            mins[j] = m
            if s > max_scale:
                max_scale = s
            if m > max_min:
                max_min = m
        sc = np.zeros(16, np.int32)
        d = np.float32(0.0)
        dmin = np.float32(0.0)
        if max_scale > 0:
            iscale = np.float32(15.0) / max_scale
            for j in range(16):
                sc[j] = _nearest(iscale * scales[j]) & 0xFF
            d = _f16(max_scale / np.float32(15.0))
        if max_min > 0:
            iscale = np.float32(15.0) / max_min
            for j in range(16):
                sc[j] = (sc[j] | (_nearest(iscale * mins[j]) << 4)) & 0xFF
            dmin = _f16(max_min / np.float32(15.0))
        for j in range(16):
            dl = d * np.float32(sc[j] & 0xF)
            if dl == 0:
                continue
            ml = dmin * np.float32(sc[j] >> 4)
            for ii in range(16):
                L[16 * j + ii] = max(0, min(3, _nearest((xb[16 * j + ii] + ml) / dl)))
        for j in range(16):
            o[j] = sc[j]
        _pack_2bit(L, o, 16)
        dd[b, 0] = d
        dd[b, 1] = dmin


@njit(cache=True)
def _scale_min_k4(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


@njit(cache=True)
def _k_scale_min_block(xb, nmax, rmin, nstep, L, sc12):
    """Shared by Q4_K and Q5_K: 8 sub-blocks of 32 with weights av|x| + |x_i|; 6-bit scales and mins
    packed in 12 bytes; levels re-quantized with the f16 (d, dmin).  Returns (d, dmin)."""
    Laux = np.zeros(32, np.int32)
    w = np.zeros(32, np.float32)
    scales = np.zeros(8, np.float32)
    mins = np.zeros(8, np.float32)
    max_scale = np.float32(0.0)
    max_min = np.float32(0.0)
    for j in range(8):
        sum_x2 = np.float32(0.0)
        for l in range(32):
            sum_x2 += xb[32 * j + l] * xb[32 * j + l]
        av_x = np.sqrt(sum_x2 / np.float32(32.0))
        for l in range(32):
            w[l] = av_x + abs(xb[32 * j + l])
        s, m = _qkx2(xb[32 * j:32 * j + 32], w, L[32 * j:32 * j + 32], Laux, nmax,
                     rmin, np.float32(0.1), nstep, False)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_scale = np.float32(63.0) / max_scale if max_scale > 0 else np.float32(0.0)
    inv_min = np.float32(63.0) / max_min if max_min > 0 else np.float32(0.0)
    for j in range(12):
        sc12[j] = 0
    for j in range(8):
        ls = min(63, _nearest(inv_scale * scales[j]) & 0xFF)
        lm = min(63, _nearest(inv_min * mins[j]) & 0xFF)
        if j < 4:
            sc12[j] = ls
            sc12[j + 4] = lm
        else:
            sc12[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc12[j - 4] |= (ls >> 4) << 6
            sc12[j] |= (lm >> 4) << 6
    d = _f16(max_scale / np.float32(63.0))
    dmin = _f16(max_min / np.float32(63.0))
    for j in range(8):
        s, m = _scale_min_k4(j, sc12)
        dl = d * np.float32(s)
        if dl == 0:
            continue
        ml = dmin * np.float32(m)
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, _nearest((xb[32 * j + ii] + ml) / dl)))
    return d, dmin


@njit(cache=True, parallel=True)
def _q45k(x, out, dd, five):
    """Q4_K (``five`` False: 4-bit levels) or Q5_K (the 5th bits in qh[32] before the nibbles)."""
    for b in prange(x.shape[0]):
        o = out[b]
        L = np.zeros(256, np.int32)
        sc12 = np.zeros(12, np.int32)
        if five:
            d, dmin = _k_scale_min_block(x[b], 31, np.float32(-0.5), 15, L, sc12)
        else:
            d, dmin = _k_scale_min_block(x[b], 15, np.float32(-1.0), 20, L, sc12)
        for j in range(12):
            o[4 + j] = sc12[j]
        qs = 48 if five else 16
        for n in range(0, 256, 64):             # bit 2i / 2i+1 of qh[j]: 5th bit of L[64i + j] / L[64i + 32 + j]
            for j in range(32):
                l1 = L[n + j]
                l2 = L[n + j + 32]
                if five:
                    o[16 + j] |= ((l1 >> 4) << (n // 32)) | ((l2 >> 4) << (n // 32 + 1))
                o[qs + n // 2 + j] = (l1 & 15) | ((l2 & 15) << 4)
        dd[b, 0] = d
        dd[b, 1] = dmin


# --- Q3_K: signed 3-bit levels, ggml's make_q3_quants ---------------------------------------------

@njit(cache=True)
def _q3_scale(x, L, nmax):
    """Scale for 3-bit signed levels [-nmax, nmax-1] (weights x²), refined by moving single levels
    (up to 5 sweeps); fills L with level + nmax."""
    n = x.shape[0]
    amax, mx = _absmax(x)
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    iscale = np.float32(-nmax) / mx
    sumlx, suml2 = _signed_levels(x, L, nmax, iscale, 0)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fl = np.float32(L[i])
            slx = sumlx - w * x[i] * fl
            if slx > 0:
                sl2 = suml2 - w * fl * fl
                new_l = max(-nmax, min(nmax - 1, _nearest(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    fn = np.float32(new_l)
                    slx += w * x[i] * fn
                    sl2 += w * fn * fn
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else np.float32(0.0)


@njit(cache=True, parallel=True)
def _q3k(x, out, dd):
    for b in prange(x.shape[0]):
        xb = x[b]
        o = out[b]
        L = np.zeros(256, np.int32)
        scales = np.zeros(16, np.float32)
        max_scale = np.float32(0.0)
        amax = np.float32(0.0)
        for j in range(16):
            s = _q3_scale(xb[16 * j:16 * j + 16], L[16 * j:16 * j + 16], 4)
            scales[j] = s
            if abs(s) > amax:
                amax = abs(s)
                max_scale = s
        sc = np.zeros(12, np.int32)
        d = np.float32(0.0)
        if max_scale != 0:
            iscale = np.float32(-32.0) / max_scale
            for j in range(16):
                l = max(-32, min(31, _nearest(iscale * scales[j]))) + 32
                if j < 8:
                    sc[j] = l & 0xF
                else:
                    sc[j - 8] |= (l & 0xF) << 4
                sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
            d = _f16(np.float32(1.0) / iscale)
        for j in range(16):
            s = sc[j] & 0xF if j < 8 else sc[j - 8] >> 4
            s = (s | (((sc[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
            dl = d * np.float32(s)
            if dl == 0:
                continue
            for ii in range(16):
                L[16 * j + ii] = max(-4, min(3, _nearest(xb[16 * j + ii] / dl))) + 4
        hm = 1
        m = 0
        for j in range(256):            # high bit of level j -> bit (j // 32) of hmask[j % 32]
            if L[j] > 3:
                o[m] |= hm
                L[j] -= 4
            m += 1
            if m == 32:
                m = 0
                hm <<= 1
        _pack_2bit(L, o, 32)
        for j in range(12):
            o[96 + j] = sc[j]
        dd[b, 0] = d


# --- IQ4_NL / IQ4_XS: non-linear 4-bit levels (ggml's quantize_row_iq4_nl_impl, 7 trials) ----------

@njit(cache=True, inline="always")
def _best_index(v, x):
    """Index of the level in sorted ``v`` nearest to x (ties to the upper one, as ggml's best_index_int8)."""
    n = v.shape[0]
    if x <= v[0]:
        return 0
    if x >= v[n - 1]:
        return n - 1
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < v[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if x - v[hi - 1] < v[hi] - x else hi


@njit(cache=True)
def _iq4_scale(xb, Lb, v, ntry):
    """Best scale for one 32-value block on the non-linear levels ``v`` (weights x²); fills Lb."""
    n = xb.shape[0]
    amax, mx = _absmax(xb)
    if amax < GROUP_MAX_EPS:
        return np.float32(0.0)
    d = -mx / v[0]
    idd = np.float32(1.0) / d
    sumqx = np.float32(0.0)
    sumq2 = np.float32(0.0)
    for j in range(n):
        l = _best_index(v, idd * xb[j])
        Lb[j] = l
        q = v[l]
        w = xb[j] * xb[j]
        sumqx += w * q * xb[j]
        sumq2 += w * q * q
    d = sumqx / sumq2
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        idd = (np.float32(itry) + v[0]) / mx
        sumqx = np.float32(0.0)
        sumq2 = np.float32(0.0)
        for j in range(n):
            q = v[_best_index(v, idd * xb[j])]
            w = xb[j] * xb[j]
            sumqx += w * q * xb[j]
            sumq2 += w * q * q
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


@njit(cache=True, inline="always")
def _pack_nibbles(L, o, base, n):
    for i in range(n // 32):
        for j in range(16):
            o[base + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)


@njit(cache=True, parallel=True)
def _iq4nl(x, out, dd, v):
    for b in prange(x.shape[0]):
        xb = x[b]
        L = np.zeros(32, np.int32)
        s = _iq4_scale(xb, L, v, 7)
        idd = np.float32(1.0) / s if s != 0 else np.float32(0.0)
        for j in range(32):
            L[j] = _best_index(v, idd * xb[j])
        _pack_nibbles(L, out[b], 2, 32)
        dd[b, 0] = _f16(s)


@njit(cache=True, parallel=True)
def _iq4xs(x, out, dd, v):
    for b in prange(x.shape[0]):
        xb = x[b]
        o = out[b]
        L = np.zeros(256, np.int32)
        scales = np.zeros(8, np.float32)
        max_scale = np.float32(0.0)
        amax = np.float32(0.0)
        for ib in range(8):
            s = _iq4_scale(xb[32 * ib:32 * ib + 32], L[32 * ib:32 * ib + 32], v, 7)
            scales[ib] = s
            if abs(s) > amax:
                amax = abs(s)
                max_scale = s
        d = -max_scale / np.float32(32.0)
        idd = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        sh = 0
        for ib in range(8):
            l = max(-32, min(31, _nearest(idd * scales[ib])))
            dl = d * np.float32(l)
            idl = np.float32(1.0) / dl if dl != 0 else np.float32(0.0)
            for j in range(32):
                L[32 * ib + j] = _best_index(v, idl * xb[32 * ib + j])
            l += 32
            if ib % 2 == 0:
                o[4 + ib // 2] = l & 0xF
            else:
                o[4 + ib // 2] |= (l & 0xF) << 4
            sh |= (l >> 4) << (2 * ib)
        o[2] = sh & 0xFF
        o[3] = (sh >> 8) & 0xFF
        _pack_nibbles(L, o, 8, 256)
        dd[b, 0] = _f16(d)


# type id -> (block elements, block bytes, kernel, f16 slots as (byte offset, column of dd), extra args)
_KERNELS = {}


def _kernels():
    if not _KERNELS:
        from rwkvcpu.kernels import dequant as dq
        _KERNELS.update({
            dq.Q2_K: (256, 84, _q2k, ((80, 0), (82, 1)), ()),
            dq.Q3_K: (256, 110, _q3k, ((108, 0),), ()),
            dq.Q4_K: (256, 144, _q45k, ((0, 0), (2, 1)), (False,)),
            dq.Q5_K: (256, 176, _q45k, ((0, 0), (2, 1)), (True,)),
            dq.IQ4_NL: (32, 18, _iq4nl, ((0, 0),), (dq.KVALUES_IQ4,)),
            dq.IQ4_XS: (256, 136, _iq4xs, ((0, 0),), (dq.KVALUES_IQ4,)),
        })
    return _KERNELS


def quantize_blocks(a: np.ndarray, qtype: int) -> np.ndarray:
    """float32 [rows, cols] -> the raw blocks of a K / IQ4 type ``qtype``: uint8 [rows, row bytes]."""
    from rwkvcpu.kernels import dequant as dq
    if qtype == dq.Q6_K:
        return quantize_q6_k(a)
    if qtype not in _kernels():
        raise ValueError(f"no quantizer for ggml type {dq.TYPE_NAMES.get(qtype, qtype)}")
    blk, nbytes, kern, halves, extra = _KERNELS[qtype]
    a = np.ascontiguousarray(a, dtype=np.float32)
    rows, cols = a.shape
    if cols % blk:
        raise ValueError(f"{dq.TYPE_NAMES[qtype]} needs rows that are a multiple of {blk} values, got {cols}")
    x = a.reshape(-1, blk)
    out = np.zeros((x.shape[0], nbytes), np.uint8)
    dd = np.zeros((x.shape[0], 2), np.float32)
    kern(x, out, dd, *extra)
    bits = dd.astype(np.float16).view(np.uint8).reshape(-1, 2, 2)   # exact: dd holds f16 values
    for off, col in halves:
        out[:, off:off + 2] = bits[:, col]
    return out.reshape(rows, cols // blk * nbytes)
