"""Where a decode step's time goes: the fused layer kernels, the matrices and the head, per step.

    python tools/profile_step.py -m /tmp/r01-q4_0.gguf --numerics llama --batch 8 [--steps 30] [-t 2]

Decodes ``--batch`` sequences together (one token each per step, ``Model.forward_batch``) after a
few warm-up steps, and prints the mean time per step of ``fused.tmix_in``, ``tmix_wkv``,
``cmix_in``, the layer matrices (``mm``: the six projections of every layer), the head, and the rest
(embedding, norms, Python).  The wrappers add ~1 us a call; compare rows, not the step's total,
with ``tools/bench.py``'s.

``--roofline`` adds what the step's matrix products would take at this machine's arithmetic peak,
measured first by two small Numba kernels on all threads: float32 8-lane FMAs (the exact numerics,
F16/F32 weights) and 8-bit integer dots (vpmaddubsw + vpmaddwd, fused to vpdpwssd where the CPU has
AVX-VNNI: the llama numerics on quantized weights).  With ``--batch`` above 1 it also times one
sequence, and prints the best batch / single throughput ratio reachable with the matrices at that
peak and everything else as measured -- the bound behind a target like "8 sequences >= 4x one".
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


def _peak_kernels():
    """The two peak kernels (compiled on first use, cached like the runtime's)."""
    import numpy as np
    from numba import njit, prange
    from rwkvcpu.kernels.simd import iadd, i8load, imadd2, imaddubs, itof, izero, vadd, vfma, vhsum, vload, vzero

    @njit(cache=True, parallel=True, fastmath=True)
    def f32_fma(x, n, nt):
        """nt threads x n rounds of 12 independent 8-lane FMAs (FMA latency x pipes < 12)."""
        tot = np.zeros(nt, dtype=np.float32)
        for t in prange(nt):
            w = vload(x, 0)
            y = vload(x, 8)
            a0, a1, a2, a3, a4, a5 = vzero(), vzero(), vzero(), vzero(), vzero(), vzero()
            a6, a7, a8, a9, a10, a11 = vzero(), vzero(), vzero(), vzero(), vzero(), vzero()
            for _ in range(n):
                a0, a1, a2, a3 = vfma(w, y, a0), vfma(w, y, a1), vfma(w, y, a2), vfma(w, y, a3)
                a4, a5, a6, a7 = vfma(w, y, a4), vfma(w, y, a5), vfma(w, y, a6), vfma(w, y, a7)
                a8, a9, a10, a11 = vfma(w, y, a8), vfma(w, y, a9), vfma(w, y, a10), vfma(w, y, a11)
            s = vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(a4, a5), vadd(a6, a7)))
            tot[t] = vhsum(vadd(s, vadd(vadd(a8, a9), vadd(a10, a11))))
        return tot.sum()

    @njit(cache=True, parallel=True, fastmath=True)
    def int8_dot(b, n, nt):
        """nt threads x n rounds of 8 independent (32 unsigned x signed bytes -> 8 int32 lanes)
        dots, each weight vector loaded from L1 (as a kernel's decoded weights would be)."""
        tot = np.zeros(nt, dtype=np.float32)
        for t in prange(nt):
            x = i8load(b, 4096)
            s0, s1, s2, s3, s4, s5, s6, s7 = izero(), izero(), izero(), izero(), izero(), izero(), izero(), izero()
            for i in range(n):
                o = (i & 15) * 256
                s0 = iadd(s0, imadd2(imaddubs(i8load(b, o), x), 3, 5))
                s1 = iadd(s1, imadd2(imaddubs(i8load(b, o + 32), x), 3, 5))
                s2 = iadd(s2, imadd2(imaddubs(i8load(b, o + 64), x), 3, 5))
                s3 = iadd(s3, imadd2(imaddubs(i8load(b, o + 96), x), 3, 5))
                s4 = iadd(s4, imadd2(imaddubs(i8load(b, o + 128), x), 3, 5))
                s5 = iadd(s5, imadd2(imaddubs(i8load(b, o + 160), x), 3, 5))
                s6 = iadd(s6, imadd2(imaddubs(i8load(b, o + 192), x), 3, 5))
                s7 = iadd(s7, imadd2(imaddubs(i8load(b, o + 224), x), 3, 5))
            tot[t] = vhsum(itof(iadd(iadd(iadd(s0, s1), iadd(s2, s3)), iadd(iadd(s4, s5), iadd(s6, s7)))))
        return tot.sum()

    @njit(cache=True, parallel=True, fastmath=True)
    def read(a, nt):
        """nt threads each summing its share of a (8-lane loads, 4 accumulators): a stream's read rate."""
        per = a.shape[0] // nt // 32 * 32
        tot = np.zeros(nt, dtype=np.float32)
        for t in prange(nt):
            a0, a1, a2, a3 = vzero(), vzero(), vzero(), vzero()
            for i in range(t * per, t * per + per, 32):
                a0 = vadd(a0, vload(a, i))
                a1 = vadd(a1, vload(a, i + 8))
                a2 = vadd(a2, vload(a, i + 16))
                a3 = vadd(a3, vload(a, i + 24))
            tot[t] = vhsum(vadd(vadd(a0, a1), vadd(a2, a3)))
        return tot.sum()
    return f32_fma, int8_dot, read


def peaks(seconds=0.3):
    """{"f32": GMAC/s, "int8": GMAC/s, "read": GB/s} of this machine on Numba's threads (best of 3
    runs; "read": a 256 MiB array, far past any cache)."""
    import numba
    import numpy as np
    f32_fma, int8_dot, read = _peak_kernels()
    nt = numba.get_num_threads()
    x = np.ones(16, dtype=np.float32)
    b = (np.arange(4096 + 64) % 7).astype(np.uint8)
    out = {}
    for name, f, arg, macs in (("f32", f32_fma, x, 12 * 8), ("int8", int8_dot, b, 8 * 32)):
        f(arg, 1000, nt)                                     # compile / load
        n = 1000
        while True:                                          # a run of about `seconds`
            t = time.perf_counter()
            f(arg, n, nt)
            dt = time.perf_counter() - t
            if dt > seconds / 4:
                break
            n *= 4
        best = min(_timed(f, arg, n, nt) for _ in range(3))
        out[name] = nt * n * macs / best / 1e9
    big = np.ones(64 << 20, dtype=np.float32)
    read(big, nt)
    out["read"] = big.nbytes / min(_timed(read, big, nt) for _ in range(5)) / 1e9
    return out


def _timed(f, *a):
    t = time.perf_counter()
    f(*a)
    return time.perf_counter() - t


def macs_per_token(model, numerics):
    """{part: {"f32" or "int8": multiply-adds per token, "bytes": weight bytes read per step}} of a
    decode step's matrix products: the six projections of every layer ("mm"), the head, and
    tmix_in's low-rank products (float32 in both numerics); "int8" where the llama numerics run a
    weight type on 8-bit integer dots."""
    from rwkvcpu.kernels.intdot import TYPES
    from rwkvcpu.model import Model
    m = model if isinstance(model, Model) else Model.load(model, numerics=numerics)
    w = m.weights

    def add(d, W):
        k = "int8" if numerics == "llama" and W.qtype in TYPES else "f32"
        d[k] = d.get(k, 0) + W.shape[0] * W.shape[1]
        d["bytes"] = d.get("bytes", 0) + W.raw.nbytes
        return d
    mm = {}
    for L in w.layers:
        for W in (L.receptance, L.key, L.value, L.output, L.ffn_key, L.ffn_value):
            add(mm, W)
    mats = [M for row in m._lowrank for M in row if M.ndim == 2 and min(M.shape) > 1]
    lowrank = {"f32": sum(M.shape[0] * M.shape[1] for M in mats), "bytes": sum(M.nbytes for M in mats)}
    return {"mm": mm, "head": add({}, w.head), "tmix_in": lowrank}


def roofline(model, numerics, batch, r, r1=None, pk=None):
    """Lines of text: each matrix part's time at peak against its measured time (r: ``profile``'s
    result), and with r1 (one sequence's) the batch / single ratio reachable at peak."""
    pk = pk or peaks()
    lines = [f"roofline: this machine's peaks on {_threads()} threads: float32 FMA {pk['f32']:.0f} GMAC/s, "
             f"8-bit dot {pk['int8']:.0f} GMAC/s, memory read {pk['read']:.1f} GB/s"]
    saved = 0.0
    for part, kinds in macs_per_token(model, numerics).items():
        nbytes = kinds.pop("bytes")
        compute = sum(batch * n / (pk[k] * 1e9) for k, n in kinds.items())
        memory = nbytes / (pk["read"] * 1e9)
        at_peak = max(compute, memory)
        meas = r.get(part, 0.0)
        saved += max(0.0, meas - at_peak)
        what = " + ".join(f"{batch * n / 1e6:.1f} M {k}" for k, n in sorted(kinds.items()))
        lines.append(f"  {part:10s} {what} MAC, {nbytes / 2 ** 20:.1f} MiB: at peak {at_peak * 1e3:6.3f} ms "
                     f"({'compute' if compute >= memory else 'memory'}), measured {meas * 1e3:6.3f} ms"
                     f" ({100 * at_peak / meas if meas else 0:.0f}%)")
    best = r["step"] - saved
    lines.append(f"  step with those at peak, the rest as measured: {best * 1e3:.2f} ms ({batch / best:.1f} tok/s)")
    if r1 is not None and batch > 1:
        single = 1.0 / r1["step"]
        lines.append(f"  one sequence: {r1['step'] * 1e3:.2f} ms ({single:.1f} tok/s); batch {batch} / single: "
                     f"measured {batch / r['step'] / single:.2f}x, at peak {batch / best / single:.2f}x")
    return lines


def _threads():
    import numba
    return numba.get_num_threads()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--numerics", default="exact", choices=["exact", "llama"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--roofline", action="store_true",
                    help="also the matrix parts at this machine's measured arithmetic peak (and, with "
                         "--batch > 1, one sequence's step and the reachable batch / single ratio)")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.steps < 1:
        ap.error("--batch and --steps must be at least 1")
    r = profile(a.model, a.numerics, a.batch, a.steps, a.threads)
    step = r["step"]
    print(f"{a.model} {a.numerics} batch {a.batch}: step {step * 1e3:.2f} ms ({a.batch / step:.1f} tok/s)")
    for k, v in sorted(r.items(), key=lambda kv: -kv[1]):
        if k != "step":
            print(f"  {k:10s} {v * 1e3:7.3f} ms")
    if a.roofline:
        r1 = profile(a.model, a.numerics, 1, a.steps, a.threads) if a.batch > 1 else None
        for line in roofline(a.model, a.numerics, a.batch, r, r1):
            print(line)


if __name__ == "__main__":
    main()
