"""fused_reduction: an elementwise program reduced over trailing axes, or softmaxed along the last
axis, as one kernel.

The schedule layer builds it from a reduction (sum, mean, max, min) or a softmax/log_softmax
whose input is an elementwise chain used only there: the chain's ``Program`` (see
``tsol.ops.fused``) is evaluated per element inside the reduction's loop, so its value is never
written to memory. The value ``v = program(arrays)`` has the broadcast shape of the operands and
a float dtype; the result has the dtype the unfused reduction gives ``v`` (that same dtype).

Numerics: each step computes as in ``fused_elementwise`` (float intermediates unrounded); the
reduction accumulates in float32 (float64 for float64 ``v``) in a fixed order that depends on
the shape alone. A kernel sees ``v`` as ``rows x n``: ``n`` the product of the reduced (trailing)
dims, ``rows`` of the others; ``operand_layout`` and ``row_offsets`` below are the host-side
layout rule both backends share.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, ShapeError, TSOLError, op_error
from tsol.ops.base import Meta, defop
from tsol.ops.fused import plan_program
from tsol.ops.reduction import reduced_shape
from tsol.ops.rules import broadcast_shapes, normalize_axes, normalize_axis
from tsol.registry import NON_DIFFERENTIABLE, OPS

__all__ = ["fused_reduction"]

OP = "fused_reduction"
FOLDS = ("sum", "mean", "max", "min")
"""Reductions over trailing axes."""
ROW_OPS = ("softmax", "log_softmax")
"""Normalizations along the last axis (the result has ``v``'s shape)."""
REDUCES = FOLDS + ROW_OPS
_COST = {"sum": 1.0, "mean": 1.0, "max": 1.0, "min": 1.0, "softmax": 5.0, "log_softmax": 5.0}
"""Flops per element of the reduction itself (the program's come from its steps' ops)."""


def _fail(cls: type, problem: str, fix: str, operands: Sequence[Any] = ()) -> TSOLError:
    return op_error(cls, OP, problem, fix, operands)


def value_dtype(arrays: Sequence[Meta], program: Any) -> np.dtype:
    """The dtype of ``program``'s value for operands ``arrays``; the program's own errors are
    said of this op."""
    try:
        plan = plan_program(program, [m.dtype for m in arrays])
    except TSOLError as exc:
        msg = str(exc).replace("tsol.fused_elementwise: ", "", 1)
        try:
            err = type(exc)(f"tsol.{OP}: program: {msg}")
        except TypeError:
            err = TSOLError(f"tsol.{OP}: program: {msg}")
        raise err from None
    return plan.steps[plan.output].dtype


# --- rules -----------------------------------------------------------------------------------

def _normalize(metas: Sequence[Any], *, program: Any, reduce: Any, axis: Any,
               keepdims: Any = False) -> dict[str, Any]:
    arrays = metas[0]
    if not arrays:
        raise _fail(ArgumentError, "needs at least one operand array",
                    "pass the program's operands")
    shape = broadcast_shapes(OP, *arrays)
    if reduce not in REDUCES:
        raise _fail(ArgumentError, f"reduce={reduce!r} is not supported",
                    f"pass one of {', '.join(map(repr, REDUCES))}")
    if not isinstance(keepdims, (bool, np.bool_)):
        raise _fail(ArgumentError, f"keepdims must be True or False, got {keepdims!r}",
                    "pass keepdims=True or keepdims=False")
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
        return {"program": program, "reduce": reduce, "axis": (ax,), "keepdims": False}
    axes = normalize_axes(OP, axis, nd, arrays)
    k = len(axes)
    if (nd and not k) or axes != tuple(range(nd - k, nd)):
        raise _fail(ArgumentError, f"axis {axis!r} of a {nd}-d value is not a run of trailing "
                    "axes", "reduce the last k >= 1 axes (or all: axis=None); transpose the "
                    "operands first for other axes", arrays)
    return {"program": program, "reduce": reduce, "axis": axes, "keepdims": bool(keepdims)}


def _meta(arrays: tuple[Meta, ...], *, program: Any, reduce: str, axis: tuple[int, ...],
          keepdims: bool) -> Meta:
    bad = [m for m in arrays if m.dtype not in dtypes.ALL]
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
        return Meta(shape, dt)
    if reduce in ("max", "min") and math.prod(shape[i] for i in axis) == 0:
        raise _fail(ShapeError, f"zero-size array to reduction operation "
                    f"{'maximum' if reduce == 'max' else 'minimum'} which has no identity "
                    f"(the reduced axes {axis} of the value {shape} have no elements)",
                    "reduce over axes of nonzero length", arrays)
    return Meta(reduced_shape(shape, axis, keepdims), dt)


def _reference(arrays: Sequence[Any], *, program: Any, reduce: str, axis: tuple[int, ...],
               keepdims: bool) -> Any:
    """The program by ``fused_elementwise``'s reference, then the reduction's reference."""
    v = np.asarray(OPS["fused_elementwise"].reference(arrays, program=program), np.float64)
    if reduce in ROW_OPS:
        return OPS[reduce].reference(v, axis=axis[0])
    return OPS[reduce].reference(v, axis=axis, keepdims=keepdims)


def _cost(arrays: tuple[Meta, ...], *, out: Meta, program: Any, reduce: str,
          axis: tuple[int, ...], keepdims: bool) -> tuple[float, float]:
    v = Meta(broadcast_shapes(OP, *arrays), value_dtype(arrays, program))
    flops, _ = OPS["fused_elementwise"].cost(arrays, out=v, program=program)
    return (flops + _COST[reduce] * v.size,
            float(sum(m.nbytes for m in arrays) + out.nbytes))


def _decomposition(arrays: Sequence[Any], *, program: Any, reduce: str, axis: tuple[int, ...],
                   keepdims: bool) -> Any:
    """The value materialized by fused_elementwise, then the reduction: for backends without
    a fused_reduction kernel."""
    import tsol
    v = tsol.fused_elementwise(list(arrays), program=program)
    if reduce in ROW_OPS:
        return getattr(tsol, reduce)(v, axis=axis[0])
    return getattr(tsol, reduce)(v, axis=axis, keepdims=keepdims)


@defop(family="fused_reduction", inputs=("arrays",), sequence_inputs=("arrays",), meta=_meta,
       normalize=_normalize, reference=_reference, vjp=NON_DIFFERENTIABLE, cost=_cost,
       decomposition=_decomposition)
def fused_reduction(arrays, *, program, reduce, axis, keepdims=False, out=None):
    """Reduce the value of ``program`` over ``arrays`` in one kernel, without storing it.

    - ``arrays``: arrays whose shapes broadcast together; ``program``: a
      ``tsol.ops.fused.Program`` whose output is a float dtype (its value ``v`` has the
      broadcast shape and that dtype).
    - ``reduce``: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"`` over ``axis``, a run of trailing
      axes of ``v`` (an int, a tuple, or None for all), with ``keepdims``; or ``"softmax"`` /
      ``"log_softmax"`` along the last axis (``axis=-1``; the result has ``v``'s shape).
    - The result has ``v``'s dtype, as ``tsol.sum(v)`` etc. give it; ``v`` is never rounded to
      that dtype before reducing, and sums accumulate in float32 (float64 for float64) in a
      fixed order (the same bits for any thread count). An empty sum is 0, an empty mean NaN.
    - Built by the schedule layer (autodiff runs before fusion, so the op has no VJP).
    - Raises ShapeError when shapes do not broadcast or max/min reduce zero elements,
      AxisError/ArgumentError for an axis that is out of range or not trailing, DTypeError
      when ``v`` is not a float, and the program's own errors for a malformed program.

    >>> import numpy as np, tsol
    >>> from tsol.ops.fused import Program, Step
    >>> p = Program((Step("multiply", (("in", 0), ("in", 0)), dtype="float32"),), 0)
    >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    >>> tsol.fused_reduction([x], program=p, reduce="mean", axis=-1)
    array([ 2.5, 12.5], dtype=float32)
    """


# --- shared by the backends' kernels (host code) ---------------------------------------------

def split_value(shape: Sequence[int], reduce: str, axis: tuple[int, ...]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kept dims, reduced dims) of the value ``shape``: the reduced dims are the trailing
    ``len(axis)`` (one for softmax); a 0-d value reduces as one element."""
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


def row_offsets(kept: Sequence[int], strides: Sequence[int], base: int) -> np.ndarray:
    """The int64 element offset of each row's first element (rows in C order over ``kept``)."""
    off = np.full((1,) * len(kept), base, np.int64)
    for d, (n, s) in enumerate(zip(kept, strides)):
        shape = [1] * len(kept)
        shape[d] = n
        off = off + (np.arange(n, dtype=np.int64) * s).reshape(shape)
    return np.ascontiguousarray(np.broadcast_to(off, tuple(kept))).reshape(-1)


def accumulator(dt: Any) -> np.dtype:
    """float64 for float64 values, float32 for the others."""
    return np.dtype(np.float64) if np.dtype(dt) == dtypes.float64 else np.dtype(np.float32)
