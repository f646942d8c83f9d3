"""CUDA kernel of fused_reduction: one generated kernel per program, dtypes, reduction, layout
and row schedule.

Each step's expression and the operand loads are the fused elementwise kernel's
(``fused.step_source`` over the elementwise engine's bodies and ``_load``); the row groups,
shuffle trees and stores are the reduction family's (``reduction.rows_reduce``,
``reduction.store_expr``), so the numerics and the simulator twins are theirs. The value is
seen as ``rows x n`` (``n`` the product of the reduced trailing dims); each operand reaches the
kernel as flat storage, one int64 offset per row (``row_offsets``: any broadcast or strides of
the kept dims) and one stride along the row: ``c`` (unit), ``b`` (0: loaded once a row, with
the steps that read only such operands) or ``s``. An operand whose reduced dims are not one run,
or that has negative strides, is copied densely first.

- sum, mean, max, min: groups of ``T`` threads (a power of two) fold one row each, ``B // T``
  rows a block, thread ``t`` taking elements ``t, t + T, ...``, then a xor-shuffle tree (and a
  shared-memory step across the group's warps). Long rows with few of them split into ``S``
  segments over ``gridDim.y`` (``reduction.row_schedule``): the partial states are then merged
  by the reduction family's fold kernels (``reduction.run``), also in a fixed tree.
- softmax, log_softmax: one row a group, three passes over the row that recompute the
  program's value each time instead of storing it (the max, the sum of ``exp(v - shift)``,
  the output), each pass's total merged by the same trees. Edge cases follow
  ``scipy.special`` as the softmax family's kernels do.

Accumulation is float32 (float64 for float64 values). Every tree has a shape fixed by the
problem's shape and the config, so results are bitwise repeatable.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import TSOLError
from tsol.kernels.cuda import gpu
from tsol.kernels.cuda import reduction as red
from tsol.kernels.cuda.elementwise import (
    _F,
    BODIES,
    _load,
    compute_class,
    fmax,
    fmin,
    fpow,
    ipow,
)
from tsol.kernels.cuda.fused import step_source
from tsol.kernels.cuda.layout_util import strided_view
from tsol.ops.fused import Program, ProgramPlan, invariant_steps, plan_program, used_inputs
from tsol.ops.fused_reduction import (
    ROW_OPS,
    accumulator,
    element_strides,
    inner_stride,
    row_offsets,
    split_value,
)
from tsol.registry import Config, kernel

_MERGE = {"sum": "c0 + o0", "max": "o0 if o0 > c0 or o0 != o0 else c0",
          "min": "o0 if o0 < c0 or o0 != o0 else c0"}
"""State merges of the folds (mean folds a sum); max and min let a NaN win."""
_INIT = {"sum": "A(0)", "max": "LOW", "min": "HIGH"}

_DEVICE = '''
@gpu.device
def merge_sum(c0, o0):
    return (c0 + o0,)


@gpu.device
def merge_max(c0, o0):
    return (o0 if o0 > c0 or o0 != o0 else c0,)


@gpu.device
def merge_min(c0, o0):
    return (o0 if o0 < c0 or o0 != o0 else c0,)
'''


def _bind(expr: str, cls: str) -> str:
    return expr.replace("F(", f"F_{cls}(")


def _value(plan: ProgramPlan, used: Sequence[int], modes: str, acc: str
           ) -> tuple[list[str], list[str]]:
    """(per-row prelude, per-element body ending in ``v``: the value in the accumulator)."""
    prelude, body = [], []
    for i, mode in zip(used, modes, strict=True):
        prelude.append(f"p{i} = q{i}[row]")
        idx = {"c": f"p{i} + j", "b": f"p{i}", "s": f"p{i} + j * s{i}"}[mode]
        dt = plan.in_dtypes[i]
        line = f"v{i} = " + _bind(_load(i, dt, idx), compute_class(dt))
        (prelude if mode == "b" else body).append(line)
    invariant = invariant_steps(plan, {i for i, m in zip(used, modes, strict=True) if m == "b"})
    for j in plan.live:
        line = f"y{j} = {step_source(plan.steps[j], plan)}"
        (prelude if j in invariant else body).append(line)
    body.append(f"v = F_{acc}(y{plan.output})")
    return prelude, body


def _loop(prelude: list[str], body: list[str], tail: list[str], start: str, stop: str,
          T: int) -> list[str]:
    """``if row < rows:`` the prelude, then elements ``start, start + T, ...`` below ``stop``."""
    inner = body + tail + [f"j += {T}"]
    return (["if row < rows:"] + ["    " + s for s in prelude + [f"j = {start}",
                                                               f"while j < {stop}:"]]
            + ["        " + s for s in inner])


def _fold_source(name: str, plan: ProgramPlan, used: Sequence[int], modes: str, kind: str,
                 out_dt: Any, T: int, B: int) -> str:
    """A fold over row segments; ``out_dt`` None writes the states (one per segment)."""
    acc = compute_class(accumulator(plan.steps[plan.output].dtype))
    merge = "sum" if kind == "mean" else kind
    prelude, body = _value(plan, used, modes, acc)
    alloc, tree = red.rows_reduce(["c0"], [accumulator(plan.steps[plan.output].dtype)],
                                  f"merge_{merge}", T, B, "r")
    head = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5", f"t = tid & {T - 1}",
            f"row = gpu.blockIdx.x * {B // T} + (tid >> {red.log2(T)})"]
    lines = head + alloc + [f"c0 = {_INIT[merge]}"]
    lines += _loop(prelude + ["lo = gpu.blockIdx.y * seg", "hi = min(lo + seg, n)"], body,
                   [f"c0 = {_MERGE[merge]}".replace("o0", "v")], "lo + t", "hi", T)
    lines += tree + ["if t == 0 and row < rows:"]
    if out_dt is None:
        lines.append("    out[row * gpu.gridDim.y + gpu.blockIdx.y] = c0")
    else:
        final = "c0 / A(fscal)" if kind == "mean" else "c0"
        lines.append(f"    out[row] = {red.store_expr(final, out_dt)}")
    params = "".join(f"a{i}, q{i}, s{i}, " for i in used) + "rows, n, seg, fscal, out"
    return _DEVICE + f"\n\ndef {name}({params}):\n" + red.indent(lines, 4) + "\n"


def _softmax_source(name: str, plan: ProgramPlan, used: Sequence[int], modes: str, log: bool,
                    out_dt: Any, T: int, B: int) -> str:
    vdt = plan.steps[plan.output].dtype
    acc = compute_class(accumulator(vdt))
    prelude, body = _value(plan, used, modes, acc)
    alloc_a, tree_max = red.rows_reduce(["mx"], [accumulator(vdt)], "merge_max", T, B, "a")
    alloc_b, tree_sum = red.rows_reduce(["sm"], [accumulator(vdt)], "merge_sum", T, B, "b")
    lines = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5", f"t = tid & {T - 1}",
             f"row = gpu.blockIdx.x * {B // T} + (tid >> {red.log2(T)})", *alloc_a, *alloc_b,
             "mx = LOW"]
    lines += _loop(prelude, body, ["mx = v if v > mx or v != v else mx"], "t", "n", T)
    lines += tree_max + ["shift = mx"]
    if log:     # SciPy's rule: shift by 0 when the max is not finite
        lines += ["if not (mx > LOW and mx < HIGH):", "    shift = A(0)"]
    lines.append("sm = A(0)")
    lines += _loop(prelude, body, ["sm += exp_(v - shift)"], "t", "n", T)
    lines += tree_sum + ["lse = log_(sm)" if log else "inv = A(1) / sm"]
    value = "(v - shift) - lse" if log else "exp_(v - shift) * inv"
    lines += _loop(prelude, body, [f"out[row * n + j] = {red.store_expr(value, out_dt)}"],
                   "t", "n", T)
    params = "".join(f"a{i}, q{i}, s{i}, " for i in used) + "rows, n, out"
    return _DEVICE + f"\n\ndef {name}({params}):\n" + red.indent(lines, 4) + "\n"


GENERATED: dict[tuple[Any, ...], gpu.Kernel] = {}
"""Generated kernels by (program, operand dtypes, reduction, sink, layout modes, T, B)."""


def _kernel_for(program: Program, plan: ProgramPlan, reduce: str, out_dt: Any, modes: str,
                T: int, B: int) -> gpu.Kernel:
    sink = None if out_dt is None else np.dtype(out_dt).str
    key = (program.key, plan.in_dtypes, reduce, sink, modes, T, B)
    k = GENERATED.get(key)
    if k is not None:
        return k
    used = used_inputs(plan)
    make = _softmax_source if reduce in ROW_OPS else _fold_source
    arg = reduce == "log_softmax" if reduce in ROW_OPS else reduce
    text = make("KERNEL", plan, used, modes, arg, out_dt, T, B)
    # The name carries a hash of the source: it keys the on-disk cubin cache.
    name = "fused_reduction_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    header = "".join("# " + line + "\n" for line in str(program).splitlines())
    ns = dict(red.namespace(accumulator(plan.steps[plan.output].dtype)), fmax=fmax, fmin=fmin,
              ipow=ipow, fpow=fpow, **{f"F_{c}": getattr(np, t.split(".")[1])
                                       for c, t in _F.items()})
    if len(GENERATED) > 1024:
        GENERATED.clear()
    k = GENERATED[key] = red.build(name, header + text.replace("KERNEL", name, 1), ns,
                                   __name__, threads=B)
    return k


_offsets: dict[tuple[Any, ...], Any] = {}
"""Row offsets on the device by (kept dims, strides)."""


def _row_offsets(kept: tuple[int, ...], strides: Sequence[int]) -> Any:
    key = (kept, tuple(strides))
    found = _offsets.get(key)
    if found is None:
        if len(_offsets) > 256:
            _offsets.clear()
        found = _offsets[key] = gpu.array_module().asarray(row_offsets(kept, strides, 0))
    return found


def _operands(arrays: Sequence[Any], used: Sequence[int], shape: tuple[int, ...], nkept: int
              ) -> tuple[list[Any], str]:
    """Kernel arguments (flat storage, row offsets, row stride) of the used operands, and their
    layout modes."""
    xp = gpu.array_module()
    n = math.prod(shape[nkept:])
    args: list[Any] = []
    modes = ""
    for i in used:
        a = arrays[i]
        st = element_strides(shape, a.shape, a.strides, a.itemsize)
        if st is None or any(s < 0 for s in a.strides):
            a = xp.ascontiguousarray(a)
            st = element_strides(shape, a.shape, a.strides, a.itemsize)
        inner = inner_stride(shape[nkept:], st[nkept:])
        if inner is None:          # reduced dims not one run: read a dense copy
            a = xp.ascontiguousarray(xp.broadcast_to(a, shape))
            st = element_strides(shape, a.shape, a.strides, a.itemsize)
            inner = inner_stride(shape[nkept:], st[nkept:])
        view = gpu.kernel_view(a)
        if a.flags.c_contiguous:
            flat = view.reshape(-1)
        else:
            span = 1 + sum((d - 1) * (s // a.itemsize) for d, s in zip(a.shape, a.strides))
            flat = strided_view(view, (span,), (1,))
        args += [flat, _row_offsets(shape[:nkept], st[:nkept]), int(inner)]
        modes += "b" if inner == 0 or n == 1 else "c" if inner == 1 else "s"
    return args, modes


def launch(arrays: Sequence[Any], out: Any, program: Program, reduce: str,
           axis: tuple[int, ...], config: Config) -> None:
    """Reduce ``program``'s value over ``arrays`` into ``out`` (C-contiguous)."""
    plan = plan_program(program, [a.dtype for a in arrays])
    vdt = plan.steps[plan.output].dtype
    shape = tuple(int(d) for d in np.broadcast_shapes(*[tuple(a.shape) for a in arrays]))
    kept, reduced = split_value(shape, reduce, axis)
    rows, n = math.prod(kept), math.prod(reduced)
    if rows == 0 or out.size == 0:
        return
    if n == 0:                    # max/min never get here (the meta rule raises)
        red.fill(out, np.nan if reduce == "mean" else 0.0)
        return
    used = used_inputs(plan)
    args, modes = _operands(arrays, used, shape, len(kept))
    target = red.out_storage(out).reshape(-1)
    if reduce in ROW_OPS:
        T = min(red.TMAX, red.pow2ceil(-(-n // config.work)))
        B = max(T, config.block)
        k = _kernel_for(program, plan, reduce, vdt, modes, T, B)
        gpu.launch(k, -(-rows // (B // T)), B, args + [rows, n, target])
        return
    T, B, S, seg = red.row_schedule(rows, n, config)
    grid = (-(-rows // (B // T)), S)
    if S == 1:
        k = _kernel_for(program, plan, reduce, vdt, modes, T, B)
        gpu.launch(k, grid, B, args + [rows, n, seg, float(n), target])
        return
    acc = accumulator(vdt)
    parts = gpu.array_module().empty(rows * S, acc)
    k = _kernel_for(program, plan, reduce, None, modes, T, B)
    gpu.launch(k, grid, B, args + [rows, n, seg, float(n), parts])
    red.run(reduce, parts, rows, S, 1, acc, Config(block=config.block, work=config.work,
                                                    split=0),
            target=target, out_dt=vdt, fscal=float(n))


# --- registration ----------------------------------------------------------------------------

CONFIGS = red.CONFIGS
"""The reduction family's: ``block`` threads a block (at least), ``work`` elements a thread
aims at (the row group size and the segment split), ``split`` at least this many segments."""


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return red.SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    try:
        plan = plan_program(attrs["program"], [m.dtype for m in metas])
    except TSOLError:
        return False
    return plan.steps[plan.output].dtype in dtypes.FLOATS and \
        all(plan.steps[j].body in BODIES for j in plan.live)


# alias_ok=False: a broadcast operand may be read again after rows of out are written.
@kernel("fused_reduction", backend="cuda", configs=CONFIGS, supports=_supports,
        heuristic=_heuristic, alias_ok=False)
def fused_reduction_cuda(arrays: Sequence[Any], *, out: Any, config: Config, program: Program,
                         reduce: str, axis: tuple[int, ...], keepdims: bool) -> None:
    launch(arrays, out, program, reduce, axis, config)


__all__ = ["GENERATED", "launch"]
