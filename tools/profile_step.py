"""Where a decode step's time goes: the fused layer kernels, the matrices and the head, per step.

    python tools/profile_step.py -m /tmp/r01-q4_0.gguf --numerics llama --batch 8 [--steps 30] [-t 2]

Decodes ``--batch`` sequences together (one token each per step, ``Model.forward_batch``) after a
few warm-up steps, and prints the mean time per step of ``fused.tmix_in``, ``tmix_wkv``,
``cmix_in``, the layer matrices (``mm``: the six projections of every layer), the head, and the rest
(embedding, norms, Python).  The wrappers add ~1 us a call; compare rows, not the step's total,
with ``tools/bench.py``'s.
"""
from __future__ import annotations

import argparse
import collections
import time


def profile(model, numerics="exact", batch=1, steps=30, threads=None):
    """{part: seconds per step}, plus "step" (the whole step)."""
    from rwkvcpu.kernels import fused as F
    from rwkvcpu.model import Model
    m = Model.load(model, threads=threads, numerics=numerics)
    acc = collections.defaultdict(float)
    saved = {n: getattr(F, n) for n in ("tmix_in", "tmix_wkv", "cmix_in", "relu_sq", "add_into")}

    def timed(name, f):
        def g(*a):
            t = time.perf_counter()
            r = f(*a)
            acc[name] += time.perf_counter() - t
            return r
        return g

    mm = m._mm

    def timed_mm(x, W):
        t = time.perf_counter()
        r = mm(x, W)
        acc["head" if W is m.weights.head else "mm"] += time.perf_counter() - t
        return r

    try:
        for n, f in saved.items():
            setattr(F, n, timed(n, f))
        m._mm = timed_mm
        cache = m.new_cache(batch)
        slots = list(range(batch))
        toks = [[1 + i] for i in slots]
        for _ in range(3):                                  # warm-up (compiles if needed)
            m.forward_batch(toks, cache, slots)
        acc.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            m.forward_batch(toks, cache, slots)
        step = (time.perf_counter() - t0) / steps
    finally:
        for n, f in saved.items():
            setattr(F, n, f)
    out = {k: v / steps for k, v in acc.items()}
    out["other"] = step - sum(out.values())
    out["step"] = step
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--numerics", default="exact", choices=["exact", "llama"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.batch < 1 or a.steps < 1:
        ap.error("--batch and --steps must be at least 1")
    r = profile(a.model, a.numerics, a.batch, a.steps, a.threads)
    step = r.pop("step")
    print(f"{a.model} {a.numerics} batch {a.batch}: step {step * 1e3:.2f} ms ({a.batch / step:.1f} tok/s)")
    for k, v in sorted(r.items(), key=lambda kv: -kv[1]):
        print(f"  {k:10s} {v * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
