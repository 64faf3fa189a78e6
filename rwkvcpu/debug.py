"""Cross-checking with llama.cpp: our tensors in its eval-callback text format, its logs parsed,
the two matched by name and compared, the first divergence named.

Tensor keys.  The forward pass (``Model.forward(..., rec=...)``) reports each
intermediate under a key that identifies the same quantity in llama.cpp's
RWKV-7 graph (``src/models/rwkv7*.cpp``):

* llama.cpp's own names: ``embd``, ``attn_norm-N``, ``ffn_inp-N``, ``ffn_norm-N``,
  ``l_out-N``, ``result_norm``, ``result_output``;
* ``MUL_MAT:<weight>``: a projection, identified in the log by its weight operand
  (``MUL_MAT(blk.0.time_mix_key.weight{...}, ...)``);
* ``RWKV_WKV7-N``: the WKV op's output (y for every token, then the new state);
* ``w-N`` (the ``EXP`` node: the decay) and ``kk-N`` (the ``L2_NORM`` node);
* ``cache_s_lN.in`` / ``cache_r_lN.in``: the state fed to layer N (llama.cpp's
  ``GET_ROWS(cache_s_lN (reshaped), rs_s_copy ...)`` node), and
  ``cache_s_lN.out`` / ``cache_r_lN.out``: the state written back
  (``cache_s_lN (view) (copy of  (view))``).

Every array is compared flattened in C order, which is ggml's order (ne0 fastest)
for our row-major ``[T, C]`` / ``[T, H, N]`` / ``[slots, H, N_v, N_k]`` arrays.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

PRINT_N = 3                  # llama.cpp prints 3 leading and 3 trailing entries per dimension
HEADER = "common_debug_cb_eval"

NAMED = re.compile(r"^(embd|attn_norm-\d+|ffn_inp-\d+|ffn_norm-\d+|l_out-\d+|result_norm|result_output)$")


# --- recording -----------------------------------------------------------------------------

class Recorder:
    """``rec(name, array)`` callable collecting copies, per decode call."""

    def __init__(self):
        self.calls: list[dict[str, np.ndarray]] = []
        self.order: list[list[str]] = []
        self.new_call()

    def new_call(self):
        self.calls.append({})
        self.order.append([])

    def __call__(self, name, array):
        self.calls[-1][name] = np.array(array, dtype=np.float32, copy=True)
        self.order[-1].append(name)

    def __bool__(self):
        return True


def record(model, calls) -> Recorder:
    """Run token lists ``calls`` (one decode call each) on one fresh sequence, recording everything."""
    rec = Recorder()
    state = model.new_state()
    for i, toks in enumerate(calls):
        if i:
            rec.new_call()
        model.forward(list(toks), state, all_logits=False, rec=rec)
    return rec


# --- writing llama.cpp's eval-callback text ------------------------------------------------------

def _ne4(shape_ggml):
    ne = list(shape_ggml) + [1] * (4 - len(shape_ggml))
    return ne[:4]


def _printed(n):
    return list(range(n)) if n <= 2 * PRINT_N else list(range(PRINT_N)) + list(range(n - PRINT_N, n))


def format_tensor(name, ttype, op, srcs, ne, data) -> str:
    """One tensor exactly as common_debug_cb_eval prints it (header, elided values, per-i3 sums).

    ``data``: float array, flattened in ggml order (ne0 fastest); ``srcs``: [(name, ne)] or [].
    """
    ne = _ne4(ne)
    src_txt = ", ".join(f"{s}{{{', '.join(map(str, _ne4(sne)))}}}" for s, sne in srcs[:2])
    if len(srcs) < 2:
        src_txt += ", "
    out = [f"{HEADER}: {name:>24} = ({ttype}) {op:>10}({src_txt}}}) = {{{', '.join(map(str, ne))}}}"]
    a = np.asarray(data, dtype=np.float64).reshape(ne[3], ne[2], ne[1], ne[0])
    for i3 in range(ne[3]):
        out.append("    [")
        for i2 in _dims_with_gap(ne[2]):
            if i2 is None:
                out.append("        ..., ")
                continue
            out.append("        [")
            for i1 in _dims_with_gap(ne[1]):
                if i1 is None:
                    out.append("            ..., ")
                    continue
                items = []
                for i0 in _dims_with_gap(ne[0]):
                    items.append("   ..." if i0 is None else f"{a[i3, i2, i1, i0]:12.4f}")
                out.append("            [" + ", ".join(items) + "  ],")
            out.append("        ],")
        out.append("    ]")
        out.append(f"    sum = {a[i3].sum():f}")
    return "\n".join(out) + "\n"


def _dims_with_gap(n):
    idx = _printed(n)
    if n > 2 * PRINT_N:
        return idx[:PRINT_N] + [None] + idx[PRINT_N:]
    return idx


# What we emit in a dump: llama.cpp's named tensors, in its order, with its op and operands.
def dump_entries(model, rec: Recorder, call: int, n_tokens: int):
    """(name, op, srcs, ne, data) for each named tensor of one decode call, in llama.cpp's order."""
    hp = model.hparams
    C, T = hp.n_embd, n_tokens
    got = rec.calls[call]
    L = hp.n_layer
    ents = [("embd", "GET_ROWS", [("token_embd.weight", (C, hp.vocab_size)), ("inp_tokens", (T,))],
             (C, T), got["embd"])]
    for il in range(L):
        nrow = T
        ents.append((f"attn_norm-{il}", "ADD", [(f"norm_w-{il}", (C, T)), (f"blk.{il}.attn_norm.bias", (C,))],
                     (C, T), got[f"attn_norm-{il}"]))
        ents.append((f"cache_s_l{il} (view) (copy of  (view))", "CPY",
                     [(" (view)", (C * hp.head_size,)), (f"cache_s_l{il} (view)", (C * hp.head_size,))],
                     (C * hp.head_size,), got[f"cache_s_l{il}.out"]))
        prev = f"l_out-{il - 1} (reshaped)" if il else " (reshaped)"
        ents.append((f"ffn_inp-{il}", "ADD", [(" (reshaped)", (C, T)), (prev, (C, T))], (C, T), got[f"ffn_inp-{il}"]))
        ents.append((f"ffn_norm-{il}", "ADD", [(f"norm_w-{il}", (C, T)), (f"blk.{il}.attn_norm_2.bias", (C,))],
                     (C, T), got[f"ffn_norm-{il}"]))
        ents.append((f"cache_r_l{il} (view) (copy of  (view))", "CPY",
                     [(" (view)", (2 * C,)), (f"cache_r_l{il} (view)", (2 * C,))], (2 * C,), got[f"cache_r_l{il}.out"]))
        if il == L - 1:
            nrow = 1
        ents.append((f"l_out-{il}", "ADD", [("node", (C, nrow)), (f"ffn_inp-{il} (reshaped)", (C, T))],
                     (C, nrow), got[f"l_out-{il}"]))
    ents.append(("result_norm", "ADD", [("norm_w", (C, 1)), ("output_norm.bias", (C,))], (C, 1), got["result_norm"]))
    ents.append(("result_output", "MUL_MAT", [("output.weight", (C, hp.vocab_size)), ("result_norm", (C, 1))],
                 (hp.vocab_size, 1), got["result_output"]))
    return ents


def dump_text(model, tokens, calls=None, name_filter: str | None = None) -> str:
    calls = calls or [list(tokens)]
    rec = record(model, calls)
    pat = re.compile(name_filter) if name_filter else None
    out = []
    for ci, toks in enumerate(calls):
        if len(calls) > 1:
            out.append(f"=== decode call {ci + 1}: {len(toks)} tokens ===\n")
        for name, op, srcs, ne, data in dump_entries(model, rec, ci, len(toks)):
            if pat and not pat.search(name):
                continue
            out.append(format_tensor(name, "f32", op, srcs, ne, data.reshape(-1)))
    return "".join(out), rec


# --- reading llama.cpp's logs ------------------------------------------------------------------

_HDR = re.compile(r"^(?:.*?)(?:common_debug_cb_eval|ggml_debug):\s*(?P<name>.*?) = \((?P<type>\w+)\)\s+"
                  r"(?P<op>[A-Z0-9_]+)\((?P<srcs>.*)\) = \{(?P<ne>[\d, ]+)\}\s*$")
_SRC = re.compile(r"(?P<name>[^{}]*?)\{(?P<ne>[\d, ]+)\}")
_NUM = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)", re.I)
_CALL = re.compile(r"=== decode call (\d+): (\d+) tokens ===")


@dataclass
class LogTensor:
    name: str
    type: str
    op: str
    srcs: list
    ne: list
    values: list = field(default_factory=list)     # printed numbers, in print order
    sums: list = field(default_factory=list)       # one per i3 block
    call: int = 0
    index: int = 0
    line: int = 0


@dataclass
class Log:
    tokens: list
    calls: list            # token counts per decode call
    tensors: list


def parse_log(text: str) -> Log:
    tokens: list[int] = []
    calls: list[int] = []
    tensors: list[LogTensor] = []
    lines = text.splitlines()
    cur: LogTensor | None = None
    call = 0
    i = 0
    n_expect = None
    while i < len(lines):
        line = lines[i]
        i += 1
        m = re.search(r"number of input tokens = (\d+)", line)
        if m:
            n_expect = int(m.group(1))
            while n_expect and i < len(lines):
                mt = re.match(r"^(?:\S+\s+\w\s+)?\s*(-?\d+)\s*$", lines[i])
                if not mt:
                    break
                tokens.append(int(mt.group(1)))
                n_expect -= 1
                i += 1
            continue
        m = _CALL.search(line)
        if m:
            call = int(m.group(1)) - 1
            calls.append(int(m.group(2)))
            cur = None
            continue
        m = _HDR.match(line)
        if m:
            srcs = [(s.group("name").strip(" ,"), [int(x) for x in s.group("ne").split(",")])
                    for s in _SRC.finditer(m.group("srcs"))]
            cur = LogTensor(m.group("name").strip(), m.group("type"), m.group("op"), srcs,
                            [int(x) for x in m.group("ne").split(",")], call=call,
                            index=len(tensors), line=i)
            tensors.append(cur)
            continue
        if cur is None:
            continue
        s = line.strip()
        if s.startswith("sum ="):
            cur.sums.append(float(s.split("=", 1)[1]))
        elif s.startswith("[") and s.endswith("],") and len(s) > 3:
            cur.values.extend(float(x) for x in _NUM.findall(s[1:-2].replace("...", " ")))
    if not calls:
        calls = [len(tokens)] if tokens else []
    return Log(tokens, calls, tensors)


def printed_indices(ne) -> np.ndarray:
    """Flat (ne0-fastest) indices of the values llama.cpp prints, in print order."""
    ne = _ne4(ne)
    idx = []
    for i3 in range(ne[3]):
        for i2 in _printed(ne[2]):
            for i1 in _printed(ne[1]):
                for i0 in _printed(ne[0]):
                    idx.append(i0 + ne[0] * (i1 + ne[1] * (i2 + ne[2] * i3)))
    return np.array(idx, dtype=np.int64)


def log_key(t: LogTensor, layer: int) -> str | None:
    """Our key for a log tensor, or None when it is not one we compute."""
    if NAMED.match(t.name):
        return t.name
    src0 = t.srcs[0][0] if t.srcs else ""
    if t.op == "MUL_MAT" and src0.startswith("blk."):
        return "MUL_MAT:" + src0
    if t.op == "RWKV_WKV7":
        return f"RWKV_WKV7-{layer}"
    if t.op == "EXP":
        return f"w-{layer}"
    if t.op == "L2_NORM":
        return f"kk-{layer}"
    m = re.match(r"cache_([sr])_l(\d+) \(reshaped\)$", src0)
    if t.op == "GET_ROWS" and m and len(t.ne) > 1 and t.ne[1] > 0:
        return f"cache_{m.group(1)}_l{m.group(2)}.in"
    m = re.match(r"cache_([sr])_l(\d+) \(view\) \(copy of  \(view\)\)$", t.name)
    if t.op == "CPY" and m and t.ne[0] > 0 and (len(t.ne) < 2 or t.ne[1] > 0):
        return f"cache_{m.group(1)}_l{m.group(2)}.out"
    return None


# --- comparing ---------------------------------------------------------------------------------

# Relative tolerance by the weight encoding of the model we run: float32 (and exact dequantization)
# against llama.cpp's f32 path agrees to ~1e-5 relative; llama.cpp converts activations to f16/bf16
# for 16-bit weights and quantizes them (Q8_0 / Q8_K) for quantized weights, which moves
# intermediates by up to ~1% and ~5% of their magnitude on this (chaotic, random) model.
REL_TOL = {"F32": 2e-4, "F16": 1e-2, "BF16": 2e-2, "quant": 8e-2}
PRINT_ATOL = 1.5e-4          # values are printed with 4 decimals


@dataclass
class Row:
    name: str
    key: str
    call: int
    ne: list
    max_abs: float
    d_sum: float
    tol: float
    ok: bool
    note: str = ""


def tolerance_class(model) -> str:
    ft = model.hparams.file_type.split(" + ")[0]
    if ft in ("F32", "F16", "BF16"):
        return ft
    return "quant"


def compare_log(model, log: Log, rel_tol: float | None = None) -> dict:
    """Run the log's tokens through ``model`` (same decode calls) and compare tensor by tensor."""
    if not log.tokens:
        raise ValueError("the log lists no input tokens ('number of input tokens = N' and the ids)")
    calls, pos = [], 0
    for n in log.calls:
        calls.append(log.tokens[pos:pos + n])
        pos += n
    if pos != len(log.tokens):
        raise ValueError(f"the log's decode calls cover {pos} tokens but it lists {len(log.tokens)}")
    rec = record(model, calls)
    rel = rel_tol if rel_tol is not None else REL_TOL[tolerance_class(model)]
    rows: list[Row] = []
    unmatched: list[str] = []
    layer = {}
    seen_write = {}       # (kind, layer) -> call index of the last non-zero state written by llama.cpp
    zero_msgs: list[str] = []
    for t in log.tensors:
        m = re.match(r"attn_norm-(\d+)$", t.name)
        if m:
            layer[t.call] = int(m.group(1))
        key = log_key(t, layer.get(t.call, 0))
        if key is None:
            unmatched.append(t.name)
            continue
        # The zero-state detector looks at the state fed to the layer, never at other cache views.
        mk = re.match(r"cache_([sr])_l(\d+)\.(in|out)$", key)
        if mk:
            kind, il = mk.group(1), int(mk.group(2))
            nonzero = any(abs(s) > 0 for s in t.sums) or any(v != 0 for v in t.values)
            if mk.group(3) == "out" and nonzero:
                seen_write[(kind, il)] = t.call
            elif mk.group(3) == "in" and not nonzero:
                ours_in = rec.calls[t.call].get(key) if t.call < len(rec.calls) else None
                wrote = (kind, il) in seen_write and seen_write[(kind, il)] < t.call
                if wrote or (ours_in is not None and np.any(ours_in)):
                    what = "wkv state" if kind == "s" else "token-shift state"
                    why = ("the state written by the previous call was not carried over" if wrote else
                           "rwkvcpu's state at this point is non-zero")
                    zero_msgs.append(f"{what} for layer {il} reads as zero at step {t.call + 1} "
                                     f"({t.name}): {why}")
        if t.call >= len(rec.calls) or key not in rec.calls[t.call]:
            unmatched.append(t.name)
            continue
        ours = rec.calls[t.call][key].reshape(-1)
        n = int(np.prod(t.ne))
        if ours.size != n:
            rows.append(Row(t.name, key, t.call, t.ne, float("inf"), float("inf"), 0.0, False,
                            f"size {ours.size} vs {n}"))
            continue
        scale = float(np.abs(ours).max()) if ours.size else 0.0
        tol = PRINT_ATOL + rel * scale
        idx = printed_indices(t.ne)
        theirs = np.array(t.values, dtype=np.float64)
        note = ""
        if theirs.size == idx.size:
            max_abs = float(np.abs(ours[idx] - theirs).max()) if idx.size else 0.0
        else:
            max_abs = float("nan")
            note = f"printed {theirs.size} values, expected {idx.size}: compared sums only"
        ne4 = _ne4(t.ne)
        block = ours.reshape(ne4[3], -1)
        our_sums = block.astype(np.float64).sum(1)
        d_sum = float(np.abs(our_sums[: len(t.sums)] - np.array(t.sums)).max()) if t.sums else 0.0
        # a sum may move by the same relative tolerance applied to the tensor's absolute mass
        sum_tol = 1e-5 + rel * float(np.abs(block).sum(1).max())
        ok = (np.isnan(max_abs) or max_abs <= tol) and d_sum <= sum_tol
        rows.append(Row(t.name, key, t.call, t.ne, max_abs, d_sum, tol, ok, note))
    first = next((r for r in rows if not r.ok), None)
    return {"rows": rows, "first_divergent": first, "unmatched": unmatched, "zero_state": zero_msgs,
            "rel_tol": rel, "calls": [len(c) for c in calls]}


def describe(row: Row) -> str:
    m = re.search(r"(\d+)", row.key.split(":")[-1].split("blk.")[-1])
    layer = f" (layer {m.group(1)})" if m and row.key != "result_output" else ""
    return f"{row.name} [{row.key}]{layer} in decode call {row.call + 1}"


def format_report(res: dict, log_path: str = "") -> str:
    rows = res["rows"]
    out = [f"{'tensor':<28} {'rwkvcpu key':<40} {'call':>4} {'shape':<18} {'max|Δ|':>9} {'Δsum':>9} "
           f"{'tol':>8}  verdict"]
    for r in rows:
        shape = "{" + ",".join(map(str, r.ne)) + "}"
        verdict = "ok" if r.ok else "DIVERGES"
        key = r.key.replace("MUL_MAT:", "x @ ")
        out.append(f"{r.name[:28]:<28} {key[:40]:<40} {r.call + 1:>4} {shape:<18} {r.max_abs:>9.3g} {r.d_sum:>9.3g} "
                   f"{r.tol:>8.2g}  {verdict}{'  (' + r.note + ')' if r.note else ''}")
    n_bad = sum(not r.ok for r in rows)
    out.append("")
    out.append(f"matched {len(rows)} tensors ({len(rows) - n_bad} agree, {n_bad} diverge) over "
               f"{len(res['calls'])} decode call(s) {res['calls']}; relative tolerance {res['rel_tol']:g}")
    un = sorted(set(res["unmatched"]))
    out.append(f"not mapped: {len(res['unmatched'])} tensors ({len(un)} distinct names: "
               f"{', '.join(un[:12])}{', ...' if len(un) > 12 else ''})")
    for z in res["zero_state"]:
        out.append(f"ZERO STATE: {z}")
    if res["first_divergent"]:
        out.append(f"FIRST DIVERGENCE: {describe(res['first_divergent'])}: "
                   f"max |Δ| {res['first_divergent'].max_abs:.4g} > tol {res['first_divergent'].tol:.2g}")
    else:
        out.append("all matched tensors agree")
    return "\n".join(out)


def report_json(res: dict) -> dict:
    def row(r):
        return {"name": r.name, "key": r.key, "call": r.call + 1, "ne": r.ne,
                "max_abs": None if np.isnan(r.max_abs) else r.max_abs, "d_sum": r.d_sum,
                "tol": r.tol, "ok": r.ok, "note": r.note}
    f = res["first_divergent"]
    return {"rows": [row(r) for r in res["rows"]], "first_divergent": row(f) if f else None,
            "unmatched": res["unmatched"], "zero_state": res["zero_state"], "calls": res["calls"],
            "rel_tol": res["rel_tol"]}
