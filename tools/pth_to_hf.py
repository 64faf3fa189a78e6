"""BlinkDL .pth -> HF-layout folder (fla RWKV7ForCausalLM names, config.json, safetensors), without torch.

    python tools/pth_to_hf.py model.pth out_dir [--vocab rwkv_vocab_v20230424.txt]

For comparisons with llama.cpp's ``convert_hf_to_gguf.py``, which reads this layout (tests check that
its output on such a folder equals the fixture GGUF), and for testing rwkvcpu's own HF loader.
Tensors are written as float32, like the fixture HF folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_safetensors(path, tensors: dict) -> None:
    """u64 header length, JSON header, raw little-endian data (F32 / F16 / BF16 as uint16 bits)."""
    header, off = {}, 0
    arrays = []
    for k, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {np.float32: "F32", np.float16: "F16", np.uint16: "BF16"}[a.dtype.type]
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        arrays.append(a)
        off += a.nbytes
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for a in arrays:
            a.tofile(f)


def fla_state_dict(pth) -> dict:
    """The .pth in fla's names and orientation, as float32."""
    from rwkvcpu.loaders.pth_loader import read_pth_state_dict
    sd = {k: v.to_f32() for k, v in read_pth_state_dict(str(pth)).items()}
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    C = sd["emb.weight"].shape[1]
    out = {"model.embeddings.weight": sd["emb.weight"], "lm_head.weight": sd["head.weight"],
           "model.norm.weight": sd["ln_out.weight"], "model.norm.bias": sd["ln_out.bias"],
           "model.layers.0.pre_norm.weight": sd["blocks.0.ln0.weight"],
           "model.layers.0.pre_norm.bias": sd["blocks.0.ln0.bias"]}
    for i in range(n_layer):
        b, L = f"blocks.{i}.", f"model.layers.{i}."
        for s, d in (("ln1", "attn_norm"), ("ln2", "ffn_norm"), ("att.ln_x", "attn.g_norm")):
            out[f"{L}{d}.weight"], out[f"{L}{d}.bias"] = sd[f"{b}{s}.weight"], sd[f"{b}{s}.bias"]
        for c in "rwkvag":
            out[f"{L}attn.x_{c}"] = sd[f"{b}att.x_{c}"].reshape(1, 1, C)
        for k in ("k_k", "k_a"):
            out[f"{L}attn.{k}"] = sd[f"{b}att.{k}"].reshape(C)
        out[f"{L}attn.r_k"] = sd[f"{b}att.r_k"]
        for s, d in (("receptance", "r"), ("key", "k"), ("value", "v"), ("output", "o")):
            out[f"{L}attn.{d}_proj.weight"] = sd[f"{b}att.{s}.weight"]
        for x in ("w", "a", "g") + (("v",) if i else ()):       # layer 0 has no v_lora in fla
            out[f"{L}attn.{x}_lora.lora.0.weight"] = sd[f"{b}att.{x}1"].T
            out[f"{L}attn.{x}_lora.lora.2.weight"] = sd[f"{b}att.{x}2"].T
            if x != "g":
                out[f"{L}attn.{x}_lora.lora.2.bias"] = sd[f"{b}att.{x}0"].reshape(C)
        out[f"{L}ffn.x_k"] = sd[f"{b}ffn.x_k"].reshape(C)
        out[f"{L}ffn.key.weight"] = sd[f"{b}ffn.key.weight"]
        out[f"{L}ffn.value.weight"] = sd[f"{b}ffn.value.weight"]
    return out


def config_for(sd: dict) -> dict:
    C = sd["model.embeddings.weight"].shape[1]
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    hd = sd["model.layers.0.attn.r_k"].shape[1]
    return {"architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "hidden_size": C, "head_dim": hd,
            "norm_eps": 1e-05, "num_hidden_layers": n_layer,
            "intermediate_size": sd["model.layers.0.ffn.key.weight"].shape[0],
            "vocab_size": sd["model.embeddings.weight"].shape[0],
            "decay_low_rank_dim": sd["model.layers.0.attn.w_lora.lora.0.weight"].shape[0],
            "a_low_rank_dim": sd["model.layers.0.attn.a_lora.lora.0.weight"].shape[0],
            "v_low_rank_dim": (sd["model.layers.1.attn.v_lora.lora.0.weight"].shape[0] if n_layer > 1 else 32),
            "gate_low_rank_dim": sd["model.layers.0.attn.g_lora.lora.0.weight"].shape[0],
            "torch_dtype": "float32"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pth")
    ap.add_argument("out_dir")
    ap.add_argument("--vocab", help="World vocabulary .txt to copy in as rwkv_vocab_v20230424.txt")
    a = ap.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    sd = fla_state_dict(a.pth)
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(config_for(sd), f, indent=1)
    write_safetensors(os.path.join(a.out_dir, "model.safetensors"), sd)
    if a.vocab:
        shutil.copy(a.vocab, os.path.join(a.out_dir, "rwkv_vocab_v20230424.txt"))
    print(f"{a.out_dir}: {len(sd)} tensors")


if __name__ == "__main__":
    main()
