"""Token sampling: penalties, logit bias, top-k / top-p / min-p, temperature, seeded draws.

Order of the chain (llama.cpp's default order): logit bias -> penalties ->
top-k -> top-p -> min-p -> temperature -> draw.  ``temperature <= 0`` is greedy.

Penalties:
* ``repeat_penalty`` (llama.cpp semantics): for every token among the last
  ``repeat_last_n`` generated/prompt tokens, a positive logit is divided by the
  penalty and a negative one multiplied by it.
* ``presence_penalty`` / ``frequency_penalty`` (RWKV / ChatRWKV semantics):
  ``logit -= presence + count * frequency`` for each token seen, where a
  token's count decays by ``penalty_decay`` after every generated token
  (ChatRWKV uses 0.996; ``penalty_decay=1`` gives plain OpenAI-style counts).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplerParams:
    temperature: float = 1.0
    top_k: int = 0                 # 0 = off
    top_p: float = 1.0             # 1 = off
    min_p: float = 0.0             # 0 = off
    repeat_penalty: float = 1.0    # 1 = off
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 0.996
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"sampler: {name} {why}")
        if self.top_k < 0:
            bad("top_k", f"must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            bad("repeat_penalty", f"must be > 0, got {self.repeat_penalty}")
        if not 0.0 < self.penalty_decay <= 1.0:
            bad("penalty_decay", f"must be in (0, 1], got {self.penalty_decay}")
        if self.repeat_last_n < 0:
            bad("repeat_last_n", f"must be >= 0, got {self.repeat_last_n}")


class Sampler:
    """Stateful sampler: remembers recent tokens (for penalties) and owns its RNG."""

    def __init__(self, params: SamplerParams | None = None, **kw):
        self.p = params or SamplerParams(**kw)
        self.p.validate()
        self.rng = np.random.default_rng(self.p.seed)
        self.recent: list[int] = []
        self.counts: dict[int, float] = {}

    def observe(self, token: int, generated: bool = True) -> None:
        """Record a token (prompt tokens count for repeat_penalty only)."""
        self.recent.append(int(token))
        if len(self.recent) > max(self.p.repeat_last_n, 1):
            del self.recent[0]
        if generated:
            d = self.p.penalty_decay
            if d != 1.0:
                for t in self.counts:
                    self.counts[t] *= d
            self.counts[int(token)] = self.counts.get(int(token), 0.0) + 1.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The filtered, tempered logits (-inf where removed).  Does not draw."""
        p = self.p
        z = np.array(logits, dtype=np.float64, copy=True)
        for t, b in p.logit_bias.items():
            if 0 <= t < z.size:
                z[t] += b
        if p.repeat_penalty != 1.0 and self.recent and p.repeat_last_n > 0:
            ids = np.unique(np.array(self.recent[-p.repeat_last_n:]))
            v = z[ids]
            z[ids] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if (p.presence_penalty or p.frequency_penalty) and self.counts:
            ids = np.fromiter(self.counts.keys(), dtype=np.int64)
            c = np.fromiter(self.counts.values(), dtype=np.float64)
            z[ids] -= p.presence_penalty + c * p.frequency_penalty
        if p.temperature <= 0:
            return z
        if 0 < p.top_k < z.size:
            kth = np.partition(z, -p.top_k)[-p.top_k]
            z[z < kth] = -np.inf
        if p.top_p < 1.0:
            order = np.argsort(-z, kind="stable")
            probs = _softmax(z[order])
            cum = np.cumsum(probs)
            keep = int(np.searchsorted(cum, p.top_p) + 1)      # smallest prefix with mass >= top_p
            z[order[keep:]] = -np.inf
        if p.min_p > 0.0:
            probs = _softmax(z)
            z[probs < p.min_p * probs.max()] = -np.inf
        return z / p.temperature

    def sample(self, logits: np.ndarray) -> int:
        z = self.apply(logits)
        if self.p.temperature <= 0:
            return int(np.argmax(z))
        probs = _softmax(z)
        return int(self.rng.choice(z.size, p=probs))


def _softmax(z):
    m = np.max(z)
    e = np.exp(z - m)
    return e / e.sum()
