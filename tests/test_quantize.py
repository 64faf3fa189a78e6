"""The K / IQ4 quantizers beyond bit-identity with llama-quantize (tests/test_convert.py):
round-trip error ordered by bits per weight, degenerate blocks, the f16 rounding helper,
and llama-quantize's fallback and output-tensor choices."""
import numpy as np
import pytest
from numba import njit

from rwkvcpu.convert import tensor_type
from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels.quantize import _f16, quantize_blocks

# bits per weight (block bytes * 8 / block elements) decide the expected error order
KTYPES = [dq.Q2_K, dq.Q3_K, dq.IQ4_XS, dq.IQ4_NL, dq.Q4_K, dq.Q5_K, dq.Q6_K]


@njit(cache=True)
def _f16_all(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = _f16(a[i])
    return out


def test_f16_rounding_equals_numpy_cast():
    r = np.random.default_rng(1)
    v = (r.standard_normal(100_000) * 10.0 ** r.integers(-9, 6, 100_000)).astype(np.float32)
    # halfway cases, subnormals, the largest finite half and the first value that overflows
    edge = np.float32([65504, 65519.99, 65520, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 1 + 2.0 ** -11,
                       1 + 3 * 2.0 ** -11, -0.0, 0.0])
    v = np.concatenate([v, edge, -edge])
    with np.errstate(over="ignore"):
        ref = v.astype(np.float16).astype(np.float32)
    assert np.array_equal(_f16_all(v).view(np.uint32), ref.view(np.uint32))


def _rel_rms(qtype, x):
    q = quantize_blocks(x, qtype)
    y = dq.dequantize(q, qtype, x.shape[1])
    return float(np.sqrt(((y - x) ** 2).mean()) / x.std())


def test_round_trip_error_falls_with_bits():
    x = np.random.default_rng(0).standard_normal((16, 1024)).astype(np.float32)
    err = {t: _rel_rms(t, x) for t in KTYPES}
    # measured on this data: Q2_K 0.294, Q3_K 0.152, IQ4_XS 0.077, IQ4_NL 0.076, Q4_K 0.071,
    # Q5_K 0.036, Q6_K 0.018; the bounds leave ~25% headroom and the order is what the formats promise
    bound = {dq.Q2_K: 0.37, dq.Q3_K: 0.19, dq.IQ4_XS: 0.10, dq.IQ4_NL: 0.10, dq.Q4_K: 0.09,
             dq.Q5_K: 0.045, dq.Q6_K: 0.023}
    for t in KTYPES:
        assert err[t] < bound[t], (dq.TYPE_NAMES[t], err[t])
    assert err[dq.Q2_K] > err[dq.Q3_K] > err[dq.Q4_K] > err[dq.Q5_K] > err[dq.Q6_K]


@pytest.mark.parametrize("qtype", KTYPES)
def test_degenerate_blocks(qtype):
    cols = 512
    x = np.zeros((5, cols), np.float32)
    x[1] = 0.75                                    # constant block
    x[2] = np.linspace(-1e-20, 1e-20, cols)        # below every format's resolution
    x[3, ::7] = 3.0e4                              # sparse and large
    x[4] = np.random.default_rng(2).standard_normal(cols) * 1e-3
    q = quantize_blocks(x, qtype)
    y = dq.dequantize(q, qtype, cols)
    assert np.all(np.isfinite(y))
    assert np.all(y[0] == 0)                       # zeros stay exactly zero
    assert np.abs(y[2]).max() < 1e-15
    for i in (1, 3, 4):
        assert np.sqrt(((y[i] - x[i]) ** 2).mean()) <= 0.4 * np.sqrt((x[i] ** 2).mean()), i


def test_bad_row_length_names_the_type():
    with pytest.raises(ValueError, match="Q4_K needs rows that are a multiple of 256"):
        quantize_blocks(np.zeros((2, 96), np.float32), dq.Q4_K)


def test_llama_quantize_type_choices():
    # big matrices and the embedding take the target; rows that are not whole blocks fall back
    assert tensor_type("blk.0.time_mix_key.weight", (768, 768), dq.Q4_K) == dq.Q4_K
    assert tensor_type("blk.0.time_mix_key.weight", (96, 96), dq.Q4_K) == dq.Q5_0
    assert tensor_type("blk.0.channel_mix_value.weight", (96, 96), dq.Q2_K) == dq.IQ4_NL
    assert tensor_type("blk.0.channel_mix_value.weight", (100, 100), dq.Q5_K) == dq.F16
    assert tensor_type("token_embd.weight", (65536, 768), dq.IQ4_XS) == dq.IQ4_XS
    # output: Q6_K for every 2..5-bit target, Q8_0 where the row is not whole blocks
    assert tensor_type("output.weight", (65536, 768), dq.Q3_K) == dq.Q6_K
    assert tensor_type("output.weight", (65536, 96), dq.Q3_K) == dq.Q8_0
    # the low-rank and lerp tensors stay F32
    assert tensor_type("blk.0.time_mix_w1.weight", (64, 768), dq.Q4_K) == dq.F32
