"""Model file loaders: GGUF, BlinkDL .pth and HF-layout folders into one Checkpoint.

    from rwkvcpu.loaders import load
    ckpt = load("model.gguf")          # or a .pth, or an HF folder; the format is read from the bytes
    ckpt.hparams, ckpt.weights, ckpt.vocab
"""
from __future__ import annotations

import os

from .checkpoint import Checkpoint, HParams, LayerWeights, LoadError, QTensor, Weights
from .vocab import find_vocab_beside, load_world_vocab

__all__ = ["load", "detect_format", "Checkpoint", "HParams", "LayerWeights", "LoadError",
           "QTensor", "Weights", "load_world_vocab"]


def detect_format(path: str) -> str:
    """'gguf', 'pth' (torch zip) or 'hf' (a folder with config.json and safetensors, or a
    .safetensors file); from the file's first bytes, not its name."""
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such file")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return "hf"
        raise LoadError(f"{path}: is a directory without config.json; expected a .gguf or .pth model file "
                        "or an HF-layout folder")
    if os.path.basename(path) == "config.json":
        return "hf"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "pth"
    if len(head) == 9 and head[8:9] == b"{":
        return "hf"                       # safetensors: u64 header length, then a JSON object
    if head[:1] == b"\x80":
        raise LoadError(f"{path}: legacy (pre-1.6, non-zip) torch file; re-save it with a recent torch")
    if len(head) == 0:
        raise LoadError(f"{path}: empty file")
    raise LoadError(f"{path}: unknown file format (magic {head[:4]!r}); expected GGUF, a torch .pth zip "
                    "or safetensors")


def load(path: str, vocab: str | None = None) -> Checkpoint:
    """Load any supported RWKV-7 file.  ``vocab``: a World ``.txt`` (for ``.pth``; found beside it if omitted)."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "gguf":
        from .gguf_loader import load_gguf
        ckpt = load_gguf(path)
        if vocab:
            ckpt.vocab = load_world_vocab(vocab)
        return ckpt
    if fmt == "hf":
        from .hf_loader import find_hf_vocab, load_hf
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        vpath = vocab or find_hf_vocab(folder)
        return load_hf(path, load_world_vocab(vpath) if vpath else None)
    from .pth_loader import load_pth
    vpath = vocab or find_vocab_beside(path)
    return load_pth(path, load_world_vocab(vpath) if vpath else None)
