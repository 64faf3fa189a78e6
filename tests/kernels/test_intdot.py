"""Integer-dot decode kernels (rwkvcpu/kernels/intdot.py) and the integer vector operations they
stand on (rwkvcpu/kernels/simd.py), against NumPy.

Both code paths of every operation are checked: the AVX2 instructions (vpsignb, vpmaddubsw,
vpmaddwd; when this CPU has them) and the generic LLVM IR used elsewhere, compiled here by
switching ``simd.AVX2`` off for a fresh, uncached compilation."""
import numpy as np
import pytest
from numba import njit

from rwkvcpu.kernels import actquant as A
from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels import intdot as I
from rwkvcpu.kernels import simd as S
from rwkvcpu.kernels.quantize import quantize_blocks

from ..conftest import require_fixtures

PATHS = [pytest.param(True, id="avx2", marks=pytest.mark.skipif(not S.AVX2, reason="CPU without AVX2")),
         pytest.param(False, id="generic-ir")]


def _ops(w8, x8, u8, nib, q6, out):
    """Every integer operation once; results as int64 rows of out."""
    w = S.i8load(w8, 0)
    x = S.i8load(x8, 0)
    out[0, :8] = S.ilanes(S.idot(w, x))
    p = S.imaddubs(S.i8load(u8, 0), x)
    out[1, :16] = S.ilanes(p)
    out[2, :8] = S.ilanes(S.imadd2(p, 3, -5))
    out[3, :32] = S.ilanes(S.i8sub(S.i8nib16(nib, 0), 8))
    out[4, :32] = S.ilanes(S.i8nib(nib, 0, False))
    out[5, :32] = S.ilanes(S.i8nib(nib, 0, True))
    for p_ in range(4):
        out[6 + p_, :32] = S.ilanes(S.i8q6(q6, 0, 64, p_))
    out[10, :16] = S.ilanes(S.i16sub(S.imaddubs(S.i8splat(32), x), p))
    b = S.i8bc4(nib, 5)                            # 4 bytes at an odd offset, in every dword
    out[11, :32] = S.ilanes(S.i8half(b, False))
    out[12, :32] = S.ilanes(S.i8half(b, True))
    q = S.i16add(S.imaddubs(S.i8half(b, False), x), S.imaddubs(S.i8half(b, True), x))
    out[13, :16] = S.ilanes(q)
    out[14, :8] = S.ilanes(S.imaddp(q, 7, -3))
    out[15, :32] = S.ilanes(S.i8q5(q6, 0, 16))       # nibbles of bytes 0..15, fifth bits from 16..19
    out[16, :32] = S.ilanes(S.i8iq4(nib, 0))
    out[18, :32] = S.ilanes(S.i8or(S.i8crumb(q6, 0, 4), S.i8bit(q6, 32, 5, 2)))   # Q3_K run values
    out[19, :16] = S.ilanes(S.i16nib(nib, 0, True))
    sc = S.i16q3sc(q6, 0)
    out[20, :16] = S.ilanes(sc)
    out[21, :16] = S.ilanes(S.i16sel2(sc, 3, 12))
    out[22, :16] = S.ilanes(S.imaddss(w, x))
    v1 = S.vi8f(w, 1)                                  # bytes 8..15 and 24..31 as signed floats
    v3 = S.vi8f(w, 3)
    for i in range(8):
        out[17, i] = np.int64(S.vlane(v1, i))
        out[17, 8 + i] = np.int64(S.vlane(v3, i))
    f = S.itof(S.iadd(S.idot(w, x), S.idot(x, x)))
    return S.vhsum(f)


@pytest.mark.parametrize("avx2", PATHS)
def test_integer_vector_operations_against_numpy(avx2, monkeypatch):
    monkeypatch.setattr(S, "AVX2", avx2)
    fn = njit(cache=False)(_ops)
    rng = np.random.default_rng(3)
    w8 = rng.integers(-128, 128, 32).astype(np.int8)
    w8[:3] = [-128, 0, 127]                       # the extremes vpsignb must handle
    x8 = rng.integers(-127, 128, 32).astype(np.int8)
    u8 = rng.integers(0, 64, 32).astype(np.uint8)  # Q6_K values
    nib = rng.integers(0, 256, 32).astype(np.uint8)
    q6 = rng.integers(0, 256, 96).astype(np.uint8)
    out = np.zeros((23, 32), np.int64)
    s = fn(w8, x8, u8, nib, q6, out)
    w, x, u = w8.astype(np.int64), x8.astype(np.int64), u8.astype(np.int64)
    np.testing.assert_array_equal(out[0, :8], (w * x).reshape(8, 4).sum(1))
    pairs = (u * x).reshape(16, 2).sum(1)
    np.testing.assert_array_equal(out[1, :16], pairs)
    np.testing.assert_array_equal(out[2, :8], (pairs * np.repeat([3, -5], 8)).reshape(8, 2).sum(1))
    lo, hi = (nib[:16] & 15).astype(np.int64), (nib[:16] >> 4).astype(np.int64)
    np.testing.assert_array_equal(out[3, :32], np.concatenate([lo, hi]) - 8)
    np.testing.assert_array_equal(out[4, :32], nib & 15)
    np.testing.assert_array_equal(out[5, :32], nib >> 4)
    ql, qh = q6[:64].astype(np.int64), q6[64:96].astype(np.int64)
    for p_ in range(4):
        ref = ((ql[32 * (p_ % 2):][:32] >> (4 * (p_ // 2))) & 15) | (((qh >> (2 * p_)) & 3) << 4)
        np.testing.assert_array_equal(out[6 + p_, :32], ref)
    np.testing.assert_array_equal(out[10, :16], (32 * x).reshape(16, 2).sum(1) - pairs)
    b4 = np.tile(nib[5:9].astype(np.int64), 8)
    np.testing.assert_array_equal(out[11, :32], b4 & 15)
    np.testing.assert_array_equal(out[12, :32], b4 >> 4)
    q = ((b4 & 15) * x + (b4 >> 4) * x).reshape(16, 2).sum(1)
    np.testing.assert_array_equal(out[13, :16], q)
    np.testing.assert_array_equal(out[14, :8], q[0::2] * 7 + q[1::2] * -3)
    bits = (int.from_bytes(q6[16:20].tobytes(), "little") >> np.arange(32)) & 1
    nib5 = np.concatenate([q6[:16] & 15, q6[:16] >> 4]).astype(np.int64)
    np.testing.assert_array_equal(out[15, :32], nib5 | (bits << 4))
    np.testing.assert_array_equal(out[16, :32], dq.KVALUES_IQ4[np.concatenate([lo, hi])])
    np.testing.assert_array_equal(out[17, :16], np.concatenate([w[8:16], w[24:32]]))
    q6i = q6.astype(np.int64)
    np.testing.assert_array_equal(out[18, :32], ((q6i[:32] >> 4) & 3) | (((q6i[32:64] >> 5) & 1) << 2))
    np.testing.assert_array_equal(out[19, :16], nib[:16] >> 4)
    sc = np.array([dq._k_scale6(q6, 0, i) for i in range(16)])
    np.testing.assert_array_equal(out[20, :16], sc)
    np.testing.assert_array_equal(out[21, :16], [sc[3]] * 8 + [sc[12]] * 8)
    np.testing.assert_array_equal(out[22, :16], (w * x).reshape(16, 2).sum(1))
    assert s == np.float32((w * x).sum() + (x * x).sum())


def test_activation_quantizers_match_llama_rounding_bit_for_bit():
    """xd * xq (per block) is exactly ``round_like_llama``; bsums are the sums of q."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 512)) * rng.uniform(0.01, 10, (3, 1))).astype(np.float32)
    x[1, 32:64] = 0                                  # an all-zero block
    x[2, :256] = np.round(x[2, :256] * 4) / 4         # many exact ties at .5 after scaling
    xq = np.empty(x.shape, np.int8)
    xd = np.empty((3, 16), np.float32)
    I.quantize_q8_0(x, xq, xd)
    got = np.repeat(xd, 32, axis=1) * xq.astype(np.float32)
    ref = A.round_like_llama_ref(x, dq.Q8_0)
    assert np.array_equal(got, ref)
    xq1 = np.empty(x.shape, np.int8)
    xd1 = np.empty((3, 16), np.float32)
    xs1 = np.empty((3, 16), np.float32)
    I.quantize_q8_1(x, xq1, xd1, xs1)                 # Q8_1: Q8_0's values plus the f16 sums
    assert np.array_equal(xq1, xq) and np.array_equal(xd1, xd)
    assert np.array_equal(xs1, A.q8_1_sums_ref(x))
    assert not np.array_equal(xs1, xd * xq.reshape(3, 16, 32).sum(-1))   # the f16 sum is its own rounding
    xd = np.empty((3, 2), np.float32)
    bs = np.empty((3, 16), np.int32)
    I.quantize_q8_k(x, xq, xd, bs)
    got = np.repeat(xd, 256, axis=1) * xq.astype(np.float32)
    assert np.array_equal(got, A.round_like_llama_ref(x, dq.Q4_K))
    np.testing.assert_array_equal(bs, xq.reshape(3, 16, 32).astype(np.int64).sum(-1))
    assert np.abs(xq).max() <= 127


def _random_weight(qtype, rows, cols, rng):
    """Random blocks of the type, read-only like a loaded file's rows (so the kernels compile for
    the one signature real models use, not a second time for writable arrays)."""
    raw = _random_blocks(qtype, rows, cols, rng)
    raw.setflags(write=False)
    return raw


def _random_blocks(qtype, rows, cols, rng):
    if qtype in (dq.Q2_K, dq.Q3_K, dq.Q4_K, dq.Q5_K, dq.Q6_K, dq.IQ4_XS):
        a = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.1, 3, (rows, 1)).astype(np.float32)
        return quantize_blocks(a, qtype)
    nbytes = {dq.Q8_0: 34, dq.Q4_0: 18, dq.Q4_1: 20, dq.Q5_0: 22, dq.Q5_1: 24, dq.IQ4_NL: 18}[qtype]
    raw = rng.integers(0, 256, (rows, cols // 32 * nbytes), dtype=np.uint8)     # random codes and bits
    d = rng.uniform(0.001, 0.1, (rows, cols // 32)).astype(np.float16) * rng.choice([-1, 1], (rows, cols // 32))
    blk = raw.reshape(rows, cols // 32, nbytes)
    blk[:, :, :2] = d.astype(np.float16).view(np.uint8).reshape(rows, cols // 32, 2)
    if qtype in (dq.Q4_1, dq.Q5_1):                                              # the block min m
        m = rng.uniform(-0.5, 0.5, (rows, cols // 32)).astype(np.float16)
        blk[:, :, 2:4] = m.view(np.uint8).reshape(rows, cols // 32, 2)
    return raw


class _W:
    def __init__(self, qtype, raw):
        self.qtype, self.row_bytes = qtype, raw
        self.shape = (raw.shape[0], None)


def _check(qtype, raw, x, out):
    rows = raw.shape[0]
    Wd = np.empty((rows, x.shape[1]), np.float32)
    dq.dequant_rows(qtype, raw, Wd, dq.KVALUES_IQ4, dq.F16_LUT)
    xr = A.round_like_llama_ref(x, qtype).astype(np.float64)
    ref = xr @ Wd.T.astype(np.float64)
    if qtype in (dq.Q4_1, dq.Q5_1):
        # ggml adds min x the Q8_1 block's f16 sum s in place of min x (the rounded block's sum)
        nb = x.shape[1] // 32
        m = raw.reshape(rows, nb, -1)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        ref += (A.q8_1_sums_ref(x).astype(np.float64) - xr.reshape(x.shape[0], nb, 32).sum(-1)) @ m.T
    # integer block sums are exact; what remains is float32 accumulation over the row's blocks
    # (one product of two scales, one FMA per block): far below 1e-5 of sum |x||w|
    bound = 1e-5 * (np.abs(xr) @ np.abs(Wd.T.astype(np.float64)))
    assert np.all(np.abs(out - ref) <= bound), float(np.max(np.abs(out - ref) / bound))


@pytest.mark.parametrize("qtype", I.TYPES, ids=lambda q: dq.TYPE_NAMES[q])
@pytest.mark.parametrize("T", [1, 3, 7])          # 7: the 4- and 2-row batch blocks plus remainders
def test_kernels_against_numpy_reference_on_random_weights(qtype, T):
    rng = np.random.default_rng(qtype)
    raw = _random_weight(qtype, 37, 512, rng)          # 37 rows: a ragged last task
    x = rng.standard_normal((T, 512)).astype(np.float32)
    x[0, :40] *= 50                                      # one block with a large outlier scale
    out = np.full((T, 37), np.nan, np.float32)
    assert I.matvec_q8(_W(qtype, raw), x, out)
    _check(qtype, raw, x, out)


@pytest.mark.parametrize("qtype", I.TYPES, ids=lambda q: dq.TYPE_NAMES[q])
@pytest.mark.parametrize("T", [7, 9])
def test_batched_rows_equal_rows_computed_alone(qtype, T):
    """A batch decodes each weight block once for several activation rows (Q8_0: 4 then 1; Q6_K:
    8, 4, 2 then 1, so 7 = 4 + 2 + 1 and 9 = 8 + 1; Q4_0/Q4_K from LANES_MIN rows on, 8 rows in
    vector lanes); every row's own arithmetic is unchanged, so each output row is bit-identical
    to that row multiplied alone -- one sequence's numbers never depend on its batch neighbours."""
    rng = np.random.default_rng(11)
    raw = _random_weight(qtype, 21, 512, rng)
    x = rng.standard_normal((T, 512)).astype(np.float32)
    x[4] *= 30                                           # a neighbour with a very different scale
    out = np.empty((T, 21), np.float32)
    assert I.matvec_q8(_W(qtype, raw), x, out)
    for t in range(T):
        one = np.empty((1, 21), np.float32)
        I.matvec_q8(_W(qtype, raw), x[t:t + 1].copy(), one)
        assert np.array_equal(one[0], out[t]), t


def _fresh_helpers(monkeypatch):
    """Replace intdot's row and block bodies (``forceinline``: separate functions LLVM inlines, each
    compiled once, on AVX2 here) by uncompiled copies, so that a kernel compiled now compiles them
    again, on the generic IR too; the ``inline="always"`` ones are recompiled as part of it."""
    from numba.core.registry import CPUDispatcher
    n = 0
    for name, d in list(vars(I).items()):
        if isinstance(d, CPUDispatcher) and d.targetoptions.get("forceinline"):
            opts = {k: v for k, v in d.targetoptions.items() if k not in ("nopython", "boundscheck")}
            monkeypatch.setattr(I, name, njit(cache=False, **opts)(d.py_func))
            n += 1
    assert n, "no forceinline helpers found in intdot"


# (compiled uncached on the generic IR: 6-60 s each.  Every operation's generic IR is checked
# above, the 8-row kernels' cross-row operations in test_eight_row_operations_against_numpy; these
# cover the kernel bodies: lanes, Q6_K, the 32-value vec_dot one through Q5_1, the 16-value K one
# through Q3_K, IQ4_XS, and the 8-row ones (Q4_0, IQ4_NL; Q4_K through Q5_K, the same body with fifth
# bits), pairs of rows and a single one.)
@pytest.mark.parametrize("qtype,name,T", [pytest.param(q, n, T, id=f"{n}-T{T}") for q, n, T in
                                          [(dq.Q6_K, "mvi_q6_k", 2),
                                           (dq.Q4_0, "mvl_q4_0", 9), (dq.Q4_K, "mvl_q4_k", 9),
                                           (dq.Q5_1, "mvi_q5_1", 5), (dq.Q3_K, "mvi_q3_k", 5),
                                           (dq.IQ4_XS, "mvi_iq4_xs", 1),
                                           (dq.Q5_K, "mvi_q5_k", 3), (dq.IQ4_NL, "mvi_iq4_nl", 3),
                                           (dq.Q4_0, "mvi_q4_0", 3)]])
def test_generic_ir_kernels_equal_the_avx2_ones(qtype, name, T, monkeypatch):
    """The kernels compiled on the generic IR give the same numbers (integer sums are exact and
    the float accumulation is written the same way); the batch kernels in lanes (mvl_*) too."""
    rng = np.random.default_rng(7)
    raw = _random_weight(qtype, 16, 512, rng)
    x = rng.standard_normal((T, 512)).astype(np.float32)
    a = np.empty((T, 16), np.float32)
    I.matvec_q8(_W(qtype, raw), x, a)
    monkeypatch.setattr(S, "AVX2", False)
    _fresh_helpers(monkeypatch)
    generic = njit(cache=False, parallel=True, fastmath=I.FLAGS)(getattr(I, name).py_func)
    monkeypatch.setattr(I, name, generic)
    b = np.empty((T, 16), np.float32)
    I.matvec_q8(_W(qtype, raw), x, b)
    _check(qtype, raw, x, b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("typ,qtype", [("q8_0", dq.Q8_0), ("q4_0", dq.Q4_0), ("q4_k_m", dq.Q4_K), ("q6_k", dq.Q6_K),
                                       ("q4_1", dq.Q4_1), ("q5_0", dq.Q5_0), ("q5_1", dq.Q5_1), ("iq4_nl", dq.IQ4_NL),
                                       ("q5_k_m", dq.Q5_K), ("q2_k", dq.Q2_K), ("q3_k_m", dq.Q3_K),
                                       ("iq4_xs", dq.IQ4_XS)])
def test_kernels_on_fixture_tensors(typ, qtype):
    from loaders import load
    ck = load(str(require_fixtures() / f"tiny-rwkv7-{typ}.gguf"))
    Ws = [t for t in ck.weights.all_matrices() if t.qtype == qtype] if hasattr(ck.weights, "all_matrices") else \
        [getattr(L, n) for L in ck.weights.layers for n in ("receptance", "key", "value", "output", "ffn_key", "ffn_value")
         if getattr(L, n).qtype == qtype] + ([ck.weights.head] if ck.weights.head.qtype == qtype else [])
    assert Ws, f"no {dq.TYPE_NAMES[qtype]} tensor in {typ}"
    rng = np.random.default_rng(0)
    for W in Ws[:6]:
        x = rng.standard_normal((1, W.shape[1])).astype(np.float32)
        out = np.empty((1, W.shape[0]), np.float32)
        assert I.matvec_q8(W, x, out)
        _check(qtype, W.row_bytes, x, out)


def test_other_types_are_declined():
    """Float weights (F16 here) have no integer kernel: the caller rounds and takes the float path."""
    assert not I.matvec_q8(_W(dq.F16, np.zeros((1, 64), np.uint8)), np.zeros((1, 32), np.float32),
                           np.zeros((1, 1), np.float32))


def test_round_rows_equals_round_like_llama():
    """The in-kernel rounding of the fused decode path (llama numerics) against the NumPy one
    (``round_like_llama_ref``: NumPy's own float16 cast for F16).  F16 rows include halves'
    edge cases: ties to even, the overflow threshold 65520, subnormals, NaN and infinities."""
    x = np.random.default_rng(5).standard_normal((2, 768)).astype(np.float32) * 3
    edge = np.array([65504.0, 65519.99, 65520.0, -65520.0, 1e-8, 3e-8, 6e-8, -2.9802322e-08,
                     1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, np.inf, -np.inf, np.nan, -0.0, 2.0 ** -24,
                     1e5], np.float32)
    x[1, :16] = edge
    for q in (dq.Q8_0, dq.Q4_1, dq.Q4_K, dq.Q6_K, dq.F16, dq.BF16, dq.F32):
        xx = x if q in (dq.F16, dq.BF16) else np.nan_to_num(x, nan=0.0, posinf=7.0, neginf=-7.0)
        y = xx.copy()
        A.round_rows(y, A.rounding_mode(q))
        ref = A.round_like_llama_ref(xx, q)
        assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)) or (
            np.array_equal(np.isnan(y), np.isnan(ref)) and np.array_equal(y[~np.isnan(y)], ref[~np.isnan(ref)])), \
            dq.TYPE_NAMES[q]
        assert np.array_equal(A.round_like_llama(xx, q), y, equal_nan=True), dq.TYPE_NAMES[q]


def test_software_f16_rounding_equals_numpy():
    """Without F16C the kernels round to half in software (``quantize._f16``): NumPy's float16
    cast (which the F16C path equals, test above) on every half and the float32s around each
    midpoint between halves."""
    from rwkvcpu.kernels import quantize as Q
    v = np.arange(0, 2 ** 16, dtype=np.uint32) << 13            # every half's float32 ...
    v = np.concatenate([v, v + 4096, v + 4095, v + 4097]).view(np.float32)   # ... and the midpoints
    v = v[np.isfinite(v)]
    soft = njit(cache=False)(lambda a: np.array([Q._f16(a[i]) for i in range(a.shape[0])], np.float32))(v)
    assert np.array_equal(soft, v.astype(np.float16).astype(np.float32))


def _rows8(rows8, h, xs, lanes, out, s8, w16, iout):
    """isum8, isplat, f16x8, vlane, i16s8, i16load, imadd, imulc, iset8 once each (into out, iout)."""
    iout[0, :8] = S.ilanes(S.imulc(S.imadd(S.i16s8(s8, 0), S.i16load(w16, 0)), -32))
    iout[1, :16] = S.ilanes(S.i16s8(s8, 0))
    iout[2, :8] = S.ilanes(S.iset8(xs, 1, -2, 3, 2 ** 31 - 1, -2 ** 31, 0, 7))
    s = S.isum8(S.i32load(lanes, 0), S.i32load(lanes, 8), S.i32load(lanes, 16), S.i32load(lanes, 24),
                S.i32load(lanes, 32), S.i32load(lanes, 40), S.i32load(lanes, 48), S.i32load(lanes, 56))
    s = S.iadd(s, S.isplat(xs))
    f = S.itof(s)
    d = S.f16x8(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 3)
    S.prefetch(rows8, 10 ** 9)                   # far past the end: a hint never faults
    for i in range(8):
        out[0, i] = S.vlane(f, i)
        out[1, i] = S.vlane(d, i)


@pytest.mark.parametrize("avx2", PATHS)
def test_eight_row_operations_against_numpy(avx2, monkeypatch):
    """The operations of the 8-row Q4_0 kernel: isum8 (8 vectors' lane sums, transposed into one
    vector) on extreme int32 lanes, f16x8 (8 rows' block scales) on every kind of half."""
    monkeypatch.setattr(S, "AVX2", avx2)
    fn = njit(cache=False)(_rows8)
    rng = np.random.default_rng(12)
    lanes = rng.integers(-2**20, 2**20, 64).astype(np.int32)
    lanes[:8] = 2**20                                    # sums up to 2**23: exact in float32
    halves = np.array([0.5, -2.0, 65504.0, 6e-8, -0.0, 1e-4, 3.140625, -7.5], np.float16)
    h = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    h[:, 3:5] = halves.view(np.uint8).reshape(8, 2)
    out = np.zeros((2, 8), np.float32)
    s8 = rng.integers(-128, 128, 16).astype(np.int8)
    s8[:2] = [-128, 127]
    w16 = rng.integers(-2032, 2033, 16).astype(np.int16)    # Q6_K's group sums of 8-bit x
    iout = np.zeros((3, 16), np.int64)
    fn(h, h, -123, lanes, out, s8, w16, iout)
    np.testing.assert_array_equal(iout[0, :8], -32 * (s8.astype(np.int64) * w16).reshape(8, 2).sum(1))
    np.testing.assert_array_equal(iout[1], s8)
    np.testing.assert_array_equal(iout[2, :8], [-123, 1, -2, 3, 2 ** 31 - 1, -2 ** 31, 0, 7])
    np.testing.assert_array_equal(out[0], (lanes.reshape(8, 8).astype(np.int64).sum(1) - 123).astype(np.float32))
    np.testing.assert_array_equal(out[1], halves.astype(np.float32))


def test_q4_0_block_sums_of_the_quantizer():
    """quantize_q8_0_bs's xs is -8 x each block's sum of the 8-bit activations (the offset of
    Q4_0's unsigned nibbles); its xq and xd are quantize_q8_0's."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 128)).astype(np.float32) * 5
    x[1, :32] = 100.0                                    # a block of +127s
    xq, xd, xs = np.empty((3, 128), np.int8), np.empty((3, 4), np.float32), np.empty((3, 4), np.int32)
    I.quantize_q8_0_bs(x, xq, xd, xs)
    xq2, xd2 = np.empty_like(xq), np.empty_like(xd)
    I.quantize_q8_0(x, xq2, xd2)
    assert np.array_equal(xq, xq2) and np.array_equal(xd, xd2)
    np.testing.assert_array_equal(xs, -8 * xq.reshape(3, 4, 32).astype(np.int64).sum(-1))
    assert xs[1, 0] == -8 * 127 * 32


@njit(cache=True)
def _quant_ops(x, s, q, sums, amax, lanes):
    """The quantizers' vector operations (simd.vamax32, i8rint, i8sums, i8store) on each 32-value block."""
    for b in range(x.shape[0] // 32):
        o = b * 32
        amax[b] = S.vamax32(x, o)
        v = S.i8rint(x, o, s, False)
        S.i8store(q[0], o, v, 4)
        S.i8store(lanes, 256 * b + 4 * (b % 8), v, 32)
        S.i8store(q[1], o, S.i8rint(x, o, s, True), 4)
        sums[b, 0], sums[b, 1] = S.i8sums(v)


def test_quantizer_vector_operations_against_numpy():
    """vamax32 = max |x| of 32; i8rint = int8(rint(x s)) (with the clamp, min(127, .)); i8sums = the
    two 16-value sums; i8store with stride 4 (a run) and 32 (one 4-byte unit per 32 bytes, the lanes
    of ``_to_lanes``) -- on values with exact .5 ties after scaling, and one that rounds to 128 (the
    clamp's case)."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(256) * 3).astype(np.float32)   # |x s| < 127 but for x[70]
    s = np.float32(4.0)
    x[:64] = np.round(x[:64] * 8) / 8                       # x s on halves: rint rounds ties to even
    x[70] = np.float32(127.75) / s                          # 128 unclamped (out of int8), 127 clamped
    q = np.zeros((2, 256), np.int8)
    sums = np.zeros((8, 2), np.int64)
    amax = np.zeros(8, np.float32)
    lanes = np.zeros(256 * 8, np.int8)
    _quant_ops(x, s, q, sums, amax, lanes)
    r = np.rint(x * s)
    assert (np.abs(x[:64] * s) % 1 == 0.5).sum() > 10       # the ties are there
    np.testing.assert_array_equal(amax, np.abs(x).reshape(8, 32).max(1))
    ok = np.abs(r) <= 127
    np.testing.assert_array_equal(q[0][ok], r[ok].astype(np.int8))
    np.testing.assert_array_equal(q[1], np.minimum(r, 127).astype(np.int8))
    assert q[1][70] == 127
    np.testing.assert_array_equal(sums, q[0].astype(np.int64).reshape(8, 2, 16).sum(-1))
    for b in range(8):                                      # unit g of block b at 256 b + 4 (b % 8) + 32 g
        for g in range(8):
            at = 256 * b + 4 * (b % 8) + 32 * g
            np.testing.assert_array_equal(lanes[at:at + 4], q[0][32 * b + 4 * g:32 * b + 4 * g + 4])


def test_q8_k_takes_the_sign_of_the_first_largest_value():
    """Q8_K's scale is -127 / m with m the signed value of the first element of largest |x|: a block
    holding -3 before +3 and one holding +3 before -3 (the vectorised scan against NumPy's argmax)."""
    x = np.zeros((2, 256), np.float32)
    x[:, 1:] = np.linspace(-2, 2, 255, dtype=np.float32)
    x[0, 5], x[0, 9] = -3.0, 3.0
    x[1, 5], x[1, 9] = 3.0, -3.0
    xq = np.empty(x.shape, np.int8)
    xd = np.empty((2, 1), np.float32)
    bs = np.empty((2, 8), np.int32)
    I.quantize_q8_k(x, xq, xd, bs)
    assert xd[0, 0] > 0 > xd[1, 0] or xd[0, 0] < 0 < xd[1, 0]   # opposite signs: the first one counts
    np.testing.assert_array_equal(np.repeat(xd, 256, axis=1) * xq.astype(np.float32), A.round_like_llama_ref(x, dq.Q4_K))
