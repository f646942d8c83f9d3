"""Tile bodies of the CPU matmul: panel packing, the register-blocked micro-kernel, the epilogue.

Layout. ``pack_panels`` copies an operand, seen as ``(batch, rows, K)`` with any strides and any
float storage dtype, into a flat buffer in the compute dtype: K is cut into blocks of ``bk``
and each block holds ``rows_p / width`` panels of ``width`` rows stored k-major (element
``(k, r)`` of a panel at ``k * width + r``), rows past the end zero-filled. A is packed with
``width = MR`` (12 rows), B (as B^T) with ``width = NR`` (two vectors: 32 float32 or 16
float64 columns). The BK x BN block of B that a tile consumes is therefore one contiguous run.

Micro-kernel. ``micro_tile`` is written as LLVM IR (a Numba intrinsic) because Numba turns
LLVM's SLP vectorizer off and the loop vectorizer cannot keep a 2-D accumulator in registers:
it holds the MR x NR tile in 24 vector registers, and for each k loads two vectors of B,
broadcasts 12 elements of A and issues 24 FMAs (the classic BLIS outer-product kernel). Each
output element is a plain sequential FMA chain over k, so the summation order is fixed by K
alone: results are bitwise the same for any thread count and tile shape.

Wide vectors. LLVM's tuning for recent Intel cores prefers 256-bit vectors and would split our
512-bit IR into ymm halves; ``micro_tile`` marks the function that calls it with
``prefer-vector-width=512`` (llvmlite has no API for string attributes, so it adds them to the
attribute set directly). On a machine without AVX-512 the vectors are legalized to narrower
ones and the kernel stays correct.

Tiles. ``gemm_tiles`` runs ``prange`` over (batch, tile row, tile column): per tile it walks
the K blocks in order, calls ``micro_tile`` for every MR x NR micro-tile (B micro-panel outer,
so it stays in L1 while A's panels stream from L2), accumulating in a per-tile buffer; then
``finish_rows`` applies the epilogue to the tile while it is in cache and stores it:
``alpha * acc + beta * c + bias -> activation -> + residual``.
"""

from __future__ import annotations

import math
from string import Template
from types import ModuleType

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from tsol import dtypes
from tsol.kernels.cpu.jit import generated_module, scalar_jit
from tsol.kernels.cpu.scalar import exp_f32, f32_as_i32, i32_as_f32, storage_kind

MR = 12
"""Rows of the micro-tile: 12 x 2 accumulator vectors plus 2 B vectors and one broadcast fit
the 32 vector registers of AVX-512."""

VECTORS = 2
"""Vectors across the micro-tile's columns."""

VECTOR_BYTES = 64


def panel_width(dt: np.dtype) -> int:
    """NR: columns of the micro-tile for compute dtype ``dt`` (32 float32, 16 float64)."""
    return VECTORS * VECTOR_BYTES // np.dtype(dt).itemsize


# --- the micro-kernel ------------------------------------------------------------------------

def _micro_ir(context, builder, sig, args):
    attrs = builder.function.attributes
    set.add(attrs, '"prefer-vector-width"="512"')
    set.add(attrs, '"min-legal-vector-width"="512"')
    dt = sig.args[0].dtype
    fty = context.get_value_type(dt)
    width = VECTOR_BYTES // (dt.bitwidth // 8)
    nr = VECTORS * width
    vty = ir.VectorType(fty, width)
    i64 = ir.IntType(64)

    def const(v):
        return ir.Constant(i64, v)

    ap, bp, ct = (context.make_array(sig.args[i])(context, builder, args[i]).data
                  for i in (0, 2, 5))
    a_off, b_off, kc, c_off, ldc = (args[i] for i in (1, 3, 4, 6, 7))
    abase, bbase, cbase = builder.gep(ap, [a_off]), builder.gep(bp, [b_off]), \
        builder.gep(ct, [c_off])

    def vec_ptr(base, index):
        return builder.bitcast(builder.gep(base, [index]), vty.as_pointer())

    c_ptrs = [vec_ptr(cbase, builder.add(builder.mul(ldc, const(i)), const(v * width)))
              for i in range(MR) for v in range(VECTORS)]
    init = [builder.load(p, align=dt.bitwidth // 8) for p in c_ptrs]
    entry = builder.block
    body = builder.append_basic_block("micro_k")
    done = builder.append_basic_block("micro_done")
    builder.cbranch(builder.icmp_signed(">", kc, const(0)), body, done)

    builder.position_at_end(body)
    k = builder.phi(i64)
    k.add_incoming(const(0), entry)
    acc = []
    for value in init:
        phi = builder.phi(vty)
        phi.add_incoming(value, entry)
        acc.append(phi)
    b_row = builder.mul(k, const(nr))
    b_vecs = [builder.load(vec_ptr(bbase, builder.add(b_row, const(v * width))),
                           align=dt.bitwidth // 8) for v in range(VECTORS)]
    a_row = builder.mul(k, const(MR))
    undef = ir.Constant(vty, ir.Undefined)
    splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty] * 3),
        f"llvm.fma.v{width}{'f32' if dt.bitwidth == 32 else 'f64'}")
    new = []
    for i in range(MR):
        a = builder.load(builder.gep(abase, [builder.add(a_row, const(i))]))
        a = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                                   undef, splat_mask)
        new += [builder.call(fma, [a, b_vecs[v], acc[i * VECTORS + v]]) for v in range(VECTORS)]
    k_next = builder.add(k, const(1))
    last = builder.block
    k.add_incoming(k_next, last)
    for phi, value in zip(acc, new, strict=True):
        phi.add_incoming(value, last)
    builder.cbranch(builder.icmp_signed("<", k_next, kc), body, done)

    builder.position_at_end(done)
    results = []
    for before, after in zip(init, new, strict=True):
        phi = builder.phi(vty)
        phi.add_incoming(before, entry)
        phi.add_incoming(after, last)
        results.append(phi)
    for value, p in zip(results, c_ptrs, strict=True):
        builder.store(value, p, align=dt.bitwidth // 8)
    return context.get_dummy_value()


@intrinsic
def micro_tile(typingctx, ap, a_off, bp, b_off, kc, ct, c_off, ldc):
    """``ct[c_off + i*ldc + j] += sum_k ap[a_off + k*MR + i] * bp[b_off + k*NR + j]`` for the
    MR x NR micro-tile; ``ap``, ``bp``, ``ct``: 1-D C-contiguous float32 or float64 buffers."""
    arrays = (ap, bp, ct)
    if not all(isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" for t in arrays):
        return None
    if ap.dtype not in (types.float32, types.float64) or len({t.dtype for t in arrays}) != 1:
        return None
    sig = types.none(ap, types.intp, bp, types.intp, types.intp, ct, types.intp, types.intp)
    return sig, _micro_ir


# --- float32 activation helpers ----------------------------------------------------------------

@scalar_jit
def erfc_half_f32(x):
    """erfc(|x| / sqrt(2)) in float32: Numerical Recipes' erfcc (relative error < 1.2e-7),
    ``t * exp(-z*z + P(t))`` with ``t = 1 / (1 + z/2)``.

    The exponent ``z*z = x*x / 2`` is formed from ``x`` split as ``xh + xl`` (``xh`` holding 12
    significant bits, so ``xh*xh`` is exact): rounding ``x / sqrt(2)`` or ``x*x`` instead would
    cost ``z*z`` ulps of relative error, 1e-5 in GELU's negative tail. Past |x| = 12.7 the
    result (below 1e-36) is flushed to 0 after clamping x: subnormal intermediates would cost a
    microcode assist each, several times the whole evaluation.
    """
    a = abs(x)
    ac = a if a < np.float32(12.7) else np.float32(12.7)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.35355339) * ac)
    p = np.float32(0.17087277)
    p = p * t + np.float32(-0.82215223)
    p = p * t + np.float32(1.48851587)
    p = p * t + np.float32(-1.13520398)
    p = p * t + np.float32(0.27886807)
    p = p * t + np.float32(-0.18628806)
    p = p * t + np.float32(0.09678418)
    p = p * t + np.float32(0.37409196)
    p = p * t + np.float32(1.00002368)
    p = p * t + np.float32(-1.26551223)
    ah = i32_as_f32(f32_as_i32(ac) & np.int32(-4096))
    e = t * exp_f32(np.float32(-0.5) * ah * ah) \
        * exp_f32(np.float32(-0.5) * (ac - ah) * (ac + ah) + p)
    if a > np.float32(12.7):
        e = np.float32(0.0)
    return e


@scalar_jit
def erfc_half_f64(x):
    """erfc(|x| / sqrt(2)) in float64."""
    return math.erfc(abs(x) * 0.7071067811865476)


# --- generated per storage kind ------------------------------------------------------------------

STORAGE = {
    "f64": dict(LOAD="", STORE="", CT="np.float64", EXP="math.exp", ERFC="erfc_half_f64"),
    "f32": dict(LOAD="", STORE="np.float32", CT="np.float32", EXP="exp_f32",
                ERFC="erfc_half_f32"),
    "f16": dict(LOAD="load_f16", STORE="store_f16", CT="np.float32", EXP="exp_f32",
                ERFC="erfc_half_f32"),
    "bf16": dict(LOAD="load_bf16", STORE="store_bf16", CT="np.float32", EXP="exp_f32",
                 ERFC="erfc_half_f32"),
}
EXP_RANGE = {"np.float32": ("-88.0", "80.0"), "np.float64": ("-700.0", "700.0")}
"""Exponent clamp for ``x / (1 + exp(-u))`` per compute type: exp(-u) stays normal (subnormal
results are slow) while the quotient changes by less than 1e-35 relative to |x|."""

ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
"""Activation codes the kernels take."""

TEMPLATE = '''"""Generated by tsol.kernels.cpu.linalg_tiles for storage kind $KIND; do not edit."""
import math

import numpy as np
from numba import prange

from tsol.kernels.cpu.jit import kernel_jit
from tsol.kernels.cpu.linalg_tiles import MR, erfc_half_f32, erfc_half_f64, micro_tile  # noqa
from tsol.kernels.cpu.scalar import exp_f32, load_bf16, load_f16, store_bf16, store_f16  # noqa


@kernel_jit(parallel=True)
def pack_panels(src, dst, bk, width):
    """Pack ``src[0]`` (batch, rows, K), any strides, $KIND storage, into ``dst`` (batch,
    rows_p * K) as k-major panels of ``width`` rows per K block of ``bk`` (module doc).
    ``src`` has a leading length-2 axis of stride 0, like the epilogue operands."""
    nb, rows, K = src.shape[1:]
    rows_p = (rows + width - 1) // width * width
    npan = rows_p // width
    nkb = (K + bk - 1) // bk
    k_inner = abs(src.strides[3]) <= abs(src.strides[2])
    for task in prange(nb * nkb * npan):
        b = task // (nkb * npan)
        kb = task // npan % nkb
        p = task % npan
        k0 = kb * bk
        kc = min(bk, K - k0)
        start = rows_p * k0 + p * width * kc
        d = dst[b, start:start + width * kc]
        r_end = min(width, rows - p * width)
        # Walk the operand along its contiguous axis; the panel is small enough for L1.
        if k_inner:
            for r in range(r_end):
                s = src[0, b, p * width + r, k0:k0 + kc]
                for k in range(kc):
                    d[k * width + r] = $LOAD(s[k])
        else:
            for k in range(kc):
                s = src[0, b, p * width:p * width + r_end, k0 + k]
                for r in range(r_end):
                    d[k * width + r] = $LOAD(s[r])
        for k in range(kc):
            for r in range(r_end, width):
                d[k * width + r] = 0


@kernel_jit(error_model="numpy")
def finish_rows(ct, ldc, rows, cols, out, b, i0, j0, alpha, beta, cterm, bias, resid, act,
                has_c, has_bias, has_res):
    """Epilogue of one tile held in ``ct``: alpha, beta * c, bias, activation, residual; then
    store rows i0:i0+rows, columns j0:j0+cols of ``out[b]`` ($KIND). Epilogue operands are
    (2, batch, M, N) views (see ``_epilogue_view``). One loop per step, so each vectorizes."""
    zero = $CT(0.0)
    half = $CT(0.5)
    one = $CT(1.0)
    for r in range(rows):
        row = ct[r * ldc:r * ldc + cols]
        i = i0 + r
        if alpha != one:
            for j in range(cols):
                row[j] = row[j] * alpha
        if has_c:
            c_row = cterm[0, b, i, j0:j0 + cols]
            for j in range(cols):
                row[j] = row[j] + beta * c_row[j]
        if has_bias:
            b_row = bias[0, b, i, j0:j0 + cols]
            for j in range(cols):
                row[j] = row[j] + b_row[j]
        if act == 1:
            for j in range(cols):
                v = row[j]
                row[j] = zero if v < zero else v
        elif act == 2:
            # x * Phi(x) through erfc of |x| / sqrt(2): accurate on the negative tail.
            for j in range(cols):
                v = row[j]
                e = $ERFC(v)
                row[j] = v * (one - half * e) if v >= zero else v * (half * e)
        elif act >= 3:
            # gelu_tanh: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), with no cancellation;
            # silu: x / (1 + exp(-x)). The exponent is clamped (EXP_RANGE).
            for j in range(cols):
                v = row[j]
                u = $CT(1.5957691216057308) * (v + $CT(0.044715) * v * v * v) if act == 3 else v
                u = $CT($EXP_HI) if u > $CT($EXP_HI) else u
                u = $CT($EXP_LO) if u < $CT($EXP_LO) else u
                row[j] = v / (one + $EXP(-u))
        if has_res:
            r_row = resid[0, b, i, j0:j0 + cols]
            for j in range(cols):
                row[j] = row[j] + r_row[j]
        o_row = out[b, i, j0:j0 + cols]
        for j in range(cols):
            o_row[j] = $STORE(row[j])


@kernel_jit(parallel=True, error_model="numpy")
def gemm_tiles(ap, bp, amap, bmap, out, K, bm, bn, bk, nr, alpha, beta, cterm, bias, resid,
               act, has_c, has_bias, has_res):
    """``out[b] = epilogue(A[amap[b]] @ B[bmap[b]])`` from packed ``ap``/``bp`` (module doc);
    ``out`` is (batch, M, N) $KIND; tiles of bm x bn (multiples of MR x nr), K blocks of bk."""
    nbatch, M, N = out.shape
    m_pad = (M + MR - 1) // MR * MR
    n_pad = (N + nr - 1) // nr * nr
    nkb = (K + bk - 1) // bk
    tm = (M + bm - 1) // bm
    tn = (N + bn - 1) // bn
    for task in prange(nbatch * tm * tn):
        b = task // (tm * tn)
        i0 = task // tn % tm * bm
        j0 = task % tn * bn
        rows = min(bm, M - i0)
        cols = min(bn, N - j0)
        rows_p = (rows + MR - 1) // MR * MR
        cols_p = (cols + nr - 1) // nr * nr
        a = ap[amap[b]]
        bb = bp[bmap[b]]
        ct = np.zeros(bm * bn, ap.dtype)
        for kb in range(nkb):
            k0 = kb * bk
            kc = min(bk, K - k0)
            for jr in range(0, cols_p, nr):
                b_off = n_pad * k0 + (j0 + jr) * kc
                for ir in range(0, rows_p, MR):
                    micro_tile(a, m_pad * k0 + (i0 + ir) * kc, bb, b_off, kc, ct, ir * bn + jr,
                               bn)
        finish_rows(ct, bn, rows, cols, out, b, i0, j0, alpha, beta, cterm, bias, resid, act,
                    has_c, has_bias, has_res)
'''

_modules: dict[str, ModuleType] = {}


def tile_module(dt: np.dtype) -> ModuleType:
    """The generated pack/tile/epilogue kernels for storage dtype ``dt`` (compiled lazily)."""
    kind = storage_kind(dt)
    if kind == "native":
        kind = "f64" if dt == dtypes.float64 else "f32"
    if kind not in _modules:
        lo, hi = EXP_RANGE[STORAGE[kind]["CT"]]
        source = Template(TEMPLATE).substitute(KIND=kind, EXP_LO=lo, EXP_HI=hi, **STORAGE[kind])
        _modules[kind] = generated_module(f"linalg_{kind}", source)
    return _modules[kind]
