import json
import time

import pytest

from rwkvcpu.loaders import load_world_vocab
from rwkvcpu.loaders.vocab import read_gguf_vocab
from rwkvcpu.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizers(fx):
    world = Tokenizer(read_gguf_vocab(str(fx / "world-vocab-only.gguf")))
    tiny_txt = Tokenizer(load_world_vocab(fx / "tiny-vocab.txt"))
    tiny_gguf = Tokenizer(read_gguf_vocab(str(fx / "tiny-rwkv7-f32.gguf")))
    return world, tiny_txt, tiny_gguf


def test_every_fixture_case(fx, tokenizers):
    world, tiny_txt, tiny_gguf = tokenizers
    cases = json.loads((fx / "tokenize-cases.json").read_text())["cases"]
    assert len(cases) == 42
    for c in cases:
        for tok, key in ((world, "world_rwkvpip"), (world, "world_llama"), (tiny_txt, "tiny_rwkvpip"),
                         (tiny_gguf, "tiny_llama")):
            ids = tok.encode(c["text"])
            assert ids == c[key], (key, c["text"])
            assert tok.decode(ids) == c["text"]


def test_stream_decoder_holds_back_partial_utf8(tokenizers):
    world = tokenizers[0]
    text = "naïve 日本語 👩‍👩‍👧"
    ids = world.encode(text)
    # split into single-byte tokens so every multi-byte character arrives in pieces
    byte_ids = [world.encode(bytes([b]))[0] for b in text.encode()]
    d = world.stream()
    pieces = [d.put(i) for i in byte_ids] + [d.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[2] == "" and pieces[3] == "ï"      # 'ï' is 2 bytes: nothing until both arrive


def test_encode_one_megabyte_fast(tokenizers, capsys):
    world = tokenizers[0]
    text = ("The quick brown fox jumps over the lazy dog. " * 24000)[: 1 << 20]
    world.encode(text[:100])
    t = time.perf_counter()
    ids = world.encode(text)
    dt = time.perf_counter() - t
    assert world.decode(ids) == text
    print(f"encoded 1 MiB in {dt:.3f} s")   # a figure for the record, not an assertion on speed


def test_trie_longest_match_duplicates_prefixes_and_gaps():
    """The trie is built from the byte-sorted vocabulary in one pass (tokenizer._sorted_trie); its
    encoding must be greedy longest match, with the first id winning for a duplicated byte string,
    empty tokens ignored, and a clear error for a byte no token covers.  The expected ids below
    follow from the vocabulary by hand (longest match from each position)."""
    vocab = [b"", b"a", b"ab", b"abc", b"b", b"ab", b"c", b"ba", b"\xff", b"bab", b"x"]
    tok = Tokenizer(vocab)
    assert tok.encode(b"abcabx") == [3, 2, 10]          # abc | ab | x  (id 2, not its duplicate 5)
    assert tok.encode(b"babab") == [9, 2]               # bab | ab
    assert tok.encode(b"cba\xff") == [6, 7, 8]
    assert tok.encode(b"") == []
    with pytest.raises(ValueError, match="no token for byte 0x7a at offset 2"):
        tok.encode(b"abz")
