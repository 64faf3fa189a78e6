"""The RWKV World tokenizer: greedy longest match over bytes, with a trie.

The trie is stored flat (CSR: each node's children as a sorted run of edges)
so the matching loop runs in Numba: encoding is a walk from each position to
the longest token that starts there, exactly as rwkv pip's ``TRIE_TOKENIZER``
and llama.cpp's RWKV tokenizer do.
"""
from __future__ import annotations

import codecs

import numpy as np
from numba import njit


@njit(cache=True)
def _encode(data, first, count, edge_byte, edge_child, node_token, out):
    n = data.shape[0]
    i = 0
    m = 0
    while i < n:
        node = 0
        best_tok = -1
        best_len = 0
        j = i
        while j < n:
            lo = first[node]
            hi = lo + count[node]
            c = data[j]
            while lo < hi:                       # binary search among the children
                mid = (lo + hi) // 2
                if edge_byte[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            if lo >= first[node] + count[node] or edge_byte[lo] != c:
                break
            node = edge_child[lo]
            j += 1
            if node_token[node] >= 0:
                best_tok = node_token[node]
                best_len = j - i
        if best_tok < 0:
            return -(i + 1)                       # no token covers byte i
        out[m] = best_tok
        m += 1
        i += best_len
    return m


class Tokenizer:
    def __init__(self, vocab: list[bytes]):
        self.vocab = list(vocab)
        self.n_vocab = len(self.vocab)
        self._build()

    def _build(self) -> None:
        children: list[dict[int, int]] = [{}]
        node_token = [-1]
        for tid, tok in enumerate(self.vocab):
            if not tok:
                continue
            node = 0
            for byte in tok:
                nxt = children[node].get(byte)
                if nxt is None:
                    nxt = len(children)
                    children[node][byte] = nxt
                    children.append({})
                    node_token.append(-1)
                node = nxt
            if node_token[node] < 0:             # first id wins for duplicate byte strings
                node_token[node] = tid
        n = len(children)
        first = np.zeros(n, np.int64)
        count = np.zeros(n, np.int64)
        eb, ec = [], []
        for i, ch in enumerate(children):
            first[i] = len(eb)
            count[i] = len(ch)
            for b in sorted(ch):
                eb.append(b)
                ec.append(ch[b])
        self._trie = (first, count, np.array(eb, np.uint8), np.array(ec, np.int64),
                      np.array(node_token, np.int64))

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if not data:
            return []
        buf = np.frombuffer(data, dtype=np.uint8)
        out = np.empty(len(data), dtype=np.int64)
        m = _encode(buf, *self._trie, out)
        if m < 0:
            pos = -m - 1
            raise ValueError(f"the vocabulary has no token for byte {data[pos]:#04x} at offset {pos}")
        return out[:m].tolist()

    def decode_bytes(self, ids) -> bytes:
        try:
            return b"".join(self.vocab[i] for i in ids)
        except IndexError:
            bad = [i for i in ids if not 0 <= i < self.n_vocab][0]
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})") from None

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Token ids in, text out; an incomplete UTF-8 sequence is held back until completed."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def put(self, token_id: int) -> str:
        return self._dec.decode(self.tok.vocab[token_id], final=False)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
