"""Prefill timing on a GPU: tok/s of ``n`` calls of a T-token prompt, each on a fresh state (as a
user's new prompt), and one more call between cuda.profile_start/stop for
``ncu --profile-from-start off`` (e.g. ``--metrics gpu__time_duration.sum --print-summary per-kernel``).

    python tools/gpu/prefill.py r-1.5b-f16.gguf [T=512] [n=8] [--llama]

``--llama``: numerics='llama' (activations rounded as llama.cpp rounds them; F16 weights: f16 x,
one MMA per product).
"""
import sys
import time

import numpy as np
from numba import cuda

from rwkvcpu.model import Model


def main(argv):
    llama = "--llama" in argv
    argv = [a for a in argv if a != "--llama"]
    m = Model.load(argv[0], device="cuda", numerics="llama" if llama else "exact")
    T = int(argv[1]) if len(argv) > 1 else 512
    n = int(argv[2]) if len(argv) > 2 else 8
    toks = [int(t) for t in np.random.default_rng(0).integers(1, m.n_vocab, T)]
    ts = []
    for _ in range(n):
        st = m.new_state()
        cuda.synchronize()
        t = time.perf_counter()
        m.forward(toks, st)
        cuda.synchronize()
        ts.append(time.perf_counter() - t)
        del st
    r = sorted(T / x for x in ts[2:])      # the first calls record and capture the step
    print(f"prefill-{T}: calls {' '.join(f'{T / x:.0f}' for x in ts)}; best {r[-1]:.0f} median {r[len(r) // 2]:.0f} tok/s")
    cuda.profile_start()
    m.forward(toks, m.new_state())
    cuda.synchronize()
    cuda.profile_stop()


if __name__ == "__main__":
    main(sys.argv[1:])
