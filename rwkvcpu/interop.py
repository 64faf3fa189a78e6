"""rwkv pip / ChatRWKV state files (.pth of a list of tensors), read without torch."""
from __future__ import annotations

import numpy as np

from rwkvcpu.state import State, StateError


def read_pip_state(path: str) -> State:
    """A ``torch.save`` of rwkv pip's state list ``[att_x_prev, att_kv, ffn_x_prev] * n_layer``."""
    from rwkvcpu.loaders.pth_loader import StoredTensor, read_pth_state_dict
    obj = read_pth_state_dict(path, allow_list=True)
    items = obj if isinstance(obj, list) else obj.get("state") if isinstance(obj, dict) else None
    if not isinstance(items, list) or not all(isinstance(t, StoredTensor) for t in items):
        raise StateError(f"{path}: expected a list of tensors (rwkv pip state)")
    return State.from_rwkv_pip([t.to_f32() for t in items])
