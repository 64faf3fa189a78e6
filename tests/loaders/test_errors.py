"""Each bad input gives a LoadError that names the file and the problem."""
import os
import pickle
import zipfile

import numpy as np
import pytest
from gguf import GGUFValueType

from rwkvcpu.loaders import LoadError, load
from rwkvcpu.loaders.pth_loader import UnsafePickleError
from tests.gguf_util import rewrite_gguf


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOTAMODEL" * 10)
    with pytest.raises(LoadError, match=r"x\.gguf.*unknown file format"):
        load(p)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(LoadError, match="no such file"):
        load(tmp_path / "nope.gguf")
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(LoadError, match="empty file"):
        load(tmp_path / "e.gguf")


def test_truncated_gguf(fx, tmp_path):
    data = (fx / "tiny-rwkv7-q8_0.gguf").read_bytes()
    p = tmp_path / "trunc.gguf"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=r"trunc\.gguf.*(truncated|corrupted)"):
        load(p)


def test_truncated_pth(fx, tmp_path):
    data = (fx / "tiny-rwkv7.pth").read_bytes()
    p = tmp_path / "trunc.pth"
    p.write_bytes(data[: len(data) - 4096])
    with pytest.raises(LoadError, match=r"trunc\.pth"):
        load(p)


def test_other_architecture(fx, tmp_path):
    p = rewrite_gguf(fx / "tiny-rwkv7-f32.gguf", tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(LoadError, match="this file is a llama model; rwkvcpu runs rwkv7"):
        load(p)


def test_missing_tensor(fx, tmp_path):
    p = rewrite_gguf(fx / "tiny-rwkv7-f32.gguf", tmp_path / "m.gguf",
                     drop_tensors=["blk.1.time_mix_key.weight"])
    with pytest.raises(LoadError, match=r"m\.gguf: missing tensor blk\.1\.time_mix_key\.weight"):
        load(p)


def test_wrong_shape(fx, tmp_path):
    p = rewrite_gguf(fx / "tiny-rwkv7-f32.gguf", tmp_path / "s.gguf",
                     tensor_fn=lambda n, d: d[:128].copy() if n == "blk.2.channel_mix_key.weight" else d)
    with pytest.raises(LoadError, match=r"blocks\.2\.ffn_key has shape \[128, 256\], expected \[1024, 256\]"):
        load(p)


def test_head_size_not_dividing_n_embd(fx, tmp_path):
    p = rewrite_gguf(fx / "tiny-rwkv7-f32.gguf", tmp_path / "h.gguf",
                     set_kv={"rwkv7.wkv.head_size": (48, GGUFValueType.UINT32)})
    with pytest.raises(LoadError, match="n_embd 256 is not divisible by head_size 48"):
        load(p)


def test_inconsistent_metadata(fx, tmp_path):
    p = rewrite_gguf(fx / "tiny-rwkv7-f32.gguf", tmp_path / "f.gguf",
                     set_kv={"rwkv7.feed_forward_length": (2048, GGUFValueType.UINT32)})
    with pytest.raises(LoadError, match=r"ffn_key has shape \[1024, 256\], expected \[2048, 256\]"):
        load(p)


def test_missing_metadata_key(fx, tmp_path):
    p = rewrite_gguf(fx / "tiny-rwkv7-f32.gguf", tmp_path / "k.gguf", drop_kv=["rwkv7.block_count"])
    with pytest.raises(LoadError, match="missing metadata key rwkv7.block_count"):
        load(p)


def test_unsupported_type_named_at_load_time(fx, tmp_path):
    from gguf import GGMLQuantizationType, GGUFWriter
    p = tmp_path / "tq.gguf"
    w = GGUFWriter(str(p), "rwkv7")
    w.add_uint32("rwkv7.block_count", 1)
    w.add_tensor("blk.0.time_mix_key.weight", np.zeros((4, 66), np.uint8),
                 raw_dtype=GGMLQuantizationType.TQ2_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(LoadError, match=r"blk\.0\.time_mix_key\.weight has ggml type TQ2_0"):
        load(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pth_with_foreign_global_is_refused_before_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"emb.weight": _Evil()}, protocol=2))
        z.writestr("evil/byteorder", "little")
    with pytest.raises(UnsafePickleError, match=r"evil\.pth.*global (posix|os)\.system"):
        load(p)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_pth_that_is_not_rwkv7(tmp_path):
    p = tmp_path / "x.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x/data.pkl", pickle.dumps({"foo": 1}, protocol=2))
    with pytest.raises(LoadError, match=r"x\.pth: no blocks\.N\.\* tensors"):
        load(p)


@pytest.mark.parametrize("how", ["cut inside the token list", "token count past the file"])
def test_damaged_token_list_in_gguf_header(fx, tmp_path, how):
    """The vocabulary (tens of thousands of strings in the header) is read in one fast loop
    (``GGUFFile._strings``); a cut or a corrupt count still names the file, without first
    allocating a list of the corrupt length."""
    data = bytearray((fx / "tiny-rwkv7-q8_0.gguf").read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = data.find(key)
    assert at > 0, "fixture without a token list"
    count_at = at + len(key) + 4 + 4                       # value type (array), element type (string)
    assert int.from_bytes(data[count_at:count_at + 8], "little") > 100
    if how == "token count past the file":
        data[count_at:count_at + 8] = (1 << 62).to_bytes(8, "little")
    else:
        data = data[:count_at + 8 + 500]
    p = tmp_path / "bad.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(LoadError, match=r"bad\.gguf.*(damaged|truncated|corrupted)"):
        load(p)
