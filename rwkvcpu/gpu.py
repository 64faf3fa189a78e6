"""Running layers on an NVIDIA GPU (numba.cuda), and strategies like ``"cuda *12 -> cpu"``.

A ``CudaLayers`` holds a contiguous range of layers (and, when it runs the last
one, the output norm and head) on one GPU: weights uploaded once in their file
encoding (types without an in-kernel decoder are widened to float32: exact),
activation buffers reused between calls, and the state of its layers in
device slots.  Per step only the embeddings go up and the logits of the wanted
rows come back.

State ownership: a ``StateCache`` keeps its host arrays; while a GPU advances
it, the device copy of the GPU's layers is the newest (``DeviceMirror``).
Reading ``cache.r`` / ``cache.s`` on the host copies those layers back first
(see ``rwkvcpu/state.py``), so saving, comparing or continuing on the CPU always
sees the real state.  CPU layers of a mixed strategy use the host arrays
directly, and never touch the GPU's layers.
"""
from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass

import numpy as np

from rwkvcpu.kernels import dequant as dq
from rwkvcpu.kernels.actquant import R_BF16, R_F16, rounding_mode
from rwkvcpu.kernels.reference import DECAY_SCALE, GROUP_NORM_EPS, L2_EPS

assert abs(DECAY_SCALE - 0.606531) < 1e-12   # the constant written in kernels/cuda.pre_wkv


class StrategyError(ValueError):
    """A --device / strategy string that cannot be used."""


@dataclass
class Segment:
    device: str          # "cpu" or "cuda"
    index: int           # GPU ordinal for cuda
    start: int           # first layer
    stop: int            # one past the last layer


def parse_strategy(text: str, n_layer: int) -> list[Segment]:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"cuda *12 -> cpu"``, ``"cpu *4 -> cuda"`` ...

    Each ``->``-separated part is a device and optionally ``*N`` (its number of layers);
    the last part takes the remaining layers.  Weights stay in the file's encoding, so
    rwkv pip's precision words (fp16, fp32, bf16, i8) are refused rather than ignored.
    """
    parts = [p.strip() for p in str(text).split("->")]
    if not parts or any(not p for p in parts):
        raise StrategyError(f"strategy {text!r}: empty part (write e.g. 'cuda *12 -> cpu')")
    segs: list[Segment] = []
    at = 0
    for n, part in enumerate(parts):
        m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?(?:\s+([^\s*]+))?(?:\s*\*\s*(\d+)\+?)?", part)
        if not m:
            raise StrategyError(f"strategy {text!r}: cannot read {part!r} "
                                "(expected 'cpu' or 'cuda[:N]', optionally '*LAYERS')")
        dev, idx, word, count = m.groups()
        if word is not None:
            raise StrategyError(f"strategy {text!r}: {word!r} is not needed: rwkvcpu keeps the weights in "
                                "the file's encoding on every device (use 'rwkvcpu quantize' to change it)")
        if dev == "cpu" and idx:
            raise StrategyError(f"strategy {text!r}: 'cpu' takes no device number")
        last = n == len(parts) - 1
        if count is None and not last:
            raise StrategyError(f"strategy {text!r}: {part!r} needs a layer count ('*N') "
                                "because another part follows it")
        k = n_layer - at if count is None else int(count)
        if last and count is not None and at + k != n_layer:
            k = n_layer - at          # the last part takes the rest, as in rwkv pip
        if k < 0 or at + k > n_layer:
            raise StrategyError(f"strategy {text!r}: asks for {at + k} layers; the model has {n_layer}")
        if k:
            if segs and segs[-1].device == dev and segs[-1].index == int(idx or 0):
                segs[-1].stop += k
            else:
                segs.append(Segment(dev, int(idx or 0), at, at + k))
        at += k
    return segs


def cuda_available() -> bool:
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:          # numba without a CUDA driver raises various errors
        return False


class DeviceMirror:
    """Device state slots for a runner's layers, lent to one StateCache at a time.

    The runner keeps a few of these per slot count (``CudaLayers.MIRRORS``) and reuses them:
    the captured CUDA graphs hold the addresses of these arrays, so a fresh state (a new
    ``StateCache`` per prompt, the common case) replays the graph of its shape instead of
    recording and capturing the whole step again (~45 ms of a 1.5B prefill-512).  Lending a
    mirror to another cache first copies the device values back into the cache that held them
    (if it still exists), then the new cache's values up: no state is ever lost or shared."""

    def __init__(self, runner: "CudaLayers", cache):
        from numba import cuda
        self.runner = runner
        self.n_slots = cache.n_slots
        self.l0, self.l1 = runner.layer_ids[0], runner.layer_ids[-1] + 1      # contiguous layers:
        with runner.ctx():                                                     # one copy each way
            self.R_all = cuda.device_array(cache._r[self.l0:self.l1].shape, np.float32)
            self.S_all = cuda.device_array(cache._s[self.l0:self.l1].shape, np.float32)
        self.R = {il: self.R_all[il - self.l0] for il in runner.layer_ids}
        self.S = {il: self.S_all[il - self.l0] for il in runner.layer_ids}
        self._owner = None
        self.dev_newer = False
        self.host_newer = False

    def owner(self):
        return self._owner() if self._owner is not None else None

    def lend(self, cache) -> None:
        """Give these slots to ``cache``: the previous holder gets its values back first."""
        prev = self.owner()
        if prev is not None and prev is not cache:
            self.pull(prev)
            prev._mirrors = [m for m in prev._mirrors if m is not self]
        self._owner = weakref.ref(cache)
        if self not in cache._mirrors:
            cache._mirrors.append(self)
        self.dev_newer = False
        self.push(cache)

    def pull(self, cache) -> None:
        if self.owner() is not cache:       # lent to another cache since: nothing of this one here
            return
        if self.dev_newer:
            with self.runner.ctx():
                self.R_all.copy_to_host(cache._r[self.l0:self.l1])
                self.S_all.copy_to_host(cache._s[self.l0:self.l1])
            self.dev_newer = False
            cache._zero = False
        self.host_newer = True        # the caller may now write through the host arrays

    def push(self, cache) -> None:
        with self.runner.ctx():
            if not (getattr(cache, "_zero", False) and self._memset0()):
                self.R_all.copy_to_device(cache._r[self.l0:self.l1])
                self.S_all.copy_to_device(cache._s[self.l0:self.l1])
        self.host_newer = False

    def _memset0(self) -> bool:
        """Zero the device slots without an upload (a fresh state: 12.6 MB at 1.5B, ~10 ms from
        pageable memory); False when this numba-cuda has no memset (then the caller uploads)."""
        try:
            from numba.cuda.cudadrv.driver import device_memset
            device_memset(self.R_all, 0, self.R_all.nbytes)
            device_memset(self.S_all, 0, self.S_all.nbytes)
            return True
        except Exception:       # noqa: BLE001
            return False


_DUMMY_U16 = []


def _dummy_u16():
    """A 1 x 1 uint16 device array: mv1_w64's scale argument for weights that have none."""
    from numba import cuda
    if not _DUMMY_U16:
        _DUMMY_U16.append(cuda.to_device(np.zeros((1, 1), np.uint16)))
    return _DUMMY_U16[0]


class DevMatrix:
    """A weight matrix on the device: kind 'q' (ggml blocks), 'q8r' (Q8_0 repacked: int8 values
    [rows, cols] in ``arr``, block scales as f16 bits [rows, cols/32] in ``d16``; the same bytes),
    'f' (float32/16) or 'bf16'.  ``rmode``: how llama numerics round its input (0: not at all)."""
    rmode = 0

    def __init__(self, Q):
        from numba import cuda
        from rwkvcpu.kernels import cuda as CK
        self.rows, self.cols = Q.shape
        self.qt = Q.qtype
        if Q.qtype in (dq.F32, dq.F16):
            self.kind, host = "f", np.ascontiguousarray(Q.raw)
        elif Q.qtype == dq.BF16:
            self.kind, host = "bf16", np.ascontiguousarray(Q.raw)
        elif Q.qtype == dq.Q8_0:
            # repacked (same bytes): int8 values [rows, cols] + block scales (f16 bits) [rows, cols/32]
            blocks = np.ascontiguousarray(Q.row_bytes).reshape(self.rows, self.cols // 32, 34)
            self.kind = "q8r"
            self.d16 = cuda.to_device(np.ascontiguousarray(blocks[:, :, :2]).view(np.uint16)
                                      .reshape(self.rows, self.cols // 32))
            host = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(self.rows, self.cols)
        elif Q.qtype in CK.NATIVE_QTYPES:
            self.kind, host = "q", np.ascontiguousarray(Q.row_bytes)
        else:                        # no in-kernel decoder: widen exactly, once
            self.kind, host = "f", Q.dequantize()
            self.qt = dq.F32
        self.arr = cuda.to_device(host)
        self.nbytes = host.nbytes + (self.d16.nbytes if self.kind == "q8r" else 0)
        self.q64 = self.arr.view(np.uint64) if self.kind == "q8r" else None
        if self.kind != "q8r":
            self.d16 = _dummy_u16()
        # F16 weights as their bits, for the tensor-core GEMM (exact in one half: two MMAs, not three)
        self.half16 = self.arr.view(np.uint16) if host.dtype == np.float16 else None
        # the decode kernels read whole words: f32/f16/bf16 rows as uint32 (mv1_f)
        self.words, self.wkind = None, -1
        try:
            if self.kind in ("f", "bf16") and (host.dtype.itemsize == 4 or self.cols % 2 == 0):
                self.words = self.arr.view(np.uint32)
                self.wkind = 0 if host.dtype.itemsize == 4 else (2 if self.kind == "bf16" else 1)
        except (TypeError, ValueError):       # an older numba without size-changing views
            self.words, self.wkind = None, -1
        # and, where a row is whole 64-bit words and x fits in shared memory, as uint64 (mv1_w64)
        self.words64 = None
        if self.wkind in (0, 1, 2) and self.cols <= CK.MV1_XMAX and self.nbytes % (8 * self.rows) == 0:
            try:
                self.words64 = self.arr.view(np.uint64)
            except (TypeError, ValueError):
                self.words64 = None
        elif self.kind == "q8r" and self.cols <= CK.MV1_XMAX:
            self.words64, self.wkind = self.q64, 3


class _Dense:
    """A float32 device matrix (a view of a stacked weight) that ``CudaLayers.matmul`` takes at
    T > MV_T; ``wh``, ``wl``: its hi/lo halves (for the pipelined tiles), when given."""
    kind, qt, half16, words, wkind, words64, q64, d16 = "f", dq.F32, None, None, -1, None, None, None

    def __init__(self, arr, rmode: int = 0, wh=None, wl=None):
        self.arr = arr
        self.rmode = rmode
        self.wh, self.wl = wh, wl
        self.rows, self.cols = arr.shape


def _hilo(a: np.ndarray) -> np.ndarray:
    """float32 -> [2, ...] uint16: the hi and lo halves (hi = f16(a), lo = f16(a - hi), round to
    nearest even as the tiles' cvt.rn), as tc_gemm.cu splits float32 weights in its tiles."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    hi = a.astype(np.float16)
    lo = (a - hi.astype(np.float32)).astype(np.float16)
    return np.stack([hi, lo]).view(np.uint16)


def _grid_rows(n: int, per: int) -> int:
    return (n + per - 1) // per


def _dim3(d) -> tuple:
    d = tuple(d) if isinstance(d, tuple) else (d,)
    return d + (1,) * (3 - len(d))


class _NotRecorded(RuntimeError):
    def __init__(self, msg, launched):
        super().__init__(msg)
        self.launched = launched


def _launch_hook():
    """(module, name) of the function numba-cuda's kernel launch ends in: ``launch`` (from
    cuda.core) in numba-cuda >= 0.2x, ``cudadrv.driver.launch_kernel`` in older numba."""
    try:
        import numba.cuda.dispatcher as DM
        if callable(getattr(DM, "launch", None)):
            return DM, "launch"
        from numba.cuda.cudadrv import driver as D
        if callable(getattr(D, "launch_kernel", None)):
            return D, "launch_kernel"
    except ImportError:
        pass
    raise _NotRecorded("this numba has no known kernel-launch function", launched=False)


class _Launches:
    """Recorded kernel launches of one step, replayed without numba's per-call dispatch.

    A decode step is ~15 small kernels per layer; numba's launch path (typing every argument,
    wrapping arrays, marshalling them) costs far more than the kernels themselves.  The first
    step of a given shape is launched normally while numba's final driver call
    (``cudadrv.driver.launch_kernel``) is observed; its arguments (function handle, grid,
    marshalled kernel arguments) are kept.  Later steps of that shape refresh the inputs in
    the same device buffers and repeat those driver calls.  Only device arrays and scalars
    are passed (no host array that numba would copy to a temporary), and every array an
    entry points into is held in ``keep``, so no pointer can dangle.
    """

    def __init__(self, mirror):
        self.mirror = mirror
        self.bufs = None
        self.entries = []
        self.keep = []

    def launch_and_record(self, kern, grid, block, args, smem: int = 0) -> None:
        from numba import cuda
        for a in args:
            if isinstance(a, np.ndarray) and not cuda.is_cuda_array(a):
                raise _NotRecorded("a host array would be copied to a temporary", launched=False)
        mod, name = _launch_hook()
        orig = getattr(mod, name)
        seen = []

        def spy(*a, **k):
            seen.append((a, k))
            return orig(*a, **k)
        setattr(mod, name, spy)
        try:
            kern[grid, block, 0, smem](*args)
        finally:
            setattr(mod, name, orig)
        if len(seen) != 1:
            raise _NotRecorded(f"expected one driver launch, saw {len(seen)}", launched=True)
        self.entries.append((orig, seen[0][0], seen[0][1]))
        self.keep.append(args)

    def replay(self) -> None:
        for fn, a, k in self.entries:
            fn(*a, **k)


def _driver():
    """cuda-python's driver module (``cuda.bindings.driver``, or ``cuda.cuda`` in older releases)."""
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        from cuda import cuda as cu        # noqa: raises ImportError when cuda-python is absent
    return cu


def _check(res, what):
    err = res[0] if isinstance(res, tuple) else res
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err!r}")
    return res[1] if isinstance(res, tuple) and len(res) > 1 else None


class _Graph:
    """One step captured as a CUDA graph: every kernel of the step in a single driver launch.

    Captured once per shape from plain numba launches on a private stream (nothing runs while
    capturing); replays then cost one ``cuGraphLaunch``.  Like ``_Launches``, it is valid only
    for the buffers and the device state it was captured on (``bufs``, ``mirror``): inputs are
    refreshed in those buffers before each launch.  The stream is a blocking stream, so the
    legacy default stream's copies before and after are ordered with it.
    """

    def __init__(self, mirror, bufs, stream, graph, exe):
        self.mirror, self.bufs, self.stream, self.graph, self.exe = mirror, bufs, stream, graph, exe
        self._cu = _driver()
        h = stream.handle
        self._h = h if isinstance(h, self._cu.CUstream) else self._cu.CUstream(int(getattr(h, "value", h) or 0))

    def replay(self) -> None:
        _check(self._cu.cuGraphLaunch(self.exe, self._h), "cuGraphLaunch")

    def __del__(self):
        try:
            self._cu.cuGraphExecDestroy(self.exe)
            self._cu.cuGraphDestroy(self.graph)
        except Exception:     # interpreter shutdown or a torn-down context: nothing to free
            pass


class CudaLayers:
    """Layers [start, stop) (and the head when ``with_head``) on GPU ``index``."""

    def __init__(self, model, start: int, stop: int, with_head: bool, index: int = 0):
        import numba
        from numba import cuda
        from rwkvcpu.kernels import cuda as CK
        numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0    # small grids are expected at batch 1
        if not cuda_available():
            raise StrategyError("no CUDA GPU is available to numba (numba.cuda.is_available() is False); "
                                "use --device cpu")
        self.K = CK
        self.index = index
        hp = model.hparams
        if hp.head_size > CK.NMAX:
            raise StrategyError(f"head_size {hp.head_size} exceeds the GPU kernels' limit {CK.NMAX}")
        self.hp = hp
        self.layer_ids = list(range(start, stop))
        self.with_head = with_head
        self._bufs: dict[int, dict] = {}
        self._plans: dict[tuple, _Launches] = {}
        self._mirrors: dict[int, list[DeviceMirror]] = {}
        self._rec: _Launches | None = None
        self._stream = None          # set while capturing a graph: launches go to this stream
        self.fast_launch = True      # set False if this numba-cuda's internals differ (then: plain launches)
        self.use_graphs = True       # set False if graph capture fails here (then: recorded launches)
        self._partbuf = None
        self._part_views = {}
        self._views = {}
        self._cur = None
        self.weight_bytes = 0
        # llama numerics: every product's input rounded as llama.cpp's CPU backend rounds it for
        # the weight's file type (then the exact product), as the CPU forward does in that mode
        self.llama = getattr(model, "numerics", "exact") == "llama"
        if self.llama and CK.SIM:
            raise StrategyError("numerics='llama' on the GPU needs the CUDA C kernels (not the simulator)")
        lr_type = getattr(model, "_lr_type", {})

        def rmode(qtype):
            return rounding_mode(qtype) if self.llama else 0
        W = model.weights
        C = hp.n_embd
        with self.ctx():
            dev = cuda.to_device
            self.lut = dev(dq.F16_LUT)
            self.layers = []
            for il in self.layer_ids:
                L = W.layers[il]
                d = {}
                for k in ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "w0", "a0", "k_k", "k_a", "r_k",
                          "ln_x_w", "ln_x_b"):
                    d[k] = dev(np.ascontiguousarray(getattr(L, k), dtype=np.float32))
                d["v0"] = dev(np.ascontiguousarray(L.v0 if L.v0 is not None else np.zeros(C), dtype=np.float32))
                d["mix6"] = dev(np.stack([L.x_r, L.x_w, L.x_k, L.x_v, L.x_a, L.x_g]).astype(np.float32))
                d["mix1"] = dev(np.ascontiguousarray(L.ffn_x_k, dtype=np.float32).reshape(1, C))
                # low-rank stage 1: w1 (mix 1), a1 (mix 4), v1 (mix 3), g1 (mix 5), stacked
                firsts = [(L.w1, 1), (L.a1, 4)] + ([(L.v1, 3)] if L.v1 is not None else []) + [(L.g1, 5)]
                d["lr1"] = dev(np.concatenate([m for m, _ in firsts]).astype(np.float32))
                d["lr1_src"] = dev(np.concatenate([np.full(len(m), s, np.int64) for m, s in firsts]))
                dims = [len(m) for m, _ in firsts]
                offs = np.cumsum([0] + dims[:-1])
                seconds = [L.w2, L.a2, L.v2, L.g2]          # each [C, D]
                acts = [1, 0, 0, 2]                            # tanh(w1), a1, v1, sigmoid(g1)
                has_v = L.v1 is not None
                in_off = [offs[0], offs[1], offs[2] if has_v else 0, offs[-1]]
                flat, seg_w, seg_d = [], [], []
                pos = 0
                for m in seconds:
                    if m is None:
                        seg_w.append(0)
                        seg_d.append(0)
                        continue
                    a = np.ascontiguousarray(m, dtype=np.float32)
                    flat.append(a.reshape(-1))
                    seg_w.append(pos)
                    seg_d.append(a.shape[1])
                    pos += a.size
                d["lr2"] = dev(np.concatenate(flat))
                d["lr2_w"] = dev(np.array(seg_w, np.int64))
                d["lr2_in"] = dev(np.array(in_off, np.int64))
                d["lr2_d"] = dev(np.array(seg_d, np.int64))
                d["lr2_act"] = dev(np.array(acts, np.int64))
                d["d1"] = int(sum(dims))
                # the same products as plain float32 matrices for prefill/batches (T > MV_T): there
                # lowrank1/2 (a warp per output, a loop over T) took half of a 1.5B prefill
                lr1 = d["lr1"]
                # and as hi/lo halves for the pipelined tiles (tc_hgemm_w2g): the same bytes again
                hl1 = dev(_hilo(np.concatenate([m for m, _ in firsts])))
                hl2 = dev(_hilo(np.concatenate(flat)))
                names1 = {1: "w1", 4: "a1", 3: "v1", 5: "g1"}
                d["lr1_gemm"] = [(src, int(o), n, _Dense(lr1[int(o):int(o) + n],
                                                         rmode(lr_type.get((il, names1[src]), dq.F32)),
                                                         hl1[0, int(o):int(o) + n], hl1[1, int(o):int(o) + n]))
                                 for (_, src), o, n in zip(firsts, offs, dims)]
                names2 = ("w2", "a2", "v2", "g2")
                sl2 = [slice(seg_w[si], seg_w[si] + C * seg_d[si]) for si in range(4)]
                d["lr2_gemm"] = [(si, int(in_off[si]), seg_d[si], acts[si],
                                  _Dense(d["lr2"][sl2[si]].reshape(C, seg_d[si]),
                                         rmode(lr_type.get((il, names2[si]), dq.F32)),
                                         hl2[0, sl2[si]].reshape(C, seg_d[si]), hl2[1, sl2[si]].reshape(C, seg_d[si])))
                                 for si in range(4) if seg_d[si]]
                # llama numerics with rounded low-rank inputs (F16/BF16 files): rounded copies of
                # the inputs, the activations applied while rounding (then none in the product)
                d["lr_round"] = any(M.rmode for *_, M in d["lr1_gemm"] + d["lr2_gemm"])
                d["lr2_act0"] = dev(np.zeros(4, np.int64))
                for k in ("receptance", "key", "value", "output", "ffn_key", "ffn_value"):
                    d[k] = DevMatrix(getattr(L, k))
                    d[k].rmode = rmode(getattr(L, k).qtype)
                    self.weight_bytes += d[k].nbytes
                self.layers.append(d)
            # the embedding lookup and ln0 on the device when this runner starts the model: per
            # step only token ids go up (the host lookup, ln0 and a [T, C] upload were ~1.5 ms of
            # a 1.5B prefill-512); file types the kernel decodes exactly, else the host does it
            self.embeds = start == 0 and W.emb.qtype in (dq.F32, dq.F16, dq.BF16, dq.Q8_0)
            if self.embeds:
                E = DevMatrix(W.emb)
                self.weight_bytes += E.nbytes
                dummy32 = dev(np.zeros((1, 1), np.float32))
                dummy8 = dev(np.zeros((1, 1), np.int8))
                if E.kind == "q8r":
                    self.emb_args = (dummy32, E.d16, E.arr, E.d16, 3)
                elif E.kind == "bf16":
                    self.emb_args = (dummy32, E.arr, dummy8, E.d16, 2)
                elif E.half16 is not None:
                    self.emb_args = (dummy32, E.half16, dummy8, E.d16, 1)
                else:
                    self.emb_args = (E.arr, E.d16, dummy8, E.d16, 0)
                self.ln0_w = dev(np.ascontiguousarray(W.ln0_w, dtype=np.float32))
                self.ln0_b = dev(np.ascontiguousarray(W.ln0_b, dtype=np.float32))
            if with_head:
                self.ln_out_w = dev(np.ascontiguousarray(W.ln_out_w, dtype=np.float32))
                self.ln_out_b = dev(np.ascontiguousarray(W.ln_out_b, dtype=np.float32))
                self.head = DevMatrix(W.head)
                self.head.rmode = rmode(W.head.qtype)
                self.weight_bytes += self.head.nbytes
            mats = [d[k] for d in self.layers for k in ("receptance", "key", "value", "output",
                                                         "ffn_key", "ffn_value")]
            if with_head:
                mats.append(self.head)
            big = max([m.rows * m.cols for m in mats if m.kind != "f" or m.qt != dq.F32] + [1])
            self.scratch = cuda.device_array(big, dtype=np.float32)   # expanded tile for prefill GEMMs
            self._nopart = cuda.device_array((1, 1, 1), dtype=np.float32)   # gemm without split K
            self.tc, self.tc_error = self._probe_tensor_cores()
            self.hg, self.hg_error = self._probe_hgemm() if self.tc else (False, "no tensor cores")
            self.wkvc, self.wkvc_error = self._probe_wkvc() if self.tc else (False, "no NVRTC")
            self.big, self.big_error = None, None       # 128 x 128 tiles: probed on first use (_big)

    def ctx(self):
        from numba import cuda
        return cuda.gpus[self.index]

    def _probe_tensor_cores(self):
        """(use the tensor-core GEMM, why not): compiled and checked once on a small product, so a
        missing NVRTC or an old GPU falls back to the float32 SIMT ``gemm`` before any graph capture.
        RWKVCPU_NO_TC=1 forces the fallback."""
        from numba import cuda
        K = self.K
        if K.SIM or os.environ.get("RWKVCPU_NO_TC"):
            return False, "disabled" if not K.SIM else "simulator"
        try:
            if cuda.get_current_device().compute_capability < (8, 0):
                return False, "needs compute capability 8.0 or newer"
            rng = np.random.default_rng(0)
            x = rng.standard_normal((3, 40)).astype(np.float32)
            w = rng.standard_normal((5, 40)).astype(np.float32)
            out = cuda.device_array((3, 5), dtype=np.float32)
            K.tc_gemm32[(1, 1, 1), 128](cuda.to_device(x), cuda.to_device(w), out, 5, 3, 5, 40, 0, 0)
            got = out.copy_to_host()
            if not np.allclose(got, x @ w.T, rtol=1e-5, atol=1e-5):
                return False, f"self-check failed (max error {np.abs(got - x @ w.T).max():.3g})"
        except Exception as e:          # noqa: BLE001 (NVRTC missing, link errors...): keep the SIMT gemm
            return False, f"{type(e).__name__}: {str(e)[:200]}"
        return True, None

    def _probe_hgemm(self):
        """(use the pipelined half-tile GEMM, why not), checked like ``_probe_tensor_cores``;
        RWKVCPU_NO_HGEMM=1 keeps the register-staged tiles (for A/B measurements)."""
        from numba import cuda
        K = self.K
        if os.environ.get("RWKVCPU_NO_HGEMM"):
            return False, "disabled"
        try:
            rng = np.random.default_rng(1)
            x = rng.standard_normal((3, 40)).astype(np.float32)
            w = rng.standard_normal((5, 40)).astype(np.float16)
            hl = cuda.device_array((2, 3, 40), dtype=np.uint16)
            out = cuda.device_array((3, 5), dtype=np.float32)
            K.split_x[1, 32](cuda.to_device(x), hl[0], hl[1], 0)
            K.tc_hgemm[(1, 1, 1), 128](hl[0], hl[1], cuda.to_device(w.view(np.uint16)), out, 5, 3, 5, 40, 40, 0)
            want = x @ w.astype(np.float32).T
            got = out.copy_to_host()
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                return False, f"self-check failed (max error {np.abs(got - want).max():.3g})"
        except Exception as e:          # noqa: BLE001
            return False, f"{type(e).__name__}: {str(e)[:200]}"
        return True, None

    def _probe_big(self):
        """(use the 128 x 128 tiles, why not): they need over 48 KB of dynamic shared memory, which
        a kernel must be opted in to through the driver (cuda-python); checked bit for bit against
        the 64 x 64 tile on a ragged product.  RWKVCPU_NO_BIG=1 keeps the smaller tiles."""
        from numba import cuda
        K = self.K
        if os.environ.get("RWKVCPU_NO_BIG"):
            return False, "disabled"
        try:
            rng = np.random.default_rng(3)
            T, N, C = 130, 136, 72
            x = rng.standard_normal((T, C)).astype(np.float32)
            w = cuda.to_device(rng.standard_normal((N, C)).astype(np.float16).view(np.uint16))
            hl = cuda.device_array((2, T, C), dtype=np.uint16)
            K.split_x[_grid_rows(T * C // 4, 256), 256](cuda.to_device(x), hl[0], hl[1], 0)
            got = []
            for kern, grid, block, smem in ((K.tc_hgemm, (3, 3, 1), 128, 0),
                                            (K.tc_hgemm_b, (2, 2, 1), 128, K.BIG_SMEM_X)):
                out = cuda.device_array((T, N), dtype=np.float32)
                args = (hl[0], hl[1], w, out, N, T, N, C, C, 0)
                if smem:
                    K.allow_smem(kern, args, smem)
                kern[grid, block, 0, smem](*args)
                got.append(out.copy_to_host())
            if not np.array_equal(*got):
                return False, f"self-check failed (max difference {np.abs(got[0] - got[1]).max():.3g})"
        except Exception as e:          # noqa: BLE001 (no cuda-python, a driver that refuses...)
            return False, f"{type(e).__name__}: {str(e)[:200]}"
        return True, None

    def _big(self, rows: int, cols: int, T: int, groups: int = 1):
        """(slices, columns per slice) for ``groups`` products of x [T, cols] and F16 W [rows, cols]
        on the 128 x 128 tiles, or None where those would not fill the GPU (then the 64-row
        tiles).  K is split (``groups`` 1 only) into slices of BIG_KMIN columns at least, up to a
        wave of GEMM_FILL blocks.  1.5B prefill-512, each product timed alone (H100, graphs):
        ffn_key 114 -> 79 us, ffn_value 120 -> 91 us (4 slices), r/k/v 91 -> 75 us (f16 x)."""
        K = self.K
        if not self.hg or T <= K.MV_T or cols % 8:
            return None
        nb = groups * _grid_rows(rows, K.BIG) * _grid_rows(T, K.BIG)
        ks = 1 if groups > 1 else max(1, min(K.GEMM_FILL // nb, cols // K.BIG_KMIN, K.GEMM_PART // (T * rows)))
        if nb * ks < K.BIG_FILL:
            return None
        if self.big is None:
            self.big, self.big_error = self._probe_big()
        if not self.big:
            return None
        kc = _grid_rows(_grid_rows(cols, ks), 32) * 32
        return _grid_rows(cols, kc), kc

    def _probe_wkvc(self):
        """(use the CUDA C wkv7_64c, why not): checked against the numba wkv7_64 on a few tokens;
        RWKVCPU_NO_WKVC=1 keeps the numba kernel."""
        from numba import cuda
        K = self.K
        if os.environ.get("RWKVCPU_NO_WKVC"):
            return False, "disabled"
        try:
            rng = np.random.default_rng(2)
            T, N = 11, K.NMAX
            ins = [rng.uniform(-1, 1, (T, N)).astype(np.float32) for _ in range(6)]
            ins[1] = rng.uniform(0.5, 1, (T, N)).astype(np.float32)          # w: a decay
            seg = [cuda.to_device(np.array([z], np.int64)) for z in (0, T, 0)]
            outs = []
            for kern, grid, block in ((K.wkv7_64c, (1, 1, K.WKVC_SPLIT), K.WKVC_THREADS),
                                      (K.wkv7_64, (1, 1), N * K.WKV_LANES)):
                S = cuda.to_device(np.full((1, 1, N, N), 0.5, np.float32))
                y = cuda.device_array((T, N), np.float32)
                kern[grid, block](*(cuda.to_device(z) for z in ins), *seg, S, y)
                outs.append((y.copy_to_host(), S.copy_to_host()))
            for u, v in zip(*outs):
                if not np.allclose(u, v, rtol=1e-4, atol=1e-4):
                    return False, f"self-check failed (max error {np.abs(u - v).max():.3g})"
        except Exception as e:          # noqa: BLE001
            return False, f"{type(e).__name__}: {str(e)[:200]}"
        return True, None

    # --- buffers ---------------------------------------------------------------------------
    def _buffers(self, T: int) -> dict:
        from numba import cuda
        b = self._bufs.get(T)
        if b is None:
            if len(self._bufs) >= 4:
                old = self._bufs.pop(next(iter(self._bufs)))
                # a plan writes into the buffers it was made on: drop the plans of evicted buffers,
                # and the views into them (a view keeps its buffer's device memory alive)
                self._plans = {k: p for k, p in self._plans.items() if p.bufs is not old}
                self._views = {k: v for k, v in self._views.items()
                               if not (k[0] in ("xhl", "xr", "lrhl") and k[1] == id(old[k[0]]))}
            hp = self.hp
            C, F = hp.n_embd, hp.n_ffn
            D1 = max([d["d1"] for d in self.layers] + [1])
            e = lambda *s: cuda.device_array(s, dtype=np.float32)   # noqa: E731
            b = dict(x=e(T, C), xa=e(T, C), mixed=e(6, T, C), r=e(T, C), k=e(T, C), v=e(T, C),
                     h1=e(T, D1), h2=e(T, 4 * C), w=e(T, C), A=e(T, C), B=e(T, C), y=e(T, C),
                     z=e(T, C), vfirst=e(T, C), xf=e(1, T, C), hid=e(T, F),
                     segs=cuda.device_array((3, T), dtype=np.int64), rows=cuda.device_array(T, dtype=np.int64),
                     tok=cuda.device_array(T, dtype=np.int64),
                     xo=e(T, C), xn=e(T, C),
                     xhl=cuda.device_array(2 * T * max(C, F), dtype=np.uint16),   # x as hi/lo halves
                     xr=e(T * max(C, F) if self.llama else 1),    # x rounded (llama numerics)
                     lrhl=cuda.device_array(max(8 * T * C, 2 * T * D1), dtype=np.uint16))  # low-rank x halves
            if self._pre_halves(T):          # the lerped rows as hi/lo halves (shift_mix_hl), and zero lo halves
                b["mixhl"] = cuda.device_array((2, 6, T, C), dtype=np.uint16)
                b["zhl"] = cuda.to_device(np.zeros((T, C), np.uint16))
            if self.llama and any(d["lr_round"] for d in self.layers):
                b["mixr"], b["h1r"] = e(6, T, C), e(T, D1)
            if self.with_head:
                b["logits"] = e(T, hp.vocab_size)
            self._bufs[T] = b
        return b

    # --- one matrix product ------------------------------------------------------------------
    def matmul(self, M: DevMatrix, x, T: int, out, act: int = 0, epi: int = 0) -> None:
        K = self.K
        if M.rmode:          # llama numerics: x rounded for this weight's type, then the exact product
            if M.rmode == R_F16 and T > K.MV_T and self.hg and M.half16 is not None and M.cols % 8 == 0:
                # split_x rounds x to f16 as it splits it (act bits 4-7), the tile takes its hi
                # halves alone: one MMA per product
                self._hgemm(M, x, T, out, epi, act | (R_F16 << 4), f16_x=True)
                return
            else:
                xr = self._cur["xr"]
                xr = self._view(("xr", id(xr), T, M.cols), lambda: xr[:T * M.cols].reshape(T, M.cols))
                self.round_x(x, act, M.rmode, xr)
                x, act = xr, 0
        if T <= K.MV_T:
            grid, block = (_grid_rows(M.rows, K.MV_WARPS),), (32, K.MV_WARPS)
            if M.kind == "q8r" and (T > 1 or M.cols > K.MV1_XMAX):
                self._go(K.mv_q8r, grid, block, M.q64, M.d16, x, T, out, act, epi)
            elif T == 1 and M.words64 is not None:
                self._go(K.mv1_w64, (_grid_rows(M.rows, K.MV1_WARPS),), (32, K.MV1_WARPS), M.words64, M.d16, x,
                         out, act, epi, M.wkind)
            elif T == 1 and M.wkind >= 0:
                self._go(K.mv1_f, grid, block, M.words, x, out, act, epi, M.wkind)
            elif M.kind == "q":
                self._go(K.mv_q, grid, block, M.qt, M.arr, self.lut, x, T, out, act, epi)
            else:
                self._go(K.mv_f, grid, block, M.arr, x, T, out, act, epi, M.kind == "bf16")
            return
        # repacked Q8_0 only for prompts (T > 64): at batch 64 (split K, short K slices) its 3-MMA
        # half tiles measured slower than expanding to float32 for the register-staged tiles
        if self.hg and M.cols % 8 == 0 and (M.half16 is not None or (M.kind == "q8r" and T > 64)):
            self._hgemm(M, x, T, out, epi, act)
            return
        Wf = M.arr
        if M.kind != "f":
            Wf = self.scratch[: M.rows * M.cols].reshape(M.rows, M.cols)
            if M.kind == "q8r":
                self._go(K.expand_q8r, _grid_rows(M.rows * M.cols, 256), 256, M.arr, M.d16, Wf)
            elif M.kind == "q":
                n = M.rows * (M.cols // 32)
                self._go(K.expand_q, _grid_rows(n, 256), 256, M.qt, M.arr, self.lut, Wf)
            else:
                self._go(K.expand_bf16, (_grid_rows(M.rows, 16), _grid_rows(M.cols, 16)), (16, 16), M.arr, Wf)
        gx, gy = _grid_rows(M.rows, K.GEMM_BN), _grid_rows(T, K.GEMM_BM)
        cols = M.cols
        ks, kc = self._split_k(gx * gy, cols, T * M.rows, 32 if self.tc else K.GEMM_BK)
        if self.tc:
            kern, Wk = (K.tc_gemm16, M.half16) if M.half16 is not None else (K.tc_gemm32, Wf)
            if ks > 1:
                part = self._part_view(ks, T, M.rows)
                self._go(kern, (gx, gy, ks), 128, x, Wk, part, M.rows, T, M.rows, kc, act, 0)
                self._go(K.gemm_reduce, _grid_rows(T * M.rows, 256), 256, part, T, out, epi)
            else:
                self._go(kern, (gx, gy, 1), 128, x, Wk, out, out.strides[0] // 4, T, M.rows, cols, act, epi)
            return
        if ks > 1:
            part = self._part_view(ks, T, M.rows)
            self._go(K.gemm, (gx, gy, ks), 256, x, Wf, T, out, act, epi, part, kc)
            self._go(K.gemm_reduce, _grid_rows(T * M.rows, 256), 256, part, T, out, epi)
        else:
            self._go(K.gemm, (gx, gy, 1), 256, x, Wf, T, out, act, epi, self._nopart, cols)

    def _pre_halves(self, T: int) -> bool:
        """Whether prompt steps of T rows lerp into hi/lo halves too (shift_mix_hl)."""
        return self.hg and T > self.K.MV_T and self.hp.n_embd % 8 == 0

    def matmul3(self, Ms, xs, outs, T: int, pre=None) -> None:
        """Three products of one shape (a layer's r, k, v): in one launch of the 64 x 128 half
        tiles when the three grids together fill the GPU without split K (F16 weights, T > MV_T),
        else one by one."""
        K = self.K
        M0 = Ms[0]
        rows, cols = M0.rows, M0.cols
        ok = (self.hg and T > K.MV_T and cols % 8 == 0 and M0.rmode in (0, R_F16)
              and (pre is not None or 6 * T * cols <= self._cur["xhl"].size)
              and all(M.half16 is not None and (M.rows, M.cols, M.rmode) == (rows, cols, M0.rmode) for M in Ms))
        big = self._big(rows, cols, T, groups=3) if ok else None
        if ok and not big:
            gx, gy = _grid_rows(rows, 2 * K.GEMM_BN), _grid_rows(T, K.GEMM_BM)
            ok = 3 * gx * gy >= K.GEMM_WIDE and self._split_k(3 * gx * gy, cols, T * rows, 32)[0] == 1
        if not ok:
            for M, x, o in zip(Ms, xs, outs):
                self.matmul(M, x, T, o)
            return
        f16_x = M0.rmode == R_F16
        if pre is not None:              # split by shift_mix_hl already (hi = f16(x): llama's rounding too)
            halves = [z for hl in pre for z in hl]
        else:
            hl = self._cur["xhl"]        # room for 8 [T, C] halves (sized for [T, F], F = 4C)
            halves = self._view(("xhl", id(hl), "x3", T, cols),
                                lambda: [hl[i * T * cols:(i + 1) * T * cols].reshape(T, cols) for i in range(6)])
            for i, x in enumerate(xs):
                self._go(K.split_x, _grid_rows(T * cols // 4, 256), 256, x, halves[2 * i], halves[2 * i + 1],
                         (R_F16 << 4 | 256) if f16_x else 0)
        ws = [M.half16 for M in Ms]
        if big:
            grid = (_grid_rows(rows, K.BIG), _grid_rows(T, K.BIG), 3)
            if f16_x:
                self._go_big(K.tc_hgemm_hb3, K.BIG_SMEM_H, grid, *halves[0::2], *ws, *outs, T, rows, cols, 0)
            else:
                self._go_big(K.tc_hgemm_b3, K.BIG_SMEM_X, grid, *halves, *ws, *outs, T, rows, cols, 0)
            return
        if f16_x:
            self._go(K.tc_hgemm_hn3, (gx, gy, 3), 256, *halves[0::2], *ws, *outs, T, rows, cols, 0)
        else:
            self._go(K.tc_hgemm_n3, (gx, gy, 3), 256, *halves, *ws, *outs, T, rows, cols, 0)

    def _split_k(self, blocks: int, cols: int, outs: int, step: int) -> tuple:
        """(slices, columns per slice): split K only while the grid is less than a wave."""
        K = self.K
        ks = max(1, min(K.GEMM_FILL // blocks, cols // 256, K.GEMM_PART // outs))
        kc = cols
        if ks > 1:
            kc = _grid_rows(_grid_rows(cols, ks), step) * step
            ks = _grid_rows(cols, kc)
        return ks, kc

    def _view(self, key, make):
        """A device-array view made once (each costs ~10s of us to create)."""
        v = self._views.get(key)
        if v is None:
            v = self._views[key] = make()
        return v

    def round_x(self, x, act, mode, y) -> None:
        """y = act(x) rounded for a weight type (llama numerics; ``actquant.rounding_mode`` codes)."""
        T, n = x.shape
        blk = {1: 32, 2: 256}.get(mode, 4)
        units = T * (n // blk if n % blk == 0 else n)
        self._go(self.K.round_x, _grid_rows(units, 256), 256, x, act, mode, y)

    def _hgemm(self, M: DevMatrix, x, T: int, out, epi: int, act: int = 0, f16_x: bool = False) -> None:
        """x @ W.T on pipelined half tiles: x split once into hi/lo halves (``split_x``), F16
        weights as they are, repacked Q8_0 expanded to hi/lo halves; the same float32-exact
        products as ``tc_gemm16`` / ``tc_gemm32``.  ``f16_x`` (llama numerics, F16 weights): x
        rounded to f16, its hi half alone, one MMA per product (what llama.cpp's CUDA backend and
        rwkv pip's fp16 kernels compute)."""
        K = self.K
        rows, cols = M.rows, M.cols
        hl = self._cur["xhl"]
        xh, xl = self._view(("xhl", id(hl), T, cols), lambda: (hl[:T * cols].reshape(T, cols),
                                                               hl[T * cols:2 * T * cols].reshape(T, cols)))
        self._go(K.split_x, _grid_rows(T * cols // 4, 256), 256, x, xh, xl, act | (256 if f16_x else 0))
        if M.kind == "q8r":
            sc = self._view(("sc16",), lambda: self.scratch.view(np.uint16))
            Wh, Wl = self._view(("whl", rows, cols), lambda: (sc[:rows * cols].reshape(rows, cols),
                                                              sc[rows * cols:2 * rows * cols].reshape(rows, cols)))
            self._go(K.expand_q8r_hl, _grid_rows(rows * cols, 256), 256, M.arr, M.d16, Wh, Wl)
            kern, w = K.tc_hgemm_w2, (Wh, Wl)
        else:
            kern, w = K.tc_hgemm, (M.half16,)
        xs = (xh, xl)
        if f16_x:
            kern, xs = K.tc_hgemm_h, (xh,)
        big = self._big(rows, cols, T) if kern in (K.tc_hgemm, K.tc_hgemm_h) else None
        if big:
            ks, kc = big
            bk, sm = (K.tc_hgemm_hb, K.BIG_SMEM_H) if f16_x else (K.tc_hgemm_b, K.BIG_SMEM_X)
            grid = (_grid_rows(rows, K.BIG), _grid_rows(T, K.BIG), ks)
            if ks > 1:
                part = self._part_view(ks, T, rows)
                self._go_big(bk, sm, grid, *xs, *w, part, rows, T, rows, cols, kc, 0)
                self._go(K.gemm_reduce, _grid_rows(T * rows, 256), 256, part, T, out, epi)
            else:
                self._go_big(bk, sm, grid, *xs, *w, out, out.strides[0] // 4, T, rows, cols, cols, epi)
            return
        gx, gy = _grid_rows(rows, K.GEMM_BN), _grid_rows(T, K.GEMM_BM)
        threads = 128
        if kern in (K.tc_hgemm, K.tc_hgemm_h) and _grid_rows(rows, 2 * K.GEMM_BN) * gy >= K.GEMM_WIDE:
            kern = K.tc_hgemm_n if kern is K.tc_hgemm else K.tc_hgemm_hn     # wide tiles still fill a wave
            gx, threads = _grid_rows(rows, 2 * K.GEMM_BN), 256
        ks, kc = self._split_k(gx * gy, cols, T * rows, 32)
        if ks > 1:
            part = self._part_view(ks, T, rows)
            self._go(kern, (gx, gy, ks), threads, *xs, *w, part, rows, T, rows, cols, kc, 0)
            self._go(K.gemm_reduce, _grid_rows(T * rows, 256), 256, part, T, out, epi)
        else:
            self._go(kern, (gx, gy, 1), threads, *xs, *w, out, out.strides[0] // 4, T, rows, cols, cols, epi)

    def _round_h1(self, d, view, all_: bool = True) -> None:
        """h1r = the second-stage inputs, activation applied and rounded (llama numerics; unless
        ``all_``, only those that are rounded)."""
        for si, o, n, act, M2 in d["lr2_gemm"]:
            if M2.rmode or all_:
                self.round_x(view("h1", 0, o, n), act, M2.rmode, view("h1r", 0, o, n))

    def _lr_halves(self, d) -> bool:
        """Whether a layer's grouped low-rank products run on the pipelined half tiles (x split by
        split_x, which also applies the activation and, in llama numerics, the f16/bf16
        rounding; W split at upload): the products and bits of the register-staged tile, faster.
        They need 16-byte rows, and llama's 8-bit roundings are left to round_x."""
        C = self.hp.n_embd
        return self.hg and C % 8 == 0 and all(n % 8 == 0 for _, _, n, _, _ in d["lr2_gemm"]) and all(
            M.rmode in (0, R_F16, R_BF16) for *_, M in d["lr1_gemm"] + d["lr2_gemm"])

    def _lowrank_grouped(self, d, b, T, views, view, rnd=False, pre=False) -> None:
        """A layer's low-rank products at T > MV_T in two tensor-core launches (plus one split-K
        reduction) instead of up to eight GEMMs and their reductions: the first stage of w/a/v/g
        (inputs: four lerped rows, outputs: columns of h1), then the second (inputs: those
        columns, outputs: the four C-wide parts of h2).  At batch 64 each small GEMM cost ~18 us
        of mostly fixed latency."""
        K, C = self.K, self.hp.n_embd
        h1 = b["h1"]
        D = h1.shape[1]
        downs = d["lr1_gemm"]
        gx = max(_grid_rows(n, K.GEMM_BN) for _, _, n, _ in downs)
        gy = _grid_rows(T, K.GEMM_BM)
        blocks = sum(_grid_rows(n, K.GEMM_BN) for _, _, n, _ in downs) * gy
        ks, kc = self._split_k(blocks, C, T * D, 32)
        if ks > 1:
            part = self._part_view(ks, T, D)
            outs = []
            for _, o, n, _ in downs:
                key = ("part", ks, T, o, n)
                if key not in views:
                    views[key] = part[:, :, o:o + n]
                outs.append(views[key])
        else:
            outs = [view("h1", 0, o, n) for _, o, n, _ in downs]
        ups = d["lr2_gemm"]
        halves = self._lr_halves(d)
        if halves:
            hl = b["lrhl"]

            def split(xsrc, off, rows, cols, act):
                """xsrc split into halves at lrhl[off:off + 2 * rows * cols] (stream order makes
                the second stage's reuse of the first stage's space safe)."""
                n = rows * cols
                H, L = self._view(("lrhl", id(hl), off, rows, cols), lambda: (
                    hl[off:off + n].reshape(rows, cols), hl[off + n:off + 2 * n].reshape(rows, cols)))
                self._go(K.split_x, _grid_rows(n // 4, 256), 256, xsrc, H, L, act)
                return H, L

            def stage1(i, src, M1):
                if pre and M1.rmode in (0, R_F16):
                    h, lo = view("mixhl", src)          # split by shift_mix_hl
                    return (h, b["zhl"] if M1.rmode == R_F16 else lo)    # llama f16: x = hi exactly
                return split(view("mixed", src), 2 * i * T * C, T, C, M1.rmode << 4)
            xs = [z for i, (src, _, _, M1) in enumerate(downs) for z in stage1(i, src, M1)]
            ws = [z for _, _, _, M1 in downs for z in (M1.wh, M1.wl)]
            pad = 4 - len(downs)
            self._go(K.tc_hgemm_w2g, (gx, gy, len(downs) * ks), 128, *(xs + xs[:2] * pad), *(ws + ws[:2] * pad),
                     *(outs + outs[:1] * pad), ks, kc, D, T, 0)
        else:
            xs = [view("mixr" if rnd and M1.rmode else "mixed", src) for src, _, _, M1 in downs]
            ws = [M1.arr for _, _, _, M1 in downs]
            pad = 4 - len(downs)
            self._go(K.tc_gemm32_g, (gx, gy, len(downs) * ks), 128, *(xs + xs[:1] * pad), *(ws + ws[:1] * pad),
                     *(outs + outs[:1] * pad), ks, kc, 0, 0, 0, 0, D, T, 0)
        if ks > 1:
            self._go(K.gemm_reduce, _grid_rows(T * D, 256), 256, part, T, h1, 0)
        outs = [view("h2", 0, si * C, C) for si, _, _, _, _ in ups]
        pad = 4 - len(ups)
        if halves:
            xs = [z for _, o, n, act, M2 in ups for z in split(view("h1", 0, o, n), 2 * T * o, T, n, act | (M2.rmode << 4))]
            ws = [z for *_, M2 in ups for z in (M2.wh, M2.wl)]
            self._go(K.tc_hgemm_w2g, (_grid_rows(C, K.GEMM_BN), gy, len(ups)), 128, *(xs + xs[:2] * pad),
                     *(ws + ws[:2] * pad), *(outs + outs[:1] * pad), 1, 0, b["h2"].shape[1], T, 0)
            return
        if rnd:
            self._round_h1(d, view, all_=False)
        xs = [view("h1r" if rnd and M2.rmode else "h1", 0, o, n) for _, o, n, _, M2 in ups]
        ws = [M2.arr for _, _, _, _, M2 in ups]
        acts = [0 if rnd and M2.rmode else act for _, _, _, act, M2 in ups]
        self._go(K.tc_gemm32_g, (_grid_rows(C, K.GEMM_BN), gy, len(ups)), 128, *(xs + xs[:1] * pad),
                 *(ws + ws[:1] * pad), *(outs + outs[:1] * pad), 1, 0, *(acts + acts[:1] * pad),
                 b["h2"].shape[1], T, 0)

    def _part_view(self, ks, T, rows):
        key = (ks, T, rows)
        v = self._part_views.get(key)
        if v is None:
            v = self._part_views[key] = self._part()[: ks * T * rows].reshape(ks, T, rows)
        return v

    def _part(self):
        """Split-K scratch (float32, flat), allocated on first use and kept: captured graphs
        hold its address."""
        from numba import cuda
        if self._partbuf is None:
            self._partbuf = cuda.device_array(self.K.GEMM_PART, dtype=np.float32)
        return self._partbuf

    def _go(self, kern, grid, block, *args, smem: int = 0) -> None:
        if self._stream is not None:
            kern[grid, block, self._stream, smem](*args)
            return
        if self._rec is None:
            kern[grid, block, 0, smem](*args)
            return
        try:
            self._rec.launch_and_record(kern, grid, block, args, smem)
        except _NotRecorded as e:       # numba-cuda not as expected: plain launches from now on
            self.fast_launch = False
            self.fast_launch_error = str(e)
            self._rec = None
            if not e.launched:
                kern[grid, block, 0, smem](*args)

    def _go_big(self, kern, smem, grid, *args) -> None:
        """A launch of the 128 x 128 tiles (128 threads, ``smem`` bytes of dynamic shared memory,
        which the kernel is opted in to first for these argument types)."""
        self.K.allow_smem(kern, args, smem)
        self._go(kern, grid, 128, *args, smem=smem)

    # --- the layers ---------------------------------------------------------------------------
    MIRRORS = 2          # device state pools kept per slot count (each holds n_slots states)

    def attach(self, cache) -> DeviceMirror:
        """The device slots holding ``cache``'s state for this runner's layers, up to date."""
        pools = self._mirrors.setdefault(cache.n_slots, [])
        for m in cache._mirrors:            # (another runner's mirrors hold other layers: left alone)
            if m.runner is self and m.owner() is cache:
                if m.host_newer:
                    m.push(cache)
                pools.remove(m)
                pools.append(m)             # most recently used last
                return m
        free = [m for m in pools if m.owner() is None]
        if free:
            m = free[0]
        elif len(pools) < self.MIRRORS:
            m = DeviceMirror(self, cache)
            pools.append(m)
        else:
            m = pools.pop(0)                # least recently lent
            pools.append(m)
        m.lend(cache)
        return m

    def run(self, x_host, v_first, seg_start, seg_len, seg_slot, cache, out_rows):
        """x_host [T, C] float32 (this segment's input; v_first: layer 0's value when this
        segment starts later), or the token ids [T] when ``self.embeds`` -> (x, v_first) on the
        host, or the logits [len(out_rows), V] when this segment holds the head."""
        T = x_host.shape[0]
        nseg = len(seg_start)
        rows = np.asarray(out_rows if out_rows is not None else [], np.int64)
        with self.ctx():
            m = self.attach(cache)
            b = self._buffers(T)
            if self.embeds:
                b["tok"].copy_to_device(np.ascontiguousarray(x_host, dtype=np.int64))
            else:
                b["x"].copy_to_device(np.ascontiguousarray(x_host, dtype=np.float32))
            if self.layer_ids[0] > 0:
                b["vfirst"].copy_to_device(np.ascontiguousarray(v_first, dtype=np.float32))
            segs = np.zeros((3, T), np.int64)
            segs[0, :nseg], segs[1, :nseg], segs[2, :nseg] = seg_start, seg_len, seg_slot
            b["segs"].copy_to_device(segs)
            R_ = len(rows)
            if self.with_head and R_:
                rr = np.zeros(T, np.int64)
                rr[:R_] = rows
                b["rows"].copy_to_device(rr)
            key = (T, nseg, R_, id(m))
            plan = self._plans.get(key)
            if plan is not None and plan.mirror is m and plan.bufs is b:
                plan.replay()
            else:
                self._rec = _Launches(m) if self.fast_launch else None
                try:
                    self._steps(b, m, T, nseg, R_)
                    plan = self._rec
                finally:
                    self._rec = None
                if plan is not None:
                    plan.bufs = b
                if self.use_graphs and self.fast_launch:
                    plan = self._capture(b, m, T, nseg, R_) or plan
                if plan is not None:
                    if len(self._plans) >= 8:
                        self._plans.pop(next(iter(self._plans)))
                    self._plans[key] = plan
            m.dev_newer = True
            if not self.with_head:
                return b["x"].copy_to_host(), b["vfirst"].copy_to_host()
            if R_ == 0:
                return np.empty((0, self.hp.vocab_size), dtype=np.float32)
            return b["logits"][:R_].copy_to_host()

    def _capture(self, b, m, T, nseg, R_):
        """The step's launches as a CUDA graph for the next calls of this shape, or None (then
        ``graph_error`` says why and recorded launches are used from now on)."""
        from numba import cuda
        try:
            cu = _driver()
            stream = cuda.stream()
            g = _Graph(m, b, stream, None, None)
            _check(cu.cuStreamBeginCapture(g._h, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED),
                   "cuStreamBeginCapture")
            self._stream = stream
            try:
                self._steps(b, m, T, nseg, R_)
            finally:
                self._stream = None
                graph = _check(cu.cuStreamEndCapture(g._h), "cuStreamEndCapture")
            g.graph = graph
            g.exe = _check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
            return g
        except Exception as e:      # no cuda-python, or a driver/numba that refuses: keep replaying
            self.use_graphs = False
            self.graph_error = f"{type(e).__name__}: {e}"
            return None

    def _steps(self, b, m, T, nseg, R_):
        """Launch every kernel of one forward step over this runner's layers (and head)."""
        K, hp = self.K, self.hp
        C, H, N = hp.n_embd, hp.n_head, hp.head_size
        go = self._go
        self._cur = b
        x = b["x"]
        ss, sl, so = b["segs"][0, :nseg], b["segs"][1, :nseg], b["segs"][2, :nseg]
        eps = np.float32(hp.norm_eps)
        lr = (_grid_rows(4 * C, K.MV_WARPS),), (32, K.MV_WARPS)
        shift = (_grid_rows(C, 128), nseg, _grid_rows(T - nseg + 1, K.SHIFT_T)), 128   # longest possible segment
        one_each = T == nseg            # every sequence one token (decode): norm + shift in one launch
        lnshift = (_grid_rows(C, K.NORM_THREADS), nseg), K.NORM_THREADS
        pre = not one_each and self._pre_halves(T)      # lerped rows also as hi/lo halves
        if self.embeds:
            go(K.embed_rows, (_grid_rows(T, 4), _grid_rows(C, 64)), (4, 64), *self.emb_args, b["tok"], x)
            go(K.layer_norm, T, K.NORM_THREADS, x, self.ln0_w, self.ln0_b, eps, x)     # (in place: safe)
        for il, d in zip(self.layer_ids, self.layers):
            R, S = m.R[il], m.S[il]
            mixed = b["mixed"]
            if one_each:
                go(K.ln_shift_mix, *lnshift, x, d["ln1_w"], d["ln1_b"], eps, ss, so, R, 0, d["mix6"], mixed)
            else:
                go(K.layer_norm, T, K.NORM_THREADS, x, d["ln1_w"], d["ln1_b"], eps, b["xa"])
                if pre:
                    go(K.shift_mix_hl, *shift, b["xa"], ss, sl, so, R, 0, d["mix6"], mixed, b["mixhl"][0],
                       b["mixhl"][1])
                else:
                    go(K.shift_mix, *shift, b["xa"], ss, sl, so, R, 0, d["mix6"], mixed)
            views = b.setdefault("views", {})      # device-array views cost ~10s of us each: make once

            def view(name, i, o=0, n=0):
                key = (name, i, o, n)
                if key not in views:
                    if name == "mixhl":              # (hi, lo) halves of lerped row i
                        views[key] = (b[name][0][i], b[name][1][i])
                    else:
                        views[key] = b[name][i] if name in ("mixed", "mixr") else b[name][:, o:o + n]
                return views[key]
            self.matmul3([d["receptance"], d["key"], d["value"]], [mixed[0], mixed[2], mixed[3]],
                         [b["r"], b["k"], b["v"]], T, [view("mixhl", i) for i in (0, 2, 3)] if pre else None)
            # llama numerics, F16/BF16 files: the low-rank inputs rounded into copies (activations
            # applied there), for the fused kernels and the grouped GEMMs alike (without tensor
            # cores matmul rounds each input itself)
            rnd = self.llama and d["lr_round"] and (T <= K.MV_T or (self.tc and not self._lr_halves(d)))
            if rnd:
                for src, o, n, M1 in d["lr1_gemm"]:
                    if M1.rmode or T <= K.MV_T:     # (the grouped GEMMs read float32 inputs in place)
                        self.round_x(view("mixed", src), 0, M1.rmode, view("mixr", src))
            if T > K.MV_T:
                if self.tc:
                    self._lowrank_grouped(d, b, T, views, view, rnd, pre)      # (half tiles: they round)
                else:              # (llama numerics: matmul rounds each input itself)
                    for src, o, n, M1 in d["lr1_gemm"]:
                        self.matmul(M1, view("mixed", src), T, view("h1", 0, o, n))
                    for si, o, n, act, M2 in d["lr2_gemm"]:
                        self.matmul(M2, view("h1", 0, o, n), T, view("h2", 0, si * C, C), act)
            else:
                go(K.lowrank1, (_grid_rows(d["d1"], K.MV_WARPS),), (32, K.MV_WARPS),
                   d["lr1"], d["lr1_src"], b["mixr" if rnd else "mixed"], T, b["h1"])
                if rnd:
                    self._round_h1(d, view)
                go(K.lowrank2, *lr, d["lr2"], d["lr2_w"], d["lr2_in"], d["lr2_d"], d["lr2_act0" if rnd else "lr2_act"],
                   b["h1r" if rnd else "h1"], T, C, b["h2"])
            go(K.pre_wkv, (T, H), N, b["k"], b["v"], b["h2"], d["w0"], d["a0"], d["v0"], d["k_k"], d["k_a"],
               b["vfirst"], il == 0, N, np.float32(L2_EPS), b["w"], b["A"], b["B"])
            if N == K.NMAX and self.wkvc:
                go(K.wkv7_64c, (nseg, H, K.WKVC_SPLIT), K.WKVC_THREADS, b["r"], b["w"], b["k"], b["v"], b["A"], b["B"],
                   ss, sl, so, S, b["y"])
            elif N == K.NMAX and not K.SIM:
                go(K.wkv7_64, (nseg, H), K.NMAX * K.WKV_LANES, b["r"], b["w"], b["k"], b["v"], b["A"], b["B"],
                   ss, sl, so, S, b["y"])
            else:
                go(K.wkv7, (nseg, H), N, b["r"], b["w"], b["k"], b["v"], b["A"], b["B"], ss, sl, so, S, b["y"])
            go(K.post_wkv, (T, H), N, b["y"], b["r"], b["k"], b["v"], b["h2"], d["ln_x_w"], d["ln_x_b"],
               d["r_k"], N, np.float32(GROUP_NORM_EPS), b["z"])
            self.matmul(d["output"], b["z"], T, x, epi=1)
            if one_each:
                go(K.ln_shift_mix, *lnshift, x, d["ln2_w"], d["ln2_b"], eps, ss, so, R, C, d["mix1"], b["xf"])
            else:
                go(K.layer_norm, T, K.NORM_THREADS, x, d["ln2_w"], d["ln2_b"], eps, b["xa"])
                go(K.shift_mix, *shift, b["xa"], ss, sl, so, R, C, d["mix1"], b["xf"])
            self.matmul(d["ffn_key"], b["xf"][0], T, b["hid"], epi=2)
            self.matmul(d["ffn_value"], b["hid"], T, x, epi=1)
        if self.with_head and R_:
            xo, xn = b["xo"][:R_], b["xn"][:R_]
            go(K.gather_rows, (_grid_rows(R_, 16), _grid_rows(C, 16)), (16, 16), x, b["rows"][:R_], xo)
            go(K.layer_norm, R_, K.NORM_THREADS, xo, self.ln_out_w, self.ln_out_b, eps, xn)
            self.matmul(self.head, xn, R_, b["logits"][:R_])
