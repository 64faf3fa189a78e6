"""The model used when no -m is given."""
from __future__ import annotations

from pathlib import Path

from rwkvcpu.registry import RegistryError

BUNDLED = Path(__file__).resolve().parent / "data" / "bundled.gguf"


def default_model_path() -> str:
    if BUNDLED.exists():
        return str(BUNDLED)
    raise RegistryError("no model given: pass -m MODEL (a .gguf or .pth file, or a name from "
                        "`rwkvcpu models list`)")
