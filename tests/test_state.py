"""State layout converters and the state file format."""
import json
import zipfile

import numpy as np
import pytest

from rwkvcpu.state import State, StateCache, StateError, load_state, save_state


def random_state(L=3, C=256, N=64, seed=0):
    rng = np.random.default_rng(seed)
    st = State(L, C, N)
    st.r[:] = rng.standard_normal(st.r.shape)
    st.s[:] = rng.standard_normal(st.s.shape)
    st.n_tokens[0] = 17
    return st


def test_rwkv_pip_round_trip_and_order():
    st = random_state()
    items = st.to_rwkv_pip()
    assert len(items) == 9 and items[1].shape == (4, 64, 64)
    np.testing.assert_array_equal(items[0], st.r[0, 0, :256])      # att x_prev first
    np.testing.assert_array_equal(items[2], st.r[0, 0, 256:])      # ffn x_prev last
    assert State.from_rwkv_pip(items).allclose(st)


def test_fla_layout_is_the_transpose():
    st = random_state()
    fla = st.to_fla()
    assert fla.shape == (3, 1, 4, 64, 64)
    # fla's [K, V]: element [k, v] is our [v, k]
    assert fla[1, 0, 2, 5, 9] == st.wkv()[1, 2, 9, 5]
    back = State.from_fla(fla, st.att_x_prev(), st.ffn_x_prev())
    assert back.allclose(st)


def test_llama_bytes_round_trip(fx):
    ref = np.load(fx / "ref-llama-tiny-rwkv7-f32.npz")
    raw = ref["seqlong_state_bytes"].tobytes()
    st = State.from_llama_seq_bytes(raw, 256, 64)
    assert st.n_tokens[0] == 64
    np.testing.assert_array_equal(st.r[:, 0], ref["seqlong_state_r_l"])
    assert st.to_llama_seq_bytes() == raw          # byte for byte what llama.cpp wrote


def test_llama_bytes_errors():
    raw = random_state().to_llama_seq_bytes()
    with pytest.raises(StateError, match="truncated"):
        State.from_llama_seq_bytes(raw[:-10], 256, 64)
    with pytest.raises(StateError, match="not a llama.cpp sequence state"):
        State.from_llama_seq_bytes(b"\0" * 64, 256, 64)
    with pytest.raises(StateError, match="holds 2048 bytes, expected 4096"):
        State.from_llama_seq_bytes(raw, 512, 64)


def test_cache_slot_operations():
    c = StateCache(2, 128, 64, n_slots=3)
    c.r[:, 1] = 1.0
    c.s[:, 1] = 2.0
    c.n_tokens[1] = 5
    c.copy_slot(1, 2)
    assert np.all(c.s[:, 2] == 2.0) and c.n_tokens[2] == 5
    c.keep_only(2)
    assert np.all(c.s[:, 1] == 0) and np.all(c.s[:, 2] == 2.0)
    c.clear(2)
    assert not c.s.any() and not c.r.any()
    with pytest.raises(StateError, match="slot 3 out of range"):
        c.copy_slot(0, 3)
    # per-layer buffers are llama.cpp's cache_s_l{il} bytes
    assert c.cache_s_l(1).shape == (3 * 128 * 64,)


@pytest.mark.parametrize("dtype,tol", [("f32", 0.0), ("f16", 1e-3), ("bf16", 8e-3)])
def test_file_round_trip(tmp_path, dtype, tol):
    st = random_state()
    p = tmp_path / "s.state"
    save_state(p, st, dtype=dtype, tokens=[1, 2, 3])
    back, hdr = load_state(p)
    assert hdr["dtype"] == dtype and hdr["tokens"] == [1, 2, 3] and back.n_tokens[0] == 17
    # relative error of the storage type: 0 (f32), 2^-11 (f16), 2^-8 (bf16)
    rel = np.abs(back.s - st.s).max() / np.abs(st.s).max()
    assert rel <= tol
    if dtype == "f32":
        assert back.allclose(st)


def test_corrupted_and_truncated_files_are_detected(tmp_path):
    st = random_state()
    p = tmp_path / "s.state"
    save_state(p, st)
    data = bytearray(p.read_bytes())
    (tmp_path / "t.state").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(StateError, match=r"t\.state: unreadable state file"):
        load_state(tmp_path / "t.state")
    # flip one float inside the stored s array, keeping the zip valid
    with zipfile.ZipFile(p) as z:
        arrays = {n: z.read(n) for n in z.namelist()}
    s = bytearray(arrays["s.npy"])
    s[-5] ^= 0xFF
    arrays["s.npy"] = bytes(s)
    with zipfile.ZipFile(tmp_path / "c.state", "w") as z:
        for n, b in arrays.items():
            z.writestr(n, b)
    with pytest.raises(StateError, match="checksum mismatch"):
        load_state(tmp_path / "c.state")


def test_state_for_another_model_shape_is_refused(tmp_path, f32_model):
    p = tmp_path / "s.state"
    save_state(p, random_state(L=2, C=128, N=64))
    with pytest.raises(StateError, match="n_layer=2, n_embd=128.*this model has n_layer=3, n_embd=256"):
        load_state(p, f32_model.hparams)


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "keep.state"
    save_state(p, random_state(seed=1))
    before = p.read_bytes()
    import rwkvcpu.state as S
    monkeypatch.setattr(S.np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_state(p, random_state(seed=2))
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.state"]     # no temp file left behind
