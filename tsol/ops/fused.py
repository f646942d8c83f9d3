"""fused_elementwise: a chain or DAG of elementwise ops run as one kernel.

The schedule layer builds a ``Program`` from a captured group of elementwise nodes; each
``Step`` names a registered elementwise op and where its operands come from (an operand of the
fused call, an earlier step, or a Python scalar). A kernel evaluates every step per element
without writing intermediates to memory:

- each step computes in the compute type its own kernel would use (float16/bfloat16/float32 in
  float32, float64 in float64, integers and bool in int64, uint64 alone), and float
  intermediates are not rounded to their storage dtype (the one rounding is the final store);
- integer and bool intermediates are converted to their step dtype exactly as the unfused op
  stores them, so integer arithmetic wraps at the same places;
- a Python scalar converts to the dtype the unfused op would give it (NEP 50), then computes
  like a 0-d operand of that dtype.

``plan_program`` is the one place these numerics are decided: the meta rule validates a program
with it and the backend kernels generate code from its ``ProgramPlan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, TSOLError, op_error
from tsol.ops.base import Meta, defop, meta_of, promote
from tsol.ops.rules import broadcast_shapes
from tsol.registry import NON_DIFFERENTIABLE, OPS, OpDef

__all__ = ["fused_elementwise"]

OP = "fused_elementwise"
STEP_FAMILY = "elementwise"
_SCALARS = (bool, int, float)


@dataclass(frozen=True)
class Step:
    """One elementwise op of a program.

    ``op``: a registered op of family ``elementwise``; ``args``: one ref per op input, each
    ``("in", i)`` (operand i of the fused call), ``("step", j)`` (the result of an earlier step
    j) or ``("const", value)`` (a Python scalar; ``None`` for a bound ``clip`` leaves out);
    ``attrs``: the op's attributes as sorted ``(name, value)`` pairs, dtypes by name;
    ``dtype``: the step's result dtype name, as the op's meta rule gives it.
    """

    op: str
    args: tuple
    attrs: tuple = ()
    dtype: str = ""

    def __str__(self) -> str:
        refs = []
        for kind, *rest in self.args:
            value = rest[0] if rest else None
            refs.append({"in": f"in{value}", "step": f"%{value}"}.get(kind, repr(value)))
        attrs = "".join(f", {k}={v!r}" for k, v in self.attrs)
        return f"{self.op}({', '.join(refs)}{attrs}) : {self.dtype}"


@dataclass(frozen=True)
class Program:
    """Steps in evaluation order; ``output`` is the index of the step whose value is the result.

    Frozen and hashable; ``repr`` is stable and keys the compiled kernels."""

    steps: tuple[Step, ...]
    output: int

    @property
    def key(self) -> str:
        """``repr(self)``, computed once: the cache key of plans and generated kernels."""
        try:
            return self.__dict__["_key"]
        except KeyError:
            object.__setattr__(self, "_key", repr(self))
            return self.__dict__["_key"]

    def __str__(self) -> str:
        lines = [f"%{j} = {s}" for j, s in enumerate(self.steps)]
        return "\n".join(lines + [f"return %{self.output}"])


class StepPlan(NamedTuple):
    """A validated step. ``args``: ``("in", i)``, ``("step", j)`` or ``("const", value,
    dtype)`` with the value already converted to that dtype (a missing clip bound dropped);
    ``arg_dtypes``: each arg's dtype; ``body``: the scalar body of the kernel tables;
    ``runs_in``: the dtype whose compute class the body computes in; ``holds_in``: the dtype
    whose compute class holds the result (converted exactly to ``dtype`` first when that is an
    integer or bool dtype)."""

    op: str
    body: str
    args: tuple
    arg_dtypes: tuple
    attrs: dict
    dtype: np.dtype
    runs_in: np.dtype
    holds_in: np.dtype


class ProgramPlan(NamedTuple):
    """A validated program for given operand dtypes. ``live``: the steps the output needs;
    ``int_exponents``: operands that are exponents of integer ``power`` steps (a kernel checks
    they hold no negative value, as ``power`` does)."""

    steps: tuple[StepPlan, ...]
    output: int
    in_dtypes: tuple[np.dtype, ...]
    live: tuple[int, ...]
    int_exponents: tuple[int, ...]


# --- validation ------------------------------------------------------------------------------

def _fail(problem: str, fix: str, operands: Sequence[Any] = (), cls: type = ArgumentError
          ) -> TSOLError:
    return op_error(cls, OP, problem, fix, operands)


def _step_opdef(j: int, step: Any) -> OpDef:
    if not isinstance(step, Step):
        raise _fail(f"step {j} is a {type(step).__name__}, not a Step",
                    "build programs from tsol.ops.fused.Step and Program")
    opdef = OPS.get(step.op)
    if opdef is None or opdef.family != STEP_FAMILY:
        what = "is not a registered op" if opdef is None else f"is a {opdef.family} op"
        raise _fail(f"step {j}: {step.op!r} {what}; steps run elementwise ops only",
                    "use an op of family 'elementwise' (add, exp, where, astype, ...)")
    return opdef


def _attrs(j: int, step: Step, opdef: OpDef) -> dict[str, Any]:
    names = [n for n in opdef.signature.parameters if n not in opdef.inputs and n != "out"]
    attrs = {n: opdef.signature.parameters[n].default for n in names}
    if not isinstance(step.attrs, tuple) or not all(
            isinstance(p, tuple) and len(p) == 2 for p in step.attrs):
        raise _fail(f"step {j} ({step.op}): attrs {step.attrs!r} are not (name, value) pairs",
                    "pass attrs as a sorted tuple of (name, value) pairs")
    for name, value in step.attrs:
        if name not in attrs:
            raise _fail(f"step {j} ({step.op}): unknown attribute {name!r}",
                        f"use the op's attributes ({', '.join(names) or 'none'})")
        attrs[name] = value
    missing = [n for n, v in attrs.items() if v is opdef.signature.parameters[n].empty]
    if missing:
        raise _fail(f"step {j} ({step.op}): attribute {missing[0]!r} is missing",
                    f"add ({missing[0]!r}, value) to the step's attrs")
    return attrs


def _arg_meta(j: int, step: Step, pos: int, ref: Any, in_dtypes: Sequence[np.dtype],
              step_dtypes: Sequence[np.dtype]) -> Meta | None:
    """The meta of one arg ref (a weak meta for a Python scalar, None for a missing bound)."""
    if not (isinstance(ref, tuple) and len(ref) == 2 and ref[0] in ("in", "step", "const")):
        raise _fail(f"step {j} ({step.op}): arg {ref!r} is not a ref",
                    "use ('in', i), ('step', j) or ('const', python_scalar)")
    kind, value = ref
    if kind == "const":
        if value is None and step.op == "clip" and pos > 0:
            return None
        if not isinstance(value, _SCALARS) or isinstance(value, np.generic):
            raise _fail(f"step {j} ({step.op}): const {value!r} is not a Python bool, int or "
                        "float", "pass the scalar as a Python number (float(x), int(x))")
        return meta_of(value)
    limit = len(in_dtypes) if kind == "in" else j
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        where = (f"the call has {len(in_dtypes)} operands" if kind == "in"
                 else "a step may use only earlier steps")
        raise _fail(f"step {j} ({step.op}): {ref!r} is out of range ({where})",
                    "fix the program's refs")
    return Meta((), in_dtypes[value] if kind == "in" else step_dtypes[value])


def _rethrow(exc: TSOLError, j: int, step: Step) -> TSOLError:
    """An op's own meta error, said of the step it came from."""
    msg = f"tsol.{OP}: step {j} ({step.op}) of the program: {exc}"
    try:
        return type(exc)(msg)
    except TypeError:
        return TSOLError(msg)


def _const_dtype(j: int, step: Step, value: Any, strong: Sequence[np.dtype]
                 ) -> tuple[Any, np.dtype]:
    """A Python scalar converted the way the unfused op converts it (the strong operand dtypes
    and NEP 50), as a Python number, and that dtype."""
    dt = dtypes.result_type(*strong, value) if strong else np.result_type(value)
    try:
        with np.errstate(all="ignore"):
            stored = np.asarray(value, dtype=dt)
    except OverflowError:
        raise _fail(f"step {j} ({step.op}): Python integer {value} does not fit {dt}",
                    "fold it into a wider dtype or pass a value in range", cls=DTypeError) from None
    if dt.kind == "f" or dt in dtypes.HALF:
        return float(stored.astype(np.float64)), dt
    return int(stored), dt


def _class_dtype(dt: np.dtype) -> np.dtype:
    """float32 for the dtypes that compute in float32 (the half types too), else ``dt``."""
    return dtypes.float32 if dt in dtypes.FLOATS and dt != dtypes.float64 else dt


def _runs_in(step: Step, metas: Sequence[Meta | None], out: np.dtype) -> np.dtype:
    """The dtype whose compute class a step's body uses, as the unfused kernels choose it:
    astype computes in its input's, where and arithmetic in the result's, and an op with a
    bool result (comparisons) in its operands' promoted dtype."""
    present = [m for m in metas if m is not None]
    if step.op == "astype":
        return present[0].dtype
    if step.op == "where" or out != dtypes.bool_:
        return out
    return promote(step.op, *present)


def _holds_in(step: Step, runs_in: np.dtype, out: np.dtype) -> np.dtype:
    """A float cast keeps the wider of its two classes (no rounding inside the kernel)."""
    if step.op == "astype" and out in dtypes.FLOATS:
        both32 = _class_dtype(runs_in) == dtypes.float32 and _class_dtype(out) == dtypes.float32
        return dtypes.float32 if both32 else dtypes.float64
    return out


def _body(step: Step, attrs: dict[str, Any], args: Sequence[Any]) -> str:
    if step.op == "gelu" and attrs.get("approximate") == "tanh":
        return "gelu_tanh"
    if step.op == "clip" and None in args:
        return "minimum" if args[1] is None else "maximum"
    return step.op


def _plan_step(j: int, step: Step, in_dtypes: Sequence[np.dtype],
               step_dtypes: Sequence[np.dtype]) -> StepPlan:
    opdef = _step_opdef(j, step)
    if not isinstance(step.args, tuple) or len(step.args) != len(opdef.inputs):
        raise _fail(f"step {j} ({step.op}): {len(step.args) if isinstance(step.args, tuple) else 0}"
                    f" args for an op of {len(opdef.inputs)} inputs",
                    f"give one ref per input ({', '.join(opdef.inputs)})")
    attrs = _attrs(j, step, opdef)
    metas = [_arg_meta(j, step, k, ref, in_dtypes, step_dtypes)
             for k, ref in enumerate(step.args)]
    try:
        if opdef.normalize is not None:
            attrs = opdef.normalize(metas, **attrs)
        result = opdef.meta(*metas, **attrs)
    except TSOLError as exc:
        raise _rethrow(exc, j, step) from None
    try:
        declared = dtypes.dtype(step.dtype)
    except (DTypeError, TypeError):
        declared = None
    if declared != result.dtype:
        raise _fail(f"step {j} ({step.op}) declares dtype {step.dtype!r} but its meta rule "
                    f"gives {result.dtype.name} for operands "
                    f"{', '.join(str(m.dtype) for m in metas if m is not None)}",
                    f"set the step's dtype to {result.dtype.name!r} "
                    "(tsol.ops.fused.with_dtypes fills them in)", cls=DTypeError)
    strong = [m.dtype for m in metas if m is not None and not m.weak]
    args, arg_dtypes = [], []
    for ref, m in zip(step.args, metas, strict=True):
        if m is None:
            continue
        if ref[0] == "const":
            value, dt = _const_dtype(j, step, ref[1], strong)
            args.append(("const", value, dt))
            arg_dtypes.append(dt)
        else:
            args.append(ref)
            arg_dtypes.append(m.dtype)
    runs_in = _runs_in(step, metas, result.dtype)
    return StepPlan(op=step.op, body=_body(step, attrs, [r[1] if r[0] == "const" else r
                                                         for r in step.args]),
                    args=tuple(args), arg_dtypes=tuple(arg_dtypes), attrs=attrs,
                    dtype=result.dtype, runs_in=runs_in,
                    holds_in=_holds_in(step, runs_in, result.dtype))


def _live(steps: Sequence[StepPlan], output: int) -> tuple[int, ...]:
    need, todo = set(), [output]
    while todo:
        j = todo.pop()
        if j not in need:
            need.add(j)
            todo += [r[1] for r in steps[j].args if r[0] == "step"]
    return tuple(sorted(need))


def _int_exponents(steps: Sequence[StepPlan], live: Sequence[int]) -> tuple[int, ...]:
    found = set()
    for j in live:
        s = steps[j]
        if s.op != "power" or s.runs_in.kind not in "biu":
            continue
        ref = s.args[1]
        if ref[0] == "const" and ref[1] < 0:
            raise _fail(f"step {j} (power): integers to negative integer powers are not allowed "
                        "(as in NumPy)", "cast the base to a float dtype first")
        if ref[0] == "in" and s.arg_dtypes[1] in dtypes.SIGNED:
            found.add(ref[1])
    return tuple(sorted(found))


_plans: dict[tuple[str, tuple[np.dtype, ...]], ProgramPlan] = {}


def plan_program(program: Program, in_dtypes: Sequence[Any]) -> ProgramPlan:
    """Validate ``program`` for operands of ``in_dtypes`` and decide its numerics.

    Raises ArgumentError for a malformed program (an unknown or non-elementwise op, a ref out
    of range, wrong arity or attributes), DTypeError where a step's declared dtype differs from
    its op's meta rule or a constant does not fit, and the step op's own error (said of the
    step) where its meta rule fails. Cached per (program repr, dtypes).
    """
    if not isinstance(program, Program):
        raise _fail(f"program is a {type(program).__name__}, not a Program",
                    "pass program=tsol.ops.fused.Program(steps, output)")
    in_dtypes = tuple(np.dtype(d) for d in in_dtypes)
    key = (program.key, in_dtypes)
    plan = _plans.get(key)
    if plan is not None:
        return plan
    steps = program.steps
    if not isinstance(steps, tuple) or not steps:
        raise _fail("the program has no steps", "give it at least one Step")
    out = program.output
    if isinstance(out, bool) or not isinstance(out, int) or not 0 <= out < len(steps):
        raise _fail(f"output {out!r} is not a step index (the program has {len(steps)} steps)",
                    "set output to the index of the result's step")
    planned: list[StepPlan] = []
    for j, step in enumerate(steps):
        planned.append(_plan_step(j, step, in_dtypes, [s.dtype for s in planned]))
    live = _live(planned, out)
    plan = ProgramPlan(tuple(planned), out, in_dtypes, live, _int_exponents(planned, live))
    if len(_plans) > 4096:
        _plans.clear()
    _plans[key] = plan
    return plan


def with_dtypes(program: Program, in_dtypes: Sequence[Any]) -> Program:
    """``program`` with every step's ``dtype`` set by its op's meta rule for ``in_dtypes``.

    >>> import numpy as np
    >>> p = Program((Step("add", (("in", 0), ("const", 1))),), 0)
    >>> with_dtypes(p, [np.int8]).steps[0].dtype
    'int8'
    """
    in_dtypes = [np.dtype(d) for d in in_dtypes]
    steps: list[Step] = []
    for j, step in enumerate(program.steps):
        opdef = _step_opdef(j, step)
        known = [dtypes.dtype(s.dtype) for s in steps]
        metas = [_arg_meta(j, step, k, ref, in_dtypes, known) for k, ref in enumerate(step.args)]
        attrs = _attrs(j, step, opdef)
        try:
            if opdef.normalize is not None:
                attrs = opdef.normalize(metas, **attrs)
            dt = opdef.meta(*metas, **attrs).dtype
        except TSOLError as exc:
            raise _rethrow(exc, j, step) from None
        steps.append(Step(step.op, step.args, step.attrs, dt.name))
    return Program(tuple(steps), program.output)


# --- the op ----------------------------------------------------------------------------------

def _fused_meta(arrays: tuple[Meta, ...], *, program: Program) -> Meta:
    if not arrays:
        raise _fail("needs at least one operand array", "pass the program's operands")
    bad = [m for m in arrays if m.dtype not in dtypes.ALL]
    if bad:
        raise _fail(f"dtype {bad[0].dtype} is not supported", "cast the operand first",
                    arrays, cls=DTypeError)
    shape = broadcast_shapes(OP, *arrays)
    plan = plan_program(program, [m.dtype for m in arrays])
    return Meta(shape, plan.steps[plan.output].dtype)


def _fused_ref(arrays: Sequence[Any], *, program: Program) -> Any:
    """Each step by its op's float64 reference in order; integer and bool steps converted to
    their dtype (as the unfused ops store them); the result broadcast to every operand's."""
    values: list[Any] = []
    for step in program.steps:
        opdef = OPS[step.op]
        args = [arrays[v] if kind == "in" else values[v] if kind == "step" else v
                for kind, v in step.args]
        attrs = _attrs(0, step, opdef)
        if opdef.normalize is not None:
            attrs = opdef.normalize([None if a is None else meta_of(a) for a in args], **attrs)
        value = np.asarray(opdef.reference(*args, **attrs))
        dt = dtypes.dtype(step.dtype)
        if dt not in dtypes.FLOATS:
            with np.errstate(all="ignore"):
                value = value.astype(dt)
        values.append(value)
    shape = np.broadcast_shapes(*[np.shape(a) for a in arrays])
    return np.array(np.broadcast_to(values[program.output], shape))


def _fused_cost(arrays: tuple[Meta, ...], *, out: Meta, program: Program
                ) -> tuple[float, float]:
    plan = plan_program(program, [m.dtype for m in arrays])
    flops = 0.0
    for j in plan.live:
        s = plan.steps[j]
        opdef = OPS[s.op]
        if opdef.cost is None:
            continue
        metas = [Meta(out.shape, dt) for dt in s.arg_dtypes]
        flops += opdef.cost(*metas, out=Meta(out.shape, s.dtype), **s.attrs)[0]
    return flops, float(sum(m.nbytes for m in arrays) + out.nbytes)


@defop(family="fused", inputs=("arrays",), sequence_inputs=("arrays",), meta=_fused_meta,
       reference=_fused_ref, vjp=NON_DIFFERENTIABLE, cost=_fused_cost)
def fused_elementwise(arrays, *, program, out=None):
    """Run ``program`` (a chain or DAG of elementwise ops) over ``arrays`` as one kernel.

    ``arrays``: a list of arrays whose shapes broadcast together (NumPy rules); the result has
    the broadcast shape and the dtype of the program's output step. Each step computes in its
    op's compute type, float intermediates stay unrounded and integer ones wrap as the unfused
    ops do, so the result matches running the steps one by one within the dtype's tolerance.
    Built by the schedule layer from captured graphs; autodiff runs before fusion, so the op
    has no VJP. Raises ShapeError when the shapes do not broadcast, ArgumentError for a
    malformed program, DTypeError for a step dtype that disagrees with its op.

    >>> import numpy as np, tsol
    >>> from tsol.ops.fused import Program, Step
    >>> p = Program((Step("relu", (("in", 0),), dtype="float32"),
    ...              Step("multiply", (("step", 0), ("const", 2.0)), dtype="float32")), 1)
    >>> tsol.fused_elementwise([np.array([-1.0, 1.5], np.float32)], program=p)
    array([0., 3.], dtype=float32)
    """


# --- shared by the backends' code generators ---------------------------------------------------
# Kernels name compute classes "f32", "f64", "int" and "uint" and the class constructors F_<cls>;
# these helpers decide the parts of the generated code that do not depend on the backend.

def literal(value: Any, cls: str) -> str:
    """Source text of a constant in compute class ``cls``, through ``F_<cls>``; exact, with
    inf and NaN spelled out."""
    if cls in ("f32", "f64"):
        v = float(value)
        text = ("np.nan" if math.isnan(v) else ("np.inf" if v > 0 else "-np.inf")
                if math.isinf(v) else repr(v))
    else:
        text = repr(int(value))
    return f"F_{cls}({text})"


def arg_source(plan: ProgramPlan, s: StepPlan, k: int, compute_class: Callable[[Any], str]
               ) -> str:
    """Argument ``k`` of step ``s`` as source text in the step's compute class: operand i is
    ``v<i>``, step j's value ``y<j>`` (each in its own class, converted here). A where
    condition keeps its own class: its truth is the value's, not the value cast to the
    result type (0.25 is true in an integer where)."""
    ref = s.args[k]
    if ref[0] == "in":
        text, src = f"v{ref[1]}", compute_class(plan.in_dtypes[ref[1]])
    elif ref[0] == "step":
        text, src = f"y{ref[1]}", compute_class(plan.steps[ref[1]].holds_in)
    else:
        src = compute_class(ref[2])
        text = literal(ref[1], src)
    dst = compute_class(s.runs_in)
    return text if (s.body == "where" and k == 0) or src == dst else f"F_{dst}({text})"


def used_inputs(plan: ProgramPlan) -> tuple[int, ...]:
    """Operands the live steps read, in order."""
    return tuple(sorted({r[1] for j in plan.live for r in plan.steps[j].args if r[0] == "in"}))


def invariant_steps(plan: ProgramPlan, fixed: set[int]) -> set[int]:
    """Live steps that read only operands in ``fixed`` (broadcast along a kernel's loop),
    constants and other such steps: a kernel computes them once, outside the loop."""
    found: set[int] = set()
    for j in plan.live:
        if all(r[0] == "const" or (r[0] == "in" and r[1] in fixed)
               or (r[0] == "step" and r[1] in found) for r in plan.steps[j].args):
            found.add(j)
    return found


def step_lines(plan: ProgramPlan, fixed: set[int], source: Callable[[StepPlan, ProgramPlan], str]
               ) -> tuple[list[str], list[str]]:
    """The lines ``y<j> = ...`` of the live steps, each by a backend's ``source(step, plan)``:
    (the invariant ones, that read only operands in ``fixed``, constants and such steps, which
    a kernel computes once outside its loop; the others)."""
    invariant = invariant_steps(plan, fixed)
    hoisted: list[str] = []
    body: list[str] = []
    for j in plan.live:
        (hoisted if j in invariant else body).append(f"y{j} = {source(plan.steps[j], plan)}")
    return hoisted, body
