"""The one in-memory model description every file format is mapped onto.

Orientation convention (stated once, used everywhere): every matrix is stored
as ``[out, in]`` in NumPy order, i.e. a row per output feature, the way torch's
``Linear.weight`` and ggml's ``mul_mat`` (ne0 = in, fastest) lay it out.  The
GGUF loader gets this for free by reversing ggml's ``ne``; the ``.pth`` loader
transposes the low-rank ``w1/a1/v1/g1`` ([C, D] in BlinkDL files, used as
``x @ w1``) and ``w2/...`` ([D, C]) once, at load time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from rwkvcpu.kernels import dequant as dq


class LoadError(ValueError):
    """A model file is not what it should be.  The message names the file and the tensor or key."""


@dataclass(frozen=True)
class HParams:
    n_layer: int
    n_embd: int
    head_size: int
    n_ffn: int
    rank_w: int          # decay low-rank dim
    rank_a: int          # in-context learning rate (iclr) low-rank dim
    rank_v: int          # value-residual low-rank dim
    rank_g: int          # gate low-rank dim
    vocab_size: int
    norm_eps: float = 1e-5
    file_type: str = "F32"
    arch: str = "rwkv7"

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def state_floats(self) -> int:
        """Floats of recurrent state per sequence: token shift (2C) + wkv (C*N) per layer."""
        return self.n_layer * (2 * self.n_embd + self.n_embd * self.head_size)

    def shape_key(self) -> dict:
        """What a state depends on (everything but the file type and vocabulary)."""
        return {"arch": self.arch, "n_layer": self.n_layer, "n_embd": self.n_embd,
                "head_size": self.head_size}

    def shape_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.shape_key(), sort_keys=True).encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["n_head"] = self.n_head
        return d

    def validate(self, where: str) -> None:
        if self.head_size <= 0 or self.n_embd % self.head_size:
            raise LoadError(f"{where}: n_embd {self.n_embd} is not divisible by head_size {self.head_size}")
        for k in ("n_layer", "n_embd", "n_ffn", "rank_w", "rank_a", "rank_g", "vocab_size"):
            if getattr(self, k) <= 0:
                raise LoadError(f"{where}: hyper-parameter {k} = {getattr(self, k)} must be positive")


@dataclass
class QTensor:
    """A weight matrix kept in its file's encoding (a view of the mapped file).

    ``raw`` is float32/float16 ``[rows, cols]`` for F32/F16, uint16 for BF16,
    and uint8 ``[rows, row_bytes]`` of ggml blocks for quantized types.
    """
    name: str
    qtype: int
    shape: tuple[int, int]
    raw: np.ndarray

    @property
    def type_name(self) -> str:
        return dq.TYPE_NAMES.get(self.qtype, str(self.qtype))

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    @property
    def row_bytes(self) -> np.ndarray:
        """The raw rows as uint8 [rows, row_bytes] (a view of the file), for the kernels."""
        rb = self.__dict__.get("_row_bytes")
        if rb is None:
            rb = self.__dict__["_row_bytes"] = dq.as_row_bytes(self.raw)
        return rb

    def dequantize(self, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """Rows [r0, r1) as float32 [rows, cols]."""
        return dq.dequantize(self.raw[r0:r1], self.qtype, self.shape[1])

    def rows(self, ids) -> np.ndarray:
        """Selected rows (e.g. embedding lookup) as float32, on one thread: a 512-token prompt's
        embeddings are ~1 ms of work, and the one type's kernel compiles in ~1 s, not ~8."""
        ids = np.asarray(ids, dtype=np.int64)
        return dq.dequantize(self.raw[ids], self.qtype, self.shape[1], serial=True)

    @classmethod
    def from_array(cls, name: str, a: np.ndarray) -> "QTensor":
        a = np.ascontiguousarray(a, dtype=np.float32)
        return cls(name, dq.F32, tuple(a.shape), a)


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


# Names of the per-layer fields, in one place.  Vectors are float32 [C]
# (r_k flattened from [H, N]); low-rank matrices float32 [out, in]; the big
# projections are QTensors.
LAYER_VECTORS = ("ln1_w", "ln1_b", "ln2_w", "ln2_b",
                 "x_r", "x_w", "x_k", "x_v", "x_a", "x_g",
                 "w0", "a0", "v0", "k_k", "k_a", "r_k", "ln_x_w", "ln_x_b", "ffn_x_k")
LAYER_LOWRANK = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
LAYER_MATRICES = ("receptance", "key", "value", "output", "ffn_key", "ffn_value")


@dataclass
class LayerWeights:
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    x_r: np.ndarray
    x_w: np.ndarray
    x_k: np.ndarray
    x_v: np.ndarray
    x_a: np.ndarray
    x_g: np.ndarray
    w0: np.ndarray
    w1: np.ndarray      # [rank_w, C]
    w2: np.ndarray      # [C, rank_w]
    a0: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    v0: np.ndarray | None   # layer 0 has no value residual (v_first = v)
    v1: np.ndarray | None
    v2: np.ndarray | None
    g1: np.ndarray
    g2: np.ndarray
    k_k: np.ndarray
    k_a: np.ndarray
    r_k: np.ndarray     # [C] = [H, N] flattened
    receptance: QTensor
    key: QTensor
    value: QTensor
    output: QTensor
    ln_x_w: np.ndarray
    ln_x_b: np.ndarray
    ffn_x_k: np.ndarray
    ffn_key: QTensor    # [F, C]
    ffn_value: QTensor  # [C, F]
    # GGUF files with F16 low-rank matrices (llama.cpp's F16 files: a/v/g; w stays F32): those
    # matrices' own bits (uint16 views of the file, [out, in] like the float32 fields), read by
    # the decode kernel at T = 1: half the bytes per token of the float32 copies, which prompts
    # and batches keep using (sgemm).
    lowrank_f16: dict | None = None


@dataclass
class Weights:
    emb: QTensor        # [V, C]
    ln0_w: np.ndarray
    ln0_b: np.ndarray
    layers: list[LayerWeights]
    ln_out_w: np.ndarray
    ln_out_b: np.ndarray
    head: QTensor       # [V, C]

    def matrices(self):
        """(name, QTensor) for every big matrix, in file order."""
        yield "emb", self.emb
        for i, L in enumerate(self.layers):
            for k in LAYER_MATRICES:
                yield f"blocks.{i}.{k}", getattr(L, k)
        yield "head", self.head


def readonly(a):
    """a, or a read-only view of it."""
    if isinstance(a, np.ndarray) and a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def freeze_weights(w: Weights) -> None:
    """Make every array of w read-only (views; nothing is copied).  Writability is part of the
    array type Numba compiles a kernel for: a .pth's converted arrays, a GGUF's widened F16
    vectors and its mapped F32 ones would otherwise each compile the layer kernels again (tens
    of seconds a kernel on a first run).  Weights are never written after loading."""
    for obj in [w, *w.layers]:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, QTensor):
                v.raw = readonly(v.raw)
                v.__dict__.pop("_row_bytes", None)
            elif isinstance(v, dict):
                setattr(obj, f.name, {k: readonly(a) for k, a in v.items()})
            else:
                setattr(obj, f.name, readonly(v))


@dataclass
class Checkpoint:
    path: str
    format: str                     # "gguf" or "pth"
    hparams: HParams
    weights: Weights
    vocab: list[bytes] | None       # id -> token bytes (id 0 may be b"")
    metadata: dict = field(default_factory=dict)
    tensor_table: list[tuple[str, str, tuple, int]] = field(default_factory=list)  # name, type, shape, bytes


def check_shape(path: str, name: str, a, expected: tuple) -> None:
    got = tuple(int(x) for x in a.shape)
    if got != tuple(expected):
        raise LoadError(f"{path}: tensor {name} has shape {list(got)}, expected {list(expected)}")


def validate_weights(path: str, hp: HParams, w: Weights) -> None:
    """Check every tensor's shape against the hyper-parameters (names in the message)."""
    C, F, V, N = hp.n_embd, hp.n_ffn, hp.vocab_size, hp.head_size
    check_shape(path, "emb", w.emb, (V, C))
    check_shape(path, "head", w.head, (V, C))
    for k in ("ln0_w", "ln0_b", "ln_out_w", "ln_out_b"):
        check_shape(path, k, getattr(w, k), (C,))
    ranks = {"w": hp.rank_w, "a": hp.rank_a, "v": hp.rank_v, "g": hp.rank_g}
    for i, L in enumerate(w.layers):
        p = f"blocks.{i}."
        for k in LAYER_VECTORS:
            v = getattr(L, k)
            if v is None and k == "v0" and i == 0:
                continue
            check_shape(path, p + k, v, (C,))
        for k in LAYER_LOWRANK:
            v = getattr(L, k)
            if v is None and i == 0 and k[0] == "v":
                continue
            D = ranks[k[0]]
            check_shape(path, p + k, v, (D, C) if k[1] == "1" else (C, D))
        for k in ("receptance", "key", "value", "output"):
            check_shape(path, p + k, getattr(L, k), (C, C))
        check_shape(path, p + "ffn_key", L.ffn_key, (F, C))
        check_shape(path, p + "ffn_value", L.ffn_value, (C, F))
        if i > 0 and L.v0 is None:
            raise LoadError(f"{path}: missing tensor blocks.{i}.att.v0 (value residual of layer {i})")
