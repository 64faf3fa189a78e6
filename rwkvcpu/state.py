"""Recurrent state: a fixed set of slots laid out like llama.cpp's recurrent memory.

THE LAYOUT (the only one in this project; every other layout is converted here)
-------------------------------------------------------------------------------
``StateCache.r``: float32 ``[n_layer, n_slots, 2 * n_embd]``
    ``r[il, slot]`` is byte for byte the row of that cell in llama.cpp's
    ``cache_r_l{il}``: ``[0:C]`` the attention token-shift state (the ``ln1``
    output of the sequence's last token), ``[C:2C]`` the channel-mix
    token-shift state (the ``ln2`` output of the last token).
``StateCache.s``: float32 ``[n_layer, n_slots, H, N, N]``
    ``s[il, slot, h, i, j]``: head ``h``, **row i = value channel, column j =
    key channel**.  Flattened per slot it is byte for byte the row of llama.cpp's
    ``cache_s_l{il}`` (``n_embd * head_size`` floats) and equals RWKV-LM / rwkv
    pip's ``att_kv[h, i, j]``.  flash-linear-attention stores the transpose
    (``[B, H, K, V]``): use ``to_fla`` / ``from_fla``, never a bare ``.T``.

Decay and state are float32 always.  A ``State`` is a one-slot cache.
"""
from __future__ import annotations

import struct

import numpy as np

LLAMA_STATE_MAGIC = 0xAF143CD8   # io_magic of llama_state_seq_get_data (llama-context.cpp); the
#                                  fixtures README writes 0xAF13A4D8, but its bytes and llama.cpp say this


class StateError(ValueError):
    """A state does not fit the model, or its bytes are not a valid state."""


class StateCache:
    def __init__(self, n_layer: int, n_embd: int, head_size: int, n_slots: int = 1):
        if n_embd % head_size:
            raise StateError(f"n_embd {n_embd} is not divisible by head_size {head_size}")
        self.n_layer, self.n_embd, self.head_size = n_layer, n_embd, head_size
        self.n_head = n_embd // head_size
        self._r = np.zeros((n_layer, n_slots, 2 * n_embd), dtype=np.float32)
        self._s = np.zeros((n_layer, n_slots, self.n_head, head_size, head_size), dtype=np.float32)
        self.n_tokens = np.zeros(n_slots, dtype=np.int64)   # tokens processed per slot
        self._mirrors = []      # DeviceMirrors lent to this cache while some layers' state lives on a GPU
        self._zero = True       # known all-zero (fresh or cleared; any host access may write: then False),
        #                         so a GPU can zero its copy instead of uploading the arrays

    # --- the host arrays; a GPU copy (rwkvcpu/gpu.py) is synchronised on access ----------
    # While a CUDA model advances the state, the newest values of its layers are on the
    # device.  Reading ``r``/``s`` copies them back first and marks the device copy stale
    # (the caller may write through the arrays), so host code always sees the truth.
    @property
    def r(self) -> np.ndarray:
        self._pull()
        return self._r

    @r.setter
    def r(self, value) -> None:
        self._pull()
        self._r[...] = value

    @property
    def s(self) -> np.ndarray:
        self._pull()
        return self._s

    @s.setter
    def s(self, value) -> None:
        self._pull()
        self._s[...] = value

    def _pull(self) -> None:
        self._zero = False      # the caller gets the arrays and may write through them
        for m in self._mirrors:
            m.pull(self)

    def __getstate__(self):
        self._pull()
        d = dict(self.__dict__)
        d["_mirrors"] = []
        return d

    def __setstate__(self, d):
        d.pop("_mirror", None)  # pickled before device mirrors were lent (one per cache)
        d.setdefault("_mirrors", [])
        d.setdefault("_zero", False)
        self.__dict__.update(d)

    @classmethod
    def for_model(cls, hp, n_slots: int = 1) -> "StateCache":
        return cls(hp.n_layer, hp.n_embd, hp.head_size, n_slots)

    # --- shape -----------------------------------------------------------------
    @property
    def n_slots(self) -> int:
        return self._r.shape[1]

    @property
    def nbytes(self) -> int:
        return self._r.nbytes + self._s.nbytes

    def shape_key(self) -> tuple:
        return (self.n_layer, self.n_embd, self.head_size)

    def check_compatible(self, hp, what: str = "state") -> None:
        if self.shape_key() != (hp.n_layer, hp.n_embd, hp.head_size):
            raise StateError(
                f"{what} is for a model with n_layer={self.n_layer}, n_embd={self.n_embd}, "
                f"head_size={self.head_size}; this model has n_layer={hp.n_layer}, "
                f"n_embd={hp.n_embd}, head_size={hp.head_size}")

    def _slot(self, slot: int) -> int:
        if not 0 <= slot < self.n_slots:
            raise StateError(f"slot {slot} out of range (this cache has {self.n_slots} slots)")
        return slot

    # --- llama.cpp-style memory operations ------------------------------------------
    def clear(self, slot: int | None = None) -> None:
        """Zero one slot (or all): the state of a sequence that has seen no token."""
        sl = slice(None) if slot is None else self._slot(slot)
        self.r[:, sl] = 0
        self.s[:, sl] = 0
        self.n_tokens[sl] = 0
        if slot is None:
            self._zero = True

    def copy_slot(self, src: int, dst: int) -> None:
        """dst <- src (llama_memory_seq_cp): fork a sequence, e.g. from a shared prefix."""
        self.r[:, self._slot(dst)] = self.r[:, self._slot(src)]
        self.s[:, dst] = self.s[:, src]
        self.n_tokens[dst] = self.n_tokens[src]

    def keep_only(self, slot: int) -> None:
        """Clear every slot but one (llama_memory_seq_keep)."""
        self._slot(slot)
        for i in range(self.n_slots):
            if i != slot:
                self.clear(i)

    def extract(self, slot: int) -> "State":
        st = State(self.n_layer, self.n_embd, self.head_size)
        st.r[:, 0] = self.r[:, self._slot(slot)]
        st.s[:, 0] = self.s[:, slot]
        st.n_tokens[0] = self.n_tokens[slot]
        return st

    def assign(self, slot: int, state: "StateCache", src_slot: int = 0) -> None:
        if state.shape_key() != self.shape_key():
            raise StateError(f"state of shape {state.shape_key()} does not fit a cache of shape {self.shape_key()}")
        self.r[:, self._slot(slot)] = state.r[:, src_slot]
        self.s[:, slot] = state.s[:, src_slot]
        self.n_tokens[slot] = state.n_tokens[src_slot]

    # --- per-layer views of one slot (no copies) ---------------------------------
    def att_x_prev(self, slot: int = 0) -> np.ndarray:
        return self.r[:, slot, : self.n_embd]

    def ffn_x_prev(self, slot: int = 0) -> np.ndarray:
        return self.r[:, slot, self.n_embd:]

    def wkv(self, slot: int = 0) -> np.ndarray:
        """[n_layer, H, N_v, N_k]."""
        return self.s[:, slot]

    def cache_r_l(self, il: int) -> np.ndarray:
        """The bytes of llama.cpp's ``cache_r_l{il}`` buffer (all slots), as float32 [n_slots * 2C]."""
        return self.r[il].reshape(-1)

    def cache_s_l(self, il: int) -> np.ndarray:
        return self.s[il].reshape(-1)


class State(StateCache):
    """The state of one sequence: a one-slot StateCache."""

    def __init__(self, n_layer: int, n_embd: int, head_size: int):
        super().__init__(n_layer, n_embd, head_size, 1)

    @classmethod
    def for_model(cls, hp, n_slots: int = 1) -> "State":
        return cls(hp.n_layer, hp.n_embd, hp.head_size)

    def copy(self) -> "State":
        st = State(self.n_layer, self.n_embd, self.head_size)
        st.r[:] = self.r
        st.s[:] = self.s
        st.n_tokens[:] = self.n_tokens
        return st

    def max_abs_diff(self, other: "State") -> dict:
        if self.shape_key() != other.shape_key():
            raise StateError("states of different shapes cannot be compared")
        return {"att_x_prev": float(np.abs(self.att_x_prev() - other.att_x_prev()).max()),
                "ffn_x_prev": float(np.abs(self.ffn_x_prev() - other.ffn_x_prev()).max()),
                "wkv": float(np.abs(self.wkv() - other.wkv()).max())}

    def allclose(self, other: "State", atol: float = 0.0) -> bool:
        return max(self.max_abs_diff(other).values()) <= atol

    # --- converters to other tools' layouts ------------------------------------------
    def to_rwkv_pip(self) -> list[np.ndarray]:
        """rwkv pip / ChatRWKV list: per layer [att_x_prev [C], att_kv [H, N, N], ffn_x_prev [C]]."""
        out = []
        for il in range(self.n_layer):
            out += [self.att_x_prev()[il].copy(), self.wkv()[il].copy(), self.ffn_x_prev()[il].copy()]
        return out

    @classmethod
    def from_rwkv_pip(cls, items) -> "State":
        items = [np.asarray(x, dtype=np.float32) for x in items]
        if len(items) % 3 or not items:
            raise StateError(f"an rwkv pip state has 3 tensors per layer; got {len(items)}")
        L = len(items) // 3
        att_kv = items[1]
        if att_kv.ndim != 3 or att_kv.shape[1] != att_kv.shape[2]:
            raise StateError(f"rwkv pip att_kv must be [H, N, N]; got {list(att_kv.shape)}")
        H, N, _ = att_kv.shape
        st = cls(L, H * N, N)
        for il in range(L):
            a, kv, f = items[3 * il: 3 * il + 3]
            if a.reshape(-1).shape[0] != H * N or f.reshape(-1).shape[0] != H * N or kv.shape != (H, N, N):
                raise StateError(f"rwkv pip state layer {il} has inconsistent shapes "
                                 f"{list(a.shape)}, {list(kv.shape)}, {list(f.shape)}")
            st.att_x_prev()[il] = a.reshape(-1)
            st.wkv()[il] = kv
            st.ffn_x_prev()[il] = f.reshape(-1)
        return st

    def to_fla(self) -> np.ndarray:
        """flash-linear-attention layout: [n_layer, B=1, H, K, V] (the transpose of ours)."""
        return np.ascontiguousarray(self.wkv().transpose(0, 1, 3, 2))[:, None]

    @classmethod
    def from_fla(cls, wkv_fla, att_x_prev, ffn_x_prev) -> "State":
        """wkv_fla: [n_layer, (1,) H, K, V]; the token-shift rows [n_layer, C]."""
        w = np.asarray(wkv_fla, dtype=np.float32)
        if w.ndim == 5:
            w = w[:, 0]
        L, H, K, V = w.shape
        st = cls(L, H * K, K)
        st.wkv()[:] = w.transpose(0, 1, 3, 2)
        st.att_x_prev()[:] = np.asarray(att_x_prev, dtype=np.float32).reshape(L, -1)
        st.ffn_x_prev()[:] = np.asarray(ffn_x_prev, dtype=np.float32).reshape(L, -1)
        return st

    def to_llama_seq_bytes(self, seq_id: int = 0) -> bytes:
        """The bytes ``llama_state_seq_get_data`` returns for one RWKV sequence (f32 cache)."""
        C = self.n_embd
        pos = int(self.n_tokens[0]) - 1
        parts = [struct.pack("<Ii", LLAMA_STATE_MAGIC, seq_id), struct.pack("<I", 1),
                 struct.pack("<iI", pos, 0), struct.pack("<II", 0, self.n_layer)]
        for il in range(self.n_layer):
            parts += [struct.pack("<iQ", 0, 2 * C * 4), self.r[il, 0].astype("<f4").tobytes()]
        for il in range(self.n_layer):
            parts += [struct.pack("<iQ", 0, C * self.head_size * 4), self.s[il, 0].astype("<f4").tobytes()]
        return b"".join(parts)

    @classmethod
    def from_llama_seq_bytes(cls, data: bytes, n_embd: int, head_size: int, where: str = "state") -> "State":
        """Parse ``llama_state_seq_get_data`` bytes of one RWKV sequence (f32 cache)."""
        mv = memoryview(bytes(data))
        off = 0

        def take(fmt):
            nonlocal off
            size = struct.calcsize(fmt)
            if off + size > len(mv):
                raise StateError(f"{where}: llama.cpp state truncated at byte {off} (needs {size} more)")
            vals = struct.unpack_from(fmt, mv, off)
            off += size
            return vals

        magic, _seq = take("<Ii")
        if magic != LLAMA_STATE_MAGIC:
            raise StateError(f"{where}: not a llama.cpp sequence state (magic {magic:#x}, expected {LLAMA_STATE_MAGIC:#x})")
        (cells,) = take("<I")
        if cells != 1:
            raise StateError(f"{where}: llama.cpp state holds {cells} cells; an RWKV sequence has exactly 1")
        pos, n_seq = take("<iI")
        take(f"<{n_seq}i") if n_seq else None
        s_trans, n_layer = take("<II")
        if s_trans:
            raise StateError(f"{where}: transposed (s_trans=1) llama.cpp state is not supported")
        st = cls(n_layer, n_embd, head_size)
        for kind, row in (("r_l", 2 * n_embd), ("s_l", n_embd * head_size)):
            for il in range(n_layer):
                ttype, nbytes = take("<iQ")
                if ttype != 0:
                    raise StateError(f"{where}: {kind} of layer {il} has ggml type {ttype}; only f32 (0) caches are supported")
                if nbytes != row * 4:
                    raise StateError(f"{where}: {kind} of layer {il} holds {nbytes} bytes, expected {row * 4} "
                                     f"(model shape mismatch?)")
                if off + nbytes > len(mv):
                    raise StateError(f"{where}: llama.cpp state truncated in {kind} of layer {il}")
                arr = np.frombuffer(mv[off: off + nbytes], dtype="<f4")
                off += nbytes
                if kind == "r_l":
                    st.r[il, 0] = arr
                else:
                    st.s[il, 0] = arr.reshape(st.n_head, head_size, head_size)
        if off != len(mv):
            raise StateError(f"{where}: {len(mv) - off} unexpected bytes after the llama.cpp state")
        st.n_tokens[0] = pos + 1
        return st


# --- the state file format ------------------------------------------------------------
#
# A ``.npz`` (zip; read with allow_pickle=False) holding:
#   header   : uint8 bytes of a JSON object {format, version, arch, n_layer, n_embd,
#              head_size, shape_hash, dtype, n_tokens, sha256, ...}
#   r, s     : the layout above for one slot, stored as float32 / float16 / bfloat16 bits
#   tokens   : optional int64 token ids the state has consumed (for prompt caching)
# ``sha256`` covers the stored bytes of r, s (and tokens), so truncation or corruption
# is detected before a state is used.  Writes go to a temporary file, then an atomic rename.

STATE_FORMAT = "rwkvcpu-state"
STATE_VERSION = 1
STORE_DTYPES = ("f32", "f16", "bf16")


def _encode(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f32":
        return a.astype("<f4")
    if dtype == "f16":
        return a.astype("<f2")
    u = a.astype("<f4").view("<u4")
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype("<u2")   # round to nearest even


def _decode(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return (a.astype("<u4") << 16).view("<f4")
    return a.astype(np.float32)


def _digest(*arrays) -> str:
    import hashlib
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def atomic_write(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``."""
    import os
    import tempfile
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".rwkvcpu-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(path: str, state: StateCache, slot: int = 0, dtype: str = "f32",
               tokens=None, extra: dict | None = None) -> None:
    import json
    if dtype not in STORE_DTYPES:
        raise StateError(f"state dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    r = _encode(state.r[:, slot], dtype)
    s = _encode(state.s[:, slot], dtype)
    arrays = {"r": r, "s": s}
    if tokens is not None:
        arrays["tokens"] = np.asarray(tokens, dtype="<i8")
    header = {"format": STATE_FORMAT, "version": STATE_VERSION, "arch": "rwkv7",
              "n_layer": state.n_layer, "n_embd": state.n_embd, "head_size": state.head_size,
              "shape_hash": _shape_hash(state), "dtype": dtype,
              "n_tokens": int(state.n_tokens[slot]), "sha256": _digest(*arrays.values())}
    header.update(extra or {})
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _shape_hash(state: StateCache) -> str:
    import hashlib
    import json
    key = {"arch": "rwkv7", "n_layer": state.n_layer, "n_embd": state.n_embd, "head_size": state.head_size}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_state(path: str, hp=None) -> tuple[State, dict]:
    """Read a state file; verify its checksum and (if ``hp`` is given) that it fits the model."""
    import json
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "header" not in files:
                raise StateError(f"{path}: not an rwkvcpu state file (no header)")
            header = json.loads(bytes(z["header"]).decode())
            arrays = {k: z[k] for k in ("r", "s", "tokens") if k in files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        if isinstance(e, StateError):
            raise
        raise StateError(f"{path}: unreadable state file ({type(e).__name__}: {e}); truncated or corrupted?") from None
    if header.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: not an rwkvcpu state file (format {header.get('format')!r})")
    if header.get("version", 0) > STATE_VERSION:
        raise StateError(f"{path}: state format version {header['version']} is newer than this rwkvcpu ({STATE_VERSION})")
    if "r" not in arrays or "s" not in arrays:
        raise StateError(f"{path}: state file lacks its r/s arrays")
    digest = _digest(*[arrays[k] for k in ("r", "s", "tokens") if k in arrays])
    if digest != header.get("sha256"):
        raise StateError(f"{path}: checksum mismatch: the state file is corrupted")
    st = State(int(header["n_layer"]), int(header["n_embd"]), int(header["head_size"]))
    if arrays["r"].shape != st.r[:, 0].shape or arrays["s"].shape != st.s[:, 0].shape:
        raise StateError(f"{path}: array shapes do not match the header")
    st.r[:, 0] = _decode(arrays["r"], header["dtype"])
    st.s[:, 0] = _decode(arrays["s"], header["dtype"])
    st.n_tokens[0] = int(header.get("n_tokens", 0))
    if hp is not None:
        st.check_compatible(hp, f"state file {path}")
    header["tokens"] = arrays["tokens"].tolist() if "tokens" in arrays else None
    return st, header
