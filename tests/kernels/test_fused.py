"""fused.tmix_in against NumPy (float64), one row at a time and as a batch (T > 1: the down
projections in 2 x 4 tiles, the up ones 8 channels at a time by ``fused._up``), on shapes whose
low-rank rows and channel spans are multiples of 8 (every released RWKV-7) and on shapes whose are
not (``_up``'s per-channel fallback).  The model tests cover the kernel on the fixture models."""
import numpy as np
import pytest

from rwkvcpu.kernels import fused as F
from rwkvcpu.kernels import reference as R

# float32 kernels vs float64 NumPy on O(1) values: summation-order and exp rounding, a few ulps.
TOL = 1e-5


def _ro(a):
    """Read-only float32, like a loaded file's weights (the model's argument types: one compile)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("C, dims", [(64, (16, 16, 8, 24)),       # rows and spans multiples of 8
                                     (36, (12, 16, 20, 8))])      # ragged rows (12, 20), ragged span
def test_tmix_in_rows_and_batches_match_numpy(C, dims):
    rng = np.random.default_rng(C)
    nw, na, nv, ng = dims
    T = 5
    x = rng.standard_normal((T, C)).astype(np.float32)
    ln_w, ln_b = _ro(1 + 0.1 * rng.standard_normal(C)), _ro(0.1 * rng.standard_normal(C))
    eps = np.float32(1e-5)
    mixes = rng.random((6, C)).astype(np.float32)

    def mat(r, c):
        return _ro(rng.standard_normal((r, c)) / np.sqrt(c))
    w1, w2, a1, a2 = mat(nw, C), mat(C, nw), mat(na, C), mat(C, na)
    v1, v2, g1, g2 = mat(nv, C), mat(C, nv), mat(ng, C), mat(C, ng)
    w0, a0, v0 = (_ro(rng.standard_normal(C)) for _ in range(3))
    cache0 = rng.standard_normal((T, 2 * C)).astype(np.float32)     # each sequence's previous rows
    rnd = np.zeros(8, dtype=np.int64)                               # exact numerics

    def run(rows):
        """tmix_in on x[rows], each row its own sequence (slot = its row number)."""
        n = len(rows)
        cr = cache0.copy()
        outs = [np.full((n, C), np.nan, dtype=np.float32) for _ in range(7)]
        F.tmix_in(np.ascontiguousarray(x[rows]), ln_w, ln_b, eps, np.arange(n, dtype=np.int64),
                  np.ones(n, dtype=np.int64), np.array(rows, dtype=np.int64), cr, mixes,
                  w1, w2, w0, a1, a2, a0, v1, v2, v0, g1, g2, True, rnd, *outs)
        return dict(zip(("xr", "xk", "xv", "w", "a", "vg", "g"), outs)), cr

    xd = x.astype(np.float64)
    xa = R.layer_norm(xd, ln_w, ln_b, 1e-5)
    d = cache0[:, :C] - xa
    xr, xw, xk, xv, xaa, xg = (xa + d * mixes[i] for i in range(6))
    want = {"xr": xr, "xk": xk, "xv": xv,
            "w": np.exp(-R.DECAY_SCALE * _sigmoid(w0 + np.tanh(xw @ w1.T) @ w2.T)),
            "a": _sigmoid(a0 + (xaa @ a1.T) @ a2.T),
            "vg": _sigmoid(v0 + (xv @ v1.T) @ v2.T),
            "g": _sigmoid(xg @ g1.T) @ g2.T}
    batch, cr = run(list(range(T)))
    for name, ref in want.items():
        np.testing.assert_allclose(batch[name], ref, atol=TOL, err_msg=f"batch {name}")
    np.testing.assert_allclose(cr[:, :C], xa, atol=TOL)             # the shift rows now hold x's norms
    np.testing.assert_array_equal(cr[:, C:], cache0[:, C:])         # the channel mix's are untouched
    for t in (0, T - 1):
        alone, _ = run([t])
        for name, ref in want.items():
            np.testing.assert_allclose(alone[name][0], ref[t], atol=TOL, err_msg=f"row {t} {name}")
