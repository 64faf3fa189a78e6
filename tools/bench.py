"""Side-by-side CPU benchmark: rwkvcpu vs llama.cpp (llama-cpp-python) on a GGUF, or vs the
rwkv pip package (torch, cpu fp32) on a BlinkDL .pth.

    python tools/bench.py -m /tmp/rand-0.1b-q8_0.gguf -t 2 [--rounds 2] [--json out.json]
    python tools/bench.py -m /tmp/rand-0.1b.pth -t 2          # ratios against rwkv pip
    python tools/bench.py -m rand-1.5b-f16.gguf --pth rand-1.5b.pth --device cuda --batch 64 \
        --llama-bench llama.cpp/build/bin/llama-bench              # GPU: vs llama.cpp CUDA and rwkv pip CUDA

Each engine runs in its own subprocess (so peak RSS is its own), A/B/A/B for ``--rounds``,
best of the rounds kept.  Measured: decode tok/s (batch 1, after a 16-token prompt),
prefill-512 tok/s, batched decode (8 sequences, one forward per step; llama.cpp: 8 sequences in one
context, one llama_decode per step) in total tok/s,
peak RSS through decode (load, prompt, decode) and over the whole run (prefill-512 and the batch
add their transients), and cold start (process start -> first generated token, second run, kernels cached).
llama.cpp runs only when ``llama_cpp`` imports (an optional extra:
``pip install llama-cpp-python==0.3.36``, ~5 min to build on 2 cores).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

N_PROMPT = 16


def _rss_mb() -> float:
    """This process's peak resident set so far, MiB (mapped file pages it touched included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prefill_calls(device: str) -> int:
    """Timed prefill calls per worker, best taken (each on a fresh state, after one warm-up call):
    one on the CPU (a call is seconds long), five on a GPU (a call is ~10-30 ms: the best of a few
    is steadier), the same for every engine."""
    return 1 if device == "cpu" else 5


def worker_rwkvcpu(path, threads, n_decode, n_prefill, batch, device="cpu", numerics="exact"):
    t0 = time.perf_counter()
    from rwkvcpu.model import Model
    m = Model.load(path, threads=threads, device=device, numerics=numerics)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    V = m.n_vocab
    prompt = rng.integers(1, V, N_PROMPT)
    st = m.new_state()
    logits, _ = m.forward(prompt, st)                       # warm-up (compiles if needed)
    m.forward([1], st)
    t = time.perf_counter()
    for i in range(n_decode):
        logits, _ = m.forward([int(np.argmax(logits))], st)
    decode = n_decode / (time.perf_counter() - t)
    decode_rss = _rss_mb()                                   # the peak so far: load, prompt, decode
    long = rng.integers(1, V, n_prefill)
    m.forward(long, m.new_state())                          # warm-up of the prefill path
    prefill = 0.0
    for _ in range(prefill_calls(device)):
        t = time.perf_counter()
        m.forward(long, m.new_state())
        prefill = max(prefill, n_prefill / (time.perf_counter() - t))
    cache = m.new_cache(batch)
    slots = list(range(batch))
    outs = m.forward_batch([rng.integers(1, V, N_PROMPT) for _ in slots], cache, slots)
    m.forward_batch([[1]] * batch, cache, slots)
    t = time.perf_counter()
    steps = max(4, n_decode // 2)
    for _ in range(steps):
        outs = m.forward_batch([[int(np.argmax(o))] for o in outs], cache, slots)
    batched = batch * steps / (time.perf_counter() - t)
    return {"decode": decode, "prefill": prefill, "batched": batched, "load_s": load_s, "decode_rss_mb": decode_rss,
            "target": _rwkvcpu_target()}


def _rwkvcpu_target() -> str:
    """What rwkvcpu's kernels were compiled for, and NumPy's OpenBLAS core (prefill's sgemm)."""
    import llvmlite.binding as ll
    from numba.core import config
    feats = config.CPU_FEATURES or ""
    host512 = bool(ll.get_host_cpu_features().get("avx512f"))
    width = "AVX-512" if ("+avx512f" in feats or (host512 and not config.CPU_NAME)) else "AVX2 width"
    out = f"Numba {config.CPU_NAME or ll.get_host_cpu_name()} at {width}"
    try:
        import ctypes
        libs = sorted({w for w in open("/proc/self/maps").read().split() if "openblas" in w and w.endswith(".so")})
        for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            f = getattr(ctypes.CDLL(libs[0]), name, None) if libs else None
            if f is not None:
                f.restype = ctypes.c_char_p
                return out + f", OpenBLAS {f().decode()}"
    except OSError:
        pass
    return out


def _llama_target() -> str:
    """The SIMD levels this llama.cpp build uses (llama_print_system_info's "X = 1" entries)."""
    import llama_cpp
    info = llama_cpp.llama_print_system_info().decode()
    on = [k.strip() for k, _, v in (e.partition("=") for e in info.replace(";", "|").split("|")) if v.strip() == "1"]
    return "llama.cpp " + (" ".join(on) or info.strip())


def worker_llama(path, threads, n_decode, n_prefill, batch, device="cpu"):
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_prefill + 256,
                n_batch=n_prefill, verbose=False)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    V = llm.n_vocab()
    llm.eval(rng.integers(1, V, N_PROMPT).tolist())
    llm.eval([1])
    t = time.perf_counter()
    for i in range(n_decode):
        llm.eval([int(rng.integers(1, V))])
    decode = n_decode / (time.perf_counter() - t)
    decode_rss = _rss_mb()                                   # the peak so far: load, prompt, decode
    long = rng.integers(1, V, n_prefill).tolist()
    llm.reset()
    llm.eval(long[:64])
    llm.reset()
    t = time.perf_counter()
    llm.eval(long)
    prefill = n_prefill / (time.perf_counter() - t)
    del llm
    batched = _llama_batched(path, threads, batch, max(4, n_decode // 2), rng)
    return {"decode": decode, "prefill": prefill, "batched": batched, "load_s": load_s, "decode_rss_mb": decode_rss,
            "target": _llama_target()}


def _llama_batched(path, threads, batch, steps, rng):
    """llama.cpp's batched decode, as worker_rwkvcpu measures ours: `batch` sequences in one context
    (n_seq_max = batch, one recurrent state each), a 16-token prompt each, then `steps` calls of
    llama_decode with one token per sequence, each fed its own argmax.  Total tokens/s.  Through
    llama-cpp-python's low-level API: its Llama class holds a single sequence."""
    import ctypes

    import llama_cpp as L
    quiet = L.llama_log_callback(lambda level, text, user: None)
    L.llama_log_set(quiet, ctypes.c_void_p())
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0                                     # as the Llama() above: the CPU
    model = L.llama_model_load_from_file(path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx = (N_PROMPT + steps + 8) * batch
    cp.n_batch = cp.n_ubatch = N_PROMPT * batch
    cp.n_seq_max = batch
    cp.n_threads = cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    V = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    b = L.llama_batch_init(N_PROMPT * batch, 0, 1)
    pos = 0

    def step(toks):
        nonlocal pos
        n, last = 0, []
        for s, seq in enumerate(toks):
            for j, tok in enumerate(seq):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = int(tok), pos + j, 1, int(j == len(seq) - 1)
                b.seq_id[n][0] = s
                n += 1
            last.append(n - 1)
        b.n_tokens = n
        if L.llama_decode(ctx, b) != 0:
            raise RuntimeError(f"llama_decode failed on {path}")
        pos += len(toks[0])
        return [int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), (V,)))) for i in last]
    try:
        nxt = step([rng.integers(1, V, N_PROMPT) for _ in range(batch)])
        nxt = step([[t] for t in nxt])
        t = time.perf_counter()
        for _ in range(steps):
            nxt = step([[t] for t in nxt])
        return batch * steps / (time.perf_counter() - t)
    finally:
        L.llama_batch_free(b)
        L.llama_free(ctx)
        L.llama_model_free(model)


def worker_rwkv_pip(path, threads, n_decode, n_prefill, batch, device="cpu"):
    gpu = device != "cpu"
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="1" if gpu else "0")
    import torch
    torch.set_num_threads(threads)
    from rwkv.model import RWKV
    t0 = time.perf_counter()
    m = RWKV(model=path[:-4] if path.endswith(".pth") else path, strategy="cuda fp16" if gpu else "cpu fp32")
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    V = m.args.vocab_size
    out, st = m.forward(rng.integers(1, V, N_PROMPT).tolist(), None)
    out, st = m.forward([1], st)
    t = time.perf_counter()
    for i in range(n_decode):
        out, st = m.forward([int(out.argmax())], st)
    decode = n_decode / (time.perf_counter() - t)
    decode_rss = _rss_mb()                                   # the peak so far: load, prompt, decode
    long = rng.integers(1, V, n_prefill).tolist()
    m.forward(long, None)                                    # warm-up, as for rwkvcpu
    prefill = 0.0
    for _ in range(prefill_calls(device)):
        t = time.perf_counter()
        out, _ = m.forward(long, None)
        float(out.float().sum())                             # wait for the GPU (cuda strategies)
        prefill = max(prefill, n_prefill / (time.perf_counter() - t))
    return {"decode": decode, "prefill": prefill, "batched": None, "load_s": load_s, "decode_rss_mb": decode_rss}


def cold_start(path, threads):
    cmd = [sys.executable, "-m", "rwkvcpu.cli", "generate", "-m", path, "-p", "Hello", "-n", "1", "-t", str(threads)]
    times = []
    for _ in range(2):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return times[-1]


def llama_bench(binary, path, threads, n_decode, n_prefill, device):
    """llama.cpp's own llama-bench binary (e.g. a CUDA build): pp<n_prefill> and tg<n_decode>."""
    cmd = [binary, "-m", path, "-p", str(n_prefill), "-n", str(n_decode), "-t", str(threads), "-r", "3",
           "-ngl", "99" if device != "cpu" else "0", "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed:\n{r.stderr[-2000:]}")
    res = {"decode": None, "prefill": None, "batched": None, "load_s": None, "peak_rss_mb": float("nan"),
           "decode_rss_mb": float("nan")}
    for row in json.loads(r.stdout):
        key = "prefill" if row.get("n_prompt") else "decode"
        res[key] = float(row["avg_ts"])
    return res


def run_worker(engine, a):
    if engine == "llama.cpp" and a.llama_bench:
        return llama_bench(a.llama_bench, a.model, a.threads, a.n_decode, a.prefill, a.device)
    model = a.pth if engine == "rwkv-pip" and a.pth else a.model
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "-m", model, "-t", str(a.threads),
           "--n-decode", str(a.n_decode), "--prefill", str(a.prefill), "--batch", str(a.batch),
           "--device", a.device]
    env = dict(os.environ)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{engine} worker failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n-decode", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", help="rwkvcpu device/strategy (cuda: rwkv pip runs 'cuda fp16' "
                    "with its CUDA kernel, llama.cpp offloads all layers)")
    ap.add_argument("--pth", default=None, help="the same weights as a .pth: adds rwkv pip next to a GGUF")
    ap.add_argument("--llama-bench", default=None, help="a llama-bench binary to use instead of llama-cpp-python")
    ap.add_argument("--no-cold-start", action="store_true")
    ap.add_argument("--numerics", default="exact,llama",
                    help="rwkvcpu numerics to run, comma-separated: exact (float32 activations; row 'rwkvcpu') "
                    "and/or llama (activations rounded as llama.cpp rounds them: 8-bit blocks, or f16 for F16 weights; "
                    "row 'rwkvcpu-ll')")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        fn = {"rwkvcpu": worker_rwkvcpu, "rwkvcpu-ll": functools.partial(worker_rwkvcpu, numerics="llama"),
              "llama.cpp": worker_llama, "rwkv-pip": worker_rwkv_pip}[a.worker]
        res = fn(a.model, a.threads, a.n_decode, a.prefill, a.batch, a.device)
        res["peak_rss_mb"] = _rss_mb()
        print(json.dumps(res))
        return
    if not os.path.isfile(a.model):
        ap.error(f"--model: {a.model}: no such file")
    if a.pth and not os.path.isfile(a.pth):
        ap.error(f"--pth: {a.pth}: no such file")
    nums = [n.strip() for n in a.numerics.split(",") if n.strip()]
    bad = [n for n in nums if n not in ("exact", "llama")]
    if bad or not nums:
        ap.error(f"--numerics: expected exact and/or llama, got {a.numerics!r}")
    engines = [{"exact": "rwkvcpu", "llama": "rwkvcpu-ll"}[n] for n in nums]
    pth = a.model.endswith(".pth")
    anchor = "rwkv-pip" if pth else "llama.cpp"
    wanted = [anchor] + (["rwkv-pip"] if a.pth and not pth else [])
    for e in wanted:
        if e == "llama.cpp" and a.llama_bench:
            engines.append(e)
            continue
        try:
            __import__("rwkv" if e == "rwkv-pip" else "llama_cpp")
            engines.append(e)
        except ImportError:
            print(f"{e} not installed: skipped (llama-cpp-python==0.3.36 for GGUF, rwkv for .pth)",
                  file=sys.stderr)
    best: dict[str, dict] = {}
    for rnd in range(a.rounds):
        for e in engines:                                   # interleaved A/B/A/B
            r = run_worker(e, a)
            b = best.setdefault(e, r)
            for k in ("decode", "prefill", "batched"):
                if r[k] is not None and (b[k] is None or r[k] > b[k]):
                    b[k] = r[k]
            b["peak_rss_mb"] = min(b["peak_rss_mb"], r["peak_rss_mb"])
            b["decode_rss_mb"] = min(b.get("decode_rss_mb", float("nan")), r.get("decode_rss_mb", float("nan")))
    if not pth and not a.no_cold_start and engines[0] in best:   # a bare .pth has no vocabulary for the CLI's prompt
        best[engines[0]]["cold_start_s"] = cold_start(a.model, a.threads)
    size_mb = os.path.getsize(a.model) / 2**20
    ref = best.get(anchor)
    print(f"\n{os.path.basename(a.model)} ({size_mb:.0f} MiB), device {a.device}, {a.threads} threads, "
          f"best of {a.rounds} interleaved rounds")
    print(f"{'engine':<10} {'decode tok/s':>13} {'prefill-' + str(a.prefill):>13} {'batch-' + str(a.batch) + ' tok/s':>14} "
          f"{'RSS decode/peak MiB':>20} {'cold start s':>13}")
    for e, r in best.items():
        def cell(k, w):
            v = r.get(k)
            if v is None:
                return f"{'n/a':>{w}}"
            s = f"{v:.1f}"
            if ref and e != anchor and ref.get(k):
                s += f" ({v / ref[k]:.2f}x)"
            return f"{s:>{w}}"
        cs = r.get("cold_start_s")
        rss = f"{r.get('decode_rss_mb', float('nan')):.0f}/{r['peak_rss_mb']:.0f}"
        print(f"{e:<10} {cell('decode', 13)} {cell('prefill', 13)} {cell('batched', 14)} "
              f"{rss:>20} {(f'{cs:.2f}' if cs else 'n/a'):>13}")
    for t in sorted({r["target"] for r in best.values() if r.get("target")}):
        print(f"built for: {t}")
    for e in [e for e in ("rwkvcpu", "rwkvcpu-ll") if e in best and "rwkv-pip" in best and anchor != "rwkv-pip"]:
        r, q = best[e], best["rwkv-pip"]
        print(f"{e} / rwkv-pip: " + ", ".join(f"{k} {r[k] / q[k]:.2f}x" for k in ("decode", "prefill", "batched")
                                             if r.get(k) and q.get(k)))
    for e in [e for e in ("rwkvcpu", "rwkvcpu-ll") if e in best]:
        r = best[e]
        print(f"{e}: batched/single decode = {r['batched'] / r['decode']:.2f}x; "
              f"weights streamed per decoded token = {size_mb:.0f} MiB -> {size_mb * r['decode'] / 1024:.1f} GiB/s; "
              f"peak RSS through decode = file + {r.get('decode_rss_mb', float('nan')) - size_mb:.0f} MiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "threads": a.threads, "results": best}, f, indent=1)


if __name__ == "__main__":
    main()
