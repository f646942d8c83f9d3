"""Layout ops: transpose, reshape, concat, split, pad and basic slicing.

They move or re-view data and never change a value: a result is bitwise equal to NumPy's for
every dtype. Ops that NumPy answers with a view (transpose, slice, split, reshape when the
strides allow it) return a view of the operand; the others run a kernel that moves bits.

Attributes are canonicalized by each op's ``normalize`` rule (axes as non-negative ints, pad
widths as pairs, a slicing key with its Ellipsis expanded), so kernels and VJPs see one form.
"""

from __future__ import annotations

from builtins import slice as py_slice
from typing import Any, Sequence

import numpy as np

import tsol
from tsol import dtypes
from tsol.errors import ArgumentError, AxisError, DTypeError, ShapeError, op_error
from tsol.ops.base import Meta, defop, promote
from tsol.ops.rules import normalize_axis, require_dtypes

__all__ = ["transpose", "reshape", "concat", "split", "pad", "slice"]

PAD_MODES = ("constant", "edge", "reflect")


def _require_any_dtype(op: str, *metas: Meta) -> None:
    require_dtypes(op, metas, dtypes.ALL, "a TSOL dtype (float, integer or bool)")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _view_cost(*metas: Any, out: Any, **attrs: Any) -> tuple[float, float]:
    return 0.0, 0.0


def _copy_cost(*metas: Any, out: Any, **attrs: Any) -> tuple[float, float]:
    metas = [e for m in metas for e in (m if isinstance(m, tuple) else (m,))]
    return 0.0, float(sum(m.nbytes for m in metas) + out.nbytes)


def _along(ndim: int, axis: int, index: Any) -> tuple[Any, ...]:
    """A key selecting ``index`` on ``axis`` and everything on the other axes."""
    return (py_slice(None),) * axis + (index,) + (py_slice(None),) * (ndim - axis - 1)


def _widths(ndim: int, axis: int, before: int, after: int) -> tuple[tuple[int, int], ...]:
    return tuple((before, after) if k == axis else (0, 0) for k in range(ndim))


def _zeros(like: Any, shape: tuple[int, ...]) -> Any:
    """Zeros of ``like``'s dtype in TSOL ops: an empty slice of ``like`` padded out to ``shape``."""
    empty = tsol.slice(like, (py_slice(0, 0),) * like.ndim)
    empty = tsol.reshape(empty, (0,) * len(shape))
    return tsol.pad(empty, tuple((0, n) for n in shape))


# --- transpose --------------------------------------------------------------------------------

def _transpose_normalize(metas: Sequence[Meta], axes: Any) -> dict[str, Any]:
    ndim = metas[0].ndim
    if axes is None:
        return {"axes": tuple(range(ndim - 1, -1, -1))}
    items = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    norm = tuple(normalize_axis("transpose", ax, ndim, metas) for ax in items)
    if sorted(norm) != list(range(ndim)):
        raise op_error(AxisError, "transpose", f"axes {axes!r} is not a permutation of "
                       f"range({ndim})", f"name each of the {ndim} axes exactly once", metas)
    return {"axes": norm}


def _transpose_meta(a: Meta, *, axes: tuple[int, ...]) -> Meta:
    _require_any_dtype("transpose", a)
    return Meta(tuple(a.shape[k] for k in axes), a.dtype)


def _transpose_vjp(g: Any, a: Any, *, out: Any, axes: tuple[int, ...]) -> tuple[Any]:
    return (tsol.transpose(g, tuple(int(k) for k in np.argsort(axes))),)


@defop(family="layout", inputs=("a",), meta=_transpose_meta, normalize=_transpose_normalize,
       reference=lambda a, axes=None: np.transpose(a, axes), vjp=_transpose_vjp, cost=_view_cost)
def transpose(a, axes=None):
    """Permute the axes of ``a``; returns a view, as ``np.transpose``.

    ``axes``: a permutation of ``range(a.ndim)`` (negative axes count from the end); None
    reverses the axes. Any dtype. Raises AxisError when ``axes`` is not a permutation.

    >>> import numpy as np, tsol
    >>> tsol.transpose(np.zeros((2, 3, 4)), (1, 2, 0)).shape
    (3, 4, 2)
    """
    ...


# --- reshape ----------------------------------------------------------------------------------

def _reshape_normalize(metas: Sequence[Meta], shape: Any) -> dict[str, Any]:
    a = metas[0]
    items = [shape] if _is_int(shape) else list(shape) if isinstance(shape, (tuple, list)) \
        else None
    if items is None or not all(_is_int(s) for s in items):
        raise op_error(ArgumentError, "reshape", f"shape {shape!r} is not a tuple of ints",
                       "pass the new shape as a tuple of ints (one may be -1)", metas)
    items = [int(s) for s in items]
    unknown = [k for k, s in enumerate(items) if s == -1]
    known = int(np.prod([s for s in items if s != -1], dtype=np.int64))
    problem = None
    if len(unknown) > 1 or any(s < -1 for s in items):
        problem = "only one dimension may be -1 and the others must be >= 0"
    elif unknown and (known == 0 or a.size % known):
        problem = f"no size for -1 makes {a.size} elements"
    elif unknown:
        items[unknown[0]] = a.size // known
    elif known != a.size:
        problem = f"the shape has {known} elements and the array {a.size}"
    if problem:
        wanted = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else [shape]))
        raise op_error(ShapeError, "reshape", f"cannot reshape {a.shape} into {wanted}: {problem}",
                       "pass a shape whose sizes multiply to the array's size", metas)
    return {"shape": tuple(items)}


def _reshape_meta(a: Meta, *, shape: tuple[int, ...]) -> Meta:
    _require_any_dtype("reshape", a)
    return Meta(shape, a.dtype)


@defop(family="layout", inputs=("a",), meta=_reshape_meta, normalize=_reshape_normalize,
       reference=lambda a, shape: np.reshape(a, shape),
       vjp=lambda g, a, *, out, shape: (tsol.reshape(g, a.shape),), cost=_copy_cost)
def reshape(a, shape):
    """``a`` with a new shape of the same size, elements in C order, as ``np.reshape``.

    One entry of ``shape`` may be -1 (inferred). Returns a view whenever NumPy's reshape can make
    one (the same stride rule), else a C-contiguous copy made by a kernel. Any dtype. Raises
    ShapeError when the sizes differ (naming both shapes), ArgumentError for a non-int shape.
    The cost rule reports the copy, since metas cannot tell whether a view is possible.

    >>> import numpy as np, tsol
    >>> tsol.reshape(np.arange(6), (2, -1))
    array([[0, 1, 2],
           [3, 4, 5]])
    """
    ...


# --- concat -----------------------------------------------------------------------------------

def _concat_normalize(metas: Sequence[Any], axis: Any) -> dict[str, Any]:
    pieces = metas[0]
    if not pieces:
        raise op_error(ShapeError, "concat", "needs at least one array", "pass a non-empty list")
    if axis is None:
        return {"axis": None}
    if any(m.ndim == 0 for m in pieces):
        raise op_error(ShapeError, "concat", "0-d arrays cannot be concatenated",
                       "reshape them to 1-d first, or pass axis=None", pieces)
    return {"axis": normalize_axis("concat", axis, pieces[0].ndim, pieces)}


def _concat_meta(pieces: tuple[Meta, ...], *, axis: int | None) -> Meta:
    _require_any_dtype("concat", *pieces)
    dt = promote("concat", *pieces)
    if axis is None:
        return Meta((sum(m.size for m in pieces),), dt)
    first = pieces[0]
    for m in pieces[1:]:
        if m.ndim != first.ndim or any(
                s != t for k, (s, t) in enumerate(zip(m.shape, first.shape, strict=True))
                if k != axis):
            raise op_error(ShapeError, "concat", f"shapes {first.shape} and {m.shape} differ "
                           f"off axis {axis}", f"give every array the same shape except on "
                           f"axis {axis}", pieces)
    size = sum(m.shape[axis] for m in pieces)
    return Meta(first.shape[:axis] + (size,) + first.shape[axis + 1:], dt)


def _concat_vjp(g: Any, arrays: Sequence[Any], *, out: Any, axis: int | None) -> tuple[list]:
    if axis is None:
        cuts = np.cumsum([a.size for a in arrays])[:-1]
        parts = tsol.split(g, tuple(int(c) for c in cuts))
        return ([tsol.reshape(p, a.shape) for p, a in zip(parts, arrays, strict=True)],)
    axis %= g.ndim
    cuts = np.cumsum([a.shape[axis] for a in arrays])[:-1]
    return (tsol.split(g, tuple(int(c) for c in cuts), axis=axis),)


def _concat_cast(arrays: Sequence[Any], *, axis: int | None) -> Any:
    """Mixed dtypes: cast each array to the promoted dtype (tsol.astype), then concat."""
    dt = promote("concat", *arrays)
    return tsol.concat([a if a.dtype == dt else tsol.astype(a, dt) for a in arrays], axis=axis)


@defop(family="layout", inputs=("arrays",), sequence_inputs=("arrays",), meta=_concat_meta,
       normalize=_concat_normalize, decomposition=_concat_cast,
       reference=lambda arrays, axis=0: np.concatenate(list(arrays), axis=axis),
       vjp=_concat_vjp, cost=_copy_cost)
def concat(arrays, axis=0, *, out=None):
    """Join a list of arrays along ``axis``, as ``np.concatenate``.

    ``arrays``: a list or tuple of arrays with equal ndim and equal shapes except on ``axis``;
    ``axis=None`` flattens each first. The result dtype promotes like NumPy's (mixed dtypes are
    cast with ``tsol.astype`` first); a kernel copies each array into its slab of the result.
    Raises ShapeError for an empty list, 0-d arrays or mismatched shapes, AxisError for a bad
    axis, ArgumentError when ``arrays`` is not a list of arrays.

    >>> import numpy as np, tsol
    >>> tsol.concat([np.zeros((2, 3)), np.ones((1, 3))]).shape
    (3, 3)
    """
    ...


# --- split ------------------------------------------------------------------------------------

def _split_normalize(metas: Sequence[Meta], indices_or_sections: Any, axis: Any
                     ) -> dict[str, Any]:
    a = metas[0]
    axis = normalize_axis("split", axis, a.ndim, metas)
    length = a.shape[axis]
    ios = indices_or_sections
    if _is_int(ios):
        if ios <= 0:
            raise op_error(ShapeError, "split", f"{ios} sections: the count must be > 0",
                           "pass a positive number of sections", metas)
        q, r = divmod(length, int(ios))
        cuts = tuple(int(c) for c in np.cumsum([q + 1] * r + [q] * (int(ios) - r))[:-1])
        return {"indices_or_sections": cuts, "axis": axis}
    items = list(ios) if isinstance(ios, (tuple, list, np.ndarray)) else None
    if items is None or not all(_is_int(i) for i in items):
        raise op_error(ArgumentError, "split", f"indices_or_sections={ios!r} is neither an int "
                       "nor a list of ints", "pass a section count or a list of split points",
                       metas)
    # Each point is a slice bound, so it normalizes alone, as Python slicing does.
    cuts = tuple(min(max(int(i) + length, 0), length) if i < 0 else min(int(i), length)
                 for i in items)
    return {"indices_or_sections": cuts, "axis": axis}


def split_bounds(length: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) of each piece for normalized split points; stop < start is an empty piece."""
    points = [0, *cuts, length]
    return [(points[k], points[k + 1]) for k in range(len(points) - 1)]


def _split_meta(a: Meta, *, indices_or_sections: tuple[int, ...], axis: int) -> list[Meta]:
    _require_any_dtype("split", a)
    return [Meta(a.shape[:axis] + (max(0, e - s),) + a.shape[axis + 1:], a.dtype)
            for s, e in split_bounds(a.shape[axis], indices_or_sections)]


def _split_ref(a: np.ndarray, indices_or_sections: Any, axis: int = 0) -> list[np.ndarray]:
    if _is_int(indices_or_sections):
        return np.array_split(a, indices_or_sections, axis=axis)
    return np.split(a, list(indices_or_sections), axis=axis)


def _split_vjp(g: Sequence[Any], a: Any, *, out: Any, indices_or_sections: tuple[int, ...],
               axis: int) -> tuple[Any]:
    """Pieces that tile the axis concat back; overlapping ones (unsorted points) add up."""
    like = next((x for x in g if x is not None), a)
    bounds = split_bounds(a.shape[axis], indices_or_sections)
    parts = [(s, e, x) for (s, e), x in zip(bounds, g, strict=True) if e > s]
    if all(p[0] == q[1] for p, q in zip(parts[1:], parts[:-1], strict=True)) and \
            (parts and parts[0][0] == 0 and parts[-1][1] == a.shape[axis]):
        return (tsol.concat([x if x is not None else _zeros(like, a.shape[:axis] + (e - s,)
                                                             + a.shape[axis + 1:])
                             for s, e, x in parts], axis=axis),)
    total = _zeros(like, a.shape)
    for s, e, x in parts:
        if x is not None:
            total = tsol.add(total, tsol.pad(x, _widths(a.ndim, axis, s, a.shape[axis] - e)))
    return (total,)


@defop(family="layout", inputs=("a",), meta=_split_meta, normalize=_split_normalize,
       reference=_split_ref, vjp=_split_vjp, cost=_view_cost)
def split(a, indices_or_sections, axis=0):
    """Split ``a`` along ``axis`` into a list of views.

    An int ``N`` gives N pieces with ``np.array_split`` semantics: uneven lengths are allowed,
    the first ``length % N`` pieces one longer. A list of points gives ``np.split`` semantics:
    ``a[:p0], a[p0:p1], ..., a[pk:]`` with Python slice rules (negative points count from the
    end, points past the end clip, unsorted points give empty or overlapping pieces). Any
    dtype. Raises AxisError for a bad axis (or a 0-d ``a``), ShapeError for N <= 0.

    >>> import numpy as np, tsol
    >>> [p.tolist() for p in tsol.split(np.arange(5), 2)]
    [[0, 1, 2], [3, 4]]
    """
    ...


# --- pad --------------------------------------------------------------------------------------

def fill_value(dt: np.dtype, value: Any) -> np.ndarray:
    """``value`` as a 0-d array of ``dt``, converted as NumPy assignment converts (int 1.7 -> 1)."""
    out = np.empty((), dt)
    out[()] = value
    return out


def _pad_normalize(metas: Sequence[Meta], pad_width: Any, mode: Any, constant_values: Any
                   ) -> dict[str, Any]:
    a = metas[0]
    try:
        widths = np.asarray(pad_width)
    except ValueError:
        widths = np.asarray([], dtype=np.float64)
    if widths.dtype.kind not in "iu":
        raise op_error(ArgumentError, "pad", f"pad_width={pad_width!r} is not made of ints",
                       "pass an int, a (before, after) pair or one pair per axis", metas)
    try:
        widths = np.broadcast_to(widths, (a.ndim, 2))
    except ValueError:
        raise op_error(ShapeError, "pad", f"pad_width={pad_width!r} does not broadcast to one "
                       f"(before, after) pair for each of {a.ndim} axes",
                       "pass an int, a pair or one pair per axis", metas) from None
    if (widths < 0).any():
        raise op_error(ShapeError, "pad", f"pad_width={pad_width!r} is negative",
                       "pass widths >= 0 (slice with tsol.slice to crop)", metas)
    if mode not in PAD_MODES:
        raise op_error(ArgumentError, "pad", f"mode {mode!r} is not supported",
                       f"use one of {', '.join(PAD_MODES)} (or np.pad for the others)", metas)
    if not (isinstance(constant_values, (bool, int, float, np.generic))
            or (isinstance(constant_values, np.ndarray) and constant_values.ndim == 0)):
        raise op_error(ArgumentError, "pad", "constant_values must be one scalar (per-axis "
                       "values are not supported)", "pass a single number", metas)
    try:
        fill_value(a.dtype, constant_values)
    except (OverflowError, ValueError, TypeError) as exc:
        raise op_error(DTypeError, "pad", f"constant_values={constant_values!r} does not fit "
                       f"{a.dtype} ({exc})", f"pass a value representable in {a.dtype}",
                       metas) from None
    return {"pad_width": tuple((int(b), int(e)) for b, e in widths), "mode": mode,
            "constant_values": constant_values}


def _pad_meta(a: Meta, *, pad_width: tuple[tuple[int, int], ...], mode: str,
              constant_values: Any) -> Meta:
    _require_any_dtype("pad", a)
    for k, (n, (b, e)) in enumerate(zip(a.shape, pad_width, strict=True)):
        if n == 0 and b + e and mode != "constant":
            raise op_error(ShapeError, "pad", f"axis {k} is empty, so mode {mode!r} has no "
                           "values to extend it with", "use mode='constant'", [a])
    return Meta(tuple(n + b + e for n, (b, e) in zip(a.shape, pad_width, strict=True)), a.dtype)


def _pad_ref(a: np.ndarray, pad_width: Any, mode: str = "constant",
             constant_values: Any = 0) -> np.ndarray:
    extra = {"constant_values": constant_values} if mode == "constant" else {}
    return np.pad(a, pad_width, mode=mode, **extra)


def source_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each index along a padded axis, the source index it copies (-1: the constant)."""
    x = np.arange(-before, n + after, dtype=np.int64)
    if mode == "constant":
        return np.where((x >= 0) & (x < n), x, -1)
    if mode == "edge" or n <= 1:
        return np.clip(x, 0, max(n - 1, 0))
    period = 2 * (n - 1)
    m = x % period
    return np.where(m < n, m, period - m)


def _fold_axis(g: Any, axis: int, n: int, src: np.ndarray) -> Any:
    """Scatter-add of ``g`` along ``axis`` onto ``n`` source indices (edge/reflect VJP).

    Runs of output indices whose source index steps by +1, -1 or 0 become one slice each
    (reversed for -1, summed for 0), zero-padded into place and added.
    """
    total, j = None, 0
    while j < src.size:
        step = int(src[j + 1] - src[j]) if j + 1 < src.size else 1
        k = j + 1
        while k < src.size and src[k] - src[k - 1] == step:
            k += 1
        piece = tsol.slice(g, _along(g.ndim, axis, py_slice(j, k)))
        lo = int(src[j])
        if step == 0:
            piece = tsol.sum(piece, axis=axis, keepdims=True)
        elif step < 0:
            piece = tsol.slice(piece, _along(g.ndim, axis, py_slice(None, None, -1)))
            lo = int(src[k - 1])
        piece = tsol.pad(piece, _widths(g.ndim, axis, lo, n - lo - piece.shape[axis]))
        total = piece if total is None else tsol.add(total, piece)
        j = k
    return total


def _pad_vjp(g: Any, a: Any, *, out: Any, pad_width: tuple[tuple[int, int], ...], mode: str,
             constant_values: Any) -> tuple[Any]:
    for axis, (n, (b, e)) in enumerate(zip(a.shape, pad_width, strict=True)):
        if mode == "constant" or n == 0:
            g = tsol.slice(g, _along(g.ndim, axis, py_slice(b, b + n)))
        elif b or e:
            g = _fold_axis(g, axis, n, source_index(n, b, e, mode))
    return (g,)


@defop(family="layout", inputs=("a",), meta=_pad_meta, normalize=_pad_normalize,
       reference=_pad_ref, vjp=_pad_vjp, cost=_copy_cost)
def pad(a, pad_width, mode="constant", constant_values=0, *, out=None):
    """``a`` padded on each axis, as ``np.pad``; a kernel fills the (new) result.

    ``pad_width``: an int, a ``(before, after)`` pair, or one pair per axis (ints >= 0).
    ``mode``: ``"constant"`` (``constant_values``, one scalar, converted to ``a``'s dtype as NumPy
    assignment converts it), ``"edge"`` (repeat the edge value) or ``"reflect"`` (mirror without
    repeating the edge; widths larger than the axis reflect again, as NumPy). Any dtype.
    Raises ShapeError for negative widths, widths that fit no axis, or edge/reflect on an empty
    axis; ArgumentError for another mode or a non-scalar constant; DTypeError for a constant
    that does not fit the dtype. The VJP of edge/reflect scatter-adds with ``tsol.sum`` and
    ``tsol.add`` (so it needs the reduction and elementwise families).

    >>> import numpy as np, tsol
    >>> tsol.pad(np.array([1, 2, 3]), (2, 1), mode="reflect")
    array([3, 2, 1, 2, 3, 2])
    """
    ...


# --- slice ------------------------------------------------------------------------------------

def _slice_normalize(metas: Sequence[Meta], key: Any) -> dict[str, Any]:
    a = metas[0]
    items = key if isinstance(key, tuple) else (key,)
    for k in items:
        if not (k is None or k is Ellipsis or isinstance(k, py_slice) or _is_int(k)):
            raise op_error(ArgumentError, "slice", f"{k!r} is not a basic index (ints, slices, "
                           "None, ...); advanced indexing with arrays, lists or bools would "
                           "gather a copy", "tsol.take is not implemented yet: index with "
                           "NumPy (a[key]) for gathers", metas)
    if sum(k is Ellipsis for k in items) > 1:
        raise op_error(ArgumentError, "slice", "the key has more than one Ellipsis",
                       "use at most one ...", metas)
    used = sum(k is not None and k is not Ellipsis for k in items)
    if used > a.ndim:
        raise op_error(AxisError, "slice", f"{used} indices for a {a.ndim}-d array",
                       f"index at most {a.ndim} axes", metas)
    fill = (py_slice(None),) * (a.ndim - used)
    items = (tuple(e for k in items for e in (fill if k is Ellipsis else (k,)))
             if Ellipsis in items else items + fill)
    canon, dim = [], 0
    for k in items:
        if k is None:
            canon.append(None)
            continue
        n = a.shape[dim]
        if isinstance(k, py_slice):
            try:
                r = range(n)[k]
            except (TypeError, ValueError) as exc:
                raise op_error(ArgumentError, "slice", f"bad slice {k!r} ({exc})",
                               "use int (or None) bounds and a non-zero step", metas) from None
            stop = r.stop if r.stop >= 0 else None   # a stop of -1 would wrap around
            canon.append(py_slice(r.start, stop, r.step) if len(r) else py_slice(0, 0, 1))
        else:
            if not -n <= k < n:
                raise op_error(AxisError, "slice", f"index {k} is out of bounds for axis {dim} "
                               f"with size {n}", f"pass an index in [{-n}, {n - 1}]", metas)
            canon.append(int(k) % n)
        dim += 1
    return {"key": tuple(canon)}


def _slice_meta(a: Meta, *, key: tuple[Any, ...]) -> Meta:
    _require_any_dtype("slice", a)
    shape, dim = [], 0
    for k in key:
        if k is None:
            shape.append(1)
            continue
        if isinstance(k, py_slice):
            shape.append(len(range(a.shape[dim])[k]))
        dim += 1
    return Meta(tuple(shape), a.dtype)


def _slice_vjp(g: Any, a: Any, *, out: Any, key: tuple[Any, ...]) -> tuple[Any]:
    """Zero-pad ``g`` back: drop None axes, restore int axes, then per axis undo the step."""
    kept = [k for k in key if k is not None]
    shape = []
    for n, k in zip(a.shape, kept, strict=True):
        shape.append(len(range(n)[k]) if isinstance(k, py_slice) else 1)
    g = tsol.reshape(g, tuple(shape))
    for axis, (n, k) in enumerate(zip(a.shape, kept, strict=True)):
        r = range(n)[k] if isinstance(k, py_slice) else range(k, k + 1)
        m, start, step = len(r), r.start, r.step
        if m == 0:
            start, step = 0, 1
        elif step < 0:   # the same positions visited upwards
            g = tsol.slice(g, _along(g.ndim, axis, py_slice(None, None, -1)))
            start, step = r[-1], -step
        if step > 1:     # interleave step - 1 zeros after each element: (m, 1) -> (m, step)
            lead, tail = g.shape[:axis], g.shape[axis + 1:]
            g = tsol.reshape(g, lead + (m, 1) + tail)
            g = tsol.pad(g, _widths(g.ndim, axis + 1, 0, step - 1))
            g = tsol.reshape(g, lead + (m * step,) + tail)
        g = tsol.pad(g, _widths(g.ndim, axis, start, max(0, n - start - g.shape[axis])))
        if g.shape[axis] > n:
            g = tsol.slice(g, _along(g.ndim, axis, py_slice(0, n)))
    return (g,)


@defop(family="layout", inputs=("a",), meta=_slice_meta, normalize=_slice_normalize,
       reference=lambda a, key: np.asarray(a)[key], vjp=_slice_vjp, cost=_view_cost)
def slice(a, key):
    """``a[key]`` for a basic key; returns a view, as NumPy's basic indexing.

    ``key``: an int, a slice (any step, negative included), None (a new axis), Ellipsis, or a
    tuple of them. Any dtype. Raises AxisError for an index out of bounds or too many indices;
    ArgumentError for advanced indexing (arrays, lists, bools: ``tsol.take`` is not implemented
    yet, index with NumPy for gathers), more than one Ellipsis, or a zero step.

    >>> import numpy as np, tsol
    >>> tsol.slice(np.arange(10), np.s_[::-3])
    array([9, 6, 3, 0])
    """
    ...
