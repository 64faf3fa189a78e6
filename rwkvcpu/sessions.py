"""A thread-safe store of per-session states, with LRU limits, expiry, disk spill and prefix forking.

    store = SessionStore(model, max_sessions=1000, max_bytes=2 << 30, ttl=3600, spill_dir="/tmp/states")
    store.create_from_prefix("alice", system_prompt_ids)     # the prefix is processed once, then copied
    logits = store.advance("alice", user_ids)

Every state is an independent copy: forking copies, eviction removes (or spills to disk, to be
loaded on the next access), and one session's tokens never touch another's state.  Forward
passes run one at a time (``model_lock``), since the kernels already use every core.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict

import numpy as np

from rwkvcpu.state import State, load_state, save_state


class SessionStore:
    def __init__(self, model, max_sessions: int | None = None, max_bytes: int | None = None,
                 ttl: float | None = None, spill_dir: str | None = None, max_prefixes: int = 16):
        self.model = model
        self.max_sessions, self.max_bytes, self.ttl = max_sessions, max_bytes, ttl
        self.spill_dir = spill_dir
        if spill_dir:
            os.makedirs(spill_dir, exist_ok=True)
        self._live: OrderedDict[str, State] = OrderedDict()      # LRU order: oldest first
        self._last: dict[str, float] = {}
        self._spilled: set[str] = set()
        self._prefixes: OrderedDict[str, tuple[State, np.ndarray]] = OrderedDict()
        self.max_prefixes = max_prefixes
        self._lock = threading.RLock()
        self._session_locks: dict[str, threading.Lock] = {}
        self.model_lock = threading.Lock()
        self.evictions = 0

    # --- bookkeeping ----------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._live.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._live) + len(self._spilled)

    def __contains__(self, sid) -> bool:
        with self._lock:
            self._expire()
            return sid in self._live or sid in self._spilled

    def _spill_path(self, sid: str) -> str:
        return os.path.join(self.spill_dir, hashlib.sha256(sid.encode()).hexdigest()[:32] + ".state")

    def _expire(self) -> None:
        if self.ttl is None:
            return
        now = time.monotonic()
        for sid in [s for s, t in self._last.items() if now - t > self.ttl]:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        self._live.pop(sid, None)
        self._last.pop(sid, None)
        if sid in self._spilled:
            self._spilled.discard(sid)
            try:
                os.unlink(self._spill_path(sid))
            except FileNotFoundError:
                pass

    def _enforce_limits(self) -> None:
        def over():
            if self.max_sessions is not None and len(self._live) > self.max_sessions:
                return True
            return self.max_bytes is not None and sum(s.nbytes for s in self._live.values()) > self.max_bytes
        while self._live and over():
            sid, st = next(iter(self._live.items()))
            if self._session_locks.get(sid) and self._session_locks[sid].locked() and len(self._live) > 1:
                self._live.move_to_end(sid)               # in use right now: evict the next one
                sid, st = next(iter(self._live.items()))
            del self._live[sid]
            self.evictions += 1
            if self.spill_dir:
                save_state(self._spill_path(sid), st, extra={"session": sid})
                self._spilled.add(sid)
            else:
                self._last.pop(sid, None)

    def _touch(self, sid: str, st: State) -> None:
        self._live[sid] = st
        self._live.move_to_end(sid)
        self._last[sid] = time.monotonic()

    # --- sessions ------------------------------------------------------------------------------
    def put(self, sid: str, state: State) -> None:
        state.check_compatible(self.model.hparams, "session state")
        with self._lock:
            self._spilled.discard(sid)
            self._touch(sid, state.copy())
            self._enforce_limits()

    def get(self, sid: str) -> State:
        """A copy of the session's state (KeyError if unknown or expired)."""
        with self._lock:
            return self._get(sid).copy()

    def _get(self, sid: str) -> State:
        self._expire()
        if sid in self._live:
            st = self._live[sid]
        elif sid in self._spilled:
            st, _ = load_state(self._spill_path(sid), self.model.hparams)
            os.unlink(self._spill_path(sid))
            self._spilled.discard(sid)
        else:
            raise KeyError(f"no session {sid!r}")
        self._touch(sid, st)
        self._enforce_limits()
        return st

    def clear(self, sid: str) -> None:
        with self._lock:
            self._drop(sid)
            self._session_locks.pop(sid, None)

    def fork(self, src: str, dst: str) -> None:
        """dst <- a copy of src's state."""
        with self._lock:
            self.put(dst, self._get(src))

    def advance(self, sid: str, tokens, all_logits: bool = False):
        """Feed tokens to a session (created empty if new); returns the logits."""
        with self._lock:
            lock = self._session_locks.setdefault(sid, threading.Lock())
        with lock:
            with self._lock:
                try:
                    st = self._get(sid).copy()
                except KeyError:
                    st = self.model.new_state()
            with self.model_lock:
                logits, st = self.model.forward(tokens, st, all_logits=all_logits)
            with self._lock:
                self._spilled.discard(sid)
                self._touch(sid, st)
                self._enforce_limits()
        return logits

    # --- shared prefixes ------------------------------------------------------------------
    def prefix_state(self, prefix_ids) -> State:
        """The state after ``prefix_ids``, computed once and cached (LRU of ``max_prefixes``)."""
        ids = np.asarray(prefix_ids, dtype=np.int64)
        key = hashlib.sha256(ids.tobytes()).hexdigest()
        with self._lock:
            hit = self._prefixes.get(key)
            if hit is not None:
                self._prefixes.move_to_end(key)
                return hit[0]
        with self.model_lock:
            _, st = self.model.forward(ids, self.model.new_state())
        with self._lock:
            self._prefixes[key] = (st, ids)
            while len(self._prefixes) > self.max_prefixes:
                self._prefixes.popitem(last=False)
        return st

    def create_from_prefix(self, sid: str, prefix_ids) -> None:
        self.put(sid, self.prefix_state(prefix_ids))
