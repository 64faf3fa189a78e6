"""Random RWKV-7 models with real shapes, written as GGUF (llama.cpp's layout), for benchmarks.

    python tools/make_random_model.py --shape 0.1b --type q8_0 -o /tmp/rand-0.1b-q8_0.gguf

Parameters follow RWKV-7's initialisation ranges (lerps in [0,1], decay speeds -6.5..-1.5, k_k ~0.85,
k_a ~1) and matrices are normal with std 1/sqrt(fan_in), like the fixture model.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from rwkvcpu.convert import FTYPES, gguf_tensors, write_gguf
from rwkvcpu.loaders.checkpoint import HParams, LayerWeights, QTensor, Weights

SHAPES = {  # n_layer, n_embd, ffn, (rank_w, rank_a, rank_v, rank_g) as in the released models
    "micro": (2, 256, 256, (32, 32, 32, 32)),   # for the CUDA simulator
    "tiny": (3, 256, 1024, (64, 64, 32, 128)),
    "0.1b": (12, 768, 3072, (64, 64, 32, 128)),
    "0.4b": (24, 1024, 4096, (64, 64, 32, 128)),
    "1.5b": (24, 2048, 8192, (96, 96, 64, 256)),
    "2.9b": (32, 2560, 10240, (96, 96, 64, 320)),
}


def random_weights(shape: str, vocab: int = 65536, seed: int = 0):
    L, C, F, (rw, ra, rv, rg) = SHAPES[shape]
    hp = HParams(n_layer=L, n_embd=C, head_size=64, n_ffn=F, rank_w=rw, rank_a=ra, rank_v=rv,
                 rank_g=rg, vocab_size=vocab)
    rng = np.random.default_rng(seed)

    def mat(rows, cols, name):
        a = rng.standard_normal((rows, cols), dtype=np.float32)
        a *= np.float32(1.0 / np.sqrt(cols))
        return QTensor.from_array(name, a)

    def vec(lo, hi):
        return rng.uniform(lo, hi, C).astype(np.float32)

    layers = []
    for i in range(L):
        f = dict(ln1_w=vec(0.8, 1.2), ln1_b=vec(-0.1, 0.1), ln2_w=vec(0.8, 1.2), ln2_b=vec(-0.1, 0.1),
                 x_r=vec(0, 1), x_w=vec(0, 1), x_k=vec(0, 1), x_v=vec(0, 1), x_a=vec(0, 1), x_g=vec(0, 1),
                 w0=vec(-6.5, -1.5), a0=vec(-0.5, 0.5), v0=vec(0.5, 1.5), k_k=vec(0.8, 0.9),
                 k_a=vec(0.9, 1.1), r_k=vec(-0.3, 0.3), ln_x_w=vec(0.8, 1.2), ln_x_b=vec(-0.1, 0.1),
                 ffn_x_k=vec(0, 1))
        for k, (d, r) in {"w": (rw, 0), "a": (ra, 0), "v": (rv, 0), "g": (rg, 0)}.items():
            f[k + "1"] = mat(d, C, k + "1").raw
            f[k + "2"] = mat(C, d, k + "2").raw * np.float32(0.1)
        for k in ("receptance", "key", "value", "output"):
            f[k] = mat(C, C, k)
        f["ffn_key"], f["ffn_value"] = mat(F, C, "ffn_key"), mat(C, F, "ffn_value")
        if i == 0:
            f["v0"] = f["v1"] = f["v2"] = None
        layers.append(LayerWeights(**f))
    w = Weights(emb=mat(vocab, C, "emb"), ln0_w=vec(0.8, 1.2), ln0_b=vec(-0.1, 0.1), layers=layers,
                ln_out_w=vec(0.8, 1.2), ln_out_b=vec(-0.1, 0.1), head=mat(vocab, C, "head"))
    return hp, w


def write_pth(path, hp, w):
    """BlinkDL-layout float32 .pth (for rwkv pip comparisons), written without torch
    (``interop.write_torch_tensors``)."""
    from rwkvcpu.interop import write_torch_tensors
    t = lambda a: np.ascontiguousarray(a, dtype=np.float32)      # noqa: E731
    v3 = lambda a: t(a).reshape(1, 1, -1)                        # noqa: E731
    sd = {"emb.weight": t(w.emb.dequantize()), "blocks.0.ln0.weight": t(w.ln0_w), "blocks.0.ln0.bias": t(w.ln0_b)}
    for i, L in enumerate(w.layers):
        p = f"blocks.{i}."
        sd.update({p + "ln1.weight": t(L.ln1_w), p + "ln1.bias": t(L.ln1_b),
                   p + "ln2.weight": t(L.ln2_w), p + "ln2.bias": t(L.ln2_b)})
        for k in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            sd[p + "att." + k] = v3(getattr(L, k))
        names = ["w", "a", "g"] + (["v"] if i else [])
        for k in names:
            sd[p + f"att.{k}1"] = t(getattr(L, k + "1").T)      # BlinkDL files use x @ w1: [C, D]
            sd[p + f"att.{k}2"] = t(getattr(L, k + "2").T)
        if i:
            sd[p + "att.v0"] = v3(L.v0)
        sd[p + "att.r_k"] = t(L.r_k).reshape(hp.n_head, hp.head_size)
        for k in ("receptance", "key", "value", "output"):
            sd[p + f"att.{k}.weight"] = t(getattr(L, k).dequantize())
        sd.update({p + "att.ln_x.weight": t(L.ln_x_w), p + "att.ln_x.bias": t(L.ln_x_b),
                   p + "ffn.x_k": v3(L.ffn_x_k), p + "ffn.key.weight": t(L.ffn_key.dequantize()),
                   p + "ffn.value.weight": t(L.ffn_value.dequantize())})
    sd.update({"ln_out.weight": t(w.ln_out_w), "ln_out.bias": t(w.ln_out_b), "head.weight": t(w.head.dequantize())})
    write_torch_tensors(path, sd)


def synthetic_vocab(n: int) -> list[bytes]:
    v = [b""] + [bytes([i]) for i in range(256)]
    v += [f"<{i}>".encode() for i in range(len(v), n)]
    return v[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.1b")
    ap.add_argument("--type", choices=sorted(FTYPES) + ["pth"], default="q8_0",
                    help="a GGUF type, or pth: a float32 BlinkDL .pth")
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    hp, w = random_weights(a.shape, a.vocab, a.seed)
    if a.type == "pth":
        write_pth(a.output, hp, w)
        print(f"{a.output}: {a.shape} pth f32 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return
    ftype_id, target = FTYPES[a.type]
    write_gguf(a.output, hp, gguf_tensors(w, hp), target, ftype_id, synthetic_vocab(a.vocab),
               name=f"random-rwkv7-{a.shape}")
    print(f"{a.output}: {a.shape} {a.type} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
