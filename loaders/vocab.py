"""Vocabulary tables: id -> token bytes, from a World ``.txt`` file or a GGUF token list."""
from __future__ import annotations

import ast
import os

from .checkpoint import LoadError


def unescape_gguf_token(s: bytes) -> bytes:
    """Undo the escaping llama.cpp's converter applies to RWKV tokens.

    The converter writes each token as the body of Python's ``repr(bytes)``:
    ``\\t \\n \\r`` and ``\\xHH`` for other non-printables, ``\\\\`` and ``\\'``
    for the backslash and quote.  llama.cpp's loader reads ``\\x`` + two hex
    digits, the three named escapes, and otherwise takes the escaped character
    literally; this does the same.
    """
    if b"\\" not in s:
        return s
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c != 0x5C or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = s[i + 1]
        if e == ord("x") and i + 3 < n:
            try:
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append({ord("t"): 9, ord("n"): 10, ord("r"): 13}.get(e, e))
        i += 2
    return bytes(out)


def load_world_vocab(path: str) -> list[bytes]:
    """Read ``rwkv_vocab_v20230424.txt``-format lines: ``<id> <repr of str|bytes> <byte length>``."""
    table: dict[int, bytes] = {}
    try:
        lines = open(path, "rb").read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise LoadError(f"{path}: cannot read vocabulary file ({e})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sp1 = line.index(" ")
            sp2 = line.rindex(" ")
            idx = int(line[:sp1])
            tok = ast.literal_eval(line[sp1 + 1:sp2])   # a literal, never code
            length = int(line[sp2 + 1:])
        except (ValueError, SyntaxError) as e:
            raise LoadError(f"{path}:{lineno}: not a World vocabulary line ({e}): {line[:60]!r}") from None
        b = tok.encode("utf-8") if isinstance(tok, str) else tok
        if not isinstance(b, bytes) or len(b) != length:
            raise LoadError(f"{path}:{lineno}: token length {len(b)} does not match the stated {length}")
        table[idx] = b
    if not table:
        raise LoadError(f"{path}: empty vocabulary file")
    size = max(table) + 1
    return [table.get(i, b"") for i in range(size)]


def find_vocab_beside(model_path: str) -> str | None:
    """A World vocab ``.txt`` next to a ``.pth``: same stem, or any ``*vocab*.txt`` in the folder."""
    stem, _ = os.path.splitext(model_path)
    folder = os.path.dirname(os.path.abspath(model_path))
    cands = [stem + ".txt", stem + "-vocab.txt", os.path.join(folder, "rwkv_vocab_v20230424.txt")]
    try:
        cands += sorted(os.path.join(folder, f) for f in os.listdir(folder)
                        if f.endswith(".txt") and "vocab" in f)
    except OSError:
        pass
    for c in cands:
        if os.path.isfile(c):
            return c
    return None


def read_gguf_vocab(path: str) -> list[bytes]:
    """The id -> bytes table of any GGUF with an RWKV vocabulary (e.g. a --vocab-only file)."""
    from .gguf_format import GGUFFile
    from .gguf_loader import _gguf_vocab
    v = _gguf_vocab(path, GGUFFile(path))
    if v is None:
        raise LoadError(f"{path}: no tokenizer.ggml.tokens in this GGUF")
    return v
