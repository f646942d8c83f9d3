"""Vectorizable float32 math for elementwise kernels, and the tile loaders/storers they share.

libm's ``sinf``/``tanhf``/``powf`` are scalar calls that stop LLVM from vectorizing a loop, so
float32 kernels use the branch-free versions here (range reduction plus polynomial or rational;
every branch is a select). Each is within a few float32 ulp of the float64 result on the range
its docstring states; the elementwise kernels route the rest to exact paths (libm sin/cos for
|x| > 2**20, the float64-internal ``pow_f32`` for |y| > 4).

Most helpers are ``vector_jit`` (plain ``njit``), not ``scalar_jit``: LLVM inlines and
vectorizes them all the same, while Numba's IR-level inlining (``inline="always"``) makes a
kernel with many op bodies slower to compile. The pow helpers are the exception: too large for
LLVM's inliner, they must be inlined by Numba or the kernel loop would not vectorize.

The second half is the storage side of the elementwise engine: ``io_source(kind)`` generates,
per compute type, ``operand`` (one operand's tile as a contiguous compute-typed array: a
zero-copy slice, or gathered and converted) and ``store`` (convert a computed tile into the
output's storage dtype). Operands reach kernels as raw bytes plus a storage-kind code, so one
compiled kernel serves every storage dtype.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from tsol import dtypes
from tsol.kernels.cpu.jit import scalar_jit
from tsol.kernels.cpu.scalar import exp_f32, f32_as_i32, i32_as_f32, log1p_poly_f32, log_f32

vector_jit = functools.partial(numba.njit, cache=True, error_model="numpy",
                               fastmath={"contract"})
"""A non-IR-inlined helper (LLVM still inlines it). ``error_model="numpy"``: x/0 is inf;
``contract``: polynomials use FMA (more accurate, and NaN/inf semantics are kept)."""

# fdlibm's pi/2 split: PIO2_HI has 33 significant bits, so k * PIO2_HI is exact for |k| < 2**20.
PIO2_HI = 1.57079632673412561417e+00
PIO2_LO = 6.07710050650619224932e-11
SINCOS_EXACT_LIMIT = 1048576.0
"""sin_f32/cos_f32 are accurate for |x| <= this; kernels send larger |x| to libm in float64."""


@vector_jit
def exp_v(x):
    return exp_f32(x)


@vector_jit
def log_v(x):
    return log_f32(x)


@vector_jit
def sin_f32(x):
    """sin of float32 ``x`` for |x| <= 2**20: float64 Cody-Waite reduction, Cephes polynomials."""
    r, q = _reduce_pio2(x)
    s, c = _sin_cos_poly(r)
    y = c if q == np.float32(1.0) or q == np.float32(3.0) else s
    if q >= np.float32(2.0):
        y = -y
    return y


@vector_jit
def cos_f32(x):
    """cos of float32 ``x`` for |x| <= 2**20 (see sin_f32)."""
    r, q = _reduce_pio2(x)
    s, c = _sin_cos_poly(r)
    y = s if q == np.float32(1.0) or q == np.float32(3.0) else c
    if q == np.float32(1.0) or q == np.float32(2.0):
        y = -y
    return y


@vector_jit
def _reduce_pio2(x):
    """x = k pi/2 + r with |r| <= pi/4 (float64 Cody-Waite, r rounded to float32); q = k mod 4
    as a float (an int conversion of a NaN k would be poison in LLVM)."""
    xd = np.float64(x)
    k = np.floor(xd * 0.6366197723675814 + 0.5)
    r = np.float32((xd - k * PIO2_HI) - k * PIO2_LO)
    q = np.float32(k - 4.0 * np.floor(k * 0.25))
    return r, q


@vector_jit
def _sin_cos_poly(r):
    z = r * r
    s = ((np.float32(-1.9515295891e-4) * z + np.float32(8.3321608736e-3)) * z
         + np.float32(-1.6666654611e-1)) * z * r + r
    c = ((np.float32(2.443315711809948e-5) * z + np.float32(-1.388731625493765e-3)) * z
         + np.float32(4.166664568298827e-2)) * z * z - np.float32(0.5) * z + np.float32(1.0)
    return s, c


@vector_jit
def tanh_f32(x):
    """tanh for float32: the odd rational x P(x^2) / Q(x^2) on [-7.9, 7.9] (as in Eigen, XLA
    and MLAS; within 5 ulp), +-1 beyond; odd, so small |x| keeps its relative accuracy."""
    c = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    z = c * c
    p = np.float32(-2.76076847742355e-16)
    p = p * z + np.float32(2.00018790482477e-13)
    p = p * z + np.float32(-8.60467152213735e-11)
    p = p * z + np.float32(5.12229709037114e-08)
    p = p * z + np.float32(1.48572235717979e-05)
    p = p * z + np.float32(6.37261928875436e-04)
    p = p * z + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * z + np.float32(1.18534705686654e-04)
    q = q * z + np.float32(2.26843463243900e-03)
    q = q * z + np.float32(4.89352518554385e-03)
    y = c * p / q
    if abs(x) >= np.float32(7.90531110763549805):     # tanh rounds to +-1 within 2 ulp
        y = np.float32(1.0) if x > np.float32(0.0) else np.float32(-1.0)
    if x != x:
        y = x
    return y


@vector_jit
def erf_f32(x):
    """erf for float32: the odd rational x P(x^2) / Q(x^2) on [-4, 4] (as in Eigen and XLA)."""
    c = min(max(x, np.float32(-4.0)), np.float32(4.0))
    z = c * c
    p = np.float32(-2.72614225801306e-10)
    p = p * z + np.float32(2.77068142495902e-08)
    p = p * z + np.float32(-2.10102402082508e-06)
    p = p * z + np.float32(-5.69250639462346e-05)
    p = p * z + np.float32(-7.34990630326855e-04)
    p = p * z + np.float32(-2.95459980854025e-03)
    p = p * z + np.float32(-1.60960333262415e-02)
    q = np.float32(-1.45660718464996e-05)
    q = q * z + np.float32(-2.13374055278905e-04)
    q = q * z + np.float32(-1.68282697438203e-03)
    q = q * z + np.float32(-7.37332916720468e-03)
    q = q * z + np.float32(-1.42647390514189e-02)
    y = c * p / q
    if x != x:
        y = x
    return y


@scalar_jit
def _log2_abs_f64(x):
    """log2|x| in float64 (relative error ~1e-11) for float32 ``x``: pow_f32's first half.

    |x| = 2**k z with z in [0.699, 1.398); log2 z = 2 atanh(s) / ln 2 with s = (z-1)/(z+1),
    |s| < 0.18, by fdlibm's series in s**2 (five terms). 1/(z+1) is a float32 division refined
    by one Newton step in float64, which vectorizes better than a float64 division.
    """
    a = abs(x)
    k0 = 0.0
    if a < np.float32(1.1754944e-38):                   # subnormal: scale into normal range
        a = a * np.float32(8388608.0)
        k0 = -23.0
    ix = f32_as_i32(a)
    tmp = ix - np.int32(0x3F330000)
    top = tmp & np.int32(-0x800000)
    f = np.float64(i32_as_f32(ix - top) - np.float32(1.0))     # exact: z - 1
    d = f + 2.0
    rc = np.float64(np.float32(1.0) / np.float32(d))
    rc = rc * (2.0 - d * rc)
    s = f * rc
    z = s * s
    p = 1.818357216161805012e-01
    p = p * z + 2.222219843214978396e-01
    p = p * z + 2.857142874366239149e-01
    p = p * z + 3.999999999940941908e-01
    p = p * z + 6.666666666666735130e-01
    y = np.float64(np.float32(top >> np.int32(23))) + k0 \
        + (s + np.float64(0.5) * s * z * p) * 2.8853900817779268     # 2 / ln 2
    if a == np.float32(0.0):
        y = -np.inf
    if a == np.float32(np.inf) or a != a:
        y = np.float64(a)
    return y


@scalar_jit
def _exp2_split(r, k):
    """2**(r + k) in float32 for float32 ``r`` in [-1/2, 1/2] and int32 ``k`` in [-200, 200]:
    2**r by a polynomial (least-squares fit, relative error 2e-9 before rounding), 2**k in two
    float32 factors so that the whole range stays representable."""
    p = np.float32(1.5337577497120947e-04)
    p = p * r + np.float32(1.3399859890341759e-03)
    p = p * r + np.float32(9.618519805371761e-03)
    p = p * r + np.float32(5.550329014658928e-02)
    p = p * r + np.float32(2.4022646248340607e-01)
    p = p * r + np.float32(6.931471824645996e-01)
    p = p * r + np.float32(1.0)
    k1 = k >> np.int32(1)
    return p * i32_as_f32((k1 + np.int32(127)) << np.int32(23)) \
        * i32_as_f32((k - k1 + np.int32(127)) << np.int32(23))


@scalar_jit
def _exp2_f64_to_f32(t):
    """2**t rounded to float32 for float64 ``t``: t = k + r in float64, then 2**r by a float32
    polynomial (least-squares fit on [-1/2, 1/2], relative error 2e-9 before rounding)."""
    tc = min(max(t, -160.0), 130.0)
    k = np.floor(tc + 0.5)
    r = np.float32(tc - k)                              # |r| <= 1/2, exact enough in float32
    y = _exp2_split(r, np.int32(k))
    if t != t:
        y = np.float32(t)
    return y


@scalar_jit
def _pow_special(x, y, r):
    """C99 ``powf`` special cases applied to r = |x|**y: signs, NaNs, and the exact ones."""
    yint = np.floor(y) == y                            # +-inf count as even integers
    half = y * np.float32(0.5)
    yodd = yint & (np.floor(half) != half)
    if (f32_as_i32(x) < np.int32(0)) & yodd:           # sign bit set: x < 0 or x = -0.0
        r = -r
    if (x < np.float32(0.0)) & (x > np.float32(-np.inf)) & (not yint):
        r = np.float32(np.nan)
    if ((abs(x) == np.float32(1.0)) & (abs(y) == np.float32(np.inf))) | (y == np.float32(0.0)) \
            | (x == np.float32(1.0)):
        r = np.float32(1.0)
    return r


@scalar_jit
def pow_f32(x, y):
    """x**y for float32 with C99 ``powf`` special cases: 2**(y log2|x|) computed in float64,
    within about 1 ulp for every exponent.

    Inlined at Numba IR level (``scalar_jit``): as a separate function it is too large for
    LLVM to inline into a kernel loop, and the loop would then not vectorize (15x slower).
    """
    return _pow_special(x, y, _exp2_f64_to_f32(np.float64(y) * _log2_abs_f64(x)))


POW_FAST_LIMIT = 4.0
"""pow_small_f32 is accurate for |y| <= this; kernels use pow_f32 on tiles with larger |y|."""


@scalar_jit
def pow_small_f32(x, y):
    """x**y for float32 and |y| <= 4, all in float32 (3x faster than pow_f32), within ~3 ulp.

    log|x| = k ln2 + log(1 + f) with f in [sqrt(1/2) - 1, sqrt(2) - 1) by Cephes' logf
    polynomial; y k is split exactly (12-bit halves of y times the 9-bit k), so that only
    y log2(1 + f), at most 2 in size, carries rounding error into t = y log2|x|.
    """
    a = abs(x)
    kb = np.int32(0)
    if a < np.float32(1.1754944e-38):                   # subnormal: scale into normal range
        a = a * np.float32(8388608.0)
        kb = np.int32(-23)
    ix = f32_as_i32(a)
    tmp = ix - np.int32(0x3F3504F3)
    top = tmp & np.int32(-0x800000)
    k = np.float32((top >> np.int32(23)) + kb)
    f = i32_as_f32(ix - top) - np.float32(1.0)
    z = f * f
    ln1pf = f + (log1p_poly_f32(f) * f * z - np.float32(0.5) * z)
    ylm = (y * ln1pf) * np.float32(1.4426950408889634)
    yh = i32_as_f32(f32_as_i32(y) & np.int32(-4096))    # y = yh + yl, 12 bits each
    ph = yh * k
    pl = (y - yh) * k
    s = min(max(ph + ylm, np.float32(-200.0)), np.float32(200.0))
    n = np.floor(s + np.float32(0.5))
    r = ((ph - n) + ylm) + pl
    res = _exp2_split(r, np.int32(n))
    # |x| or |y| zero or infinite: |x|**y is 0 or inf by the sign of y log|x|.
    big = (a == np.float32(np.inf)) | (abs(y) == np.float32(np.inf)) | (a == np.float32(0.0))
    grows = (a > np.float32(1.0)) == (y > np.float32(0.0))
    if big:
        res = np.float32(np.inf) if grows else np.float32(0.0)
    if (a != a) | (y != y):
        res = np.float32(np.nan)
    return _pow_special(x, y, res)


@vector_jit
def ipow(x, y, one):
    """Integer x**y by squaring, wrapping like NumPy (``one`` is 1 in x's type; literals
    would promote uint64 to float64). Callers reject negative ``y`` up front."""
    result = one
    base = x
    e = y
    two = one + one
    while e > one - one:
        if e % two == one:
            result = result * base
        base = base * base
        e = e // two
    return result


@vector_jit
def fmax(a, b):
    """NumPy maximum: NaN if either is NaN."""
    return a if (a > b) | (a != a) else b


@vector_jit
def fmin(a, b):
    """NumPy minimum: NaN if either is NaN."""
    return a if (a < b) | (a != a) else b


@vector_jit
def f32_round_odd(d):
    """float64 -> float32 rounding to odd, so that a following float32 -> half rounding to
    nearest even rounds ``d`` correctly (no double rounding); NaN and inf pass through."""
    f = np.float32(d)
    if abs(np.float64(f)) > abs(d):                    # rounded away from zero: step back
        f = i32_as_f32(f32_as_i32(f) - np.int32(1))
    if np.float64(f) != d and d == d:
        f = i32_as_f32(f32_as_i32(f) | np.int32(1))
    return f


# --- storage kinds and the generated tile loaders/storers ------------------------------------

_I64 = types.int64
_PTR = types.CPointer(types.uint8)
TILE_SIGNATURE = types.void(*[_I64] * 8, *[_PTR, *[_I64] * 6] * 3, _PTR, *[_I64] * 5)
"""C signature of every generated elementwise tile function: (code, nin, scratch, t, nck, d1,
d2, block), then per operand (bytes, nbytes, kind, base, s0, s1, s2), then the output's (bytes,
nbytes, kind, base, s0, s1)."""


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the calling function with 512-bit registers.

    On AVX-512 CPUs LLVM's x86 tuning prefers 256-bit vectors (clang's default); the function
    attribute clang sets for ``-mprefer-vector-width=512`` lifts that for this one function,
    which doubles float32 math throughput (exp: 1.1 -> 0.75 ns per element per core). On CPUs
    without AVX-512 it changes nothing. llvmlite validates attribute names, so the string
    attribute is added to its set directly.
    """
    def codegen(context, builder, sig, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def call_tile(typingctx, address, args):
    """Call the tile function at ``address`` (a cfunc's ``.address``) with the tuple ``args``
    (``TILE_SIGNATURE``). A plain integer keeps the driver's dispatch on Numba's fast path; a
    cfunc object as the argument would be re-typed in Python on every call (~100 us)."""
    def codegen(context, builder, sig, call_args):
        fnty = ir.FunctionType(ir.VoidType(),
                               [context.get_value_type(t) for t in TILE_SIGNATURE.args])
        fn = builder.inttoptr(call_args[0], fnty.as_pointer())
        values = [builder.extract_value(call_args[1], i) for i in range(len(TILE_SIGNATURE.args))]
        builder.call(fn, values)
        return context.get_dummy_value()
    return types.none(address, args), codegen


@intrinsic
def data_ptr(typingctx, arr):
    """The data pointer of an array, as ``uint8*`` (for calling a tile function)."""
    def codegen(context, builder, sig, args):
        a = make_array(sig.args[0])(context, builder, args[0])
        return builder.bitcast(a.data, context.get_value_type(_PTR))
    return _PTR(arr), codegen


@intrinsic
def view_as(typingctx, raw, dtype):
    """``raw.view(dtype)`` for a 1-D contiguous byte array, built in place. Numba's own
    ``ndarray.view`` compiles a helper per call site, which made the loaders slow to build."""
    elem = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type
    ret = types.Array(elem, 1, "C", readonly=not raw.mutable)

    def codegen(context, builder, sig, args):
        src = make_array(sig.args[0])(context, builder, args[0])
        dst = make_array(ret)(context, builder)
        size = context.get_abi_sizeof(context.get_data_type(elem))
        itemsize = context.get_constant(types.intp, size)
        count = builder.sdiv(builder.extract_value(src.shape, 0), itemsize)
        data = builder.bitcast(src.data, dst.data.type)
        populate_array(dst, data=data, shape=[count], strides=[itemsize], itemsize=itemsize,
                       meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, ret, dst._getvalue())

    return ret(raw, dtype), codegen


KINDS: dict[np.dtype, int] = {dt: i for i, dt in enumerate([
    dtypes.bool_, dtypes.int8, dtypes.int16, dtypes.int32, dtypes.int64, dtypes.uint8,
    dtypes.uint16, dtypes.uint32, dtypes.uint64, dtypes.float16, dtypes.bfloat16,
    dtypes.float32, dtypes.float64])}
"""Storage-kind code of each dtype, as kernels see it."""

STORAGE_LOADS = {  # kind -> (numpy type name of the raw view, load expression of element ``u``)
    "bool": ("np.bool_", "u"), "int8": ("np.int8", "u"), "int16": ("np.int16", "u"),
    "int32": ("np.int32", "u"), "int64": ("np.int64", "u"), "uint8": ("np.uint8", "u"),
    "uint16": ("np.uint16", "u"), "uint32": ("np.uint32", "u"), "uint64": ("np.uint64", "u"),
    "float16": ("np.uint16", "load_f16(u)"), "bfloat16": ("np.uint16", "load_bf16(u)"),
    "float32": ("np.float32", "u"), "float64": ("np.float64", "u"),
}


def store_expr(kind: str, compute: str) -> str:
    """Expression converting compute-typed ``v`` into element ``kind``'s storage."""
    floaty = compute in ("float32", "float64")
    if kind == "bool":
        return "v != 0"
    if kind in ("float16", "bfloat16"):
        fn = "store_f16" if kind == "float16" else "store_bf16"
        return f"{fn}(v)" if compute == "float32" else f"{fn}(f32_round_odd(np.float64(v)))"
    if kind == "uint64":
        return "np.uint64(v)"
    if dtypes.dtype(kind).kind in "iu" and floaty:
        return "np.int64(v)"           # float -> int64 -> wrap, as NumPy's casts do on x86
    return "v"


def io_source(compute: np.dtype) -> str:
    """Source of the loader/storer module for one compute dtype."""
    convert, store = [], []
    for dt, code in KINDS.items():
        view, expr = STORAGE_LOADS[dt.name]
        cond = "if" if code == 0 else "elif"
        convert.append(f"    {cond} kind == {code}:\n        sv = view_as(src, {view})\n"
                       f"        for j in range(np.uint64(m)):\n            u = sv[j]\n"
                       f"            buf[j] = {expr}")
        store.append(f"    {cond} kind == {code}:\n"
                     f"        dv = view_as(raw, {view})[o:o + n]\n"
                     f"        for j in range(np.uint64(n)):\n            v = res[j]\n"
                     f"            dv[j] = {store_expr(dt.name, compute.name)}")
    sizes = tuple(dt.itemsize for dt in KINDS)
    return _IO_TEMPLATE.format(ct=f"np.{compute.name}", own=KINDS[compute], sizes=sizes,
                               convert="\n".join(convert), store="\n".join(store),
                               compute=compute.name)


# Loops run over an unsigned index: with a signed one Numba emits negative-index wraparound,
# which LLVM turns into gathers and scatters instead of contiguous vector loads and stores.
_IO_TEMPLATE = '''"""Generated: elementwise tile loaders/storers for compute dtype {compute}."""
import numpy as np

from tsol.kernels.cpu.elementwise_math import f32_round_odd, vector_jit, view_as
from tsol.kernels.cpu.scalar import load_bf16, load_f16, store_bf16, store_f16

SIZES = {sizes}


@vector_jit
def operand(raw, kind, p, s, n):
    """Elements p, p+s, ... (n of them) of an operand as a contiguous {compute} array: a view
    when the operand is {compute} with unit stride, else gathered and converted."""
    size = SIZES[kind]
    m = 1 if s == 0 else n                  # a broadcast operand: convert one, fill below
    if s == 1:
        if kind == {own}:
            return view_as(raw, {ct})[p:p + n]
        src = raw[p * size:(p + n) * size]
    else:
        src = np.empty(m * size, np.uint8)
        gather(raw, p, s, m, size, src)
    buf = np.empty(n, {ct})
{convert}
    if s == 0:
        v = buf[0]
        for j in range(np.uint64(n)):
            buf[j] = v
    return buf


@vector_jit
def gather(raw, p, s, m, size, dst):
    """Copy elements p, p+s, ... (m of them, ``size`` bytes each) contiguously into ``dst``."""
    if size == 1:
        gather_as(raw, p, s, m, dst)
    elif size == 2:
        gather_as(view_as(raw, np.uint16), p, s, m, view_as(dst, np.uint16))
    elif size == 4:
        gather_as(view_as(raw, np.uint32), p, s, m, view_as(dst, np.uint32))
    else:
        gather_as(view_as(raw, np.uint64), p, s, m, view_as(dst, np.uint64))


@vector_jit
def gather_as(src, p, s, m, dst):
    q = p
    for j in range(m):
        dst[j] = src[q]
        q += s


@vector_jit
def store(raw, kind, o, res, n):
    """Convert {compute} results into elements o..o+n of the output's storage."""
{store}
'''
