"""HF-layout (fla RWKV7ForCausalLM: config.json + safetensors) input: loads, converts bit-identically
with llama.cpp's converter (which made the fixture GGUFs from such a folder), and bad folders give
errors naming the file and the tensor or key."""
import json
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from rwkvcpu.cli import cli
from rwkvcpu.loaders import LoadError, detect_format, load
from rwkvcpu.loaders.pth_loader import read_pth_state_dict
from tests.conftest import require_fixtures
from tests.test_convert import assert_same_gguf
from tools.pth_to_hf import config_for, fla_state_dict, write_safetensors


@pytest.fixture()
def hf_dir(tmp_path):
    fx = require_fixtures()
    d = tmp_path / "tiny-rwkv7-hf"
    d.mkdir()
    shutil.copy(fx / "tiny-rwkv7-hf" / "config.json", d / "config.json")
    shutil.copy(fx / "tiny-vocab.txt", d / "rwkv_vocab_v20230424.txt")   # found without --vocab
    write_safetensors(d / "model.safetensors", fla_state_dict(fx / "tiny-rwkv7.pth"))
    return d


def test_hf_folder_converts_bit_identically(hf_dir, tmp_path):
    fx = require_fixtures()
    assert detect_format(str(hf_dir)) == "hf"
    out = tmp_path / "f32.gguf"
    r = CliRunner().invoke(cli, ["convert", str(hf_dir), str(out), "--type", "f32"])
    assert r.exit_code == 0, r.output
    assert_same_gguf(out, fx / "tiny-rwkv7-f32.gguf")


def test_written_config_matches_the_fixture_config():
    fx = require_fixtures()
    ours = config_for(fla_state_dict(fx / "tiny-rwkv7.pth"))
    assert ours == json.loads((fx / "tiny-rwkv7-hf" / "config.json").read_text())


def test_hf_folder_runs_like_the_pth(hf_dir):
    fx = require_fixtures()
    a = load(str(hf_dir / "model.safetensors"))
    b = load(str(fx / "tiny-rwkv7.pth"), vocab=str(fx / "tiny-vocab.txt"))
    assert a.hparams.as_dict() | {"file_type": 0} == b.hparams.as_dict() | {"file_type": 0}
    assert a.vocab == b.vocab
    for (na, qa), (nb, qb) in zip(a.weights.matrices(), b.weights.matrices()):
        assert np.array_equal(qa.dequantize(), qb.dequantize()), na


def test_sharded_folder(hf_dir):
    sd = fla_state_dict(require_fixtures() / "tiny-rwkv7.pth")
    (hf_dir / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for f, ks in shards.items():
        write_safetensors(hf_dir / f, {k: sd[k] for k in ks})
    (hf_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    assert load(str(hf_dir)).hparams.n_layer == 3


def test_config_disagreeing_with_tensors(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["intermediate_size"] = 2048
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"config\.json: intermediate_size is 2048 but the tensors give 1024"):
        load(str(hf_dir))


def test_not_rwkv7_config(hf_dir):
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LoadError, match="model_type is 'llama'"):
        load(str(hf_dir))


def test_unknown_and_missing_tensors(hf_dir):
    sd = fla_state_dict(require_fixtures() / "tiny-rwkv7.pth")
    sd["model.layers.1.attn.mystery.weight"] = np.zeros((2, 2), np.float32)
    write_safetensors(hf_dir / "model.safetensors", sd)
    with pytest.raises(LoadError, match=r"does not know, e\.g\. model\.layers\.1\.attn\.mystery\.weight"):
        load(str(hf_dir))
    del sd["model.layers.1.attn.mystery.weight"], sd["model.layers.2.attn.k_proj.weight"]
    write_safetensors(hf_dir / "model.safetensors", sd)
    with pytest.raises(LoadError, match=r"missing tensor model\.layers\.2\.attn\.k_proj\.weight"):
        load(str(hf_dir))


def test_damaged_safetensors(hf_dir):
    p = hf_dir / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])                         # truncated: offsets past the end
    with pytest.raises(LoadError, match=r"model\.safetensors: tensor .* data offsets"):
        load(str(hf_dir))
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(LoadError, match="damaged safetensors header"):
        load(str(hf_dir))
    p.write_bytes(struct.pack("<Q", 10 ** 9) + b"{}")
    with pytest.raises(LoadError, match="header length"):
        load(str(hf_dir))


def test_folder_without_config_or_weights(tmp_path):
    with pytest.raises(LoadError, match="directory without config.json"):
        load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv7"}))
    with pytest.raises(LoadError, match="no model.safetensors"):
        load(str(tmp_path))


def test_cli_runs_an_hf_folder(hf_dir):
    r = CliRunner().invoke(cli, ["info", str(hf_dir)])
    assert r.exit_code == 0 and "(hf, " in r.output and "n_layer:       3" in r.output, r.output
    r = CliRunner().invoke(cli, ["generate", "-m", str(hf_dir), "-p", "ROMEO:", "-n", "4", "--temp", "0"])
    assert r.exit_code == 0, r.output
