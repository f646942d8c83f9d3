"""fused_reduction: an elementwise program reduced over trailing axes, or softmaxed or normalized
along the last axis, then an optional elementwise epilogue, as one kernel.

The schedule layer builds it from a reduction (sum, mean, max, min), a softmax/log_softmax or a
layernorm/rmsnorm whose input is an elementwise chain used only there (the prologue), and from
an elementwise chain that consumes such a result (the epilogue). The prologue ``Program`` (see
``tsol.ops.fused``) is evaluated per element inside the reduction's loop, so its value is never
written to memory; the epilogue ``Program`` is applied to each result element as it is written.
The value ``v = program(arrays)`` has the broadcast shape of the operands and a float dtype; the
reduction's result ``r`` has the dtype the unfused op gives ``v`` (that same dtype). The epilogue
reads ``r`` as its operand ``("in", 0)`` and ``extras[k - 1]`` as ``("in", k)``, each broadcast
to ``r``'s shape; the op's result is the epilogue's value (``r`` itself without one).

Numerics: each step computes as in ``fused_elementwise`` (float intermediates unrounded); the
reduction accumulates in float32 (float64 for float64 ``v``) in a fixed order that depends on
the shape alone, and ``r`` reaches the epilogue unrounded, in that accumulator type. The norms
have no affine step of their own: a layernorm's weight and bias become epilogue steps. A kernel
sees ``v`` as ``rows x n``: ``n`` the product of the reduced (trailing) dims, ``rows`` of the
others; ``row_layout`` and ``row_offsets`` below are the host-side layout rule both backends
share (for the epilogue's operands, over ``r``'s shape).
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, ShapeError, TSOLError, op_error
from tsol.ops.base import Meta, defop
from tsol.ops.fused import Program, ProgramPlan, Step, plan_program, used_inputs
from tsol.ops.reduction import reduced_shape
from tsol.ops.rules import broadcast_shapes, normalize_axes, normalize_axis
from tsol.registry import NON_DIFFERENTIABLE, OPS

__all__ = ["fused_reduction"]

OP = "fused_reduction"
FOLDS = ("sum", "mean", "max", "min")
"""Reductions over trailing axes."""
SOFTMAXES = ("softmax", "log_softmax")
NORMS = ("layernorm", "rmsnorm")
"""Normalizations without weight or bias (those are epilogue steps), with ``eps``."""
ROW_OPS = SOFTMAXES + NORMS
"""Along the last axis: the result has ``v``'s shape."""
REDUCES = FOLDS + ROW_OPS
_COST = {"sum": 1.0, "mean": 1.0, "max": 1.0, "min": 1.0, "softmax": 5.0, "log_softmax": 5.0,
         "layernorm": 7.0, "rmsnorm": 4.0}
"""Flops per element of the reduction itself (the programs' come from their steps' ops)."""


def _fail(cls: type, problem: str, fix: str, operands: Sequence[Any] = ()) -> TSOLError:
    return op_error(cls, OP, problem, fix, operands)


def value_dtype(arrays: Sequence[Meta], program: Any, what: str = "program") -> np.dtype:
    """The dtype of ``program``'s value for operands ``arrays``; the program's own errors are
    said of this op (and of ``what``: the program or the epilogue)."""
    try:
        plan = plan_program(program, [m.dtype for m in arrays])
    except TSOLError as exc:
        msg = str(exc).replace("tsol.fused_elementwise: ", "", 1)
        try:
            err = type(exc)(f"tsol.{OP}: {what}: {msg}")
        except TypeError:
            err = TSOLError(f"tsol.{OP}: {what}: {msg}")
        raise err from None
    return plan.steps[plan.output].dtype


def identity_program(dt: Any) -> Program:
    """The one-step program whose value is its operand 0 (of dtype ``dt``) itself."""
    name = np.dtype(dt).name
    return Program((Step("astype", (("in", 0),), (("dtype", name),), name),), 0)


def epilogue_operands(epilogue: Any) -> int:
    """How many extras ``epilogue`` takes: the highest k of its ``("in", k)`` refs (0 when it
    reads the result alone). Malformed steps count nothing: ``plan_program`` reports them."""
    found = [ref[1] for s in getattr(epilogue, "steps", ()) if isinstance(s, Step)
             and isinstance(s.args, tuple) for ref in s.args
             if isinstance(ref, tuple) and len(ref) == 2 and ref[0] == "in"
             and isinstance(ref[1], int) and not isinstance(ref[1], bool)]
    return max(found, default=0)


# --- rules -----------------------------------------------------------------------------------

def _eps(reduce: str, eps: Any, arrays: Sequence[Meta]) -> float | None:
    if reduce not in NORMS:
        if eps is not None:
            raise _fail(ArgumentError, f"eps={eps!r} applies to layernorm and rmsnorm, not "
                        f"{reduce}", "leave eps None", arrays)
        return None
    ok = (isinstance(eps, (int, float, np.integer, np.floating))
          and not isinstance(eps, (bool, np.bool_)) and math.isfinite(eps) and eps >= 0)
    if not ok:
        raise _fail(ArgumentError, f"{reduce} needs eps, a finite non-negative float, got "
                    f"{eps!r}", "pass eps such as 1e-5", arrays)
    return float(eps)


def _normalize(metas: Sequence[Any], *, program: Any = None, reduce: Any, axis: Any,
               keepdims: Any = False, eps: Any = None, epilogue: Any = None) -> dict[str, Any]:
    arrays, extras = metas[0], metas[1] or ()
    if not arrays:
        raise _fail(ArgumentError, "needs at least one operand array",
                    "pass the program's operands")
    if program is None:
        if len(arrays) != 1:
            raise _fail(ArgumentError, f"program=None (the identity) takes one operand array, "
                        f"got {len(arrays)}", "pass a program that reads them", arrays)
        program = identity_program(arrays[0].dtype)
    shape = broadcast_shapes(OP, *arrays)
    if reduce not in REDUCES:
        raise _fail(ArgumentError, f"reduce={reduce!r} is not supported",
                    f"pass one of {', '.join(map(repr, REDUCES))}")
    if not isinstance(keepdims, (bool, np.bool_)):
        raise _fail(ArgumentError, f"keepdims must be True or False, got {keepdims!r}",
                    "pass keepdims=True or keepdims=False")
    if epilogue is None and extras:
        raise _fail(ArgumentError, f"{len(extras)} extras given without an epilogue",
                    "pass epilogue=Program(...) that reads them, or no extras")
    if epilogue is not None and epilogue_operands(epilogue) != len(extras):
        k = epilogue_operands(epilogue)
        raise _fail(ArgumentError, f"the epilogue reads extras up to ('in', {k}) (('in', 0) "
                    f"is the reduction's result), so it takes {k} extras; got {len(extras)}",
                    f"pass {k} extras, extras[k - 1] for ('in', k)")
    common = {"program": program, "reduce": reduce, "eps": _eps(reduce, eps, arrays),
              "epilogue": epilogue}
    nd = len(shape)
    if reduce in ROW_OPS:
        if keepdims:
            raise _fail(ArgumentError, f"keepdims=True does not apply to {reduce} (its result "
                        "has the value's shape)", "leave keepdims False", arrays)
        one = axis[0] if isinstance(axis, (tuple, list)) and len(axis) == 1 else axis
        ax = normalize_axis(OP, one, nd, arrays)
        if ax != nd - 1:
            raise _fail(ArgumentError, f"{reduce} runs along the last axis, not axis {axis!r} of "
                        f"a {nd}-d value", f"pass axis=-1 (or {nd - 1})", arrays)
        return {**common, "axis": (ax,), "keepdims": False}
    axes = normalize_axes(OP, axis, nd, arrays)
    k = len(axes)
    if (nd and not k) or axes != tuple(range(nd - k, nd)):
        raise _fail(ArgumentError, f"axis {axis!r} of a {nd}-d value is not a run of trailing "
                    "axes", "reduce the last k >= 1 axes (or all: axis=None); transpose the "
                    "operands first for other axes", arrays)
    return {**common, "axis": axes, "keepdims": bool(keepdims)}


def _meta(arrays: tuple[Meta, ...], extras: tuple[Meta, ...] | None, *, program: Any,
          reduce: str, axis: tuple[int, ...], keepdims: bool, eps: float | None,
          epilogue: Any) -> Meta:
    extras = extras or ()
    bad = [m for m in (*arrays, *extras) if m.dtype not in dtypes.ALL]
    if bad:
        raise _fail(DTypeError, f"dtype {bad[0].dtype} is not supported", "cast the operand "
                    "first", arrays)
    shape = broadcast_shapes(OP, *arrays)
    dt = value_dtype(arrays, program)
    if dt not in dtypes.FLOATS:
        raise _fail(DTypeError, f"the program's value is {dt}; {reduce} runs over float values "
                    "only", "end the program with astype to a float dtype, or reduce unfused",
                    arrays)
    if reduce in ROW_OPS:
        result = Meta(shape, dt)
    elif reduce in ("max", "min") and math.prod(shape[i] for i in axis) == 0:
        raise _fail(ShapeError, f"zero-size array to reduction operation "
                    f"{'maximum' if reduce == 'max' else 'minimum'} which has no identity "
                    f"(the reduced axes {axis} of the value {shape} have no elements)",
                    "reduce over axes of nonzero length", arrays)
    else:
        result = Meta(reduced_shape(shape, axis, keepdims), dt)
    if epilogue is None:
        return result
    try:
        fits = np.broadcast_shapes(result.shape, *[m.shape for m in extras]) == result.shape
    except ValueError:
        fits = False
    if not fits:
        raise _fail(ShapeError, f"the epilogue's extras {', '.join(str(m.shape) for m in extras)}"
                    f" do not broadcast to the {reduce} result's shape {result.shape}",
                    "pass extras that broadcast to the result (the epilogue runs once a "
                    "result element)", extras)
    return Meta(result.shape, value_dtype((result, *extras), epilogue, "epilogue"))


def _reduced(v: Any, fn: Any, reduce: str, axis: tuple[int, ...], keepdims: bool,
             eps: float | None) -> Any:
    """``v`` reduced by ``fn(name)`` (an op's reference or public function)."""
    if reduce in SOFTMAXES:
        return fn(reduce)(v, axis=axis[0])
    if reduce in NORMS:
        return fn(reduce)(v, eps=eps)
    return fn(reduce)(v, axis=axis, keepdims=keepdims)


def _reference(arrays: Sequence[Any], extras: Sequence[Any] | None, *, program: Any,
               reduce: str, axis: tuple[int, ...], keepdims: bool, eps: float | None,
               epilogue: Any) -> Any:
    """The program by ``fused_elementwise``'s reference, the reduction's reference, then the
    epilogue by ``fused_elementwise``'s reference on the float64 result."""
    ew = OPS["fused_elementwise"].reference
    v = np.asarray(ew(arrays, program=program), np.float64)

    def ref(name: str) -> Any:
        op = OPS[name].reference
        if name == "layernorm":
            return lambda x, eps: op(x, None, None, eps=eps)
        if name == "rmsnorm":
            return lambda x, eps: op(x, None, eps=eps)
        return op
    r = _reduced(v, ref, reduce, axis, keepdims, eps)
    if epilogue is None:
        return r
    return ew([np.asarray(r, np.float64), *(extras or ())], program=epilogue)


def _cost(arrays: tuple[Meta, ...], extras: tuple[Meta, ...] | None, *, out: Meta,
          program: Any, reduce: str, axis: tuple[int, ...], keepdims: bool, eps: float | None,
          epilogue: Any) -> tuple[float, float]:
    extras = extras or ()
    ew = OPS["fused_elementwise"].cost
    v = Meta(broadcast_shapes(OP, *arrays), value_dtype(arrays, program))
    flops = ew(arrays, out=v, program=program)[0] + _COST[reduce] * v.size
    if epilogue is not None:
        r = Meta(out.shape, v.dtype)
        flops += ew((r, *extras), out=out, program=epilogue)[0]
    return flops, float(sum(m.nbytes for m in (*arrays, *extras)) + out.nbytes)


def _decomposition(arrays: Sequence[Any], extras: Sequence[Any] | None, *, program: Any,
                   reduce: str, axis: tuple[int, ...], keepdims: bool, eps: float | None,
                   epilogue: Any) -> Any:
    """The value materialized by fused_elementwise, the reduction, then the epilogue by
    fused_elementwise: for backends without a fused_reduction kernel."""
    import tsol
    v = tsol.fused_elementwise(list(arrays), program=program)
    r = _reduced(v, lambda name: getattr(tsol, name), reduce, axis, keepdims, eps)
    if epilogue is None:
        return r
    return tsol.fused_elementwise([r, *(extras or ())], program=epilogue)


@defop(family="fused_reduction", inputs=("arrays", "extras"),
       sequence_inputs=("arrays", "extras"), meta=_meta, normalize=_normalize,
       reference=_reference, vjp=NON_DIFFERENTIABLE, cost=_cost, decomposition=_decomposition)
def fused_reduction(arrays, extras=None, *, program=None, reduce, axis, keepdims=False, eps=None,
                    epilogue=None, out=None):
    """Reduce the value of ``program`` over ``arrays`` in one kernel, without storing it, and
    apply ``epilogue`` to each result element as it is written.

    - ``arrays``: arrays whose shapes broadcast together; ``program``: a
      ``tsol.ops.fused.Program`` whose output is a float dtype (its value ``v`` has the
      broadcast shape and that dtype), or None for ``arrays[0]`` itself (one float array).
    - ``reduce``: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"`` over ``axis``, a run of trailing
      axes of ``v`` (an int, a tuple, or None for all), with ``keepdims``; or ``"softmax"``,
      ``"log_softmax"``, ``"layernorm"`` or ``"rmsnorm"`` along the last axis (``axis=-1``;
      the result has ``v``'s shape). The norms take ``eps`` (a finite non-negative float) and
      have no weight or bias: multiply and add them in the epilogue.
    - The result ``r`` has ``v``'s dtype, as ``tsol.sum(v)`` etc. give it; ``v`` is never
      rounded to that dtype before reducing, and sums accumulate in float32 (float64 for
      float64) in a fixed order (the same bits for any thread count). An empty sum is 0, an
      empty mean NaN.
    - ``epilogue``: None, or a Program over ``[r] + extras`` (``extras``: a list of arrays,
      None for none): ``("in", 0)`` is ``r`` (unrounded), ``("in", k)`` is ``extras[k - 1]``;
      every extra broadcasts to ``r``'s shape, and the highest k the epilogue reads is
      ``len(extras)``. The op's result is the epilogue's value (of ``r``'s shape and the
      epilogue's output dtype, which may be any dtype: ``r > 0`` gives bool).
    - Built by the schedule layer (autodiff runs before fusion, so the op has no VJP).
    - Raises ShapeError when shapes do not broadcast, max/min reduce zero elements or an extra
      does not broadcast to ``r``'s shape; AxisError/ArgumentError for an axis that is out of
      range or not trailing, a bad eps, or extras that do not match the epilogue; DTypeError
      when ``v`` is not a float; and the programs' own errors for a malformed program.

    >>> import numpy as np, tsol
    >>> from tsol.ops.fused import Program, Step
    >>> p = Program((Step("multiply", (("in", 0), ("in", 0)), dtype="float32"),), 0)
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    >>> tsol.fused_reduction([x], program=p, reduce="mean", axis=-1)
    array([ 2.5, 12.5], dtype=float32)
    >>> half = Program((Step("multiply", (("in", 0), ("const", 0.5)), dtype="float32"),), 0)
    >>> tsol.fused_reduction([x], program=p, reduce="sum", axis=-1, epilogue=half)
    array([ 2.5, 12.5], dtype=float32)
    """


# --- shared by the backends' kernels (host code) ---------------------------------------------

def split_value(shape: Sequence[int], reduce: str, axis: tuple[int, ...]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kept dims, reduced dims) of the value ``shape``: the reduced dims are the trailing
    ``len(axis)`` (one for the row ops); a 0-d value reduces as one element."""
    k = 1 if reduce in ROW_OPS else len(axis)
    shape = tuple(shape)
    return shape[:len(shape) - k], shape[len(shape) - k:]


def element_strides(shape: Sequence[int], a_shape: Sequence[int], a_strides: Sequence[int],
                    itemsize: int) -> list[int] | None:
    """An operand's strides in elements once broadcast to ``shape`` (0 along broadcast dims),
    or None when a byte stride is not a multiple of the itemsize."""
    if any(s % itemsize for s in a_strides):
        return None
    lead = len(shape) - len(a_shape)
    return [0] * lead + [0 if n == 1 else s // itemsize for n, s in zip(a_shape, a_strides)]


def inner_stride(dims: Sequence[int], strides: Sequence[int]) -> int | None:
    """The one element stride that walks ``dims`` (C order) as a flat run, or None when the
    dims do not form one run (the operand is then copied densely first). Size-1 dims do not
    count; 0 for a run of length <= 1 or a broadcast one."""
    run = [(n, s) for n, s in zip(dims, strides) if n != 1]
    for (_, outer), (n, inner) in zip(run, run[1:]):
        if outer != inner * n:
            return None
    return run[-1][1] if run else 0


def row_layout(a: Any, shape: tuple[int, ...], nkept: int, dense: Any
               ) -> tuple[Any, list[int], int]:
    """(the operand as a kernel reads it, its element strides broadcast to ``shape``, its one
    stride along a row of the trailing dims after ``nkept``): ``dense(a)`` (a C-order copy of
    ``a`` broadcast to ``shape``) when its strides are not whole elements or its row is not
    one run."""
    st = element_strides(shape, a.shape, a.strides, a.itemsize)
    inner = None if st is None else inner_stride(shape[nkept:], st[nkept:])
    if inner is None:
        a = dense(a)
        st = element_strides(shape, a.shape, a.strides, a.itemsize)
        inner = inner_stride(shape[nkept:], st[nkept:])
    return a, st, inner


def row_offsets(kept: Sequence[int], strides: Sequence[int], base: int) -> np.ndarray:
    """The int64 element offset of each row's first element (rows in C order over ``kept``)."""
    off = np.full((1,) * len(kept), base, np.int64)
    for d, (n, s) in enumerate(zip(kept, strides)):
        shape = [1] * len(kept)
        shape[d] = n
        off = off + (np.arange(n, dtype=np.int64) * s).reshape(shape)
    return np.ascontiguousarray(np.broadcast_to(off, tuple(kept))).reshape(-1)


def epilogue_rows(reduce: str, kept: Sequence[int], out_shape: Sequence[int]) -> int:
    """How many leading dims of the result are rows for the epilogue's operands: a row op's
    rows are the value's; every element of a fold's result is a row of its own (n = 1)."""
    return len(kept) if reduce in ROW_OPS else len(out_shape)


class EpilogueCode(NamedTuple):
    """An epilogue as a kernel applies it: its program and plan (operand 0 the result, of the
    value's dtype), the extras it reads (operand indices from 1) and their layout modes;
    ``program`` None: none (the result is stored as it is). Each backend's kernel module
    subclasses it with its code generation."""

    program: Program | None = None
    plan: ProgramPlan | None = None
    used: tuple[int, ...] = ()
    modes: str = ""

    @property
    def key(self) -> Any:
        """What a kernel's code depends on."""
        return None if self.plan is None else (self.program.key, self.plan.in_dtypes, self.modes)


def epilogue_plan(epilogue: Program, vdt: Any, extras: Sequence[Any]
                  ) -> tuple[ProgramPlan, tuple[int, ...]]:
    """The plan of ``epilogue`` over a result of dtype ``vdt`` and ``extras`` (arrays), and
    the operand indices of the extras it reads."""
    plan = plan_program(epilogue, [vdt] + [np.dtype(e.dtype) for e in extras])
    return plan, tuple(k for k in used_inputs(plan) if k > 0)


def epilogue_names(line: str) -> str:
    """A generated line with the operand and step names of a program (``a1``, ``o1``, ``q1``,
    ``s1``, ``p1``, ``w1``, ``v1``, ``y3``) prefixed by ``e``, so an epilogue's code and the
    prologue's share a kernel."""
    return re.sub(r"\b([aopqsvwy])(\d+)\b", r"e\1\2", line)


def kernel_plans(metas: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    """The ``ProgramPlan``s of the program and of the epilogue (when there is one) for a
    call's operand metas as kernel legality sees them (arrays and extras in one flat list),
    or none when they do not plan or the value is not a float: the kernel then declines."""
    epilogue = attrs.get("epilogue")
    metas = [m for m in metas if m is not None]           # extras=None
    k = len(metas) - (0 if epilogue is None else epilogue_operands(epilogue))
    try:
        plan = plan_program(attrs["program"], [m.dtype for m in metas[:k]])
        vdt = plan.steps[plan.output].dtype
        if vdt not in dtypes.FLOATS:
            return []
        if epilogue is None:
            return [plan]
        return [plan, plan_program(epilogue, [vdt] + [m.dtype for m in metas[k:]])]
    except TSOLError:
        return []


def accumulator(dt: Any) -> np.dtype:
    """float64 for float64 values, float32 for the others."""
    return np.dtype(np.float64) if np.dtype(dt) == dtypes.float64 else np.dtype(np.float32)
