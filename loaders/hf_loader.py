"""HF-layout RWKV-7 (fla-hub: ``config.json`` + safetensors) -> Checkpoint, without torch.

The folder holds ``config.json`` (``model_type: rwkv7``), the weights as
``model.safetensors``, sharded ``model-0000N-of-0000M.safetensors`` with
``model.safetensors.index.json``, or a ``pytorch_model.bin`` (read with the safe
unpickler), and usually the World vocabulary ``rwkv_vocab_v20230424.txt``.

Names follow fla's ``RWKV7ForCausalLM``; each maps to one BlinkDL name, and the
loader then builds the Checkpoint exactly as for a ``.pth``:

=========================================  =================================
fla / HF                                   BlinkDL
=========================================  =================================
model.embeddings.weight                    emb.weight
model.layers.0.pre_norm.*                  blocks.0.ln0.*
model.layers.N.attn_norm.* / ffn_norm.*    blocks.N.ln1.* / ln2.*
model.layers.N.attn.x_{r,w,k,v,a,g}        blocks.N.att.x_*
model.layers.N.attn.{k_k,k_a,r_k}          blocks.N.att.{k_k,k_a,r_k}
model.layers.N.attn.{r,k,v,o}_proj.weight  blocks.N.att.{receptance,key,value,output}.weight
model.layers.N.attn.X_lora.lora.0.weight   blocks.N.att.X1, transposed ([rank, C] -> [C, rank])
model.layers.N.attn.X_lora.lora.2.weight   blocks.N.att.X2, transposed ([C, rank] -> [rank, C])
model.layers.N.attn.X_lora.lora.2.bias     blocks.N.att.X0 (X in w, a, v; g has no bias)
model.layers.N.attn.g_norm.*               blocks.N.att.ln_x.*
model.layers.N.ffn.{x_k,key,value}         blocks.N.ffn.*
model.norm.* / lm_head.weight              ln_out.* / head.weight
=========================================  =================================

Layer 0 has no ``v_lora`` (it is unused there); ``tie_word_embeddings`` reuses
the embedding as the head.  A tensor the table does not cover, a config value
that disagrees with the tensors, or a damaged safetensors header is an error
naming the file and the tensor or key.
"""
from __future__ import annotations

import json
import os
import re
import struct

import numpy as np

from .checkpoint import Checkpoint, LoadError
from .pth_loader import StoredTensor, checkpoint_from_blinkdl, read_pth_state_dict
from .vocab import load_world_vocab

# safetensors dtype -> (numpy dtype of the stored bits, StoredTensor tag)
_ST_DTYPES = {"F32": (np.float32, "f32"), "F16": (np.float16, "f16"), "BF16": (np.uint16, "bf16"),
              "F64": (np.float64, "f64"), "I64": (np.int64, "i64"), "I32": (np.int32, "i32"),
              "I16": (np.int16, "i16"), "I8": (np.int8, "i8"), "U8": (np.uint8, "u8"), "BOOL": (np.bool_, "bool")}


def read_safetensors(path: str) -> dict[str, StoredTensor]:
    """Every tensor of a ``.safetensors`` file, memory-mapped, after checking the header."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LoadError(f"{path}: truncated safetensors file ({size} bytes)")
            n = struct.unpack("<Q", head)[0]
            if n > size - 8 or n > 100 * 2 ** 20:
                raise LoadError(f"{path}: safetensors header length {n} does not fit the file ({size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise LoadError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: damaged safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise LoadError(f"{path}: safetensors header is not a JSON object")
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt, shape, (b, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise LoadError(f"{path}: tensor {name}: malformed header entry {info!r:.100}") from None
        if dt not in _ST_DTYPES:
            raise LoadError(f"{path}: tensor {name} has dtype {dt}, which is not supported")
        npdt, tag = _ST_DTYPES[dt]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= b <= e and base + e <= size) or e - b != count * np.dtype(npdt).itemsize:
            raise LoadError(f"{path}: tensor {name}: data offsets [{b}, {e}] do not hold a {dt} tensor of shape "
                            f"{shape} within the file ({size - base} data bytes)")
        arr = (np.asarray(np.memmap(path, dtype=npdt, mode="r", offset=base + b, shape=(count,))) if count
               else np.zeros(0, npdt))
        out[name] = StoredTensor(arr.reshape(shape), tag)
    return out


_DIRECT = {"model.embeddings.weight": "emb.weight", "lm_head.weight": "head.weight",
           "model.norm.weight": "ln_out.weight", "model.norm.bias": "ln_out.bias",
           "model.layers.0.pre_norm.weight": "blocks.0.ln0.weight",
           "model.layers.0.pre_norm.bias": "blocks.0.ln0.bias"}
_LAYER = {"attn_norm.weight": "ln1.weight", "attn_norm.bias": "ln1.bias",
          "ffn_norm.weight": "ln2.weight", "ffn_norm.bias": "ln2.bias",
          **{f"attn.x_{c}": f"att.x_{c}" for c in "rwkvag"},
          "attn.k_k": "att.k_k", "attn.k_a": "att.k_a", "attn.r_k": "att.r_k",
          "attn.r_proj.weight": "att.receptance.weight", "attn.k_proj.weight": "att.key.weight",
          "attn.v_proj.weight": "att.value.weight", "attn.o_proj.weight": "att.output.weight",
          "attn.g_norm.weight": "att.ln_x.weight", "attn.g_norm.bias": "att.ln_x.bias",
          "ffn.x_k": "ffn.x_k", "ffn.key.weight": "ffn.key.weight", "ffn.value.weight": "ffn.value.weight",
          **{f"attn.{x}_lora.lora.0.weight": f"att.{x}1" for x in "wavg"},
          **{f"attn.{x}_lora.lora.2.weight": f"att.{x}2" for x in "wavg"},
          **{f"attn.{x}_lora.lora.2.bias": f"att.{x}0" for x in "wav"}}
_TRANSPOSED = re.compile(r"attn\.[wavg]_lora\.lora\.[02]\.weight$")


def to_blinkdl(path: str, sd: dict) -> tuple[dict, dict]:
    """fla names -> BlinkDL names (LoRA matrices transposed); returns (state dict, BlinkDL -> fla name)."""
    out, names, unknown = {}, {}, []
    for k, t in sd.items():
        k2 = k[len("rwkv7."):] if k.startswith("rwkv7.") else k
        m = re.match(r"model\.layers\.(\d+)\.(.+)$", k2)
        if k2 in _DIRECT:
            b = _DIRECT[k2]
        elif m and m.group(2) in _LAYER:
            b = f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}"
        else:
            unknown.append(k)
            continue
        if isinstance(t, StoredTensor) and _TRANSPOSED.search(k2):
            if t.array.ndim != 2:
                raise LoadError(f"{path}: tensor {k} has shape {list(t.shape)}, expected a matrix")
            t = StoredTensor(t.array.T, t.tag)
        out[b] = t
        names[b] = k
    if unknown:
        raise LoadError(f"{path}: {len(unknown)} tensor(s) this RWKV-7 loader does not know, e.g. "
                        f"{', '.join(sorted(unknown)[:3])}; is this an fla RWKV7ForCausalLM folder?")
    # the fla name of every tensor the builder may ask for, so a missing one is named as the folder names it
    names.update({b: f for f, b in _DIRECT.items() if b not in names})
    n_layer = 1 + max((int(b.split(".")[1]) for b in out if b.startswith("blocks.")), default=0)
    for i in range(n_layer):
        for f, b in _LAYER.items():
            names.setdefault(f"blocks.{i}.{b}", f"model.layers.{i}.{f}")
    return out, names


def _weight_files(folder: str) -> list[str]:
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(idx):
        try:
            with open(idx, encoding="utf-8") as f:
                wm = json.load(f)["weight_map"]
            files = sorted(set(wm.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise LoadError(f"{idx}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        missing = [x for x in files if not os.path.isfile(os.path.join(folder, x))]
        if missing:
            raise LoadError(f"{idx}: lists shard {missing[0]}, which is not in {folder}")
        return [os.path.join(folder, x) for x in files]
    st = sorted(x for x in os.listdir(folder) if x.endswith(".safetensors"))
    if st:
        return [os.path.join(folder, x) for x in st]
    for x in ("pytorch_model.bin", "model.pth"):
        if os.path.isfile(os.path.join(folder, x)):
            return [os.path.join(folder, x)]
    raise LoadError(f"{folder}: no model.safetensors (or pytorch_model.bin) in this HF folder")


def _config(folder: str) -> dict:
    p = os.path.join(folder, "config.json")
    if not os.path.isfile(p):
        return {}
    try:
        with open(p, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise LoadError(f"{p}: unreadable config ({e})") from None
    if not isinstance(cfg, dict):
        raise LoadError(f"{p}: expected a JSON object")
    mt = cfg.get("model_type")
    if mt is not None and mt != "rwkv7":
        raise LoadError(f"{p}: model_type is {mt!r}; this loader reads RWKV-7 (model_type 'rwkv7')")
    return cfg


# config key -> HParams field it must agree with
_CONFIG_CHECKS = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "head_dim": "head_size",
                  "intermediate_size": "n_ffn", "vocab_size": "vocab_size", "decay_low_rank_dim": "rank_w",
                  "a_low_rank_dim": "rank_a", "v_low_rank_dim": "rank_v", "gate_low_rank_dim": "rank_g"}


def load_hf(path: str, vocab: list[bytes] | None = None) -> Checkpoint:
    """An HF folder (or one of its .safetensors files, or its config.json) -> Checkpoint."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    cfg = _config(folder)
    files = ([path] if os.path.isfile(path) and path.endswith(".safetensors")
             and not os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
             else _weight_files(folder))
    sd = {}
    for f in files:
        part = read_safetensors(f) if f.endswith(".safetensors") else read_pth_state_dict(f)
        dup = set(part) & set(sd)
        if dup:
            raise LoadError(f"{f}: tensor {sorted(dup)[0]} also appears in another shard")
        sd.update(part)
    if "lm_head.weight" not in sd and cfg.get("tie_word_embeddings") and "model.embeddings.weight" in sd:
        sd["lm_head.weight"] = sd["model.embeddings.weight"]
    bl, names = to_blinkdl(folder, sd)
    ck = checkpoint_from_blinkdl(folder, bl, "hf", vocab, norm_eps=float(cfg.get("norm_eps", 1e-5)),
                                 names=names)
    hp = ck.hparams
    for key, fld in _CONFIG_CHECKS.items():
        if key in cfg and not (fld == "rank_v" and hp.n_layer == 1) and int(cfg[key]) != getattr(hp, fld):
            raise LoadError(f"{os.path.join(folder, 'config.json')}: {key} is {cfg[key]} but the tensors "
                            f"give {getattr(hp, fld)}")
    return ck


def find_hf_vocab(folder: str) -> str | None:
    p = os.path.join(folder, "rwkv_vocab_v20230424.txt")
    return p if os.path.isfile(p) else None


__all__ = ["load_hf", "read_safetensors", "to_blinkdl", "find_hf_vocab", "load_world_vocab"]
