"""BlinkDL ``.pth`` (torch.save zip) -> Checkpoint, without torch and without running code.

A ``.pth`` is a zip holding ``data.pkl`` (a pickle describing the state dict)
and one raw storage file per tensor under ``data/``.  A pickle can call any
importable function, so ``SafeUnpickler.find_class`` resolves only the few
globals a state dict needs, to local stand-ins; anything else is refused with
its name before any object is built.  Storages are stored uncompressed, so
tensors are ``np.memmap`` views of the zip file itself.
"""
from __future__ import annotations

import collections
import pickle
import re
import struct
import zipfile

import numpy as np

from rwkvcpu.kernels import dequant as dq

from .checkpoint import (Checkpoint, HParams, LayerWeights, LoadError, QTensor, Weights,
                         f32, validate_weights)


class UnsafePickleError(LoadError):
    """The pickle references a global outside the allow-list."""


# torch storage class name -> (numpy storage dtype, tag)
_STORAGES = {
    "FloatStorage": (np.float32, "f32"), "HalfStorage": (np.float16, "f16"),
    "BFloat16Storage": (np.uint16, "bf16"), "DoubleStorage": (np.float64, "f64"),
    "LongStorage": (np.int64, "i64"), "IntStorage": (np.int32, "i32"),
    "ShortStorage": (np.int16, "i16"), "CharStorage": (np.int8, "i8"),
    "ByteStorage": (np.uint8, "u8"), "BoolStorage": (np.bool_, "bool"),
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype, self.tag = _STORAGES[name]


class StoredTensor:
    """A tensor of the pickle: a NumPy view of its storage, plus its torch dtype tag."""

    def __init__(self, array: np.ndarray, tag: str):
        self.array = array
        self.tag = tag

    @property
    def shape(self):
        return self.array.shape

    def to_f32(self) -> np.ndarray:
        if self.tag == "bf16":
            return dq.bf16_to_f32(self.array)
        return np.ascontiguousarray(self.array, dtype=np.float32)


def _rebuild_tensor(storage, offset, size, stride, *args):
    arr, tag = storage
    itemsize = arr.dtype.itemsize
    size, stride = tuple(size), tuple(stride)
    need = offset + (sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0)
    if need > arr.shape[0]:
        raise LoadError(f"tensor of shape {list(size)} reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=size,
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return StoredTensor(view, tag)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, storage_loader, path):
        super().__init__(fileobj)
        self._storage_loader = storage_loader
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"{self._path}: refusing to load: the pickle references the global {module}.{name}, "
            "which a model state dict never needs (a .pth is a pickle and could run code)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        stype, key, numel = pid[1], str(pid[2]), int(pid[4])
        return self._storage_loader(key, stype, numel)


def _member_offset(f, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored zip member's data (after its local header)."""
    f.seek(info.header_offset)
    hdr = f.read(30)
    if len(hdr) < 30 or hdr[:4] != b"PK\x03\x04":
        raise LoadError("bad zip local header")
    n, m = struct.unpack("<HH", hdr[26:30])
    return info.header_offset + 30 + n + m


def read_pth_state_dict(path: str, allow_list: bool = False) -> dict:
    """The pickled dict (or, with ``allow_list``, list) of a torch zip file, tensors as StoredTensor
    (memory-mapped where stored)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise LoadError(f"{path}: not a readable torch zip file ({e}); the file may be truncated") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise LoadError(f"{path}: zip file has no data.pkl: not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        bo = prefix + "byteorder"
        if bo in names and zf.read(bo).strip() not in (b"little", b""):
            raise LoadError(f"{path}: big-endian torch files are not supported")
        infos = {i.filename: i for i in zf.infolist()}
        raw_file = open(path, "rb")

        def load_storage(key, stype, numel):
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise LoadError(f"{path}: storage data/{key} is missing from the zip")
            nbytes = numel * np.dtype(stype.dtype).itemsize
            if info.file_size < nbytes:
                raise LoadError(f"{path}: storage data/{key} holds {info.file_size} bytes, expected {nbytes}")
            if info.compress_type == zipfile.ZIP_STORED:
                off = _member_offset(raw_file, info)
                arr = np.asarray(np.memmap(path, dtype=stype.dtype, mode="r", offset=off, shape=(numel,)))
            else:
                arr = np.frombuffer(zf.read(info), dtype=stype.dtype, count=numel)
            return arr, stype.tag

        try:
            with zf.open(pkl[0]) as fh:
                obj = SafeUnpickler(fh, load_storage, path).load()
        except LoadError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, zipfile.BadZipFile) as e:
            raise LoadError(f"{path}: damaged pickle in {pkl[0]} ({type(e).__name__}: {e})") from None
        finally:
            raw_file.close()
    if not isinstance(obj, dict) and not (allow_list and isinstance(obj, list)):
        raise LoadError(f"{path}: the pickle holds a {type(obj).__name__}, expected a state dict")
    return obj


_PTH_LAYER = {   # container field -> name after "blocks.N."
    "ln1_w": "ln1.weight", "ln1_b": "ln1.bias", "ln2_w": "ln2.weight", "ln2_b": "ln2.bias",
    "x_r": "att.x_r", "x_w": "att.x_w", "x_k": "att.x_k", "x_v": "att.x_v", "x_a": "att.x_a",
    "x_g": "att.x_g", "w0": "att.w0", "a0": "att.a0", "v0": "att.v0",
    "k_k": "att.k_k", "k_a": "att.k_a", "r_k": "att.r_k",
    "w1": "att.w1", "w2": "att.w2", "a1": "att.a1", "a2": "att.a2",
    "v1": "att.v1", "v2": "att.v2", "g1": "att.g1", "g2": "att.g2",
    "receptance": "att.receptance.weight", "key": "att.key.weight",
    "value": "att.value.weight", "output": "att.output.weight",
    "ln_x_w": "att.ln_x.weight", "ln_x_b": "att.ln_x.bias",
    "ffn_x_k": "ffn.x_k", "ffn_key": "ffn.key.weight", "ffn_value": "ffn.value.weight",
}
_TAG_QTYPE = {"f32": dq.F32, "f16": dq.F16, "bf16": dq.BF16}


def _qtensor(path, name, t: StoredTensor) -> QTensor:
    if t.tag not in _TAG_QTYPE:
        raise LoadError(f"{path}: tensor {name} has dtype {t.tag}; expected bf16, f16 or f32")
    if t.array.ndim != 2:
        raise LoadError(f"{path}: tensor {name} has shape {list(t.shape)}, expected a matrix")
    raw = t.array if t.array.flags["C_CONTIGUOUS"] else np.ascontiguousarray(t.array)
    return QTensor(name, _TAG_QTYPE[t.tag], tuple(raw.shape), raw)


def load_pth(path: str, vocab: list[bytes] | None = None) -> Checkpoint:
    return checkpoint_from_blinkdl(path, read_pth_state_dict(path), "pth", vocab)


def checkpoint_from_blinkdl(path: str, sd: dict, fmt: str, vocab: list[bytes] | None = None,
                            norm_eps: float = 1e-5, names: dict | None = None) -> Checkpoint:
    """A Checkpoint from a state dict in BlinkDL's names (``blocks.N.att.w1`` ...), tensors as
    StoredTensor.  ``names`` maps a BlinkDL name to the name the file uses, for error messages."""
    names = names or {}

    def get(name) -> StoredTensor:
        t = sd.get(name)
        if t is None:
            raise LoadError(f"{path}: missing tensor {names.get(name, name)}")
        if not isinstance(t, StoredTensor):
            raise LoadError(f"{path}: entry {names.get(name, name)} is a {type(t).__name__}, not a tensor")
        return t

    layer_ids = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if not layer_ids:
        raise LoadError(f"{path}: no {'model.layers.N' if names else 'blocks.N'}.* tensors: "
                        "not an RWKV checkpoint")
    n_layer = max(layer_ids) + 1
    if "blocks.0.att.r_k" not in sd:
        raise LoadError(f"{path}: missing tensor {names.get('blocks.0.att.r_k', 'blocks.0.att.r_k')}: "
                        "not an RWKV-7 (x070) checkpoint")
    emb = get("emb.weight")
    V, C = emb.shape
    H, N = get("blocks.0.att.r_k").shape
    hp = HParams(
        n_layer=n_layer, n_embd=int(C), head_size=int(N),
        n_ffn=int(get("blocks.0.ffn.key.weight").shape[0]),
        rank_w=int(get("blocks.0.att.w1").shape[1]), rank_a=int(get("blocks.0.att.a1").shape[1]),
        rank_v=int(get("blocks.1.att.v1").shape[1]) if n_layer > 1 else 0,
        rank_g=int(get("blocks.0.att.g1").shape[1]), vocab_size=int(V),
        norm_eps=float(norm_eps), file_type=emb.tag.upper())
    hp.validate(path)
    if H * N != C:
        raise LoadError(f"{path}: tensor {names.get('blocks.0.att.r_k', 'blocks.0.att.r_k')} is [{H}, {N}] "
                        f"but n_embd is {C}")
    layers = []
    for i in range(n_layer):
        p = f"blocks.{i}."
        fields = {}
        for fld, suffix in _PTH_LAYER.items():
            name = p + suffix
            if i == 0 and fld in ("v0", "v1", "v2"):
                fields[fld] = None          # unused in layer 0, absent in official files
                continue
            if fld in ("receptance", "key", "value", "output", "ffn_key", "ffn_value"):
                fields[fld] = _qtensor(path, names.get(name, name), get(name))
            elif fld[0] in "wavg" and fld[1:] in ("1", "2"):
                fields[fld] = f32(get(name).to_f32().T)     # x @ w1 in the file -> [out, in]
            else:
                fields[fld] = f32(get(name).to_f32().reshape(-1))
        layers.append(LayerWeights(**fields))
    w = Weights(emb=_qtensor(path, names.get("emb.weight", "emb.weight"), emb),
                ln0_w=f32(get("blocks.0.ln0.weight").to_f32()), ln0_b=f32(get("blocks.0.ln0.bias").to_f32()),
                layers=layers, ln_out_w=f32(get("ln_out.weight").to_f32()),
                ln_out_b=f32(get("ln_out.bias").to_f32()),
                head=_qtensor(path, names.get("head.weight", "head.weight"), get("head.weight")))
    validate_weights(path, hp, w)
    table = [(names.get(k, k), v.tag.upper(), tuple(v.shape), int(v.array.nbytes)) for k, v in sd.items()
             if isinstance(v, StoredTensor)]
    return Checkpoint(path=path, format=fmt, hparams=hp, weights=w, vocab=vocab, tensor_table=table)
