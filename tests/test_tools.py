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
