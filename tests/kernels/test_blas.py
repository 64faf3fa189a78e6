"""Matrix products run inside Numba threads (rwkvcpu/kernels/blas.py) against np.matmul."""
import os
import subprocess
import sys

import numpy as np
import pytest

from rwkvcpu.kernels import blas
from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels.quantize import quantize_blocks


@pytest.mark.parametrize("T,N,K", [(1, 768, 768), (3, 37, 64), (130, 1000, 96), (512, 3, 256)])
def test_gemm_nt_against_numpy(T, N, K):
    rng = np.random.default_rng(T + N)
    x = rng.standard_normal((T, K)).astype(np.float32)
    W = rng.standard_normal((N, K)).astype(np.float32)
    got = blas.gemm_nt(x, W)
    ref = x.astype(np.float64) @ W.T.astype(np.float64)
    # float32 sums of K products in BLAS's blocking: relative 1e-5 of sum |x||w| is ample
    assert np.all(np.abs(got - ref) <= 1e-5 * (np.abs(x) @ np.abs(W.T)))


def test_gemm_nt_writes_into_a_column_slice_target_and_takes_strided_x():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64)).astype(np.float32)[::2]        # not contiguous
    W = rng.standard_normal((10, 64)).astype(np.float32)
    out = np.full((4, 10), np.nan, np.float32)
    blas.gemm_nt(x, W, out)
    np.testing.assert_allclose(out, x @ W.T, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not blas.AVAILABLE, reason="NumPy's OpenBLAS symbols not found: np.matmul path in use")
@pytest.mark.parametrize("qtype", [dq.Q4_K, dq.Q6_K])       # one kernel per type (blas._tiled_for)
def test_tiled_matmul_on_quantized_rows(qtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 512)).astype(np.float32)
    raw = quantize_blocks(a, qtype)
    raw.setflags(write=False)       # read-only like a loaded file's: the kernels' one compiled signature
    Wd = np.empty((300, 512), np.float32)
    dq.dequant_rows(qtype, raw, Wd, dq.KVALUES_IQ4, dq.F16_LUT)
    x = rng.standard_normal((20, 512)).astype(np.float32)
    out = np.full((20, 300), np.nan, np.float32)
    blas.tiled_matmul(qtype, raw, x, out, tile_bytes=64 * 512 * 4)    # 64-row tiles: several per thread
    np.testing.assert_allclose(out, x @ Wd.T, rtol=1e-4, atol=1e-4)


def test_spin_setting_follows_blas_availability():
    """OpenMP workers spin between regions only when no OpenBLAS pool is in play (see blas.py)."""
    code = "import os, rwkvcpu; from rwkvcpu.kernels import blas; " \
           "print(blas.AVAILABLE, os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == (["True", "300000", "None"] if out[0] == "True" else ["False", "None", "PASSIVE"])
    env["RWKVCPU_NO_INLINE_BLAS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "None", "PASSIVE"]
