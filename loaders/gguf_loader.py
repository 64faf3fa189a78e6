"""GGUF (llama.cpp's format) -> Checkpoint, memory-mapped (``gguf_format.GGUFFile``).

ggml lists a tensor's dimensions fastest-first (``ne[0]`` = columns); NumPy order is the
reverse (rows first), which is the ``[out, in]`` orientation of ``checkpoint.py``.  That
reversal is the only dimension-order fact this module relies on, and it lives in ``_tensor``.
"""
from __future__ import annotations

import numpy as np

from rwkvcpu.kernels import dequant as dq

from .checkpoint import (LAYER_LOWRANK, Checkpoint, HParams, LayerWeights, LoadError, QTensor, Weights,
                         f32, validate_weights)
from .vocab import unescape_gguf_token

ARCH = "rwkv7"
LERP_ORDER = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")   # rows of time_mix_lerp_fused

_GGUF_LAYER = {   # container field -> GGUF tensor name suffix (after "blk.N.")
    "ln1_w": "attn_norm.weight", "ln1_b": "attn_norm.bias",
    "ln2_w": "attn_norm_2.weight", "ln2_b": "attn_norm_2.bias",
    "w0": "time_mix_w0.weight", "w1": "time_mix_w1.weight", "w2": "time_mix_w2.weight",
    "a0": "time_mix_a0.weight", "a1": "time_mix_a1.weight", "a2": "time_mix_a2.weight",
    "v0": "time_mix_v0.weight", "v1": "time_mix_v1.weight", "v2": "time_mix_v2.weight",
    "g1": "time_mix_g1.weight", "g2": "time_mix_g2.weight",
    "k_k": "time_mix_k_k.weight", "k_a": "time_mix_k_a.weight", "r_k": "time_mix_r_k.weight",
    "receptance": "time_mix_receptance.weight", "key": "time_mix_key.weight",
    "value": "time_mix_value.weight", "output": "time_mix_output.weight",
    "ln_x_w": "time_mix_ln.weight", "ln_x_b": "time_mix_ln.bias",
    "ffn_x_k": "channel_mix_lerp_k.weight",
    "ffn_key": "channel_mix_key.weight", "ffn_value": "channel_mix_value.weight",
}
_MATRIX_FIELDS = {"receptance", "key", "value", "output", "ffn_key", "ffn_value"}


def _field(reader, key, default=None):
    return reader.get(key, default)


def _type_name(qtype: int) -> str:
    try:
        from gguf import GGMLQuantizationType
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return f"type {qtype}"


def _tensor(path: str, t) -> QTensor:
    """One tensor of the file -> QTensor (a view of the mmap, rows first)."""
    qtype = int(t.type)
    if qtype not in dq.BLOCKS:
        raise LoadError(f"{path}: tensor {t.name} has ggml type {_type_name(qtype)}, "
                        f"which rwkvcpu does not support (supported: {', '.join(dq.TYPE_NAMES.values())})")
    ne = [int(x) for x in t.ne]                  # ggml order, ne[0] fastest
    shape = tuple(reversed(ne))                  # NumPy order
    cols = ne[0]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    blk, nbytes = dq.BLOCKS[qtype]
    if cols % blk:
        raise LoadError(f"{path}: tensor {t.name}: row length {cols} is not a multiple of "
                        f"the {dq.TYPE_NAMES[qtype]} block size {blk}")
    data = t.data
    if qtype == dq.F32:
        raw = data.view(np.float32).reshape(rows, cols)
    elif qtype == dq.F16:
        raw = data.view(np.float16).reshape(rows, cols)
    elif qtype == dq.BF16:
        raw = data.view(np.uint16).reshape(rows, cols)
    else:
        raw = data.reshape(rows, cols // blk * nbytes)
    return QTensor(t.name, qtype, (rows, cols) if len(shape) > 1 else (cols,), raw)


def load_gguf(path: str) -> Checkpoint:
    from .gguf_format import GGUFFile
    reader = GGUFFile(path)
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise LoadError(f"{path}: this file is a {arch} model; rwkvcpu runs {ARCH}")

    def kv(key, default=None, required=True):
        v = _field(reader, f"{ARCH}.{key}", default)
        if v is None and required:
            raise LoadError(f"{path}: missing metadata key {ARCH}.{key}")
        return v

    tensors = {}
    for t in reader.tensors:
        tensors[t.name] = _tensor(path, t)

    def get(name) -> QTensor:
        if name not in tensors:
            raise LoadError(f"{path}: missing tensor {name}")
        return tensors[name]

    def vec(name) -> np.ndarray:
        q = get(name)
        return f32(q.dequantize().reshape(-1)) if q.qtype != dq.F32 else f32(q.raw.reshape(-1))

    def mat(name) -> np.ndarray:
        q = get(name)
        return f32(q.dequantize()) if q.qtype != dq.F32 else q.raw

    n_layer = int(kv("block_count"))
    n_embd = int(kv("embedding_length"))
    emb = get("token_embd.weight")
    vocab_size = emb.shape[0]
    # The low-rank dims are in the metadata; older files may lack them -> infer from shapes.
    def rank(key, tname):
        v = kv(key, required=False)
        return int(v) if v is not None else get(tname).shape[0]
    hp = HParams(
        n_layer=n_layer, n_embd=n_embd, head_size=int(kv("wkv.head_size")),
        n_ffn=int(kv("feed_forward_length")),
        rank_w=rank("attention.decay_lora_rank", "blk.0.time_mix_w1.weight"),
        rank_a=rank("attention.iclr_lora_rank", "blk.0.time_mix_a1.weight"),
        rank_v=rank("attention.value_residual_mix_lora_rank",
                    "blk.1.time_mix_v1.weight" if n_layer > 1 else "blk.0.time_mix_v1.weight"),
        rank_g=rank("attention.gate_lora_rank", "blk.0.time_mix_g1.weight"),
        vocab_size=vocab_size,
        norm_eps=float(kv("attention.layer_norm_epsilon", 1e-5, required=False)),
        file_type=_file_type_name(tensors),
    )
    hp.validate(path)
    layers = []
    for i in range(n_layer):
        p = f"blk.{i}."
        fields = {}
        for fld, suffix in _GGUF_LAYER.items():
            if fld in _MATRIX_FIELDS:
                fields[fld] = get(p + suffix)
            elif fld[1:] in ("1", "2") or fld in ("w1", "w2"):
                fields[fld] = mat(p + suffix)
            else:
                fields[fld] = vec(p + suffix)
        lerp = mat(p + "time_mix_lerp_fused.weight").reshape(-1, n_embd)
        if lerp.shape[0] != 6:
            raise LoadError(f"{path}: tensor {p}time_mix_lerp_fused.weight has {lerp.shape[0]} lerps, expected 6")
        for j, fld in enumerate(LERP_ORDER):
            fields[fld] = f32(lerp[j])
        if i == 0:   # llama.cpp writes dummy v0/v1/v2 for layer 0; they are never used
            fields["v0"] = fields["v1"] = fields["v2"] = None
        lowrank = {f: get(p + _GGUF_LAYER[f]) for f in LAYER_LOWRANK if fields[f] is not None}
        if any(q.qtype == dq.F16 for q in lowrank.values()):
            fields["lowrank_f16"] = {f: q.raw.view(np.uint16) for f, q in lowrank.items() if q.qtype == dq.F16}
        layers.append(LayerWeights(**fields))
    head = tensors.get("output.weight", emb)    # tied embeddings if no output tensor
    w = Weights(emb=emb, ln0_w=vec("token_embd_norm.weight"), ln0_b=vec("token_embd_norm.bias"),
                layers=layers, ln_out_w=vec("output_norm.weight"), ln_out_b=vec("output_norm.bias"),
                head=head)
    validate_weights(path, hp, w)
    vocab = _gguf_vocab(path, reader)
    meta = {k: _meta_value(v) for k, v in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    table = [(t.name, _type_name(t.type), tuple(int(x) for x in t.ne), int(t.nbytes)) for t in reader.tensors]
    return Checkpoint(path=path, format="gguf", hparams=hp, weights=w, vocab=vocab,
                      metadata=meta, tensor_table=table)


def _meta_value(v):
    if isinstance(v, (list, np.ndarray)) and len(v) > 16:
        return f"[{len(v)} items]"
    return v.tolist() if isinstance(v, np.ndarray) else v


def _file_type_name(tensors) -> str:
    """The dominant weight type, llama.cpp style (e.g. 'Q4_K + Q6_K')."""
    counts: dict[str, int] = {}
    for t in tensors.values():
        if len(t.shape) == 2 and t.qtype != dq.F32:
            counts[t.type_name] = counts.get(t.type_name, 0) + t.nbytes
    if not counts:
        return "F32"
    return " + ".join(sorted(counts, key=lambda k: -counts[k]))


def _gguf_vocab(path, reader) -> list[bytes] | None:
    toks = _field(reader, "tokenizer.ggml.tokens")
    if toks is None:
        return None
    model = _field(reader, "tokenizer.ggml.model")
    if model not in (None, "rwkv"):
        raise LoadError(f"{path}: tokenizer.ggml.model is {model!r}; rwkvcpu reads the RWKV World tokenizer ('rwkv')")
    types = _field(reader, "tokenizer.ggml.token_type")
    # type 3 = control (id 0, "<s>"): not produced by the greedy tokenizer and decodes to nothing
    return [b"" if types is not None and int(types[i]) == 3 else unescape_gguf_token(t)
            for i, t in enumerate(toks)]
