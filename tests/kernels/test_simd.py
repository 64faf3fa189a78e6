"""The f32x8 vector operations (rwkvcpu/kernels/simd.py) against NumPy, lane by lane."""
import numpy as np
from numba import njit

from rwkvcpu.kernels.simd import (f16at, vadd, vbits, vfma, vhsum, vload, vload_bf16, vload_f16, vmul,
                                  vsplat, vstore, vsub, vzero)


@njit(cache=True)
def _roundtrip(f, i8, u8, h16, b16, nib, out):
    # out rows: f, i8, u8, f16, bf16, nib>>4&15, nib>>2&3, a*b+c, a+b-c, splat, zero
    vstore(out[0], 0, vload(f, 3))
    vstore(out[1], 0, vload(i8, 5))
    vstore(out[2], 0, vload(u8, 1))
    vstore(out[3], 0, vload_f16(h16, 2))
    vstore(out[4], 0, vload_bf16(b16, 0))
    vstore(out[5], 0, vbits(nib, 4, 4, 15))
    vstore(out[6], 0, vbits(nib, 0, 2, 3))
    a, b, c = vload(f, 0), vload(f, 8), vload(f, 16)
    vstore(out[7], 0, vfma(a, b, c))
    vstore(out[8], 0, vsub(vadd(a, b), vmul(c, vsplat(np.float32(1.0)))))
    vstore(out[9], 0, vsplat(np.float32(-2.5)))
    vstore(out[10], 0, vzero())
    return vhsum(a)


def test_every_operation_against_numpy():
    rng = np.random.default_rng(1)
    f = rng.standard_normal(24).astype(np.float32)
    i8 = rng.integers(-128, 128, 16).astype(np.int8)
    u8 = rng.integers(0, 256, 16).astype(np.uint8)
    # halves including subnormals, infinities and -0
    h = np.array([1.5, -0.0, 6e-8, -3e-5, 65504, -np.inf, 0.333, 1e-7, 2.0, 7.0], np.float16)
    b16 = (rng.standard_normal(8).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    out = np.full((11, 8), np.nan, np.float32)
    s = _roundtrip(f, i8, u8, h.view(np.uint16), b16, u8, out)
    np.testing.assert_array_equal(out[0], f[3:11])
    np.testing.assert_array_equal(out[1], i8[5:13].astype(np.float32))
    np.testing.assert_array_equal(out[2], u8[1:9].astype(np.float32))
    np.testing.assert_array_equal(out[3], h[2:10].astype(np.float32))
    np.testing.assert_array_equal(out[4], (b16.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(out[5], ((u8[4:12] >> 4) & 15).astype(np.float32))
    np.testing.assert_array_equal(out[6], ((u8[0:8] >> 2) & 3).astype(np.float32))
    a, b, c = f[0:8], f[8:16], f[16:24]
    np.testing.assert_allclose(out[7], a * b + c, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[8], a + b - c, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[9], np.full(8, -2.5, np.float32))
    np.testing.assert_array_equal(out[10], np.zeros(8, np.float32))
    assert abs(s - a.astype(np.float64).sum()) < 1e-5


def test_loads_refuse_non_contiguous_rows():
    import pytest
    from numba.core.errors import TypingError

    @njit
    def bad(a):
        return vhsum(vload(a, 0))
    with pytest.raises(TypingError):
        bad(np.zeros(32, np.float32)[::2])


@njit(cache=True)
def _f16_scales(b, out):
    for i in range(out.shape[0]):
        out[i] = f16at(b, 2 * i + 1)


def test_f16at_reads_every_half_exactly_at_an_odd_byte_offset():
    """f16at (a block's f16 scale from its bytes, in registers) equals NumPy's float16 -> float32
    for all 65536 bit patterns (subnormals, infinities, NaNs, -0), read at unaligned offsets as
    the scales of 18- and 34-byte blocks are."""
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    b = np.concatenate([np.zeros(1, np.uint8), h.view(np.uint8), np.zeros(1, np.uint8)])
    out = np.empty(65536, np.float32)
    _f16_scales(b, out)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))
