"""Explicit 8-lane float32 vectors for Numba kernels (portable LLVM IR, no target intrinsics).

Why: Numba's auto-vectoriser gets the decode matvecs' inner loops only half right.  A per-block
dot product written as a scalar reduction is vectorised with a horizontal sum per 32-value block,
and a 32-lane accumulator array is stored back to memory every block (LLVM cannot prove the
array does not alias the weights).  Both cost more than the arithmetic.  ``f32x8`` is a Numba
type whose value is an LLVM ``<8 x float>``: a kernel keeps its accumulators in registers, loads
8 weights at a time, converts them with one vector instruction and folds per-block scales in
with a vector FMA; the horizontal sum happens once per row.  On x86-64 with AVX2 each operation
is one ``ymm`` instruction (``vpmovsxbd``/``vcvtdq2ps``, ``vcvtph2ps`` with F16C, ``vfmadd``);
other targets get whatever LLVM lowers the same generic IR to.

Every load takes a 1-D C-contiguous array and an element index; it reads ``arr[i:i+8]`` without
a bounds check, like the rest of the kernels (callers index whole blocks inside a row).

NumPy reference: ``tests/kernels/test_simd.py`` checks each operation against NumPy.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils  # noqa: F401  (keeps numba's extension API imported in one place)
from numba.extending import intrinsic, models, register_model


class F32x8Type(types.Type):
    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = F32x8Type()
_F = ir.FloatType()
_V8F = ir.VectorType(_F, 8)
_I32 = ir.IntType(32)
_FAST = ("contract", "reassoc")


@register_model(F32x8Type)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8F)


def _vec_ptr(ctx, builder, aty, aval, idx, elty):
    ary = ctx.make_array(aty)(ctx, builder, aval)
    p = builder.gep(ary.data, [idx])
    return builder.bitcast(p, ir.PointerType(ir.VectorType(elty, 8)))


def _is_row(arr, *dtypes):
    return (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and arr.dtype in dtypes)


def _splat(builder, val, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), val, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


@intrinsic
def vzero(typingctx):
    def cg(ctx, builder, sig, args):
        return ir.Constant(_V8F, [0.0] * 8)
    return f32x8(), cg


@intrinsic
def vsplat(typingctx, f):
    """All 8 lanes = f (a float32)."""
    if f != types.float32:
        return None

    def cg(ctx, builder, sig, args):
        return _splat(builder, args[0], _V8F)
    return f32x8(types.float32), cg


def _binop(name):
    def impl(typingctx, a, b):
        if a != f32x8 or b != f32x8:
            return None

        def cg(ctx, builder, sig, args):
            return getattr(builder, name)(args[0], args[1], flags=_FAST)
        return f32x8(f32x8, f32x8), cg
    impl.__name__ = "v" + name[1:]
    return intrinsic(impl)


vadd = _binop("fadd")
vsub = _binop("fsub")
vmul = _binop("fmul")


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c (contracted to one FMA where the target has it)."""
    if not (a == b == c == f32x8):
        return None

    def cg(ctx, builder, sig, args):
        return builder.fadd(builder.fmul(args[0], args[1], flags=_FAST), args[2], flags=_FAST)
    return f32x8(f32x8, f32x8, f32x8), cg


@intrinsic
def vhsum(typingctx, a):
    """The sum of the 8 lanes, as float32 (pairwise: (0+4, 1+5, 2+6, 3+7), then halves)."""
    if a != f32x8:
        return None

    def cg(ctx, builder, sig, args):
        v = args[0]
        und = ir.Constant(_V8F, ir.Undefined)
        v4 = ir.VectorType(_F, 4)
        lo = builder.shuffle_vector(v, und, ir.Constant(ir.VectorType(_I32, 4), [0, 1, 2, 3]))
        hi = builder.shuffle_vector(v, und, ir.Constant(ir.VectorType(_I32, 4), [4, 5, 6, 7]))
        s = builder.fadd(lo, hi, flags=_FAST)
        s2 = builder.fadd(s, builder.shuffle_vector(s, ir.Constant(v4, ir.Undefined),
                                                    ir.Constant(ir.VectorType(_I32, 4), [2, 3, 2, 3])),
                          flags=_FAST)
        return builder.fadd(builder.extract_element(s2, ir.Constant(_I32, 0)),
                            builder.extract_element(s2, ir.Constant(_I32, 1)), flags=_FAST)
    return types.float32(f32x8), cg


@intrinsic
def vload(typingctx, arr, idx):
    """float32(arr[idx:idx+8]) for a float32, int8 or uint8 row."""
    if not (_is_row(arr, types.float32, types.int8, types.uint8) and isinstance(idx, types.Integer)):
        return None
    dt = arr.dtype

    def cg(ctx, builder, sig, args):
        i = ctx.cast(builder, args[1], sig.args[1], types.intp)
        if dt == types.float32:
            return builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, _F), align=4)
        v = builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, ir.IntType(8)), align=1)
        return builder.sitofp(v, _V8F) if dt == types.int8 else builder.uitofp(v, _V8F)
    return f32x8(arr, idx), cg


def _half_loader(bf16: bool):
    def impl(typingctx, arr, idx):
        if not (_is_row(arr, types.uint16) and isinstance(idx, types.Integer)):
            return None

        def cg(ctx, builder, sig, args):
            i = ctx.cast(builder, args[1], sig.args[1], types.intp)
            v = builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, ir.IntType(16)), align=2)
            if not bf16:
                return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), _V8F)
            v8i32 = ir.VectorType(_I32, 8)
            return builder.bitcast(builder.shl(builder.zext(v, v8i32),
                                               _splat(builder, ir.Constant(_I32, 16), v8i32)), _V8F)
        return f32x8(arr, idx), cg
    impl.__name__ = "vload_bf16" if bf16 else "vload_f16"
    impl.__doc__ = f"float32 of 8 {'bfloat16s' if bf16 else 'IEEE halves'} stored as a uint16 row.  Exact."
    return intrinsic(impl)


vload_f16 = _half_loader(False)
vload_bf16 = _half_loader(True)


@intrinsic
def f16at(typingctx, arr, idx):
    """float32 of the IEEE half stored little-endian at bytes arr[idx:idx+2] of a uint8 row (a
    block scale), converted in registers (F16C ``vcvtph2ps``): exact, like ``dq.F16_LUT`` but
    without its 256 KB table (an L2 access per block)."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        p = builder.gep(ary.data, [ctx.cast(builder, args[1], sig.args[1], types.intp)])
        h = builder.load(builder.bitcast(p, ir.PointerType(ir.HalfType())), align=1)
        return builder.fpext(h, _F)
    return types.float32(arr, idx), cg


def _bits_i32(ctx, builder, aty, aval, i, shift, mask):
    """(zext(arr[i:i+8]) >> shift) & mask as <8 x i32> (32-bit lanes: x86 has no byte shifts)."""
    v8i32 = ir.VectorType(_I32, 8)
    v = builder.load(_vec_ptr(ctx, builder, aty, aval, i, ir.IntType(8)), align=1)
    v = builder.zext(v, v8i32)
    v = builder.lshr(v, _splat(builder, builder.trunc(shift, _I32), v8i32))
    return builder.and_(v, _splat(builder, builder.trunc(mask, _I32), v8i32))


@intrinsic
def vq6half(typingctx, arr, lo, hi):
    """The 128 values of one Q6_K half-block, unsigned (0..63), as 16 float32 vectors in value
    order.  Value 32p + j (run p < 4, j < 32) is
    ((arr[lo + 32 (p % 2) + j] >> 4 (p // 2)) & 15) | (((arr[hi + j] >> 2p) & 3) << 4).
    The 6-bit values are assembled 32 bytes at a time (3 loads, ~4 byte operations per run) and
    only then widened to 32-bit lanes: against assembling each 8 in 32-bit lanes, a third fewer
    vector operations, the Q6_K head ~20% faster."""
    if not (_is_row(arr, types.uint8) and isinstance(lo, types.Integer) and isinstance(hi, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 16)

    def cg(ctx, builder, sig, args):
        und = ir.Constant(_V32I8, ir.Undefined)
        out = []
        for q in _q6_runs(ctx, builder, sig, args):
            for j in range(4):
                part = builder.shuffle_vector(q, und, _const_vec(ir.VectorType(_I32, 8), range(8 * j, 8 * j + 8)))
                out.append(builder.sitofp(builder.zext(part, _V8I32), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, lo, hi), cg


def _q6_runs(ctx, builder, sig, args):
    """The four 32-byte runs of a Q6_K half-block (args: row, ql index, qh index), each value
    0..63 in a byte: 3 loads, ~4 byte operations per run."""
    i_lo = ctx.cast(builder, args[1], sig.args[1], types.intp)
    i_hi = ctx.cast(builder, args[2], sig.args[2], types.intp)
    c = lambda n: ir.Constant(_V32I8, [n] * 32)     # noqa: E731
    l0 = _load_bytes(ctx, builder, sig.args[0], args[0], i_lo, 32)
    l1 = _load_bytes(ctx, builder, sig.args[0], args[0], builder.add(i_lo, ir.Constant(i_lo.type, 32)), 32)
    h = _load_bytes(ctx, builder, sig.args[0], args[0], i_hi, 32)
    runs = []
    for p in range(4):
        low = l0 if p % 2 == 0 else l1
        low = builder.and_(low, c(15)) if p < 2 else builder.lshr(low, c(4))
        sh = 4 - 2 * p                                  # bits 2p..2p+1 of h moved to bits 4..5
        high = builder.shl(h, c(sh)) if sh > 0 else (builder.lshr(h, c(-sh)) if sh < 0 else h)
        runs.append(builder.or_(low, builder.and_(high, c(0x30))))
    return runs


@intrinsic
def vq6lanes(typingctx, arr, lo, hi):
    """The 128 values of one Q6_K half-block, unsigned (0..63), as 16 float32 vectors *in 32-bit
    lanes where they lie*: vector 4p + k, lane i = 2**(8k) * value(32p + 4i + k), run p < 4,
    byte k < 4 (values as in ``vq6half``).  Each run's 32 values are assembled in bytes (as in
    ``vq6half``), then every byte position is masked out of the 32-bit lanes and converted as it
    stands (``vpand`` + ``vcvtdq2ps``, exact: 6 significant bits): no widening shuffle per 8
    values, which is what bounded ``vq6half``'s users (Zen 3: shuffles and shifts share two of
    the four vector pipes).  The caller reads x in the matching order, scaled by 2**(-8k)
    (``lanes_x_order``); lanes 0-3 of vector 4p + k are group 2p, lanes 4-7 group 2p + 1."""
    if not (_is_row(arr, types.uint8) and isinstance(lo, types.Integer) and isinstance(hi, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 16)

    def cg(ctx, builder, sig, args):
        out = []
        for q in _q6_runs(ctx, builder, sig, args):
            q = builder.bitcast(q, _V8I32)
            for k in range(4):
                out.append(builder.sitofp(builder.and_(q, _const_vec(_V8I32, [0x3F << (8 * k)] * 8)), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, lo, hi), cg


@intrinsic
def vnlanes(typingctx, arr, idx):
    """The 64 nibbles of the 32 bytes arr[idx:idx+32] as 8 float32 vectors in their 32-bit lanes
    (``vq6lanes``' layout for 4-bit values): vector k (< 4), lane i = 2**(8k) * (low nibble of
    byte 4i + k); vector 4 + k the same of the high nibbles (one shift of the 32 bytes).  Each is
    ``vpand`` + ``vcvtdq2ps``, exact; x is read in ``lanes_x_order``."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 8)

    def cg(ctx, builder, sig, args):
        v = builder.bitcast(_load_bytes(ctx, builder, sig.args[0], args[0],
                                        ctx.cast(builder, args[1], sig.args[1], types.intp), 32), _V8I32)
        out = []
        for w in (v, builder.lshr(v, _const_vec(_V8I32, [4] * 8))):
            for k in range(4):
                out.append(builder.sitofp(builder.and_(w, _const_vec(_V8I32, [0xF << (8 * k)] * 8)), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, idx), cg


def _k23_lanes(builder, qv, hv, hbit):
    """``vq6lanes``' 16 in-lane vectors for a Q2_K/Q3_K half-block: run j of the 32 bytes qv is
    bits 2j..2j+1 (values 0..3); with hv (Q3_K's hmask bytes), bit hbit + j of hv is or-ed in
    as 4 (values 0..7)."""
    c = lambda n: ir.Constant(_V32I8, [n] * 32)     # noqa: E731
    out = []
    for j in range(4):
        q = builder.and_(builder.lshr(qv, c(2 * j)) if j else qv, c(3))
        if hv is not None:
            sh = hbit + j - 2                               # bit hbit + j moved to bit 2
            hb = builder.lshr(hv, c(sh)) if sh > 0 else (builder.shl(hv, c(-sh)) if sh < 0 else hv)
            q = builder.or_(q, builder.and_(hb, c(4)))
        q = builder.bitcast(q, _V8I32)
        for k in range(4):
            out.append(builder.sitofp(builder.and_(q, _const_vec(_V8I32, [0x7 << (8 * k)] * 8)), _V8F))
    return out


@intrinsic
def vq3lanes(typingctx, arr, qs, hm, hbit):
    """The 128 values of a Q3_K half-block before their -4 (0..7: 2 bits of qs bytes arr[qs:qs+32]
    at 2j for run j, plus 4 x bit hbit + j of hmask bytes arr[hm:hm+32]) in ``vq6lanes``' layout:
    vector 4j + k, lane i = 2**(8k) * value(32j + 4i + k).  hbit: a literal (0 or 4)."""
    if not (_is_row(arr, types.uint8) and isinstance(qs, types.Integer) and isinstance(hm, types.Integer)
            and isinstance(hbit, types.IntegerLiteral)):
        return None
    rty = types.UniTuple(f32x8, 16)
    hb = hbit.literal_value

    def cg(ctx, builder, sig, args):
        ld = lambda k: _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[k], sig.args[k], types.intp), 32)  # noqa: E731
        return ctx.make_tuple(builder, rty, _k23_lanes(builder, ld(1), ld(2), hb))
    return rty(arr, qs, hm, hbit), cg


@intrinsic
def vq2lanes(typingctx, arr, qs):
    """The 128 2-bit values (0..3) of a Q2_K half-block, qs bytes arr[qs:qs+32], in ``vq3lanes``'
    layout."""
    if not (_is_row(arr, types.uint8) and isinstance(qs, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 16)

    def cg(ctx, builder, sig, args):
        qv = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 32)
        return ctx.make_tuple(builder, rty, _k23_lanes(builder, qv, None, 0))
    return rty(arr, qs), cg


@intrinsic
def vq5lanes(typingctx, arr, qs, qh, c):
    """The 64 5-bit values of 32 bytes of a Q5_K block's nibbles (arr[qs:qs+32], chunk c, a
    literal 0..3) in ``vnlanes``' layout: vectors 0-3 the low nibbles with bit 2c of the qh bytes
    arr[qh:qh+32] as their fifth bit, vectors 4-7 the high nibbles with bit 2c + 1."""
    if not (_is_row(arr, types.uint8) and isinstance(qs, types.Integer) and isinstance(qh, types.Integer)
            and isinstance(c, types.IntegerLiteral)):
        return None
    rty = types.UniTuple(f32x8, 8)
    ci = c.literal_value

    def cg(ctx, builder, sig, args):
        ld = lambda k: _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[k], sig.args[k], types.intp), 32)  # noqa: E731
        q, h = ld(1), ld(2)
        cb = lambda n: ir.Constant(_V32I8, [n] * 32)     # noqa: E731
        out = []
        for half in range(2):
            nib = builder.and_(q, cb(15)) if half == 0 else builder.lshr(q, cb(4))
            sh = 2 * ci + half - 4                          # bit 2c + half of qh moved to bit 4
            hb = builder.lshr(h, cb(sh)) if sh > 0 else (builder.shl(h, cb(-sh)) if sh < 0 else h)
            v = builder.bitcast(builder.or_(nib, builder.and_(hb, cb(16))), _V8I32)
            for k in range(4):
                out.append(builder.sitofp(builder.and_(v, _const_vec(_V8I32, [0x1F << (8 * k)] * 8)), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, qs, qh, c), cg


def _kv_lookup(builder, q, table):
    """table[q] for 32 byte indices q < 16 (one ``vpshufb`` with AVX2, compare-selects elsewhere)."""
    if AVX2:
        return _x86(builder, "llvm.x86.avx2.pshuf.b", _V32I8, [_const_vec(_V32I8, table * 2), q])
    val = _const_vec(_V32I8, [0] * 32)
    for n, kv in enumerate(table):
        val = builder.select(builder.icmp_unsigned("==", q, _const_vec(_V32I8, [n] * 32)), _const_vec(_V32I8, [kv] * 32), val)
    return val


IQ4_LANE_SCALE = (1.0, 1.0, 2.0 ** 8, 2.0 ** 16)   # vector k of viq4lanes carries value * this


@intrinsic
def viq4lanes(typingctx, arr, i0, i1):
    """IQ4_NL's kvalues + 128 (unsigned, 1..241) of the nibbles of two 16-byte runs (arr[i0:i0+16]
    in lanes 0-3, arr[i1:i1+16] in lanes 4-7: two IQ4_XS sub-blocks), converted
    where they lie in 32-bit lanes: vector k (< 4), lane 4j + i = IQ4_LANE_SCALE[k] *
    (kvalue(low nibble of byte 4i + k of run j) + 128); vectors 4-7 the high nibbles.  Byte 0 is
    masked, bytes 1-3 masked after one 8-bit shift (byte 3 masked in place would be the sign
    bit).  The caller subtracts 128 x the runs' sums of x."""
    if not (_is_row(arr, types.uint8) and isinstance(i0, types.Integer) and isinstance(i1, types.Integer)):
        return None
    from .dequant import KVALUES_IQ4
    table = [(int(v) + 128) for v in KVALUES_IQ4]
    table = [t - 256 if t > 127 else t for t in table]       # as signed bytes for the IR constant
    rty = types.UniTuple(f32x8, 8)

    def cg(ctx, builder, sig, args):
        ld = lambda k: _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[k], sig.args[k], types.intp), 16)  # noqa: E731
        v = builder.shuffle_vector(ld(1), ld(2), _const_vec(ir.VectorType(_I32, 32), range(32)))
        c = lambda n: ir.Constant(_V32I8, [n] * 32)     # noqa: E731
        out = []
        for nib in (builder.and_(v, c(15)), builder.and_(builder.lshr(v, c(4)), c(15))):
            w = builder.bitcast(_kv_lookup(builder, nib, table), _V8I32)
            w8 = builder.lshr(w, _const_vec(_V8I32, [8] * 8))
            for src, m in ((w, 0xFF), (w8, 0xFF), (w8, 0xFF00), (w8, 0xFF0000)):
                out.append(builder.sitofp(builder.and_(src, _const_vec(_V8I32, [m] * 8)), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, i0, i1), cg


IQ4NL_LANE_SCALE = (1.0, 2.0 ** 8, 2.0 ** 16, 1.0)   # vector k of viq4nl_lanes carries value * this


def _nib_halves(ctx, builder, sig, args):
    """The 16 bytes at args[1] in both halves of one vector (a broadcast load), the upper half
    shifted right 4 bits (one ``vpsrlvd``), as <8 x i32>: byte 4i + k of lane i < 4 holds value
    4i + k of a 32-value block in its low nibble (values 0-15: the low nibbles), of lane i >= 4
    value 4i + k (16-31: the high nibbles)."""
    v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 16)
    v = builder.shuffle_vector(v, v, _const_vec(ir.VectorType(_I32, 32), list(range(16)) * 2))
    return builder.lshr(builder.bitcast(v, _V8I32), _const_vec(_V8I32, [0] * 4 + [4] * 4))


@intrinsic
def viq4nl_lanes(typingctx, arr, idx):
    """IQ4_NL's kvalues + 128 (unsigned, 1..241) of one 32-value block's 16 nibble bytes at idx,
    looked up (one ``vpshufb``) and converted where they lie in 32-bit lanes (``_nib_halves``):
    lane i of vector k is IQ4NL_LANE_SCALE[k] * (kvalue(value 4i + k) + 128).  Bytes 0-2 are
    masked in place, byte 3 shifted down (masked in place it would be the sign bit).  The caller
    subtracts 128 x the block's sum of x."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None
    from .dequant import KVALUES_IQ4
    table = [(int(v) + 128) for v in KVALUES_IQ4]
    table = [t - 256 if t > 127 else t for t in table]       # as signed bytes for the IR constant
    rty = types.UniTuple(f32x8, 4)

    def cg(ctx, builder, sig, args):
        w = _nib_halves(ctx, builder, sig, args)
        nib = builder.and_(builder.bitcast(w, _V32I8), ir.Constant(_V32I8, [15] * 32))
        u = builder.bitcast(_kv_lookup(builder, nib, table), _V8I32)
        out = [builder.sitofp(builder.and_(u, _const_vec(_V8I32, [0xFF << (8 * k)] * 8)), _V8F) for k in range(3)]
        out.append(builder.sitofp(builder.lshr(u, _const_vec(_V8I32, [24] * 8)), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, idx), cg


@intrinsic
def vxs_scales(typingctx, arr, idx):
    """The 8 signed 6-bit sub-block scales (ls - 32) of the IQ4_XS block at idx, as float32:
    ls = ((arr[idx + 4 + sb // 2] >> 4 (sb % 2)) & 15) | ((scales_h >> 2 sb) & 3) << 4, scales_h
    the uint16 at idx + 2.  Reads 8 bytes."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 8)
        und = ir.Constant(v.type, ir.Undefined)
        c = lambda vals: _const_vec(_V8I32, vals)       # noqa: E731
        lo = builder.zext(builder.shuffle_vector(v, und, _const_vec(ir.VectorType(_I32, 8), [4, 4, 5, 5, 6, 6, 7, 7])), _V8I32)
        lo = builder.and_(builder.lshr(lo, c([0, 4] * 4)), c([15] * 8))
        h16 = builder.or_(builder.zext(builder.extract_element(v, ir.Constant(_I32, 2)), _I32),
                          builder.shl(builder.zext(builder.extract_element(v, ir.Constant(_I32, 3)), _I32), ir.Constant(_I32, 8)))
        hi = builder.and_(builder.lshr(_splat(builder, h16, _V8I32), c([2 * i for i in range(8)])), c([3] * 8))
        ls = builder.or_(lo, builder.shl(hi, c([4] * 8)))
        return builder.sitofp(builder.sub(ls, c([32] * 8)), _V8F)
    return f32x8(arr, idx), cg


@intrinsic
def vpair4(typingctx, v, a, b):
    """(v[a] x 4, v[b] x 4) for literal lanes a, b: two groups' scales over ``vq6lanes``' lanes
    (a == b: a broadcast)."""
    if not (v == f32x8 and isinstance(a, types.IntegerLiteral) and isinstance(b, types.IntegerLiteral)):
        return None
    ia, ib = a.literal_value, b.literal_value

    def cg(ctx, builder, sig, args):
        return builder.shuffle_vector(args[0], ir.Constant(_V8F, ir.Undefined),
                                      _const_vec(ir.VectorType(_I32, 8), [ia] * 4 + [ib] * 4))
    return f32x8(v, a, b), cg


def _byte_picker(ctx, builder, sig, args):
    """For a (uint8 row, index) intrinsic: load the 16 bytes at the index and return pick(ix), the
    bytes ix (8 positions) zero-extended into <8 x i32> lanes (K blocks' packed scales)."""
    v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 16)
    und = ir.Constant(v.type, ir.Undefined)

    def pick(ix):
        return builder.zext(builder.shuffle_vector(v, und, _const_vec(ir.VectorType(_I32, 8), ix)), _V8I32)
    return pick


@intrinsic
def vkscales(typingctx, arr, idx):
    """(scales, mins) of the 8 sub-blocks of a Q4_K/Q5_K block, unpacked from the 12 bytes at idx
    (``dequant._k_scale_min`` for all 8 at once), as two float32 vectors.  Reads 16 bytes.
    Sub-block i < 4: scale = b[i] & 63, min = b[i+4] & 63; i >= 4: scale = (b[i+4] & 15) |
    (b[i-4] >> 6) << 4, min = (b[i+4] >> 4) | (b[i] >> 6) << 4."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 2)

    def cg(ctx, builder, sig, args):
        pick = _byte_picker(ctx, builder, sig, args)
        c = lambda vals: _const_vec(_V8I32, vals)       # noqa: E731

        def top2(ix):                                   # bits 6..7 of bytes ix moved to bits 4..5, lanes 4..7
            return builder.and_(builder.lshr(pick(ix), c([2] * 8)), c([0] * 4 + [0x30] * 4))
        low6 = c([63] * 4 + [15] * 4)
        sc = builder.or_(builder.and_(pick([0, 1, 2, 3, 8, 9, 10, 11]), low6), top2([0, 0, 0, 0, 0, 1, 2, 3]))
        mn = builder.or_(builder.and_(builder.lshr(pick([4, 5, 6, 7, 8, 9, 10, 11]), c([0] * 4 + [4] * 4)), low6),
                         top2([0, 0, 0, 0, 4, 5, 6, 7]))
        return ctx.make_tuple(builder, rty, [builder.sitofp(sc, _V8F), builder.sitofp(mn, _V8F)])
    return rty(arr, idx), cg


@intrinsic
def vsum8(typingctx, s0, s1, s2, s3, s4, s5, s6, s7):
    """(sum of s0's lanes, ..., sum of s7's lanes) as one f32x8: the transposed reduction that
    lets 8 sub-block sums share one scale vector and one FMA (three rounds of pairwise adds)."""
    if not all(s == f32x8 for s in (s0, s1, s2, s3, s4, s5, s6, s7)):
        return None

    def cg(ctx, builder, sig, a):
        def hadd(x, y):       # vhaddps' lane order: (x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7)
            ev = builder.shuffle_vector(x, y, _const_vec(ir.VectorType(_I32, 8), [0, 2, 8, 10, 4, 6, 12, 14]))
            od = builder.shuffle_vector(x, y, _const_vec(ir.VectorType(_I32, 8), [1, 3, 9, 11, 5, 7, 13, 15]))
            return builder.fadd(ev, od, flags=_FAST)
        q0 = hadd(hadd(a[0], a[1]), hadd(a[2], a[3]))
        q1 = hadd(hadd(a[4], a[5]), hadd(a[6], a[7]))
        lo = builder.shuffle_vector(q0, q1, _const_vec(ir.VectorType(_I32, 8), [0, 1, 2, 3, 8, 9, 10, 11]))
        hi = builder.shuffle_vector(q0, q1, _const_vec(ir.VectorType(_I32, 8), [4, 5, 6, 7, 12, 13, 14, 15]))
        return builder.fadd(lo, hi, flags=_FAST)
    return f32x8(*([f32x8] * 8)), cg


@intrinsic
def vbits(typingctx, arr, idx, shift, mask):
    """float32((arr[idx:idx+8] >> shift) & mask) for a uint8 row: nibbles and 2-bit fields."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)
            and isinstance(shift, types.Integer) and isinstance(mask, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        v = _bits_i32(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp),
                      ctx.cast(builder, args[2], sig.args[2], types.int64),
                      ctx.cast(builder, args[3], sig.args[3], types.int64))
        return builder.sitofp(v, _V8F)
    return f32x8(arr, idx, shift, mask), cg


@intrinsic
def vq5bits(typingctx, arr, lo, shift, hi, bit):
    """float32(((arr[lo + j] >> shift) & 15) | (((arr[hi + j] >> bit) & 1) << 4)) for lanes j < 8:
    5-bit values from a nibble and a fifth bit stored apart (Q5_K), assembled before converting."""
    if not (_is_row(arr, types.uint8) and all(isinstance(a, types.Integer) for a in (lo, shift, hi, bit))):
        return None

    def cg(ctx, builder, sig, args):
        v8i32 = ir.VectorType(_I32, 8)
        i64 = lambda k: ctx.cast(builder, args[k], sig.args[k], types.int64)     # noqa: E731
        ip = lambda k: ctx.cast(builder, args[k], sig.args[k], types.intp)       # noqa: E731
        low = _bits_i32(ctx, builder, sig.args[0], args[0], ip(1), i64(2), ir.Constant(ir.IntType(64), 15))
        h = _bits_i32(ctx, builder, sig.args[0], args[0], ip(3), i64(4), ir.Constant(ir.IntType(64), 1))
        q = builder.or_(low, builder.shl(h, ir.Constant(v8i32, [4] * 8)))
        return builder.sitofp(q, _V8F)
    return f32x8(arr, lo, shift, hi, bit), cg


@intrinsic
def vq3scales(typingctx, arr, idx):
    """The 16 signed 6-bit sub-block scales of a Q3_K block (12 packed bytes at idx; reads 16) as
    two float32 vectors, scales 0..7 and 8..15: scale i = ((b[i % 8] >> 4 (i // 8)) & 15 |
    ((b[8 + i % 4] >> 2 (i // 4)) & 3) << 4) - 32 (``dequant._k_scale6``)."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 2)

    def cg(ctx, builder, sig, args):
        pick = _byte_picker(ctx, builder, sig, args)
        c = lambda vals: _const_vec(_V8I32, vals)       # noqa: E731
        out = []
        for half in range(2):                           # scales 8 half + i, i < 8
            low = builder.and_(builder.lshr(pick(range(8)), c([4 * half] * 8)), c([15] * 8))
            high = builder.and_(builder.lshr(pick([8, 9, 10, 11] * 2), c([4 * half] * 4 + [4 * half + 2] * 4)), c([3] * 8))
            sc = builder.sub(builder.or_(low, builder.shl(high, c([4] * 8))), c([32] * 8))
            out.append(builder.sitofp(sc, _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, idx), cg


@intrinsic
def vq5u32(typingctx, arr, idx, shift, u, start, off):
    """float32((((arr[idx + j] >> shift) & 15) | (((u >> (start + j)) & 1) << 4)) - off) for lanes
    j < 8: Q5_0/Q5_1 values, a nibble and a fifth bit from the block's little-endian uint32 u,
    assembled (and offset: Q5_0's -16) in integers before the one conversion."""
    if not (_is_row(arr, types.uint8) and all(isinstance(a, types.Integer) for a in (idx, shift, u, start, off))):
        return None

    def cg(ctx, builder, sig, args):
        v8i32 = ir.VectorType(_I32, 8)
        i32 = lambda k: builder.trunc(ctx.cast(builder, args[k], sig.args[k], types.int64), _I32)   # noqa: E731
        low = _bits_i32(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp),
                        ctx.cast(builder, args[2], sig.args[2], types.int64), ir.Constant(ir.IntType(64), 15))
        sh = builder.add(_splat(builder, i32(4), v8i32), ir.Constant(v8i32, list(range(8))))
        bit = builder.and_(builder.lshr(_splat(builder, i32(3), v8i32), sh), ir.Constant(v8i32, [1] * 8))
        q = builder.or_(low, builder.shl(bit, ir.Constant(v8i32, [4] * 8)))
        return builder.sitofp(builder.sub(q, _splat(builder, i32(5), v8i32)), _V8F)
    return f32x8(arr, idx, shift, u, start, off), cg


@intrinsic
def viq4(typingctx, arr, idx, shift):
    """float32(IQ4_NL's kvalues[(arr[idx + j] >> shift) & 15]) for lanes j < 8 (IQ4_NL and IQ4_XS
    values): one ``vpshufb`` table lookup with AVX2, 16 compare-selects elsewhere.  The table is
    ``dequant.KVALUES_IQ4`` (integers -127..113, so int8)."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer) and isinstance(shift, types.Integer)):
        return None
    from .dequant import KVALUES_IQ4
    table = [int(v) for v in KVALUES_IQ4]

    def cg(ctx, builder, sig, args):
        v8i8 = ir.VectorType(_I8, 8)
        v = builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1],
                                                                                 types.intp), _I8), align=1)
        sh = _splat(builder, builder.trunc(ctx.cast(builder, args[2], sig.args[2], types.int64), _I8), v8i8)
        q = builder.and_(builder.lshr(v, sh), ir.Constant(v8i8, [15] * 8))
        if AVX2:
            v16 = ir.VectorType(_I8, 16)
            q16 = builder.shuffle_vector(q, ir.Constant(v8i8, ir.Undefined), _const_vec(ir.VectorType(_I32, 16),
                                                                                         list(range(8)) * 2))
            t = _x86(builder, "llvm.x86.ssse3.pshuf.b.128", v16, [ir.Constant(v16, table), q16])
            val = builder.shuffle_vector(t, ir.Constant(v16, ir.Undefined), _const_vec(ir.VectorType(_I32, 8), range(8)))
        else:
            val = ir.Constant(v8i8, [0] * 8)
            for n, kv in enumerate(table):
                hit = builder.icmp_unsigned("==", q, ir.Constant(v8i8, [n] * 8))
                val = builder.select(hit, ir.Constant(v8i8, [kv] * 8), val)
        return builder.sitofp(val, _V8F)
    return f32x8(arr, idx, shift), cg


@intrinsic
def vstore(typingctx, arr, idx, v):
    """arr[idx:idx+8] = v for a float32 row."""
    if not (_is_row(arr, types.float32) and isinstance(idx, types.Integer) and v == f32x8):
        return None

    def cg(ctx, builder, sig, args):
        i = ctx.cast(builder, args[1], sig.args[1], types.intp)
        builder.store(args[2], _vec_ptr(ctx, builder, sig.args[0], args[0], i, _F), align=4)
        return ctx.get_dummy_value()
    return types.none(arr, idx, f32x8), cg


vdiv = _binop("fdiv")

# exp on 8 lanes (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r, then
# times 2**n as two powers of two built in the exponent bits, so that n in [-150, 129] needs no
# special case: subnormal results, and inf above ln(FLT_MAX), come out of the multiplies).  Error
# <= 1.3 ulp against the exact exp on normal results (tests/kernels/test_simd.py; NumPy's float32
# exp: 2.3).  Inline, with no libm call: a scalar expf per channel spilled the vector registers of
# the time mix's up projection around every call.
_EXP_HI = 89.0
_EXP_LO = -104.0
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@intrinsic
def vexp(typingctx, v):
    """exp of the 8 lanes of v (see above)."""
    if v != f32x8:
        return None

    def cg(ctx, builder, sig, args):
        def c(val):
            return ir.Constant(_V8F, [float(np.float32(val))] * 8)

        def fma(a, b, d):
            return builder.fadd(builder.fmul(a, b, flags=("contract",)), d, flags=("contract",))
        v8i = ir.VectorType(_I32, 8)

        def pow2(k):
            return builder.bitcast(builder.shl(builder.add(k, ir.Constant(v8i, [127] * 8)),
                                               ir.Constant(v8i, [23] * 8)), _V8F)
        x = args[0]
        x = builder.select(builder.fcmp_ordered(">", x, c(_EXP_HI)), c(_EXP_HI), x)
        x = builder.select(builder.fcmp_ordered("<", x, c(_EXP_LO)), c(_EXP_LO), x)
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8F, [_V8F]), "llvm.rint.v8f32")
        n = builder.call(rint, [builder.fmul(x, c(_LOG2E))])
        r = fma(n, c(-_LN2_HI), x)
        r = fma(n, c(-_LN2_LO), r)
        y = c(_EXP_P[0])
        for k in _EXP_P[1:]:
            y = fma(y, r, c(k))
        y = fma(y, builder.fmul(r, r), builder.fadd(r, c(1.0)))
        ni = builder.fptosi(n, v8i)
        h = builder.ashr(ni, ir.Constant(v8i, [1] * 8))
        return builder.fmul(builder.fmul(y, pow2(h)), pow2(builder.sub(ni, h)))
    return f32x8(f32x8), cg


@njit(cache=True, inline="always")
def vsigmoid(v):
    """1 / (1 + exp(-v)) on 8 lanes."""
    one = vsplat(np.float32(1.0))
    return vdiv(one, vadd(one, vexp(vsub(vzero(), v))))


@intrinsic
def vload_w(typingctx, arr, idx):
    """float32(arr[idx:idx+8]) for a weight row that is float32, or IEEE halves stored as uint16
    (an F16 file's own bits): one kernel body serves both, compiled per type.  Exact."""
    if not (_is_row(arr, types.float32, types.uint16) and isinstance(idx, types.Integer)):
        return None
    half = arr.dtype == types.uint16

    def cg(ctx, builder, sig, args):
        i = ctx.cast(builder, args[1], sig.args[1], types.intp)
        if not half:
            return builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, _F), align=4)
        v = builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, ir.IntType(16)), align=2)
        return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), _V8F)
    return f32x8(arr, idx), cg


@intrinsic
def wat(typingctx, arr, idx):
    """float32(arr[idx]) for a float32 row, or of the IEEE half stored at arr[idx] of a uint16 row."""
    if not (_is_row(arr, types.float32, types.uint16) and isinstance(idx, types.Integer)):
        return None
    half = arr.dtype == types.uint16

    def cg(ctx, builder, sig, args):
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        p = builder.gep(ary.data, [ctx.cast(builder, args[1], sig.args[1], types.intp)])
        if not half:
            return builder.load(p)
        return builder.fpext(builder.load(builder.bitcast(p, ir.PointerType(ir.HalfType()))), _F)
    return types.float32(arr, idx), cg


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def dot_f32(m, x):
    """m . x for a float32 row x and a weight row m, float32 or f16 bits (uint16; ``vload_w``):
    8-lane vectors (two accumulators) plus a scalar tail.  Both weight types give the same bits
    for the same values."""
    n = m.shape[0]
    n16 = n - n % 16
    a0 = vzero()
    a1 = vzero()
    for j in range(0, n16, 16):
        a0 = vfma(vload_w(m, j), vload(x, j), a0)
        a1 = vfma(vload_w(m, j + 8), vload(x, j + 8), a1)
    acc = vhsum(vadd(a0, a1))
    for j in range(n16, n):
        acc += wat(m, j) * x[j]
    return acc


# --- 8-bit integer dot products ("llama" numerics: activations quantized to 8 bits) -------------
#
# llama.cpp multiplies a quantized weight block by an 8-bit activation block with integer
# instructions (x86: vpsignb, vpmaddubsw, vpmaddwd): the block's dot product is an exact int32,
# scaled once by the two block scales.  These types and operations express the same thing in
# Numba.  On a CPU with AVX2 they emit exactly those instructions; elsewhere they emit generic
# LLVM IR with the same lane semantics (also exact), so results are identical either way.
#
#   i8x32   <32 x i8>   32 weights or activations
#   i16x16  <16 x i16>  pairwise sums of products (vpmaddubsw)
#   i32x8   <8 x i32>   lane k = sum of products 4k .. 4k+3 (after vpmaddwd)

class I8x32Type(types.Type):
    def __init__(self):
        super().__init__(name="i8x32")


class I16x16Type(types.Type):
    def __init__(self):
        super().__init__(name="i16x16")


class I32x8Type(types.Type):
    def __init__(self):
        super().__init__(name="i32x8")


i8x32 = I8x32Type()
i16x16 = I16x16Type()
i32x8 = I32x8Type()
_I8, _I16 = ir.IntType(8), ir.IntType(16)
_V32I8 = ir.VectorType(_I8, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V8I32 = ir.VectorType(_I32, 8)


def _vec_model(llty):
    class _Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, llty)
    return _Model


register_model(I8x32Type)(_vec_model(_V32I8))
register_model(I16x16Type)(_vec_model(_V16I16))
register_model(I32x8Type)(_vec_model(_V8I32))


def _host_has_avx2() -> bool:
    """Whether Numba compiles for a CPU with AVX2 (its own target: host, or NUMBA_CPU_NAME/FEATURES).
    Numba's cache keys compiled code by that target, so a cached kernel never crosses CPUs."""
    from numba.core import config
    if config.CPU_NAME:
        return "+avx2" in (config.CPU_FEATURES or "")
    import llvmlite.binding as ll
    return bool(ll.get_host_cpu_features().get("avx2", False))


AVX2 = _host_has_avx2()


def _host_has_f16c() -> bool:
    from numba.core import config
    if config.CPU_NAME:
        return "+f16c" in (config.CPU_FEATURES or "")
    import llvmlite.binding as ll
    return bool(ll.get_host_cpu_features().get("f16c", False))


F16C = _host_has_f16c()


@intrinsic
def f16round(typingctx, v):
    """float32 v rounded to the nearest IEEE half (ties to even, overflow to inf, NaN kept), back
    as float32: ``vcvtps2ph`` + ``vcvtph2ps`` with F16C.  Callers without F16C (``F16C`` False)
    use ``quantize._f16``, which computes the same value in software."""
    if v != types.float32:
        return None

    def cg(ctx, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), _F)
    return types.float32(v), cg


def _x86(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _const_vec(vty, vals):
    return ir.Constant(vty, list(vals))


def _pairs(builder, v, n):
    """(even lanes, odd lanes) of an n-lane vector."""
    und = ir.Constant(v.type, ir.Undefined)
    ev = builder.shuffle_vector(v, und, _const_vec(ir.VectorType(_I32, n // 2), range(0, n, 2)))
    od = builder.shuffle_vector(v, und, _const_vec(ir.VectorType(_I32, n // 2), range(1, n, 2)))
    return ev, od


def _maddubs(builder, a, b):
    """Unsigned bytes a x signed bytes b, adjacent pairs added with signed saturation -> <16 x i16>."""
    if AVX2:
        return _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [a, b])
    v32i16 = ir.VectorType(_I16, 32)
    p = builder.mul(builder.zext(a, v32i16), builder.sext(b, v32i16))
    ev, od = _pairs(builder, p, 32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16I16, [_V16I16, _V16I16]),
                                        "llvm.sadd.sat.v16i16")
    return builder.call(fn, [ev, od])


def _madd(builder, a, b):
    """Signed words a x b, adjacent pairs added -> <8 x i32> (vpmaddwd; cannot overflow here)."""
    if AVX2:
        return _x86(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [a, b])
    v16i32 = ir.VectorType(_I32, 16)
    p = builder.mul(builder.sext(a, v16i32), builder.sext(b, v16i32))
    ev, od = _pairs(builder, p, 16)
    return builder.add(ev, od)


def _sign(builder, b, a):
    """b with a's sign applied (b where a > 0, -b where a < 0, 0 where a == 0): vpsignb."""
    if AVX2:
        return _x86(builder, "llvm.x86.avx2.psign.b", _V32I8, [b, a])
    zero = ir.Constant(_V32I8, [0] * 32)
    neg = builder.sub(zero, b)
    r = builder.select(builder.icmp_signed("<", a, zero), neg, b)
    return builder.select(builder.icmp_signed("==", a, zero), zero, r)


def _splat_i(builder, val, vty):
    return _splat(builder, builder.trunc(val, vty.element) if val.type.width > vty.element.width
                  else builder.sext(val, vty.element) if val.type.width < vty.element.width else val, vty)


def _load_bytes(ctx, builder, aty, aval, i, n):
    ary = ctx.make_array(aty)(ctx, builder, aval)
    p = builder.gep(ary.data, [i])
    return builder.load(builder.bitcast(p, ir.PointerType(ir.VectorType(_I8, n))), align=1)


def _nib16(ctx, builder, aty, aval, i):
    """The 16 bytes at element i of a row as 32 nibbles 0..15: the low ones, then the high ones."""
    v = _load_bytes(ctx, builder, aty, aval, i, 16)
    v16 = ir.VectorType(_I8, 16)
    lo = builder.and_(v, ir.Constant(v16, [15] * 16))
    hi = builder.lshr(v, ir.Constant(v16, [4] * 16))
    return builder.shuffle_vector(lo, hi, _const_vec(ir.VectorType(_I32, 32), range(32)))


@intrinsic
def i8load(typingctx, arr, idx):
    """arr[idx:idx+32] of an int8 or uint8 row, as 32 bytes."""
    if not (_is_row(arr, types.int8, types.uint8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        return _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 32)
    return i8x32(arr, idx), cg


@intrinsic
def i8nib16(typingctx, arr, idx):
    """32 values 0..15 from the 16 bytes arr[idx:idx+16]: their low nibbles, then their high
    nibbles (the value order of a Q4_0/IQ4_NL block)."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        return _nib16(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp))
    return i8x32(arr, idx), cg


@intrinsic
def i8nib(typingctx, arr, idx, high):
    """32 values 0..15 from the 32 bytes arr[idx:idx+32]: low nibbles (high=False) or high nibbles."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer) and isinstance(high, types.Boolean)):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 32)
        f = _const_vec(_V32I8, [15] * 32)
        return builder.select(args[2], builder.lshr(v, _const_vec(_V32I8, [4] * 32)), builder.and_(v, f))
    return i8x32(arr, idx, high), cg


@intrinsic
def i8q6(typingctx, arr, ql, qh, p):
    """Run p (0..3) of a Q6_K half block as 32 unsigned values 0..63:
    ((arr[ql + 32 (p % 2) + j] >> 4 (p // 2)) & 15) | (((arr[qh + j] >> 2p) & 3) << 4), j < 32."""
    if not (_is_row(arr, types.uint8) and all(isinstance(t, types.Integer) for t in (ql, qh, p))):
        return None

    def cg(ctx, builder, sig, args):
        ip = lambda k: ctx.cast(builder, args[k], sig.args[k], types.intp)     # noqa: E731
        pv = ip(3)
        one = ir.Constant(pv.type, 1)
        lo_i = builder.add(ip(1), builder.mul(builder.and_(pv, one), ir.Constant(pv.type, 32)))
        lo = _load_bytes(ctx, builder, sig.args[0], args[0], lo_i, 32)
        hi = _load_bytes(ctx, builder, sig.args[0], args[0], ip(2), 32)
        sh_lo = builder.trunc(builder.mul(builder.lshr(pv, one), ir.Constant(pv.type, 4)), _I8)
        sh_hi = builder.trunc(builder.mul(pv, ir.Constant(pv.type, 2)), _I8)
        lo = builder.and_(builder.lshr(lo, _splat(builder, sh_lo, _V32I8)), _const_vec(_V32I8, [15] * 32))
        hi = builder.and_(builder.lshr(hi, _splat(builder, sh_hi, _V32I8)), _const_vec(_V32I8, [3] * 32))
        return builder.or_(lo, builder.shl(hi, _const_vec(_V32I8, [4] * 32)))
    return i8x32(arr, ql, qh, p), cg


@intrinsic
def i8sub(typingctx, a, c):
    """a - c in every lane (wrapping bytes; used for Q4_0's -8)."""
    if not (a == i8x32 and isinstance(c, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        cv = ctx.cast(builder, args[1], sig.args[1], types.int8)
        return builder.sub(args[0], _splat(builder, cv, _V32I8))
    return i8x32(a, c), cg


@intrinsic
def idot(typingctx, w, x):
    """Signed bytes w . signed bytes x, lane k = sum of products 4k..4k+3 (exact int32):
    |w| times x with w's sign (vpsignb twice), vpmaddubsw, vpmaddwd by ones.  Needs x > -128
    where w = -128 would saturate, which 8-bit activations rounded to +-127 guarantee."""
    if not (w == i8x32 and x == i8x32):
        return None

    def cg(ctx, builder, sig, args):
        aw = _sign(builder, args[0], args[0])
        sx = _sign(builder, args[1], args[0])
        p = _maddubs(builder, aw, sx)
        return _madd(builder, p, ir.Constant(_V16I16, [1] * 16))
    return i32x8(w, x), cg


@intrinsic
def imaddubs(typingctx, u, x):
    """Unsigned bytes u (0..63 here) x signed bytes x, adjacent pairs added: <16 x i16>."""
    if not (u == i8x32 and x == i8x32):
        return None

    def cg(ctx, builder, sig, args):
        return _maddubs(builder, args[0], args[1])
    return i16x16(u, x), cg


@intrinsic
def imadd2(typingctx, p, s0, s1):
    """p (16 words) times a scale per half (lanes 0..7: s0, 8..15: s1), adjacent pairs added:
    <8 x i32>.  The per-16 (Q6_K) or per-32 (Q4_K: s0 == s1) scales of a 32-value run."""
    if not (p == i16x16 and isinstance(s0, types.Integer) and isinstance(s1, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        a = ctx.cast(builder, args[1], sig.args[1], types.int16)
        b = ctx.cast(builder, args[2], sig.args[2], types.int16)
        lo = _splat(builder, a, _V16I16)
        hi = _splat(builder, b, _V16I16)
        sc = builder.shuffle_vector(lo, hi, _const_vec(ir.VectorType(_I32, 16), list(range(8)) + list(range(24, 32))))
        return _madd(builder, args[0], sc)
    return i32x8(p, s0, s1), cg


@intrinsic
def i32load(typingctx, arr, idx):
    """arr[idx:idx+8] of an int32 row, as 8 int32 lanes."""
    if not (_is_row(arr, types.int32) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        i = ctx.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, _I32), align=4)
    return i32x8(arr, idx), cg


@intrinsic
def izero(typingctx):
    def cg(ctx, builder, sig, args):
        return ir.Constant(_V8I32, [0] * 8)
    return i32x8(), cg


@intrinsic
def iadd(typingctx, a, b):
    if not (a == b == i32x8):
        return None

    def cg(ctx, builder, sig, args):
        return builder.add(args[0], args[1])
    return i32x8(a, b), cg


@intrinsic
def itof(typingctx, a):
    """float32 of each int32 lane (exact below 2**24)."""
    if a != i32x8:
        return None

    def cg(ctx, builder, sig, args):
        return builder.sitofp(args[0], _V8F)
    return f32x8(a), cg


@intrinsic
def ilanes(typingctx, a):
    """The lanes of an i8x32, i16x16 or i32x8 as a tuple of (signed) int64s (tests)."""
    n = {i8x32: 32, i16x16: 16, i32x8: 8}.get(a)
    if n is None:
        return None
    rty = types.UniTuple(types.int64, n)

    def cg(ctx, builder, sig, args):
        vals = [builder.sext(builder.extract_element(args[0], ir.Constant(_I32, k)), ir.IntType(64)) for k in range(n)]
        return ctx.make_tuple(builder, rty, vals)
    return rty(a), cg


def _int_splat(elem, vty, rty, name):
    def impl(typingctx, c):
        if not isinstance(c, types.Integer):
            return None

        def cg(ctx, builder, sig, args):
            return _splat(builder, ctx.cast(builder, args[0], sig.args[0], elem), vty)
        return rty(c), cg
    impl.__name__ = name
    impl.__doc__ = f"All {vty.count} lanes of an {rty} = c (an integer, truncated)."
    return intrinsic(impl)


i8splat = _int_splat(types.int8, _V32I8, i8x32, "i8splat")


@intrinsic
def i16sub(typingctx, a, b):
    """a - b in 16-bit lanes (wrapping; the callers' values cannot overflow)."""
    if not (a == b == i16x16):
        return None

    def cg(ctx, builder, sig, args):
        return builder.sub(args[0], args[1])
    return i16x16(a, b), cg


# --- 8 weight rows at a time (Q4_0, llama numerics) ----------------------------------------------

def _hadd(builder, a, b):
    """vphaddd's lane order: (a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7)."""
    if AVX2:
        return _x86(builder, "llvm.x86.avx2.phadd.d", _V8I32, [a, b])
    ev = builder.shuffle_vector(a, b, _const_vec(_V8I32, [0, 2, 8, 10, 4, 6, 12, 14]))
    od = builder.shuffle_vector(a, b, _const_vec(_V8I32, [1, 3, 9, 11, 5, 7, 13, 15]))
    return builder.add(ev, od)


@intrinsic
def isum8(typingctx, s0, s1, s2, s3, s4, s5, s6, s7):
    """(sum of s0's lanes, ..., sum of s7's lanes) as one i32x8 (exact): three rounds of
    vphaddd and one add of the two 128-bit halves -- the transposed reduction that lets 8 weight
    rows share one convert and one FMA per block."""
    if not all(s == i32x8 for s in (s0, s1, s2, s3, s4, s5, s6, s7)):
        return None

    def cg(ctx, builder, sig, args):
        q0 = _hadd(builder, _hadd(builder, args[0], args[1]), _hadd(builder, args[2], args[3]))
        q1 = _hadd(builder, _hadd(builder, args[4], args[5]), _hadd(builder, args[6], args[7]))
        lo = builder.shuffle_vector(q0, q1, _const_vec(_V8I32, [0, 1, 2, 3, 8, 9, 10, 11]))
        hi = builder.shuffle_vector(q0, q1, _const_vec(_V8I32, [4, 5, 6, 7, 12, 13, 14, 15]))
        return builder.add(lo, hi)
    return i32x8(*([i32x8] * 8)), cg


isplat = _int_splat(types.int32, _V8I32, i32x8, "isplat")


@intrinsic
def f16x8(typingctx, b0, b1, b2, b3, b4, b5, b6, b7, idx):
    """float32 of the IEEE halves at bytes [idx:idx+2] of 8 uint8 rows (the block scales of 8
    weight rows) as one vector: 8 16-bit loads and one ``vcvtph2ps``.  Exact."""
    rows = (b0, b1, b2, b3, b4, b5, b6, b7)
    if not (all(_is_row(b, types.uint8) for b in rows) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        i = ctx.cast(builder, args[8], sig.args[8], types.intp)
        v = ir.Constant(ir.VectorType(_I16, 8), ir.Undefined)
        for k in range(8):
            ary = ctx.make_array(sig.args[k])(ctx, builder, args[k])
            p = builder.bitcast(builder.gep(ary.data, [i]), ir.PointerType(_I16))
            v = builder.insert_element(v, builder.load(p, align=1), ir.Constant(_I32, k))
        return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), _V8F)
    return f32x8(*rows, idx), cg


@intrinsic
def vlane(typingctx, v, k):
    """Lane k of an f32x8, as float32."""
    if not (v == f32x8 and isinstance(k, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        return builder.extract_element(args[0], ctx.cast(builder, args[1], sig.args[1], types.int32))
    return types.float32(v, k), cg


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint that the byte at flat offset idx of arr's buffer is read soon (``llvm.prefetch``: a
    read, kept in all cache levels).  Never faults, even past the end of the buffer.  For access
    patterns the hardware prefetchers miss: 8 interleaved rows of a few cache lines each."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        p8 = builder.bitcast(ary.data, ir.PointerType(_I8))
        p = builder.gep(p8, [ctx.cast(builder, args[1], sig.args[1], types.intp)])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.PointerType(_I8), _I32, _I32, _I32]), "llvm.prefetch.p0i8")
        builder.call(fn, [p, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return ctx.get_dummy_value()
    return types.none(arr, idx), cg


@intrinsic
def iset8(typingctx, a0, a1, a2, a3, a4, a5, a6, a7):
    """An i32x8 of 8 integers (truncated to int32)."""
    args = (a0, a1, a2, a3, a4, a5, a6, a7)
    if not all(isinstance(a, types.Integer) for a in args):
        return None

    def cg(ctx, builder, sig, vals):
        v = ir.Constant(_V8I32, ir.Undefined)
        for k in range(8):
            v = builder.insert_element(v, ctx.cast(builder, vals[k], sig.args[k], types.int32), ir.Constant(_I32, k))
        return v
    return i32x8(*args), cg


@intrinsic
def i16s8(typingctx, arr, idx):
    """arr[idx:idx+16] of an int8 row, sign-extended to 16 int16 lanes (``vpmovsxbw``)."""
    if not (_is_row(arr, types.int8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 16)
        return builder.sext(v, _V16I16)
    return i16x16(arr, idx), cg


@intrinsic
def i16load(typingctx, arr, idx):
    """arr[idx:idx+16] of an int16 row, as 16 int16 lanes."""
    if not (_is_row(arr, types.int16) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        p = builder.gep(ary.data, [ctx.cast(builder, args[1], sig.args[1], types.intp)])
        return builder.load(builder.bitcast(p, ir.PointerType(_V16I16)), align=2)
    return i16x16(arr, idx), cg


@intrinsic
def imadd(typingctx, a, b):
    """Signed words a x b, adjacent pairs added: <8 x i32> (``vpmaddwd``; callers keep the pair
    sums below 2**31)."""
    if not (a == b == i16x16):
        return None

    def cg(ctx, builder, sig, args):
        return _madd(builder, args[0], args[1])
    return i32x8(a, b), cg


@intrinsic
def imulc(typingctx, a, c):
    """a x c in every int32 lane (c an integer; a power of two becomes a shift)."""
    if not (a == i32x8 and isinstance(c, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        return builder.mul(args[0], _splat(builder, ctx.cast(builder, args[1], sig.args[1], types.int32), _V8I32))
    return i32x8(a, c), cg


# --- activation rows in lanes (batches: 8 activation rows, one weight row at a time) --------------
#
# A batch's activations are laid out as groups of 4 consecutive values of 8 rows (32 bytes: row t
# in bytes 4t..4t+3).  One weight row's 4 values broadcast to all 8 dwords then multiply 8 rows at
# once: after vpmaddubsw and vpmaddwd lane t holds row t's dot product, so a block's sums need no
# horizontal reduction and its scale is one vector over the 8 rows.

@intrinsic
def i8bc4(typingctx, arr, idx):
    """The 4 bytes arr[idx:idx+4] of a uint8 or int8 row in every dword of an i8x32
    (``vpbroadcastd`` from memory)."""
    if not (_is_row(arr, types.int8, types.uint8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        p = builder.gep(ary.data, [ctx.cast(builder, args[1], sig.args[1], types.intp)])
        d = builder.load(builder.bitcast(p, ir.PointerType(_I32)), align=1)
        return builder.bitcast(_splat(builder, d, _V8I32), _V32I8)
    return i8x32(arr, idx), cg


@intrinsic
def i8half(typingctx, v, high):
    """The low nibble (high False) or the high nibble (high True) of every byte, 0..15."""
    if not (v == i8x32 and isinstance(high, types.Boolean)):
        return None

    def cg(ctx, builder, sig, args):
        return builder.select(args[1], builder.lshr(args[0], _const_vec(_V32I8, [4] * 32)),
                              builder.and_(args[0], _const_vec(_V32I8, [15] * 32)))
    return i8x32(v, high), cg


@intrinsic
def i16add(typingctx, a, b):
    """a + b in 16-bit lanes (wrapping; callers keep the sums below 2**15)."""
    if not (a == b == i16x16):
        return None

    def cg(ctx, builder, sig, args):
        return builder.add(args[0], args[1])
    return i16x16(a, b), cg


@intrinsic
def imaddp(typingctx, p, s0, s1):
    """p (16 words) times (s0, s1, s0, s1, ...), adjacent pairs added: <8 x i32> (``vpmaddwd``):
    lane t = p[2t] s0 + p[2t+1] s1."""
    if not (p == i16x16 and isinstance(s0, types.Integer) and isinstance(s1, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        a = _splat(builder, ctx.cast(builder, args[1], sig.args[1], types.int16), _V16I16)
        b = _splat(builder, ctx.cast(builder, args[2], sig.args[2], types.int16), _V16I16)
        sc = builder.shuffle_vector(a, b, _const_vec(ir.VectorType(_I32, 16), [k // 2 + 16 * (k % 2) for k in range(16)]))
        return _madd(builder, args[0], sc)
    return i32x8(p, s0, s1), cg


@intrinsic
def ilane(typingctx, v, k):
    """Lane k of an i32x8, as int32."""
    if not (v == i32x8 and isinstance(k, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        return builder.extract_element(args[0], ctx.cast(builder, args[1], sig.args[1], types.int32))
    return types.int32(v, k), cg


@intrinsic
def i8q5(typingctx, arr, qs, qh):
    """Q5_0/Q5_1 block values 0..31 as 32 bytes: the nibbles of arr[qs:qs+16] in ``i8nib16``'s
    order, with bit j of the little-endian uint32 at arr[qh:qh+4] as value j's fifth bit (the
    uint32 becomes 32 one-bit lanes, widened; LLVM: a broadcast, a byte shuffle, a compare)."""
    if not (_is_row(arr, types.uint8) and isinstance(qs, types.Integer) and isinstance(qh, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        nib = _nib16(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp))
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        p = builder.gep(ary.data, [ctx.cast(builder, args[2], sig.args[2], types.intp)])
        u = builder.load(builder.bitcast(p, ir.PointerType(_I32)), align=1)
        bits = builder.zext(builder.bitcast(u, ir.VectorType(ir.IntType(1), 32)), _V32I8)
        return builder.or_(nib, builder.shl(bits, _const_vec(_V32I8, [4] * 32)))
    return i8x32(arr, qs, qh), cg


@intrinsic
def i8iq4(typingctx, arr, idx):
    """IQ4_NL's kvalues of the 32 nibbles of arr[idx:idx+16] in ``i8nib16``'s order (signed bytes
    -127..113): one ``vpshufb`` of the table with AVX2, 16 compare-selects elsewhere."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None
    from .dequant import KVALUES_IQ4
    table = [int(v) for v in KVALUES_IQ4]

    def cg(ctx, builder, sig, args):
        q = _nib16(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp))
        return _kv_lookup(builder, q, table)
    return i8x32(arr, idx), cg


@intrinsic
def vi8f(typingctx, v, j):
    """float32 of bytes 8j..8j+7 (j a literal 0..3) of an i8x32, as signed values: a block decoded
    once in bytes (``i8q5``, ``i8iq4``), then widened 8 at a time (``vpmovsxbd``, ``vcvtdq2ps``)."""
    if not (v == i8x32 and isinstance(j, types.IntegerLiteral)):
        return None
    k = j.literal_value

    def cg(ctx, builder, sig, args):
        part = builder.shuffle_vector(args[0], ir.Constant(_V32I8, ir.Undefined),
                                      _const_vec(ir.VectorType(_I32, 8), range(8 * k, 8 * k + 8)))
        return builder.sitofp(builder.sext(part, ir.VectorType(_I32, 8)), _V8F)
    return f32x8(v, j), cg


@intrinsic
def i8or(typingctx, a, b):
    """a | b bytewise (a K block's fifth bits onto its nibbles)."""
    if not (a == b == i8x32):
        return None

    def cg(ctx, builder, sig, args):
        return builder.or_(args[0], args[1])
    return i8x32(a, b), cg


@intrinsic
def i8bit(typingctx, arr, idx, bit, to):
    """((arr[idx + l] >> bit) & 1) << to for the 32 bytes l < 32: a K block's high bits moved into
    place (Q5_K: to 4; Q3_K: to 2), to be or-ed onto the low bits (``i8or``)."""
    if not (_is_row(arr, types.uint8) and all(isinstance(a, types.Integer) for a in (idx, bit, to))):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 32)
        sh = _splat(builder, builder.trunc(ctx.cast(builder, args[2], sig.args[2], types.int64), _I8), _V32I8)
        to = _splat(builder, builder.trunc(ctx.cast(builder, args[3], sig.args[3], types.int64), _I8), _V32I8)
        one = builder.and_(builder.lshr(v, sh), _const_vec(_V32I8, [1] * 32))
        return builder.shl(one, to)
    return i8x32(arr, idx, bit, to), cg


@intrinsic
def i8crumb(typingctx, arr, idx, shift):
    """(arr[idx + l] >> shift) & 3 for the 32 bytes l < 32: Q2_K/Q3_K's 2-bit values."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer) and isinstance(shift, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 32)
        sh = _splat(builder, builder.trunc(ctx.cast(builder, args[2], sig.args[2], types.int64), _I8), _V32I8)
        return builder.and_(builder.lshr(v, sh), _const_vec(_V32I8, [3] * 32))
    return i8x32(arr, idx, shift), cg


@intrinsic
def i16nib(typingctx, arr, idx, high):
    """The low (high False) or high nibbles of arr[idx:idx+16] as 16 int16 lanes (Q2_K's scales
    and mins)."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer) and isinstance(high, types.Boolean)):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 16)
        v16 = ir.VectorType(_I8, 16)
        n = builder.select(args[2], builder.lshr(v, ir.Constant(v16, [4] * 16)), builder.and_(v, ir.Constant(v16, [15] * 16)))
        return builder.zext(n, _V16I16)
    return i16x16(arr, idx, high), cg


@intrinsic
def i16q3sc(typingctx, arr, idx):
    """The 16 signed 6-bit scales of a Q3_K block (12 packed bytes at idx; reads 16) as int16
    lanes: ``vq3scales``' decoding kept in integers."""
    if not (_is_row(arr, types.uint8) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        v = _load_bytes(ctx, builder, sig.args[0], args[0], ctx.cast(builder, args[1], sig.args[1], types.intp), 16)
        und = ir.Constant(v.type, ir.Undefined)
        pick = lambda ix: builder.zext(builder.shuffle_vector(v, und, _const_vec(ir.VectorType(_I32, 16), ix)),  # noqa: E731
                                       _V16I16)
        c = lambda vals: _const_vec(_V16I16, vals)       # noqa: E731
        low = builder.and_(builder.lshr(pick(list(range(8)) * 2), c([0] * 8 + [4] * 8)), c([15] * 16))
        high = builder.and_(builder.lshr(pick([8, 9, 10, 11] * 4), c([0] * 4 + [2] * 4 + [4] * 4 + [6] * 4)), c([3] * 16))
        return builder.sub(builder.or_(low, builder.shl(high, c([4] * 16))), c([32] * 16))
    return i16x16(arr, idx), cg


@intrinsic
def i16sel2(typingctx, v, i, j):
    """Lanes 0..7 = v[i], lanes 8..15 = v[j] (i, j literals): a 32-value run's two 16-value scales
    for ``imadd`` after ``imaddubs`` (whose lanes 0..7 hold values 0..15)."""
    if not (v == i16x16 and isinstance(i, types.IntegerLiteral) and isinstance(j, types.IntegerLiteral)):
        return None
    a, b = i.literal_value, j.literal_value

    def cg(ctx, builder, sig, args):
        return builder.shuffle_vector(args[0], ir.Constant(_V16I16, ir.Undefined),
                                      _const_vec(ir.VectorType(_I32, 16), [a] * 8 + [b] * 8))
    return i16x16(v, i, j), cg


@intrinsic
def imaddss(typingctx, w, x):
    """Signed bytes w x signed bytes x, adjacent pairs added: <16 x i16> (|w| by x with w's sign,
    ``vpsignb`` twice and ``vpmaddubsw``; no saturation while |w|, |x| <= 127), for a scale to
    multiply in by ``imadd2`` (IQ4_XS)."""
    if not (w == i8x32 and x == i8x32):
        return None

    def cg(ctx, builder, sig, args):
        return _maddubs(builder, _sign(builder, args[0], args[0]), _sign(builder, args[1], args[0]))
    return i16x16(w, x), cg


# --- activation quantizers (intdot.py): 32 float32 values to 8 bits at a time -------------------

def _load32f(ctx, builder, sig, args):
    """The 32 floats arr[idx:idx+32] (args 0, 1) as four <8 x float>."""
    i = ctx.cast(builder, args[1], sig.args[1], types.intp)
    return [builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], builder.add(i, ir.Constant(i.type, 8 * k)), _F),
                         align=4) for k in range(4)]


def _vmax(builder, a, b):
    """Lane-wise max, a where they compare equal or unordered (``a if a >= b else b`` per lane)."""
    return builder.select(builder.fcmp_ordered("<", a, b), b, a)


@intrinsic
def vamax32(typingctx, arr, idx):
    """max(|arr[idx + i]|, i < 32) of a float32 row (0 for an all-zero block): the Q8_0 block's amax
    (exact: a max of absolute values is the same in any order)."""
    if not (_is_row(arr, types.float32) and isinstance(idx, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8F, [_V8F]), "llvm.fabs.v8f32")
        v = [builder.call(fabs, [u]) for u in _load32f(ctx, builder, sig, args)]
        m = _vmax(builder, _vmax(builder, v[0], v[1]), _vmax(builder, v[2], v[3]))
        for half in (4, 2, 1):
            sh = builder.shuffle_vector(m, ir.Constant(_V8F, ir.Undefined),
                                        _const_vec(ir.VectorType(_I32, 8), [(i + half) % 8 for i in range(8)]))
            m = _vmax(builder, m, sh)
        return builder.extract_element(m, ir.Constant(_I32, 0))
    return types.float32(arr, idx), cg


@intrinsic
def i8rint(typingctx, arr, idx, s, clamp):
    """int8(rint(arr[idx + i] * s)) for i < 32 (round half to even, as ``np.rint``; with ``clamp``
    (a literal) min(127, ...) first, as ggml's Q8_K).  The caller's scale keeps |value| <= 127.5."""
    if not (_is_row(arr, types.float32) and isinstance(idx, types.Integer) and s == types.float32
            and isinstance(clamp, types.BooleanLiteral)):
        return None
    cl = clamp.literal_value

    def cg(ctx, builder, sig, args):
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8F, [_V8F]), "llvm.rint.v8f32")
        sv = _splat(builder, args[2], _V8F)
        q = []
        for v in _load32f(ctx, builder, sig, args):
            r = builder.call(rint, [builder.fmul(v, sv)])
            if cl:
                top = ir.Constant(_V8F, [127.0] * 8)
                r = builder.select(builder.fcmp_ordered("<", top, r), top, r)
            q.append(builder.fptosi(r, _V8I32))
        idx16 = _const_vec(ir.VectorType(_I32, 16), range(16))
        a = builder.shuffle_vector(q[0], q[1], idx16)
        b = builder.shuffle_vector(q[2], q[3], idx16)
        w = builder.shuffle_vector(a, b, _const_vec(ir.VectorType(_I32, 32), range(32)))
        return builder.trunc(w, _V32I8)
    return i8x32(arr, idx, s, clamp), cg


@intrinsic
def i8sums(typingctx, v):
    """(sum of bytes 0-15, sum of bytes 16-31) of v as signed bytes (int64s)."""
    if v != i8x32:
        return None
    rty = types.UniTuple(types.int64, 2)

    def cg(ctx, builder, sig, args):
        v16 = ir.VectorType(_I32, 16)
        red = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [v16]), "llvm.vector.reduce.add.v16i32")
        out = []
        for h in range(2):
            part = builder.shuffle_vector(args[0], ir.Constant(_V32I8, ir.Undefined),
                                          _const_vec(ir.VectorType(_I32, 16), range(16 * h, 16 * h + 16)))
            out.append(builder.sext(builder.call(red, [builder.sext(part, ir.VectorType(_I32, 16))]), ir.IntType(64)))
        return ctx.make_tuple(builder, rty, out)
    return rty(v), cg


@intrinsic
def i8store(typingctx, arr, idx, v, stride):
    """Store v into an int8 row: bytes 4g..4g+3 at arr[idx + stride * g], g < 8 (stride 4: the 32
    bytes in a run; 32: one 4-byte unit per 32, the batch kernels' lanes)."""
    if not (_is_row(arr, types.int8) and isinstance(idx, types.Integer) and v == i8x32
            and isinstance(stride, types.Integer)):
        return None

    def cg(ctx, builder, sig, args):
        ary = ctx.make_array(sig.args[0])(ctx, builder, args[0])
        i = ctx.cast(builder, args[1], sig.args[1], types.intp)
        st = ctx.cast(builder, args[3], sig.args[3], types.intp)
        u = builder.bitcast(args[2], _V8I32)
        for g in range(8):
            p = builder.gep(ary.data, [builder.add(i, builder.mul(st, ir.Constant(st.type, g)))])
            builder.store(builder.extract_element(u, ir.Constant(_I32, g)), builder.bitcast(p, ir.PointerType(_I32)), align=1)
        return ctx.get_dummy_value()
    return types.none(arr, idx, v, stride), cg
