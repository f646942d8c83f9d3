"""CUDA kernels for the elementwise ops: one generated grid-stride kernel per op and dtypes.

Every op is a row of ``BODIES``: an expression in ``x0, x1, x2`` (operands loaded into the
compute type ``F``) using ``math`` (libdevice on the GPU) and the helpers of this module.
Compute types follow the CPU engine: float16/bfloat16 and float32 compute in float32, float64 in
float64, integers and bool in int64 (uint64 alone in uint64), and the store converts to the
output dtype (integers wrap like NumPy's).

Two kernel shapes, generated from ``TEMPLATE`` per (op, storage dtypes, operand modes):
``flat`` when every operand is either C-contiguous with the output's shape or a single element
(a scalar), indexed by one flat index; ``strided`` otherwise: operands are broadcast to the
output's shape and merged to at most four dims, indexed through their strides (0 for broadcast
dims). Both are grid-stride loops of ``config.block`` threads per block.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import ArgumentError, op_error
from tsol.kernels.cuda import gpu
from tsol.kernels.cuda.layout_util import merged_dims, strided_view
from tsol.registry import Config, kernel

F32, F64, INT, UINT = "f32", "f64", "int", "uint"

BODIES: dict[str, tuple[int, str]] = {
    "exp": (1, "math.exp(x0)"), "log": (1, "math.log(x0)"), "sqrt": (1, "math.sqrt(x0)"),
    "rsqrt": (1, "F(1.0) / math.sqrt(x0)"), "sin": (1, "math.sin(x0)"),
    "cos": (1, "math.cos(x0)"), "tanh": (1, "math.tanh(x0)"),
    "sigmoid": (1, "F(1.0) / (F(1.0) + math.exp(-x0))"),
    "silu": (1, "x0 / (F(1.0) + math.exp(-x0))"),
    "gelu": (1, "F(0.5) * x0 * (F(1.0) + math.erf(x0 * F(0.7071067811865476)))"),
    "gelu_tanh": (1, "x0 / (F(1.0) + math.exp(F(-1.5957691216057308) "
                     "* (x0 + F(0.044715) * x0 * x0 * x0)))"),
    "power": (2, "pow_(x0, x1)"),
    "neg": (1, "F(0) - x0"), "abs": (1, "abs(x0)"), "relu": (1, "x0 if not x0 < F(0) else F(0)"),
    "add": (2, "x0 + x1"), "subtract": (2, "x0 - x1"), "multiply": (2, "x0 * x1"),
    "divide": (2, "x0 / x1"), "maximum": (2, "fmax(x0, x1)"), "minimum": (2, "fmin(x0, x1)"),
    "equal": (2, "x0 == x1"), "not_equal": (2, "x0 != x1"), "less": (2, "x0 < x1"),
    "less_equal": (2, "x0 <= x1"), "greater": (2, "x0 > x1"), "greater_equal": (2, "x0 >= x1"),
    "where": (3, "x1 if x0 != F(0) else x2"), "clip": (3, "fmin(fmax(x0, x1), x2)"),
    "astype": (1, "x0"),
}
"""op -> (operand count, expression). Comparisons compute in the inputs' promoted type."""


@gpu.device
def fmax(a, b):
    """NumPy's maximum: NaN propagates."""
    return a if a > b or a != a else b


@gpu.device
def fmin(a, b):
    return a if a < b or a != a else b


@gpu.device
def ipow(a, b):
    """Integer power by squaring (b >= 0; NumPy raises for negative integer exponents)."""
    r = a - a + 1
    while b > 0:
        if b & 1:
            r = r * a
        a = a * a
        b = b >> 1
    return r


@gpu.device
def fpow(a, b):
    return math.pow(a, b)


def compute_class(dt: Any) -> str:
    dt = np.dtype(dt)
    if dt == dtypes.float64:
        return F64
    if dt in dtypes.FLOATS:
        return F32
    return UINT if dt == dtypes.uint64 else INT


CLASS_TYPES = {F32: "np.float32", F64: "np.float64", INT: "np.int64", UINT: "np.uint64"}

TEMPLATE = '''
def {name}({params}out):
    i = gpu.grid(1)
    step = gpu.gridsize(1)
    n = out.size
{setup}
{unrolled}
    while i < n:
{index}
{body}
        out[{oidx}] = {store}
        i += step
'''

UNROLL = 4
"""Flat kernels handle UNROLL elements per thread per trip, all loads issued before any store
(the compiler cannot reorder loads past stores that may alias), for memory-level parallelism."""

UNROLLED = '''
    while i + {last} * step < n:
{body}
        i += {count} * step
'''


def load_source(j: int, dt: np.dtype, idx: str) -> str:
    src = f"a{j}[{idx}]"
    if dt == dtypes.bfloat16:
        return f"F(gpu.load_bf16({src}))"
    if dt == dtypes.bool_:
        return f"F(1 if {src} else 0)"
    return f"F({src})"


def store_source(expr: str, dt: np.dtype) -> str:
    if dt == dtypes.bfloat16:
        return f"gpu.store_bf16(np.float32({expr}))"
    if dt == dtypes.float16:
        return f"np.float16({expr})"
    if dt == dtypes.bool_:
        return f"({expr}) != 0"
    return f"np.{dt.name}({expr})"            # integers wrap like NumPy's


def _unrolled(loads: list[str], expr: str, out_dt: np.dtype) -> str:
    """The UNROLL-way main loop of a flat kernel: element u of a trip is at i + u * step."""
    body = [f"        k{u} = i + {u} * step" for u in range(UNROLL)]
    for u in range(UNROLL):
        for line in loads:
            line = re.sub(r"\[i\]", f"[k{u}]", line)
            body.append(re.sub(r"\bx(\d)\b", rf"x\1_{u}", line))
    for u in range(UNROLL):
        value = re.sub(r"\bx(\d)\b", rf"x\1_{u}", expr)
        body.append(f"        out[k{u}] = " + store_source(value, out_dt))
    return UNROLLED.format(last=UNROLL - 1, count=UNROLL, body="\n".join(body))


_cache: dict[tuple[Any, ...], gpu.Kernel] = {}


def _kernel_for(op: str, cls: str, in_dts: Sequence[np.dtype], out_dt: np.dtype,
                modes: tuple[str, ...]) -> gpu.Kernel:
    """The generated kernel; ``modes`` per operand: 'flat', 'scalar' or 'strided'."""
    key = (op, cls, tuple(d.str for d in in_dts), out_dt.str, modes)
    k = _cache.get(key)
    if k is not None:
        return k
    nin, expr = BODIES[op]
    if op == "power":
        expr = expr.replace("pow_", "ipow" if cls in (INT, UINT) else "fpow")
    strided = "strided" in modes
    params = "".join(f"a{j}, " for j in range(nin))
    if strided:
        setup = "    d1, d2, d3 = out.shape[1], out.shape[2], out.shape[3]"
        index = ("        i3 = i % d3\n        t = i // d3\n        i2 = t % d2\n"
                 "        t = t // d2\n        i1 = t % d1\n        i0 = t // d1")
        oidx = "i0, i1, i2, i3"
    else:
        setup, index, oidx = "", "", "i"
    loads = []
    for j, (dt, mode) in enumerate(zip(in_dts, modes)):
        idx = {"flat": "i", "scalar": "0", "strided": "i0, i1, i2, i3"}[mode]
        if mode == "scalar" and strided:
            idx = "0, 0, 0, 0"
        load = load_source(j, dt, idx)
        if op == "where" and j == 0:          # the truth of the condition, not its value
            raw = f"gpu.load_bf16(a0[{idx}])" if dt == dtypes.bfloat16 else f"a0[{idx}]"
            load = f"F(1 if {raw} != 0 else 0)"
        loads.append(f"        x{j} = {load}")
    tag = "_".join([op, cls] + [d.str.strip("<|>=") for d in in_dts] + [out_dt.str.strip("<|>="),
                                                                         *modes])
    name = "ew_" + tag.replace("-", "m")
    unrolled = "" if strided else _unrolled(loads, expr, out_dt)
    source = TEMPLATE.format(name=name, params=params, setup=setup, index=index,
                             body="\n".join(loads), oidx=oidx, store=store_source(expr, out_dt),
                             unrolled=unrolled)
    namespace: dict[str, Any] = {"gpu": gpu, "np": np, "math": math,
                                 "F": eval(CLASS_TYPES[cls], {"np": np}),
                                 "fmax": fmax, "fmin": fmin, "ipow": ipow, "fpow": fpow}
    exec(compile(source, f"<tsol.kernels.cuda.elementwise:{name}>", "exec"), namespace)
    fn = namespace[name]
    fn.__module__ = __name__
    k = _cache[key] = gpu.kernel(fn, source=source)
    return k


GRID_CAP = 132 * 16
"""Blocks at most (H100: 132 SMs); grid-stride loops cover the rest."""

_prepared: dict[tuple[Any, ...], gpu.Prepared] = {}
"""Launches by (op, class, block, layout of out and operands): later calls pass pointers only."""


def grid_stride_launch(key: tuple[Any, ...], operands: Sequence[Any], out: Any, block: int,
                       build: Callable[[tuple[str, ...]], gpu.Kernel],
                       rerun: Callable[[list[Any], Any], None]) -> None:
    """The launch path of the generated grid-stride kernels (these and the fused ones).

    Operand modes are 'scalar', 'flat' or 'strided' (merged to at most four dims with the
    output); ``build(modes)`` gives the kernel. A launch is prepared once per ``key`` and
    layout, so later calls pass pointers only. Layouts of more than four unmergeable dims run
    ``rerun(dense_operands, dense_out)`` on C-contiguous copies instead.
    """
    if out.size == 0:
        return
    layout = (*key, block, out.shape, out.dtype, out.strides,
              *[(a.shape, a.dtype, a.strides) for a in operands])
    prepared = _prepared.get(layout)
    if prepared is not None:
        prepared([a.data.ptr for a in operands] + [out.data.ptr])
        return
    shape = tuple(out.shape)
    modes = tuple("scalar" if a.size == 1 else
                  "flat" if tuple(a.shape) == shape and a.flags.c_contiguous else "strided"
                  for a in operands)
    strided = "strided" in modes or not out.flags.c_contiguous
    if strided:
        try:
            dims, strides = merged_dims(shape, [out] + list(operands), 4)
        except ValueError:                     # > 4 unmergeable dims: run on dense copies
            xp = gpu.array_module()
            tmp = xp.empty(shape, out.dtype)
            rerun([xp.ascontiguousarray(xp.broadcast_to(a, shape)) for a in operands], tmp)
            out[...] = tmp
            return
        args = [strided_view(gpu.kernel_view(a), dims, st)
                for a, st in zip(operands, strides[1:])]
        target = strided_view(gpu.kernel_view(out), dims, strides[0])
        modes = tuple("strided" for _ in operands)
    else:
        args = [gpu.kernel_view(a).reshape(-1) for a in operands]
        target = gpu.kernel_view(out).reshape(-1)
    kern = build(modes)
    grid = min(gpu.cdiv(out.size, block * (1 if strided else UNROLL)), GRID_CAP)
    prepared = gpu.prepare(kern, grid, block, args + [target])
    if prepared is None:
        gpu.launch(kern, grid, block, args + [target])
        return
    if len(_prepared) > 4096:
        _prepared.clear()
    _prepared[layout] = prepared
    prepared([a.data.ptr for a in operands] + [out.data.ptr])


def launch(op: str, operands: Sequence[Any], out: Any, cls: str, block: int) -> None:
    """Run ``op``'s body over ``operands`` (arrays broadcastable to ``out``) into ``out``."""
    in_dts = [np.dtype(a.dtype) for a in operands]
    grid_stride_launch((op, cls), operands, out, block,
                       lambda modes: _kernel_for(op, cls, in_dts, np.dtype(out.dtype), modes),
                       lambda dense, tmp: launch(op, dense, tmp, cls, block))


# --- registration --------------------------------------------------------------------------------

CONFIGS = [Config(block=256), Config(block=512), Config(block=128)]


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return CONFIGS[0]


def describe_launch(metas: Sequence[Any], attrs: dict[str, Any], config: Config) -> str:
    """Grid and block of a flat grid-stride launch over the operands' broadcast shape."""
    n = int(np.prod(np.broadcast_shapes(*[m.shape for m in metas if m is not None])))
    grid = max(1, min(gpu.cdiv(n, config.block * UNROLL), GRID_CAP))
    return f"grid ({grid}, 1, 1) x block ({config.block}, 1, 1), grid-stride"


def _register(op: str, class_of: str, dts: Any) -> None:
    def impl(*operands: Any, out: Any, config: Config, **attrs: Any) -> None:
        dt = out.dtype if class_of == "out" else dtypes.result_type(*operands)
        launch(op, operands, out, compute_class(dt), config.block)

    impl.__name__ = impl.__qualname__ = f"{op}_cuda"
    kernel(op, backend="cuda", dtypes=dts, configs=CONFIGS, heuristic=_heuristic,
           launch=describe_launch, replays=True)(impl)


for _op in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu"):
    _register(_op, "out", dtypes.FLOATS)
for _op in ("neg", "abs", "relu"):
    _register(_op, "out", dtypes.NUMERIC)
for _op in ("add", "subtract", "multiply", "divide", "maximum", "minimum"):
    _register(_op, "out", dtypes.ALL)
for _op in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
    _register(_op, "inputs", dtypes.ALL)


@kernel("gelu", backend="cuda", dtypes=dtypes.FLOATS, configs=CONFIGS, heuristic=_heuristic,
        replays=True)
def gelu_cuda(x: Any, *, out: Any, config: Config, approximate: str) -> None:
    launch("gelu_tanh" if approximate == "tanh" else "gelu", (x,), out,
           compute_class(out.dtype), config.block)


@kernel("power", backend="cuda", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def power_cuda(x1: Any, x2: Any, *, out: Any, config: Config) -> None:
    cls = compute_class(out.dtype)
    if cls in (INT, UINT) and x2.dtype.kind == "i" and x2.size and bool((x2 < 0).any()):
        raise op_error(ArgumentError, "power", "integers to negative integer powers are not "
                       "allowed (as in NumPy)", "cast the base to a float dtype first "
                       "(tsol.astype(x1, tsol.float64))", [x1, x2])
    launch("power", (x1, x2), out, cls, config.block)


@kernel("where", backend="cuda", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def where_cuda(condition: Any, x: Any, y: Any, *, out: Any, config: Config) -> None:
    launch("where", (condition, x, y), out, compute_class(out.dtype), config.block)


@kernel("clip", backend="cuda", configs=CONFIGS, heuristic=_heuristic)
def clip_cuda(a: Any, a_min: Any, a_max: Any, *, out: Any, config: Config) -> None:
    cls = compute_class(out.dtype)
    if a_min is None:
        launch("minimum", (a, a_max), out, cls, config.block)
    elif a_max is None:
        launch("maximum", (a, a_min), out, cls, config.block)
    else:
        launch("clip", (a, a_min, a_max), out, cls, config.block)


@kernel("astype", backend="cuda", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def astype_cuda(x: Any, *, out: Any, config: Config, dtype: Any) -> None:
    launch("astype", (x,), out, compute_class(x.dtype), config.block)


__all__ = ["BODIES", "launch", "compute_class"]
