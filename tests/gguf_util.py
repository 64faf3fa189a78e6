"""Test helper: copy a GGUF through gguf-py's writer, changing metadata or tensors on the way."""
from __future__ import annotations

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def rewrite_gguf(src, dst, arch=None, drop_tensors=(), set_kv=None, drop_kv=(), tensor_fn=None):
    r = GGUFReader(str(src))
    arch = arch or r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dst), arch)
    set_kv = dict(set_kv or {})
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_kv:
            continue
        if key in set_kv:
            continue
        vtype = f.types[0]
        val = f.contents()
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(key, val, vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(key, val, vtype)
    for key, (val, vtype) in set_kv.items():
        w.add_key_value(key, val, vtype)
    for t in r.tensors:
        if t.name in drop_tensors:
            continue
        data = np.array(t.data)
        if tensor_fn:
            data = tensor_fn(t.name, data)
        if int(t.tensor_type) in (0, 1):
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
