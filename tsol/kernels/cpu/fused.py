"""CPU kernel of fused_elementwise: one generated Numba kernel per program, dtypes and layout.

The scalar bodies are the elementwise engine's (``elementwise.BODIES``): each step's body is
bound to its compute class (the math names of ``elementwise.COMPUTE`` get a per-class suffix, so
float32 and float64 steps can share one kernel) and its ``x0, x1, x2`` are replaced by the
step's argument values, converted to that class. Operands load through the engine's storage
table (half types as uint16 bits, ``elementwise_math.STORAGE_LOADS``) and the result stores
through its store rule (``store_expr``); integer and bool steps are converted exactly to their
dtype with the same rule, float steps stay in their compute type.

Layout, as the elementwise engine: operands broadcast to the output's shape (0 strides), dims
collapsed (``strides.collapse``) and padded to three ``(d0, d1, d2)``; ``prange`` runs over
tiles of ``block`` elements of the inner dim. The layout mode is each operand's inner stride
(``c`` unit, ``b`` broadcast: loaded once a tile, with the steps that read only such operands
and constants, ``s`` strided); the other strides are arguments. Unit-stride operands and the
output are sliced to the tile and indexed unsigned so the element loop vectorizes. Leading dims
beyond three loop in Python. The generated module goes through ``jit.render_template``, so its
compiled code lands in the Numba disk cache like every other kernel's.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import ArgumentError, TSOLError, op_error
from tsol.kernels.cpu.elementwise import (
    BODIES,
    COMPUTE,
    CONFIGS,
    PARALLEL_MIN_ELEMENTS,
    compute_class,
    describe_launch,
    raw_bytes,
)
from tsol.kernels.cpu.elementwise_math import STORAGE_LOADS, store_expr
from tsol.kernels.cpu.jit import render_template
from tsol.kernels.cpu.scalar import storage_view
from tsol.kernels.strides import collapse
from tsol.ops.fused import (
    Program,
    ProgramPlan,
    StepPlan,
    arg_source,
    plan_program,
    step_lines,
    used_inputs,
)
from tsol.registry import Config, kernel

INT_CLASSES = ("int", "uint")


def _aliases(cls: str) -> dict[str, str]:
    """Math name -> what it is bound to in compute class ``cls`` (``COMPUTE``'s header)."""
    pairs = (line.split(" = ", 1) for line in COMPUTE[cls][1].splitlines() if " = " in line)
    return {name.strip(): value.strip() for name, value in pairs}


_BOUND = {cls: _aliases(cls) for cls in COMPUTE}
_HELPERS = ("fmax", "fmin", "ipow", "f32_round_odd", "prefer_wide_vectors")
"""elementwise_math helpers the bodies and store rules call by name."""
_IMPORTS = ", ".join(sorted({v for names in _BOUND.values() for v in names.values()
                             if v.isidentifier()} | set(_HELPERS)))
_ALIASES = "\n".join(f"{name}__{cls} = {value}" for cls, names in _BOUND.items()
                      for name, value in names.items())


def bind_class(expr: str, cls: str) -> str:
    """``expr`` with its math names and ``F`` bound to class ``cls`` (``exp`` -> ``exp__f32``)."""
    names = _BOUND[cls]
    if names:
        expr = re.sub(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")\b",
                      rf"\1__{cls}", expr)
    return re.sub(r"(?<![\w.])F\(", f"F_{cls}(", expr)


def store_source(value: str, dt: np.dtype, cls: str) -> str:
    """The engine's store rule converting ``value`` (class ``cls``) into ``dt``'s storage."""
    return re.sub(r"\bv\b", f"({value})", store_expr(dt.name, COMPUTE[cls][0].name))


def has_body(s: StepPlan) -> bool:
    """True when the elementwise table has the step's body for its compute class."""
    return s.body in BODIES and compute_class(s.runs_in) in BODIES[s.body].classes


def operand_lines(plan: ProgramPlan, used: Sequence[int], modes: str, offset: str, stride: str,
                  count: str) -> tuple[list[str], list[str]]:
    """(lines once a block, lines per element ``j``) loading the ``used`` operands in their
    layout ``modes`` into ``v<i>`` and computing the live steps into ``y<j>``: operand ``i``'s
    block starts at element ``p<i> = offset`` of its raw storage ``a<i>`` and runs ``count``
    elements of stride ``stride`` (``{i}`` stands for the operand). A unit-stride operand is
    sliced to the block as ``w<i>``; a broadcast one, and the steps that read only such operands
    and constants, are loaded and computed once a block."""
    block, element = [], []
    for i, mode in zip(used, modes, strict=True):
        block.append(f"p{i} = {offset.format(i=i)}")
        if mode == "c":
            block.append(f"w{i} = a{i}[p{i}:p{i} + {count}]")
        index = {"c": f"w{i}[j]", "b": f"a{i}[p{i}]",
                 "s": f"a{i}[p{i} + np.int64(j) * {stride.format(i=i)}]"}[mode]
        load = re.sub(r"\bu\b", index, STORAGE_LOADS[plan.in_dtypes[i].name][1])
        line = f"v{i} = F_{compute_class(plan.in_dtypes[i])}({load})"
        (block if mode == "b" else element).append(line)
    fixed, steps = step_lines(plan, {i for i, m in zip(used, modes, strict=True) if m == "b"},
                              step_source)
    return block + fixed, element + steps


def step_source(s: StepPlan, plan: ProgramPlan) -> str:
    """The value of step ``s`` in the class that holds it, as one expression."""
    cls = compute_class(s.runs_in)
    body = BODIES[s.body]
    expr = body.int_expr if cls in INT_CLASSES and body.int_expr else body.expr
    if body.guard and cls == "f32":
        expr = f"({body.exact} if {body.guard} else {expr})"
    expr = bind_class(expr, cls)
    args = [arg_source(plan, s, k, compute_class) for k in range(len(s.args))]
    expr = re.sub(r"\bx(\d)\b", lambda m: f"({args[int(m.group(1))]})", expr)
    hold = compute_class(s.holds_in)
    if s.dtype.kind not in "biu":
        return f"F_{hold}({expr})"
    stored = store_source(expr, s.dtype, cls)        # exactly what the unfused op would store
    if s.dtype == dtypes.bool_ or s.dtype.itemsize == 8:
        return f"F_{hold}({stored})"
    return f"F_{hold}(np.{s.dtype.name}({stored}))"


TEMPLATE = '''"""Generated by tsol.kernels.cpu.fused (layout $MODES).

$PROGRAM
"""
import math  # noqa: F401

import numpy as np
from numba import prange

from tsol.kernels.cpu.elementwise_math import $IMPORTS  # noqa: F401
from tsol.kernels.cpu.jit import kernel_jit
from tsol.kernels.cpu.scalar import load_bf16, load_f16, store_bf16, store_f16  # noqa: F401

F_f32 = np.float32
F_f64 = np.float64
F_int = np.int64
F_uint = np.uint64
$ALIASES


@kernel_jit(parallel=True, $JIT_OPTIONS)
def run_parallel(ntiles, nck, d1, d2, block, ${PARAMS}out, ob, os0, os1):
    for t in prange(ntiles):
$TILE


@kernel_jit($JIT_OPTIONS)
def run_serial(ntiles, nck, d1, d2, block, ${PARAMS}out, ob, os0, os1):
    """run_parallel on the calling thread, for outputs too small to wake the thread pool."""
    for t in range(ntiles):
$TILE
'''


def _tile_source(plan: ProgramPlan, used: Sequence[int], modes: str, out_dt: np.dtype) -> str:
    """One tile's code. Unit-stride operands and the output are sliced to the tile and indexed
    by an unsigned ``j`` (no negative-index wraparound, which keeps LLVM from vectorizing)."""
    ind, inner = " " * 8, " " * 12
    lines = [f"{ind}prefer_wide_vectors()", f"{ind}row = t // nck",
             f"{ind}lo = (t - row * nck) * block", f"{ind}i0 = row // d1",
             f"{ind}i1 = row - i0 * d1", f"{ind}n = min(block, d2 - lo)",
             f"{ind}po = ob + i0 * os0 + i1 * os1 + lo", f"{ind}wo = out[po:po + n]"]
    hoisted, body = operand_lines(plan, used, modes,
                                  "b{i} + i0 * st{i}_0 + i1 * st{i}_1 + lo * st{i}_2", "st{i}_2",
                                  "n")
    last = plan.steps[plan.output]
    store = f"wo[j] = {store_source(f'y{plan.output}', out_dt, compute_class(last.holds_in))}"
    return "\n".join(lines + [ind + h for h in hoisted] + [f"{ind}for j in range(np.uint64(n)):"]
                     + [inner + s for s in body + [store]])


GENERATED: dict[tuple[Any, ...], ModuleType] = {}
"""Generated kernel modules by (program, operand dtypes, output dtype, layout mode)."""


def program_module(cache: dict[tuple[Any, ...], ModuleType], key: tuple[Any, ...], family: str,
                   template: str, subs: Callable[[], dict[str, str]]) -> ModuleType:
    """``cache[key]``, else ``template`` rendered with ``subs()`` (called on a miss only) and
    the ``$IMPORTS`` and ``$ALIASES`` every program's code needs, then cached (at most 1024
    modules). ``jit.render_template`` names the module's file by a hash of its source, which
    holds all of the key."""
    module = cache.get(key)
    if module is None:
        if len(cache) >= 1024:
            cache.clear()
        module = cache[key] = render_template(family, template, IMPORTS=_IMPORTS,
                                              ALIASES=_ALIASES, **subs())
    return module


def _module(program: Program, plan: ProgramPlan, out_dt: np.dtype, modes: str) -> ModuleType:
    def subs() -> dict[str, str]:
        used = used_inputs(plan)
        return {"MODES": modes or "-", "PROGRAM": str(program),
                "PARAMS": "".join(f"a{i}, b{i}, st{i}_0, st{i}_1, st{i}_2, " for i in used),
                "TILE": _tile_source(plan, used, modes, out_dt)}
    return program_module(GENERATED, (program.key, plan.in_dtypes, out_dt, modes), "fused",
                          TEMPLATE, subs)


def _element_strides(a: np.ndarray, shape: tuple[int, ...]) -> list[int]:
    lead = [0] * (len(shape) - a.ndim)
    return lead + [s // a.itemsize if n != 1 else 0
                   for s, n in zip(a.strides, a.shape, strict=True)]


def _check_exponents(arrays: Sequence[np.ndarray], plan: ProgramPlan) -> None:
    for i in plan.int_exponents:
        if arrays[i].size and arrays[i].min() < 0:
            raise op_error(ArgumentError, "fused_elementwise", f"operand {i} is an integer "
                           "power's exponent and holds a negative value (not allowed, as in "
                           "NumPy)", "cast the base to a float dtype first", list(arrays))


def launch(arrays: Sequence[np.ndarray], out: np.ndarray, program: Program, block: int) -> None:
    """Run ``program`` over ``arrays`` (broadcastable to ``out``, C-contiguous) into ``out``."""
    plan = plan_program(program, [a.dtype for a in arrays])
    _check_exponents(arrays, plan)
    if out.size == 0:
        return
    shape = tuple(out.shape)
    used = used_inputs(plan)
    raws, strides = [], []
    for i in used:
        a = arrays[i]
        if any(s % a.itemsize for s in a.strides):
            a = np.ascontiguousarray(a)
        sv = storage_view(a)
        raw, base = raw_bytes(sv)
        raws.append((raw.view(sv.dtype), base))
        strides.append(_element_strides(a, shape))
    ost = [s // out.itemsize for s in out.strides]
    dims, sts = collapse(shape, *strides, ost)
    dims, sts = list(dims), [list(st) for st in sts]
    while len(dims) < 3:
        dims.insert(0, 1)
        for st in sts:
            st.insert(0, 0)
    d0, d1, d2 = dims[-3:]
    modes = "".join("b" if st[-1] == 0 or d2 == 1 else "c" if st[-1] == 1 else "s"
                    for st in sts[:-1])
    module = _module(program, plan, out.dtype, modes)
    driver = module.run_parallel if out.size >= PARALLEL_MIN_ELEMENTS else module.run_serial
    nck = (d2 + block - 1) // block
    target = storage_view(out).reshape(-1)
    lead = dims[:-3]
    for index in np.ndindex(*lead):
        args: list[Any] = []
        for (raw, base), st in zip(raws, sts[:-1], strict=True):
            args += [raw, base + sum(i * s for i, s in zip(index, st)), *st[-3:]]
        ob = sum(i * s for i, s in zip(index, sts[-1]))
        driver(d0 * d1 * nck, nck, d1, d2, block, *args, target, ob, sts[-1][-3], sts[-1][-2])


# --- registration ----------------------------------------------------------------------------

def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    try:
        plan = plan_program(attrs["program"], [m.dtype for m in metas])
    except TSOLError:
        return False
    return all(has_body(plan.steps[j]) for j in plan.live)


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return CONFIGS[0]


@kernel("fused_elementwise", backend="cpu", configs=CONFIGS, supports=_supports,
        heuristic=_heuristic, launch=describe_launch)
def fused_elementwise_tiles(arrays: Sequence[np.ndarray], *, out: np.ndarray, config: Config,
                            program: Program) -> None:
    launch(arrays, out, program, config.block)


__all__ = ["GENERATED", "launch", "step_source", "has_body", "bind_class", "store_source",
           "operand_lines", "program_module"]
