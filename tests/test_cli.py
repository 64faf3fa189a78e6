"""Every CLI command through click's runner; error paths through the real entry point."""
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from rwkvcpu.cli import cli
from rwkvcpu.state import load_state


@pytest.fixture()
def run():
    def _run(*args, input=None):
        r = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
        return r
    return _run


def test_generate_greedy_matches_api(run, fx, pth_model):
    from rwkvcpu.generate import generate_text
    r = run("generate", "-m", fx / "tiny-rwkv7.pth", "--vocab", fx / "tiny-vocab.txt",
            "-p", "ROMEO:", "-n", "8", "--temp", "0")
    assert r.exit_code == 0, r.output
    expect = generate_text(pth_model, "ROMEO:", max_tokens=8, temperature=0)
    assert r.stdout == "ROMEO:" + expect + "\n"
    assert "generation: 8 tokens" in r.stderr and "tok/s" in r.stderr


def test_generate_seed_reproducible_and_state_out(run, fx, tmp_path):
    args = ["generate", "-m", fx / "tiny-rwkv7-q8_0.gguf", "-p", "ROMEO:", "-n", "10", "-s", "5"]
    a, b = run(*args), run(*args, "--state-out", tmp_path / "s.state")
    assert a.stdout == b.stdout
    st, hdr = load_state(tmp_path / "s.state")
    assert st.n_tokens[0] == hdr["n_tokens"] > 10


def test_generate_state_in_continues(run, fx, tmp_path, f32_model):
    m = fx / "tiny-rwkv7-f32.gguf"
    run("generate", "-m", m, "-p", "ROMEO: But soft", "-n", "0", "--state-out", tmp_path / "a.state")
    r = run("generate", "-m", m, "-p", ", what light", "-n", "4", "--temp", "0",
            "--state-in", tmp_path / "a.state", "--no-display-prompt")
    from rwkvcpu.generate import generate_text
    st = f32_model.new_state()
    f32_model.forward(f32_model.tokenizer.encode("ROMEO: But soft"), st)
    assert r.stdout.rstrip("\n") == generate_text(f32_model, ", what light", state=st, max_tokens=4, temperature=0)


def test_chat_carries_state_and_save_load_reset(run, fx, tmp_path):
    s1, s2, s3 = (tmp_path / f"{i}.state" for i in (1, 2, 3))
    inp = f"hello\n/save {s1}\nhow are you\n/save {s2}\n/reset\nhello\n/save {s3}\n/load {s1}\n/quit\n"
    r = run("chat", "-m", fx / "tiny-rwkv7-q8_0.gguf", "-n", "6", "--temp", "0", input=inp)
    assert r.exit_code == 0, r.output
    n1, n2, n3 = (int(load_state(p)[0].n_tokens[0]) for p in (s1, s2, s3))
    assert n2 > n1                      # the second turn extended the first turn's state
    assert n3 == n1                     # after /reset the same first turn gives the same state size
    assert load_state(s3)[0].allclose(load_state(s1)[0], atol=1e-5)
    assert "state loaded" in r.stderr


def test_perplexity(run, fx, tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 3)
    r = run("perplexity", "-m", fx / "tiny-rwkv7-q8_0.gguf", "-f", t, "--chunk", "8")
    assert r.exit_code == 0
    assert "chunk: 8 (state carried across chunks)" in r.stdout and "ppl:" in r.stdout


def test_info(run, fx):
    r = run("info", fx / "tiny-rwkv7-q4_k_m.gguf")
    assert r.exit_code == 0
    assert "n_layer:       3" in r.stdout and "Q4_K" in r.stdout
    assert "state/seq:     202,752 bytes" in r.stdout        # 3 x (2*256 + 256*64) floats
    assert "blk.0.time_mix_key.weight" in r.stdout


def test_models_list(run):
    r = run("models", "list")
    assert r.exit_code == 0 and "world-0.1b" in r.stdout and "g1-1.5b" in r.stdout


def entry(*args):
    return subprocess.run([sys.executable, "-m", "rwkvcpu.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_errors_are_one_line_exit_2_no_traceback(fx, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    for args, expect in [
        (["generate", "-m", tmp_path / "none.gguf", "-p", "x"], "none.gguf: no such file"),
        (["generate", "-m", bad, "-p", "x"], "bad.gguf"),
        (["generate", "-m", fx / "tiny-rwkv7-f32.gguf"], "give a prompt"),
        (["generate", "-m", fx / "tiny-rwkv7-f32.gguf", "-p", "x", "--top-p", "3"], "--top-p"),
        (["info", fx / "README.md"], "unknown file format"),
    ]:
        r = entry(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and expect in r.stderr, (args, r.stderr)


def test_first_run_compile_notice_follows_numbas_cache_dir(tmp_path, monkeypatch, capsys):
    """The one-line notice appears when the cache directory Numba uses for the kernels (the
    package's __pycache__ or NUMBA_CACHE_DIR's) holds no index for them yet, and only then."""
    from rwkvcpu import cli as C
    from rwkvcpu.kernels import cpu
    monkeypatch.setattr(cpu.layer_norm._cache, "_cache_path", str(tmp_path))
    C._compile_notice()
    assert "compiling kernels" in capsys.readouterr().err
    (tmp_path / "cpu.layer_norm-43.py311.nbi").write_bytes(b"")
    C._compile_notice()
    assert capsys.readouterr().err == ""
