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

from llvmlite import ir
from numba import types
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


def _bits_i32(ctx, builder, aty, aval, i, shift, mask):
    """(zext(arr[i:i+8]) >> shift) & mask as <8 x i32> (32-bit lanes: x86 has no byte shifts)."""
    v8i32 = ir.VectorType(_I32, 8)
    v = builder.load(_vec_ptr(ctx, builder, aty, aval, i, ir.IntType(8)), align=1)
    v = builder.zext(v, v8i32)
    v = builder.lshr(v, _splat(builder, builder.trunc(shift, _I32), v8i32))
    return builder.and_(v, _splat(builder, builder.trunc(mask, _I32), v8i32))


@intrinsic
def vq6x4(typingctx, arr, lo, hi):
    """The four Q6_K 8-value runs that share their bytes: run p (0..3) has
    ((arr[lo + 32 (p % 2) + j] >> 4 (p // 2)) & 15) | (((arr[hi + j] >> 2p) & 3) << 4), j < 8,
    as a tuple of 4 float32 vectors (unsigned values 0..63).  3 loads for 32 values."""
    if not (_is_row(arr, types.uint8) and isinstance(lo, types.Integer) and isinstance(hi, types.Integer)):
        return None
    rty = types.UniTuple(f32x8, 4)

    def cg(ctx, builder, sig, args):
        v8i32 = ir.VectorType(_I32, 8)
        c = lambda n: _splat(builder, ir.Constant(_I32, n), v8i32)     # noqa: E731
        i_lo = ctx.cast(builder, args[1], sig.args[1], types.intp)
        i_hi = ctx.cast(builder, args[2], sig.args[2], types.intp)

        def ld(i):
            v = builder.load(_vec_ptr(ctx, builder, sig.args[0], args[0], i, ir.IntType(8)), align=1)
            return builder.zext(v, v8i32)
        l0 = ld(i_lo)
        l1 = ld(builder.add(i_lo, ir.Constant(i_lo.type, 32)))
        h = ld(i_hi)
        out = []
        for p in range(4):
            low = l0 if p % 2 == 0 else l1
            low = builder.and_(low if p < 2 else builder.lshr(low, c(4)), c(15))
            # bits 2p..2p+1 of h moved to bits 4..5
            sh = 4 - 2 * p
            high = builder.shl(h, c(sh)) if sh > 0 else (builder.lshr(h, c(-sh)) if sh < 0 else h)
            high = builder.and_(high, c(0x30))
            out.append(builder.sitofp(builder.or_(low, high), _V8F))
        return ctx.make_tuple(builder, rty, out)
    return rty(arr, lo, hi), cg


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
def vstore(typingctx, arr, idx, v):
    """arr[idx:idx+8] = v for a float32 row."""
    if not (_is_row(arr, types.float32) and isinstance(idx, types.Integer) and v == f32x8):
        return None

    def cg(ctx, builder, sig, args):
        i = ctx.cast(builder, args[1], sig.args[1], types.intp)
        builder.store(args[2], _vec_ptr(ctx, builder, sig.args[0], args[0], i, _F), align=4)
        return ctx.get_dummy_value()
    return types.none(arr, idx, f32x8), cg
