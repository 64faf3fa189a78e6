"""State files of other RWKV tools, read and written without torch.

* rwkv pip / ChatRWKV: ``torch.save`` of the state list ``[att_x_prev [C], att_kv [H, N, N],
  ffn_x_prev [C]] * n_layer``; att_kv is already our ``[H, N_v, N_k]``.
* RWKV-PEFT state tuning: a ``.pth`` dict with ``blocks.N.att.time_state`` of shape
  ``[H, N, N]`` stored **[H, K, V]** (its loaders in ChatRWKV-style demos apply
  ``.transpose(1, 2)`` before use), so it is transposed here, once; the token-shift
  parts of such a state start at zero.
"""
from __future__ import annotations

import io
import re
import struct
import zipfile

import numpy as np

from rwkvcpu.state import State, StateError


def _stored(path: str):
    from rwkvcpu.loaders.pth_loader import read_pth_state_dict
    return read_pth_state_dict(path, allow_list=True)


def read_pip_state(path: str) -> State:
    from rwkvcpu.loaders.pth_loader import StoredTensor
    obj = _stored(path)
    if isinstance(obj, dict) and any(k.endswith("att.time_state") for k in obj):
        return read_peft_state(path, obj)
    items = obj if isinstance(obj, list) else None
    if items is None or not all(isinstance(t, StoredTensor) for t in items):
        raise StateError(f"{path}: expected a list of tensors (rwkv pip state) or RWKV-PEFT time_state tensors")
    return State.from_rwkv_pip([t.to_f32() for t in items])


def read_peft_state(path: str, obj=None) -> State:
    """RWKV-PEFT state-tuned initial state -> State (wkv transposed [H,K,V] -> [H,V,K])."""
    obj = obj if obj is not None else _stored(path)
    layers = sorted(int(m.group(1)) for k in obj for m in [re.match(r"blocks\.(\d+)\.att\.time_state$", k)] if m)
    if not layers or layers != list(range(len(layers))):
        raise StateError(f"{path}: no contiguous blocks.N.att.time_state tensors (found layers {layers})")
    first = obj["blocks.0.att.time_state"].to_f32()
    if first.ndim != 3 or first.shape[1] != first.shape[2]:
        raise StateError(f"{path}: blocks.0.att.time_state has shape {list(first.shape)}, expected [H, N, N]")
    H, N, _ = first.shape
    st = State(len(layers), H * N, N)
    for il in layers:
        t = obj[f"blocks.{il}.att.time_state"].to_f32()
        if t.shape != (H, N, N):
            raise StateError(f"{path}: blocks.{il}.att.time_state has shape {list(t.shape)}, expected {[H, N, N]}")
        st.wkv()[il] = t.transpose(0, 2, 1)
    return st


# --- writing a torch zip with a list of float32 tensors, opcode by opcode ----------------------

def _pickle_tensor_list(shapes, names=None) -> bytes:
    """Protocol-2 pickle of [tensor, ...] (or, with names, {name: tensor, ...}) as torch.save
    writes it (storage keys '0', '1', ...)."""
    out = io.BytesIO()
    w = out.write

    def s(x: str):                       # BINUNICODE
        b = x.encode()
        w(b"X" + struct.pack("<I", len(b)) + b)

    def i(n: int):
        w(b"J" + struct.pack("<i", n))   # BININT

    w(b"\x80\x02]q\x00(" if names is None else b"\x80\x02}q\x00(")   # PROTO 2, EMPTY_LIST/DICT, BINPUT 0, MARK
    for key, shape in enumerate(shapes):
        if names is not None:
            s(names[key])
        numel = int(np.prod(shape))
        w(b"ctorch._utils\n_rebuild_tensor_v2\n(")
        w(b"(")
        s("storage")
        w(b"ctorch\nFloatStorage\n")
        s(str(key))
        s("cpu")
        i(numel)
        w(b"tQ")                         # TUPLE, BINPERSID
        i(0)                             # storage offset
        w(b"(")
        for d in shape:
            i(int(d))
        w(b"t(")
        stride, acc = [], 1
        for d in reversed(shape):
            stride.append(acc)
            acc *= int(d)
        for st in reversed(stride):
            i(st)
        w(b"t\x89")                      # TUPLE, NEWFALSE (requires_grad)
        w(b"ccollections\nOrderedDict\n)R")
        w(b"tR")                         # TUPLE (args), REDUCE
    w(b"e." if names is None else b"u.")  # APPENDS / SETITEMS, STOP
    return out.getvalue()


def write_torch_tensors(path: str, tensors) -> None:
    """A torch.load-able .pth of float32 tensors, written without torch: ``tensors`` a list of
    arrays or a dict of name -> array (a BlinkDL checkpoint's layout)."""
    from rwkvcpu.state import atomic_write
    names = list(tensors) if isinstance(tensors, dict) else None
    items = [np.ascontiguousarray(a, dtype="<f4") for a in (tensors.values() if names is not None else tensors)]
    name = "archive"

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(f"{name}/data.pkl", _pickle_tensor_list([a.shape for a in items], names))
            z.writestr(f"{name}/byteorder", "little")
            for k, a in enumerate(items):
                z.writestr(f"{name}/data/{k}", a.tobytes())
            z.writestr(f"{name}/version", "3\n")
    atomic_write(path, write)


def write_pip_state(path: str, state: State) -> None:
    """A torch.load-able .pth of rwkv pip's state list (float32), written without torch."""
    write_torch_tensors(path, list(state.to_rwkv_pip()))


def state_warnings(st: State) -> list[str]:
    """Problems worth a warning: NaN/Inf, or magnitudes far outside what a model produces."""
    out = []
    for il in range(st.n_layer):
        parts = {"att_x_prev": st.att_x_prev()[il], "ffn_x_prev": st.ffn_x_prev()[il], "wkv": st.wkv()[il]}
        for k, a in parts.items():
            if not np.all(np.isfinite(a)):
                out.append(f"layer {il} {k} holds NaN/Inf")
            elif np.abs(a).max() > (1e4 if k == "wkv" else 1e3):
                out.append(f"layer {il} {k} has |x| up to {np.abs(a).max():.3g}, far outside what a model produces")
    return out
