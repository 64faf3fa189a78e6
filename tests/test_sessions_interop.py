"""Sessions (threads, LRU, spill, expiry, prefix forks) and state interop with other tools."""
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from rwkvcpu.cli import cli
from rwkvcpu.interop import read_peft_state, read_pip_state, state_warnings, write_pip_state
from rwkvcpu.sessions import SessionStore
from rwkvcpu.state import State, load_state
from rwkvcpu.state_tools import blend, load_any_state


def toks_for(i, n=5):
    return list(np.random.default_rng(i).integers(1, 4096, n))


def test_many_threads_fork_advance_evict_without_cross_talk(f32_model, tmp_path):
    one = f32_model.new_state().nbytes
    store = SessionStore(f32_model, max_sessions=6, max_bytes=8 * one, spill_dir=str(tmp_path))
    prefix = toks_for(999, 7)
    plan = {f"s{i}": [toks_for(i * 10 + j, 3) for j in range(3)] for i in range(16)}
    errors = []
    peak = [0]

    def worker(sid):
        try:
            store.create_from_prefix(sid, prefix)
            for chunk in plan[sid]:
                store.advance(sid, chunk)
                peak[0] = max(peak[0], store.nbytes)
        except Exception as e:       # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(sid,)) for sid in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.evictions > 0 and peak[0] <= 8 * one          # bounded memory (live states)
    for sid, chunks in plan.items():                            # each equals running its tokens alone
        _, alone = f32_model.forward(prefix + sum(chunks, []))
        got = store.get(sid)                                    # loads spilled ones back from disk
        assert got.max_abs_diff(alone)["wkv"] <= 1e-4 * max(1.0, np.abs(alone.wkv()).max()), sid
        assert got.n_tokens[0] == 7 + 9


def test_prefix_fork_plus_suffix_equals_prefix_plus_suffix(f32_model):
    store = SessionStore(f32_model)
    prefix, suffix = toks_for(1, 20), toks_for(2, 6)
    store.create_from_prefix("a", prefix)
    store.create_from_prefix("b", prefix)          # served from the prefix cache
    assert len(store._prefixes) == 1
    la = store.advance("a", suffix)
    lb = store.advance("b", suffix[:3])
    ref, _ = f32_model.forward(prefix + suffix)
    assert np.abs(la - ref).max() <= 1e-4
    assert not np.allclose(la, lb)
    store.fork("a", "c")
    assert store.get("c").allclose(store.get("a"))
    store.clear("a")
    assert "a" not in store and "c" in store


def test_expiry(f32_model):
    store = SessionStore(f32_model, ttl=0.05)
    store.advance("x", [1, 2])
    time.sleep(0.1)
    assert "x" not in store
    with pytest.raises(KeyError):
        store.get("x")


def test_pip_state_file_round_trip_without_torch(f32_model, tmp_path):
    _, st = f32_model.forward(toks_for(3, 10))
    p = tmp_path / "pip.pth"
    write_pip_state(p, st)
    assert read_pip_state(p).allclose(st)
    torch = pytest.importorskip("torch")          # optional: real torch reads what we wrote
    items = torch.load(p, weights_only=True)
    assert len(items) == 9 and np.array_equal(items[1].numpy(), st.wkv()[0])


def test_peft_time_state_is_transposed(tmp_path, f32_model):
    """RWKV-PEFT stores time_state as [H, K, V]; ours is [H, V, K]."""
    from rwkvcpu.loaders.pth_loader import StoredTensor
    st = State(3, 256, 64)
    st.s[:] = np.random.default_rng(0).standard_normal(st.s.shape)
    obj = {f"blocks.{i}.att.time_state": StoredTensor(st.wkv()[i].transpose(0, 2, 1).copy(), "f32")
           for i in range(3)}
    got = read_peft_state("x", obj)
    assert np.array_equal(got.wkv(), st.wkv()) and not got.r.any()
    m_st = f32_model.new_state(initial_state=got)
    assert m_st.allclose(got)


def test_llama_state_import_continues_like_our_own_run(f32_model, fx):
    ref = np.load(fx / "ref-llama-tiny-rwkv7-f32.npz")
    seq = list(ref["seqlong_tokens"])
    imported = State.from_llama_seq_bytes(ref["seqlong_state_bytes"].tobytes(), 256, 64)
    cont = toks_for(5, 8)
    a, _ = f32_model.forward(cont, imported, all_logits=True)
    b, _ = f32_model.forward(seq + cont, all_logits=True)
    assert np.abs(a - b[64:]).max() < 2e-4
    # and ours exports to bytes llama.cpp's parser layout accepts (same length and header)
    _, ours = f32_model.forward(seq)
    data = ours.to_llama_seq_bytes()
    assert len(data) == ref["seqlong_state_bytes"].size and data[:28] == ref["seqlong_state_bytes"].tobytes()[:28]


def test_state_warnings_and_blend():
    st = State(1, 128, 64)
    assert state_warnings(st) == []
    st.s[0, 0, 0, 0, 0] = np.nan
    st.r[0, 0, 3] = 1e6
    w = state_warnings(st)
    assert any("NaN" in x for x in w) and any("far outside" in x for x in w)
    a, b = State(1, 128, 64), State(1, 128, 64)
    b.s[:] = 2.0
    assert np.all(blend(a, b, 0.25).s == 0.5)


def test_state_cli_convert_blend_decay_info(fx, tmp_path):
    m = str(fx / "tiny-rwkv7-f32.gguf")
    r = CliRunner()
    a = tmp_path / "a.state"
    assert r.invoke(cli, ["generate", "-m", m, "-p", "ROMEO:", "-n", "3", "--state-out", str(a)]).exit_code == 0
    for fmt, name in (("llama", "a.bin"), ("pip", "a.pth"), ("fla-npz", "a.npz")):
        res = r.invoke(cli, ["state", "convert", str(a), str(tmp_path / name), "--to", fmt])
        assert res.exit_code == 0, res.output
    from rwkvcpu.loaders import load
    back, _ = load_any_state(str(tmp_path / "a.bin"), load(m).hparams)   # llama bytes need the model shape
    assert back.allclose(load_state(a)[0])
    assert load_any_state(str(tmp_path / "a.pth"))[0].allclose(load_state(a)[0])
    fla = np.load(tmp_path / "a.npz")["wkv"]
    assert np.array_equal(fla[:, 0].transpose(0, 1, 3, 2), load_state(a)[0].wkv())
    assert r.invoke(cli, ["state", "blend", str(a), str(tmp_path / "a.pth"), "--weight", "0.5",
                          "-o", str(tmp_path / "b.state")]).exit_code == 0
    assert r.invoke(cli, ["state", "decay", str(a), "--factor", "0.5", "-o", str(tmp_path / "d.state")]).exit_code == 0
    assert np.allclose(load_state(tmp_path / "d.state")[0].wkv(), 0.5 * load_state(a)[0].wkv())
    res = r.invoke(cli, ["state", "info", str(a)])
    assert res.exit_code == 0 and "layer" in res.output


def test_generate_with_prompt_cache_and_peft_style_state(fx, tmp_path, f32_model):
    m = str(fx / "tiny-rwkv7-f32.gguf")
    cache = tmp_path / "pc.state"
    r = CliRunner()
    base = ["generate", "-m", m, "-n", "6", "--temp", "0", "--no-display-prompt"]
    r.invoke(cli, base + ["-p", "ROMEO: But soft", "--prompt-cache", str(cache)])
    hit = r.invoke(cli, base + ["-p", "ROMEO: But soft, what light", "--prompt-cache", str(cache)])
    cold = r.invoke(cli, base + ["-p", "ROMEO: But soft, what light"])
    assert "prompt cache: reusing" in hit.stderr
    assert hit.stdout == cold.stdout
    # a pip-format state as --state
    _, st = f32_model.forward(toks_for(8, 5))
    write_pip_state(tmp_path / "init.pth", st)
    res = r.invoke(cli, base + ["-p", "x", "--state", str(tmp_path / "init.pth")])
    assert res.exit_code == 0, res.output
