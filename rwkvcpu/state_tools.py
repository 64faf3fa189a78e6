"""Reading states in any known format, statistics, differences, blending."""
from __future__ import annotations

import numpy as np

from rwkvcpu.state import LLAMA_STATE_MAGIC, State, StateError, load_state


def load_any_state(path: str, hp=None) -> tuple[State, str]:
    """An rwkvcpu state file, llama.cpp ``llama_state_seq_get_data`` bytes, or an rwkv pip state .pth."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == LLAMA_STATE_MAGIC:
        if hp is None:
            raise StateError(f"{path}: a llama.cpp state does not record the model shape: pass -m MODEL")
        data = open(path, "rb").read()
        return State.from_llama_seq_bytes(data, hp.n_embd, hp.head_size, where=path), "llama.cpp sequence state"
    if head[:4] == b"PK\x03\x04":
        import zipfile
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if "header.npy" in names:
            st, _ = load_state(path, hp)
            return st, "rwkvcpu state"
        from rwkvcpu.interop import read_pip_state
        st = read_pip_state(path)
        if hp is not None:
            st.check_compatible(hp, f"state file {path}")
        return st, "rwkv pip state (.pth)"
    raise StateError(f"{path}: not a known state format (rwkvcpu .npz state, llama.cpp bytes, rwkv pip .pth)")


def state_stats(st: State) -> list[str]:
    out = [f"{'layer':>5} {'att_x mean|x|':>14} {'ffn_x mean|x|':>14} {'wkv max|x|':>11} "
           f"{'head norms (Frobenius)':<30}"]
    bad = []
    for il in range(st.n_layer):
        a, f, w = st.att_x_prev()[il], st.ffn_x_prev()[il], st.wkv()[il]
        norms = np.sqrt((w.astype(np.float64) ** 2).sum((1, 2)))
        out.append(f"{il:>5} {np.abs(a).mean():>14.4g} {np.abs(f).mean():>14.4g} {np.abs(w).max():>11.4g} "
                   + " ".join(f"{n:.3g}" for n in norms[:8]) + (" ..." if norms.size > 8 else ""))
        if not (np.isfinite(a).all() and np.isfinite(f).all() and np.isfinite(w).all()):
            bad.append(il)
    if bad:
        out.append(f"WARNING: NaN/Inf in layers {bad}: this state cannot produce meaningful output")
    return out


def diff_states(a: State, b: State) -> tuple[list[str], float]:
    if a.shape_key() != b.shape_key():
        raise StateError(f"states have different shapes: {a.shape_key()} vs {b.shape_key()}")
    out = [f"{'layer':>5} {'att_x_prev':>11} {'ffn_x_prev':>11} {'wkv':>11} {'wkv (transposed)':>17}"]
    worst = 0.0
    for il in range(a.n_layer):
        d = [float(np.abs(a.att_x_prev()[il] - b.att_x_prev()[il]).max()),
             float(np.abs(a.ffn_x_prev()[il] - b.ffn_x_prev()[il]).max()),
             float(np.abs(a.wkv()[il] - b.wkv()[il]).max())]
        dt = float(np.abs(a.wkv()[il] - b.wkv()[il].transpose(0, 2, 1)).max())
        worst = max(worst, *d)
        out.append(f"{il:>5} {d[0]:>11.3g} {d[1]:>11.3g} {d[2]:>11.3g} {dt:>17.3g}")
    if worst > 1e-3:
        tr = max(float(np.abs(a.wkv()[il] - b.wkv()[il].transpose(0, 2, 1)).max()) for il in range(a.n_layer))
        if tr < 1e-3:
            out.append("note: the wkv states agree once transposed: one side uses the [H, K, V] (fla) layout")
    return out, worst


def blend(a: State, b: State, weight: float) -> State:
    """(1 - weight) * a + weight * b, every part of the state."""
    if a.shape_key() != b.shape_key():
        raise StateError("cannot blend states of different shapes")
    st = a.copy()
    st.r[:] = (1 - weight) * a.r + weight * b.r
    st.s[:] = (1 - weight) * a.s + weight * b.s
    return st


def decay_wkv(a: State, factor: float) -> State:
    st = a.copy()
    st.s *= factor
    return st
