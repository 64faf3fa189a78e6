"""Every Numba dequantizer is bit-exact with gguf-py's NumPy reference on every fixture tensor."""
import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from rwkvcpu.kernels import dequant as dq
from tests.conftest import GGUF_TYPES, require_fixtures


@pytest.mark.parametrize("typ", GGUF_TYPES)
def test_bit_exact_with_gguf_py(typ):
    path = require_fixtures() / f"tiny-rwkv7-{typ}.gguf"
    reader = GGUFReader(str(path))
    checked = 0
    for t in reader.tensors:
        ref = gguf_dequantize(t.data, t.tensor_type).astype(np.float32)
        cols = int(t.shape[0])
        raw = t.data.reshape(-1, t.data.shape[-1])
        if int(t.tensor_type) == dq.BF16:
            raw = raw.view(np.uint16)
        ours = dq.dequantize(raw, int(t.tensor_type), cols).reshape(ref.shape)
        # bit patterns, so that -0.0 / NaN payloads would also be caught
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), f"{path.name}: {t.name}"
        for f in (dq.dequant_rows, dq.dequant_rows_few):   # dequantize's two paths, each on all
            out = np.empty((raw.shape[0], cols), np.float32)
            f(int(t.tensor_type), dq.as_row_bytes(raw), out, dq.KVALUES_IQ4, dq.F16_LUT)
            assert np.array_equal(out.reshape(ref.shape).view(np.uint32), ref.view(np.uint32)), t.name
        # the fused kernels' per-row path (F16 via its lookup table, BF16 via bit shift) too
        row = np.empty(cols, np.float32)
        dq.dequant_row(int(t.tensor_type), dq.as_row_bytes(raw)[0], row, dq.KVALUES_IQ4, dq.F16_LUT)
        assert np.array_equal(row.view(np.uint32), ref.reshape(-1, cols)[0].view(np.uint32)), t.name
        checked += 1
    assert checked == len(reader.tensors)


def test_half_conversion_covers_every_bit_pattern():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ref = bits.view(np.float16).astype(np.float32)
    raw = bits.view(np.uint8).reshape(1, -1)
    out = np.empty(65536, np.float32)
    dq.dequant_row(dq.F16, raw[0], out, dq.KVALUES_IQ4, dq.F16_LUT)
    finite = np.isfinite(ref)
    assert np.array_equal(out[finite].view(np.uint32), ref[finite].view(np.uint32))
    assert np.array_equal(np.isnan(out), np.isnan(ref))


def test_per_type_kernels_are_loaded_from_numbas_cache_in_a_second_process(tmp_path):
    """The per-type kernels (``dequant._few_rows``, ``blas._tiled_for``) are closures: Numba keys
    their cache entries by the closure's type constant.  A second process must load them from the
    cache, not compile them again (a first run's cost on every run)."""
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "from rwkvcpu.kernels import blas, dequant as dq\n"
        "from rwkvcpu.kernels.quantize import quantize_blocks\n"
        "from gguf.quants import dequantize as gguf_dequantize\n"
        "a = np.random.default_rng(0).standard_normal((40, 256)).astype(np.float32)\n"
        "out = np.empty((40, 256), np.float32)\n"
        "for q in (dq.Q4_K, dq.Q6_K):\n"
        "    raw = quantize_blocks(a, q)\n"
        "    dq.dequant_rows_few(q, raw, out, dq.KVALUES_IQ4, dq.F16_LUT)\n"
        "    assert np.array_equal(out, gguf_dequantize(raw, q).reshape(out.shape))    # its own type's\n"
        "    if blas.AVAILABLE:\n"
        "        blas.tiled_matmul(q, raw, a[:20], np.empty((20, 40), np.float32), 1 << 16)\n"
        "ks = [dq._FEW[dq.Q4_K], dq._FEW[dq.Q6_K]] + list(blas._TILED.values())\n"
        "print(sum(sum(k.stats.cache_hits.values()) for k in ks), sum(sum(k.stats.cache_misses.values()) for k in ks), len(ks))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    (hits1, misses1, n), (hits2, misses2, n2) = [tuple(map(int, r.stdout.split())) for r in runs]
    assert n == n2 >= 2 and misses1 == n and hits1 == 0              # first process: compiled
    assert hits2 == n and misses2 == 0, runs[1].stdout               # second: all from the cache
