"""numba.cuda kernels of the RWKV-7 forward pass.

Same equations, layouts and names as ``cpu.py`` (whose NumPy twins live in
``reference.py``); ``tests/test_cuda.py`` runs the whole model here and on the
CPU and compares logits and state.  Without a GPU the tests skip; the kernels
also run under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is
how they are exercised on machines without one (slowly: tiny models only).

Conventions
-----------
* Activations are float32 ``[T, C]`` rows on the device; sequences of a batch
  are consecutive rows, described by ``seg_start/seg_len/seg_slot`` exactly as
  on the CPU.  State slots live on the device: per layer ``R [n_slots, 2C]``
  and ``S [n_slots, H, N, N]`` (row = value channel, column = key channel; the
  layout of ``rwkvcpu/state.py``).
* Weights stay in their file encoding.  Matrix kernels decode one "group" of
  32 consecutive weights of a row at a time (``_group``): a Q8_0/Q4_0 block,
  or a 32-value sub-block of a Q4_K/Q6_K super-block.  F32/F16 weights are
  typed arrays; BF16 is uint16 widened by a shift.  Other types are widened to
  float32 at upload (``rwkvcpu/gpu.py``).
* Matrix products: ``x [T, in] @ W[out, in].T``.  T <= MV_T: one warp per
  output row, the weights read once for all T rows (decode, small batches).
  Larger T: the weight is expanded into a float32 scratch (quantized types) and
  a tiled GEMM runs.  ``act`` transforms the input on load (0 none, 1 tanh,
  2 sigmoid); ``epi`` the output (0 store, 1 add to out: the residual, 2
  relu squared).
* Decay and state are float32; no fast-math.
"""
from __future__ import annotations

import math
import os

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda 0.30 registers an overload for np.row_stack when it compiles its first kernel;
    # NumPy 2.5 removed that alias of vstack, and the import then fails deep inside numba-cuda.
    np.row_stack = np.vstack

from numba import config, cuda, float32, int32, int64, uint16  # noqa: E402

from . import dequant as dq

SIM = bool(config.ENABLE_CUDASIM)

NMAX = 64        # largest head size (RWKV-7 uses 64)
MV_T = 8         # rows of x handled by the fused matvec
MV_WARPS = 4     # output rows (warps) per matvec block
NORM_THREADS = 256
GEMM_BM = 64
GEMM_BN = 64
GEMM_BK = 16
GEMM_FILL = 264           # blocks wanted per gemm (2 per SM on an H100): fewer -> split K
GEMM_PART = 4 * GEMM_FILL * 64 * 64    # floats of split-K scratch (1.5B ffn_value prefill-512: 4 slices)
GEMM_WIDE = 120           # 64 x 128 tiles (tc_hgemm_n) once they make this many blocks (~0.9 of an H100
#                           wave of 256-thread blocks); 1.5B prefill: 20% faster than 64 x 64 tiles
GEMM_LD = GEMM_BM + 4     # padded shared-tile row (fewer bank conflicts on the transposed store)
BIG = 128                 # the 128 x 128 half tiles (tc_hgemm_b, tc_hgemm_hb; 128 threads)
BIG_SMEM_H = 4 * (2 * BIG * 40) * 2         # their dynamic shared memory: 4 stages of one-half x and W ...
BIG_SMEM_X = 3 * (3 * BIG * 40) * 2         # ... 3 stages with x's lo halves (tc_gemm.cu HgSmem)
BIG_FILL = 192            # ... used when a product makes this many of their blocks (with split K) ...
BIG_KMIN = 2048           # ... splitting K into slices this long at least (1.5B: o no, ffn_value in 4)
CMAX = 8192      # widest row the layer norm kernel holds in shared memory

# Types decoded inside the kernels; the rest are widened at upload.
NATIVE_QTYPES = (dq.Q8_0, dq.Q4_0, dq.Q4_K, dq.Q6_K)

if SIM:
    def _bits_f32(u):
        return np.uint32(u).view(np.float32)
else:
    from numba.cuda import libdevice

    def _bits_f32(u):
        return libdevice.int_as_float(int32(u))

bits_f32 = cuda.jit(device=True, inline=True)(_bits_f32)


@cuda.jit(device=True, inline=True)
def _i8(b):
    v = int32(b)
    return v - 256 if v >= 128 else v


@cuda.jit(device=True, inline=True)
def _f16(W, row, o, lut):
    return lut[int32(W[row, o]) | (int32(W[row, o + 1]) << 8)]


@cuda.jit(device=True)
def _group(qt, W, row, g, lut, vals):
    """vals[0:32] = weights g*32 .. g*32+31 of ``row`` (quantized types)."""
    if qt == 8:           # Q8_0
        o = g * 34
        d = _f16(W, row, o, lut)
        for i in range(32):
            vals[i] = float32(_i8(W[row, o + 2 + i])) * d
    elif qt == 2:         # Q4_0
        o = g * 18
        d = _f16(W, row, o, lut)
        for i in range(16):
            q = int32(W[row, o + 2 + i])
            vals[i] = d * float32((q & 15) - 8)
            vals[i + 16] = d * float32((q >> 4) - 8)
    elif qt == 12:        # Q4_K: super-block g // 8, sub-block g % 8
        o = (g // 8) * 144
        sb = g % 8
        d = _f16(W, row, o, lut)
        dmin = _f16(W, row, o + 2, lut)
        s = o + 4
        if sb < 4:
            sc = int32(W[row, s + sb]) & 63
            mn = int32(W[row, s + 4 + sb]) & 63
        else:
            sc = (int32(W[row, s + 4 + sb]) & 15) | ((int32(W[row, s + sb - 4]) >> 2) & 48)
            mn = (int32(W[row, s + 4 + sb]) >> 4) | ((int32(W[row, s + sb]) >> 2) & 48)
        dl = d * float32(sc)
        ml = dmin * float32(mn)
        base = o + 16 + (sb // 2) * 32
        shift = 4 * (sb % 2)
        for i in range(32):
            vals[i] = dl * float32((int32(W[row, base + i]) >> shift) & 15) - ml
    else:                 # Q6_K (14)
        o = (g // 8) * 210
        e0 = (g % 8) * 32
        d = _f16(W, row, o + 208, lut)
        h = e0 // 128
        r0 = e0 % 128
        dl = d * float32(_i8(W[row, o + 192 + e0 // 16]))
        dl2 = d * float32(_i8(W[row, o + 192 + e0 // 16 + 1]))
        for i in range(32):
            r = r0 + i
            lo = (int32(W[row, o + h * 64 + (r % 64)]) >> (4 * (r // 64))) & 15
            hi = (int32(W[row, o + 128 + h * 32 + (r % 32)]) >> (2 * (r // 32))) & 3
            q = (lo | (hi << 4)) - 32
            vals[i] = (dl if i < 16 else dl2) * float32(q)


@cuda.jit(device=True, inline=True)
def _act(v, act):
    if act == 1:
        return math.tanh(v)
    if act == 2:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    return v


@cuda.jit(device=True, inline=True)
def _store(out, t, n, v, epi):
    if epi == 1:
        out[t, n] += v
    elif epi == 2:
        v = max(v, float32(0.0))
        out[t, n] = v * v
    else:
        out[t, n] = v


if SIM:
    # The simulator has no warp shuffles: lanes of a warp (Python threads) exchange values
    # through a per-warp list and a barrier.  Only for testing without a GPU.
    import threading
    _sim_warps: dict = {}
    _sim_lock = threading.Lock()

    def _shfl_down(v, off):
        th = threading.current_thread()        # the simulator's BlockThread
        w, lane = divmod(th.thread_id, 32)
        with _sim_lock:
            bar, vals = _sim_warps.setdefault((id(th._manager), w), (threading.Barrier(32), [0.0] * 32))
        vals[lane] = v
        bar.wait()
        r = vals[lane + off] if lane + off < 32 else v
        bar.wait()
        return r

    def _warp_sum_impl(v):
        for off in (16, 8, 4, 2, 1):
            v += _shfl_down(v, off)
        return v
else:
    def _warp_sum_impl(v):
        for off in (16, 8, 4, 2, 1):
            v += cuda.shfl_down_sync(0xFFFFFFFF, v, off)
        return v

_warp_sum = cuda.jit(device=True, inline=True)(_warp_sum_impl)


@cuda.jit(device=True)
def _block_sum(v, red):
    """Sum of v over the block (blockDim.x a multiple of 32, <= 1024); every thread gets it."""
    lane = cuda.threadIdx.x % 32
    wid = cuda.threadIdx.x // 32
    v = _warp_sum(v)
    cuda.syncthreads()
    if lane == 0:
        red[wid] = v
    cuda.syncthreads()
    nw = (cuda.blockDim.x + 31) // 32
    s = float32(0.0)
    for i in range(nw):
        s += red[i]
    return s


# --- matrix products ------------------------------------------------------------------

@cuda.jit(cache=True)
def mv_q(qt, W, lut, x, T, out, act, epi):
    """out[t, n] (epi) sum_k act(x[t, k]) * W[n, k], quantized W [rows, row_bytes]; T <= MV_T."""
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.y
    if n >= out.shape[1]:
        return
    acc = cuda.local.array(MV_T, float32)
    vals = cuda.local.array(32, float32)
    for t in range(MV_T):
        acc[t] = float32(0.0)
    ng = x.shape[1] // 32
    for g in range(lane, ng, 32):
        _group(qt, W, n, g, lut, vals)
        for t in range(T):
            s = float32(0.0)
            for i in range(32):
                s += vals[i] * _act(x[t, g * 32 + i], act)
            acc[t] += s
    for t in range(T):
        v = _warp_sum(acc[t])
        if lane == 0:
            _store(out, t, n, v, epi)


@cuda.jit(cache=True)
def mv_f(W, x, T, out, act, epi, bf16):
    """As mv_q for float32 / float16 W [rows, cols], or BF16 bits (uint16) when ``bf16``."""
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.y
    if n >= out.shape[1]:
        return
    acc = cuda.local.array(MV_T, float32)
    for t in range(MV_T):
        acc[t] = float32(0.0)
    for k in range(lane, x.shape[1], 32):
        if bf16:
            w = bits_f32(int32(W[n, k]) << 16)
        else:
            w = float32(W[n, k])
        for t in range(T):
            acc[t] += w * _act(x[t, k], act)
    for t in range(T):
        v = _warp_sum(acc[t])
        if lane == 0:
            _store(out, t, n, v, epi)


@cuda.jit(device=True, inline=True)
def _h2f(h):
    """IEEE half bits (an int in 0..65535) -> float32, exactly (normals by re-biasing the exponent)."""
    e = h & 0x7C00
    sgn = (h & 0x8000) << 16
    if e == 0:
        v = float32(h & 0x3FF) * float32(5.960464477539063e-08)      # subnormal: m * 2**-24
        return -v if sgn != 0 else v
    if e == 0x7C00:
        return bits_f32(sgn | 0x7F800000 | ((h & 0x3FF) << 13))
    return bits_f32(sgn | (((h & 0x7FFF) + 0x1C000) << 13))


@cuda.jit(device=True, inline=True)
def _wdot(u, x, j, kind, act):
    """Word j of a weight row (uint32: one f32, or two f16 / bf16) times its x values."""
    u = int64(u)
    if kind == 0:
        return bits_f32(u) * _act(x[0, j], act)
    if kind == 1:
        lo = _h2f(u & 0xFFFF)
        hi = _h2f(u >> 16)
    else:
        lo = bits_f32((u & 0xFFFF) << 16)
        hi = bits_f32(u & 0xFFFF0000)
    return lo * _act(x[0, 2 * j], act) + hi * _act(x[0, 2 * j + 1], act)


@cuda.jit(cache=True)
def mv1_f(W32, x, out, act, epi, kind):
    """Decode (T == 1) matvec for float weights: W32 = the rows viewed as uint32 words (kind 0:
    f32, 1: f16 pairs, 2: bf16 pairs).  A warp per row reads 4 coalesced 128-byte spans per
    step, so more bytes are in flight than mv_f's one 2-byte load per lane."""
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.y
    if n >= out.shape[1]:
        return
    nw = W32.shape[1]
    a0 = float32(0.0)
    a1 = float32(0.0)
    a2 = float32(0.0)
    a3 = float32(0.0)
    j = lane
    while j + 96 < nw:                  # 4 words per lane in flight (8 measured slower on H100)
        u0 = W32[n, j]
        u1 = W32[n, j + 32]
        u2 = W32[n, j + 64]
        u3 = W32[n, j + 96]
        a0 += _wdot(u0, x, j, kind, act)
        a1 += _wdot(u1, x, j + 32, kind, act)
        a2 += _wdot(u2, x, j + 64, kind, act)
        a3 += _wdot(u3, x, j + 96, kind, act)
        j += 128
    while j < nw:
        a0 += _wdot(W32[n, j], x, j, kind, act)
        j += 32
    v = _warp_sum((a0 + a1) + (a2 + a3))
    if lane == 0:
        _store(out, 0, n, v, epi)


MV1_XMAX = 8192      # widest x that mv1_w64 stages in shared memory (wider rows: mv1_f)
MV1_WARPS = 8        # rows (warps) per mv1_w64 block


# Q8_0 repacked at upload (``gpu.DevMatrix``): the 32 int8 of each block in one [rows, cols] array
# (read as 64-bit words, 8 weights each) and the block scales (f16 bits) in a [rows, cols / 32]
# array beside it -- the same bytes as the file's 34-byte blocks, in an order wide loads can use.

@cuda.jit(device=True, inline=True)
def _q8r_dot(u, d, xr, k, act):
    """8 int8 weights (one 64-bit word) times xr[k:k+8] (act applied), times their block scale d."""
    u = int64(u)
    s = float32(0.0)
    for e in range(8):
        q = (u >> (8 * e)) & 255
        if q > 127:
            q -= 256
        s += float32(q) * _act(xr[k + e], act)
    return d * s


@cuda.jit(device=True, inline=True)
def _w64dot(u, sx, q, kind, D16, n):
    """64-bit word q of weight row n (two f32, four f16 / bf16, or kind 3: eight int8 of repacked
    Q8_0, whose block scales are D16[n]) times its x values in sx."""
    if kind == 3:
        return _q8r_dot(u, _h2f(int32(D16[n, q >> 2])), sx, 8 * q, 0)
    if kind == 0:
        k = 2 * q
        return bits_f32(u & 0xFFFFFFFF) * sx[k] + bits_f32(u >> 32) * sx[k + 1]
    k = 4 * q
    h0 = int64(u & 0xFFFF)
    h1 = int64((u >> 16) & 0xFFFF)
    h2 = int64((u >> 32) & 0xFFFF)
    h3 = int64(u >> 48)
    if kind == 1:
        return (_h2f(h0) * sx[k] + _h2f(h1) * sx[k + 1]) + (_h2f(h2) * sx[k + 2] + _h2f(h3) * sx[k + 3])
    return ((bits_f32(h0 << 16) * sx[k] + bits_f32(h1 << 16) * sx[k + 1])
            + (bits_f32(h2 << 16) * sx[k + 2] + bits_f32(h3 << 16) * sx[k + 3]))


@cuda.jit(cache=True)
def mv1_w64(W64, D16, x, out, act, epi, kind):
    """Decode (T == 1) matvec on weights read as 64-bit words (kind 0: two f32, 1: four f16,
    2: four bf16, 3: eight int8 of repacked Q8_0 with block scales D16; other kinds ignore D16):
    act(x) staged once per block in shared memory (4 loads in flight per thread), then a warp per
    row with 8 coalesced 256-byte spans in flight per step.  1.5B F16 decode, kernel time of two
    tokens (ncu, H100): 9.05 -> 8.27 ms with both (a 2048 x 2048 matrix 13.4 -> 11.8 us, the
    2048 x 8192 ffn_value 44.7 -> 35.9 us); end to end (`.gpu/dec_prof.py`) inside the noise of
    the host-side launches: 237.0 / 245.4 tok/s against 241.1 / 243.8 before.  Tried and dropped: x in shared memory as planes
    (value e of word q at e nq + q) against 4-way bank conflicts: 8.27 -> 9.36 ms."""
    sx = cuda.shared.array(MV1_XMAX, float32)
    tid = cuda.threadIdx.y * 32 + cuda.threadIdx.x
    C = x.shape[1]
    NT = 32 * MV1_WARPS
    i = tid
    while i + 3 * NT < C:            # 4 loads in flight per thread: staged one by one, each load's
        v0 = x[0, i]                 # latency was paid in turn
        v1 = x[0, i + NT]
        v2 = x[0, i + 2 * NT]
        v3 = x[0, i + 3 * NT]
        sx[i] = _act(v0, act)
        sx[i + NT] = _act(v1, act)
        sx[i + 2 * NT] = _act(v2, act)
        sx[i + 3 * NT] = _act(v3, act)
        i += 4 * NT
    while i < C:
        sx[i] = _act(x[0, i], act)
        i += NT
    cuda.syncthreads()
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV1_WARPS + cuda.threadIdx.y
    if n >= out.shape[1]:
        return
    nq = W64.shape[1]
    a0 = float32(0.0)
    a1 = float32(0.0)
    a2 = float32(0.0)
    a3 = float32(0.0)
    a4 = float32(0.0)
    a5 = float32(0.0)
    a6 = float32(0.0)
    a7 = float32(0.0)
    j = lane
    while j + 224 < nq:              # 8 spans in flight: a 2048-wide F16 row in two steps
        u0 = W64[n, j]
        u1 = W64[n, j + 32]
        u2 = W64[n, j + 64]
        u3 = W64[n, j + 96]
        u4 = W64[n, j + 128]
        u5 = W64[n, j + 160]
        u6 = W64[n, j + 192]
        u7 = W64[n, j + 224]
        a0 += _w64dot(u0, sx, j, kind, D16, n)
        a1 += _w64dot(u1, sx, j + 32, kind, D16, n)
        a2 += _w64dot(u2, sx, j + 64, kind, D16, n)
        a3 += _w64dot(u3, sx, j + 96, kind, D16, n)
        a4 += _w64dot(u4, sx, j + 128, kind, D16, n)
        a5 += _w64dot(u5, sx, j + 160, kind, D16, n)
        a6 += _w64dot(u6, sx, j + 192, kind, D16, n)
        a7 += _w64dot(u7, sx, j + 224, kind, D16, n)
        j += 256
    while j + 96 < nq:
        u0 = W64[n, j]
        u1 = W64[n, j + 32]
        u2 = W64[n, j + 64]
        u3 = W64[n, j + 96]
        a0 += _w64dot(u0, sx, j, kind, D16, n)
        a1 += _w64dot(u1, sx, j + 32, kind, D16, n)
        a2 += _w64dot(u2, sx, j + 64, kind, D16, n)
        a3 += _w64dot(u3, sx, j + 96, kind, D16, n)
        j += 128
    while j < nq:
        a0 += _w64dot(W64[n, j], sx, j, kind, D16, n)
        j += 32
    v = _warp_sum(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)))
    if lane == 0:
        _store(out, 0, n, v, epi)


@cuda.jit(cache=True)
def mv_q8r(Q64, D16, x, T, out, act, epi):
    """Repacked Q8_0 times a few rows of x (T <= MV_T, or rows too wide for mv1_w64): a warp per
    output row and per x row, x read from global memory."""
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.y
    if n >= out.shape[1]:
        return
    nq = Q64.shape[1]
    for t in range(T):
        xr = x[t]
        a0 = float32(0.0)
        a1 = float32(0.0)
        j = lane
        while j + 32 < nq:
            u0 = Q64[n, j]
            u1 = Q64[n, j + 32]
            a0 += _q8r_dot(u0, _h2f(int32(D16[n, j >> 2])), xr, 8 * j, act)
            a1 += _q8r_dot(u1, _h2f(int32(D16[n, (j + 32) >> 2])), xr, 8 * (j + 32), act)
            j += 64
        while j < nq:
            a0 += _q8r_dot(Q64[n, j], _h2f(int32(D16[n, j >> 2])), xr, 8 * j, act)
            j += 32
        v = _warp_sum(a0 + a1)
        if lane == 0:
            _store(out, t, n, v, epi)


@cuda.jit(device=True, inline=True)
def _q8r_weight(Q8, D16, i):
    """(row, column, float32 value) of weight i of a repacked Q8_0 matrix; row -1 past its end."""
    cols = Q8.shape[1]
    if i >= Q8.shape[0] * cols:
        return -1, 0, float32(0.0)
    r = i // cols
    c = i % cols
    return r, c, _h2f(int32(D16[r, c // 32])) * float32(Q8[r, c])


@cuda.jit(cache=True)
def expand_q8r(Q8, D16, out):
    """out = repacked Q8_0 as float32 (the GEMM's scratch), one thread per weight."""
    r, c, v = _q8r_weight(Q8, D16, cuda.grid(1))
    if r >= 0:
        out[r, c] = v


@cuda.jit(cache=True)
def expand_q(qt, W, lut, out):
    """out[n, :] = row n of a quantized W as float32 (one thread per 32-weight group)."""
    i = cuda.grid(1)
    ng = out.shape[1] // 32
    if i >= out.shape[0] * ng:
        return
    n = i // ng
    g = i % ng
    vals = cuda.local.array(32, float32)
    _group(qt, W, n, g, lut, vals)
    for j in range(32):
        out[n, g * 32 + j] = vals[j]


@cuda.jit(cache=True)
def expand_bf16(W, out):
    i, j = cuda.grid(2)
    if i < out.shape[0] and j < out.shape[1]:
        out[i, j] = bits_f32(int32(W[i, j]) << 16)


@cuda.jit(cache=True)
def gemm(x, W, T, out, act, epi, part, kc):
    """out[t, n] (epi) sum_k act(x[t, k]) * W[n, k] for float32/float16 W: 64x64 tiles,
    256 threads, 4x4 outputs per thread.  grid (ceil(N/64), ceil(T/64), S): with S > 1 (split K,
    for grids too small to fill the GPU) block z sums k in [z*kc, (z+1)*kc) into part[z] and
    ``gemm_reduce`` finishes; with S == 1 (part of shape (1, 1, 1)) it stores into out directly."""
    As = cuda.shared.array((GEMM_BK, GEMM_LD), float32)
    Bs = cuda.shared.array((GEMM_BK, GEMM_LD), float32)
    tid = cuda.threadIdx.x
    m0 = cuda.blockIdx.y * GEMM_BM
    n0 = cuda.blockIdx.x * GEMM_BN
    tr = (tid // 16) * 4
    tc = (tid % 16) * 4
    kbeg = cuda.blockIdx.z * kc
    K = min(x.shape[1], kbeg + kc)
    N = out.shape[1]
    acc = cuda.local.array(16, float32)
    for i in range(16):
        acc[i] = float32(0.0)
    for k0 in range(kbeg, K, GEMM_BK):
        for l in range(4):
            e = tid + l * 256
            r = e // GEMM_BK
            c = e % GEMM_BK
            kk = k0 + c
            va = float32(0.0)
            if m0 + r < T and kk < K:
                va = _act(x[m0 + r, kk], act)
            As[c, r] = va
            vb = float32(0.0)
            if n0 + r < N and kk < K:
                vb = float32(W[n0 + r, kk])
            Bs[c, r] = vb
        cuda.syncthreads()
        for kk in range(GEMM_BK):
            a0 = As[kk, tr]
            a1 = As[kk, tr + 1]
            a2 = As[kk, tr + 2]
            a3 = As[kk, tr + 3]
            b0 = Bs[kk, tc]
            b1 = Bs[kk, tc + 1]
            b2 = Bs[kk, tc + 2]
            b3 = Bs[kk, tc + 3]
            acc[0] += a0 * b0
            acc[1] += a0 * b1
            acc[2] += a0 * b2
            acc[3] += a0 * b3
            acc[4] += a1 * b0
            acc[5] += a1 * b1
            acc[6] += a1 * b2
            acc[7] += a1 * b3
            acc[8] += a2 * b0
            acc[9] += a2 * b1
            acc[10] += a2 * b2
            acc[11] += a2 * b3
            acc[12] += a3 * b0
            acc[13] += a3 * b1
            acc[14] += a3 * b2
            acc[15] += a3 * b3
        cuda.syncthreads()
    split = part.shape[0] > 1
    for i in range(4):
        for j in range(4):
            if m0 + tr + i < T and n0 + tc + j < N:
                if split:
                    part[cuda.blockIdx.z, m0 + tr + i, n0 + tc + j] = acc[i * 4 + j]
                else:
                    _store(out, m0 + tr + i, n0 + tc + j, acc[i * 4 + j], epi)


@cuda.jit(cache=True)
def gemm_reduce(part, T, out, epi):
    """out[t, n] (epi) sum_z part[z, t, n]: the end of a split-K gemm."""
    i = cuda.grid(1)
    N = out.shape[1]
    if i >= T * N:
        return
    t = i // N
    n = i % N
    s = float32(0.0)
    for z in range(part.shape[0]):
        s += part[z, t, n]
    _store(out, t, n, s, epi)


@cuda.jit(cache=True)
def lowrank1(W, src, mixed, T, out):
    """First low-rank stage of w/a/v/g in one launch: out[t, n] = mixed[src[n], t] . W[n]
    (W: the four [D, C] matrices stacked)."""
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.y
    if n >= W.shape[0]:
        return
    m = src[n]
    K = W.shape[1]
    for t in range(T):
        s0 = float32(0.0)                  # 4 loads per lane in flight
        s1 = float32(0.0)
        s2 = float32(0.0)
        s3 = float32(0.0)
        k = lane
        while k + 96 < K:
            s0 += W[n, k] * mixed[m, t, k]
            s1 += W[n, k + 32] * mixed[m, t, k + 32]
            s2 += W[n, k + 64] * mixed[m, t, k + 64]
            s3 += W[n, k + 96] * mixed[m, t, k + 96]
            k += 128
        while k < K:
            s0 += W[n, k] * mixed[m, t, k]
            k += 32
        s = _warp_sum((s0 + s1) + (s2 + s3))
        if lane == 0:
            out[t, n] = s
    return


@cuda.jit(cache=True)
def lowrank2(Wflat, seg_w, seg_in, seg_d, seg_act, h1, T, C, out):
    """Second stage: out[t, s*C + c] = act_s(h1[t, in_s : in_s + D_s]) . W_s[c] for the
    four segments s (w2 <- tanh, a2, v2, g2 <- sigmoid); W_s [C, D_s] flattened at seg_w[s]."""
    lane = cuda.threadIdx.x
    n = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.y
    if n >= 4 * C:
        return
    s = n // C
    c = n % C
    D = seg_d[s]
    if D == 0:
        return
    base = seg_w[s] + c * D
    i0 = seg_in[s]
    a = seg_act[s]
    for t in range(T):
        acc = float32(0.0)
        for j in range(lane, D, 32):
            acc += Wflat[base + j] * _act(h1[t, i0 + j], a)
        acc = _warp_sum(acc)
        if lane == 0:
            out[t, n] = acc


# --- norms, shifts, the time-mix elementwise work -------------------------------------

@cuda.jit(device=True)
def _row_stats(x, t, eps, red):
    """(mean, 1 / sqrt(var + eps)) of row t of x, summed by the block's threads (two passes)."""
    C = x.shape[1]
    s = float32(0.0)
    for j in range(cuda.threadIdx.x, C, cuda.blockDim.x):
        s += x[t, j]
    mu = _block_sum(s, red) / float32(C)
    s = float32(0.0)
    for j in range(cuda.threadIdx.x, C, cuda.blockDim.x):
        d = x[t, j] - mu
        s += d * d
    var = _block_sum(s, red) / float32(C)
    return mu, float32(1.0) / math.sqrt(var + eps)


@cuda.jit(cache=True)
def embed_rows(W32, W16, Q8, D16, kind, toks, out):
    """out[t] = row toks[t] of the embedding as float32, exactly as the CPU decodes it: kind 0
    float32 (W32), 1 f16 bits (W16), 2 bf16 bits (W16), 3 repacked Q8_0 (Q8, D16); grid 2-D over
    (T, C)."""
    t, c = cuda.grid(2)
    if t >= out.shape[0] or c >= out.shape[1]:
        return
    r = toks[t]
    if kind == 0:
        v = W32[r, c]
    elif kind == 1:
        v = _h2f(int32(W16[r, c]))
    elif kind == 2:
        v = bits_f32(int32(W16[r, c]) << 16)
    else:
        v = _h2f(int32(D16[r, c // 32])) * float32(Q8[r, c])
    out[t, c] = v


@cuda.jit(cache=True)
def layer_norm(x, w, b, eps, out):
    """One block per row."""
    t = cuda.blockIdx.x
    red = cuda.shared.array(32, float32)
    mu, inv = _row_stats(x, t, eps, red)
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        out[t, j] = (x[t, j] - mu) * inv * w[j] + b[j]


@cuda.jit(cache=True)
def ln_shift_mix(x, w, b, eps, seg_start, seg_slot, R, off, mixes, out):
    """layer_norm then shift_mix in one launch, for steps whose sequences have one token each
    (decode, batched decode).  Block (c, s): sequence s's row statistics (the same 256-thread
    sums as layer_norm, so the same bits), then channels c*256.. of the normed row, its token
    shift against R[slot, off:off+C] (which it then replaces) and the lerps."""
    s = cuda.blockIdx.y
    t = seg_start[s]
    red = cuda.shared.array(32, float32)
    C = x.shape[1]
    mu, inv = _row_stats(x, t, eps, red)
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j >= C:
        return
    xv = (x[t, j] - mu) * inv * w[j] + b[j]
    slot = seg_slot[s]
    d = R[slot, off + j] - xv
    R[slot, off + j] = xv
    for m in range(mixes.shape[0]):
        out[m, t, j] = xv + d * mixes[m, j]


SHIFT_T = 16     # tokens per thread in shift_mix


@cuda.jit(device=True, inline=True)
def _shift_span(x, seg_start, seg_len, seg_slot, R, off):
    """This thread's share of a token shift: (channel j, first token, end token, x[first - 1, j]);
    end <= first when it has none.  One thread per (channel, sequence, chunk of SHIFT_T tokens);
    the first row of a sequence takes R[slot, off:off+C], which then becomes its last row, and only
    the thread of a sequence's first chunk touches the state row (it reads it, then stores the
    sequence's last input row), so every state element has one owner."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    s = cuda.blockIdx.y
    lo = cuda.blockIdx.z * SHIFT_T
    n = seg_len[s]
    if j >= x.shape[1] or lo >= n:
        return j, 0, 0, float32(0.0)
    t0 = seg_start[s]
    if lo == 0:
        slot = seg_slot[s]
        prev = R[slot, off + j]
        R[slot, off + j] = x[t0 + n - 1, j]
    else:
        prev = x[t0 + lo - 1, j]
    return j, t0 + lo, t0 + min(n, lo + SHIFT_T), prev


@cuda.jit(cache=True)
def shift_mix(x, seg_start, seg_len, seg_slot, R, off, mixes, out):
    """Token shift and lerps: out[m, t] = x[t] + (x[t-1] - x[t]) * mixes[m] (``_shift_span``)."""
    j, ta, tb, prev = _shift_span(x, seg_start, seg_len, seg_slot, R, off)
    for t in range(ta, tb):
        xv = x[t, j]
        d = prev - xv
        for m in range(mixes.shape[0]):
            out[m, t, j] = xv + d * mixes[m, j]
        prev = xv


@cuda.jit(cache=True)
def pre_wkv(k, v, h2, w0, a0, v0, k_k, k_a, vfirst, first, N, eps, W, A, B):
    """Per (token, head), N threads: decay, in-context rate, value residual, normalised key.
    In: k, v [T, C]; h2 [T, 4C] = (w2 | a2 | v2 | g) outputs.  Out: W = decay, k and v
    updated in place, A = -kk, B = kk * a (the wkv7 'a' and 'b')."""
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    i = cuda.threadIdx.x
    red = cuda.shared.array(32, float32)
    C = k.shape[1]
    j = h * N + i
    one = float32(1.0)
    W[t, j] = math.exp(float32(-0.606531) * (one / (one + math.exp(-(w0[j] + h2[t, j])))))
    a = one / (one + math.exp(-(a0[j] + h2[t, C + j])))
    vv = v[t, j]
    if first:
        vfirst[t, j] = vv
    else:
        vv = vv + (vfirst[t, j] - vv) * (one / (one + math.exp(-(v0[j] + h2[t, 2 * C + j]))))
        v[t, j] = vv
    kv = k[t, j]
    kk = kv * k_k[j]
    ss = _block_sum(kk * kk, red)
    kk = kk / max(math.sqrt(ss), eps)
    k[t, j] = kv * (one + (a - one) * k_a[j])
    A[t, j] = -kk
    B[t, j] = kk * a


@cuda.jit(cache=True)
def wkv7(r, w, k, v, a, b, seg_start, seg_len, seg_slot, S, y):
    """One block per (sequence, head), N threads; thread i owns row i (value channel) of the
    head's state, kept in registers over the whole segment.  Same update as cpu.wkv7."""
    s = cuda.blockIdx.x
    h = cuda.blockIdx.y
    i = cuda.threadIdx.x
    N = cuda.blockDim.x
    slot = seg_slot[s]
    st = cuda.local.array(NMAX, float32)
    sh_a = cuda.shared.array(NMAX, float32)
    sh_b = cuda.shared.array(NMAX, float32)
    sh_w = cuda.shared.array(NMAX, float32)
    sh_k = cuda.shared.array(NMAX, float32)
    sh_r = cuda.shared.array(NMAX, float32)
    for j in range(N):
        st[j] = S[slot, h, i, j]
    o = h * N
    for t in range(seg_start[s], seg_start[s] + seg_len[s]):
        sh_a[i] = a[t, o + i]
        sh_b[i] = b[t, o + i]
        sh_w[i] = w[t, o + i]
        sh_k[i] = k[t, o + i]
        sh_r[i] = r[t, o + i]
        vi = v[t, o + i]
        cuda.syncthreads()
        sa = float32(0.0)
        for j in range(N):
            sa += st[j] * sh_a[j]
        acc = float32(0.0)
        for j in range(N):
            sij = st[j] * sh_w[j] + sa * sh_b[j] + vi * sh_k[j]
            st[j] = sij
            acc += sij * sh_r[j]
        y[t, o + i] = acc
        cuda.syncthreads()
    for j in range(N):
        S[slot, h, i, j] = st[j]


WKV_LANES = 4                # threads per state row in wkv7_64
WKV_M = NMAX // WKV_LANES    # state columns per thread (registers)


WKVC_ROWS = 16               # state rows per block in wkv7_64c (wkv7.cu's WKV_ROWS)
WKVC_SPLIT = NMAX // WKVC_ROWS
WKVC_THREADS = WKVC_ROWS * WKV_LANES
WKV_CH = 8                   # tokens per chunk of inputs staged in shared memory by wkv7_64
WKV_LOADS = 6 * WKV_CH * NMAX // (WKV_LANES * NMAX)     # values each thread stages per chunk


@cuda.jit(device=True, inline=True)
def _wkv_src(u, a, b, w, k, r, v):
    if u == 0:
        return a
    if u == 1:
        return b
    if u == 2:
        return w
    if u == 3:
        return k
    if u == 4:
        return r
    return v


@cuda.jit(cache=True)
def wkv7_64(r, w, k, v, a, b, seg_start, seg_len, seg_slot, S, y):
    """wkv7 for head size 64, the fast path: one block of 256 threads per (sequence, head); the 4
    threads of row i own its columns q, q+4, ..., q+60 (q = lane & 3) in registers (compile-time
    sized, so the loops unroll) and combine their partial dot products by warp shuffles.  Inputs
    come in chunks of WKV_CH tokens: a chunk's a, b, w, k, r, v are loaded (12 coalesced values
    per thread) while the previous chunk is computed from shared memory, one barrier per chunk;
    the per-token loads and barrier used to leave a token waiting on memory (~0.7 us per token,
    the loop being sequential).  Each dot product is two interleaved partial sums (half the
    dependent-FMA chain).  Same update as cpu.wkv7; only summation order differs."""
    s = cuda.blockIdx.x
    h = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    i = tid >> 2
    q = tid & 3
    slot = seg_slot[s]
    o = h * NMAX
    st = cuda.local.array(WKV_M, float32)
    stage = cuda.local.array(WKV_LOADS, float32)
    buf = cuda.shared.array((2, 6, WKV_CH, NMAX), float32)
    for m in range(WKV_M):
        st[m] = S[slot, h, i, q + WKV_LANES * m]
    t0 = seg_start[s]
    t1 = t0 + seg_len[s]
    # staged value u of this thread: input u >> 1, token (tid + 256 (u & 1)) >> 6 of the chunk, column tid & 63
    for u in range(WKV_LOADS):
        tt = (tid + 256 * (u & 1)) >> 6
        stage[u] = _wkv_src(u >> 1, a, b, w, k, r, v)[t0 + tt, o + (tid & 63)] if t0 + tt < t1 else float32(0.0)
    p = 0
    for c0 in range(t0, t1, WKV_CH):
        for u in range(WKV_LOADS):
            buf[p, u >> 1, (tid + 256 * (u & 1)) >> 6, tid & 63] = stage[u]
        cuda.syncthreads()
        c1 = c0 + WKV_CH
        if c1 < t1:                          # the next chunk's loads fly while this one computes
            for u in range(WKV_LOADS):
                tt = (tid + 256 * (u & 1)) >> 6
                stage[u] = _wkv_src(u >> 1, a, b, w, k, r, v)[c1 + tt, o + (tid & 63)] if c1 + tt < t1 \
                    else float32(0.0)
        for tt in range(min(WKV_CH, t1 - c0)):
            vi = buf[p, 5, tt, i]
            sa0 = float32(0.0)
            sa1 = float32(0.0)
            for m in range(0, WKV_M, 2):
                sa0 += st[m] * buf[p, 0, tt, q + WKV_LANES * m]
                sa1 += st[m + 1] * buf[p, 0, tt, q + WKV_LANES * (m + 1)]
            sa = sa0 + sa1
            sa += cuda.shfl_xor_sync(0xFFFFFFFF, sa, 1)
            sa += cuda.shfl_xor_sync(0xFFFFFFFF, sa, 2)
            acc0 = float32(0.0)
            acc1 = float32(0.0)
            for m in range(0, WKV_M, 2):
                j = q + WKV_LANES * m
                s0 = st[m] * buf[p, 2, tt, j] + sa * buf[p, 1, tt, j] + vi * buf[p, 3, tt, j]
                s1 = st[m + 1] * buf[p, 2, tt, j + WKV_LANES] + sa * buf[p, 1, tt, j + WKV_LANES] \
                    + vi * buf[p, 3, tt, j + WKV_LANES]
                st[m] = s0
                st[m + 1] = s1
                acc0 += s0 * buf[p, 4, tt, j]
                acc1 += s1 * buf[p, 4, tt, j + WKV_LANES]
            acc = acc0 + acc1
            acc += cuda.shfl_xor_sync(0xFFFFFFFF, acc, 1)
            acc += cuda.shfl_xor_sync(0xFFFFFFFF, acc, 2)
            if q == 0:
                y[c0 + tt, o + i] = acc
        p = 1 - p
    for m in range(WKV_M):
        S[slot, h, i, q + WKV_LANES * m] = st[m]


@cuda.jit(cache=True)
def post_wkv(y, r, k, v, h2, ln_w, ln_b, r_k, N, eps, out):
    """Per (token, head): group norm of y, plus the bonus (r.k*r_k) v, times the gate."""
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    i = cuda.threadIdx.x
    red = cuda.shared.array(32, float32)
    C = y.shape[1]
    j = h * N + i
    yv = y[t, j]
    mu = _block_sum(yv, red) / float32(N)
    d = yv - mu
    var = _block_sum(d * d, red) / float32(N)
    yn = d / math.sqrt(var + eps) * ln_w[j] + ln_b[j]
    bonus = _block_sum(r[t, j] * k[t, j] * r_k[j], red) * v[t, j]
    out[t, j] = (yn + bonus) * h2[t, 3 * C + j]


@cuda.jit(cache=True)
def gather_rows(x, rows, out):
    i, j = cuda.grid(2)
    if i < rows.shape[0] and j < x.shape[1]:
        out[i, j] = x[rows[i], j]


def f16_lut() -> np.ndarray:
    return dq.F16_LUT


# --- tensor-core GEMM (rwkvcpu/kernels/tc_gemm.cu, linked through NVRTC) ----------------------
# numba-cuda has no matrix-multiply-accumulate intrinsic; the tile loop lives in a CUDA C device
# function (inline PTX mma.sync, no headers) that these kernels call with raw pointers.  Values
# are split into two halves (hi + lo), so the product keeps float32 accuracy (measured on the
# device: max error 1.5e-6 of sum |x||w| at K = 2048, against 1e-6 for the float32 SIMT gemm).
# H100, 512 x 2048 x 2048: 0.17 ms vs 0.45 ms for ``gemm``; 64 x 8192 x 2048: 0.14 vs 0.58 ms.
TC_CU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tc_gemm.cu")

if not SIM:
    try:
        from numba.cuda.extending import intrinsic as _cuda_intrinsic
    except ImportError:                        # older numba-cuda
        from numba.core.extending import intrinsic as _cuda_intrinsic
    from numba import types as _nt

    @_cuda_intrinsic
    def _dptr(typingctx, arr):
        """The data pointer of a device array (for the foreign function's C pointer arguments)."""
        def cg(ctx, builder, sig, args):
            return ctx.make_array(sig.args[0])(ctx, builder, args[0]).data
        return _nt.CPointer(arr.dtype)(arr), cg

    _P32, _P16 = _nt.CPointer(_nt.float32), _nt.CPointer(_nt.uint16)
    _tc_args = (_nt.int64, _nt.int64, _nt.int32, _nt.int32, _nt.int32, _nt.int32, _nt.int32, _nt.int32,
                _nt.int32, _nt.int32, _nt.int32, _nt.int32)
    _tc_f32w = cuda.declare_device("tc_gemm_f32w", _nt.int32(_P32, _nt.int64, _P32, _nt.int64, _P32, *_tc_args[1:]))
    _tc_f16w = cuda.declare_device("tc_gemm_f16w", _nt.int32(_P32, _nt.int64, _P16, _nt.int64, _P32, *_tc_args[1:]))

    @cuda.jit(link=[TC_CU])
    def tc_gemm32(x, W, out, ldo, T, N, kc, act, epi):
        """out (epi)= act(x) @ W.T, W float32 [N, K]; grid (ceil(N/64), ceil(T/64), S), 128 threads.
        S > 1: out is the split-K partials [S, T, N] (ldo = N, epi 0) for ``gemm_reduce``."""
        _tc_f32w(_dptr(x), x.strides[0] // 4, _dptr(W), W.strides[0] // 4, _dptr(out), ldo,
                 T, N, x.shape[1], kc, act, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(link=[TC_CU])
    def tc_gemm16(x, W, out, ldo, T, N, kc, act, epi):
        """As ``tc_gemm32`` for IEEE-half weights given as their uint16 bits."""
        _tc_f16w(_dptr(x), x.strides[0] // 4, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
                 T, N, x.shape[1], kc, act, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    _tc_x2 = cuda.declare_device("tc_hgemm_x2", _nt.int32(_P16, _P16, _nt.int64, _P16, _nt.int64, _P32,
                                                         *_tc_args[1:11]))
    _tc_x2n = cuda.declare_device("tc_hgemm_x2n", _nt.int32(_P16, _P16, _nt.int64, _P16, _nt.int64, _P32,
                                                           *_tc_args[1:11]))
    _tc_x2w2 = cuda.declare_device("tc_hgemm_x2w2", _nt.int32(_P16, _P16, _nt.int64, _P16, _P16, _nt.int64, _P32,
                                                             *_tc_args[1:11]))
    _tc_hilo = cuda.declare_device("tc_hilo", _nt.uint32(_nt.float32))
    _tc_split = cuda.declare_device("tc_split_x", _nt.int32(_P32, _nt.int64, _P16, _P16, _nt.int64, _nt.int32,
                                                           _nt.int32, _nt.int32, _nt.int64))

    @cuda.jit(link=[TC_CU])
    def split_x(x, H, L, act):
        """H, L (uint16 bits of halves, [T, >= K]) = act(x) split as hi + lo; x [T, K] float32,
        K % 4 == 0; one thread per 4 values."""
        _tc_split(_dptr(x), x.strides[0] // 4, _dptr(H), _dptr(L), H.strides[0] // 2, x.shape[0], x.shape[1],
                  act, cuda.grid(1))

    @cuda.jit(link=[TC_CU])
    def shift_mix_hl(x, seg_start, seg_len, seg_slot, R, off, mixes, out, H, L):
        """``shift_mix`` that also stores each output as its hi/lo halves (H, L: uint16 bits, the
        shape of out), as ``split_x`` would split it: the products that read the lerped rows
        (r/k/v, the first low-rank stage) then need no split launches of their own."""
        j, ta, tb, prev = _shift_span(x, seg_start, seg_len, seg_slot, R, off)
        for t in range(ta, tb):
            xv = x[t, j]
            d = prev - xv
            for m in range(mixes.shape[0]):
                v = xv + d * mixes[m, j]
                out[m, t, j] = v
                u = _tc_hilo(v)
                H[m, t, j] = uint16(u & 0xFFFF)
                L[m, t, j] = uint16(u >> 16)
            prev = xv

    @cuda.jit(link=[TC_CU])
    def tc_hgemm(Xh, Xl, W, out, ldo, T, N, K, kc, epi):
        """out (epi)= x @ W.T with x given as its halves (``split_x``) and F16 W (uint16 bits):
        cp.async-pipelined tensor-core tiles, the same products and order as ``tc_gemm16``.
        grid (ceil(N/64), ceil(T/64), S), 128 threads; S > 1 as ``tc_gemm32``."""
        _tc_x2(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
               T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_n(Xh, Xl, W, out, ldo, T, N, K, kc, epi):
        """``tc_hgemm`` on 64 x 128 tiles: grid (ceil(N/128), ceil(T/64), S), 256 threads."""
        _tc_x2n(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
                T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_w2(Xh, Xl, Wh, Wl, out, ldo, T, N, K, kc, epi):
        """As ``tc_hgemm`` for weights given as hi/lo halves (``expand_q8r_hl``): the products and
        order of ``tc_gemm32`` on the float32 expansion."""
        _tc_x2w2(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(Wh), _dptr(Wl), Wh.strides[0] // 2, _dptr(out),
                 ldo, T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    _tc_h1 = cuda.declare_device("tc_hgemm_h1", _nt.int32(_P16, _nt.int64, _P16, _nt.int64, _P32, *_tc_args[1:11]))
    _tc_h1n = cuda.declare_device("tc_hgemm_h1n", _nt.int32(_P16, _nt.int64, _P16, _nt.int64, _P32, *_tc_args[1:11]))

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_h(Xh, W, out, ldo, T, N, K, kc, epi):
        """out (epi)= x @ W.T, x given as f16 (the hi halves of ``split_x``: llama numerics round x
        to f16 against F16 weights) and F16 W: one MMA per product; grid and split K as ``tc_hgemm``."""
        _tc_h1(_dptr(Xh), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
               T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_hn(Xh, W, out, ldo, T, N, K, kc, epi):
        """``tc_hgemm_h`` on 64 x 128 tiles (256 threads)."""
        _tc_h1n(_dptr(Xh), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
                T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(device=True, inline=True)
    def _pick3(g, a, b, c):
        """Group g's operands (a tuple) of a three-group launch."""
        if g == 0:
            return a
        if g == 1:
            return b
        return c

    _tc_hb = cuda.declare_device("tc_hgemm_h1b4", _nt.int32(_P16, _P16, _nt.int64, _P16, _nt.int64, _P32,
                                                           *_tc_args[1:11]))
    _tc_xb = cuda.declare_device("tc_hgemm_x2b3", _nt.int32(_P16, _P16, _nt.int64, _P16, _nt.int64, _P32,
                                                           *_tc_args[1:11]))

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_b(Xh, Xl, W, out, ldo, T, N, K, kc, epi):
        """``tc_hgemm`` on 128 x 128 tiles, 128 threads, BIG_SMEM_X bytes of dynamic shared memory
        (``big_smem``): grid (ceil(N/128), ceil(T/128), S)."""
        _tc_xb(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
               T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_hb(Xh, W, out, ldo, T, N, K, kc, epi):
        """``tc_hgemm_h`` on 128 x 128 tiles, BIG_SMEM_H bytes of dynamic shared memory."""
        _tc_hb(_dptr(Xh), _dptr(Xh), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(out), ldo,
               T, N, K, kc, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.gridDim.z)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_b3(Xh0, Xl0, Xh1, Xl1, Xh2, Xl2, W0, W1, W2, o0, o1, o2, T, N, K, epi):
        """``tc_hgemm_n3`` on 128 x 128 tiles (``tc_hgemm_b``)."""
        Xh, Xl, W, o = _pick3(cuda.blockIdx.z, (Xh0, Xl0, W0, o0), (Xh1, Xl1, W1, o1), (Xh2, Xl2, W2, o2))
        _tc_xb(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(o), o.strides[0] // 4,
               T, N, K, K, epi, cuda.blockIdx.x, cuda.blockIdx.y, 0, 1)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_hb3(Xh0, Xh1, Xh2, W0, W1, W2, o0, o1, o2, T, N, K, epi):
        """``tc_hgemm_hn3`` on 128 x 128 tiles (``tc_hgemm_hb``)."""
        Xh, W, o = _pick3(cuda.blockIdx.z, (Xh0, W0, o0), (Xh1, W1, o1), (Xh2, W2, o2))
        _tc_hb(_dptr(Xh), _dptr(Xh), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(o), o.strides[0] // 4,
               T, N, K, K, epi, cuda.blockIdx.x, cuda.blockIdx.y, 0, 1)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_w2g(Xh0, Xl0, Xh1, Xl1, Xh2, Xl2, Xh3, Xl3, Wh0, Wl0, Wh1, Wl1, Wh2, Wl2, Wh3, Wl3,
                     o0, o1, o2, o3, ks, kc, ldo, T, epi):
        """Up to four ``tc_hgemm_w2`` products in one launch (a layer's low-rank products on the
        pipelined tiles; the products and order of ``tc_gemm32_g``): group g = blockIdx.z // ks,
        x and W given as hi/lo halves; grid, split K and outputs as ``tc_gemm32_g``."""
        g = cuda.blockIdx.z // ks
        if g == 0:
            Xh, Xl, Wh, Wl, o = Xh0, Xl0, Wh0, Wl0, o0
        elif g == 1:
            Xh, Xl, Wh, Wl, o = Xh1, Xl1, Wh1, Wl1, o1
        elif g == 2:
            Xh, Xl, Wh, Wl, o = Xh2, Xl2, Wh2, Wl2, o2
        else:
            Xh, Xl, Wh, Wl, o = Xh3, Xl3, Wh3, Wl3, o3
        N = Wh.shape[0]
        if cuda.blockIdx.x * 64 >= N:           # a narrower group than the grid: nothing to do
            return
        K = Xh.shape[1]
        _tc_x2w2(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(Wh), _dptr(Wl), Wh.strides[0] // 2, _dptr(o), ldo,
                 T, N, K, kc if ks > 1 else K, epi, cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z % ks, ks)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_n3(Xh0, Xl0, Xh1, Xl1, Xh2, Xl2, W0, W1, W2, o0, o1, o2, T, N, K, epi):
        """Three ``tc_hgemm_n`` products of one shape in one launch (a layer's r, k, v), group
        blockIdx.z, K whole: 3x the blocks of one product, so the grid fills the GPU without
        split K (at 1.5B prefill each product alone split K in two, then a reduction)."""
        Xh, Xl, W, o = _pick3(cuda.blockIdx.z, (Xh0, Xl0, W0, o0), (Xh1, Xl1, W1, o1), (Xh2, Xl2, W2, o2))
        _tc_x2n(_dptr(Xh), _dptr(Xl), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(o), o.strides[0] // 4,
                T, N, K, K, epi, cuda.blockIdx.x, cuda.blockIdx.y, 0, 1)

    @cuda.jit(link=[TC_CU])
    def tc_hgemm_hn3(Xh0, Xh1, Xh2, W0, W1, W2, o0, o1, o2, T, N, K, epi):
        """``tc_hgemm_n3`` for f16 x (``tc_hgemm_hn``: llama numerics, one MMA per product)."""
        Xh, W, o = _pick3(cuda.blockIdx.z, (Xh0, W0, o0), (Xh1, W1, o1), (Xh2, W2, o2))
        _tc_h1n(_dptr(Xh), Xh.strides[0] // 2, _dptr(W), W.strides[0] // 2, _dptr(o), o.strides[0] // 4,
                T, N, K, K, epi, cuda.blockIdx.x, cuda.blockIdx.y, 0, 1)

    _tc_round = cuda.declare_device("tc_round_x", _nt.int32(_P32, _nt.int64, _P32, _nt.int64, _nt.int32, _nt.int32,
                                                           _nt.int32, _nt.int32, _nt.int64))

    @cuda.jit(link=[TC_CU])
    def round_x(x, act, mode, y):
        """y = act(x) rounded as llama.cpp rounds an activation for a weight type (``mode``: the
        codes of ``actquant.rounding_mode``); x, y [T, K] float32 (row strides may differ); one
        thread per block of a row (``round_x_threads``)."""
        _tc_round(_dptr(x), x.strides[0] // 4, _dptr(y), y.strides[0] // 4, x.shape[0], x.shape[1], act, mode,
                  cuda.grid(1))

    @cuda.jit(link=[TC_CU])
    def expand_q8r_hl(Q8, D16, Wh, Wl):
        """Repacked Q8_0 -> hi/lo halves of each weight (its float32 value, exact: 8 x 11 bits),
        one thread per weight."""
        r, c, v = _q8r_weight(Q8, D16, cuda.grid(1))
        if r < 0:
            return
        u = _tc_hilo(v)
        Wh[r, c] = uint16(u & 0xFFFF)
        Wl[r, c] = uint16(u >> 16)

    _SMEM_SET = {}

    def allow_smem(kern, args, nbytes: int) -> None:
        """Opt ``kern``, specialised for ``args``, in to ``nbytes`` of dynamic shared memory (the
        driver refuses launches over 48 KB otherwise); once per kernel, signature and device (each
        GPU's context loads its own copy of the function)."""
        sig = tuple(kern.typeof_pyval(a) for a in args)
        key = (id(kern), sig, cuda.get_current_device().id)
        if _SMEM_SET.get(key, 0) >= nbytes:
            return
        k = kern.compile(sig)
        if not hasattr(k, "_codelibrary"):
            k = kern.overloads[sig]
        h = k._codelibrary.get_cufunc().handle
        try:
            from cuda.bindings import driver as cu
        except ImportError:
            from cuda import cuda as cu
        attr = cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if hasattr(cu, "CUkernel") and isinstance(h, cu.CUkernel):
            res = cu.cuKernelSetAttribute(attr, nbytes, h, cu.CUdevice(cuda.get_current_device().id))
        else:
            if not isinstance(h, cu.CUfunction):
                h = cu.CUfunction(int(getattr(h, "value", h) or 0))
            res = cu.cuFuncSetAttribute(h, attr, nbytes)
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise RuntimeError(f"{kern.__name__}: {nbytes} bytes of dynamic shared memory refused: {err!r}")
        _SMEM_SET[key] = nbytes

    WKV_CU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wkv7.cu")
    _wkv64c = cuda.declare_device("wkv7_64c", _nt.int32(_P32, _P32, _P32, _P32, _P32, _P32, _nt.int64, _nt.int32,
                                                        _nt.int32, _P32, _nt.int64, _P32, _nt.int64, _nt.int32,
                                                        _nt.int32))

    @cuda.jit(link=[WKV_CU])
    def wkv7_64c(r, w, k, v, a, b, seg_start, seg_len, seg_slot, S, y):
        """As ``wkv7_64`` (same arguments) in CUDA C (rwkvcpu/kernels/wkv7.cu): 128-bit shared-memory
        loads, and each head's 64 state rows split over WKVC_SPLIT blocks (rows are independent),
        so a single sequence's prefill runs on H * WKVC_SPLIT SMs.  grid (sequences, heads,
        WKVC_SPLIT), WKVC_THREADS threads.  r, w, k, v, a, b share one row stride; S is contiguous
        [slots, H, 64, 64]."""
        s = cuda.blockIdx.x
        h = cuda.blockIdx.y
        t0 = seg_start[s]
        _wkv64c(_dptr(r), _dptr(w), _dptr(k), _dptr(v), _dptr(a), _dptr(b), r.strides[0] // 4, t0, t0 + seg_len[s],
                _dptr(S), (seg_slot[s] * S.shape[1] + h) * (NMAX * NMAX), _dptr(y), y.strides[0] // 4, h * NMAX,
                cuda.blockIdx.z * WKVC_ROWS)

    @cuda.jit(link=[TC_CU])
    def tc_gemm32_g(x0, x1, x2, x3, W0, W1, W2, W3, o0, o1, o2, o3, ks, kc, a0, a1, a2, a3, ldo, T, epi):
        """Up to four float32-weight GEMMs in one launch (the low-rank products of a layer):
        o_g (epi)= act_g(x_g) @ W_g.T for g = blockIdx.z // ks; grid (ceil(max N_g / 64),
        ceil(T/64), groups * ks).  ks > 1: each o_g is a view of the split-K partials [ks, T, ldo]
        (column offset of group g), summed by one ``gemm_reduce`` over all groups."""
        g = cuda.blockIdx.z // ks
        if g == 0:
            x, W, o, act = x0, W0, o0, a0
        elif g == 1:
            x, W, o, act = x1, W1, o1, a1
        elif g == 2:
            x, W, o, act = x2, W2, o2, a2
        else:
            x, W, o, act = x3, W3, o3, a3
        N = W.shape[0]
        if cuda.blockIdx.x * 64 >= N:           # a narrower group than the grid: nothing to do
            return
        K = x.shape[1]
        _tc_f32w(_dptr(x), x.strides[0] // 4, _dptr(W), W.strides[0] // 4, _dptr(o), ldo,
                 T, N, K, kc if ks > 1 else K, act, epi, cuda.blockIdx.x, cuda.blockIdx.y,
                 cuda.blockIdx.z % ks, ks)
