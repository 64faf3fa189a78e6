"""Writing RWKV-7 GGUF files the way llama.cpp's converter and ``llama-quantize`` do.

``gguf_tensors`` maps our container back onto llama.cpp's names, shapes and
order (fused lerp tensor, low-rank matrices as stored, dummy layer-0
v0/v1/v2 = copies of a0/a1/a2); ``tensor_type`` applies llama.cpp's choices of
which tensors get the target type; ``write_gguf`` writes with gguf-py's writer.
Quantization uses gguf-py's quantizers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, BF16, F16)
and ``rwkvcpu.kernels.quantize`` for Q2_K..Q6_K, IQ4_NL and IQ4_XS; every type is
bit-identical with llama-quantize (without an importance matrix) on the fixtures.

Mixes: llama-quantize's ``_S/_M/_L`` presets differ only in rules for tensors named
``attn_v``, ``attn_output``, ``attn_qkv``, ``ffn_down``...; no RWKV-7 tensor has such a
name, so for RWKV-7 every preset of a family gives the same tensors (the big
matrices and ``token_embd`` in the family's type, ``output.weight`` Q6_K, the
rest F32) and differs only in ``general.file_type``.  We keep that choice.
"""
from __future__ import annotations

import os

import numpy as np

from rwkvcpu.kernels import dequant as dq

# llama_ftype values (general.file_type) and the weight type each implies
FTYPES = {"f32": (0, dq.F32), "f16": (1, dq.F16), "q4_0": (2, dq.Q4_0), "q4_1": (3, dq.Q4_1),
          "q8_0": (7, dq.Q8_0), "q5_0": (8, dq.Q5_0), "q5_1": (9, dq.Q5_1),
          "q2_k": (10, dq.Q2_K), "q3_k_s": (11, dq.Q3_K), "q3_k_m": (12, dq.Q3_K), "q3_k_l": (13, dq.Q3_K),
          "q4_k_s": (14, dq.Q4_K), "q4_k_m": (15, dq.Q4_K), "q5_k_s": (16, dq.Q5_K), "q5_k_m": (17, dq.Q5_K),
          "q6_k": (18, dq.Q6_K), "q2_k_s": (21, dq.Q2_K), "iq4_nl": (25, dq.IQ4_NL), "iq4_xs": (30, dq.IQ4_XS),
          "bf16": (32, dq.BF16)}
# llama-quantize's short names for the _M presets
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}
# llama-quantize's replacement when a row is not a whole number of the type's blocks
FALLBACK = {dq.Q2_K: dq.IQ4_NL, dq.Q3_K: dq.IQ4_NL, dq.IQ4_XS: dq.IQ4_NL, dq.Q4_K: dq.Q5_0,
            dq.Q5_K: dq.Q5_1, dq.Q6_K: dq.Q8_0}
# what llama-quantize gives output.weight for each target (Q6_K unless the target is finer)
OUTPUT_TYPE = {dq.Q8_0: dq.Q8_0, dq.F16: dq.F16, dq.BF16: dq.BF16, dq.F32: dq.F32}
BIG = ("time_mix_receptance", "time_mix_key", "time_mix_value", "time_mix_output",
       "channel_mix_key", "channel_mix_value")
LOWRANK_KEEP_F32 = ("time_mix_w1", "time_mix_w2")   # the converter keeps the decay low-rank in F32


# RWKV's chat format ("User: ...\n\nAssistant: ...\n\n"), as a Jinja template for llama.cpp's chat code.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ 'System: ' + m['content'] | trim + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'User: ' + m['content'] | trim + '\\n\\n' }}"
    "{%- elif m['role'] == 'assistant' and m['content'] is not none -%}"
    "{{ 'Assistant: ' + m['content'] | trim + '\\n\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt is not defined or add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}")


def escape_token(b: bytes) -> str:
    """llama.cpp's converter writes an RWKV token as the body of Python's bytes repr."""
    return repr(bytes(b))[2:-1]


class Lazy:
    """One output tensor: its name and GGUF/NumPy shape, made (as float32) only when written, so a
    conversion holds one tensor at a time; ``release`` then drops the source's mapped pages."""

    def __init__(self, name: str, shape: tuple, make, src=None):
        self.name, self.shape, self._make, self._src = name, tuple(shape), make, src

    def get(self) -> np.ndarray:
        return np.ascontiguousarray(self._make(), dtype=np.float32)

    def chunks(self, rows: int = 2048):
        """The tensor in blocks of ``rows`` rows (a matrix read from a file), else whole."""
        if self._src is None or len(self.shape) != 2:
            yield self.get()
            return
        for r0 in range(0, self.shape[0], rows):
            yield np.ascontiguousarray(self._src.dequantize(r0, r0 + rows), dtype=np.float32)
            self.release()

    def release(self) -> None:
        _drop_pages(getattr(self._src, "raw", None))


def _drop_pages(a) -> None:
    """Tell the kernel we are done with the file pages behind ``a`` (a view of an mmap), so they stop
    counting in our RSS; a later access reads them again.  No-op for ordinary arrays."""
    import mmap
    while a is not None:
        mm = a if isinstance(a, mmap.mmap) else getattr(a, "_mmap", None)
        if mm is not None:
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                pass
            return
        a = getattr(a, "base", None)


def gguf_tensors(weights, hp) -> list[Lazy]:
    """Every tensor of the GGUF in llama.cpp's converter order, as ``Lazy`` (float32 on demand)."""
    def m(name, q):
        if hasattr(q, "dequantize"):
            return Lazy(name, q.shape, q.dequantize, q)
        a = np.ascontiguousarray(q, dtype=np.float32)
        return Lazy(name, a.shape, lambda: a)

    out = [m("token_embd.weight", weights.emb),
           m("token_embd_norm.weight", weights.ln0_w), m("token_embd_norm.bias", weights.ln0_b)]
    C = hp.n_embd
    for i, L in enumerate(weights.layers):
        p = f"blk.{i}."
        v0, v1, v2 = (L.a0, L.a1, L.a2) if i == 0 else (L.v0, L.v1, L.v2)
        lerp = np.stack([L.x_r, L.x_w, L.x_k, L.x_v, L.x_a, L.x_g]).reshape(6, 1, 1, C)
        out += [m(p + "attn_norm.weight", L.ln1_w), m(p + "attn_norm.bias", L.ln1_b),
                m(p + "attn_norm_2.weight", L.ln2_w), m(p + "attn_norm_2.bias", L.ln2_b),
                m(p + "time_mix_lerp_fused.weight", lerp),
                m(p + "time_mix_w0.weight", L.w0), m(p + "time_mix_w1.weight", L.w1),
                m(p + "time_mix_w2.weight", L.w2), m(p + "time_mix_v0.weight", v0),
                m(p + "time_mix_a0.weight", L.a0), m(p + "time_mix_v1.weight", v1),
                m(p + "time_mix_a1.weight", L.a1), m(p + "time_mix_v2.weight", v2),
                m(p + "time_mix_a2.weight", L.a2), m(p + "time_mix_g1.weight", L.g1),
                m(p + "time_mix_g2.weight", L.g2), m(p + "time_mix_k_k.weight", L.k_k),
                m(p + "time_mix_k_a.weight", L.k_a), m(p + "time_mix_r_k.weight", L.r_k),
                m(p + "time_mix_receptance.weight", L.receptance),
                m(p + "time_mix_key.weight", L.key), m(p + "time_mix_value.weight", L.value),
                m(p + "time_mix_output.weight", L.output),
                m(p + "time_mix_ln.weight", L.ln_x_w), m(p + "time_mix_ln.bias", L.ln_x_b),
                m(p + "channel_mix_lerp_k.weight", L.ffn_x_k),
                m(p + "channel_mix_key.weight", L.ffn_key),
                m(p + "channel_mix_value.weight", L.ffn_value)]
    out += [m("output_norm.weight", weights.ln_out_w), m("output_norm.bias", weights.ln_out_b),
            m("output.weight", weights.head)]
    return out


def tensor_type(name: str, shape, target: int) -> int:
    """llama.cpp's choice for one tensor: converter rules for F16/BF16, llama-quantize's otherwise."""
    if len(shape) != 2 or target == dq.F32:
        return dq.F32
    if target in (dq.F16, dq.BF16):
        return dq.F32 if any(k in name for k in LOWRANK_KEEP_F32) else target
    ne0 = shape[-1]
    if name == "output.weight":
        if target in OUTPUT_TYPE:
            return OUTPUT_TYPE[target]
        return dq.Q6_K if ne0 % dq.BLOCKS[target][0] == 0 else dq.Q8_0
    if name == "token_embd.weight" or any(f".{k}." in name for k in BIG):
        t = target
        if ne0 % dq.BLOCKS[t][0]:
            t = FALLBACK.get(t, dq.F16)
            if ne0 % dq.BLOCKS[t][0]:
                t = dq.F16
        return t
    return dq.F32


def encode(a: np.ndarray, qtype: int) -> np.ndarray:
    """float32 [rows, cols] -> the raw encoding of ``qtype`` (as gguf-py's writer wants it)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    if qtype == dq.F32:
        return a
    if qtype == dq.F16:
        return a.astype(np.float16)
    if dq.BLOCKS[qtype][0] == dq.QK_K or qtype == dq.IQ4_NL:
        from rwkvcpu.kernels.quantize import quantize_blocks
        return quantize_blocks(a, qtype)
    return quantize(a, GGMLQuantizationType(qtype))


def write_gguf(path: str, hp, tensors, target: int, ftype_id: int, vocab=None, name: str = "rwkv7",
               progress=None, types: dict | None = None) -> None:
    """Write ``tensors`` (``Lazy``, in order) to ``path`` with llama.cpp's metadata, atomically, holding
    one tensor in memory at a time."""
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    tmp = f"{path}.tmp-{os.getpid()}"
    w = GGUFWriter(tmp, "rwkv7")
    try:
        w.add_type("model")
        w.add_name(name)
        n_params = sum(int(np.prod(t.shape)) for t in tensors)
        w.add_size_label(_size_label(n_params))
        w.add_context_length(1048576)
        w.add_embedding_length(hp.n_embd)
        w.add_block_count(hp.n_layer)
        w.add_layer_norm_eps(float(hp.norm_eps))
        w.add_uint32("rwkv7.wkv.head_size", hp.head_size)
        w.add_uint32("rwkv7.attention.decay_lora_rank", hp.rank_w)
        w.add_uint32("rwkv7.attention.iclr_lora_rank", hp.rank_a)
        w.add_uint32("rwkv7.attention.value_residual_mix_lora_rank", hp.rank_v)
        w.add_uint32("rwkv7.attention.gate_lora_rank", hp.rank_g)
        w.add_feed_forward_length(hp.n_ffn)
        w.add_file_type(ftype_id)
        w.add_head_count(0)
        w.add_quantization_version(2)
        if vocab is not None:
            toks = ["<s>"] + [escape_token(b) for b in vocab[1:]]
            w.add_tokenizer_model("rwkv")
            w.add_token_list(toks)
            w.add_token_types([int(TokenType.CONTROL)] + [int(TokenType.NORMAL)] * (len(toks) - 1))
            w.add_eot_token_id(261)           # "\n\n" in the World vocabulary, as llama.cpp's converter sets
            w.add_bos_token_id(0)
            w.add_eos_token_id(0)
            w.add_chat_template(CHAT_TEMPLATE)
        qtypes = []
        for t in tensors:                    # the header first: names, shapes, types and sizes
            qt = (types or {}).get(t.name, tensor_type(t.name, t.shape, target))
            qtypes.append(qt)
            if qt in (dq.F32, dq.F16):
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32 if qt == dq.F32 else np.float16),
                                  int(np.prod(t.shape)) * (4 if qt == dq.F32 else 2))
            else:
                blk, nbytes = dq.BLOCKS[qt]
                rows = int(np.prod(t.shape[:-1]))
                w.add_tensor_info(t.name, (*t.shape[:-1], t.shape[-1] // blk * nbytes), np.dtype(np.uint8),
                                  rows * (t.shape[-1] // blk) * nbytes, raw_dtype=GGMLQuantizationType(qt))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, (t, qt) in enumerate(zip(tensors, qtypes)):   # then the data, one tensor at a time
            _write_tensor(w, t, qt)
            t.release()
            if progress:
                progress(i + 1, len(tensors))
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_tensor(w, t: Lazy, qt: int) -> None:
    """Encode and write one tensor, a block of rows at a time where gguf-py's writer allows it
    (its ``write_tensor_data`` takes a whole tensor; we do the same steps per block), so the
    float32 copy of a big matrix never exists whole."""
    from gguf.gguf_writer import WriterState
    fouts, infos = getattr(w, "fout", None), getattr(w, "tensors", None)
    if not (isinstance(fouts, list) and len(fouts) == 1 and isinstance(infos, list) and len(infos) == 1
            and next(iter(infos[0]), None) == t.name and hasattr(w, "write_padding")):
        a = t.get()
        w.write_tensor_data(np.ascontiguousarray(encode(a, qt)))
        return
    fout = fouts[0]
    ti = infos[0].pop(t.name)
    w.write_padding(fout, fout.tell())
    written = 0
    for a in t.chunks():
        raw = np.ascontiguousarray(encode(a, qt))
        raw.tofile(fout)
        written += raw.nbytes
    if written != ti.nbytes:
        raise RuntimeError(f"{t.name}: wrote {written} bytes, the header says {ti.nbytes}")
    w.write_padding(fout, ti.nbytes)
    w.state = WriterState.WEIGHTS


def _size_label(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def convert(src: str, dst: str, ftype: str, vocab: str | None = None, force: bool = False,
            progress=None, name: str | None = None, allow_requantize: bool = False) -> None:
    """Any loadable model (.pth, HF folder, GGUF) -> a GGUF of ``ftype``."""
    from rwkvcpu.loaders import load
    ftype = ALIASES.get(ftype, ftype)
    if ftype not in FTYPES:
        raise ValueError(f"type {ftype!r} is not supported (choose from {', '.join(FTYPES)})")
    if os.path.exists(dst) and not force:
        raise FileExistsError(f"{dst} exists; pass --force to overwrite it")
    if os.path.abspath(dst) == os.path.abspath(src):
        raise ValueError(f"{dst}: output would overwrite the input")
    ck = load(src, vocab=vocab)
    quantized = {q.type_name for _, q in ck.weights.matrices()} - {"F32", "F16", "BF16"}
    if quantized and not allow_requantize:
        raise ValueError(f"{src} is already quantized ({', '.join(sorted(quantized))}); requantizing loses "
                         "accuracy: pass --allow-requantize, or start from the f32/f16/bf16 file")
    ftype_id, target = FTYPES[ftype]
    tensors = gguf_tensors(ck.weights, ck.hparams)
    write_gguf(dst, ck.hparams, tensors, target, ftype_id, ck.vocab,
               name=name or os.path.splitext(os.path.basename(os.path.normpath(src)))[0], progress=progress)
