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


@njit(cache=True)
def _sorted_trie(data, offs, ids):
    """The trie of byte strings data[offs[k]:offs[k+1]], given in sorted order: each key shares its
    longest common prefix with the previous one, so only its remaining bytes make new nodes, below
    the previous key's node at that depth.  Returns the edges (parent, byte, child), created in
    depth-first order (a node's children in increasing byte order), and each node's token id."""
    n = offs.shape[0] - 1
    total = offs[n]
    parent = np.empty(total, np.int64)
    ebyte = np.empty(total, np.uint8)
    child = np.empty(total, np.int64)
    token = np.full(total + 1, -1, np.int64)
    path = np.zeros(total + 1, np.int64)        # path[d]: the previous key's node at depth d
    nodes = 1
    edges = 0
    ps = 0
    pl = 0
    for k in range(n):
        s = offs[k]
        ln = offs[k + 1] - s
        lcp = 0
        while lcp < ln and lcp < pl and data[s + lcp] == data[ps + lcp]:
            lcp += 1
        node = path[lcp]
        for d in range(lcp, ln):
            parent[edges] = node
            ebyte[edges] = data[s + d]
            child[edges] = nodes
            edges += 1
            node = nodes
            nodes += 1
            path[d + 1] = node
        if token[node] < 0:
            token[node] = ids[k]
        ps = s
        pl = ln
    return parent[:edges], ebyte[:edges], child[:edges], token[:nodes]


class Tokenizer:
    def __init__(self, vocab: list[bytes]):
        self.vocab = list(vocab)
        self.n_vocab = len(self.vocab)
        self._build()

    def _build(self) -> None:
        # keys in byte order (stable: for duplicate byte strings the first id wins), then the trie
        # built in one Numba pass over their bytes (~10 ms; a Python dict per node took ~180 ms of
        # every cold start)
        order = sorted((i for i, t in enumerate(self.vocab) if t), key=self.vocab.__getitem__)
        keys = [self.vocab[i] for i in order]
        offs = np.zeros(len(keys) + 1, np.int64)
        np.cumsum([len(k) for k in keys], out=offs[1:])
        data = np.frombuffer(b"".join(keys), dtype=np.uint8)
        parent, edge_byte, child, node_token = _sorted_trie(data, offs, np.asarray(order, np.int64))
        count = np.bincount(parent, minlength=len(node_token)).astype(np.int64)
        first = np.cumsum(count) - count
        by_parent = np.argsort(parent, kind="stable")   # each node's edges, already in byte order
        self._trie = (first, count, edge_byte[by_parent], child[by_parent], node_token)

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
