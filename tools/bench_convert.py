"""Time and peak memory of rwkvcpu's conversion next to llama.cpp's converter path, on one model.

    python tools/bench_convert.py --pth model.pth --vocab vocab.txt [--types f16,q8_0,q4_k_m]
        [--llama-convert llama.cpp/convert_hf_to_gguf.py --llama-pythonpath DIRS] [--llama-quantize]

rwkvcpu: ``rwkvcpu convert MODEL.pth OUT.gguf --type T`` (one step, no torch).
llama.cpp: ``tools/pth_to_hf.py`` (not timed: users download HF folders), then
``convert_hf_to_gguf.py HF --outtype f16`` (needs torch + transformers on ``--llama-pythonpath``),
then for quantized types ``llama_model_quantize`` through llama-cpp-python from the f16 file.
Every step runs as its own process; peak RSS is that process's ru_maxrss.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    with tempfile.TemporaryFile() as log:       # a file, not a pipe: a chatty child must not block
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        log.seek(0)
        err = log.read().decode(errors="replace")
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return dt, ru.ru_maxrss / 1024


QUANT = ("import llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); "
         "p.ftype = int(sys.argv[3]); p.nthread = int(sys.argv[4]); "
         "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pth", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--llama-convert", help="path of llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--llama-pythonpath", default="", help="PYTHONPATH for it (gguf-py, torch, transformers)")
    ap.add_argument("--llama-quantize", action="store_true", help="quantize with llama-cpp-python")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from rwkvcpu.convert import ALIASES, FTYPES
    work = a.workdir or tempfile.mkdtemp(prefix="bench-convert-")
    size = os.path.getsize(a.pth) / 2 ** 20
    print(f"model {a.pth} ({size:.0f} MiB), {a.threads} threads, files in {work}", flush=True)
    print(f"| step | type | wall s | peak RSS MiB |\n|---|---|---|---|")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads))
    types = [ALIASES.get(t, t) for t in a.types.split(",")]
    for t in types:
        out = os.path.join(work, f"ours-{t}.gguf")
        dt, rss = run([sys.executable, "-m", "rwkvcpu.cli", "convert", a.pth, out, "--type", t,
                       "--vocab", a.vocab, "--force"], env)
        print(f"| rwkvcpu convert .pth -> GGUF | {t} | {dt:.1f} | {rss:.0f} |", flush=True)
    if a.llama_convert:
        hf = os.path.join(work, "hf")
        run([sys.executable, os.path.join(ROOT, "tools", "pth_to_hf.py"), a.pth, hf, "--vocab", a.vocab])
        lenv = dict(env, PYTHONPATH=a.llama_pythonpath)
        f16 = os.path.join(work, "llama-f16.gguf")
        dt, rss = run([sys.executable, a.llama_convert, hf, "--outtype", "f16", "--outfile", f16], lenv)
        print(f"| llama.cpp convert_hf_to_gguf.py HF -> GGUF | f16 | {dt:.1f} | {rss:.0f} |", flush=True)
        if a.llama_quantize:
            for t in types:
                if t in ("f16", "f32", "bf16"):
                    continue
                out = os.path.join(work, f"llama-{t}.gguf")
                dt2, rss2 = run([sys.executable, "-c", QUANT, f16, out, str(FTYPES[t][0]), str(a.threads)], env)
                print(f"| llama.cpp convert + llama_model_quantize | {t} | {dt + dt2:.1f} "
                      f"| {max(rss, rss2):.0f} |", flush=True)


if __name__ == "__main__":
    main()
