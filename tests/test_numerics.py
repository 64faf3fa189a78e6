"""The "llama" numerics mode: activations rounded as llama.cpp's CPU matmuls round them.

llama.cpp converts each activation row to its weight's vec_dot type (Q8_0 / Q8_K / f16 /
bf16) before an exact integer or float dot product.  Reproducing that rounding should
reproduce llama.cpp's numbers, which the exact (float32-activation) mode cannot.
"""
import numpy as np
import pytest

from rwkvcpu import debug
from rwkvcpu.kernels import actquant as A
from rwkvcpu.kernels import dequant as dq
from rwkvcpu.model import Model
from tests.conftest import require_fixtures


@pytest.mark.parametrize("qtype", [dq.Q8_0, dq.Q4_1, dq.IQ4_NL, dq.Q4_K, dq.Q6_K, dq.IQ4_XS, dq.F16, dq.BF16])
def test_numba_rounding_equals_numpy_reference_bit_for_bit(qtype):
    rng = np.random.default_rng(qtype)
    x = (rng.standard_normal((7, 512)) * rng.uniform(0.01, 30, (7, 1))).astype(np.float32)
    x[0, :256] = 0                        # an all-zero block (d = 0 path)
    x[1, 5] = -1e4                        # a negative extreme (Q8_K keeps the sign of max)
    got = A.round_like_llama(x, qtype)
    ref = A.round_like_llama_ref(x, qtype)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert not np.array_equal(got, x), "the rounding must change something"


def test_q8_k_levels_and_signed_maximum():
    x = np.zeros((1, 256), np.float32)
    x[0, :4] = [-2.0, 1.0, 0.5, 2.0]      # |max| tie: the first one (-2) is the signed maximum
    y = A.round_like_llama(x, dq.Q4_K)
    d = 2.0 / 127                          # iscale = -127 / -2
    np.testing.assert_allclose(y[0, :4], [-127 * d, np.rint(63.5) * d, np.rint(31.75) * d, 127 * d], rtol=1e-6)


def test_eval_callback_log_matches_to_print_precision_in_llama_mode():
    """llama.cpp's q4_0 eval-callback log: in llama mode every intermediate up to the head's
    input agrees to the log's print precision (%.4f), where exact mode is off by ~1e-2."""
    fx = require_fixtures()
    log = debug.parse_log((fx / "eval-callback-tiny-rwkv7-q4_0.log").read_text())
    worst = {}
    for num in ("exact", "llama"):
        m = Model.load(str(fx / "tiny-rwkv7-q4_0.gguf"), numerics=num)
        rows = [r for r in debug.compare_log(m, log, rel_tol=1.0)["rows"] if r.key != "result_output"]
        worst[num] = max(r.max_abs for r in rows)
    # printed values are rounded to 5e-5; the worst llama-mode tensor (7e-4) is a large-valued
    # wkv output after a rounding flip; exact mode is two orders of magnitude farther
    assert worst["llama"] <= 1e-3, worst
    assert worst["exact"] > 5e-2, worst


# Q4_1/Q5_1 are left out: their Q8_1 activation blocks carry an f16-rounded sum (s = d * sum q)
# that ggml multiplies by the weight block's min; that rounding depends on the weight and is not
# emulated (README: "Numerics").
@pytest.mark.parametrize("typ", ["q8_0", "q4_0", "q5_0", "iq4_nl", "q2_k", "q4_k_m", "q6_k", "iq4_xs"])
def test_llama_mode_reproduces_llama_cpp_logits_until_a_rounding_flip(typ):
    """Position 0: llama mode within 2e-5 of llama.cpp (float32 noise), exact mode ~0.1 away.
    Later, one activation that lands on the other side of a rounding boundary (our float32
    sums are ordered differently) moves the state by a quantization step, after which the two
    differ by about the exact mode's distance: so over all 64 positions we only require llama
    mode to be no farther than exact mode."""
    fx = require_fixtures()
    ref = np.load(fx / f"ref-llama-tiny-rwkv7-{typ}.npz")
    toks, L = ref["seqlong_tokens"], ref["seqlong_llama_logits"]
    ll, _ = Model.load(str(fx / f"tiny-rwkv7-{typ}.gguf"), numerics="llama").forward(toks, all_logits=True)
    le, _ = Model.load(str(fx / f"tiny-rwkv7-{typ}.gguf")).forward(toks, all_logits=True)
    assert np.abs(ll[0] - L[0]).max() <= 2e-5
    assert np.abs(le[0] - L[0]).max() > 1e-2
    assert np.abs(ll - L).max() <= np.abs(le - L).max()


def test_unknown_numerics_mode_is_refused(fx):
    with pytest.raises(ValueError, match="numerics"):
        Model.load(str(fx / "tiny-rwkv7-q8_0.gguf"), numerics="fast")


@pytest.mark.parametrize("typ", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k_m", "q4_k_m",
                                 "q5_k_m", "q6_k", "iq4_xs"])
def test_llama_mode_decode_path_reproduces_llama_cpp(typ):
    """Token by token (the decode path: fused layer kernels with in-kernel activation rounding,
    integer-dot matvecs for every quantized type): the same criterion as the prompt path above.
    Q4_1/Q5_1 are in here, unlike there: their integer kernels add the weight block's min times
    the Q8_1 block's own f16 sum, as ggml does (``intdot.quantize_q8_1``).
    Q8_0, Q4_0, Q4_1, Q3_K_M and IQ4_XS additionally stay within float32 noise of llama.cpp over
    all 24 positions: their kernels accumulate as llama.cpp's AVX2 ones do (Q4_0: its repacked
    8-row kernel, one exact int32 per block and row; Q4_1: with the Q8_1 sums; K types and IQ4_XS:
    one exact int32 per 256-value block), so no rounding flip happens there (measured: 0.0, 1.9e-6,
    2.2e-6, 3e-6, 2e-6; with Q4_0 summed lane-wise as ``ggml_vec_dot_q4_0_q8_0`` does, a flip at
    position 11 put it 0.04 away; Q4_1 through the float kernel on rounded activations was 0.09
    away at position 0).  The others agree to ~5e-6 until a flip (Q5_0 at position 4, Q5_1 17,
    IQ4_NL 10, Q2_K 9, Q4_K_M 19, Q5_K_M 9)."""
    fx = require_fixtures()
    ref = np.load(fx / f"ref-llama-tiny-rwkv7-{typ}.npz")
    toks, L = ref["seqlong_tokens"][:24], ref["seqlong_llama_logits"][:24]
    out = {}
    for num in ("llama", "exact"):
        m = Model.load(str(fx / f"tiny-rwkv7-{typ}.gguf"), numerics=num)
        st = m.new_state()
        out[num] = np.stack([m.forward([int(t)], st)[0] for t in toks])
    ll, le = out["llama"], out["exact"]
    # The exact decode path (float32 activations: the in-lane float kernels of every type) on the
    # exact-dequantization reference, to the model test's tolerance (tests/test_model.py EXACT_TOL).
    assert np.abs(le - ref["seqlong_exact_logits"][:24]).max() <= 2e-4
    assert np.abs(ll[0] - L[0]).max() <= 2e-5
    assert np.abs(le[0] - L[0]).max() > 1e-2
    assert np.abs(ll - L).max() <= np.abs(le - L).max()
    if typ in ("q8_0", "q4_0", "q4_1", "q3_k_m", "iq4_xs"):
        assert np.abs(ll - L).max() <= 1e-5
