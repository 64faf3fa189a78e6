import numpy as np
import pytest

from rwkvcpu.sampling import Sampler, SamplerParams

LOGITS = np.array([2.0, 1.0, 0.5, -1.0, 3.0, 0.0])


def probs_after(**kw):
    z = Sampler(SamplerParams(**kw)).apply(LOGITS)
    e = np.exp(z - z.max())
    return e / e.sum()


def test_greedy():
    assert Sampler(temperature=0).sample(LOGITS) == 4


def test_top_k_keeps_k_best():
    p = probs_after(top_k=2)
    assert set(np.nonzero(p)[0]) == {0, 4}


def test_top_p_smallest_set_reaching_p():
    sm = np.exp(LOGITS - LOGITS.max()); sm /= sm.sum()
    p = probs_after(top_p=0.8)
    kept = set(np.nonzero(p)[0])
    order = np.argsort(-sm)
    need = int(np.searchsorted(np.cumsum(sm[order]), 0.8) + 1)
    assert kept == set(order[:need].tolist())


def test_min_p_relative_to_best():
    sm = np.exp(LOGITS - LOGITS.max()); sm /= sm.sum()
    p = probs_after(min_p=0.3)
    assert set(np.nonzero(p)[0]) == set(np.nonzero(sm >= 0.3 * sm.max())[0])


def test_temperature_flattens():
    hot, cold = probs_after(temperature=2.0), probs_after(temperature=0.5)
    assert hot.max() < cold.max()


def test_repeat_penalty_llama_semantics():
    s = Sampler(repeat_penalty=2.0)
    for t in (0, 3):
        s.observe(t, generated=False)
    z = s.apply(LOGITS)
    assert z[0] == pytest.approx(1.0)        # positive logit divided
    assert z[3] == pytest.approx(-2.0)       # negative logit multiplied
    assert z[4] == pytest.approx(3.0)


def test_presence_frequency_with_rwkv_decay():
    s = Sampler(presence_penalty=0.5, frequency_penalty=0.25, penalty_decay=0.5)
    s.observe(1)
    s.observe(1)                            # count = 1 * 0.5 + 1 = 1.5
    s.observe(2)                            # count(1) = 0.75, count(2) = 1
    z = s.apply(LOGITS)
    assert z[1] == pytest.approx(1.0 - (0.5 + 0.75 * 0.25))
    assert z[2] == pytest.approx(0.5 - (0.5 + 1.0 * 0.25))
    assert z[0] == pytest.approx(2.0)


def test_logit_bias():
    z = Sampler(logit_bias={3: 10.0}).apply(LOGITS)
    assert np.argmax(z) == 3


def test_seed_reproducible_and_seeds_differ():
    def run(seed):
        s = Sampler(seed=seed, temperature=1.0)
        return [s.sample(LOGITS) for _ in range(50)]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_invalid_params_named():
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        Sampler(top_k=-1)
