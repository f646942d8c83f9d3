"""CUDA kernel of fused_elementwise: one generated grid-stride kernel per program, dtypes and
layout mode.

The scalar bodies, loads and stores are the elementwise engine's (``elementwise.BODIES``,
``load_source``, ``store_source``, ``fmax``/``fmin``/``ipow``/``fpow``): each step's body gets
its compute class's constructor for ``F`` (``F_f32``...), so float32, float64 and integer steps
mix in one kernel, and its ``x0, x1, x2`` are replaced by the step's argument values converted
to that class. Integer and bool steps are converted exactly to their dtype with the engine's
store rule; float steps stay in their compute type until the final store.

Layout modes, as the engine's: ``flat`` when every operand is C-contiguous with the output's
shape or a single element (loaded once a thread, with the steps that read only such operands),
with an UNROLL-way main loop issuing every load before any store; ``strided`` otherwise, every
operand broadcast to the output's shape and merged to at most four dims (a dense copy first
when more remain).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Sequence

import numpy as np

from tsol.errors import ArgumentError, TSOLError, op_error
from tsol.kernels.cuda import gpu, replay
from tsol.kernels.cuda.elementwise import (
    BODIES,
    CLASS_TYPES,
    CONFIGS,
    INT,
    TEMPLATE,
    UINT,
    UNROLL,
    UNROLLED,
    compute_class,
    describe_launch,
    fmax,
    fmin,
    fpow,
    grid_stride_launch,
    ipow,
    load_source,
    store_source,
)
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


def _bind(expr: str, cls: str) -> str:
    return re.sub(r"(?<![\w.])F\(", f"F_{cls}(", expr)


def step_source(s: StepPlan, plan: ProgramPlan) -> str:
    """The value of step ``s`` in the class that holds it, as one expression."""
    cls = compute_class(s.runs_in)
    _, expr = BODIES[s.body]
    if s.body == "power":
        expr = expr.replace("pow_", "ipow" if cls in (INT, UINT) else "fpow")
    args = [arg_source(plan, s, k, compute_class) for k in range(len(s.args))]
    expr = re.sub(r"\bx(\d)\b", lambda m: f"({args[int(m.group(1))]})", _bind(expr, cls))
    hold = compute_class(s.holds_in)
    if s.dtype.kind not in "biu":
        return f"F_{hold}({expr})"
    return f"F_{hold}({store_source(expr, s.dtype)})"    # exactly what the unfused op stores


def _unrolled(body: list[str], store: str, names: set[str]) -> str:
    """The flat kernel's UNROLL-way main loop: element u of a trip is at i + u * step, and
    every element's loads come before the first store. ``names``: the per-element values."""
    lines = [f"        k{u} = i + {u} * step" for u in range(UNROLL)]

    def rename(line: str, u: int) -> str:
        return re.sub(r"\b([vy]\d+)\b", lambda m: m.group(1) + (f"_{u}" if m.group(1) in names
                                                                 else ""),
                      line.replace("[i]", f"[k{u}]"))
    for u in range(UNROLL):
        lines += [rename(line, u) for line in body]
    lines += [f"        out[k{u}] = " + rename(store, u) for u in range(UNROLL)]
    return UNROLLED.format(last=UNROLL - 1, count=UNROLL, body="\n".join(lines))


def source(plan: ProgramPlan, name: str, in_dts: Sequence[np.dtype], out_dt: np.dtype,
           modes: Sequence[str]) -> str:
    """The kernel's source for operands ``used_inputs(plan)`` in ``modes``."""
    used = used_inputs(plan)
    strided = "strided" in modes
    fixed, loads, hoisted = set(), [], []
    for i, dt, mode in zip(used, in_dts, modes, strict=True):
        idx = {"flat": "i", "scalar": "0", "strided": "i0, i1, i2, i3"}[mode]
        line = f"v{i} = " + _bind(load_source(i, dt, idx), compute_class(dt))
        if mode == "scalar":
            fixed.add(i)
            hoisted.append(line)
        else:
            loads.append(line)
    invariant, steps = step_lines(plan, fixed, step_source)
    hoisted += invariant
    store = store_source(f"y{plan.output}", out_dt)
    body = ["        " + line for line in loads + steps]
    setup = ["    " + line for line in hoisted]
    if strided:
        setup.append("    d1, d2, d3 = out.shape[1], out.shape[2], out.shape[3]")
        index = ("        i3 = i % d3\n        t = i // d3\n        i2 = t % d2\n"
                 "        t = t // d2\n        i1 = t % d1\n        i0 = t // d1")
        oidx, unrolled = "i0, i1, i2, i3", ""
    else:
        names = {line.split(" = ", 1)[0] for line in loads + steps}
        index, oidx, unrolled = "", "i", _unrolled(body, store, names)
    params = "".join(f"a{i}, " for i in used)
    return TEMPLATE.format(name=name, params=params, setup="\n".join(setup), index=index,
                           body="\n".join(body), oidx=oidx, store=store, unrolled=unrolled)


GENERATED: dict[tuple[Any, ...], gpu.Kernel] = {}
"""Generated kernels by (program, operand dtypes, output dtype, layout modes)."""

NAMESPACE = {"gpu": gpu, "np": np, "math": math, "fmax": fmax, "fmin": fmin, "ipow": ipow,
             "fpow": fpow, **{f"F_{cls}": getattr(np, t.split(".")[1])
                              for cls, t in CLASS_TYPES.items()}}
"""Globals of generated program code: the math helpers and the class constructors ``F_<cls>``."""


def _kernel_for(program: Program, plan: ProgramPlan, in_dts: Sequence[np.dtype],
                out_dt: np.dtype, modes: tuple[str, ...]) -> gpu.Kernel:
    key = (program.key, plan.in_dtypes, out_dt, modes)
    k = GENERATED.get(key)
    if k is not None:
        return k
    text = source(plan, "KERNEL", in_dts, out_dt, modes)
    # The name carries a hash of the source: it keys the on-disk cubin cache.
    name = "fused_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    text = text.replace("KERNEL", name, 1)
    namespace = dict(NAMESPACE)
    header = "\n".join("# " + line for line in str(program).splitlines())
    exec(compile(header + text, f"<tsol.kernels.cuda.fused:{name}>", "exec"), namespace)
    fn = namespace[name]
    fn.__module__ = __name__
    if len(GENERATED) > 1024:
        GENERATED.clear()
    k = GENERATED[key] = gpu.kernel(fn, source=header + text)
    return k


def _check_exponents(arrays: Sequence[Any], plan: ProgramPlan) -> None:
    if plan.int_exponents:
        replay.unreplayable()                 # a replay would skip this check of the values
    for i in plan.int_exponents:
        if arrays[i].size and bool((arrays[i] < 0).any()):
            raise op_error(ArgumentError, "fused_elementwise", f"operand {i} is an integer "
                           "power's exponent and holds a negative value (not allowed, as in "
                           "NumPy)", "cast the base to a float dtype first", list(arrays))


def launch(arrays: Sequence[Any], out: Any, program: Program, block: int) -> None:
    """Run ``program`` over ``arrays`` (broadcastable to ``out``) into ``out``."""
    plan = plan_program(program, [a.dtype for a in arrays])
    _check_exponents(arrays, plan)
    used = used_inputs(plan)
    operands = [arrays[i] for i in used]

    def rerun(dense: list[Any], tmp: Any) -> None:
        full = list(arrays)
        for i, d in zip(used, dense):
            full[i] = d
        launch(full, tmp, program, block)

    grid_stride_launch((program.key,), operands, out, block,
                       lambda modes: _kernel_for(program, plan,
                                                 [np.dtype(a.dtype) for a in operands],
                                                 np.dtype(out.dtype), modes), rerun)


# --- registration ----------------------------------------------------------------------------

def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    try:
        plan = plan_program(attrs["program"], [m.dtype for m in metas])
    except TSOLError:
        return False
    return all(plan.steps[j].body in BODIES for j in plan.live)


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return CONFIGS[0]


@kernel("fused_elementwise", backend="cuda", configs=CONFIGS, supports=_supports,
        heuristic=_heuristic, launch=describe_launch, replays=True)
def fused_elementwise_cuda(arrays: Sequence[Any], *, out: Any, config: Config,
                           program: Program) -> None:
    launch(arrays, out, program, config.block)


__all__ = ["GENERATED", "NAMESPACE", "launch", "source", "step_source"]
