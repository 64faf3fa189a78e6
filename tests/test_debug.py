"""llama.cpp cross-checking: logs parsed, compared, faults and zero states named, dumps diffable."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from rwkvcpu import debug as D
from rwkvcpu.cli import cli
from rwkvcpu.model import Model
from tests.conftest import fixture_model, require_fixtures

LOGS = [("eval-callback-tiny-rwkv7-f32.log", "f32"), ("eval-callback-tiny-rwkv7-q4_0.log", "q4_0"),
        ("eval-callback-2calls-tiny-rwkv7-f32.log", "f32"), ("eval-callback-2calls-tiny-rwkv7-q8_0.log", "q8_0")]
PROMPT_IDS = [487, 78, 355, 59, 1412, 2531, 45, 2624, 3006, 3866, 883, 1986, 2634, 664, 3353, 64]  # README


def parsed(name):
    return D.parse_log((require_fixtures() / name).read_text())


@pytest.mark.parametrize("log,typ", LOGS)
def test_every_fixture_log_agrees(log, typ):
    lg = parsed(log)
    assert lg.tokens == PROMPT_IDS
    res = D.compare_log(fixture_model(f"tiny-rwkv7-{typ}.gguf"), lg)
    per_call = 3 * 24 + 4             # per layer: 2 norms, ffn_inp, l_out, 14 MUL_MATs, WKV, w, kk, 4 state nodes
    assert len(res["rows"]) == per_call * len(lg.calls)
    assert res["first_divergent"] is None, D.describe(res["first_divergent"])
    assert not res["zero_state"]
    assert len(res["unmatched"]) + len(res["rows"]) == len(lg.tensors)


def test_parser_tolerates_filtered_and_noisy_logs():
    text = (require_fixtures() / "eval-callback-tiny-rwkv7-f32.log").read_text()
    blocks = re.split(r"(?m)^(?=common_debug_cb_eval:)", text)
    # like llama-eval-callback's tensor filter on names: keep attn_norm-N and l_out-N only
    keep = re.compile(r"^common_debug_cb_eval: +(attn_norm-\d|l_out-\d) = ")
    kept = [blocks[0]] + [b for b in blocks[1:] if keep.match(b)]
    noisy = "llama_model_loader: something else\n".join(kept)
    lg = D.parse_log(noisy)
    res = D.compare_log(fixture_model("tiny-rwkv7-f32.gguf"), lg)
    assert len(res["rows"]) == 6 and res["first_divergent"] is None


def fresh(typ="f32"):
    return Model.load(str(require_fixtures() / f"tiny-rwkv7-{typ}.gguf"))


def first_key(model, log="eval-callback-tiny-rwkv7-f32.log"):
    res = D.compare_log(model, parsed(log))
    assert res["first_divergent"] is not None
    return res["first_divergent"]


def test_fault_transposed_key_weight():
    m = fresh()
    L = m.weights.layers[0]
    L.key.raw = np.ascontiguousarray(L.key.raw.T)
    L.key.__dict__.pop("_row_bytes", None)
    assert first_key(m).key == "MUL_MAT:blk.0.time_mix_key.weight"


def test_fault_zeroed_w0_of_layer_2():
    m = fresh()
    m.weights.layers[2].w0 = np.zeros_like(m.weights.layers[2].w0)
    r = first_key(m)
    assert r.key == "w-2" and "layer 2" in D.describe(r)


def test_fault_dropped_value_residual():
    m = fresh()
    with np.errstate(over="ignore"):
        m.weights.layers[1].v0 = np.full_like(m.weights.layers[1].v0, -1e30)   # sigmoid -> 0: no v_first mix
        assert first_key(m).key == "RWKV_WKV7-1"


def test_fault_state_not_carried_between_calls(monkeypatch):
    m = fresh()
    real = m.forward

    def forgetful(tokens, state=None, **kw):
        if state is not None:
            state.clear()
        return real(tokens, state, **kw)
    monkeypatch.setattr(m, "forward", forgetful)
    r = first_key(m, "eval-callback-2calls-tiny-rwkv7-f32.log")
    assert r.call == 1 and r.key in ("cache_r_l0.in", "cache_s_l0.in")


def test_doctored_log_with_zeroed_state_view_triggers_zero_state_message(tmp_path):
    text = (require_fixtures() / "eval-callback-2calls-tiny-rwkv7-f32.log").read_text()
    call2 = text.index("=== decode call 2")
    head, tail = text[:call2], text[call2:]
    # the GET_ROWS node that feeds layer 1's wkv state in call 2
    m = re.search(r"(?m)^common_debug_cb_eval: +node_\d+ = \(f32\) +GET_ROWS\(cache_s_l1 \(reshaped\)"
                  r"\{16384, 1, 1, 1\}, rs_s_copy \(view\)\{1, 1, 1, 1\}\}\) = \{16384, 1, 1, 1\}\n", tail)
    end = tail.index("sum =", m.end())
    end = tail.index("\n", end) + 1
    block = re.sub(r"-?\d+\.\d{4}", "0.0000", tail[m.end():end])
    block = re.sub(r"sum = .*", "sum = 0.000000", block)
    doctored = head + tail[:m.end()] + block + tail[end:]
    p = tmp_path / "doctored.log"
    p.write_text(doctored)
    res = D.compare_log(fresh(), D.parse_log(doctored))
    assert any("wkv state for layer 1 reads as zero at step 2" in z and "not carried over" in z
               for z in res["zero_state"]), res["zero_state"]
    r = CliRunner().invoke(cli, ["compare", str(p), "-m", str(require_fixtures() / "tiny-rwkv7-f32.gguf")])
    assert r.exit_code == 1 and "ZERO STATE: wkv state for layer 1 reads as zero at step 2" in r.output


def test_dump_matches_llama_log_names_and_shapes_line_for_line(tmp_path):
    fx = require_fixtures()
    out = tmp_path / "ours.log"
    r = CliRunner().invoke(cli, ["dump", "-m", str(fx / "tiny-rwkv7-f32.gguf"),
                                 "--tokens", ",".join(map(str, PROMPT_IDS)), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ours = D.parse_log(out.read_text())
    theirs = parsed("eval-callback-tiny-rwkv7-f32.log")
    names = {t.name for t in ours.tensors}
    sub = [(t.name, t.ne) for t in theirs.tensors if t.name in names]
    assert [(t.name, t.ne) for t in ours.tensors] == sub
    assert len(sub) == 1 + 3 * 6 + 2
    # values: every printed number and sum within print precision / float32 noise
    by_pos = {}
    for t in theirs.tensors:
        by_pos.setdefault(t.name, []).append(t)
    for t in ours.tensors:
        ref = by_pos[t.name].pop(0)
        assert ref.op == t.op and ref.type == t.type
        np.testing.assert_allclose(t.values, ref.values, atol=2e-4, err_msg=t.name)
        np.testing.assert_allclose(t.sums, ref.sums, rtol=1e-4, atol=2e-3, err_msg=t.name)
    # identical header lines for the tensors whose operands llama.cpp names stably
    ours_txt = {l for l in out.read_text().splitlines() if l.startswith("common_debug_cb_eval:")}
    theirs_txt = set((fx / "eval-callback-tiny-rwkv7-f32.log").read_text().splitlines())
    for name in ("embd", "attn_norm-1", "ffn_norm-2", "result_norm", "result_output"):
        line = next(l for l in ours_txt if l.split(" = ")[0].strip().endswith(" " + name) or
                    l.split(":", 1)[1].split(" = ")[0].strip() == name)
        assert line in theirs_txt, line


def test_format_tensor_reproduces_a_log_block_exactly():
    """The text writer against a block of llama.cpp's own output (3-D, elided on two axes)."""
    text = (require_fixtures() / "eval-callback-tiny-rwkv7-f32.log").read_text()
    lg = parsed("eval-callback-tiny-rwkv7-f32.log")
    t = next(t for t in lg.tensors if t.name == "node_79")       # SUM_ROWS {1, 4, 16, 1}
    lines = text.splitlines()
    end = next(i for i in range(t.line, len(lines)) if lines[i].startswith("common_debug_cb_eval:"))
    block = "\n".join(lines[t.line - 1: end]) + "\n"
    # rebuild a full tensor whose printed entries are the log's values (unprinted ones arbitrary)
    data = np.zeros(64)
    data[D.printed_indices(t.ne)] = t.values
    hdr = lines[t.line - 1]
    srcs = [("node_78", [64, 4, 16, 1])]
    got = D.format_tensor("node_79", "f32", "SUM_ROWS", srcs, t.ne, data)
    assert got.splitlines()[0] == hdr
    # every line but the sum (unprinted entries of the rebuilt tensor are zeros, not llama's values)
    assert got.splitlines()[1:-1] == block.splitlines()[1:-1]
    assert block.splitlines()[-1] == "    sum = 2.660771"


def test_compare_json_and_exit_codes(tmp_path):
    fx = require_fixtures()
    r = CliRunner().invoke(cli, ["compare", str(fx / "eval-callback-tiny-rwkv7-q4_0.log"),
                                 "-m", str(fx / "tiny-rwkv7-q4_0.gguf"), "--json"])
    assert r.exit_code == 0
    import json
    j = json.loads(r.output)
    assert j["first_divergent"] is None and len(j["rows"]) == 76
    r = CliRunner().invoke(cli, ["compare", str(fx / "eval-callback-tiny-rwkv7-f32.log"),
                                 "-m", str(fx / "tiny-rwkv7-q4_0.gguf"), "--rel-tol", "1e-4"])
    assert r.exit_code == 1 and "FIRST DIVERGENCE: " in r.output


def test_state_diff_llama_bytes_vs_ours(tmp_path):
    fx = require_fixtures()
    ref = np.load(fx / "ref-llama-tiny-rwkv7-f32.npz")
    p = tmp_path / "llama.state"
    p.write_bytes(ref["seqlong_state_bytes"].tobytes())
    toks = ",".join(map(str, ref["seqlong_tokens"]))
    r = CliRunner().invoke(cli, ["state", "diff", str(p), "-m", str(fx / "tiny-rwkv7-f32.gguf"), "--tokens", toks])
    assert r.exit_code == 0, r.output
    assert "within atol" in r.output
    r = CliRunner().invoke(cli, ["state", "diff", str(p), "-m", str(fx / "tiny-rwkv7-f32.gguf"),
                                 "--tokens", toks[: toks.rindex(",")]])
    assert r.exit_code == 1 and "EXCEEDS" in r.output
