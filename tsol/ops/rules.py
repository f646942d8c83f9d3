"""Shape, dtype and cost rules shared by op families, each raising TSOL's errors."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes
from tsol.errors import AxisError, DTypeError, ShapeError, op_error
from tsol.ops.base import Meta


def normalize_axis(op: str, axis: Any, ndim: int, operands: Sequence[Any] = ()) -> int:
    """A single axis as a non-negative int; AxisError names the valid range."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise op_error(AxisError, op, f"axis must be an int, got {axis!r}",
                       "pass an integer axis", operands)
    if not -max(ndim, 1) <= axis < max(ndim, 1) or ndim == 0:
        valid = f"[{-ndim}, {ndim - 1}]" if ndim else "none: the input is 0-d"
        raise op_error(AxisError, op, f"axis {axis} is out of range for {ndim}-d input",
                       f"pass an axis in {valid}", operands)
    return int(axis) % ndim


def normalize_axes(op: str, axis: Any, ndim: int, operands: Sequence[Any] = ()
                   ) -> tuple[int, ...]:
    """``axis`` as int, tuple or None -> sorted tuple of distinct non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if ndim == 0 and all(isinstance(a, (int, np.integer)) and a in (0, -1) for a in items):
        return ()
    out = tuple(sorted(normalize_axis(op, a, ndim, operands) for a in items))
    if len(set(out)) != len(out):
        raise op_error(AxisError, op, f"axis {axis!r} repeats an axis",
                       "name each axis once", operands)
    return out


def require_dtypes(op: str, metas: Sequence[Meta], allowed: frozenset, what: str) -> None:
    """DTypeError unless every strong operand dtype is in ``allowed`` (``what`` describes it)."""
    bad = [m for m in metas if not m.weak and m.dtype not in allowed]
    if bad:
        raise op_error(DTypeError, op, f"dtype {bad[0].dtype} is not supported; it needs {what}",
                       f"cast with tsol.astype(x, tsol.float32) (or another {what} dtype)",
                       metas)


def require_float(op: str, *metas: Meta) -> None:
    require_dtypes(op, metas, dtypes.FLOATS, "a floating dtype (float16/bfloat16/32/64)")


def broadcast_shapes(op: str, *metas: Meta) -> tuple[int, ...]:
    """NumPy broadcasting of operand shapes; ShapeError names the shapes and the fix."""
    try:
        return tuple(np.broadcast_shapes(*[m.shape for m in metas]))
    except ValueError:
        raise op_error(ShapeError, op, "shapes " + " and ".join(str(m.shape) for m in metas)
                       + " do not broadcast (trailing dimensions must match or be 1)",
                       "reshape or slice the operands so trailing dimensions agree",
                       metas) from None


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` itself (not to a larger shape)."""
    try:
        return tuple(np.broadcast_shapes(shape, target)) == tuple(target)
    except ValueError:
        return False


def sum_to_shape(g: Any, shape: tuple[int, ...]) -> Any:
    """Reduce a broadcast cotangent ``g`` back to an operand's ``shape`` (VJP helper)."""
    import tsol
    lead = g.ndim - len(shape)
    if lead:
        g = tsol.sum(g, axis=tuple(range(lead)))
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, g.shape)) if s == 1 and t != 1)
    if axes:
        g = tsol.sum(g, axis=axes, keepdims=True)
    return g


def elementwise_cost(flops_per_element: float) -> Callable[..., tuple[float, float]]:
    """Cost rule: ``flops_per_element`` per output element; bytes of operands plus output."""

    def cost(*metas: Meta, out: Meta, **attrs: Any) -> tuple[float, float]:
        moved = sum(m.nbytes for m in metas if not m.weak) + out.nbytes
        return float(flops_per_element * out.size), float(moved)

    return cost
