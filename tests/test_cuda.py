"""The GPU backend (numba.cuda) and layer-split strategies.

The model tests hold the CPU forward to the fixtures' references; here every
device placement is held to the CPU forward on the same file, so a GPU result
inherits that agreement.  Tests that need a GPU skip without one (CI has none);
they were run on the device machine (see the README).  Strategy parsing and the
state hand-over logic run everywhere.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from rwkvcpu.gpu import StrategyError, cuda_available, parse_strategy
from tests.conftest import GGUF_TYPES, FIXTURES, fixture_model, require_fixtures

HAVE_GPU = cuda_available() and not os.environ.get("NUMBA_ENABLE_CUDASIM")
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason="no CUDA GPU visible to numba (numba.cuda.is_available())")

# Placements: whole model on the GPU, and the two mixed orders (the tiny model has 3 layers).
PLACEMENTS = ["cuda", "cuda *1 -> cpu", "cpu *2 -> cuda"]

# GPU vs CPU on the same weights: both are float32 with different summation orders (warp
# trees and 64x64 GEMM tiles vs BLAS / sequential dots) and the GPU may contract a*b+c into
# an FMA.  Each op differs by a few ulp; through 3 layers and a 4096-row head this stays far
# below the 2e-4 the model tests allow against the exact references.  We require 2e-5 of the
# logit scale (measured worst: see the README's GPU section).
REL_TOL = 2e-5

_gpu_models: dict = {}


def gpu_model(name: str, device: str):
    from rwkvcpu.model import Model
    key = (name, device)
    if key not in _gpu_models:
        d = require_fixtures()
        if not (d / name).exists():
            pytest.skip(f"fixture {name} not present in {d}")
        _gpu_models[key] = Model.load(str(d / name), device=device)
    return _gpu_models[key]


def _close(a, b, scale):
    return np.abs(a - b).max() <= REL_TOL * scale


# --- strategies (no GPU needed) --------------------------------------------------------------

def test_parse_strategy_forms():
    assert [(s.device, s.start, s.stop) for s in parse_strategy("cpu", 12)] == [("cpu", 0, 12)]
    assert [(s.device, s.start, s.stop) for s in parse_strategy("cuda", 12)] == [("cuda", 0, 12)]
    segs = parse_strategy("cuda *8 -> cpu", 12)
    assert [(s.device, s.start, s.stop) for s in segs] == [("cuda", 0, 8), ("cpu", 8, 12)]
    segs = parse_strategy("cpu *2 -> cuda:1", 12)
    assert [(s.device, s.index, s.start, s.stop) for s in segs] == [("cpu", 0, 0, 2), ("cuda", 1, 2, 12)]
    # all layers on the first part: the second gets none and disappears
    assert [(s.device, s.start, s.stop) for s in parse_strategy("cuda *12 -> cpu", 12)] == [("cuda", 0, 12)]


@pytest.mark.parametrize("bad,word", [("cuda fp16 *4 -> cpu", "fp16"), ("tpu", "tpu"), ("cuda -> cpu", "*N"),
                                      ("cuda *20 -> cpu", "20"), ("cpu:1", "cpu"), ("", "empty")])
def test_parse_strategy_errors_name_the_problem(bad, word):
    with pytest.raises(StrategyError, match=word.replace("*", r"\*")):
        parse_strategy(bad, 12)


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    import rwkvcpu.gpu as G
    monkeypatch.setattr(G, "cuda_available", lambda: False)
    from rwkvcpu.model import Model
    ckpt = fixture_model("tiny-rwkv7-q8_0.gguf").ckpt
    with pytest.raises(StrategyError, match="no CUDA GPU"):
        Model(ckpt, device="cuda")


def test_cli_device_error_is_one_line(tmp_path):
    import subprocess
    import sys
    fx = require_fixtures()
    p = subprocess.run([sys.executable, "-m", "rwkvcpu.cli", "generate", "-m", str(fx / "tiny-rwkv7-q8_0.gguf"),
                        "-p", "hi", "-n", "2", "--device", "cuda fp16"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "fp16" in p.stderr and "Traceback" not in p.stderr


# --- on the GPU ----------------------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("typ", GGUF_TYPES)
@pytest.mark.parametrize("device", PLACEMENTS)
def test_gpu_matches_cpu_on_every_type(typ, device):
    name = f"tiny-rwkv7-{typ}.gguf"
    if not (FIXTURES / name).exists():
        pytest.skip(f"fixture {name} not present in {FIXTURES}")
    cpu = fixture_model(name)
    gpu = gpu_model(name, device)
    toks = np.load(FIXTURES / "ref-rwkvpip-tiny-rwkv7.npz")["seqlong_tokens"] if (
        FIXTURES / "ref-rwkvpip-tiny-rwkv7.npz").exists() else np.arange(1, 65) * 37 % 4096
    lc, sc = cpu.forward(toks, all_logits=True)          # 64 rows: the GEMM path
    lg, sg = gpu.forward(toks, all_logits=True)
    scale = np.abs(lc).max()
    assert _close(lg, lc, scale), np.abs(lg - lc).max() / scale
    for t in (5, 900, 17):                               # decode: the fused matvec path
        lc, _ = cpu.forward([t], sc)
        lg, _ = gpu.forward([t], sg)
        assert _close(lg, lc, scale), np.abs(lg - lc).max() / scale
    d = sg.max_abs_diff(sc)
    assert d["wkv"] <= 1e-4 * np.abs(sc.wkv()).max() and d["att_x_prev"] <= 1e-4, d


@needs_gpu
@pytest.mark.parametrize("device", PLACEMENTS)
def test_gpu_sequence_mode_equals_token_mode(device):
    m = gpu_model("tiny-rwkv7-q8_0.gguf", device)
    toks = (np.arange(1, 49) * 97) % 4096
    seq, s1 = m.forward(toks, all_logits=True)
    st = m.new_state()
    rnn = np.stack([m.forward([t], st)[0] for t in toks])
    scale = np.abs(seq).max()
    assert _close(rnn, seq, scale)
    assert st.max_abs_diff(s1)["wkv"] <= 1e-4 * np.abs(s1.wkv()).max()


@needs_gpu
@pytest.mark.parametrize("device", PLACEMENTS)
def test_gpu_batch_independence_and_untouched_slots(device):
    m = gpu_model("tiny-rwkv7-q4_k_m.gguf", device)
    seqs = [(np.arange(n) * 31 + 7 * n) % 4096 for n in (1, 5, 12, 3)]
    cache = m.new_cache(6)
    rng = np.random.default_rng(0)
    cache.s[:] = rng.standard_normal(cache.s.shape).astype(np.float32)
    garbage_s = cache.s[:, [1, 4]].copy()
    garbage_r = cache.r[:, [1, 4]].copy()
    for slot in (0, 2, 3, 5):
        cache.clear(slot)
    outs = m.forward_batch(seqs, cache, [0, 2, 3, 5])
    for seq, slot, out in zip(seqs, [0, 2, 3, 5], outs):
        alone, st = m.forward(seq)
        assert _close(out, alone, np.abs(alone).max())
        assert np.abs(cache.s[:, slot] - st.s[:, 0]).max() <= 1e-4 * max(1.0, np.abs(st.s).max())
    assert np.array_equal(cache.s[:, [1, 4]], garbage_s) and np.array_equal(cache.r[:, [1, 4]], garbage_r)


@needs_gpu
@pytest.mark.parametrize("device", PLACEMENTS)
def test_gpu_two_calls_carry_state(device):
    m = gpu_model("tiny-rwkv7-q8_0.gguf", device)
    toks = (np.arange(64) * 53) % 4096
    full, _ = m.forward(toks, all_logits=True)
    st = m.new_state()
    m.forward(toks[:40], st)
    second, _ = m.forward(toks[40:], st, all_logits=True)
    assert _close(second, full[40:], np.abs(full).max())
    fresh, _ = m.forward(toks[40:], m.new_state(), all_logits=True)
    assert np.abs(fresh - second).max() > 0.1, "the second call must see the first call's state"


@needs_gpu
def test_gpu_state_is_visible_and_editable_on_the_host():
    """The device copy is the newest after a GPU step; the host arrays must show it, and a
    host edit must reach the next GPU step (no stale or zero state in either direction)."""
    cpu = fixture_model("tiny-rwkv7-q8_0.gguf")
    gpu = gpu_model("tiny-rwkv7-q8_0.gguf", "cuda")
    toks = [11, 22, 33, 44]
    _, sc = cpu.forward(toks)
    _, sg = gpu.forward(toks)
    assert np.abs(sg.s).max() > 0 and sg.max_abs_diff(sc)["wkv"] <= 1e-4 * np.abs(sc.s).max()
    # edit on the host (e.g. a loaded state), then continue on each device
    for st in (sc, sg):
        st.s[1] *= 0.5
        st.r[2] = 0.0
    lc, _ = cpu.forward([55], sc)
    lg, _ = gpu.forward([55], sg)
    assert _close(lg, lc, np.abs(lc).max())
    # a state saved after GPU steps equals the CPU one
    assert sg.copy().max_abs_diff(sc)["wkv"] <= 1e-4 * np.abs(sc.s).max()


@needs_gpu
def test_graphs_and_recorded_launches_replay_exactly_what_plain_launches_do():
    """Decode steps run as captured CUDA graphs (rwkvcpu/gpu._Graph), or, where capture is not
    possible, as replayed recorded launches (_Launches); the same kernels in the same order on
    the same buffers must give bit-identical logits and state to plain numba launches."""
    from rwkvcpu.gpu import _Graph, _Launches
    from rwkvcpu.model import Model
    f = str(require_fixtures() / "tiny-rwkv7-q4_k_m.gguf")
    graph, replay, plain = (Model.load(f, device="cuda") for _ in range(3))
    for _, r in replay._segments:
        r.use_graphs = False
    for _, r in plain._segments:
        r.fast_launch = False
    states = [m.new_state() for m in (graph, replay, plain)]
    for t in (3, 99, 1000, 7, 7, 4095):
        lg, lr, lp = (m.forward([t], s)[0] for m, s in zip((graph, replay, plain), states))
        assert np.array_equal(lg, lp) and np.array_equal(lr, lp)
    for m, kind in ((graph, _Graph), (replay, _Launches)):
        runner = m._segments[0][1]
        assert runner.fast_launch, getattr(runner, "fast_launch_error", "")
        assert any(isinstance(p, kind) for p in runner._plans.values()), getattr(runner, "graph_error", "")
    for s in states[:2]:
        assert np.array_equal(s.s, states[2].s) and np.array_equal(s.r, states[2].r)


@needs_gpu
def test_state_slots_are_lent_between_caches_without_loss_and_graphs_are_reused():
    """The runner keeps MIRRORS device state pools per slot count and lends them to caches, so a
    fresh state replays the captured graph of its shape.  Three states interleaved over two
    pools (each lending pulls the previous holder's values back first), a state dropped while
    it holds a pool, and host reads in between: every state must continue exactly as on the CPU,
    and fresh states of a seen shape must not record or capture the step again."""
    import gc
    cpu = fixture_model("tiny-rwkv7-q8_0.gguf")
    gpu = gpu_model("tiny-rwkv7-q8_0.gguf", "cuda")
    runner = gpu._segments[-1][1]
    assert runner.MIRRORS == 2
    toks = [(np.arange(20) * (7 + 3 * i) + i) % 4096 for i in range(3)]
    sc = [cpu.new_state() for _ in range(3)]
    sg = [gpu.new_state() for _ in range(3)]
    for half in (slice(0, 12), slice(12, 20)):
        for i in range(3):
            lc, _ = cpu.forward(toks[i][half], sc[i])
            lg, _ = gpu.forward(toks[i][half], sg[i])
            assert _close(lg, lc, np.abs(lc).max()), (i, half)
        assert sg[1].max_abs_diff(sc[1])["wkv"] <= 1e-4 * np.abs(sc[1].s).max()   # host read mid-way
    for i in range(3):
        assert sg[i].max_abs_diff(sc[i])["wkv"] <= 1e-4 * np.abs(sc[i].s).max(), i
    lone = gpu.new_state()
    gpu.forward(toks[0], lone)
    del lone
    gc.collect()                                  # its pool is free again, and must not leak into the next
    captures = []
    orig = runner._capture
    runner._capture = lambda *a: captures.append(a[2:]) or orig(*a)
    try:
        ref, _ = cpu.forward(toks[2])
        for _ in range(3):
            lg, st = gpu.forward(toks[2], gpu.new_state())
            assert _close(lg, ref, np.abs(ref).max())
    finally:
        del runner._capture
    assert len(captures) <= 1, f"a fresh state re-captured the step {len(captures)} times"
    # a fresh state's slots are zeroed on the device without an upload, unless the host wrote to it
    for edit in (False, True):
        sc1, sg1 = cpu.new_state(), gpu.new_state()
        assert sg1._zero
        if edit:
            for st in (sc1, sg1):
                st.s[:, 0, :, 1, 2] = 0.25
                st.r[-1, 0, 5] = -1.0
            assert not sg1._zero
        lc, _ = cpu.forward(toks[1][:9], sc1)
        lg, _ = gpu.forward(toks[1][:9], sg1)
        assert _close(lg, lc, np.abs(lc).max()), edit
        assert sg1.max_abs_diff(sc1)["wkv"] <= 1e-4 * np.abs(sc1.s).max(), edit


@needs_gpu
def test_plans_follow_buffer_eviction():
    """Step buffers are cached for 4 shapes; a plan made on evicted buffers must not be replayed
    into the new ones (it would return the old buffers' logits), and no cached view may keep an
    evicted buffer's device memory alive (prompts of many lengths would grow it without bound)."""
    cpu = fixture_model("tiny-rwkv7-q8_0.gguf")
    gpu = gpu_model("tiny-rwkv7-q8_0.gguf", "cuda")
    toks = (np.arange(40) * 29) % 4096
    runner = gpu._segments[-1][1]
    for n in (1, 2, 3, 4, 5, 6, 1, 2, 12, 20, 33, 12, 9, 17, 40):   # evictions at matvec and GEMM sizes
        lc, _ = cpu.forward(toks[:n], all_logits=True)
        lg, _ = gpu.forward(toks[:n], all_logits=True)
        assert _close(lg, lc, np.abs(lc).max()), n
        live = {id(b["xhl"]) for b in runner._bufs.values()}
        assert all(k[1] in live for k in runner._views if k[0] == "xhl"), "views kept an evicted buffer alive"


@needs_gpu
def test_split_k_gemm_equals_numpy():
    """The prefill/batch GEMM, whole and split along K (small grids), against NumPy, for each
    epilogue (store, add, relu^2)."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    r = np.random.default_rng(3)
    T, N, K = 40, 192, 1000                  # ragged on purpose: K is not a multiple of the split
    x = r.standard_normal((T, K)).astype(np.float32)
    W = r.standard_normal((N, K)).astype(np.float32)
    base = r.standard_normal((T, N)).astype(np.float32)
    ref = x @ W.T
    want = {0: ref, 1: base + ref, 2: np.maximum(ref, 0) ** 2}
    dx, dW = cuda.to_device(x), cuda.to_device(W)
    grid = ((N + 63) // 64, (T + 63) // 64)
    for ks in (1, 3, 7):
        kc = -(-(-(-K // ks)) // CK.GEMM_BK) * CK.GEMM_BK
        n_split = -(-K // kc)
        part = cuda.device_array((n_split, T, N) if n_split > 1 else (1, 1, 1), dtype=np.float32)
        for epi, expect in want.items():
            out = cuda.to_device(base.copy())
            CK.gemm[(grid[0], grid[1], n_split), 256](dx, dW, T, out, 0, epi, part, kc if n_split > 1 else K)
            if n_split > 1:
                CK.gemm_reduce[(T * N + 255) // 256, 256](part, T, out, epi)
            got = out.copy_to_host()
            assert np.abs(got - expect).max() <= 1e-4 * np.abs(expect).max(), (ks, epi)


@needs_gpu
@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("cols", [1000, 8192])               # 1000: a ragged tail of 64-bit words
def test_decode_matvec_on_64bit_words_matches_numpy(wtype, cols):
    """mv1_w64 (the T = 1 matvec on float weights read 8 bytes at a time, x in shared memory)
    against float64 NumPy, with each input transform (act) and output epilogue (epi)."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(cols)
    rows = 37
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    if wtype == "f16":
        Wh = W.astype(np.float16)
        W, words, kind = Wh.astype(np.float32), Wh.view(np.uint64), 1
    elif wtype == "bf16":
        b = (W.view(np.uint32) >> 16).astype(np.uint16)
        W, words, kind = (b.astype(np.uint32) << 16).view(np.float32), b.view(np.uint64), 2
    else:
        words, kind = W.view(np.uint64), 0
    x = rng.standard_normal((1, cols)).astype(np.float32)
    base = rng.standard_normal((1, rows)).astype(np.float32)
    dW, dx = cuda.to_device(words), cuda.to_device(x)
    for act, f in ((0, lambda v: v), (1, np.tanh), (2, lambda v: 1 / (1 + np.exp(-v)))):
        ref = f(x.astype(np.float64)) @ W.T.astype(np.float64)
        bound = np.abs(f(x.astype(np.float64))) @ np.abs(W.T.astype(np.float64))
        for epi, want in ((0, ref), (1, base + ref), (2, np.maximum(ref, 0) ** 2)):
            out = cuda.to_device(base.copy())
            CK.mv1_w64[(rows + CK.MV1_WARPS - 1) // CK.MV1_WARPS, (32, CK.MV1_WARPS)](
                dW, cuda.to_device(np.zeros((1, 1), np.uint16)), dx, out, act, epi, kind)
            got = out.copy_to_host()
            tol = 1e-5 * bound.max() * (2 * np.abs(ref).max() if epi == 2 else 1)
            assert np.abs(got - want).max() <= tol, (act, epi)


@needs_gpu
def test_fused_norm_and_shift_equals_the_two_kernels():
    """ln_shift_mix (decode steps) gives the same bits as layer_norm followed by shift_mix, for
    three one-token sequences in slots 2, 0, 3; the state rows of slot 1 stay untouched."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(9)
    T, C = 3, 800
    x = rng.standard_normal((T, C)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    mixes = rng.uniform(0, 1, (6, C)).astype(np.float32)
    R0 = rng.standard_normal((4, 2 * C)).astype(np.float32)
    seg = [cuda.to_device(np.asarray(z, dtype=np.int64)) for z in ([0, 1, 2], [1, 1, 1], [2, 0, 3])]
    eps = np.float32(1e-5)
    dx = cuda.to_device(x)
    R1, o1, xa = cuda.to_device(R0), cuda.device_array((6, T, C), np.float32), cuda.device_array((T, C), np.float32)
    CK.layer_norm[T, CK.NORM_THREADS](dx, cuda.to_device(w), cuda.to_device(b), eps, xa)
    CK.shift_mix[((C + 127) // 128, T, 1), 128](xa, *seg, R1, C, cuda.to_device(mixes), o1)
    R2, o2 = cuda.to_device(R0), cuda.device_array((6, T, C), np.float32)
    CK.ln_shift_mix[((C + CK.NORM_THREADS - 1) // CK.NORM_THREADS, T), CK.NORM_THREADS](
        dx, cuda.to_device(w), cuda.to_device(b), eps, seg[0], seg[2], R2, C, cuda.to_device(mixes), o2)
    assert np.array_equal(o1.copy_to_host(), o2.copy_to_host())
    assert np.array_equal(R1.copy_to_host(), R2.copy_to_host())
    assert np.array_equal(R2.copy_to_host()[1], R0[1])


@needs_gpu
@pytest.mark.parametrize("ks", [1, 4])
def test_grouped_lowrank_gemm_matches_numpy(ks):
    """tc_gemm32_g: four GEMMs of different widths (64, 96, 32, 128 outputs) in one launch, each with
    its own input, input transform and output columns; with ks > 1 into split-K partials summed by
    one gemm_reduce.  Against float64 NumPy (bound: 1e-5 of sum |x||w|, as the tensor-core test)."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(ks)
    T, K = 70, 1000
    widths, acts = [64, 96, 32, 128], [1, 0, 0, 2]
    f = {0: lambda v: v, 1: np.tanh, 2: lambda v: 1 / (1 + np.exp(-v))}
    xs = [rng.standard_normal((T, K)).astype(np.float32) for _ in widths]
    Ws = [(rng.standard_normal((n, K)) * 0.05).astype(np.float32) for n in widths]
    D = sum(widths)
    offs = np.cumsum([0] + widths[:-1])
    h = cuda.to_device(np.full((T, D), np.nan, np.float32))
    dx, dW = [cuda.to_device(x) for x in xs], [cuda.to_device(W) for W in Ws]
    kc = K
    if ks > 1:
        kc = -(-(-(-K // ks)) // 32) * 32
        ks = -(-K // kc)
        part = cuda.device_array((ks, T, D), np.float32)
        outs = [part[:, :, o:o + n] for o, n in zip(offs, widths)]
    else:
        outs = [h[:, o:o + n] for o, n in zip(offs, widths)]
    grid = (2, (T + 63) // 64, 4 * ks)
    CK.tc_gemm32_g[grid, 128](*dx, *dW, *outs, ks, kc, *acts, D, T, 0)
    if ks > 1:
        CK.gemm_reduce[(T * D + 255) // 256, 256](part, T, h, 0)
    got = h.copy_to_host()
    for x, W, o, n, a in zip(xs, Ws, offs, widths, acts):
        xa = f[a](x.astype(np.float64))
        want = xa @ W.T.astype(np.float64)
        bound = np.abs(xa) @ np.abs(W.T.astype(np.float64))
        assert np.all(np.abs(got[:, o:o + n] - want) <= 1e-5 * bound + 1e-7), (n, a)


@needs_gpu
@pytest.mark.parametrize("cols", [1024, 8192, 8224])          # 8224: wider than mv1_w64 stages
def test_repacked_q8_0_kernels_match_numpy(cols):
    """Q8_0 as the GPU holds it (int8 values + block scales, repacked from the file's blocks by
    DevMatrix): the T = 1 and T <= 8 matvecs and the GEMM's expansion, against float64 NumPy,
    with each input transform (act) and output epilogue (epi)."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(cols)
    rows = 37
    M, W = _q8r_matrix(rng, rows, cols)
    assert M.kind == "q8r" and M.nbytes == rows * cols // 32 * 34 and (M.wkind == 3) == (cols <= CK.MV1_XMAX)
    Wf = cuda.device_array((rows, cols), np.float32)
    CK.expand_q8r[(rows * cols + 255) // 256, 256](M.arr, M.d16, Wf)
    assert np.array_equal(Wf.copy_to_host(), W.astype(np.float32))
    T = 3
    x = rng.standard_normal((T, cols)).astype(np.float32)
    base = rng.standard_normal((T, rows)).astype(np.float32)
    dx = cuda.to_device(x)
    for act, f in ((0, lambda v: v), (1, np.tanh), (2, lambda v: 1 / (1 + np.exp(-v)))):
        xa = f(x.astype(np.float64))
        ref = xa @ W.T
        bound = (np.abs(xa) @ np.abs(W.T)).max()
        for epi, want in ((0, ref), (1, base + ref), (2, np.maximum(ref, 0) ** 2)):
            tol = 1e-5 * bound * (2 * np.abs(ref).max() if epi == 2 else 1)
            out = cuda.to_device(base.copy())
            CK.mv_q8r[(rows + CK.MV_WARPS - 1) // CK.MV_WARPS, (32, CK.MV_WARPS)](M.q64, M.d16, dx, T, out, act, epi)
            assert np.abs(out.copy_to_host() - want).max() <= tol, ("T=3", act, epi)
            if cols <= CK.MV1_XMAX:
                out = cuda.to_device(base[:1].copy())
                CK.mv1_w64[(rows + CK.MV1_WARPS - 1) // CK.MV1_WARPS, (32, CK.MV1_WARPS)](
                    M.q64, M.d16, dx[:1], out, act, epi, 3)
                assert np.abs(out.copy_to_host() - want[:1]).max() <= tol, ("T=1", act, epi)


@needs_gpu
@pytest.mark.parametrize("kern", ["wkv7_64", "wkv7_64c"])
def test_wkv7_fast_kernel_matches_numpy_reference(kern):
    """wkv7_64 (numba) and wkv7_64c (CUDA C, float4 shared loads): 4 threads per state row,
    shuffles, inputs staged in chunks of WKV_CH tokens; against the NumPy recurrence, on three
    sequences of 1, 7 and 300 tokens (chunk remainders) in slots 2, 0, 3 of a 4-slot cache;
    slot 1 untouched."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    from rwkvcpu.kernels.reference import wkv7 as wkv7_ref
    rng = np.random.default_rng(5)
    H, N = 3, 64
    lens, slots = [1, 7, 300], [2, 0, 3]
    T = sum(lens)
    starts = np.cumsum([0] + lens[:-1])
    r, k, v = (rng.standard_normal((T, H, N)).astype(np.float32) for _ in range(3))
    w = np.exp(-np.exp(rng.uniform(-6, 0.5, (T, H, N)))).astype(np.float32)
    kk = rng.standard_normal((T, H, N)).astype(np.float32)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    aa = rng.uniform(0, 1, (T, H, N)).astype(np.float32)
    a, b = -kk, kk * aa
    S0 = rng.standard_normal((4, H, N, N)).astype(np.float32)
    dev = [cuda.to_device(z.reshape(T, H * N)) for z in (r, w, k, v, a, b)]
    dS = cuda.to_device(S0)
    dy = cuda.device_array((T, H * N), dtype=np.float32)
    seg = [cuda.to_device(np.asarray(z, dtype=np.int64)) for z in (starts, lens, slots)]
    if kern == "wkv7_64c":
        CK.wkv7_64c[(3, H, CK.WKVC_SPLIT), CK.WKVC_THREADS](*dev, *seg, dS, dy)
    else:
        CK.wkv7_64[(3, H), N * CK.WKV_LANES](*dev, *seg, dS, dy)
    y, S = dy.copy_to_host().reshape(T, H, N), dS.copy_to_host()
    for t0, n, sl in zip(starts, lens, slots):
        St = S0[sl].astype(np.float64)              # the reference in float64
        sl_ = slice(t0, t0 + n)
        want = wkv7_ref(*(z[sl_].astype(np.float64) for z in (r, w, k, v, a, b)), St)
        scale = np.abs(want).max()
        assert np.abs(y[sl_] - want).max() <= 1e-5 * scale, (n, np.abs(y[sl_] - want).max() / scale)
        assert np.abs(S[sl] - St).max() <= 1e-5 * max(1.0, np.abs(St).max()), n
    assert np.array_equal(S[1], S0[1])


@needs_gpu
@pytest.mark.parametrize("wtype", ["f32", "f16"])
@pytest.mark.parametrize("T,N,K", [(40, 192, 1000), (70, 130, 98), (130, 64, 256)])
def test_tensor_core_gemm_matches_float32(wtype, T, N, K):
    """The tensor-core GEMM (rwkvcpu/kernels/tc_gemm.cu: hi/lo half splitting, float32 accumulation)
    against float64 NumPy: float32 accuracy (errors ~1e-6 of sum |x||w|, a half-precision product
    would be ~1e-3), whole and split along K, each epilogue, tanh/sigmoid on the input; ragged shapes
    (K = 98: rows not 16-byte aligned, the scalar load path)."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    r = np.random.default_rng(T + K)
    x = r.standard_normal((T, K)).astype(np.float32)
    W = (r.standard_normal((N, K)) * 0.1).astype(np.float32)
    if wtype == "f16":
        W = W.astype(np.float16)
        dW, kern = cuda.to_device(W.view(np.uint16)), CK.tc_gemm16
    else:
        dW, kern = cuda.to_device(W), CK.tc_gemm32
    Wd = W.astype(np.float64)
    base = r.standard_normal((T, N)).astype(np.float32)
    dx = cuda.to_device(x)
    grid = ((N + 63) // 64, (T + 63) // 64)
    for act, xf in ((0, x.astype(np.float64)), (1, np.tanh(x.astype(np.float64))),
                    (2, 1 / (1 + np.exp(-x.astype(np.float64))))):
        ref = xf @ Wd.T
        bound = 1e-5 * (np.abs(xf) @ np.abs(Wd.T))
        want = {0: ref, 1: base + ref, 2: np.maximum(ref, 0) ** 2}
        for ks in (1, 3):
            kc = -(-(-(-K // ks)) // 32) * 32
            n_split = -(-K // kc)
            for epi, expect in want.items():
                out = cuda.to_device(base.copy())
                if n_split > 1:
                    part = cuda.device_array((n_split, T, N), dtype=np.float32)
                    kern[(grid[0], grid[1], n_split), 128](dx, dW, part, N, T, N, kc, act, 0)
                    CK.gemm_reduce[(T * N + 255) // 256, 256](part, T, out, epi)
                else:
                    kern[(grid[0], grid[1], 1), 128](dx, dW, out, N, T, N, K, act, epi)
                got = out.copy_to_host().astype(np.float64)
                tol = bound if epi != 2 else bound * 2 * (np.abs(ref) + bound)
                assert np.all(np.abs(got - expect) <= tol + 1e-30), (act, ks, epi)


@needs_gpu
def test_gpu_model_uses_tensor_cores_and_agrees_with_simt_gemm(monkeypatch):
    """Prefill (T > MV_T) runs the tensor-core GEMM when it compiled; forcing the SIMT GEMM
    (RWKVCPU_NO_TC=1) gives the same logits to float32 reordering."""
    toks = (np.arange(64) * 37) % 4096
    tc = gpu_model("tiny-rwkv7-f16.gguf", "cuda")
    assert tc._segments[0][1].tc, tc._segments[0][1].tc_error
    lt, _ = tc.forward(toks, all_logits=True)
    monkeypatch.setenv("RWKVCPU_NO_TC", "1")
    from rwkvcpu.model import Model
    simt = Model.load(str(require_fixtures() / "tiny-rwkv7-f16.gguf"), device="cuda")
    assert not simt._segments[0][1].tc
    ls, _ = simt.forward(toks, all_logits=True)
    assert _close(lt, ls, np.abs(ls).max())


def _q8r_matrix(rng, rows, cols):
    """A random Q8_0 matrix as the GPU holds it (DevMatrix 'q8r') and its float64 values."""
    from rwkvcpu.gpu import DevMatrix
    from rwkvcpu.kernels import dequant as dq
    from rwkvcpu.loaders.checkpoint import QTensor
    nb = cols // 32
    d = (rng.uniform(0.001, 0.05, (rows, nb)) * rng.choice([-1, 1], (rows, nb))).astype(np.float16)
    q = rng.integers(-128, 128, (rows, nb, 32)).astype(np.int8)
    raw = np.empty((rows, nb, 34), np.uint8)
    raw[:, :, :2] = d.view(np.uint8).reshape(rows, nb, 2)
    raw[:, :, 2:] = q.view(np.uint8)
    M = DevMatrix(QTensor("w", dq.Q8_0, (rows, cols), raw.reshape(rows, nb * 34)))
    return M, (d.astype(np.float64)[:, :, None] * q).reshape(rows, cols)


@needs_gpu
@pytest.mark.parametrize("wtype", ["f16", "q8_0"])
@pytest.mark.parametrize("T,N,K", [(40, 192, 1000), (70, 130, 96), (130, 64, 256), (9, 200, 2080)])
def test_pipelined_half_gemm_equals_register_staged_tiles(wtype, T, N, K):
    """tc_hgemm / tc_hgemm_w2 (x split once by split_x, tiles copied with cp.async through a
    ring of stages; Q8_0 expanded straight to hi/lo halves) must do the very products of
    tc_gemm16 / tc_gemm32 in the same order: bit-identical outputs, whole and split along K,
    every epilogue, every input transform; and float32 accuracy against float64 NumPy."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(T * K + N)
    x = rng.standard_normal((T, K)).astype(np.float32)
    if wtype == "f16":
        W16 = (rng.standard_normal((N, K)) * 0.1).astype(np.float16)
        Wd = W16.astype(np.float64)
        old_w = new_w = (cuda.to_device(W16.view(np.uint16)),)
        old_k, new_k = CK.tc_gemm16, CK.tc_hgemm
    else:
        K -= K % 32                      # whole Q8_0 blocks
        x = x[:, :K].copy()
        M, Wd = _q8r_matrix(rng, N, K)
        Wf = cuda.device_array((N, K), np.float32)
        CK.expand_q8r[(N * K + 255) // 256, 256](M.arr, M.d16, Wf)
        Wh, Wl = cuda.device_array((N, K), np.uint16), cuda.device_array((N, K), np.uint16)
        CK.expand_q8r_hl[(N * K + 255) // 256, 256](M.arr, M.d16, Wh, Wl)
        old_w, new_w = (Wf,), (Wh, Wl)
        old_k, new_k = CK.tc_gemm32, CK.tc_hgemm_w2
    base = rng.standard_normal((T, N)).astype(np.float32)
    dx = cuda.to_device(x)
    hl = cuda.device_array((2, T, K), np.uint16)
    grid = ((N + 63) // 64, (T + 63) // 64)
    for act, f in ((0, lambda v: v), (1, np.tanh), (2, lambda v: 1 / (1 + np.exp(-v)))):
        CK.split_x[(T * K // 4 + 255) // 256, 256](dx, hl[0], hl[1], act)
        xa = f(x.astype(np.float64))
        ref = xa @ Wd.T
        bound = 1e-5 * (np.abs(xa) @ np.abs(Wd.T))
        for ks in (1, 3):
            kc = -(-(-(-K // ks)) // 32) * 32
            n_split = -(-K // kc)
            for epi in (0, 1, 2):
                outs = []
                for kern, w, xs, a in ((old_k, old_w, (dx,), act), (new_k, new_w, (hl[0], hl[1]), None)):
                    out = cuda.to_device(base.copy())
                    tail = (kc, act, 0) if a is not None else (K, kc, 0)
                    if n_split > 1:
                        part = cuda.device_array((n_split, T, N), dtype=np.float32)
                        kern[(grid[0], grid[1], n_split), 128](*xs, *w, part, N, T, N, *tail)
                        CK.gemm_reduce[(T * N + 255) // 256, 256](part, T, out, epi)
                    else:
                        tail = (K, act, epi) if a is not None else (K, K, epi)
                        kern[(grid[0], grid[1], 1), 128](*xs, *w, out, N, T, N, *tail)
                    outs.append(out.copy_to_host())
                if wtype == "f16":          # the 64 x 128 tile (256 threads): the same products again
                    out = cuda.to_device(base.copy())
                    gw = ((N + 127) // 128, grid[1])
                    if n_split > 1:
                        part = cuda.device_array((n_split, T, N), dtype=np.float32)
                        CK.tc_hgemm_n[(*gw, n_split), 256](hl[0], hl[1], *new_w, part, N, T, N, K, kc, 0)
                        CK.gemm_reduce[(T * N + 255) // 256, 256](part, T, out, epi)
                    else:
                        CK.tc_hgemm_n[(*gw, 1), 256](hl[0], hl[1], *new_w, out, N, T, N, K, K, epi)
                    outs.append(out.copy_to_host())
                for o in outs[1:]:
                    assert np.array_equal(outs[0], o), (act, ks, epi, np.abs(outs[0] - o).max())
                if epi == 0:
                    assert np.all(np.abs(outs[1] - ref) <= bound + 1e-30), (act, ks)


@needs_gpu
@pytest.mark.parametrize("name", ["tiny-rwkv7-f16.gguf", "tiny-rwkv7-q8_0.gguf"])
def test_gpu_model_pipelined_gemm_gives_the_same_bits(name, monkeypatch):
    """A prefill through the pipelined half-tile GEMMs (the projections and the grouped low-rank
    products) equals, bit for bit, the same prefill with RWKVCPU_NO_HGEMM=1 (the register-staged
    tiles): logits and state."""
    from rwkvcpu.model import Model
    toks = (np.arange(80) * 41) % 4096
    new = gpu_model(name, "cuda")
    assert new._segments[0][1].hg, new._segments[0][1].hg_error
    assert new._segments[0][1].wkvc, new._segments[0][1].wkvc_error
    assert new._segments[0][1].embeds           # the embedding lookup and ln0 on the device too
    assert new._segments[0][1]._lr_halves(new._segments[0][1].layers[1])     # low-rank on half tiles too
    ln, sn = new.forward(toks, all_logits=True)
    monkeypatch.setenv("RWKVCPU_NO_HGEMM", "1")
    old = Model.load(str(require_fixtures() / name), device="cuda")
    assert not old._segments[0][1].hg
    lo, so = old.forward(toks, all_logits=True)
    assert np.array_equal(ln, lo) and np.array_equal(sn.s, so.s) and np.array_equal(sn.r, so.r)


# --- llama numerics on the GPU ------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("qtype_name", ["Q8_0", "Q4_K", "F16", "BF16"])
def test_round_x_kernel_equals_numpy_rounding_bit_for_bit(qtype_name):
    """round_x (CUDA C) rounds act(x) as actquant.round_like_llama_ref does, bit for bit; rows the
    block does not divide are left as they are (as the CPU kernels leave them)."""
    from numba import cuda
    from rwkvcpu.kernels import actquant as A
    from rwkvcpu.kernels import cuda as CK
    from rwkvcpu.kernels import dequant as dq
    qtype = getattr(dq, qtype_name)
    mode = A.rounding_mode(qtype)
    blk = {A.R_Q8_0: 32, A.R_Q8_K: 256}.get(mode, 1)
    rng = np.random.default_rng(mode)
    for n in (512, 100):
        x = (rng.standard_normal((7, n)) * rng.uniform(0.01, 30, (7, 1))).astype(np.float32)
        x[0, : min(n, 256)] = 0                  # an all-zero block
        x[1, 5] = -1e4                           # a negative extreme (Q8_K keeps the sign of max)
        dx = cuda.to_device(x)
        for act in (0, 1, 2):
            units = 7 * (n // blk if n % blk == 0 else n)
            y0, y = cuda.device_array_like(x), cuda.device_array_like(x)
            CK.round_x[(7 * n + 255) // 256, 256](dx, act, 0, y0)      # act alone (one thread per value)
            CK.round_x[(units + 255) // 256, 256](dx, act, mode, y)
            a, got = y0.copy_to_host(), y.copy_to_host()
            if act == 0:
                assert np.array_equal(a, x)
            else:
                f = np.tanh(x) if act == 1 else 1 / (1 + np.exp(-x.astype(np.float64)))
                np.testing.assert_allclose(a, f, rtol=2e-6, atol=1e-7)
            if n % blk:
                assert np.array_equal(got, a), "a row the block does not divide is left alone"
                continue
            ref = A.round_like_llama_ref(a, qtype)
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (act, n)
            assert not np.array_equal(got, a)


@needs_gpu
@pytest.mark.parametrize("T,N,K", [(70, 130, 96), (130, 64, 256), (200, 300, 2080)])
def test_f16_activation_gemm_equals_exact_gemm_on_rounded_x(T, N, K):
    """tc_hgemm_h / tc_hgemm_hn (x's hi halves alone, one MMA per product) equal, bit for bit,
    the exact two-MMA tile run on x rounded to f16 beforehand (whose low halves are then 0):
    llama numerics on F16 weights change the rounding of x and nothing else."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(T + N + K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x16 = x.astype(np.float16).astype(np.float32)
    W = cuda.to_device((rng.standard_normal((N, K)) * 0.1).astype(np.float16).view(np.uint16))
    Wd = W.copy_to_host().view(np.float16).astype(np.float64)
    base = rng.standard_normal((T, N)).astype(np.float32)
    hl, hl16 = cuda.device_array((2, T, K), np.uint16), cuda.device_array((2, T, K), np.uint16)
    g = (T * K // 4 + 255) // 256
    CK.split_x[g, 256](cuda.to_device(x), hl[0], hl[1], 0)
    CK.split_x[g, 256](cuda.to_device(x16), hl16[0], hl16[1], 0)
    assert np.array_equal(hl[0].copy_to_host(), hl16[0].copy_to_host()) and not hl16[1].copy_to_host().any()
    ref = x16.astype(np.float64) @ Wd.T
    for ks in (1, 3):
        kc = -(-(-(-K // ks)) // 32) * 32
        n_split = -(-K // kc)
        for epi in (0, 1, 2):
            outs = []
            for kern, xs, bn, th in ((CK.tc_hgemm, (hl16[0], hl16[1]), 64, 128), (CK.tc_hgemm_h, (hl[0],), 64, 128),
                                     (CK.tc_hgemm_hn, (hl[0],), 128, 256)):
                out = cuda.to_device(base.copy())
                gx, gy = (N + bn - 1) // bn, (T + 63) // 64
                if n_split > 1:
                    part = cuda.device_array((n_split, T, N), dtype=np.float32)
                    kern[(gx, gy, n_split), th](*xs, W, part, N, T, N, K, kc, 0)
                    CK.gemm_reduce[(T * N + 255) // 256, 256](part, T, out, epi)
                else:
                    kern[(gx, gy, 1), th](*xs, W, out, N, T, N, K, K, epi)
                outs.append(out.copy_to_host())
            for o in outs[1:]:
                assert np.array_equal(outs[0], o), (ks, epi, np.abs(outs[0] - o).max())
            if epi == 0:
                assert np.all(np.abs(outs[1] - ref) <= 1e-5 * (np.abs(x16) @ np.abs(Wd.T)) + 1e-30)


@needs_gpu
@pytest.mark.parametrize("typ,device", [("f16", "cuda"), ("f16", "cuda *1 -> cpu"), ("bf16", "cuda"),
                                        ("q8_0", "cuda"), ("q4_0", "cuda"), ("q4_k_m", "cuda"), ("q6_k", "cuda"),
                                        ("iq4_xs", "cuda")])
def test_gpu_llama_numerics_match_cpu_llama_numerics(typ, device):
    """numerics='llama' on the GPU rounds every product's input as the CPU's llama mode does
    (round_x; F16 weights at T > 8 through split_x's f16 rounding and the one-MMA tile).
    Quantized types: position 0 of a 64-token prompt (the GEMM path) and three decode steps
    from a common state, close to the CPU's llama mode (tolerance below); over
    all 64 positions a rounding flip (a value that lands on the other side of an 8-bit
    boundary after differently ordered float32 sums) may move the two apart, as it moves the
    CPU's llama mode away from llama.cpp (test_numerics.py), so there the GPU must only stay
    closer to the CPU's llama mode than the CPU's exact mode is.
    F16/BF16: a flip of an f16 (bf16) rounding is common (an ulp of float32 difference crosses a
    rounding midpoint with probability ~2^-13 (2^-16) per value) and moves that activation by
    2^-11 (2^-8) of itself: measured 3.8e-4 of the logit scale at position 0 for F16, as large
    as the whole difference between the two modes, which the model level therefore cannot
    tell apart: there the rounding itself is held bit for bit by the kernel tests above, and
    this test bounds the distance by 2e-3 of the scale (and 2x the modes' own distance)."""
    from rwkvcpu.model import Model
    name = f"tiny-rwkv7-{typ}.gguf"
    path = require_fixtures() / name
    if not path.exists():
        pytest.skip(f"fixture {name} not present")
    toks = np.load(FIXTURES / "ref-rwkvpip-tiny-rwkv7.npz")["seqlong_tokens"] if (
        FIXTURES / "ref-rwkvpip-tiny-rwkv7.npz").exists() else np.arange(1, 65) * 37 % 4096
    cpu_ll = Model.load(str(path), numerics="llama")
    gpu_ll = Model.load(str(path), device=device, numerics="llama")
    le, _ = fixture_model(name).forward(toks, all_logits=True)
    lc, sc = cpu_ll.forward(toks, all_logits=True)
    lg, sg = gpu_ll.forward(toks, all_logits=True)
    scale = np.abs(lc).max()
    elementwise = typ in ("f16", "bf16")
    # quantized types: 1e-4 of the scale, one flip of an 8-bit rounding at position 0 (measured
    # 2.3e-5 on q4_0) and still 1/100 of the exact mode's distance there (test_numerics.py)
    tol = (2e-3 if elementwise else 1e-4) * scale
    modes = np.abs(lc - le).max()
    far = max(tol, 2 * modes) if elementwise else modes       # what no difference may reach
    assert np.abs(lg[0] - lc[0]).max() <= tol, np.abs(lg[0] - lc[0]).max() / scale
    assert np.abs(lg - lc).max() < far, (np.abs(lg - lc).max(), modes)
    # decode: each step from the CPU's state, so that no flip carries over.  A flip can still
    # happen within a step: on q4_0, 3 of 8 steps measured up to 1.6e-3 of the scale (~7000
    # rounded values per step, each a few float32 ulps apart on the two devices), the other 5
    # within 2e-5.  A wrong rounding would move every step: at least half within tol, all
    # closer than the modes' distance.
    within = 0
    for t in (5, 900, 17, 3000, 42, 777, 1234, 64):
        a, sc_next = cpu_ll.forward([t], sc.copy())
        b, _ = gpu_ll.forward([t], sc.copy())
        diff = np.abs(a - b).max()
        within += diff <= tol
        assert diff < far, (t, diff / scale)
        sc = sc_next
    assert within >= 4, within


@needs_gpu
@pytest.mark.parametrize("rmode", [3, 4])              # actquant.R_F16, R_BF16
def test_split_x_rounds_x_as_it_splits_it(rmode):
    """split_x with act | rmode << 4 (llama numerics on the pipelined tiles) rounds act(x) to f16 /
    bf16 before splitting it: the same halves, bit for bit, as splitting x rounded beforehand
    by round_x; bit 8 leaves the low halves untouched."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    T, K = 70, 96
    rng = np.random.default_rng(rmode)
    x = cuda.to_device((rng.standard_normal((T, K)) * 3).astype(np.float32))
    g = (T * K // 4 + 255) // 256
    for act in (0, 1, 2):
        xr = cuda.device_array_like(x)
        CK.round_x[g, 256](x, act, rmode, xr)
        assert not np.array_equal(xr.copy_to_host(), x.copy_to_host())
        hl = []
        for xs, a in ((x, act | rmode << 4), (xr, 0)):
            h = cuda.to_device(np.full((2, T, K), 7, np.uint16))
            CK.split_x[g, 256](xs, h[0], h[1], a)
            hl.append(h.copy_to_host())
        assert np.array_equal(hl[0], hl[1]), act
        h = cuda.to_device(np.full((2, T, K), 7, np.uint16))
        CK.split_x[g, 256](x, h[0], h[1], act | rmode << 4 | 256)
        h = h.copy_to_host()
        assert np.array_equal(h[0], hl[0][0]) and np.all(h[1] == 7)


@needs_gpu
@pytest.mark.parametrize("f16_x", [False, True])
def test_grouped_rkv_gemm_equals_three_products(f16_x):
    """tc_hgemm_n3 / tc_hgemm_hn3 (a layer's r, k, v in one launch) give, bit for bit, what
    tc_hgemm_n / tc_hgemm_hn give for each product alone."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    T, N, K = 130, 300, 256
    rng = np.random.default_rng(int(f16_x))
    xs = [cuda.to_device(rng.standard_normal((T, K)).astype(np.float32)) for _ in range(3)]
    ws = [cuda.to_device((rng.standard_normal((N, K)) * 0.1).astype(np.float16).view(np.uint16)) for _ in range(3)]
    halves = []
    for x in xs:
        h = cuda.device_array((2, T, K), np.uint16)
        CK.split_x[(T * K // 4 + 255) // 256, 256](x, h[0], h[1], (3 << 4 | 256) if f16_x else 0)
        halves.append(h)
    grid = ((N + 127) // 128, (T + 63) // 64)
    alone = []
    for h, w in zip(halves, ws):
        o = cuda.device_array((T, N), np.float32)
        if f16_x:
            CK.tc_hgemm_hn[(*grid, 1), 256](h[0], w, o, N, T, N, K, K, 0)
        else:
            CK.tc_hgemm_n[(*grid, 1), 256](h[0], h[1], w, o, N, T, N, K, K, 0)
        alone.append(o.copy_to_host())
    outs = [cuda.device_array((T, N), np.float32) for _ in range(3)]
    if f16_x:
        CK.tc_hgemm_hn3[(*grid, 3), 256](*(h[0] for h in halves), *ws, *outs, T, N, K, 0)
    else:
        CK.tc_hgemm_n3[(*grid, 3), 256](*(z for h in halves for z in (h[0], h[1])), *ws, *outs, T, N, K, 0)
    for a, o in zip(alone, outs):
        assert np.array_equal(a, o.copy_to_host())


def _spy_launches(run, monkeypatch) -> list:
    """The kernels a GPU runner launches from now on, in order (its ``_go`` wrapped)."""
    calls = []
    orig = run._go

    def spy(kern, *a, **k):
        calls.append(kern)
        return orig(kern, *a, **k)
    monkeypatch.setattr(run, "_go", spy)
    return calls


@needs_gpu
@pytest.mark.parametrize("numerics", ["exact", "llama"])
def test_gpu_model_grouped_rkv_gives_the_same_bits(numerics, monkeypatch):
    """With GEMM_WIDE lowered so that the tiny model takes the grouped r/k/v launch (at 1.5B
    prefill it takes it by itself), a prefill equals the default path's bit for bit."""
    from rwkvcpu.kernels import cuda as CK
    from rwkvcpu.model import Model
    path = str(require_fixtures() / "tiny-rwkv7-f16.gguf")
    toks = (np.arange(80) * 41) % 4096
    ref = Model.load(path, device="cuda", numerics=numerics).forward(toks, all_logits=True)
    monkeypatch.setattr(CK, "GEMM_WIDE", 1)
    m = Model.load(path, device="cuda", numerics=numerics)
    calls = _spy_launches(m._segments[0][1], monkeypatch)
    got = m.forward(toks, all_logits=True)
    assert (CK.tc_hgemm_hn3 if numerics == "llama" else CK.tc_hgemm_n3) in calls
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1].s, ref[1].s)


@needs_gpu
@pytest.mark.parametrize("f16_x", [False, True])
@pytest.mark.parametrize("T,N,K", [(130, 300, 256), (200, 136, 2080), (9, 129, 64)])
def test_big_tiles_equal_the_64_row_tiles(f16_x, T, N, K):
    """The 128 x 128 tiles (tc_hgemm_b / tc_hgemm_hb, stages in over 48 KB of dynamic shared
    memory) accumulate every output over k in the order of the 64 x 64 tiles (tc_hgemm /
    tc_hgemm_h): bit-identical outputs on ragged shapes, whole and split along K, every
    epilogue; and the grouped launches (tc_hgemm_b3 / tc_hgemm_hb3) equal three alone."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(T + N + K + f16_x)
    x = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32))
    W = cuda.to_device((rng.standard_normal((N, K)) * 0.1).astype(np.float16).view(np.uint16))
    hl = cuda.device_array((2, T, K), np.uint16)
    CK.split_x[(T * K // 4 + 255) // 256, 256](x, hl[0], hl[1], (3 << 4 | 256) if f16_x else 0)
    xs = (hl[0],) if f16_x else (hl[0], hl[1])
    small, big, smem = ((CK.tc_hgemm_h, CK.tc_hgemm_hb, CK.BIG_SMEM_H) if f16_x
                        else (CK.tc_hgemm, CK.tc_hgemm_b, CK.BIG_SMEM_X))
    base = rng.standard_normal((T, N)).astype(np.float32)
    for ks in (1, 3):
        kc = -(-(-(-K // ks)) // 32) * 32
        n_split = -(-K // kc)
        for epi in (0, 1, 2):
            outs = []
            for kern, tile, threads, sm in ((small, 64, 128, 0), (big, 128, 128, smem)):
                out = cuda.to_device(base.copy())
                grid = ((N + tile - 1) // tile, (T + tile - 1) // tile)
                if n_split > 1:
                    part = cuda.device_array((n_split, T, N), dtype=np.float32)
                    args = (*xs, W, part, N, T, N, K, kc, 0)
                else:
                    args = (*xs, W, out, N, T, N, K, K, epi)
                if sm:
                    CK.allow_smem(kern, args, sm)
                kern[(*grid, n_split), threads, 0, sm](*args)
                if n_split > 1:
                    CK.gemm_reduce[(T * N + 255) // 256, 256](part, T, out, epi)
                outs.append(out.copy_to_host())
            assert np.array_equal(outs[0], outs[1]), (ks, epi, np.abs(outs[0] - outs[1]).max())
    ws = [W] + [cuda.to_device((rng.standard_normal((N, K)) * 0.1).astype(np.float16).view(np.uint16))
                for _ in range(2)]
    alone = []
    for w in ws:
        o = cuda.device_array((T, N), np.float32)
        small[((N + 63) // 64, (T + 63) // 64, 1), 128](*xs, w, o, N, T, N, K, K, 0)
        alone.append(o.copy_to_host())
    outs = [cuda.device_array((T, N), np.float32) for _ in range(3)]
    g3 = CK.tc_hgemm_hb3 if f16_x else CK.tc_hgemm_b3
    args = (*(xs * 3 if f16_x else (xs[0], xs[1]) * 3), *ws, *outs, T, N, K, 0)
    CK.allow_smem(g3, args, smem)
    g3[((N + 127) // 128, (T + 127) // 128, 3), 128, 0, smem](*args)
    for a, o in zip(alone, outs):
        assert np.array_equal(a, o.copy_to_host())


@needs_gpu
@pytest.mark.parametrize("numerics", ["exact", "llama"])
def test_gpu_model_big_tiles_give_the_same_bits(numerics, monkeypatch):
    """With BIG_FILL lowered so that the tiny model's F16 products take the 128 x 128 tiles (at
    1.5B prefill ffn_key, ffn_value and r/k/v take them by themselves), and BIG_KMIN at 256 so
    that K is sliced as the default path slices it, a prefill equals the default path's bit for
    bit: logits of every position and the state."""
    from rwkvcpu.kernels import cuda as CK
    from rwkvcpu.model import Model
    path = str(require_fixtures() / "tiny-rwkv7-f16.gguf")
    toks = (np.arange(80) * 41) % 4096
    ref = Model.load(path, device="cuda", numerics=numerics).forward(toks, all_logits=True)
    monkeypatch.setattr(CK, "BIG_FILL", 1)
    monkeypatch.setattr(CK, "BIG_KMIN", 256)
    m = Model.load(path, device="cuda", numerics=numerics)
    run = m._segments[0][1]
    calls = _spy_launches(run, monkeypatch)
    got = m.forward(toks, all_logits=True)
    assert run.big, run.big_error
    big = (CK.tc_hgemm_hb, CK.tc_hgemm_hb3) if numerics == "llama" else (CK.tc_hgemm_b, CK.tc_hgemm_b3)
    assert all(k in calls for k in big), [k.__name__ for k in calls]
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1].s, ref[1].s) \
        and np.array_equal(got[1].r, ref[1].r)


@needs_gpu
def test_shift_mix_hl_equals_shift_mix_then_split_x():
    """shift_mix_hl: the outputs of shift_mix (and the same state-row update), plus hi/lo halves
    equal bit for bit to split_x of those outputs."""
    from numba import cuda
    from rwkvcpu.kernels import cuda as CK
    rng = np.random.default_rng(5)
    T, C, slots = 40, 96, 3
    x = cuda.to_device(rng.standard_normal((T, C)).astype(np.float32))
    mixes = cuda.to_device(rng.uniform(0, 1, (6, C)).astype(np.float32))
    segs = [cuda.to_device(np.array(v, np.int64)) for v in ([0, 17], [17, 23], [2, 0])]
    R0 = rng.standard_normal((slots, 2 * C)).astype(np.float32)
    grid = ((C + 127) // 128, 2, (23 + CK.SHIFT_T - 1) // CK.SHIFT_T)
    Ra, Rb = cuda.to_device(R0), cuda.to_device(R0)
    a, b = cuda.device_array((6, T, C), np.float32), cuda.device_array((6, T, C), np.float32)
    H, L = cuda.device_array((6, T, C), np.uint16), cuda.device_array((6, T, C), np.uint16)
    CK.shift_mix[grid, 128](x, *segs, Ra, C, mixes, a)
    CK.shift_mix_hl[grid, 128](x, *segs, Rb, C, mixes, b, H, L)
    assert np.array_equal(a.copy_to_host(), b.copy_to_host()) and np.array_equal(Ra.copy_to_host(), Rb.copy_to_host())
    for m in range(6):
        h, lo = cuda.device_array((T, C), np.uint16), cuda.device_array((T, C), np.uint16)
        CK.split_x[(T * C // 4 + 255) // 256, 256](b[m], h, lo, 0)
        assert np.array_equal(h.copy_to_host(), H.copy_to_host()[m]) and np.array_equal(lo.copy_to_host(), L.copy_to_host()[m])
