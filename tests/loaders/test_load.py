"""Every fixture file loads into the same container; the .pth equals the f32 GGUF."""
import numpy as np
import pytest

from rwkvcpu.loaders import detect_format, load, load_world_vocab
from loaders.checkpoint import LAYER_LOWRANK, LAYER_MATRICES, LAYER_VECTORS
from tests.conftest import GGUF_TYPES, require_fixtures

TINY = dict(n_layer=3, n_embd=256, head_size=64, n_ffn=1024, rank_w=64, rank_a=64,
            rank_v=32, rank_g=128, vocab_size=4096)   # fixtures README, "The model"


@pytest.mark.parametrize("typ", GGUF_TYPES)
def test_every_gguf_loads_with_readme_hparams(typ):
    ck = load(require_fixtures() / f"tiny-rwkv7-{typ}.gguf")
    assert ck.format == "gguf"
    for k, v in TINY.items():
        assert getattr(ck.hparams, k) == v, k
    assert ck.hparams.n_head == 4
    assert len(ck.vocab) == 4096
    # quantized tensors stay quantized: a view of the file, not a float copy
    assert ck.weights.layers[0].key.raw.base is not None or isinstance(ck.weights.layers[0].key.raw, np.memmap)


def test_pth_equals_f32_gguf(fx):
    a = load(fx / "tiny-rwkv7.pth", vocab=fx / "tiny-vocab.txt")
    b = load(fx / "tiny-rwkv7-f32.gguf")
    assert a.format == "pth" and a.weights.layers[1].key.type_name == "BF16"
    for k in TINY:
        assert getattr(a.hparams, k) == getattr(b.hparams, k), k
    for i, (la, lb) in enumerate(zip(a.weights.layers, b.weights.layers)):
        for k in LAYER_VECTORS + LAYER_LOWRANK:
            x, y = getattr(la, k), getattr(lb, k)
            if i == 0 and k in ("v0", "v1", "v2"):
                assert x is None and y is None     # unused in layer 0 (GGUF's dummies dropped)
                continue
            np.testing.assert_array_equal(x, y, err_msg=f"blocks.{i}.{k}")
        for k in LAYER_MATRICES:
            np.testing.assert_array_equal(getattr(la, k).dequantize(), getattr(lb, k).dequantize(),
                                          err_msg=f"blocks.{i}.{k}")
    for k in ("emb", "head"):
        np.testing.assert_array_equal(getattr(a.weights, k).dequantize(), getattr(b.weights, k).dequantize())
    # the vocabulary from tiny-vocab.txt equals the GGUF's escaped token list
    assert a.vocab[1:] == b.vocab[1:] and a.vocab[0] == b.vocab[0] == b""


def test_world_vocab_from_gguf_matches_txt_vocab_semantics(fx):
    v = load_world_vocab(fx / "tiny-vocab.txt")
    assert v[1] == b"\x00" and v[256] == b"\xff" and v[257] == b"\n\n"


def test_format_detected_from_bytes_not_name(fx, tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes((fx / "tiny-rwkv7-q8_0.gguf").read_bytes())
    assert detect_format(p) == "gguf"
    q = tmp_path / "weights.gguf"
    q.write_bytes((fx / "tiny-rwkv7.pth").read_bytes())
    assert detect_format(q) == "pth"
    assert load(q, vocab=fx / "tiny-vocab.txt").hparams.n_layer == 3


@pytest.mark.parametrize("name", [f"tiny-rwkv7-{t}.gguf" for t in GGUF_TYPES] + ["world-vocab-only.gguf"])
def test_direct_gguf_reader_agrees_with_gguf_py(name):
    """loaders/gguf_format.py replaces gguf-py's slow reader on the load path: same bytes, same values."""
    from gguf import GGUFReader
    from loaders.gguf_format import GGUFFile
    path = str(require_fixtures() / name)
    ours, ref = GGUFFile(path), GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.type == int(b.tensor_type) and a.ne == [int(x) for x in b.shape]
        assert np.array_equal(a.data, np.asarray(b.data).view(np.uint8).reshape(-1)), a.name
    for k, f in ref.fields.items():
        if k.startswith("GGUF."):
            continue
        v = ours.fields[k]
        if k == "tokenizer.ggml.tokens":
            assert v == [bytes(f.parts[i]) for i in f.data]
        elif isinstance(v, np.ndarray):
            assert v.tolist() == f.contents(), k
        else:
            assert v == pytest.approx(f.contents()) if isinstance(v, float) else v == f.contents(), k
