"""Plain NumPy references for every CPU kernel, and a whole reference forward pass.

Nothing here is fast; everything here is obvious.  ``dtype`` selects the
precision (float32 to mirror the kernels, float64 for drift measurements).
The wkv state layout is the project's one layout: ``S[h, i, j]`` with ``i`` the
value channel (row) and ``j`` the key channel (column), as in RWKV-LM, rwkv
pip and llama.cpp (see ``rwkvcpu/state.py``).
"""
from __future__ import annotations

import numpy as np

DECAY_SCALE = 0.606531        # e^-0.5, as written in RWKV-LM / rwkv pip / llama.cpp
GROUP_NORM_EPS = 64e-5
L2_EPS = 1e-12


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def group_norm(x, w, b, n_head, eps=GROUP_NORM_EPS):
    T, C = x.shape
    xh = x.reshape(T, n_head, C // n_head)
    mu = xh.mean(-1, keepdims=True)
    var = ((xh - mu) ** 2).mean(-1, keepdims=True)
    return ((xh - mu) / np.sqrt(var + eps)).reshape(T, C) * w + b


def l2_normalize_heads(x, n_head, eps=L2_EPS):
    T, C = x.shape
    xh = x.reshape(T, n_head, C // n_head)
    n = np.sqrt((xh * xh).sum(-1, keepdims=True))
    return (xh / np.maximum(n, eps)).reshape(T, C)


def token_shift(x, prev):
    """Row t gets x[t-1]; row 0 gets ``prev`` (the previous call's last row)."""
    out = np.empty_like(x)
    out[0] = prev
    out[1:] = x[:-1]
    return out


def lerp(x, x_prev, mix):
    return x + (x_prev - x) * mix


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def wkv7(r, w, k, v, a, b, S):
    """One sequence through the WKV7 recurrence.  r..b: [T, H, N]; S: [H, N, N] (updated in place).

    S <- S * w[j] + (S @ a)[i] * b[j] + v[i] * k[j];   y[i] = sum_j S[i, j] * r[j]
    """
    T, H, N = r.shape
    y = np.empty_like(r)
    for t in range(T):
        sa = np.einsum("hij,hj->hi", S, a[t])
        S[:] = S * w[t][:, None, :] + sa[:, :, None] * b[t][:, None, :] + v[t][:, :, None] * k[t][:, None, :]
        y[t] = np.einsum("hij,hj->hi", S, r[t])
    return y


def forward(weights, hp, tokens, att_prev, ffn_prev, S, dtype=np.float64):
    """Reference RWKV-7 forward over one sequence. State arrays are updated in place.

    att_prev, ffn_prev: [L, C]; S: [L, H, N, N].  Returns logits [T, V].
    """
    H, N = hp.n_head, hp.head_size

    def m(q):   # a weight matrix in the chosen precision
        return q.dequantize().astype(dtype) if hasattr(q, "dequantize") else q.astype(dtype)

    def c(v):
        return np.asarray(v, dtype=dtype)

    x = m(weights.emb)[np.asarray(tokens)]
    x = layer_norm(x, c(weights.ln0_w), c(weights.ln0_b), hp.norm_eps)
    v_first = None
    T = x.shape[0]
    for il, L in enumerate(weights.layers):
        xa = layer_norm(x, c(L.ln1_w), c(L.ln1_b), hp.norm_eps)
        prev = token_shift(xa, att_prev[il])
        att_prev[il] = xa[-1]
        xr, xw, xk, xv, xaa, xg = (lerp(xa, prev, c(getattr(L, n))) for n in
                                   ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = xr @ m(L.receptance).T
        w = np.exp(-DECAY_SCALE * sigmoid(c(L.w0) + np.tanh(xw @ c(L.w1).T) @ c(L.w2).T))
        k = xk @ m(L.key).T
        v = xv @ m(L.value).T
        if il == 0:
            v_first = v
        else:
            v = v + (v_first - v) * sigmoid(c(L.v0) + (xv @ c(L.v1).T) @ c(L.v2).T)
        a = sigmoid(c(L.a0) + (xaa @ c(L.a1).T) @ c(L.a2).T)
        g = sigmoid(xg @ c(L.g1).T) @ c(L.g2).T
        kk = l2_normalize_heads(k * c(L.k_k), H)
        k = k * (1 + (a - 1) * c(L.k_a))
        sh = (T, H, N)
        Sl = S[il].astype(dtype)
        y = wkv7(r.reshape(sh), w.reshape(sh), k.reshape(sh), v.reshape(sh),
                 (-kk).reshape(sh), (kk * a).reshape(sh), Sl).reshape(T, -1)
        S[il] = Sl
        y = group_norm(y, c(L.ln_x_w), c(L.ln_x_b), H)
        bonus = (r * k * c(L.r_k)).reshape(sh).sum(-1, keepdims=True) * v.reshape(sh)
        y = y + bonus.reshape(T, -1)
        x = x + (y * g) @ m(L.output).T
        xf = layer_norm(x, c(L.ln2_w), c(L.ln2_b), hp.norm_eps)
        prev = token_shift(xf, ffn_prev[il])
        ffn_prev[il] = xf[-1]
        kf = lerp(xf, prev, c(L.ffn_x_k))
        x = x + (np.maximum(kf @ m(L.ffn_key).T, 0) ** 2) @ m(L.ffn_value).T
    x = layer_norm(x, c(weights.ln_out_w), c(weights.ln_out_b), hp.norm_eps)
    return x @ m(weights.head).T
