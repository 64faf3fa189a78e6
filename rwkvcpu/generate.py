"""Generation as an iterator: the CLI and embedding apps use the same ``stream_generate``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from rwkvcpu.sampling import Sampler, SamplerParams
from rwkvcpu.state import State

END_OF_TEXT = 0      # World vocabulary: id 0 ends a document


@dataclass
class Response:
    """One step of generation: a text piece (possibly empty while UTF-8 or a stop string is pending)."""
    text: str
    token: int | None
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    finish_reason: str | None = None     # "stop" | "length" | None while running


def _stop_holdback(text: str, stops) -> int:
    """How many trailing characters of ``text`` could still begin a stop string."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


def stream_generate(model, prompt, state: State | None = None, max_tokens: int = 256,
                    sampler: Sampler | None = None, stop=(), stop_tokens=(END_OF_TEXT,),
                    **sampling) -> Iterator[Response]:
    """Feed ``prompt`` (text or token ids) into ``state`` and yield generated pieces.

    ``state`` is advanced in place (a fresh one if None), so a caller can keep
    it and continue later without re-processing.  ``sampling`` keywords build a
    ``Sampler`` (see ``SamplerParams``) when none is given.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    tok = model.tokenizer
    ids = tok.encode(prompt) if isinstance(prompt, (str, bytes)) else [int(t) for t in prompt]
    if not ids:
        raise ValueError("empty prompt: give at least one token of text")
    state = state if state is not None else model.new_state()
    sampler = sampler or Sampler(SamplerParams(**sampling))
    for t in ids:
        sampler.observe(t, generated=False)
    stops = [s for s in stop if s]
    t0 = time.perf_counter()
    logits, _ = model.forward(ids, state)
    t1 = time.perf_counter()
    prompt_tps = len(ids) / max(t1 - t0, 1e-9)
    dec = tok.stream()
    pending = ""
    n = 0

    def resp(text, token, reason=None):
        dt = time.perf_counter() - t1
        return Response(text, token, len(ids), n, prompt_tps, n / dt if dt > 0 and n else 0.0, reason)

    while n < max_tokens:
        token = sampler.sample(logits)
        if token in stop_tokens:
            yield resp(pending + dec.flush(), None, "stop")
            return
        sampler.observe(token)
        n += 1
        logits, _ = model.forward([token], state)       # the state always holds what was generated
        pending += dec.put(token)
        hit = min(((pending.find(s), s) for s in stops if s in pending), default=None)
        if hit is not None:
            yield resp(pending[:hit[0]], token, "stop")
            return
        hold = _stop_holdback(pending, stops)
        out, pending = (pending[:-hold], pending[-hold:]) if hold else (pending, "")
        yield resp(out, token)
    yield resp(pending + dec.flush(), None, "length")


def generate_text(model, prompt, **kw) -> str:
    return "".join(r.text for r in stream_generate(model, prompt, **kw))


def perplexity(model, ids, chunk: int = 512, progress=None) -> dict:
    """Negative log-likelihood of ``ids`` with the state carried across chunks of ``chunk`` tokens.

    Every token after the first is scored (RWKV has no context window to refill).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        raise ValueError("perplexity needs at least 2 tokens of text")
    state = model.new_state()
    nll = 0.0
    count = 0
    for c0 in range(0, ids.size - 1, chunk):
        inp = ids[c0:min(c0 + chunk, ids.size - 1)]
        tgt = ids[c0 + 1:c0 + 1 + inp.size]
        logits, _ = model.forward(inp, state, all_logits=True)
        z = logits.astype(np.float64)
        m = z.max(-1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(z - m).sum(-1)))
        nll += float((lse - z[np.arange(tgt.size), tgt]).sum())
        count += tgt.size
        if progress:
            progress(inp.size)
    return {"tokens": count, "nll": nll / count, "ppl": float(np.exp(nll / count)), "chunk": chunk}
