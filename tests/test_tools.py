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
