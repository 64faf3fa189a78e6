"""Each Numba CPU kernel against its NumPy reference (kernels/reference.py)."""
import numpy as np
import pytest

from rwkvcpu.kernels import cpu as K
from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels import reference as R
from loaders.checkpoint import QTensor

rng = np.random.default_rng(0)
# float32 kernels vs float32/64 NumPy: differences are summation-order rounding,
# a few ulps of the O(1) values here -> 1e-5 absolute.
TOL = 1e-5


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_layer_norm():
    x, w, b = rand(7, 96, scale=3), rand(96), rand(96)
    out = np.empty_like(x)
    K.layer_norm(x, w, b, np.float32(1e-5), out)
    np.testing.assert_allclose(out, R.layer_norm(x.astype(np.float64), w, b, 1e-5), atol=TOL)


def test_group_norm():
    x, w, b = rand(5, 128), rand(128), rand(128)
    out = np.empty_like(x)
    K.group_norm(x, w, b, 2, np.float32(64e-5), out)
    np.testing.assert_allclose(out, R.group_norm(x.astype(np.float64), w, b, 2), atol=TOL)


def test_l2_normalize_heads_including_zero_vector():
    x = rand(3, 128)
    x[1, :64] = 0.0                      # a zero head must not become NaN (eps guard)
    out = np.empty_like(x)
    K.l2_normalize_heads(x, 2, np.float32(1e-12), out)
    np.testing.assert_allclose(out, R.l2_normalize_heads(x.astype(np.float64), 2), atol=TOL)
    assert np.all(out[1, :64] == 0)


def test_token_shift_and_lerps_per_segment():
    x = rand(6, 8)
    cache = rand(3, 16)
    before = cache.copy()
    prev = np.empty_like(x)
    # two sequences: rows 0-3 use slot 2, rows 4-5 use slot 0; slot 1 untouched
    K.token_shift(x, np.array([0, 4]), np.array([4, 2]), np.array([2, 0]), cache, 8, prev)
    np.testing.assert_array_equal(prev[0:4], R.token_shift(x[0:4], before[2, 8:]))
    np.testing.assert_array_equal(prev[4:6], R.token_shift(x[4:6], before[0, 8:]))
    np.testing.assert_array_equal(cache[2, 8:], x[3])
    np.testing.assert_array_equal(cache[0, 8:], x[5])
    np.testing.assert_array_equal(cache[1], before[1])
    np.testing.assert_array_equal(cache[:, :8], before[:, :8])
    mixes = rng.random((6, 8)).astype(np.float32)
    out = np.empty((6, 6, 8), np.float32)
    K.lerps(x, prev, mixes, out)
    for m in range(6):
        np.testing.assert_allclose(out[m], R.lerp(x, prev, mixes[m]), atol=1e-6)


def test_wkv7_matches_reference_for_each_sequence_of_a_batch():
    H, N = 2, 16
    lens = [5, 1, 3]
    T = sum(lens)
    r, k, v = rand(T, H, N), rand(T, H, N), rand(T, H, N)
    w = np.exp(-0.6 * rng.random((T, H, N))).astype(np.float32)
    kk = rand(T, H, N)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    a_ = rng.random((T, H, N)).astype(np.float32)
    S = rand(4, H, N, N, scale=0.1)
    S0 = S.copy()
    y = np.empty_like(r)
    starts = np.cumsum([0] + lens[:-1])
    slots = np.array([3, 0, 1])
    K.wkv7(r, w, k, v, -kk, kk * a_, starts, np.array(lens), slots, S, y)
    for s0, n, slot in zip(starts, lens, slots):
        Sref = S0[slot].astype(np.float64)
        sl = slice(s0, s0 + n)
        yref = R.wkv7(r[sl], w[sl], k[sl], v[sl], -kk[sl], (kk * a_)[sl], Sref)
        np.testing.assert_allclose(y[sl], yref, atol=TOL)
        np.testing.assert_allclose(S[slot], Sref, atol=TOL)
    np.testing.assert_array_equal(S[2], S0[2])       # the slot no sequence named is untouched


@pytest.mark.parametrize("T", [1, 3, 9, 40])
@pytest.mark.parametrize("qtype", [dq.F32, dq.F16, dq.BF16, dq.Q8_0, dq.Q4_0])
def test_matmul_all_paths(qtype, T):
    """Fused small-T kernel and tiled BLAS path both equal x @ dequant(W).T."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    rows, cols = 70, 64
    Wf = rand(rows, cols)
    if qtype == dq.F32:
        raw = Wf
    elif qtype == dq.F16:
        raw = Wf.astype(np.float16)
    elif qtype == dq.BF16:
        raw = quantize(Wf, GGMLQuantizationType.BF16).view(np.uint16)
    else:
        raw = quantize(Wf, GGMLQuantizationType(qtype))
    raw = np.ascontiguousarray(raw)
    raw.setflags(write=False)       # read-only like a loaded file's: the kernels' one compiled signature
    W = QTensor("w", qtype, (rows, cols), raw)
    x = rand(T, cols)
    ref = x.astype(np.float64) @ W.dequantize().astype(np.float64).T
    np.testing.assert_allclose(K.matmul(x, W), ref, atol=1e-4)


@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("half", [False, True])
def test_f32_and_f16_matvec_ragged_rows(T, half):
    """F32/F16 decode kernels (two 8-lane accumulators) with a scalar tail, and the batched kernel's
    ragged F16 rows (through its float32 buffer; whole 8-lane rows are converted in registers):
    75 columns."""
    w = rand(13, 75)
    data = w.astype(np.float16) if half else w
    data.setflags(write=False)      # read-only like a loaded file's: the kernels' one compiled signature
    W = QTensor("w", dq.F16 if half else dq.F32, (13, 75), data)
    x = rand(T, 75)
    ref = x.astype(np.float64) @ W.dequantize().T.astype(np.float64)
    np.testing.assert_allclose(K.matmul(x, W), ref, atol=1e-5)


@pytest.mark.parametrize("typ", ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m",
                                 "q4_k_m", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs"])
def test_decode_matvec_every_file_type(typ):
    """The decode kernels on real fixture tensors of every type: the fused one-or-two-row kernels
    (T = 1, 2) and the batched path's vectorised row decoders (T = 4)."""
    from tests.conftest import require_fixtures
    from rwkvcpu.loaders import load
    ck = load(require_fixtures() / f"tiny-rwkv7-{typ}.gguf")
    for W in (ck.weights.layers[1].key, ck.weights.layers[0].ffn_value, ck.weights.head):
        ref_w = W.dequantize().astype(np.float64)
        for T in (1, 2, 4):
            x = rand(T, W.shape[1])
            ref = x.astype(np.float64) @ ref_w.T
            # float32 dot products of length <= 1024 with per-block scales factored out
            np.testing.assert_allclose(K.matmul(x, W), ref, atol=2e-5 * np.abs(ref).max() + 1e-6,
                                       err_msg=f"{typ} {W.name} T={T}")


# (block bytes, where the block's f16 scales are) for random blocks of the in-lane types
_LANE_TYPES = {dq.Q6_K: (210, [(208, 1)]), dq.Q4_K: (144, [(0, 2)]), dq.Q5_K: (176, [(0, 2)]),
               dq.Q3_K: (110, [(108, 1)]), dq.Q2_K: (84, [(80, 2)]), dq.IQ4_XS: (136, [(0, 1)])}


def _check_fused_equals_buffered(kernel, qtype, raw, x, got):
    """Where the batch kernel decodes in registers (T <= FUSED_T), its rows equal, bit for bit,
    those it gives with x padded past FUSED_T (decoded once into a buffer): the same products in
    the same order, and no row of x changes another's numbers."""
    from rwkvcpu.kernels import matvec as MV
    T = x.shape[0]
    if qtype not in MV.FUSED_T or T > MV.FUSED_T[qtype]:
        return
    pad = np.concatenate([x, rand(MV.FUSED_T[qtype] + 1 - T, x.shape[1])])
    buffered = np.empty((pad.shape[0], got.shape[1]), np.float32)
    kernel(raw, raw.view(np.int8), pad, buffered, dq.F16_LUT)
    np.testing.assert_array_equal(got, buffered[:T], err_msg=f"T={T}")


def _random_blocks(qtype, rows, cols, rng):
    """Random bytes as rows of qtype blocks (every bit pattern of the packed fields occurs), with
    finite f16 scales."""
    bs, scales = _LANE_TYPES[qtype] if qtype in _LANE_TYPES else (18, [(0, 1)])     # Q4_0, IQ4_NL
    raw = rng.integers(0, 256, size=(rows, cols // (256 if qtype in _LANE_TYPES else 32) * bs), dtype=np.uint8)
    blocks = raw.reshape(rows, -1, bs)
    for off, n in scales:
        h = (rng.random((rows, blocks.shape[1], n)) * 0.02).astype(np.float16)
        blocks[:, :, off:off + 2 * n] = h.view(np.uint8).reshape(rows, -1, 2 * n)
    raw.setflags(write=False)
    return raw


@pytest.mark.parametrize("qtype", list(_LANE_TYPES), ids=lambda q: dq.TYPE_NAMES[q])
def test_in_lane_kernels_single_and_batched_against_float64(qtype):
    """The exact kernels that convert values where they lie in 32-bit lanes (x read in a matching
    order): the one-or-two-row kernels (T = 1, 2) and the batched ones (``mvb_*``: two rows
    dequantized in lane order, T = 3 to 11 through ``tiles2``'s 4-row tiles and remainders; Q6_K
    decoded in registers up to ``FUSED_T``, bit-equal to its buffered path), on random blocks, 13
    rows (an odd last row) x 512 columns.  Float32 products of
    length 512 with the offsets (Q6_K's -32, Q3_K's -4, IQ4_XS's +128) applied through group
    sums or to the weights: 2e-5 of the largest output (measured 1-5e-7)."""
    from rwkvcpu.kernels import matvec as MV
    rng = np.random.default_rng(int(qtype))
    raw = _random_blocks(qtype, 13, 512, rng)
    W = QTensor("w", qtype, (13, 512), raw)
    ref_w = W.dequantize().astype(np.float64)
    for T in (1, 2, 3, 4, 5, 8, 11):
        x = rand(T, 512)
        ref = x.astype(np.float64) @ ref_w.T
        got = K.matmul(x, W)
        np.testing.assert_allclose(got, ref, atol=2e-5 * np.abs(ref).max(), err_msg=f"T={T}")
        if T >= MV.BATCH_T:
            assert qtype in MV._LANES_BATCH          # the batched in-lane kernel is the one tested
            _check_fused_equals_buffered(MV._LANES_BATCH[qtype], qtype, raw, x, got)


@pytest.mark.parametrize("cols", [512, 96, 32])
@pytest.mark.parametrize("qtype", [dq.Q4_0, dq.IQ4_NL], ids=lambda q: dq.TYPE_NAMES[q])
def test_18_byte_block_kernels_against_float64(qtype, cols):
    """Q4_0's and IQ4_NL's one-or-two-row kernels (scales through ``f16lut``; IQ4_NL's values
    converted in their lanes, ``viq4nl_lanes``, two blocks an iteration, and rows of an odd number
    of blocks sent to the batch kernel) on random blocks (every nibble, both halves of every
    byte), 13 rows: float32 products of length <= 512 with the offset (-8 / +128) applied through
    block sums, 2e-5 of the largest output (measured <= 4e-7)."""
    rng = np.random.default_rng(5)
    raw = _random_blocks(qtype, 13, cols, rng)
    W = QTensor("w", qtype, (13, cols), raw)
    ref_w = W.dequantize().astype(np.float64)
    for T in (1, 2):
        x = rand(T, cols)
        ref = x.astype(np.float64) @ ref_w.T
        np.testing.assert_allclose(K.matmul(x, W), ref, atol=2e-5 * np.abs(ref).max(), err_msg=f"T={T}")


@pytest.mark.parametrize("qtype", [dq.Q8_0, dq.Q4_0, dq.Q4_1, dq.Q5_0, dq.Q5_1, dq.IQ4_NL, dq.F16, dq.F32],
                         ids=lambda q: dq.TYPE_NAMES[q])
def test_per_type_batch_kernels_equal_the_all_types_one(qtype):
    """The per-type batch kernels (``mvb_*``: each compiles only its own decoder) against
    ``mv_buffered`` (every decoder behind a run-time type, rows decoded into a buffer, then
    ``tiles2``): for the 32-value block types, up to ``FUSED_T`` rows of x the weights are decoded
    in registers and used in 4-row tiles (``_rows2_32``), summed in the buffer's order, so the
    same bits, also against the kernel's own buffered path (x padded past ``FUSED_T``).  T from 1
    to 17 (tiles and remainders), an odd row count; and against float64."""
    from gguf.quants import quantize
    from gguf import GGMLQuantizationType
    from rwkvcpu.kernels import matvec as MV
    rng = np.random.default_rng(3)
    if qtype == dq.IQ4_NL:                  # (gguf-py has no IQ4_NL quantizer: random blocks)
        raw = _random_blocks(qtype, 13, 512, rng)
    else:
        Wf = rng.standard_normal((13, 512)).astype(np.float32)
        raw = Wf if qtype == dq.F32 else np.ascontiguousarray(quantize(Wf, GGMLQuantizationType(qtype)))
    rb = dq.as_row_bytes(raw)
    rb.setflags(write=False)
    ref_w = QTensor("w", qtype, (13, 512), raw).dequantize().astype(np.float64)
    Ts = (1, 3, 4, 5, 8, 9, 11, 17)
    if qtype in MV.FUSED_T:                 # both ways of every kernel are run
        assert min(Ts) <= MV.FUSED_T[qtype] < max(Ts)
    for T in Ts:
        x = rand(T, 512)
        got = np.empty((T, 13), np.float32)
        MV._BATCH[qtype](rb, rb.view(np.int8), x, got, dq.F16_LUT)
        want = np.empty((T, 13), np.float32)
        MV.mv_buffered(qtype, rb, rb.view(np.int8), x, want, dq.KVALUES_IQ4, dq.F16_LUT)
        np.testing.assert_array_equal(got, want, err_msg=f"T={T}")
        _check_fused_equals_buffered(MV._BATCH[qtype], qtype, rb, x, got)
        ref = x.astype(np.float64) @ ref_w.T
        np.testing.assert_allclose(got, ref, atol=2e-5 * np.abs(ref).max(), err_msg=f"T={T}")


# Types whose pair kernels give, bit for bit, the numbers of each row alone (measured).  For Q5_0,
# Q5_1 and IQ4_XS LLVM's reassociation compiles the second row's sums in another order: float32
# rounding apart (measured <= 3e-7 of the largest output).
_PAIRS_BIT_EQUAL = (dq.Q8_0, dq.Q4_0, dq.Q4_1, dq.IQ4_NL, dq.Q2_K, dq.Q3_K, dq.Q4_K, dq.Q5_K, dq.Q6_K)


@pytest.mark.parametrize("qtype", [dq.Q8_0, dq.Q4_0, dq.Q4_1, dq.Q5_0, dq.Q5_1, dq.IQ4_NL, dq.IQ4_XS,
                                   dq.Q2_K, dq.Q3_K, dq.Q4_K, dq.Q5_K, dq.Q6_K], ids=lambda q: dq.TYPE_NAMES[q])
def test_pair_kernels_give_each_row_its_single_row_numbers(qtype):
    """Two rows of x (two sequences decoded together) go through ``mv2_*``, which decodes each weight
    block once for both rows: each row's result against the one-row kernel on that row alone
    (the same arithmetic per row: equal bits on ``_PAIRS_BIT_EQUAL``, else float32 rounding, 1e-6
    of the largest output) and against float64; and ``K.matmul`` at T = 2 takes the pair kernel."""
    from gguf.quants import quantize
    from gguf import GGMLQuantizationType
    from rwkvcpu.kernels import matvec as MV
    rng = np.random.default_rng(int(qtype) + 100)
    cols = 512
    if qtype in _LANE_TYPES or qtype in (dq.Q4_0, dq.IQ4_NL):
        raw = _random_blocks(qtype, 13, cols, rng)
    else:
        raw = np.ascontiguousarray(quantize(rng.standard_normal((13, cols)).astype(np.float32),
                                            GGMLQuantizationType(qtype)))
        raw.setflags(write=False)       # read-only like a loaded file: the signature models compile
    W = QTensor("w", qtype, (13, cols), raw)
    rb = W.row_bytes
    one, two = MV._SINGLE[qtype]
    w = (rb, rb.view(np.int8)) if qtype in (dq.Q8_0, dq.Q6_K) else (rb,)
    x = rand(2, cols)
    pair = np.empty((2, 13), np.float32)
    two(*w, x, pair, dq.F16_LUT)
    alone = np.empty((2, 13), np.float32)
    for t in range(2):
        one(*w, x[t:t + 1], alone[t:t + 1], dq.F16_LUT)
    if qtype in _PAIRS_BIT_EQUAL:
        np.testing.assert_array_equal(pair, alone)
    else:
        np.testing.assert_allclose(pair, alone, rtol=0, atol=1e-6 * np.abs(alone).max())
    ref = x.astype(np.float64) @ W.dequantize().astype(np.float64).T
    np.testing.assert_allclose(pair, ref, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_array_equal(K.matmul(x, W), pair)


@pytest.mark.parametrize("qtype", [dq.F16, dq.BF16], ids=lambda q: dq.TYPE_NAMES[q])
def test_16bit_pair_kernel_gives_each_row_its_single_row_bits(qtype):
    """F16/BF16 weights, two rows of x: ``mv2_16bit`` converts each weight vector once for both
    rows, with each row's products in its own order: bit for bit the one-row kernel's numbers,
    a ragged end (cols not a multiple of 16) included; and against float64."""
    from rwkvcpu.kernels import matvec as MV
    for cols in (512, 100):
        wf = rand(13, cols)
        if qtype == dq.F16:
            w16 = wf.astype(np.float16).view(np.uint16)
            wq = w16.view(np.float16).astype(np.float64)
        else:
            w16 = (wf.view(np.uint32) >> 16).astype(np.uint16)
            wq = (w16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        w16.setflags(write=False)       # read-only like a loaded file: the signature models compile
        x = rand(2, cols)
        pair = np.empty((2, 13), np.float32)
        MV.mv2_16bit(w16, x, pair, qtype == dq.BF16)
        alone = np.empty((2, 13), np.float32)
        for t in range(2):
            MV.mv_16bit(w16, x[t:t + 1], alone[t:t + 1], qtype == dq.BF16)
        np.testing.assert_array_equal(pair, alone, err_msg=f"cols={cols}")
        ref = x.astype(np.float64) @ wq.T
        np.testing.assert_allclose(pair, ref, atol=2e-5 * np.abs(ref).max(), err_msg=f"cols={cols}")
