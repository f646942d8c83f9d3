"""CPU kernels for the elementwise ops: one generic engine, one table of scalar bodies.

Every op is a row of ``BODIES``: a scalar expression in ``x0, x1, x2`` (the operands, already
converted to the compute dtype) and ``F`` (the compute type, for constants). Math names in an
expression resolve per compute dtype (``COMPUTE``): float32 uses the vectorizable helpers of
``elementwise_math``, float64 uses libm through ``math``. Adding an op is one row here plus its
registration below.

The engine generates one module per (family, compute dtype) from ``TEMPLATE``: a C-callable
``tile`` function (a cached ``cfunc``) holding every body of the family behind a runtime op
code, so that one compile serves a whole family (Numba's per-kernel overhead, not the bodies,
dominates compile time). One ``prange`` driver, ``run_tiles``, calls any family's ``tile``
through its address; as a direct callee the tile would be re-optimized inside every driver
(measured: three quarters of the compile time). Operands reach ``tile`` as raw bytes plus a
storage-kind code (``elementwise_math.KINDS``), so one compiled kernel serves every storage
dtype: the tile loader hands back a zero-copy slice when an operand already has the compute
dtype and unit stride, else gathers and converts the tile into a scratch buffer. So
float16/bfloat16 compute in float32, ``int32 + float32`` in float64, and integer results wrap
like NumPy's. Body loops run over an unsigned index (no negative-index wraparound, which LLVM
would turn into gathers) and may use 512-bit vectors (``prefer_wide_vectors``).

Layout: the wrapper broadcasts every operand to the output shape (0 strides), drops size-1
dims, merges adjacent dims that are contiguous for every operand, and pads to exactly three
dims ``(d0, d1, d2)``; the kernel runs ``prange`` over tiles of ``block`` elements of the inner
dim. Any leading dims beyond three (rare: only layouts that no merging helps) loop in Python.
Negative strides index from the operand's lowest address.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, NamedTuple, Sequence

import numpy as np
from numba import prange

from tsol import dtypes
from tsol.errors import ArgumentError, op_error
from tsol.kernels.cpu.elementwise_math import (
    KINDS,
    POW_FAST_LIMIT,
    SINCOS_EXACT_LIMIT,
    call_tile,
    data_ptr,
    io_source,
)
from tsol.kernels.cpu.jit import generated_module, kernel_jit
from tsol.registry import Config, kernel


class Body(NamedTuple):
    """One op's scalar body. ``classes``: the compute classes it exists for; ``guard``/``exact``
    (float32 only): a tile holding an element where ``guard`` holds computes those elements
    with ``exact`` instead (libm for sin/cos far from 0), or with ``exact_all`` the whole tile
    (the float64-internal pow, vectorized, for large exponents);
    ``bool_out``: a comparison, written straight into the bool output."""

    family: str
    nin: int
    expr: str
    classes: tuple[str, ...] = ("f32", "f64", "int", "uint")
    int_expr: str = ""
    guard: str = ""
    exact: str = ""
    exact_all: bool = False
    bool_out: bool = False


FLOAT = ("f32", "f64")
_BIG = f"abs(x0) > F({SINCOS_EXACT_LIMIT})"

BODIES: dict[str, Body] = {
    # math: transcendental float ops (and power, whose float version is one)
    "exp": Body("math", 1, "exp(x0)", FLOAT),
    "log": Body("math", 1, "log(x0)", FLOAT),
    "sqrt": Body("math", 1, "sqrt(x0)", FLOAT),
    "rsqrt": Body("math", 1, "F(1.0) / sqrt(x0)", FLOAT),
    "sin": Body("math", 1, "sin(x0)", FLOAT, guard=_BIG, exact="F(math.sin(np.float64(x0)))"),
    "cos": Body("math", 1, "cos(x0)", FLOAT, guard=_BIG, exact="F(math.cos(np.float64(x0)))"),
    "tanh": Body("math", 1, "tanh(x0)", FLOAT),
    "sigmoid": Body("math", 1, "F(1.0) / (F(1.0) + exp(-x0))", FLOAT),
    "silu": Body("math", 1, "x0 / (F(1.0) + exp(-x0))", FLOAT),
    "gelu": Body("math", 1, "F(0.5) * x0 * (F(1.0) + erf(x0 * F(0.7071067811865476)))", FLOAT),
    # 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)): one exp, no cancellation for negative x
    "gelu_tanh": Body("math", 1, "x0 / (F(1.0) + exp(F(-1.5957691216057308) "
                      "* (x0 + F(0.044715) * x0 * x0 * x0)))", FLOAT),
    # float32: all-float32 pow for |y| <= 4; tiles holding a larger |y| use the float64 one
    "power": Body("math", 2, "pow_small(x0, x1)", int_expr="ipow(x0, x1, F(1))",
                  guard=f"abs(x1) > F({POW_FAST_LIMIT})", exact="pow(x0, x1)", exact_all=True),
    # basic: cheap arithmetic, comparisons, selection, casts
    "neg": Body("basic", 1, "-x0", int_expr="F(0) - x0"),
    "abs": Body("basic", 1, "abs(x0)"),
    "relu": Body("basic", 1, "x0 if not x0 < F(0) else F(0)"),
    "add": Body("basic", 2, "x0 + x1"),
    "subtract": Body("basic", 2, "x0 - x1"),
    "multiply": Body("basic", 2, "x0 * x1"),
    "divide": Body("basic", 2, "x0 / x1", FLOAT),
    "maximum": Body("basic", 2, "fmax(x0, x1)"),
    "minimum": Body("basic", 2, "fmin(x0, x1)"),
    "equal": Body("basic", 2, "x0 == x1", bool_out=True),
    "not_equal": Body("basic", 2, "x0 != x1", bool_out=True),
    "less": Body("basic", 2, "x0 < x1", bool_out=True),
    "less_equal": Body("basic", 2, "x0 <= x1", bool_out=True),
    "greater": Body("basic", 2, "x0 > x1", bool_out=True),
    "greater_equal": Body("basic", 2, "x0 >= x1", bool_out=True),
    "where": Body("basic", 3, "x1 if x0 != F(0) else x2"),      # x0: a bool condition
    "clip": Body("basic", 3, "fmin(fmax(x0, x1), x2)"),
    "astype": Body("basic", 1, "x0"),                            # the store converts
}

COMPUTE = {  # class -> (compute dtype, header binding the math names bodies use)
    "f32": (dtypes.float32, "exp = exp_v\nlog = log_v\nsqrt = np.sqrt\nsin = sin_f32\n"
            "cos = cos_f32\ntanh = tanh_f32\nerf = erf_f32\npow = pow_f32\n"
            "pow_small = pow_small_f32\n"),
    "f64": (dtypes.float64, "exp = math.exp\nlog = math.log\nsqrt = math.sqrt\nsin = math.sin\n"
            "cos = math.cos\ntanh = math.tanh\nerf = math.erf\npow = math.pow\n"
            "pow_small = math.pow\n"),
    "int": (dtypes.int64, ""),
    "uint": (dtypes.uint64, ""),
}


def compute_class(dt: np.dtype) -> str:
    """The class a dtype computes in: halves in float32, ints and bool in int64, uint64 alone."""
    dt = np.dtype(dt)
    if dt == dtypes.float64:
        return "f64"
    if dt in dtypes.FLOATS:
        return "f32"
    return "uint" if dt == dtypes.uint64 else "int"


TEMPLATE = '''"""Generated by tsol.kernels.cpu.elementwise (family {family}, compute {compute}).

Op codes: {names}.
"""
import math

import numpy as np
from numba import carray, cfunc

from tsol.kernels.cpu.elementwise_math import (TILE_SIGNATURE, cos_f32, erf_f32, exp_v,  # noqa
                                               fmax, fmin, ipow, log_v, pow_f32, pow_small_f32,
                                               prefer_wide_vectors, sin_f32, tanh_f32, view_as)
from {io} import operand, store

F = np.{compute}
OWN = {own}
BOOL = {bool_kind}
FIRST_BOOL = {first_bool}
{header}

@cfunc(TILE_SIGNATURE, cache=True, error_model="numpy", fastmath={{"contract"}})
def tile(code, nin, scratch, t, nck, d1, d2, block, p0, n0, k0, b0, s00, s01, s02, p1, n1, k1,
         b1, s10, s11, s12, p2, n2, k2, b2, s20, s21, s22, po, no, ko, bo, os0, os1):
    """Tile t: inner elements [lo, lo + n) of row (i0, i1), every operand a contiguous view.

    ``scratch``: the output is an input too (in place); results go to a scratch tile first,
    since LLVM vectorizes a loop only after a runtime check that its arrays do not overlap.
    """
    prefer_wide_vectors()
    r = t // nck
    lo = (t - r * nck) * block
    i0 = r // d1
    i1 = r - i0 * d1
    n = min(block, d2 - lo)
    un = np.uint64(n)                  # unsigned loop index: no negative-index wraparound code
    v0 = operand(carray(p0, (n0,)), k0, b0 + i0 * s00 + i1 * s01 + lo * s02, s02, n)
    v1 = v0
    v2 = v0
    if nin > 1:
        v1 = operand(carray(p1, (n1,)), k1, b1 + i0 * s10 + i1 * s11 + lo * s12, s12, n)
    if nin > 2:
        v2 = operand(carray(p2, (n2,)), k2, b2 + i0 * s20 + i1 * s21 + lo * s22, s22, n)
    o = bo + i0 * os0 + i1 * os1 + lo
    ro = carray(po, (no,))
    boolean = code >= FIRST_BOOL
    if ko == OWN and scratch == 0:
        res = view_as(ro, F)[o:o + n]
    elif boolean and ko == BOOL and scratch == 0:
        res = view_as(ro, F)[0:0]                       # unused: results go to bres
    else:
        res = np.empty(n, F)
    if boolean and (ko != BOOL or scratch != 0):
        bres = np.empty(n, np.bool_)
    else:
        bres = view_as(ro, np.bool_)[o:o + n]           # (unused by non-bool ops)
{bodies}    if boolean:
        if ko == BOOL and scratch == 0:
            return
        res = np.empty(n, F)
        for j in range(un):
            res[j] = bres[j]
    if ko != OWN or scratch != 0:
        store(ro, ko, o, res, n)
'''


def _loop(ind: str, nin: int, expr: str, target: str = "res") -> str:
    loads = "".join(f"{ind}    x{i} = v{i}[j]\n" for i in range(nin))
    return f"{ind}for j in range(un):\n{loads}{ind}    {target}[j] = {expr}\n"


def _body_source(code: int, body: Body, cls: str) -> str:
    """The branch of ``tile`` running op code ``code``: one loop that LLVM vectorizes."""
    expr = body.int_expr if cls in ("int", "uint") and body.int_expr else body.expr
    src = f"    {'if' if code == 0 else 'elif'} code == {code}:\n"
    if not (body.guard and cls == "f32"):
        return src + _loop(" " * 8, body.nin, expr, "bres" if body.bool_out else "res")
    # Count guarded elements first (reading every input before any write, so in-place is
    # safe); only a tile that holds one takes the scalar loop calling libm.
    loads = "".join(f"            x{i} = v{i}[j]\n" for i in range(body.nin))
    return (src + "        nbig = 0\n        for j in range(un):\n" + loads
            + f"            nbig += {body.guard}\n        if nbig == 0:\n"
            + _loop(" " * 12, body.nin, expr) + "        else:\n"
            + _loop(" " * 12, body.nin, body.exact if body.exact_all else
                    f"{body.exact} if {body.guard} else {expr}"))


@functools.lru_cache(maxsize=None)
def family_ops(family: str, cls: str) -> tuple[str, ...]:
    """Op names of ``family`` that exist for compute class ``cls``, in op-code order (ops with
    bool results last)."""
    names = [name for name, b in BODIES.items() if b.family == family and cls in b.classes]
    return tuple(sorted(names, key=lambda name: BODIES[name].bool_out))


@functools.lru_cache(maxsize=None)
def _io_module(cls: str) -> ModuleType:
    return generated_module(f"elementwise_io_{cls}", io_source(COMPUTE[cls][0]))


@functools.lru_cache(maxsize=None)
def family_module(family: str, cls: str) -> ModuleType:
    """The generated kernel module of ``family`` for compute class ``cls`` (imported once)."""
    names = family_ops(family, cls)
    compute, header = COMPUTE[cls]
    bodies = "".join(_body_source(i, BODIES[n], cls) for i, n in enumerate(names))
    source = TEMPLATE.format(family=family, compute=compute.name, names=", ".join(names),
                             io=_io_module(cls).__name__, own=KINDS[compute], header=header,
                             bool_kind=KINDS[dtypes.bool_], bodies=bodies,
                             first_bool=sum(not BODIES[n].bool_out for n in names))
    return generated_module(f"elementwise_{family}_{cls}", source)


# --- the drivers -----------------------------------------------------------------------------

@kernel_jit(parallel=True)
def run_tiles(tile, ntiles, code, nin, scratch, nck, d1, d2, block, r0, k0, b0, s00, s01, s02,
              r1, k1, b1, s10, s11, s12, r2, k2, b2, s20, s21, s22, ro, ko, bo, os0, os1):
    """Run the tile function at address ``tile`` on tiles 0..ntiles-1 in parallel.

    Numba links a callee's code into its caller and optimizes it again there; called through
    a function pointer instead, a family's bodies are optimized once, in their own cached
    cfunc, and this one driver serves every family.
    """
    p0, p1, p2, po = data_ptr(r0), data_ptr(r1), data_ptr(r2), data_ptr(ro)
    for t in prange(ntiles):
        call_tile(tile, (code, nin, scratch, np.int64(t), nck, d1, d2, block, p0, r0.size, k0,
                         b0, s00, s01, s02, p1, r1.size, k1, b1, s10, s11, s12, p2, r2.size, k2,
                         b2, s20, s21, s22, po, ro.size, ko, bo, os0, os1))


@kernel_jit
def run_tiles_serial(tile, ntiles, code, nin, scratch, nck, d1, d2, block, r0, k0, b0, s00,
                     s01, s02, r1, k1, b1, s10, s11, s12, r2, k2, b2, s20, s21, s22, ro, ko, bo,
                     os0, os1):
    """``run_tiles`` on the calling thread, for small arrays: waking the thread pool costs more
    than their work (and far more when other processes hold the cores)."""
    p0, p1, p2, po = data_ptr(r0), data_ptr(r1), data_ptr(r2), data_ptr(ro)
    for t in range(ntiles):
        call_tile(tile, (code, nin, scratch, t, nck, d1, d2, block, p0, r0.size, k0, b0, s00,
                         s01, s02, p1, r1.size, k1, b1, s10, s11, s12, p2, r2.size, k2, b2, s20,
                         s21, s22, po, ro.size, ko, bo, os0, os1))


PARALLEL_MIN_ELEMENTS = 1 << 16
"""Outputs smaller than this run on one thread (``run_tiles_serial``)."""


# --- layout ----------------------------------------------------------------------------------

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_EMPTY = np.zeros(8, np.uint8)
_EMPTY.flags.writeable = False


def raw_bytes(a: np.ndarray) -> tuple[np.ndarray, int]:
    """(read-only bytes from ``a``'s lowest address to its highest, element offset of a[0...])."""
    if a.flags.c_contiguous:
        raw, lo = a.reshape(-1).view(np.uint8), 0
    else:
        lo = sum(s // a.itemsize * (n - 1) for s, n in zip(a.strides, a.shape, strict=True)
                 if s < 0)
        hi = sum(s // a.itemsize * (n - 1) for s, n in zip(a.strides, a.shape, strict=True)
                 if s > 0)
        low = a[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in a.strides)]
        raw = np.lib.stride_tricks.as_strided(low.view(_UINT[a.itemsize]), shape=(hi - lo + 1,),
                                              strides=(a.itemsize,)).view(np.uint8)
    # Every operand is read-only to Numba, so writeable and read-only inputs share one compile.
    raw.flags.writeable = False
    return raw, -lo


def _coalesce(shape: Sequence[int], strides: list[list[int]]
              ) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that are contiguous for every operand."""
    keep = [i for i, n in enumerate(shape) if n != 1]
    dims = [shape[i] for i in keep]
    sts = [[st[i] for i in keep] for st in strides]
    k = len(dims) - 1
    while k > 0:
        if all(st[k - 1] == st[k] * dims[k] for st in sts):
            dims[k - 1] *= dims.pop(k)
            for st in sts:
                st[k - 1] = st.pop(k)
        k -= 1
    return dims, sts


def _dot(index: tuple[int, ...], strides: Sequence[int]) -> int:
    return sum(i * s for i, s in zip(index, strides[:len(index)], strict=True))


def launch(op: str, operands: Sequence[np.ndarray], out: np.ndarray, cls: str,
           block: int) -> None:
    """Run body ``op`` in compute class ``cls`` on ``operands`` (broadcastable to ``out``)."""
    if out.size == 0:
        return
    names = family_ops(BODIES[op].family, cls)
    module = family_module(BODIES[op].family, cls)
    shape = out.shape
    args, strides = [], []
    for a in operands:
        if any(s % a.itemsize for s in a.strides):
            a = np.ascontiguousarray(a)
        raw, base = raw_bytes(a)
        st = [0] * (out.ndim - a.ndim) + [s // a.itemsize if n != 1 else 0
                                          for s, n in zip(a.strides, a.shape, strict=True)]
        args.append([raw, KINDS[a.dtype], base])
        strides.append(st)
    strides.append([s // out.itemsize for s in out.strides])
    dims, sts = _coalesce(shape, strides)
    while len(dims) < 3:
        dims.insert(0, 1)
        for st in sts:
            st.insert(0, 0)
    scratch = int(any(np.may_share_memory(a, out) for a in operands))
    lead = dims[:-3]
    d0, d1, d2 = dims[-3:]
    ro = out.reshape(-1).view(np.uint8)
    for index in np.ndindex(*lead):
        flat = []
        padded = zip(args + [[_EMPTY, -1, 0]] * (3 - len(args)),
                     sts[:-1] + [[0] * len(dims)] * (3 - len(args)), strict=True)
        for (raw, kind, base), st in padded:
            flat += [raw, kind, base + _dot(index, st), *st[-3:]]
        ob = _dot(index, sts[-1])
        nck = (d2 + block - 1) // block
        driver = run_tiles if out.size >= PARALLEL_MIN_ELEMENTS else run_tiles_serial
        driver(module.tile.address, d0 * d1 * nck, names.index(op), len(operands), scratch, nck, d1,
                  d2, block, *flat, ro, KINDS[out.dtype], ob, sts[-1][-3], sts[-1][-2])


# --- registration ----------------------------------------------------------------------------

CONFIGS = [Config(block=4096), Config(block=1024), Config(block=16384)]
"""Inner-dim tile (elements): 4096 keeps a tile's operands and scratch in L1/L2."""


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return CONFIGS[0]


def describe_launch(metas: Sequence[Any], attrs: dict[str, Any], config: Config) -> str:
    """The tile count of an elementwise launch over the operands' broadcast shape."""
    n = int(np.prod(np.broadcast_shapes(*[m.shape for m in metas if m is not None])))
    tiles = -(-n // config.block) if n else 0
    where = "prange" if n >= PARALLEL_MIN_ELEMENTS else "one thread"
    return f"{tiles} tiles of {config.block} elements ({where})"


def _register(op: str, body: str, class_of: str, dts: frozenset | None) -> None:
    """Register ``op`` running ``body``; its compute class comes from the output (``out``) or
    from the promoted inputs (``inputs``, for comparisons)."""

    def impl(*operands: np.ndarray, out: np.ndarray, config: Config, **attrs: Any) -> None:
        dt = out.dtype if class_of == "out" else dtypes.result_type(*operands)
        launch(body, operands, out, compute_class(dt), config.block)

    impl.__name__ = impl.__qualname__ = f"{op}_tiles"
    kernel(op, backend="cpu", dtypes=dts, configs=CONFIGS, heuristic=_heuristic,
           launch=describe_launch)(impl)


for _op in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu"):
    _register(_op, _op, "out", dtypes.FLOATS)
for _op in ("neg", "abs", "relu"):
    _register(_op, _op, "out", dtypes.NUMERIC)
for _op in ("add", "subtract", "multiply", "divide", "maximum", "minimum"):
    _register(_op, _op, "out", dtypes.ALL)
for _op in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
    _register(_op, _op, "inputs", dtypes.ALL)


@kernel("gelu", backend="cpu", dtypes=dtypes.FLOATS, configs=CONFIGS, heuristic=_heuristic)
def gelu_tiles(x: np.ndarray, *, out: np.ndarray, config: Config, approximate: str) -> None:
    body = "gelu_tanh" if approximate == "tanh" else "gelu"
    launch(body, (x,), out, compute_class(out.dtype), config.block)


@kernel("power", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def power_tiles(x1: np.ndarray, x2: np.ndarray, *, out: np.ndarray, config: Config) -> None:
    cls = compute_class(out.dtype)
    if cls in ("int", "uint") and x2.dtype.kind == "i" and x2.size and x2.min() < 0:
        raise op_error(ArgumentError, "power", "integers to negative integer powers are not "
                       "allowed (as in NumPy)", "cast the base to a float dtype first "
                       "(tsol.astype(x1, tsol.float64))", [x1, x2])
    launch("power", (x1, x2), out, cls, config.block)


@kernel("where", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def where_tiles(condition: np.ndarray, x: np.ndarray, y: np.ndarray, *, out: np.ndarray,
                config: Config) -> None:
    if condition.dtype != dtypes.bool_:
        # Truth of a non-bool condition first: loaded into the compute type instead, a float
        # 0.5 would read as 0 in an integer where, and 1e-300 as 0 in a float32 one.
        truth = np.empty(condition.shape, dtypes.bool_)
        launch("not_equal", (condition, np.zeros((), condition.dtype)), truth,
               compute_class(condition.dtype), config.block)
        condition = truth
    launch("where", (condition, x, y), out, compute_class(out.dtype), config.block)


@kernel("clip", backend="cpu", configs=CONFIGS, heuristic=_heuristic)
def clip_tiles(a: np.ndarray, a_min: np.ndarray | None, a_max: np.ndarray | None, *,
               out: np.ndarray, config: Config) -> None:
    cls = compute_class(out.dtype)
    if a_min is None:
        launch("minimum", (a, a_max), out, cls, config.block)
    elif a_max is None:
        launch("maximum", (a, a_min), out, cls, config.block)
    else:
        launch("clip", (a, a_min, a_max), out, cls, config.block)


@kernel("astype", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def astype_tiles(x: np.ndarray, *, out: np.ndarray, config: Config, dtype: np.dtype) -> None:
    launch("astype", (x,), out, compute_class(x.dtype), config.block)


__all__ = ["BODIES", "COMPUTE", "launch", "family_module", "family_ops", "compute_class"]
