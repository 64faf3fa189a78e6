"""The RWKV-7 ("x070") forward pass on the CPU kernels.

One code path serves prefill (T tokens of a sequence at once: every projection
a [T, C] matrix product, the recurrence inside the WKV kernel), decode (T = 1)
and batches of independent sequences (their rows concatenated; each sequence
owns one slot of a ``StateCache``).

``rec``: an optional callable ``rec(name, array)`` that receives every
intermediate under the name llama.cpp's graph gives it (``attn_norm-0``,
``ffn_inp-0``, ...; see ``rwkvcpu/debug.py``).  When it is ``None`` (the
default) nothing is copied or formatted.
"""
from __future__ import annotations

import os

import numpy as np

from rwkvcpu.kernels import cpu as K
from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels import fused as F
from rwkvcpu.kernels.actquant import round_like_llama, rounding_mode
from rwkvcpu.kernels.intdot import matvec_q8
from rwkvcpu.kernels.reference import DECAY_SCALE, GROUP_NORM_EPS, L2_EPS
from rwkvcpu.loaders import Checkpoint, load
from rwkvcpu.loaders.checkpoint import freeze_weights, readonly
from rwkvcpu.state import State, StateCache

NUMERICS = ("exact", "llama")
_TYPE_IDS = {v: k for k, v in dq.TYPE_NAMES.items()}
FUSED_T = 16             # up to this many rows per layer call: the fused decode kernels (kernels/fused.py)
PREFILL_FUSED = True     # longer prompts: BLAS projections and low-rank products, then fused.tmix_wkv and
                         # fused.cmix_in (fewer T x C temporaries); False: the all-NumPy reference body
PREFILL_CHUNK = 512      # tokens per forward call on long prompts (bounds activation memory)
LOWRANK_F16 = True       # GGUF files with F16 low-rank matrices: the decode kernel reads their f16 bits,
                         # not float32 copies (same values; half the bytes per token)


def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


class Model:
    """A loaded RWKV-7 model.  ``Model.load(path)``; ``forward(tokens, state)``."""

    def __init__(self, ckpt: Checkpoint, threads: int | None = None, device: str = "cpu",
                 numerics: str = "exact"):
        self.ckpt = ckpt
        self.hparams = hp = ckpt.hparams
        self.weights = ckpt.weights
        freeze_weights(self.weights)         # one compiled signature per kernel, whatever the file
        self.set_threads(threads)
        self.device = device
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}; got {numerics!r}")
        self.numerics = numerics
        # file types of the low-rank matrices (the loader widens them to float32; llama.cpp
        # rounds the activation to the file type before multiplying)
        names = {"w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"}
        self._lr_type = {}
        for name, typ, _, _ in ckpt.tensor_table:
            parts = name.split(".")
            if len(parts) == 4 and parts[0] == "blk" and parts[2].startswith("time_mix_") \
                    and parts[2][9:] in names:
                self._lr_type[(int(parts[1]), parts[2][9:])] = _TYPE_IDS.get(typ, 0)
        # per layer, the in-kernel rounding code of each low-rank input (fused decode path)
        lr_keys = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
        self._lr_round = [np.array([rounding_mode(self._lr_type.get((il, k), 0)) if numerics == "llama" else 0
                                    for k in lr_keys], dtype=np.int64) for il in range(hp.n_layer)]
        # The six time-mix lerps of each layer stacked once: one kernel call per layer.
        self._mixes = [np.stack([L.x_r, L.x_w, L.x_k, L.x_v, L.x_a, L.x_g]) for L in self.weights.layers]
        self._lowrank = self._lowrank_forms(LOWRANK_F16)
        self._segments = self._place(device)     # (after _lr_type: the GPU rounds by those types too)
        self._tokenizer = None
        self.n_vocab = hp.vocab_size

    @classmethod
    def load(cls, path: str, threads: int | None = None, vocab: str | None = None,
             device: str = "cpu", numerics: str = "exact") -> "Model":
        """``device``: "cpu", "cuda", "cuda:1", or a strategy such as "cuda *12 -> cpu"
        (the first 12 layers on the GPU, the rest on the CPU; see ``rwkvcpu.gpu``).

        ``numerics``: "exact" (default): float32 activations times the file's exact weights,
        the numbers a float32 reference computes on those weights.  "llama": activations
        rounded as llama.cpp's CPU backend rounds them before its integer dot products
        (``rwkvcpu/kernels/actquant.py``), to reproduce llama.cpp's own logits."""
        return cls(load(path, vocab=vocab), threads=threads, device=device, numerics=numerics)

    def _lowrank_forms(self, f16: bool):
        """Per layer, the eight low-rank matrices as ``fused.tmix_in`` reads them: with ``f16``
        those an F16 file holds as F16 stay its f16 bits (uint16 views of the file), the rest
        float32.  Layer 0 has no value residual: its v1/v2 are placeholders typed like the other
        layers' (one compiled signature)."""
        keys = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
        rows = []
        for L in self.weights.layers:
            row = []
            for k in keys:
                m = (L.lowrank_f16 or {}).get(k) if f16 else None
                if m is None:
                    m = getattr(L, k)
                row.append(m)
            rows.append(row)
        for j in (4, 5):
            ref = next((r[j] for r in rows if r[j] is not None), None)
            for r in rows:
                if r[j] is None:
                    r[j] = np.zeros((1, self.hparams.n_embd) if j == 4 else (self.hparams.n_embd, 1),
                                    dtype=np.float32 if ref is None else ref.dtype)
        return [tuple(readonly(m) for m in r) for r in rows]      # placeholders too (see freeze_weights)

    def _mm(self, x, W):
        if self.numerics == "llama":
            T = x.shape[0]
            if T <= K.SMALL_T:          # decode and short prompts: integer dots where the type has them
                out = np.empty((T, W.shape[0]), dtype=np.float32)
                if matvec_q8(W, np.ascontiguousarray(x), out):
                    return out
            return K.matmul(round_like_llama(x, W.qtype), W)
        return K.matmul(x, W)

    def _lr(self, x, M, il, key):
        """A low-rank product x @ M.T (M float32), with llama's rounding of x for its file type."""
        if self.numerics == "llama":
            x = round_like_llama(x, self._lr_type.get((il, key), 0))
        return K.gemm_nt(x, M)

    def _place(self, device: str):
        """[(Segment, CudaLayers or None)]: where each range of layers runs."""
        from rwkvcpu.gpu import CudaLayers, parse_strategy
        segs = parse_strategy(device, self.hparams.n_layer)
        out = []
        for i, sg in enumerate(segs):
            last = i == len(segs) - 1
            runner = CudaLayers(self, sg.start, sg.stop, last, sg.index) if sg.device == "cuda" else None
            out.append((sg, runner))
        return out

    @property
    def on_gpu(self) -> bool:
        return any(r is not None for _, r in self._segments)

    @staticmethod
    def set_threads(threads: int | None) -> None:
        import numba
        if threads is None:
            env = os.environ.get("RWKVCPU_THREADS")
            threads = int(env) if env else None
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from rwkvcpu.tokenizer import Tokenizer
            if self.ckpt.vocab is None:
                raise ValueError(f"{self.ckpt.path}: no vocabulary (give a World vocab .txt with vocab=...)")
            self._tokenizer = Tokenizer(self.ckpt.vocab)
        return self._tokenizer

    def new_state(self, initial_state=None) -> State:
        """A fresh state, or a copy of ``initial_state`` (a State or a path to any state file,
        e.g. an RWKV-PEFT state-tuned .pth)."""
        if initial_state is None:
            return State.for_model(self.hparams)
        if isinstance(initial_state, State):
            initial_state.check_compatible(self.hparams, "initial state")
            return initial_state.copy()
        from rwkvcpu.state_tools import load_any_state
        return load_any_state(str(initial_state), self.hparams)[0]

    def new_cache(self, n_slots: int) -> StateCache:
        return StateCache.for_model(self.hparams, n_slots)

    def generate(self, prompt, state: State | None = None, **kw):
        """Iterator of text pieces; ``kw`` as ``rwkvcpu.generate.stream_generate``."""
        from rwkvcpu.generate import stream_generate
        for r in stream_generate(self, prompt, state=state, **kw):
            if r.text:
                yield r.text

    # --- public entry points -------------------------------------------------------
    def forward(self, tokens, state: State | None = None, all_logits: bool = False, rec=None):
        """Advance one sequence.  Returns (logits, state): logits [V] of the last token,
        or [T, V] with ``all_logits``; ``state`` is updated in place (a new one if None)."""
        tokens = self._check_tokens(tokens)
        if state is None:
            state = self.new_state()
        state.check_compatible(self.hparams)
        if len(tokens) == 0:
            raise ValueError("forward() needs at least one token")
        outs = []
        for c0 in range(0, len(tokens), PREFILL_CHUNK):
            chunk = tokens[c0:c0 + PREFILL_CHUNK]
            last = c0 + PREFILL_CHUNK >= len(tokens)
            if not (all_logits or last):
                self._run(chunk, [0], [len(chunk)], [0], state, out_rows=np.empty(0, np.int64), rec=rec)
                continue
            rows = np.arange(len(chunk)) if all_logits else np.array([len(chunk) - 1])
            outs.append(self._run(chunk, [0], [len(chunk)], [0], state, rows, rec))
        logits = np.concatenate(outs) if all_logits else outs[-1][0]
        return logits, state

    def forward_batch(self, seqs, cache: StateCache, slots, all_logits: bool = False, rec=None):
        """Advance several independent sequences in one pass; seqs[i] uses cache slot slots[i].

        Returns a list with, per sequence, logits [V] of its last token ([T_i, V] with
        ``all_logits``), or None for a sequence given no tokens (its state is untouched).
        """
        if len(seqs) != len(slots):
            raise ValueError(f"{len(seqs)} sequences but {len(slots)} slots")
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct (got {list(slots)}): two sequences cannot share a state")
        cache.check_compatible(self.hparams)
        for s in slots:
            cache._slot(s)
        seqs = [self._check_tokens(t) for t in seqs]
        live = [i for i, t in enumerate(seqs) if len(t)]
        if not live:
            return [None] * len(seqs)
        lens = [len(seqs[i]) for i in live]
        starts = np.cumsum([0] + lens[:-1])
        flat = np.concatenate([seqs[i] for i in live])
        if all_logits:
            rows = np.arange(len(flat))
        else:
            rows = np.array([s + n - 1 for s, n in zip(starts, lens)])
        logits = self._run(flat, starts, lens, [slots[i] for i in live], cache, rows, rec)
        out = [None] * len(seqs)
        pos = 0
        for j, i in enumerate(live):
            if all_logits:
                out[i] = logits[pos:pos + lens[j]]
                pos += lens[j]
            else:
                out[i] = logits[j]
        return out

    def _check_tokens(self, tokens) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if t.size and (t.min() < 0 or t.max() >= self.n_vocab):
            bad = int(t[(t < 0) | (t >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside this model's vocabulary [0, {self.n_vocab})")
        return t

    # --- the forward pass ---------------------------------------------------------
    def _run(self, tokens, seg_start, seg_len, seg_slot, cache: StateCache, out_rows, rec):
        hp, W = self.hparams, self.weights
        H, N, C = hp.n_head, hp.head_size, hp.n_embd
        seg_start = np.asarray(seg_start, dtype=np.int64)
        seg_len = np.asarray(seg_len, dtype=np.int64)
        seg_slot = np.asarray(seg_slot, dtype=np.int64)
        T = len(tokens)

        if rec and self.on_gpu:
            raise ValueError("recording intermediates (dump/compare) runs on the CPU; "
                             "load the model with device='cpu'")
        first = self._segments[0][1]
        if first is not None and first.embeds:       # the GPU looks the tokens up itself
            x = np.asarray(tokens, dtype=np.int64)
        else:
            x = W.emb.rows(tokens)                                   # embd
            if rec:
                rec("embd", x)
            x = self._ln(x, W.ln0_w, W.ln0_b)
        v_first = None          # layer 0's value, used by every later layer (value residual)
        for n, (sg, runner) in enumerate(self._segments):
            final = n == len(self._segments) - 1
            if runner is not None:
                out = runner.run(x, v_first, seg_start, seg_len, seg_slot, cache, out_rows if final else None)
                if final:
                    np.add.at(cache.n_tokens, seg_slot, seg_len)
                    return out
                x, v_first = out
            else:
                x, v_first = self._cpu_layers(x, v_first, sg.start, sg.stop, final, seg_start, seg_len,
                                              seg_slot, cache, out_rows, rec)
        np.add.at(cache.n_tokens, seg_slot, seg_len)
        if len(out_rows) == 0:
            return np.empty((0, hp.vocab_size), dtype=np.float32)
        xo = self._ln(x, W.ln_out_w, W.ln_out_b)
        logits = self._mm(xo, W.head)
        if rec:
            rec("result_norm", xo)
            rec("result_output", logits)
        return logits

    def _cpu_layers(self, x, v_first, start, stop, final, seg_start, seg_len, seg_slot, cache, out_rows, rec):
        """Layers [start, stop) on the CPU.  With ``final`` the last layer keeps only out_rows."""
        hp, W = self.hparams, self.weights
        H, N, C = hp.n_head, hp.head_size, hp.n_embd
        T = x.shape[0]
        # A mixed strategy's CPU layers never live on the GPU: use the host arrays without
        # synchronising the GPU's layers back every step.
        cr, cs = (cache._r, cache._s) if self.on_gpu else (cache.r, cache.s)
        cache._zero = False
        last = stop - 1 if final else -1
        fused = T <= FUSED_T and not rec
        for il in range(start, stop):
            L = W.layers[il]
            if fused:
                x, v_first = self._fused_layer(il, x, v_first, il == last, seg_start, seg_len, seg_slot,
                                               cr, cs, out_rows)
                if x is None:
                    break
                continue
            if rec:
                rec(f"cache_r_l{il}.in", cr[il, seg_slot].copy())
                rec(f"cache_s_l{il}.in", cs[il, seg_slot].copy())
            # --- time mix --------------------------------------------------------
            xa = self._ln(x, L.ln1_w, L.ln1_b)
            if rec:
                rec(f"attn_norm-{il}", xa)
            prev = np.empty_like(xa)
            K.token_shift(xa, seg_start, seg_len, seg_slot, cr[il], 0, prev)
            mixed = np.empty((6, T, C), dtype=np.float32)
            K.lerps(xa, prev, self._mixes[il], mixed)
            xr, xw, xk, xv, xaa, xg = mixed
            p = f"MUL_MAT:blk.{il}.time_mix_"      # llama.cpp's projections, keyed by their weight
            r = self._mm(xr, L.receptance)
            w1 = self._lr(xw, L.w1, il, "w1")
            w2 = self._lr(np.tanh(w1), L.w2, il, "w2")
            w = np.exp(np.float32(-DECAY_SCALE) * _sigmoid(L.w0 + w2))
            k = self._mm(xk, L.key)
            v = self._mm(xv, L.value)
            if rec:
                rec(p + "receptance.weight", r), rec(p + "w1.weight", w1), rec(p + "w2.weight", w2)
                rec(p + "key.weight", k), rec(p + "value.weight", v)
            v2 = None
            if il == 0:
                v_first = v
            else:
                v1 = self._lr(xv, L.v1, il, "v1")
                v2 = self._lr(v1, L.v2, il, "v2")
                if rec:
                    rec(p + "v1.weight", v1), rec(p + "v2.weight", v2)
                if not (PREFILL_FUSED and not rec):
                    v = v + (v_first - v) * _sigmoid(L.v0 + v2)
            a1 = self._lr(xaa, L.a1, il, "a1")
            a2 = self._lr(a1, L.a2, il, "a2")
            a = _sigmoid(L.a0 + a2)
            g1 = self._lr(xg, L.g1, il, "g1")
            g = self._lr(_sigmoid(g1), L.g2, il, "g2")
            if rec:
                rec(p + "a1.weight", a1), rec(p + "a2.weight", a2)
                rec(p + "g1.weight", g1), rec(p + "g2.weight", g)
            if PREFILL_FUSED and not rec:
                mixed = xr = xw = xk = xv = xaa = xg = xa = prev = w1 = w2 = a1 = a2 = g1 = None   # free
                x, v_first = self._prefill_tail(il, x, v, v_first, r, w, k, a, g, v2, il == last, seg_start, seg_len,
                                                seg_slot, cr, cs, out_rows)
                if x is None:
                    break
                continue
            kk = np.empty_like(k)
            K.l2_normalize_heads(k * L.k_k, H, L2_EPS, kk)
            k = k * (np.float32(1.0) + (a - np.float32(1.0)) * L.k_a)
            if rec:
                rec(f"w-{il}", w), rec(f"kk-{il}", kk)
            y = np.empty((T, H, N), dtype=np.float32)
            sh = (T, H, N)
            K.wkv7(r.reshape(sh), w.reshape(sh), k.reshape(sh), v.reshape(sh),
                   (-kk).reshape(sh), (kk * a).reshape(sh),
                   seg_start, seg_len, seg_slot, cs[il], y)
            y = y.reshape(T, C)
            if rec:
                rec(f"RWKV_WKV7-{il}", np.concatenate([y.reshape(-1), cs[il, seg_slot].reshape(-1)]))
                rec(f"cache_s_l{il}.out", cs[il, seg_slot].copy())
            yn = np.empty_like(y)
            K.group_norm(y, L.ln_x_w, L.ln_x_b, H, GROUP_NORM_EPS, yn)
            bonus = (r * k * L.r_k).reshape(sh).sum(-1, keepdims=True) * v.reshape(sh)
            att = self._mm((yn + bonus.reshape(T, C)) * g, L.output)
            x = x + att
            if rec:
                rec(p + "output.weight", att)
                rec(f"ffn_inp-{il}", x)
            # --- channel mix -------------------------------------------------------
            xf = self._ln(x, L.ln2_w, L.ln2_b)
            if rec:
                rec(f"ffn_norm-{il}", xf)
            prev = np.empty_like(xf)
            K.token_shift(xf, seg_start, seg_len, seg_slot, cr[il], C, prev)
            if rec:
                rec(f"cache_r_l{il}.out", cr[il, seg_slot].copy())
            if il == last:            # only the rows whose logits are wanted go further
                x, xf, prev = x[out_rows], xf[out_rows], prev[out_rows]
                if len(out_rows) == 0:
                    break
            kf = xf + (prev - xf) * L.ffn_x_k
            hidden = self._mm(kf, L.ffn_key)
            if rec:
                rec(f"MUL_MAT:blk.{il}.channel_mix_key.weight", hidden)
            hidden = np.maximum(hidden, 0)
            hidden *= hidden
            ffn = self._mm(hidden, L.ffn_value)
            x = x + ffn
            if rec:
                rec(f"MUL_MAT:blk.{il}.channel_mix_value.weight", ffn)
            if rec:
                rec(f"l_out-{il}", x)
        return x, v_first

    def _prefill_tail(self, il, x, v, v_first, r, w, k, a, g, v2, last, seg_start, seg_len, seg_slot, cr, cs,
                      out_rows):
        """The rest of a prefill layer after its projections and low-rank products: value residual,
        key prep, WKV, group norm, bonus and gate in one kernel per (sequence, head)
        (``fused.tmix_wkv``), the output projection, then the channel mix."""
        hp, L = self.hparams, self.weights.layers[il]
        f32 = np.float32
        has_v = v2 is not None
        vg = _sigmoid(L.v0 + v2) if has_v else np.empty((1, 1), dtype=f32)
        F.tmix_wkv(r, w, k, v, v_first, vg, a, L.k_k, L.k_a, L.r_k, L.ln_x_w, L.ln_x_b, hp.n_head, f32(L2_EPS),
                   f32(GROUP_NORM_EPS), has_v, seg_start, seg_len, seg_slot, cs[il], g)   # g: in, out
        kf = np.empty_like(x)
        F.cmix_in(x, self._mm(g, L.output), L.ln2_w, L.ln2_b, f32(hp.norm_eps), seg_start, seg_len, seg_slot,
                  cr[il], L.ffn_x_k, kf)
        if last:
            if len(out_rows) == 0:
                return None, v_first
            x, kf = x[out_rows], kf[out_rows]
        hidden = self._mm(kf, L.ffn_key)
        del kf
        F.relu_sq(hidden)
        F.add_into(x, self._mm(hidden, L.ffn_value))
        return x, v_first

    def _fused_layer(self, il, x, v_first, last, seg_start, seg_len, seg_slot, cr, cs, out_rows):
        """One layer at small T with the fused kernels (rwkvcpu/kernels/fused.py): the same
        arithmetic as the unfused body of ``_cpu_layers``, in 11 calls instead of ~60."""
        hp, L = self.hparams, self.weights.layers[il]
        H, N, C = hp.n_head, hp.head_size, hp.n_embd
        T = x.shape[0]
        f32 = np.float32
        eps = f32(hp.norm_eps)
        xr, xk, xv, w, a, g = np.empty((6, T, C), dtype=f32)
        has_v = il > 0
        vg = np.empty((T, C) if has_v else (1, 1), dtype=f32)
        w1, w2, a1, a2, v1, v2, g1, g2 = self._lowrank[il]
        F.tmix_in(x, L.ln1_w, L.ln1_b, eps, seg_start, seg_len, seg_slot, cr[il], self._mixes[il],
                  w1, w2, L.w0, a1, a2, L.a0, v1, v2, L.v0 if has_v else L.w0, g1, g2, has_v,
                  self._lr_round[il], xr, xk, xv, w, a, vg, g)
        r = self._mm(xr, L.receptance)
        k = self._mm(xk, L.key)
        v = self._mm(xv, L.value)
        if il == 0:
            v_first = v.copy()
        F.tmix_wkv(r, w, k, v, v_first, vg, a, L.k_k, L.k_a, L.r_k, L.ln_x_w, L.ln_x_b, H, f32(L2_EPS),
                   f32(GROUP_NORM_EPS), has_v, seg_start, seg_len, seg_slot, cs[il], g)   # g: in, out
        kf = np.empty_like(x)
        F.cmix_in(x, self._mm(g, L.output), L.ln2_w, L.ln2_b, eps, seg_start, seg_len, seg_slot, cr[il],
                  L.ffn_x_k, kf)
        if last:
            if len(out_rows) == 0:
                return None, v_first
            x, kf = x[out_rows], kf[out_rows]
        hidden = self._mm(kf, L.ffn_key)
        F.relu_sq(hidden)
        F.add_into(x, self._mm(hidden, L.ffn_value))
        return x, v_first

    def _ln(self, x, w, b):
        out = np.empty_like(x)
        K.layer_norm(x, w, b, np.float32(self.hparams.norm_eps), out)
        return out
