"""Matrix products on one thread pool: NumPy's own OpenBLAS ``sgemm``, called from Numba threads.

Why.  A decode step launches ~200 Numba parallel regions.  With libgomp (Numba's OpenMP layer)
told to sleep as soon as a region ends (``OMP_WAIT_POLICY=PASSIVE``), waking the worker costs
~20 us per region: 4 ms of a 17 ms token at 0.1B.  Letting the workers spin between regions
removes that, but prefill alternates Numba kernels with NumPy matmuls, and OpenBLAS has a pool of
its own: spinning OpenMP workers then starve the BLAS threads (prefill-512 fell 440 -> 190 tok/s).

So every matrix product of the forward pass runs *inside* a Numba parallel region: each OpenMP
thread takes a share of the weight's rows and calls OpenBLAS ``cblas_sgemm`` on it with OpenBLAS
limited to the calling thread (``openblas_set_num_threads_local(1)``).  There is then one pool,
spinning is harmless, and the libgomp spin is enabled in ``rwkvcpu/__init__.py`` only when
``AVAILABLE`` (else: ``np.matmul`` and passive waiting, as before).

The library is the OpenBLAS that NumPy's wheels bundle (``numpy.libs``/``.dylibs``); the symbol
names depend on its build (``scipy_cblas_sgemm64_`` in NumPy 2 wheels).  Checked against
``np.matmul`` in tests/kernels/test_blas.py.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import dequant as dq
from ._openblas import find_openblas

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

_found = find_openblas()
AVAILABLE = _found is not None
SGEMM, SET_LOCAL = _found if AVAILABLE else (0, 0)

# The C functions are called through addresses passed in as integers (not ctypes objects, which
# Numba would bake into the code and refuse to cache): cached kernels stay valid across runs.
_i32, _i64, _f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()


@intrinsic
def _sgemm(typingctx, fp, m, n, k, alpha, a, lda, b, ldb, c, ldc):
    """cblas_sgemm(RowMajor, NoTrans, Trans, m, n, k, alpha, a, lda, b, ldb, 0, c, ldc) at address fp."""
    ints = (fp, m, n, k, a, lda, b, ldb, c, ldc)
    if not (all(isinstance(t, types.Integer) for t in ints) and alpha == types.float32):
        return None

    def cg(ctx, builder, sig, args):
        ptr = ir.PointerType(_f32)
        fnty = ir.FunctionType(ir.VoidType(), [_i32, _i32, _i32, _i64, _i64, _i64, _f32, ptr, _i64, ptr, _i64,
                                               _f32, ptr, _i64])
        v = [ctx.cast(builder, a_, t, types.int64) if isinstance(t, types.Integer) else a_
             for a_, t in zip(args, sig.args)]
        f = builder.inttoptr(v[0], ir.PointerType(fnty))
        c32 = lambda x: ir.Constant(_i32, x)        # noqa: E731
        builder.call(f, [c32(_ROW_MAJOR), c32(_NO_TRANS), c32(_TRANS), v[1], v[2], v[3], v[4],
                         builder.inttoptr(v[5], ptr), v[6], builder.inttoptr(v[7], ptr), v[8],
                         ir.Constant(_f32, 0.0), builder.inttoptr(v[9], ptr), v[10]])
        return ctx.get_dummy_value()
    return types.none(fp, m, n, k, alpha, a, lda, b, ldb, c, ldc), cg


@intrinsic
def _set_local(typingctx, fp, n):
    """openblas_set_num_threads_local(n) at address fp; returns the previous count."""
    if not (isinstance(fp, types.Integer) and isinstance(n, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        f = builder.inttoptr(ctx.cast(builder, args[0], sig.args[0], types.int64),
                             ir.PointerType(ir.FunctionType(_i32, [_i32])))
        return builder.sext(builder.call(f, [ctx.cast(builder, args[1], sig.args[1], types.int32)]), _i64)
    return types.int64(fp, n), cg


@njit(cache=True, parallel=True)
def _gemm_nt(x, W, out, nchunk, fp_gemm, fp_local):
    """out = x @ W.T: each thread takes a share of W's rows and runs sgemm on it alone."""
    T, K = x.shape
    N = W.shape[0]
    per = (N + nchunk - 1) // nchunk
    for c in prange(nchunk):
        r0 = c * per
        r1 = min(N, r0 + per)
        if r1 > r0:
            old = _set_local(fp_local, 1)
            _sgemm(fp_gemm, T, r1 - r0, K, np.float32(1.0), x.ctypes.data, K,
                   W[r0:].ctypes.data, W.shape[1], out[:, r0:].ctypes.data, N)
            _set_local(fp_local, old)


def _tiled_for(qtype):
    """The tiled product for one block type: out = x @ dequantize(raw).T, each thread dequantizing
    its own row tiles (float32, at most ``tile`` rows) and multiplying them with sgemm, no
    dequantized copy of the whole weight.  Made per type (``dq._row`` inlined with the type a
    constant), it compiles that type's decoder only: ~3 s of a file's first long prompt, where
    one kernel for all types compiled each one's (~8 s).  Numba caches each (the type is part of
    its cache key)."""
    @njit(cache=True, parallel=True)
    def tiled(raw, x, out, kv, lut, tile, nchunk, fp_gemm, fp_local):
        N = raw.shape[0]
        T, K = x.shape
        per = (N + nchunk - 1) // nchunk
        for c in prange(nchunk):
            buf = np.empty((tile, K), dtype=np.float32)
            lo = c * per
            hi = min(N, lo + per)
            old = _set_local(fp_local, 1)
            for r0 in range(lo, hi, tile):
                r1 = min(hi, r0 + tile)
                for r in range(r0, r1):
                    dq._row(qtype, raw[r], buf[r - r0], kv, lut)
                _sgemm(fp_gemm, T, r1 - r0, K, np.float32(1.0), x.ctypes.data, K,
                       buf.ctypes.data, K, out[:, r0:].ctypes.data, N)
            _set_local(fp_local, old)
    return tiled


_TILED = {}


def _chunks(n_rows: int) -> int:
    import numba
    return max(1, min(numba.get_num_threads(), n_rows))


def gemm_nt(x: np.ndarray, W: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x [T, K] @ W[N, K].T -> [T, N], float32, on the Numba threads (np.matmul without OpenBLAS)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty((x.shape[0], W.shape[0]), dtype=np.float32)
    if not AVAILABLE or not W.flags.c_contiguous or W.dtype != np.float32:
        np.matmul(x, W.T, out=out)
        return out
    _gemm_nt(x, W, out, _chunks(W.shape[0]), SGEMM, SET_LOCAL)
    return out


def tiled_matmul(qtype: int, raw: np.ndarray, x: np.ndarray, out: np.ndarray, tile_bytes: int) -> None:
    """out = x @ dequantize(raw).T through float32 tiles of ``tile_bytes`` (requires AVAILABLE)."""
    K = x.shape[1]
    tile = max(1, min(raw.shape[0], tile_bytes // (4 * K)))
    f = _TILED.get(qtype)
    if f is None:
        f = _TILED[qtype] = _tiled_for(qtype)
    f(raw, np.ascontiguousarray(x), out, dq.KVALUES_IQ4, dq.F16_LUT, tile, _chunks(raw.shape[0]), SGEMM, SET_LOCAL)
