"""Train the small RWKV-7 (x070) bundled with rwkvcpu.  PyTorch is needed by this tool only.

    python tools/train_tiny.py --data .device/tiny --out .device/out [--steps 600] [--device cuda]

Reads train.npy / heldout.npy / vocab.txt written by tools/build_tiny_corpus.py.  Trains with
AdamW on random 128-token windows (plain time loop for the WKV recurrence, float32), then
scores the whole held-out play token by token with the state carried across chunks (what
``rwkvcpu perplexity`` does) using the weights rounded to bfloat16, and writes:
  tiny-shakespeare.pth  BlinkDL layout, bfloat16;  train_log.json  losses and held-out figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DECAY_SCALE = 0.606531


def vec(C, fill=0.0):
    return nn.Parameter(torch.full((1, 1, C), float(fill)))


class Att(nn.Module):
    def __init__(self, i, L, C, H, ranks):
        super().__init__()
        rw, ra, rv, rg = ranks
        N = C // H
        r0 = i / max(L - 1, 1)
        r1 = 1.0 - i / L
        ddd = torch.arange(C, dtype=torch.float32) / C
        mk = lambda p: nn.Parameter((1.0 - ddd.pow(p * r1)).view(1, 1, C))
        self.x_r, self.x_w, self.x_k = mk(0.2), mk(0.9), mk(0.7)
        self.x_v, self.x_a, self.x_g = mk(0.7), mk(0.9), mk(0.2)
        n = torch.arange(C, dtype=torch.float32)
        decay = -7 + 5 * (n / (C - 1)) ** (0.85 + 1.0 * r0 ** 0.5)
        self.w0 = nn.Parameter((decay + 0.5).view(1, 1, C))
        ortho = lambda d, c, s: nn.Parameter(nn.init.orthogonal_(torch.empty(d, c), gain=s))
        self.w1 = nn.Parameter(torch.zeros(C, rw))
        self.w2 = ortho(rw, C, 0.1)
        self.a0 = vec(C, 0.0)
        self.a1 = nn.Parameter(torch.zeros(C, ra))
        self.a2 = ortho(ra, C, 0.1)
        if i > 0:
            self.v0 = vec(C, 1.0)
            self.v1 = nn.Parameter(torch.zeros(C, rv))
            self.v2 = ortho(rv, C, 0.1)
        self.g1 = nn.Parameter(torch.zeros(C, rg))
        self.g2 = ortho(rg, C, 0.1)
        self.k_k = vec(C, 0.85)
        self.k_a = vec(C, 1.0)
        self.r_k = nn.Parameter(torch.full((H, N), -0.04))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        for lin in (self.receptance, self.key, self.value):
            nn.init.uniform_(lin.weight, -0.5 / C ** 0.5, 0.5 / C ** 0.5)
        nn.init.zeros_(self.output.weight)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)
        with torch.no_grad():
            self.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
        self.i, self.H, self.N = i, H, N

    def forward(self, x, prev, S, v_first):
        B, T, C = x.shape
        H, N = self.H, self.N
        xx = torch.cat([prev.unsqueeze(1), x[:, :-1]], 1) - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g
        r = self.receptance(xr)
        w = torch.exp(-DECAY_SCALE * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2))
        k = self.key(xk)
        v = self.value(xv)
        if self.i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        sh = (B, T, H, N)
        rr, ww, kk_, vv = r.view(sh), w.view(sh), k.view(sh), v.view(sh)
        aa, bb = (-kk).view(sh), (kk * a).view(sh)
        ys = []
        for t in range(T):               # S[b, h, i(value), j(key)]
            sa = S @ aa[:, t].unsqueeze(-1)
            S = S * ww[:, t].unsqueeze(-2) + sa @ bb[:, t].unsqueeze(-2) + vv[:, t].unsqueeze(-1) @ kk_[:, t].unsqueeze(-2)
            ys.append((S @ rr[:, t].unsqueeze(-1)).squeeze(-1))
        y = torch.stack(ys, 1).reshape(B * T, C)
        y = self.ln_x(y).view(B, T, C)
        y = y + ((r * k * self.r_k.view(1, 1, C)).view(sh).sum(-1, keepdim=True) * vv).view(B, T, C)
        return self.output(y * g), x[:, -1], S, v_first


class Ffn(nn.Module):
    def __init__(self, i, L, C, Fd):
        super().__init__()
        ddd = torch.arange(C, dtype=torch.float32) / C
        self.x_k = nn.Parameter((1.0 - ddd.pow((1.0 - i / L) ** 4)).view(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)
        nn.init.uniform_(self.key.weight, -0.5 / C ** 0.5, 0.5 / C ** 0.5)
        nn.init.zeros_(self.value.weight)

    def forward(self, x, prev):
        xx = torch.cat([prev.unsqueeze(1), x[:, :-1]], 1) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2
        return self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, i, L, C, H, Fd, ranks):
        super().__init__()
        if i == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = Att(i, L, C, H, ranks)
        self.ffn = Ffn(i, L, C, Fd)


class RWKV7(nn.Module):
    def __init__(self, V, C, L, H, Fd, ranks):
        super().__init__()
        self.emb = nn.Embedding(V, C)
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        self.blocks = nn.ModuleList([Block(i, L, C, H, Fd, ranks) for i in range(L)])
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        nn.init.normal_(self.head.weight, std=0.5 / C ** 0.5)
        self.L, self.C, self.H = L, C, H

    def new_state(self, B, device):
        N = self.C // self.H
        z = lambda *s: torch.zeros(*s, device=device)
        return [(z(B, self.C), z(B, self.H, N, N), z(B, self.C)) for _ in range(self.L)]

    def forward(self, idx, state):
        x = self.blocks[0].ln0(self.emb(idx))
        v_first = None
        new = []
        for blk, (ap, S, fp) in zip(self.blocks, state):
            dx, ap, S, v_first = blk.att(blk.ln1(x), ap, S, v_first)
            x = x + dx
            dx, fp = blk.ffn(blk.ln2(x), fp)
            x = x + dx
            new.append((ap, S, fp))
        return self.head(self.ln_out(x)), new


@torch.no_grad()
def heldout_nll(model, ids, device, chunk=1024):
    """Token-level NLL of the whole text, state carried across chunks (as rwkvcpu perplexity)."""
    state = model.new_state(1, device)
    total, count = 0.0, 0
    for c0 in range(0, len(ids) - 1, chunk):
        inp = torch.as_tensor(ids[c0:min(c0 + chunk, len(ids) - 1)].astype(np.int64), device=device)[None]
        tgt = torch.as_tensor(ids[c0 + 1:c0 + 1 + inp.shape[1]].astype(np.int64), device=device)
        logits, state = model(inp, state)
        total += F.cross_entropy(logits[0].double(), tgt, reduction="sum").item()
        count += tgt.numel()
    return total / count


def export(model, path):
    sd = {}
    for k, v in model.state_dict().items():    # names and shapes are already BlinkDL's (w1: [C, D], x @ w1)
        sd[k] = v.detach().to("cpu", torch.bfloat16).contiguous()
    torch.save(sd, path)
    return sd


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--time-budget", type=float, default=450.0, help="stop training after this many seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = False       # float32 training: the model is tiny
    train = np.load(os.path.join(a.data, "train.npy"))
    held = np.load(os.path.join(a.data, "heldout.npy"))
    V = 4096
    C, L = a.embd, a.layers
    ranks = (32, 32, 32, 64)        # RWKV-LM's formulas for n_embd 256
    model = RWKV7(V, C, L, C // 64, 4 * C, ranks).to(a.device)
    n_params = sum(p.numel() for p in model.parameters())
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() == 2 and "emb" not in n and not n.endswith("r_k") else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.99), eps=1e-8)
    warm = 30
    sched = lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    log = {"params": n_params, "steps_planned": a.steps, "batch": a.batch, "ctx": a.ctx, "lr": a.lr,
           "n_layer": L, "n_embd": C, "ranks": ranks, "device": a.device, "losses": []}
    t0 = time.time()
    run = 0.0
    step = 0
    for step in range(a.steps):
        for gr in opt.param_groups:
            gr["lr"] = a.lr * sched(step)
        starts = rng.integers(0, len(train) - a.ctx - 1, a.batch)
        win = np.stack([train[s:s + a.ctx + 1] for s in starts]).astype(np.int64)
        xb = torch.as_tensor(win[:, :-1], device=a.device)
        yb = torch.as_tensor(win[:, 1:], device=a.device)
        logits, _ = model(xb, model.new_state(a.batch, a.device))
        loss = F.cross_entropy(logits.reshape(-1, V), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if step == 0 else 0.95 * run + 0.05 * loss.item()
        if step % 10 == 0 or step == a.steps - 1:
            log["losses"].append([step, round(loss.item(), 4)])
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} (ema {run:.4f}) {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > a.time_budget:
            print(f"time budget reached at step {step}", flush=True)
            break
    log["steps_done"] = step + 1
    log["train_seconds"] = round(time.time() - t0, 1)
    log["train_loss_ema"] = round(run, 4)
    # held-out with the exported (bfloat16-rounded) weights, computed in float32
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    t1 = time.time()
    nll = heldout_nll(model, held, a.device)
    log["heldout_tokens"] = int(len(held) - 1)
    log["heldout_nll"] = nll
    log["heldout_ppl"] = math.exp(nll)
    log["eval_seconds"] = round(time.time() - t1, 1)
    os.makedirs(a.out, exist_ok=True)
    export(model, os.path.join(a.out, "tiny-shakespeare.pth"))
    with open(os.path.join(a.out, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"params {n_params} steps {step + 1} train-loss(ema) {run:.4f} heldout nll {nll:.4f} ppl {math.exp(nll):.2f}")


if __name__ == "__main__":
    main()
