"""``rwkvcpu`` command line: a thin shell over the Python API (flags named as llama.cpp's)."""
from __future__ import annotations

import os
import sys
import time

import click

from rwkvcpu.loaders import LoadError
from rwkvcpu.registry import RegistryError
from rwkvcpu.state import StateError


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


# --- shared options -------------------------------------------------------------------

def model_options(f):
    f = click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
                     help="Threads for the kernels (default: all cores).")(f)
    f = click.option("--vocab", type=click.Path(dir_okay=False), default=None,
                     help="World vocabulary .txt for a .pth model (found beside it if omitted).")(f)
    f = click.option("-m", "--model", "model_arg", default=None,
                     help="Model file (.gguf or .pth) or a name from models.toml.")(f)
    return f


def device_option(f):
    f = click.option("--numerics", type=click.Choice(["exact", "llama"]), default="exact", show_default=True,
                     help="exact: float32 activations on the file's exact weights; llama: round "
                          "activations as llama.cpp's CPU matmuls do (Q8_0/Q8_K/f16/bf16) and use integer dot "
                          "products (every quantized type): llama.cpp's numbers, faster decode; on "
                          "the GPU, f16 activations against F16 weights take one MMA per product (faster prompts).")(f)
    return click.option("--device", "device", default="cpu", show_default=True,
                        help="Where the layers run: cpu, cuda, cuda:N, or a split such as "
                             "'cuda *12 -> cpu' (first 12 layers on the GPU).")(f)


def sampling_options(f):
    opts = [
        click.option("--temp", type=float, default=1.0, show_default=True, help="Temperature; 0 = greedy."),
        click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 = off."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.85, show_default=True),
        click.option("--min-p", type=click.FloatRange(0, 1), default=0.0, show_default=True),
        click.option("--repeat-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
        click.option("--repeat-last-n", type=click.IntRange(min=0), default=64, show_default=True),
        click.option("--presence-penalty", type=float, default=0.0, show_default=True),
        click.option("--frequency-penalty", type=float, default=0.0, show_default=True),
        click.option("--penalty-decay", type=click.FloatRange(0, 1, min_open=True), default=0.996, show_default=True,
                     help="RWKV-style decay of the presence/frequency counts per token."),
        click.option("-s", "--seed", type=int, default=None, help="RNG seed (reproducible sampling)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def sampler_from(kw):
    from rwkvcpu.sampling import Sampler, SamplerParams
    return Sampler(SamplerParams(
        temperature=kw["temp"], top_k=kw["top_k"], top_p=kw["top_p"], min_p=kw["min_p"],
        repeat_penalty=kw["repeat_penalty"], repeat_last_n=kw["repeat_last_n"],
        presence_penalty=kw["presence_penalty"], frequency_penalty=kw["frequency_penalty"],
        penalty_decay=kw["penalty_decay"], seed=kw["seed"]))


def open_model(model_arg, vocab=None, threads=None, device="cpu", numerics="exact"):
    from rwkvcpu.model import Model
    from rwkvcpu.registry import resolve_model
    if model_arg is None:
        from rwkvcpu import bundled
        model_arg = bundled.default_model_path()
    path, reg_vocab = resolve_model(model_arg)
    _compile_notice()
    return Model.load(path, threads=threads, vocab=vocab or reg_vocab, device=device, numerics=numerics)


def _compile_notice():
    """Say so once when kernels are about to be compiled for the first time on this machine (in
    the cache directory Numba uses: the package's __pycache__, or NUMBA_CACHE_DIR's)."""
    from rwkvcpu.kernels import cpu
    try:
        cache_dir = cpu.layer_norm._cache._cache_path          # where Numba reads and writes this module's cache
    except AttributeError:                                     # another Numba: the default location
        cache_dir = os.path.join(os.path.dirname(cpu.__file__), "__pycache__")
    cached = os.path.isdir(cache_dir) and any(n.startswith("cpu.") and n.endswith(".nbi")
                                              for n in os.listdir(cache_dir))
    if not cached:
        click.echo("rwkvcpu: compiling kernels for this machine (first run only, about a minute)...", err=True)


# --- commands ---------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rwkvcpu")
def cli():
    """RWKV-7 inference in NumPy + Numba: GGUF and .pth, llama.cpp-compatible states and logs."""


@cli.command()
@model_options
@device_option
@click.option("-p", "--prompt", default=None, help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read the prompt from a file.")
@click.option("-n", "--n-predict", type=click.IntRange(min=0), default=128, show_default=True,
              help="Tokens to generate.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--no-display-prompt", is_flag=True, help="Do not echo the prompt.")
@click.option("--state-in", "--state", "state_in", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Initial state: an rwkvcpu state file, llama.cpp sequence-state bytes, an rwkv pip "
                   "state .pth or an RWKV-PEFT state-tuned .pth (blocks.N.att.time_state).")
@click.option("--state-out", type=click.Path(dir_okay=False), default=None,
              help="Save the final state here (atomic write).")
@click.option("--prompt-cache", type=click.Path(dir_okay=False), default=None,
              help="Reuse the saved state of an earlier prompt that is a prefix of this one; save this one's.")
@sampling_options
def generate(model_arg, vocab, threads, device, numerics, prompt, prompt_file, n_predict, stop, no_display_prompt,
             state_in, state_out, prompt_cache, **kw):
    """Generate text, streaming it as it is produced; speeds go to stderr."""
    from rwkvcpu.generate import stream_generate
    from rwkvcpu.state import save_state
    if prompt is None and prompt_file is None:
        raise UserError("give a prompt with -p TEXT or -f FILE")
    if prompt_cache and state_in:
        raise UserError("--prompt-cache starts from an empty state; it cannot be combined with --state-in")
    if prompt_file:
        prompt = open(prompt_file, encoding="utf-8").read()
    m = open_model(model_arg, vocab, threads, device, numerics)
    state = _initial_state(state_in, m)
    ids = m.tokenizer.encode(prompt)
    if not ids:
        raise UserError("empty prompt")
    if prompt_cache:
        ids = _use_prompt_cache(m, prompt_cache, ids, state)
    if not no_display_prompt:
        click.echo(prompt, nl=False)
    last = None
    for r in stream_generate(m, ids, state=state, max_tokens=n_predict,
                             sampler=sampler_from(kw), stop=stop):
        if r.text:
            click.echo(r.text, nl=False)
        last = r
    click.echo()
    if last is not None:
        click.echo(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s | "
                   f"generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s",
                   err=True)
    if state_out:
        save_state(state_out, state)
        click.echo(f"state saved to {state_out}", err=True)


def _initial_state(path, m):
    """A state file of any supported format as this model's initial state (warns on odd values)."""
    if not path:
        return m.new_state()
    from rwkvcpu.interop import state_warnings
    from rwkvcpu.state_tools import load_any_state
    st, kind = load_any_state(path, m.hparams)
    for w in state_warnings(st):
        click.echo(f"warning: {path}: {w}", err=True)
    return st


def _use_prompt_cache(m, cache_path, ids, state):
    """Like llama.cpp's --prompt-cache: returns the tokens still to feed (at least the last one)."""
    from rwkvcpu.state import StateError, load_state, save_state
    fed = 0
    if os.path.exists(cache_path):
        try:
            cached, hdr = load_state(cache_path, m.hparams)
            toks = hdr.get("tokens") or []
            if 0 < len(toks) < len(ids) and ids[:len(toks)] == toks:
                state.assign(0, cached)
                fed = len(toks)
                click.echo(f"prompt cache: reusing {fed} of {len(ids)} prompt tokens", err=True)
        except StateError as e:
            click.echo(f"warning: ignoring prompt cache ({e})", err=True)
    if len(ids) - 1 > fed:
        m.forward(ids[fed:-1], state)
    save_state(cache_path, state, tokens=ids[:-1])
    return ids[-1:]


CHAT_HELP = "Commands: /save FILE, /load FILE, /reset, /quit"


@cli.command()
@model_options
@device_option
@click.option("-n", "--n-predict", type=click.IntRange(min=1), default=512, show_default=True,
              help="Maximum tokens per reply.")
@click.option("--system", default=None, help="Optional system prompt (prepended once).")
@click.option("--state-in", "--state", "state_in", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Resume a conversation saved with /save, or start from a state-tuned initial state.")
@sampling_options
def chat(model_arg, vocab, threads, device, numerics, n_predict, system, state_in, **kw):
    """Multi-turn chat in RWKV's format; the state carries the conversation (history is never re-read)."""
    from rwkvcpu.generate import stream_generate
    from rwkvcpu.state import load_state, save_state
    m = open_model(model_arg, vocab, threads, device, numerics)
    state = _initial_state(state_in, m)
    sampler = sampler_from(kw)
    pending = f"System: {system.strip()}\n\n" if system else ""
    click.echo(CHAT_HELP, err=True)
    while True:
        try:
            line = click.prompt("User", prompt_suffix=": ", default="", show_default=False)
        except (EOFError, click.Abort):
            click.echo()
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            try:
                if cmd == "/quit":
                    return
                if cmd == "/reset":
                    state = m.new_state()
                    pending = f"System: {system.strip()}\n\n" if system else ""
                    click.echo("(conversation reset)", err=True)
                elif cmd == "/save" and arg:
                    save_state(arg, state)
                    click.echo(f"(state saved to {arg}: {int(state.n_tokens[0])} tokens of context)", err=True)
                elif cmd == "/load" and arg:
                    state = load_state(arg, m.hparams)[0]
                    pending = ""
                    click.echo(f"(state loaded from {arg}: {int(state.n_tokens[0])} tokens of context)", err=True)
                else:
                    click.echo(CHAT_HELP, err=True)
            except (StateError, OSError) as e:
                click.echo(f"error: {e}", err=True)
            continue
        # Normalise as ChatRWKV does: no blank lines inside a turn (they end turns).
        text = "\n".join(x for x in line.replace("\r\n", "\n").split("\n") if x.strip())
        prompt = f"{pending}User: {text}\n\nAssistant:"
        pending = ""
        click.echo("Assistant:", nl=False)
        for r in stream_generate(m, prompt, state=state, max_tokens=n_predict, sampler=sampler,
                                 stop=("\n\n",)):
            click.echo(r.text, nl=False)
            if r.finish_reason == "length":
                # The reply was cut: close the turn so the next "User:" starts cleanly.
                m.forward(m.tokenizer.encode("\n\n"), state)
        click.echo("\n")


@cli.command()
@model_options
@device_option
@click.option("-f", "--file", "text_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Text to score.")
@click.option("--chunk", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens per forward call; the state is carried across chunks.")
@click.option("--max-tokens", type=click.IntRange(min=2), default=None, help="Score only the first N tokens.")
def perplexity(model_arg, vocab, threads, device, numerics, text_file, chunk, max_tokens):
    """Perplexity of a text file (every token after the first is scored, state carried across chunks)."""
    from rwkvcpu.generate import perplexity as ppl
    m = open_model(model_arg, vocab, threads, device, numerics)
    ids = m.tokenizer.encode(open(text_file, encoding="utf-8").read())
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError(f"{text_file}: needs at least 2 tokens of text")
    t0 = time.perf_counter()
    with click.progressbar(length=len(ids) - 1, label="scoring", file=sys.stderr) as bar:
        res = ppl(m, ids, chunk=chunk, progress=bar.update)
    dt = time.perf_counter() - t0
    click.echo(f"tokens: {res['tokens']}  chunk: {chunk} (state carried across chunks)  "
               f"nll: {res['nll']:.4f}  ppl: {res['ppl']:.4f}  ({res['tokens'] / dt:.1f} tok/s)")


@cli.command()
@click.argument("file", type=click.Path())
@click.option("--vocab", type=click.Path(dir_okay=False), default=None)
def info(file, vocab):
    """Architecture, hyper-parameters, tensor table, bytes by type, state size."""
    from rwkvcpu.loaders import load
    from rwkvcpu.registry import resolve_model
    path, reg_vocab = resolve_model(file)
    ck = load(path, vocab=vocab or reg_vocab)
    hp = ck.hparams
    size = (sum(e.stat().st_size for e in os.scandir(path) if e.is_file()) if os.path.isdir(path)
            else os.path.getsize(path))
    click.echo(f"file:          {path} ({ck.format}, {size:,} bytes)")
    click.echo(f"architecture:  {hp.arch}")
    for k, v in hp.as_dict().items():
        if k != "arch":
            click.echo(f"{k + ':':<14} {v}")
    click.echo(f"vocabulary:    {len(ck.vocab) if ck.vocab else 'none (pass --vocab)'} tokens")
    sb = hp.state_floats * 4
    click.echo(f"state/seq:     {sb:,} bytes float32 ({hp.n_layer} layers x (2x{hp.n_embd} token shift"
               f" + {hp.n_head}x{hp.head_size}x{hp.head_size} wkv))")
    by_type: dict[str, int] = {}
    for _, t, _, nb in ck.tensor_table:
        by_type[t] = by_type.get(t, 0) + nb
    click.echo("bytes by type: " + ", ".join(f"{t} {nb:,}" for t, nb in sorted(by_type.items(), key=lambda x: -x[1])))
    click.echo(f"\n{'tensor':<40} {'type':<6} shape")
    for name, t, shape, _ in ck.tensor_table:
        click.echo(f"{name:<40} {t:<6} {list(shape)}")


@cli.group()
def models():
    """Known RWKV-7 releases (models.toml): list, pull."""


@models.command("list")
def models_list():
    from rwkvcpu.registry import load_registry, local_path, registry_path
    reg = load_registry()
    click.echo(f"# {registry_path()}")
    for name, e in reg["models"].items():
        here = "pulled" if local_path(e).exists() else ""
        click.echo(f"{name:<14} {e.get('format', ''):<5} {e.get('shape', ''):<10} {here:<7} {e.get('description', '')}")


@models.command("pull")
@click.argument("name")
def models_pull(name):
    """Download a model (resumable, verified, never a half file under the final name)."""
    from rwkvcpu.registry import pull
    state = {"bar": None}

    def progress(done, total):
        if total and not state["bar"]:
            state["bar"] = click.progressbar(length=total, label=name, file=sys.stderr)
            state["bar"].__enter__()
            state["bar"].update(done)
            state["done"] = done
        elif state["bar"]:
            state["bar"].update(done - state["done"])
            state["done"] = done
    try:
        paths = pull(name, progress=progress)
    finally:
        if state["bar"]:
            state["bar"].__exit__(None, None, None)
    for p in paths:
        click.echo(str(p))


@cli.command()
@model_options
@click.option("-p", "--prompt", default=None, help="Prompt text.")
@click.option("--tokens", default=None, help="Comma-separated token ids instead of a prompt.")
@click.option("--split", default=None,
              help="Comma-separated token counts per decode call (e.g. 10,6), as in a two-call log.")
@click.option("--filter", "name_filter", default=None, help="Only tensors whose name matches this regex.")
@click.option("--npz", type=click.Path(dir_okay=False), default=None,
              help="Also write every recorded tensor at full precision to this .npz.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the log here.")
def dump(model_arg, vocab, threads, prompt, tokens, split, name_filter, npz, output):
    """Print our tensors in llama-eval-callback's text format (diffable with its log)."""
    import numpy as np
    from rwkvcpu import debug as D
    m = open_model(model_arg, vocab, threads)
    if tokens:
        ids = [int(x) for x in tokens.split(",") if x.strip()]
    elif prompt is not None:
        ids = m.tokenizer.encode(prompt)
    else:
        raise UserError("give -p PROMPT or --tokens IDS")
    calls = [ids]
    if split:
        sizes = [int(x) for x in split.split(",")]
        if sum(sizes) != len(ids):
            raise UserError(f"--split {split} covers {sum(sizes)} tokens; the prompt has {len(ids)}")
        calls, pos = [], 0
        for n in sizes:
            calls.append(ids[pos:pos + n])
            pos += n
    head = f"number of input tokens = {len(ids)}\n" + "".join(f"  {t}\n" for t in ids)
    text, rec = D.dump_text(m, ids, calls, name_filter)
    if output:
        with open(output, "w") as f:
            f.write(head + text)
    else:
        click.echo(head + text, nl=False)
    if npz:
        arrays = {f"call{ci + 1}/{k}": v for ci, c in enumerate(rec.calls) for k, v in c.items()}
        np.savez(npz, **arrays)
        click.echo(f"{len(arrays)} tensors written to {npz}", err=True)


@cli.command()
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@model_options
@click.option("--rel-tol", type=float, default=None,
              help="Relative tolerance (default by model type: F32 2e-4, F16 1e-2, BF16 2e-2, quantized 8e-2).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--numerics", type=click.Choice(["exact", "llama"]), default="exact", show_default=True,
              help="llama: round activations as llama.cpp does; quantized models then match its log "
                   "to print precision, so a small --rel-tol finds real divergences.")
def compare(log, model_arg, vocab, threads, rel_tol, as_json, numerics):
    """Compare a llama-eval-callback log with rwkvcpu on the same tokens; name the first divergence."""
    import json
    from rwkvcpu import debug as D
    m = open_model(model_arg, vocab, threads, numerics=numerics)
    parsed = D.parse_log(open(log, encoding="utf-8", errors="replace").read())
    if not parsed.tensors:
        raise UserError(f"{log}: no common_debug_cb_eval tensors found: not a llama-eval-callback log?")
    res = D.compare_log(m, parsed, rel_tol)
    if as_json:
        click.echo(json.dumps(D.report_json(res), indent=1))
    else:
        click.echo(D.format_report(res, log))
    if res["first_divergent"] is not None or res["zero_state"]:
        sys.exit(1)


@cli.group()
def state():
    """Inspect and compare states (rwkvcpu files, llama.cpp sequence bytes, rwkv pip .pth)."""


def _load_any_state(path, model=None):
    from rwkvcpu.state_tools import load_any_state
    return load_any_state(path, model.hparams if model else None)


@state.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def state_info(file):
    """Per-layer magnitudes of a state; warns on NaN/Inf."""
    from rwkvcpu.state_tools import state_stats
    st, kind = _load_any_state(file)
    click.echo(f"{file}: {kind}, n_layer {st.n_layer}, n_embd {st.n_embd}, head_size {st.head_size}, "
               f"{int(st.n_tokens[0])} tokens, {st.nbytes:,} bytes")
    for line in state_stats(st):
        click.echo(line)


@state.command("diff")
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False), required=False)
@model_options
@click.option("-p", "--prompt", default=None, help="Without B: compare A with rwkvcpu's state after this prompt.")
@click.option("--tokens", default=None, help="Without B: comma-separated token ids instead of a prompt.")
@click.option("--atol", type=float, default=1e-4, show_default=True)
def state_diff(a, b, model_arg, vocab, threads, prompt, tokens, atol):
    """Per-layer differences between two states (e.g. llama.cpp's bytes vs ours); exit 1 if any > atol."""
    from rwkvcpu.state_tools import diff_states
    m = open_model(model_arg, vocab, threads) if (model_arg or b is None) else None
    sa, ka = _load_any_state(a, m)
    if b:
        sb, kb = _load_any_state(b, m)
    else:
        if prompt is None and tokens is None:
            raise UserError("give a second state file, or -m MODEL with -p PROMPT / --tokens IDS")
        ids = [int(x) for x in tokens.split(",")] if tokens else m.tokenizer.encode(prompt)
        _, sb = m.forward(ids)
        kb = f"rwkvcpu after {len(ids)} tokens"
    lines, worst = diff_states(sa, sb)
    click.echo(f"A: {a} ({ka})\nB: {b or '-'} ({kb})")
    for line in lines:
        click.echo(line)
    click.echo(f"max |Δ| = {worst:.3g} ({'within' if worst <= atol else 'EXCEEDS'} atol {atol:g})")
    if worst > atol:
        sys.exit(1)


@state.command("blend")
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option("--weight", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="(1-w)*A + w*B")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
@model_options
def state_blend(a, b, weight, output, model_arg, vocab, threads):
    """Blend two states (every part of the state, linearly)."""
    from rwkvcpu.state import save_state
    from rwkvcpu.state_tools import blend
    m = open_model(model_arg, vocab, threads) if model_arg else None
    sa, _ = _load_any_state(a, m)
    sb, _ = _load_any_state(b, m)
    save_state(output, blend(sa, sb, weight))
    click.echo(f"{output}: (1-{weight:g})*A + {weight:g}*B", err=True)


@state.command("decay")
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.option("--factor", type=click.FloatRange(0, 1), required=True, help="Multiply the wkv state by this.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def state_decay(a, factor, output):
    """Fade the wkv part of a state (weakens old context, keeps token shift)."""
    from rwkvcpu.state import save_state
    from rwkvcpu.state_tools import decay_wkv
    sa, _ = _load_any_state(a)
    save_state(output, decay_wkv(sa, factor))


@state.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(["rwkvcpu", "llama", "pip", "fla-npz"]), required=True)
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16"]), default="f32", show_default=True,
              help="Storage type for --to rwkvcpu.")
@model_options
def state_convert(src, dst, fmt, dtype, model_arg, vocab, threads):
    """Convert a state between rwkvcpu, llama.cpp sequence bytes, rwkv pip .pth and fla layout."""
    import numpy as np
    from rwkvcpu.interop import write_pip_state
    from rwkvcpu.state import atomic_write, save_state
    m = open_model(model_arg, vocab, threads) if model_arg else None
    st, kind = _load_any_state(src, m)
    if fmt == "rwkvcpu":
        save_state(dst, st, dtype=dtype)
    elif fmt == "llama":
        data = st.to_llama_seq_bytes()
        atomic_write(dst, lambda f: f.write(data))
    elif fmt == "pip":
        write_pip_state(dst, st)
    else:
        atomic_write(dst, lambda f: np.savez(f, wkv=st.to_fla(), att_x_prev=st.att_x_prev(),
                                             ffn_x_prev=st.ffn_x_prev()))
    click.echo(f"{src} ({kind}) -> {dst} ({fmt})", err=True)


def _convert(src, dst, ftype, vocab, force, allow_requantize=False):
    from rwkvcpu.convert import convert as run
    t0 = time.perf_counter()
    with click.progressbar(length=1, label=f"writing {ftype}", file=sys.stderr) as bar:
        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)
        run(src, dst, ftype, vocab=vocab, force=force, progress=progress, allow_requantize=allow_requantize)
    click.echo(f"{dst}: {os.path.getsize(dst):,} bytes in {time.perf_counter() - t0:.1f} s", err=True)


def _type_choice():
    from rwkvcpu.convert import ALIASES, FTYPES
    return click.Choice(list(FTYPES) + list(ALIASES), case_sensitive=False)


TYPE_CHOICE = _type_choice()


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--type", "ftype", type=TYPE_CHOICE, default="f16", show_default=True)
@click.option("--vocab", type=click.Path(dir_okay=False), default=None, help="World vocab .txt for a .pth.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
def convert(src, dst, ftype, vocab, force):
    """.pth (or GGUF) -> GGUF with llama.cpp's names, metadata and type choices (no torch needed)."""
    _convert(src, dst, ftype.lower(), vocab, force)


@cli.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.argument("ftype", type=TYPE_CHOICE)
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--allow-requantize", is_flag=True, help="Accept an already-quantized input.")
def quantize(src, dst, ftype, force, allow_requantize):
    """GGUF -> GGUF of another type (llama-quantize's choices; output.weight Q6_K for 2..6-bit types)."""
    _convert(src, dst, ftype.lower(), None, force, allow_requantize)


def main(argv=None):
    """Entry point: known errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="rwkvcpu", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except (LoadError, StateError, RegistryError, ValueError, OSError) as e:  # incl. FileExistsError
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
