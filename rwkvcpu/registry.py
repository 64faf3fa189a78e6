"""``models.toml``: the models ``rwkvcpu models list|pull`` knows, and a resumable, verified download.

A download goes to ``<file>.part`` (resumed with an HTTP Range request when it
exists), is checked against the expected size (``size_bytes`` or the server's
length) and ``sha256`` when known, and only then renamed to its final name, so
a half file never sits under the final name.
"""
from __future__ import annotations

import hashlib
import os
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parent


class RegistryError(ValueError):
    pass


def registry_path() -> Path:
    env = os.environ.get("RWKVCPU_MODELS_TOML")
    if env:
        return Path(env)
    for p in (PKG_DIR / "data" / "models.toml", PKG_DIR.parent / "models.toml"):
        if p.exists():
            return p
    raise RegistryError("models.toml not found (set RWKVCPU_MODELS_TOML)")


def load_registry(path: str | Path | None = None) -> dict:
    p = Path(path) if path else registry_path()
    try:
        with open(p, "rb") as f:
            reg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RegistryError(f"{p}: cannot read model registry ({e})") from None
    reg.setdefault("models", {})
    reg.setdefault("vocab", {})
    return reg


def models_dir() -> Path:
    d = Path(os.environ.get("RWKVCPU_HOME", Path.home() / ".cache" / "rwkvcpu")) / "models"
    return d


def local_path(entry: dict) -> Path:
    if entry.get("bundled"):
        return PKG_DIR / "data" / entry["file"]
    return models_dir() / entry["file"]


def resolve_model(name_or_path: str, reg: dict | None = None) -> tuple[str, str | None]:
    """A model argument -> (file path, vocab path or None).  Paths win over registry names."""
    if os.path.exists(name_or_path):
        return name_or_path, None
    reg = reg or load_registry()
    entry = reg["models"].get(name_or_path)
    if entry is None:
        raise RegistryError(f"{name_or_path}: no such file, and not a model name in {registry_path()} "
                            f"(known: {', '.join(sorted(reg['models']))})")
    p = local_path(entry)
    if not p.exists():
        raise RegistryError(f"model {name_or_path} is not downloaded yet: run `rwkvcpu models pull {name_or_path}`")
    vocab = None
    if entry.get("vocab"):
        vp = local_path(reg["vocab"][entry["vocab"]])
        vocab = str(vp) if vp.exists() else None
    return str(p), vocab


def download(url: str, dest: Path, size: int | None = None, sha256: str | None = None,
             progress=None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``), verify, rename.  Returns ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "rwkvcpu"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and size == have:       # already complete
            resp = None
        else:
            raise RegistryError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RegistryError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    if resp is not None:
        with resp:
            if have and resp.status != 206:
                have = 0                                  # server ignored the range: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            if size is not None and total is not None and total != size:
                raise RegistryError(f"{url}: server reports {total} bytes, expected {size}")
            if progress:
                progress(have, total)
            with open(part, "ab" if have else "wb") as f:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress(have, total)
            if total is not None and have != total:
                raise RegistryError(f"{url}: download interrupted at {have} of {total} bytes; "
                                    "run the same command again to resume")
    got = part.stat().st_size
    if size is not None and got != size:
        raise RegistryError(f"{part}: {got} bytes, expected {size}; delete it and pull again")
    if sha256:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != sha256.lower():
            bad = part.with_name(part.name + ".bad")
            os.replace(part, bad)
            raise RegistryError(f"{url}: sha256 mismatch (got {h.hexdigest()}, expected {sha256}); "
                                f"the file was moved to {bad}")
    os.replace(part, dest)
    return dest


def pull(name: str, reg: dict | None = None, progress=None) -> list[Path]:
    """Download a registry model (and its vocabulary) into ``models_dir()``."""
    reg = reg or load_registry()
    entry = reg["models"].get(name)
    if entry is None:
        raise RegistryError(f"unknown model {name!r} (known: {', '.join(sorted(reg['models']))})")
    if entry.get("bundled"):
        return [local_path(entry)]          # ships with the package: nothing to download
    out = []
    items = [entry]
    if entry.get("vocab"):
        items.append(reg["vocab"][entry["vocab"]])
    for it in items:
        dest = local_path(it)
        if dest.exists() and (it.get("size_bytes") in (None, dest.stat().st_size)):
            out.append(dest)
            continue
        out.append(download(it["url"], dest, it.get("size_bytes"), it.get("sha256"), progress))
    return out
