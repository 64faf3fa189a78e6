"""The f32x8 vector operations (rwkvcpu/kernels/simd.py) against NumPy, lane by lane."""
import numpy as np
import pytest
from numba import njit

from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels import simd as S
from rwkvcpu.kernels.simd import (dot_f32, f16at, vadd, vbits, vexp, vfma, vhsum, viq4, vkscales, vload, vload_bf16,
                                  vload_f16, vmul, vq3scales, vq5bits, vq5u32, viq4lanes, viq4nl_lanes, vnlanes, vpair4, vq2lanes, vq3lanes, vq5lanes, vq6half, vxs_scales, vq6lanes, vsigmoid, vsplat, vstore, vsub,
                                  vsum8, vzero)


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


@njit(cache=True)
def _decoders(b, f, kscales, q3s, q6, q6l, nl, k23, q5l, iql, xss, sums, pairs):
    for i in range(kscales.shape[0]):               # one 12-byte K scale group every 16 bytes
        sc, mn = vkscales(b, 16 * i)
        vstore(kscales[i, 0], 0, sc)
        vstore(kscales[i, 1], 0, mn)
        s0, s1 = vq3scales(b, 16 * i)
        vstore(q3s[i], 0, s0)
        vstore(q3s[i], 8, s1)
    for i in range(q6.shape[0]):                    # a Q6_K half: 64 ql bytes at 96i, 32 qh bytes after them
        v = vq6half(b, 96 * i, 96 * i + 64)
        w = vq6lanes(b, 96 * i, 96 * i + 64)
        for j in range(16):
            vstore(q6[i], 8 * j, v[j])
            vstore(q6l[i], 8 * j, w[j])
    for i in range(nl.shape[0]):                    # 32 bytes of nibbles at 32i
        w = vnlanes(b, 32 * i)
        for j in range(8):
            vstore(nl[i], 8 * j, w[j])
    for i in range(k23.shape[0]):                   # 32 qs bytes at 64i, 32 hmask bytes after them
        w2 = vq2lanes(b, 64 * i)
        w3 = vq3lanes(b, 64 * i, 64 * i + 32, 0)
        w4 = vq3lanes(b, 64 * i, 64 * i + 32, 4)
        for j in range(16):
            vstore(k23[i, 0], 8 * j, w2[j])
            vstore(k23[i, 1], 8 * j, w3[j])
            vstore(k23[i, 2], 8 * j, w4[j])
    for i in range(q5l.shape[0]):                   # 32 nibble bytes at 64i, 32 qh bytes after them, chunks 0..3
        w0 = vq5lanes(b, 64 * i, 64 * i + 32, 0)
        w1 = vq5lanes(b, 64 * i, 64 * i + 32, 1)
        w2 = vq5lanes(b, 64 * i, 64 * i + 32, 2)
        w3 = vq5lanes(b, 64 * i, 64 * i + 32, 3)
        for j in range(8):
            vstore(q5l[i, 0], 8 * j, w0[j])
            vstore(q5l[i, 1], 8 * j, w1[j])
            vstore(q5l[i, 2], 8 * j, w2[j])
            vstore(q5l[i, 3], 8 * j, w3[j])
    for i in range(iql.shape[0]):                   # two 16-byte runs: at 40i and 40i + 20
        w = viq4lanes(b, 40 * i, 40 * i + 20)
        for j in range(8):
            vstore(iql[i], 8 * j, w[j])
        vstore(xss[i], 0, vxs_scales(b, 40 * i))
    g = vload(f, 0)
    vstore(pairs, 0, vpair4(g, 0, 1))
    vstore(pairs, 8, vpair4(g, 6, 3))
    vstore(sums, 0, vsum8(vload(f, 0), vload(f, 8), vload(f, 16), vload(f, 24),
                          vload(f, 32), vload(f, 40), vload(f, 48), vload(f, 56)))


def test_block_decoders_against_numpy():
    """vkscales (a Q4_K/Q5_K block's 8 packed 6-bit scales and mins), vq3scales (a Q3_K block's 16
    signed 6-bit scales), vq6half (128 6-bit Q6_K values), vq6lanes (the same values in their
    32-bit lanes, scaled by 2**(8 * byte)), vnlanes (nibbles likewise), vq2lanes/vq3lanes (Q2_K/Q3_K half-blocks likewise), vq5lanes (Q5_K nibbles with their fifth bits), viq4lanes (IQ4 kvalues + 128 likewise), vxs_scales (IQ4_XS's 8 sub-block scales), vpair4 and vsum8 (8 vectors' sums in one) against
    the GGML formulas written out in NumPy, on random bytes (every bit pattern of the fields
    occurs)."""
    rng = np.random.default_rng(7)
    b = rng.integers(0, 256, 96 * 40, dtype=np.uint8)
    f = rng.standard_normal(64).astype(np.float32)
    ks = np.full((200, 2, 8), np.nan, np.float32)
    q3s = np.full((200, 16), np.nan, np.float32)
    q6 = np.full((40, 128), np.nan, np.float32)
    q6l = np.full((40, 128), np.nan, np.float32)
    sums = np.full(8, np.nan, np.float32)
    pairs = np.full(16, np.nan, np.float32)
    nl = np.full((100, 64), np.nan, np.float32)
    k23 = np.full((60, 3, 128), np.nan, np.float32)
    q5l = np.full((60, 4, 64), np.nan, np.float32)
    iql = np.full((90, 64), np.nan, np.float32)
    xss = np.full((90, 8), np.nan, np.float32)
    _decoders(b, f, ks, q3s, q6, q6l, nl, k23, q5l, iql, xss, sums, pairs)
    g = b[:16 * 200].reshape(200, 16).astype(np.int64)
    lo = np.arange(4)
    want_sc = np.concatenate([g[:, lo] & 63, (g[:, lo + 8] & 15) | ((g[:, lo] >> 6) << 4)], axis=1)
    want_mn = np.concatenate([g[:, lo + 4] & 63, (g[:, lo + 8] >> 4) | ((g[:, lo + 4] >> 6) << 4)], axis=1)
    np.testing.assert_array_equal(ks[:, 0], want_sc)
    np.testing.assert_array_equal(ks[:, 1], want_mn)
    i = np.arange(16)
    want_q3 = (((g[:, i % 8] >> (4 * (i // 8))) & 15) | (((g[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4)) - 32
    np.testing.assert_array_equal(q3s, want_q3)
    h = b.reshape(40, 96).astype(np.int64)
    ql, qh = h[:, :64], h[:, 64:]
    want = np.concatenate([(ql[:, :32] & 15) | ((qh & 3) << 4), (ql[:, 32:] & 15) | (((qh >> 2) & 3) << 4),
                           (ql[:, :32] >> 4) | (((qh >> 4) & 3) << 4), (ql[:, 32:] >> 4) | (((qh >> 6) & 3) << 4)], axis=1)
    np.testing.assert_array_equal(q6, want)
    # vq6lanes: vector 4p + k, lane i = 2**(8k) * value 32p + 4i + k
    p_, k_, i_ = np.meshgrid(np.arange(4), np.arange(4), np.arange(8), indexing="ij")
    src = (32 * p_ + 4 * i_ + k_).reshape(-1)
    k_q6 = k_.reshape(-1)
    np.testing.assert_array_equal(q6l, want[:, src] * (2.0 ** (8 * k_q6)))
    np.testing.assert_array_equal(pairs, np.repeat(f[[0, 1, 6, 3]], 4))
    # vnlanes: vector k, lane i = 2**(8k) * low nibble of byte 4i + k; vector 4 + k the high nibble
    n32 = b[:3200].reshape(100, 32).astype(np.int64)
    k_, i_ = np.meshgrid(np.arange(4), np.arange(8), indexing="ij")
    byte = (4 * i_ + k_).reshape(-1)
    pw = 2.0 ** (8 * k_.reshape(-1))
    np.testing.assert_array_equal(nl, np.concatenate([(n32[:, byte] & 15) * pw, (n32[:, byte] >> 4) * pw], axis=1))
    # vq2lanes / vq3lanes: run j = bits 2j of the qs bytes (+ 4 x hmask bit hbit + j), in vq6lanes' layout
    g64 = b[:64 * 60].reshape(60, 64).astype(np.int64)
    qs, hm = g64[:, :32], g64[:, 32:]
    for which, hbit in ((0, None), (1, 0), (2, 4)):
        vals = np.concatenate([((qs >> (2 * j)) & 3) + (0 if hbit is None else 4 * ((hm >> (hbit + j)) & 1))
                               for j in range(4)], axis=1)
        np.testing.assert_array_equal(k23[:, which], vals[:, src] * (2.0 ** (8 * k_q6)), err_msg=str(which))
    # vq5lanes: chunk c, low nibbles + 16 x bit 2c of qh, high nibbles + 16 x bit 2c + 1
    for c in range(4):
        lo = (qs & 15) | (((hm >> (2 * c)) & 1) << 4)
        hi = (qs >> 4) | (((hm >> (2 * c + 1)) & 1) << 4)
        np.testing.assert_array_equal(q5l[:, c], np.concatenate([lo[:, byte] * pw, hi[:, byte] * pw], axis=1), err_msg=str(c))
    # viq4lanes: vector 4h + k, lane 4j + i = IQ4_LANE_SCALE[k] * (kvalue(nibble h of byte 4i + k of run j) + 128)
    from rwkvcpu.kernels.dequant import KVALUES_IQ4
    kv = KVALUES_IQ4.astype(np.int64) + 128
    g40 = b[:40 * 90].reshape(90, 40).astype(np.int64)
    runs = [g40[:, 0:16], g40[:, 20:36]]
    want_iq = np.empty((90, 64))
    for h in range(2):
        for k in range(4):
            for j in range(2):
                for i in range(4):
                    nib = (runs[j][:, 4 * i + k] >> (4 * h)) & 15
                    want_iq[:, 8 * (4 * h + k) + 4 * j + i] = kv[nib] * S.IQ4_LANE_SCALE[k]
    np.testing.assert_array_equal(iql, want_iq)
    # vxs_scales: ls - 32, ls = 4 bits of scales_l | 2 bits of scales_h << 4
    sh = g40[:, 2] | (g40[:, 3] << 8)
    sbi = np.arange(8)
    ls = ((g40[:, 4 + sbi // 2] >> (4 * (sbi % 2))) & 15) | (((sh[:, None] >> (2 * sbi)) & 3) << 4)
    np.testing.assert_array_equal(xss, ls - 32)
    np.testing.assert_allclose(sums, f.reshape(8, 8).astype(np.float64).sum(1), rtol=1e-6, atol=1e-6)


def _bit_decoders(b, u, out):
    for i in range(4):
        vstore(out[0], 8 * i, vq5u32(b, 8 * i, 4 * (i % 2), u, 8 * i, 16 * (i % 2)))
        vstore(out[1], 8 * i, viq4(b, 8 * i, 4 * (i % 2)))   # kvalues of low / high nibbles
        vstore(out[2], 8 * i, vq5bits(b, 8 * i, 4 * (i % 2), 40 + 8 * i, i + 3))
    for j in range(4):                                       # 4 blocks' 16 bytes at 1 + 16j
        v = viq4nl_lanes(b, 1 + 16 * j)
        for k in range(4):
            vstore(out[3], 32 * j + 8 * k, v[k])


@pytest.mark.parametrize("avx2", [pytest.param(True, id="avx2", marks=pytest.mark.skipif(not S.AVX2,
                                                                                        reason="CPU without AVX2")),
                                  pytest.param(False, id="generic")])
def test_bit_and_table_decoders_against_numpy(avx2, monkeypatch):
    """vq5u32 (Q5_0/Q5_1 values: nibbles, fifth bits from a uint32, an offset), viq4 (IQ4 kvalues:
    vpshufb with AVX2, compare-selects on generic IR), vq5bits (Q5_K values) and viq4nl_lanes
    (IQ4_NL kvalues + 128 in their 32-bit lanes, at unaligned offsets) against NumPy on random
    bytes, compiled both ways."""
    monkeypatch.setattr(S, "AVX2", avx2)
    fn = njit(cache=False)(_bit_decoders)
    rng = np.random.default_rng(11)
    b = rng.integers(0, 256, 80, dtype=np.uint8)
    u = np.uint32(rng.integers(0, 2**32))
    out = np.full((4, 128), np.nan, np.float32)
    fn(b, u, out)
    shifts = np.repeat([0, 4, 0, 4], 8)
    nib = (b[:32] >> shifts) & 15
    fifth = ((int(u) >> np.arange(32)) & 1) << 4
    np.testing.assert_array_equal(out[0, :32], (nib | fifth) - np.repeat([0, 16, 0, 16], 8))
    np.testing.assert_array_equal(out[1, :32], dq.KVALUES_IQ4[nib])
    bits = np.repeat([3, 4, 5, 6], 8)
    np.testing.assert_array_equal(out[2, :32], nib | (((b[40:72] >> bits) & 1) << 4))
    # viq4nl_lanes: vector k, lane i = IQ4NL_LANE_SCALE[k] * (kvalue(value 4i + k) + 128), values
    # 0-15 the low nibbles of the block's 16 bytes, 16-31 the high ones
    for j in range(4):
        q = b[1 + 16 * j:17 + 16 * j].astype(np.int64)
        nibs = np.concatenate([q & 15, q >> 4])
        k_, i_ = np.meshgrid(np.arange(4), np.arange(8), indexing="ij")
        src = (4 * i_ + k_).reshape(-1)
        want = (dq.KVALUES_IQ4[nibs].astype(np.int64) + 128)[src] * np.repeat(S.IQ4NL_LANE_SCALE, 8)
        np.testing.assert_array_equal(out[3, 32 * j:32 * j + 32], want, err_msg=f"block {j}")


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


@njit(cache=True)
def _exp_sig(x, e, s):
    for i in range(0, x.shape[0], 8):
        v = vload(x, i)
        vstore(e, i, vexp(v))
        vstore(s, i, vsigmoid(v))


def test_vexp_and_vsigmoid_within_a_few_ulp_of_the_exact_values():
    """vexp replaces libm's expf in the fused time mix; its error bound (simd.py: <= 1.3 ulp) is
    checked here against float64 exp, on the whole range and densely where the model evaluates it
    (decay exp(-0.61 sigmoid(.)) in [-0.61, 0]; sigmoids of O(1) arguments), plus the edges."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-87.3, 88.72, 1 << 18), rng.uniform(-4, 4, 1 << 18),
                        rng.uniform(-0.61, 0, 1 << 16)]).astype(np.float32)
    e, s = np.empty_like(x), np.empty_like(x)
    _exp_sig(x, e, s)
    x64 = x.astype(np.float64)
    ref = np.exp(x64)
    assert (np.abs(e - ref) / np.spacing(ref.astype(np.float32))).max() <= 1.3
    sref = 1.0 / (1.0 + np.exp(-x64))
    # sigmoid: exp's error plus the add and the division's roundings
    assert (np.abs(s - sref) / np.spacing(sref.astype(np.float32))).max() <= 3.5
    edge = np.array([-1000, -90, 88.8, 1000, 0, -0.0, np.inf, -np.inf], np.float32)
    e, s = np.empty_like(edge), np.empty_like(edge)
    _exp_sig(edge, e, s)
    assert e[0] == 0 and e[7] == 0 and e[4] == e[5] == 1.0
    assert np.isinf(e[2]) and np.isinf(e[3]) and np.isinf(e[6])
    # a subnormal result: within one subnormal step of the exact value
    assert abs(float(e[1]) - np.exp(-90.0)) <= 2 * 2.0 ** -149
    np.testing.assert_array_equal(s, [0, 0, 1, 1, 0.5, 0.5, 1, 0])     # exp(90) is inf in float32
    nan = np.full(8, np.nan, np.float32)
    _exp_sig(nan, e, s)
    assert np.isnan(e).all() and np.isnan(s).all()          # NaN propagates, never a number


@njit(cache=True)
def _dots(m, x, out):
    for i in range(m.shape[0]):
        out[i] = dot_f32(m[i], x)


def test_dot_reads_f16_weight_rows_with_the_same_bits_as_their_float32_values():
    """dot_f32 on a row of IEEE halves (uint16, an F16 file's bits) equals dot_f32 on the same
    values as float32, bit for bit, ragged tail (length 37 = 2 x 16 + 5) included."""
    rng = np.random.default_rng(3)
    h = (rng.standard_normal((5, 37)) * 3).astype(np.float16)
    h[0, 36] = np.float16(6e-8)         # subnormal half in the scalar tail
    x = rng.standard_normal(37).astype(np.float32)
    a, b = np.empty(5, np.float32), np.empty(5, np.float32)
    _dots(h.view(np.uint16), x, a)
    _dots(h.astype(np.float32), x, b)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, h.astype(np.float64) @ x.astype(np.float64), rtol=1e-5, atol=1e-5)
