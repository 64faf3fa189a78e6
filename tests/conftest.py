"""Shared test fixtures.

Tests that need ``../shared/fixtures`` skip with a reason when it is absent;
with RWKVCPU_REQUIRE_FIXTURES=1 (set by .ci/run) they fail instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("RWKVCPU_FIXTURES", ROOT.parent / "shared" / "fixtures"))

GGUF_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
              "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs"]


def require_fixtures() -> Path:
    if not FIXTURES.is_dir():
        msg = f"reference fixtures not found at {FIXTURES} (set RWKVCPU_FIXTURES)"
        if os.environ.get("RWKVCPU_REQUIRE_FIXTURES") == "1":
            pytest.fail(msg + " and RWKVCPU_REQUIRE_FIXTURES=1")
        pytest.skip(msg)
    return FIXTURES


@pytest.fixture(scope="session")
def fx() -> Path:
    return require_fixtures()


_models: dict = {}


def fixture_model(name: str):
    """A Model for a fixture file, loaded once per session (read-only use only)."""
    from rwkvcpu.model import Model
    d = require_fixtures()
    if name not in _models:
        vocab = str(d / "tiny-vocab.txt") if name.endswith(".pth") else None
        _models[name] = Model.load(str(d / name), vocab=vocab)
    return _models[name]


@pytest.fixture(scope="session")
def pth_model():
    return fixture_model("tiny-rwkv7.pth")


@pytest.fixture(scope="session")
def f32_model():
    return fixture_model("tiny-rwkv7-f32.gguf")


@pytest.fixture(scope="session")
def pip_ref(fx):
    return np.load(fx / "ref-rwkvpip-tiny-rwkv7.npz")
