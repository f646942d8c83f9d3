"""CUDA kernel of fused_reduction: one generated kernel per program, epilogue, dtypes,
reduction, layout and row schedule.

Each step's expression and the operand loads are the fused elementwise kernel's
(``fused.step_source`` over the elementwise engine's bodies and ``load_source``); the row
groups, shuffle trees and stores are the reduction family's (``reduction.rows_reduce``,
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
  by the reduction family's fold kernels (``reduction.run``), also in a fixed tree, and an
  epilogue runs in one more kernel over the merged values (``finish``: a thread a row).
- softmax, log_softmax: one row a group, three passes over the row that recompute the
  program's value each time instead of storing it (the max, the sum of ``exp(v - shift)``,
  the output), each pass's total merged by the same trees. Edge cases follow
  ``scipy.special`` as the softmax family's kernels do.
- layernorm, rmsnorm: one row a group, as the normalization family's register path computes
  its statistics, but recomputing the value each pass: the sum gives ``hi``, the rounded mean;
  the pair (sum of ``d = v - hi``, sum of ``d * d``) gives ``lo`` and the variance about the
  exact mean; then the output ``((v - hi) - lo) * rstd``. RMSnorm: one pass for the sum of
  ``v * v``, then the output.

An epilogue is applied where each result element is stored, its operands read with the same
layout rule over the result's shape (a fold's are one value a row); its code is the program's
with every name prefixed (``fused_reduction.epilogue_names``). Accumulation is float32 (float64
for float64 values). Every tree has a shape fixed by the problem's shape and the config, so
results are bitwise repeatable.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

import numpy as np

from tsol.kernels.cuda import gpu
from tsol.kernels.cuda import reduction as red
from tsol.kernels.cuda.elementwise import BODIES, compute_class, load_source, store_source
from tsol.kernels.cuda.fused import NAMESPACE, step_source
from tsol.kernels.cuda.layout_util import strided_view
from tsol.ops.fused import Program, ProgramPlan, plan_program, step_lines, used_inputs
from tsol.ops.fused_reduction import (
    NORMS,
    ROW_OPS,
    EpilogueCode,
    accumulator,
    epilogue_names,
    epilogue_plan,
    epilogue_rows,
    kernel_plans,
    row_layout,
    row_offsets,
    split_value,
)
from tsol.registry import Config, kernel

_MERGE = {"sum": "c0 + o0", "max": "o0 if o0 > c0 or o0 != o0 else c0",
          "min": "o0 if o0 < c0 or o0 != o0 else c0"}
"""State merges of the folds (mean folds a sum); max and min let a NaN win."""
_INIT = {"sum": "A(0)", "max": "LOW", "min": "HIGH"}
_DEVICE = "".join(f"\n\n@gpu.device\ndef merge_{kind}(c0, o0):\n    return ({merge},)\n"
                  for kind, merge in _MERGE.items()) + \
    "\n\n@gpu.device\ndef merge_sum2(c0, c1, o0, o1):\n    return c0 + o0, c1 + o1\n"
"""The merges as device functions for the trees (``merge_sum2``: the norms' pair of sums)."""

_HEAD = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5"]


def _bind(expr: str, cls: str) -> str:
    return expr.replace("F(", f"F_{cls}(")


def _program_source(plan: ProgramPlan, used: Sequence[int], modes: str
                    ) -> tuple[list[str], list[str]]:
    """(per-row prelude, per-element body leaving the value in ``y<output>``)."""
    prelude, body = [], []
    for i, mode in zip(used, modes, strict=True):
        prelude.append(f"p{i} = q{i}[row]")
        idx = {"c": f"p{i} + j", "b": f"p{i}", "s": f"p{i} + j * s{i}"}[mode]
        dt = plan.in_dtypes[i]
        line = f"v{i} = " + _bind(load_source(i, dt, idx), compute_class(dt))
        (prelude if mode == "b" else body).append(line)
    fixed, steps = step_lines(plan, {i for i, m in zip(used, modes, strict=True) if m == "b"},
                              step_source)
    return prelude + fixed, body + steps


def _value(plan: ProgramPlan, used: Sequence[int], modes: str, acc: str
           ) -> tuple[list[str], list[str]]:
    """(per-row prelude, per-element body ending in ``v``: the value in the accumulator)."""
    prelude, body = _program_source(plan, used, modes)
    return prelude, body + [f"v = F_{acc}(y{plan.output})"]


class Epilogue(EpilogueCode):
    """``EpilogueCode`` with this backend's code."""

    __slots__ = ()

    def params(self) -> str:
        return "".join(epilogue_names(f"a{i}, q{i}, s{i}, ") for i in self.used)

    def source(self, value: str, target: str, out_dt: Any) -> tuple[list[str], list[str]]:
        """(per-row prelude, per-element lines) storing the epilogue of ``value`` (the result,
        in the accumulator) into ``target``."""
        if self.plan is None:
            return [], [f"{target} = {red.store_expr(value, out_dt)}"]
        prelude, body = _program_source(self.plan, self.used, self.modes)
        store = f"{target} = {store_source(f'y{self.plan.output}', np.dtype(out_dt))}"
        return ([epilogue_names(s) for s in prelude],
                [f"ev0 = {value}"] + [epilogue_names(s) for s in body + [store]])


def _loop(prelude: list[str], body: list[str], tail: list[str], start: str, stop: str,
          T: int) -> list[str]:
    """``if row < rows:`` the prelude, then elements ``start, start + T, ...`` below ``stop``."""
    inner = body + tail + [f"j += {T}"]
    return (["if row < rows:"] + ["    " + s for s in prelude + [f"j = {start}",
                                                               f"while j < {stop}:"]]
            + ["        " + s for s in inner])


def _rows_head(T: int, B: int) -> list[str]:
    return _HEAD + [f"t = tid & {T - 1}", f"row = gpu.blockIdx.x * {B // T} + (tid >> "
                                          f"{red.log2(T)})"]


def _fold_source(name: str, plan: ProgramPlan, used: Sequence[int], modes: str, kind: str,
                 out_dt: Any, T: int, B: int, ep: Epilogue) -> str:
    """A fold over row segments; ``out_dt`` None writes the states (one per segment)."""
    acc = compute_class(accumulator(plan.steps[plan.output].dtype))
    merge = "sum" if kind == "mean" else kind
    prelude, body = _value(plan, used, modes, acc)
    alloc, tree = red.rows_reduce(["c0"], [accumulator(plan.steps[plan.output].dtype)],
                                  f"merge_{merge}", T, B, "r")
    lines = _rows_head(T, B) + alloc + [f"c0 = {_INIT[merge]}"]
    lines += _loop(prelude + ["lo = gpu.blockIdx.y * seg", "hi = min(lo + seg, n)"], body,
                   [f"c0 = {_MERGE[merge]}".replace("o0", "v")], "lo + t", "hi", T)
    lines += tree + ["if t == 0 and row < rows:"]
    if out_dt is None:
        lines.append("    out[row * gpu.gridDim.y + gpu.blockIdx.y] = c0")
    else:
        pre, store = ep.source("c0 / A(fscal)" if kind == "mean" else "c0", "out[row]", out_dt)
        lines += ["    " + s for s in pre + store]
    params = "".join(f"a{i}, q{i}, s{i}, " for i in used) + ep.params() + \
        "rows, n, seg, fscal, out"
    return _DEVICE + f"\n\ndef {name}({params}):\n" + red.indent(lines, 4) + "\n"


def _softmax_source(name: str, plan: ProgramPlan, used: Sequence[int], modes: str, log: bool,
                    out_dt: Any, T: int, B: int, ep: Epilogue) -> str:
    vdt = plan.steps[plan.output].dtype
    acc = compute_class(accumulator(vdt))
    prelude, body = _value(plan, used, modes, acc)
    alloc_a, tree_max = red.rows_reduce(["mx"], [accumulator(vdt)], "merge_max", T, B, "a")
    alloc_b, tree_sum = red.rows_reduce(["sm"], [accumulator(vdt)], "merge_sum", T, B, "b")
    lines = [*_rows_head(T, B), *alloc_a, *alloc_b, "mx = LOW"]
    lines += _loop(prelude, body, ["mx = v if v > mx or v != v else mx"], "t", "n", T)
    lines += tree_max + ["shift = mx"]
    if log:     # SciPy's rule: shift by 0 when the max is not finite
        lines += ["if not (mx > LOW and mx < HIGH):", "    shift = A(0)"]
    lines.append("sm = A(0)")
    lines += _loop(prelude, body, ["sm += exp_(v - shift)"], "t", "n", T)
    lines += tree_sum + ["lse = log_(sm)" if log else "inv = A(1) / sm"]
    pre, store = ep.source("(v - shift) - lse" if log else "exp_(v - shift) * inv",
                           "out[row * n + j]", out_dt)
    lines += _loop(prelude + pre, body, store, "t", "n", T)
    params = "".join(f"a{i}, q{i}, s{i}, " for i in used) + ep.params() + "rows, n, out"
    return _DEVICE + f"\n\ndef {name}({params}):\n" + red.indent(lines, 4) + "\n"


if gpu.SIMULATOR:
    _ROUNDED = {name: (lambda a, b: a + b) if "add" in name else (lambda a, b: a - b)
                for name in ("fadd_rn", "fsub_rn", "dadd_rn")}
else:
    _ROUNDED = {name: getattr(gpu.libdevice, name) for name in ("fadd_rn", "fsub_rn", "dadd_rn")}
"""Adds and subtracts rounded on their own: the compiler cannot contract them with the multiply
that computed an operand into one fused multiply-add."""


def _norm_source(name: str, plan: ProgramPlan, used: Sequence[int], modes: str, rms: bool,
                 out_dt: Any, T: int, B: int, ep: Epilogue) -> str:
    vdt = plan.steps[plan.output].dtype
    acc = compute_class(accumulator(vdt))
    accs = [accumulator(vdt)]
    # Every pass recomputes the value v; the passes of layernorm first use it in a rounded add
    # or subtract, so that v is rounded alike in each: a constant row gives exactly
    # v - hi - lo = 0 (a contraction into an fma in one pass and not another would not, and
    # with a zero variance rstd is 1 / sqrt(eps)).
    f64 = accs[0] == np.float64
    add, centred = ("dadd_rn", "dadd_rn(v, -hi)") if f64 else ("fadd_rn", "fsub_rn(v, hi)")
    prelude, body = _value(plan, used, modes, acc)
    if rms:
        alloc, tree = red.rows_reduce(["s2"], accs, "merge_sum", T, B, "a")
        lines = [*_rows_head(T, B), *alloc, "s2 = A(0)"]
        lines += _loop(prelude, body, ["s2 += v * v"], "t", "n", T)
        lines += tree + ["rstd = A(1.0 / sqrt_(np.float64(s2 / A(n)) + eps))"]
        value = "v * rstd"
    else:
        alloc_a, tree_a = red.rows_reduce(["s"], accs, "merge_sum", T, B, "a")
        alloc_b, tree_b = red.rows_reduce(["d1", "d2"], accs * 2, "merge_sum2", T, B, "b")
        lines = [*_rows_head(T, B), *alloc_a, *alloc_b, "s = A(0)"]
        lines += _loop(prelude, body, [f"s = {add}(s, v)"], "t", "n", T)
        lines += tree_a + ["hi = s / A(n)", "d1 = A(0)", "d2 = A(0)"]
        lines += _loop(prelude, body, [f"d = {centred}", "d1 += d", "d2 += d * d"], "t",
                       "n", T)
        # sum((d - lo)^2) = sum(d^2) - sum(d) * lo, with lo = sum(d) / n.
        lines += tree_b + ["lo = d1 / A(n)", "var = (d2 - d1 * lo) / A(n)",
                           "var = var if var > A(0) else A(0)",
                           "rstd = A(1.0 / sqrt_(np.float64(var) + eps))"]
        value = f"({centred} - lo) * rstd"
    pre, store = ep.source(value, "out[row * n + j]", out_dt)
    lines += _loop(prelude + pre, body, store, "t", "n", T)
    params = "".join(f"a{i}, q{i}, s{i}, " for i in used) + ep.params() + "rows, n, eps, out"
    return _DEVICE + f"\n\ndef {name}({params}):\n" + red.indent(lines, 4) + "\n"


def _finish_source(name: str, ep: Epilogue, out_dt: Any, B: int) -> str:
    """The epilogue over merged fold values ``vals``, a thread a row."""
    pre, store = ep.source("vals[row]", "out[row]", out_dt)
    lines = [f"row = gpu.blockIdx.x * {B} + gpu.threadIdx.x", "if row < rows:"]
    lines += ["    " + s for s in pre + store]
    return f"def {name}(vals, {ep.params()}rows, out):\n" + red.indent(lines, 4) + "\n"


GENERATED: dict[tuple[Any, ...], gpu.Kernel] = {}
"""Generated kernels by (program, operand dtypes, reduction, sink, layout modes, T, B,
epilogue)."""


def _build(key: tuple[Any, ...], text: str, header: str, acc: np.dtype, B: int) -> gpu.Kernel:
    # The name carries a hash of the source: it keys the on-disk cubin cache.
    name = "fused_reduction_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    ns = {**NAMESPACE, **red.namespace(acc), **_ROUNDED}
    if len(GENERATED) > 1024:
        GENERATED.clear()
    k = GENERATED[key] = red.build(name, header + text.replace("KERNEL", name, 1), ns,
                                   __name__, threads=B)
    return k


def _header(*programs: Any) -> str:
    return "".join("# " + line + "\n" for p in programs if p is not None
                   for line in str(p).splitlines())


def _kernel_for(program: Program, plan: ProgramPlan, reduce: str, out_dt: Any, modes: str,
                T: int, B: int, ep: Epilogue) -> gpu.Kernel:
    sink = None if out_dt is None else np.dtype(out_dt).str
    key = (program.key, plan.in_dtypes, reduce, sink, modes, T, B, ep.key)
    k = GENERATED.get(key)
    if k is not None:
        return k
    used = used_inputs(plan)
    if reduce in NORMS:
        text = _norm_source("KERNEL", plan, used, modes, reduce == "rmsnorm", out_dt, T, B, ep)
    elif reduce in ROW_OPS:
        text = _softmax_source("KERNEL", plan, used, modes, reduce == "log_softmax", out_dt,
                               T, B, ep)
    else:
        text = _fold_source("KERNEL", plan, used, modes, reduce, out_dt, T, B, ep)
    return _build(key, text, _header(program, ep.program),
                  accumulator(plan.steps[plan.output].dtype), B)


def _finish_kernel(ep: Epilogue, out_dt: Any, acc: np.dtype, B: int) -> gpu.Kernel:
    key = ("finish", ep.key, np.dtype(out_dt).str, acc.str, B)
    k = GENERATED.get(key)
    if k is not None:
        return k
    return _build(key, _finish_source("KERNEL", ep, out_dt, B), _header(ep.program), acc, B)


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
        if any(s < 0 for s in a.strides):
            a = xp.ascontiguousarray(a)
        a, st, inner = row_layout(a, shape, nkept,
                                  lambda a: xp.ascontiguousarray(xp.broadcast_to(a, shape)))
        view = gpu.kernel_view(a)
        if a.flags.c_contiguous:
            flat = view.reshape(-1)
        else:
            span = 1 + sum((d - 1) * (s // a.itemsize) for d, s in zip(a.shape, a.strides))
            flat = strided_view(view, (span,), (1,))
        args += [flat, _row_offsets(shape[:nkept], st[:nkept]), int(inner)]
        modes += "b" if inner == 0 or n == 1 else "c" if inner == 1 else "s"
    return args, modes


def _epilogue(epilogue: Program | None, extras: Sequence[Any] | None, vdt: np.dtype,
              reduce: str, kept: tuple[int, ...], out: Any) -> tuple[Epilogue, list[Any]]:
    """The epilogue as the kernels apply it, and its operands' kernel arguments."""
    if epilogue is None:
        return Epilogue(), []
    extras = list(extras or ())
    plan, used = epilogue_plan(epilogue, vdt, extras)
    shape = tuple(int(d) for d in out.shape)
    args, modes = _operands([None, *extras], used, shape, epilogue_rows(reduce, kept, shape))
    return Epilogue(epilogue, plan, used, modes), args


def launch(arrays: Sequence[Any], extras: Sequence[Any] | None, out: Any, program: Program,
           reduce: str, axis: tuple[int, ...], config: Config, eps: float | None = None,
           epilogue: Program | None = None) -> None:
    """Reduce ``program``'s value over ``arrays`` into ``out`` (C-contiguous), through
    ``epilogue`` over the result and ``extras`` when given."""
    plan = plan_program(program, [a.dtype for a in arrays])
    vdt = plan.steps[plan.output].dtype
    shape = tuple(int(d) for d in np.broadcast_shapes(*[tuple(a.shape) for a in arrays]))
    kept, reduced = split_value(shape, reduce, axis)
    rows, n = math.prod(kept), math.prod(reduced)
    if rows == 0 or out.size == 0:
        return
    if n == 0 and epilogue is None:       # max/min never get here (the meta rule raises)
        red.fill(out, np.nan if reduce == "mean" else 0.0)
        return
    ep, eargs = _epilogue(epilogue, extras, vdt, reduce, kept, out)
    target = red.out_storage(out).reshape(-1)
    acc = accumulator(vdt)
    if n == 0:
        vals = gpu.array_module().full(rows, np.nan if reduce == "mean" else 0.0, acc)
        _finish(vals, ep, eargs, rows, out.dtype, acc, config, target)
        return
    used = used_inputs(plan)
    args, modes = _operands(arrays, used, shape, len(kept))
    if reduce in ROW_OPS:
        T = min(red.TMAX, red.pow2ceil(-(-n // config.work)))
        B = max(T, config.block)
        k = _kernel_for(program, plan, reduce, out.dtype, modes, T, B, ep)
        tail = [rows, n] + ([float(eps)] if reduce in NORMS else []) + [target]
        gpu.launch(k, -(-rows // (B // T)), B, args + eargs + tail)
        return
    T, B, S, seg = red.row_schedule(rows, n, config)
    grid = (-(-rows // (B // T)), S)
    if S == 1:
        k = _kernel_for(program, plan, reduce, out.dtype, modes, T, B, ep)
        gpu.launch(k, grid, B, args + eargs + [rows, n, seg, float(n), target])
        return
    parts = gpu.array_module().empty(rows * S, acc)
    k = _kernel_for(program, plan, reduce, None, modes, T, B, Epilogue())
    gpu.launch(k, grid, B, args + [rows, n, seg, float(n), parts])
    merge = Config(block=config.block, work=config.work, split=0)
    if ep.plan is None:
        red.run(reduce, parts, rows, S, 1, acc, merge, target=target, out_dt=vdt,
                fscal=float(n))
        return
    vals = gpu.array_module().empty(rows, acc)
    red.run(reduce, parts, rows, S, 1, acc, merge, target=vals, out_dt=acc, fscal=float(n))
    _finish(vals, ep, eargs, rows, out.dtype, acc, config, target)


def _finish(vals: Any, ep: Epilogue, eargs: list[Any], rows: int, out_dt: Any, acc: np.dtype,
            config: Config, target: Any) -> None:
    B = config.block
    gpu.launch(_finish_kernel(ep, out_dt, acc, B), -(-rows // B), B,
               [vals, *eargs, rows, target])


# --- registration ----------------------------------------------------------------------------

CONFIGS = red.CONFIGS
"""The reduction family's: ``block`` threads a block (at least), ``work`` elements a thread
aims at (the row group size and the segment split), ``split`` at least this many segments."""


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return red.SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    plans = kernel_plans(metas, attrs)
    return bool(plans) and all(p.steps[j].body in BODIES for p in plans for j in p.live)


# alias_ok=False: a broadcast operand may be read again after rows of out are written.
@kernel("fused_reduction", backend="cuda", configs=CONFIGS, supports=_supports,
        heuristic=_heuristic, alias_ok=False)
def fused_reduction_cuda(arrays: Sequence[Any], extras: Sequence[Any] | None, *, out: Any,
                         config: Config, program: Program, reduce: str, axis: tuple[int, ...],
                         keepdims: bool, eps: float | None, epilogue: Program | None) -> None:
    launch(arrays, extras, out, program, reduce, axis, config, eps, epilogue)


__all__ = ["GENERATED", "launch"]
