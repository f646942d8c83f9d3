"""Shared pieces of the attention and loss CPU kernels: register-tile intrinsics, templates.

- ``tile_fma``: an MR x NR register-tile multiply-accumulate written in LLVM IR, the inner step
  of flash attention's ``Q K^T`` and ``P V`` (Numba cannot keep array accumulators in
  registers: every loop-carried array access goes through memory).
- ``row_max`` / ``row_sum``: vector reductions of a row in NR lanes, then a fixed halving tree.
- ``render``: generates a kernel module from a template for one storage kind (float64, float32,
  or the "half" kind shared by float16 and bfloat16).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from tsol.kernels.cpu.jit import render_template

MR = 4
"""Rows of a register tile: MR x NR accumulators, NR = 128 bytes of the compute dtype."""

TILE_BYTES = 128


def _is_matrix(t: Any) -> bool:
    return isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" \
        and t.dtype in (types.float32, types.float64)


@intrinsic
def tile_fma(typingctx, c, a, b, i, j, kdim):
    """``c[i:i+MR, j:j+NR] += a[i:i+MR, :kdim] @ b[:kdim, j:j+NR]`` on C-contiguous matrices.

    Written in LLVM IR because Numba cannot keep array accumulators in registers: the MR
    vectors of NR lanes live in allocas that LLVM promotes to registers, each step loads one
    row of ``b`` once and broadcasts one element of each row of ``a`` (explicit ``llvm.fma``).
    """
    if not all(_is_matrix(t) and t.dtype == c.dtype for t in (c, a, b)):
        return None
    sig = types.void(c, a, b, i, j, kdim)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, v)
                  for t, v in zip(signature.args[:3], args[:3], strict=True)]
        row0, col0, depth = args[3], args[4], args[5]
        elt = context.get_value_type(signature.args[0].dtype)
        nr = TILE_BYTES // context.get_abi_sizeof(elt)
        vec = ir.VectorType(elt, nr)
        lds = [cgutils.unpack_tuple(builder, x.shape, 2)[1] for x in arrays]
        name = f"llvm.fma.v{nr}{'f32' if nr * 4 == TILE_BYTES else 'f64'}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             name)
        undef = ir.Constant(vec, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), nr), [0] * nr)
        lane0 = ir.Constant(ir.IntType(32), 0)
        slots, cptrs, arows = [], [], []
        for r in range(MR):
            row = builder.add(row0, ir.Constant(row0.type, r))
            cp = builder.gep(arrays[0].data, [builder.add(builder.mul(row, lds[0]), col0)])
            cp = builder.bitcast(cp, vec.as_pointer())
            slot = cgutils.alloca_once(builder, vec)
            builder.store(builder.load(cp, align=4), slot)
            slots.append(slot)
            cptrs.append(cp)
            arows.append(builder.gep(arrays[1].data, [builder.mul(row, lds[1])]))
        bbase = builder.gep(arrays[2].data, [col0])
        with cgutils.for_range(builder, depth) as loop:
            d = loop.index
            bp = builder.gep(bbase, [builder.mul(d, lds[2])])
            bv = builder.load(builder.bitcast(bp, vec.as_pointer()), align=4)
            for r in range(MR):
                av = builder.insert_element(undef, builder.load(builder.gep(arows[r], [d])),
                                            lane0)
                av = builder.shuffle_vector(av, undef, splat)
                builder.store(builder.call(fma, [av, bv, builder.load(slots[r])]), slots[r])
        for r in range(MR):
            builder.store(builder.load(slots[r]), cptrs[r], align=4)
        return context.get_dummy_value()

    return sig, codegen


def _row_fold(kind: str) -> Any:
    """An intrinsic reducing ``s[i, :n]`` (n a multiple of NR) in NR lanes, then a fixed tree."""

    def combine(builder: ir.IRBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
        if kind == "sum":
            return builder.fadd(a, b)
        return builder.select(builder.fcmp_ordered(">", b, a), b, a)   # NaN-ignoring, as `>`

    @intrinsic
    def fold(typingctx, s, i, n):
        if not _is_matrix(s):
            return None
        sig = s.dtype(s, i, n)

        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            row, n = args[1], args[2]
            elt = context.get_value_type(signature.args[0].dtype)
            nr = TILE_BYTES // context.get_abi_sizeof(elt)
            vec = ir.VectorType(elt, nr)
            ld = cgutils.unpack_tuple(builder, arr.shape, 2)[1]
            base = builder.gep(arr.data, [builder.mul(row, ld)])
            slot = cgutils.alloca_once(builder, vec)
            start = 0.0 if kind == "sum" else float("-inf")
            builder.store(ir.Constant(vec, [start] * nr), slot)
            step = ir.Constant(n.type, nr)
            with cgutils.for_range(builder, builder.sdiv(n, step)) as loop:
                p = builder.gep(base, [builder.mul(loop.index, step)])
                v = builder.load(builder.bitcast(p, vec.as_pointer()), align=4)
                builder.store(combine(builder, builder.load(slot), v), slot)
            acc, width = builder.load(slot), nr
            undef = ir.Constant(vec, ir.Undefined)
            while width > 1:
                width //= 2
                lo = builder.shuffle_vector(acc, undef, ir.Constant(
                    ir.VectorType(ir.IntType(32), width), list(range(width))))
                hi = builder.shuffle_vector(acc, undef, ir.Constant(
                    ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
                acc, undef = combine(builder, lo, hi), ir.Constant(lo.type, ir.Undefined)
            return builder.extract_element(acc, ir.Constant(ir.IntType(32), 0))

        return sig, codegen

    return fold


row_max = _row_fold("max")
row_sum = _row_fold("sum")

# Per storage kind: compute type, element load/store and math. float16 and bfloat16 share the
# "half" kind: both are uint16 to Numba and a ``bf16`` flag picks the conversion, so one
# compilation serves both. Every kernel takes that flag; native kinds ignore it.
STORAGE = {
    "f64": dict(CT="np.float64", LOAD="as_is", STORE="as_is", EXP="math.exp", LOG="math.log"),
    "f32": dict(CT="np.float32", LOAD="as_is", STORE="to_f32", EXP="exp_f32", LOG="log_f32"),
    "half": dict(CT="np.float32", LOAD="load_half", STORE="store_half", EXP="exp_f32",
                 LOG="log_f32"),
}

HEADER = '''"""Generated by tsol.kernels.cpu.$FAMILY for storage kind $KIND; do not edit."""
import math

import numpy as np
from numba import prange

from tsol.kernels.cpu.attention_tiles import MR, row_max, row_sum, tile_fma  # noqa: F401
from tsol.kernels.cpu.jit import kernel_jit, scalar_jit
from tsol.kernels.cpu.scalar import (exp_f32, load_bf16, load_f16, log_f32,  # noqa: F401
                                     store_bf16, store_f16)

LANES = 16
NR = $NR


@scalar_jit
def as_is(x, bf16):
    return x


@scalar_jit
def to_f32(x, bf16):
    return np.float32(x)


@scalar_jit
def load_half(u, bf16):
    return load_bf16(u) if bf16 else load_f16(u)


@scalar_jit
def store_half(x, bf16):
    return store_bf16(x) if bf16 else store_f16(x)
'''


def render(family: str, template: str, kind: str) -> ModuleType:
    """Generate and import ``template``'s kernels (after the shared header) for one kind."""
    nr = TILE_BYTES // (8 if kind == "f64" else 4)
    return render_template(f"{family}_{kind}", HEADER + template, **STORAGE[kind], FAMILY=family,
                           KIND=kind, NR=str(nr))
