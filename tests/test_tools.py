"""tools/make_random_model.py writes models the loader and forward pass accept (no timing here)."""
import sys

import numpy as np

from rwkvcpu.model import Model
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import make_random_model  # noqa: E402


def test_random_tiny_model_round_trips(tmp_path):
    out = tmp_path / "r.gguf"
    make_random_model.main(["--shape", "tiny", "--type", "q8_0", "--vocab", "512", "-o", str(out)])
    m = Model.load(str(out))
    assert (m.hparams.n_layer, m.hparams.n_embd, m.hparams.vocab_size) == (3, 256, 512)
    logits, st = m.forward([1, 2, 3])
    assert np.all(np.isfinite(logits)) and np.abs(logits).max() > 0
    assert m.tokenizer.encode("ab") == [98, 99]       # synthetic vocab: byte b is id b + 1


def test_bench_runs_end_to_end_and_reports_rss_through_decode(tmp_path):
    """tools/bench.py on a tiny model (rwkvcpu only; llama.cpp and rwkv pip are optional extras and
    are hidden here): each number it reports exists and is positive, and the peak RSS through decode
    is at most the whole run's peak.  No timing is asserted."""
    import json
    import os
    import subprocess
    model = tmp_path / "r.gguf"
    make_random_model.main(["--shape", "tiny", "--type", "q4_0", "--vocab", "512", "-o", str(model)])
    hide = tmp_path / "hide"
    hide.mkdir()
    for mod in ("llama_cpp", "rwkv"):                # importable but failing: the bench skips them
        (hide / f"{mod}.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]))
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "-m", str(model), "-t", "1",
                        "--rounds", "1", "--no-cold-start", "--n-decode", "4", "--prefill", "24", "--batch", "3",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"rwkvcpu", "rwkvcpu-ll"}, res.keys()
    for e in res.values():
        assert e["decode"] > 0 and e["prefill"] > 0 and e["batched"] > 0
        assert 0 < e["decode_rss_mb"] <= e["peak_rss_mb"]
    assert "llama.cpp not installed: skipped" in r.stderr
    assert "batched/single decode" in r.stdout and "peak RSS through decode = file +" in r.stdout
    # what rwkvcpu's kernels were compiled for, as the worker's Numba saw it (AVX2 width or AVX-512)
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("built for: Numba ") and " at " in ln]


def test_bench_names_a_missing_model_file(tmp_path, capsys):
    """A model path that does not exist is an argument error naming the option and the path, not a
    traceback from a worker process."""
    sys.path.insert(0, str(ROOT / "tools"))
    import bench
    import pytest
    missing = tmp_path / "nope.gguf"
    with pytest.raises(SystemExit) as e:
        bench.main(["-m", str(missing), "--no-cold-start"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--model" in err and str(missing) in err and "no such file" in err


def test_random_pth_is_written_without_torch_and_equals_the_gguf(tmp_path):
    """--type pth writes a BlinkDL-layout torch zip with the project's own writer (no torch
    needed); read back through the allow-list loader it is the same model as the F32 GGUF of the
    same seed: the same logits (the two files' tensors are the same float32 numbers)."""
    pth, gguf = tmp_path / "r.pth", tmp_path / "r.gguf"
    make_random_model.main(["--shape", "tiny", "--type", "pth", "--vocab", "512", "-o", str(pth)])
    make_random_model.main(["--shape", "tiny", "--type", "f32", "--vocab", "512", "-o", str(gguf)])
    a, _ = Model.load(str(pth)).forward([1, 2, 3, 4], all_logits=True)
    b, _ = Model.load(str(gguf)).forward([1, 2, 3, 4], all_logits=True)
    assert np.all(np.isfinite(a)) and np.abs(a).max() > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_profile_step_times_every_part_of_a_step():
    """tools/profile_step.py on a fixture model, 3 sequences: every kernel it wraps was called (a
    positive time) and its wrappers are taken off afterwards.  No timing is asserted."""
    from tests.conftest import require_fixtures
    import profile_step
    from rwkvcpu.kernels import fused as F
    before = F.tmix_in
    r = profile_step.profile(str(require_fixtures() / "tiny-rwkv7-q8_0.gguf"), "llama", batch=3, steps=2)
    assert F.tmix_in is before                      # the wrappers are taken off again
    assert {"tmix_in", "tmix_wkv", "cmix_in", "mm", "head", "other", "step"} <= set(r)
    assert all(v > 0 for k, v in r.items() if k != "other")


def test_profile_step_roofline_counts_a_step_and_puts_it_against_the_peaks():
    """--roofline: the multiply-adds and weight bytes of a decode step, counted here from the
    fixture's shapes (3 layers, C 256, ffn 1024, vocab 4096, low-rank 64/64/32/128, no value
    residual in layer 0; Q8_0 blocks of 32 in 34 bytes), and each part's time at given peaks."""
    from tests.conftest import require_fixtures
    import profile_step as P
    path = str(require_fixtures() / "tiny-rwkv7-q8_0.gguf")
    C, F, V, L = 256, 1024, 4096, 3
    mm = L * (4 * C * C + 2 * C * F)
    lowrank = 2 * C * (L * (64 + 64 + 128) + (L - 1) * 32)
    macs = P.macs_per_token(path, "llama")
    assert macs == {"mm": {"int8": mm, "bytes": mm * 34 // 32}, "head": {"int8": V * C, "bytes": V * C * 34 // 32},
                    "tmix_in": {"f32": lowrank, "bytes": 4 * lowrank}}
    assert P.macs_per_token(path, "exact")["mm"] == {"f32": mm, "bytes": mm * 34 // 32}
    pk = {"f32": 10.0, "int8": 20.0, "read": 1.0}           # GMAC/s, GB/s
    r = {"mm": 1e-3, "head": 1e-3, "tmix_in": 1e-3, "step": 5e-3}
    lines = P.roofline(path, "llama", 4, r, {"step": 2e-3}, pk=pk)
    mm_peak = max(4 * mm / 20e9, mm * 34 / 32 / 1e9)     # compute (int8) or memory, whichever is longer
    assert f"at peak {mm_peak * 1e3:6.3f} ms" in lines[1]
    tm_peak = max(4 * lowrank / 10e9, 4 * lowrank / 1e9)
    assert f"at peak {tm_peak * 1e3:6.3f} ms" in lines[3]
    head_peak = max(4 * V * C / 20e9, V * C * 34 / 32 / 1e9)
    best = 5e-3 - sum(max(0.0, 1e-3 - p) for p in (mm_peak, head_peak, tm_peak))
    assert f"at peak {4 / best / 500:.2f}x" in lines[-1]      # one sequence: 500 tok/s
    got = P.peaks(seconds=0.02)
    assert all(got[k] > 0 for k in ("f32", "int8", "read"))
