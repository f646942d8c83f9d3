"""Reductions: sum, mean, max, min, prod, var, std, argmax, argmin and logsumexp.

Arguments follow NumPy: ``axis`` is None (every axis), an int or a tuple of ints, negative
values counting from the end; a repeated or out-of-range axis raises AxisError. ``keepdims``
keeps reduced axes as size 1. ``out=`` must have the result's exact shape and dtype.

Result dtypes follow NumPy: sum and prod of bool and signed integers give int64, of unsigned
integers uint64 (both wrap on overflow, like NumPy); mean, var and std of integers and bool
give float64; everything else keeps the input dtype. float16/bfloat16 accumulate in float32.

Sums are deterministic: a fixed blocked, pairwise order (see ``tsol/kernels/cpu/reduction.py``)
gives bitwise-equal results for any thread count.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

import tsol
from tsol import dtypes
from tsol.errors import ArgumentError, ShapeError, op_error
from tsol.ops.base import Meta, defop
from tsol.ops.rules import normalize_axes, normalize_axis, require_dtypes, require_float
from tsol.registry import NON_DIFFERENTIABLE

__all__ = ["sum", "mean", "max", "min", "prod", "var", "std", "argmax", "argmin", "logsumexp"]

NUMPY_NAMES = {"max": "maximum", "min": "minimum", "argmax": "argmax", "argmin": "argmin"}


# --- shared rules -----------------------------------------------------------------------------

def _keepdims(op: str, keepdims: Any) -> bool:
    if not isinstance(keepdims, (bool, np.bool_)):
        raise op_error(ArgumentError, op, f"keepdims must be True or False, got {keepdims!r}",
                       "pass keepdims=True or keepdims=False")
    return bool(keepdims)


def _normalize(op: str) -> Any:
    def normalize(metas: Sequence[Meta], axis: Any = None, keepdims: Any = False,
                  **extra: Any) -> dict[str, Any]:
        attrs = {"axis": normalize_axes(op, axis, metas[0].ndim, metas),
                 "keepdims": _keepdims(op, keepdims)}
        if "ddof" in extra:
            ddof = extra["ddof"]
            if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, (int, float,
                                                                              np.integer,
                                                                              np.floating)):
                raise op_error(ArgumentError, op, f"ddof must be a number, got {ddof!r}",
                               "pass an int such as ddof=1", metas)
            attrs["ddof"] = float(ddof) if isinstance(ddof, (float, np.floating)) else int(ddof)
        return attrs
    return normalize


def _arg_normalize(op: str) -> Any:
    def normalize(metas: Sequence[Meta], axis: Any = None, keepdims: Any = False
                  ) -> dict[str, Any]:
        ndim = metas[0].ndim
        if axis is not None and ndim == 0 and not isinstance(axis, (bool, tuple, list)) \
                and axis in (0, -1):
            axis = None
        if axis is not None:
            axis = normalize_axis(op, axis, ndim, metas)
        return {"axis": axis, "keepdims": _keepdims(op, keepdims)}
    return normalize


def reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool
                  ) -> tuple[int, ...]:
    """``shape`` with ``axes`` removed, or kept as 1 with ``keepdims``."""
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _require_any(op: str, a: Meta) -> None:
    require_dtypes(op, [a], dtypes.ALL, "a TSOL dtype (float, integer or bool)")


def _require_nonempty(op: str, a: Meta, axes: tuple[int, ...]) -> None:
    if math.prod(a.shape[i] for i in axes) == 0:
        raise op_error(ShapeError, op, f"zero-size array to reduction operation "
                       f"{NUMPY_NAMES[op]} which has no identity (the reduced axes "
                       f"{axes} have no elements)", "reduce over axes of nonzero length, or "
                       "check the size first (tsol.sum of an empty array is 0)", [a])


def _sum_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind == "b" or dt in dtypes.SIGNED:
        return dtypes.int64
    return dtypes.uint64 if dt.kind == "u" else dt


def _mean_dtype(dt: np.dtype) -> np.dtype:
    return dtypes.float64 if dt.kind in "iub" else dt


def _meta(op: str, rule: Any) -> Any:
    def meta(a: Meta, *, axis: tuple[int, ...], keepdims: bool, **_: Any) -> Meta:
        _require_any(op, a)
        if op in NUMPY_NAMES:
            _require_nonempty(op, a, axis)
        return Meta(reduced_shape(a.shape, axis, keepdims), rule(a.dtype))
    return meta


def _arg_meta(op: str) -> Any:
    def meta(a: Meta, *, axis: int | None, keepdims: bool) -> Meta:
        _require_any(op, a)
        axes = tuple(range(a.ndim)) if axis is None else (axis,)
        _require_nonempty(op, a, axes)
        return Meta(reduced_shape(a.shape, axes, keepdims), dtypes.int64)
    return meta


def _lse_meta(a: Meta, *, axis: tuple[int, ...], keepdims: bool) -> Meta:
    require_float("logsumexp", a)
    return Meta(reduced_shape(a.shape, axis, keepdims), a.dtype)


def _cost(flops_per_element: float, passes: int = 1) -> Any:
    def cost(a: Meta, *, out: Meta, **_: Any) -> tuple[float, float]:
        return float(flops_per_element * a.size), float(passes * a.nbytes + out.nbytes)
    return cost


def _quiet(fn: Any) -> Any:
    """A NumPy reference without NumPy's empty-slice and ddof warnings."""
    def ref(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kwargs)
    return ref


def _lse_ref(a: np.ndarray, *, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    from scipy.special import logsumexp as scipy_logsumexp
    axis = normalize_axes("reference", axis, a.ndim)
    if axis == () or a.ndim == 0:      # nothing reduced: the logsumexp of one value is itself
        return np.array(a, dtype=np.float64)
    if a.size == 0:                    # SciPy cannot reduce tuples of axes of empty arrays
        return np.full(reduced_shape(a.shape, axis, keepdims), -np.inf)
    return scipy_logsumexp(a, axis=axis, keepdims=keepdims)


# --- VJP rules (TSOL ops) ---------------------------------------------------------------------

def _expand(g: Any, a: Any, axis: tuple[int, ...], keepdims: bool) -> Any:
    """Cotangent ``g`` of a reduction, broadcast back to ``a``'s shape (where with a true
    condition takes every element from ``g`` and only the shape from ``a``)."""
    return tsol.where(True, _kept(g, a, axis, keepdims), a)


def _kept(y: Any, a: Any, axis: tuple[int, ...], keepdims: bool) -> Any:
    return y if keepdims else tsol.reshape(y, reduced_shape(a.shape, axis, True))


def _sum_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], keepdims: bool) -> tuple:
    return (_expand(g, a, axis, keepdims),)


def _mean_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], keepdims: bool) -> tuple:
    n = math.prod(a.shape[i] for i in axis)
    return (tsol.divide(_expand(g, a, axis, keepdims), float(n)),)


def _extreme_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], keepdims: bool) -> tuple:
    # The cotangent is split equally between tied extremes (JAX's rule).
    hit = tsol.where(tsol.equal(a, _kept(out, a, axis, keepdims)), 1.0, 0.0)
    ties = tsol.sum(hit, axis=axis, keepdims=True)
    share = tsol.divide(_kept(g, a, axis, keepdims), ties)
    return (tsol.multiply(hit, share),)


def _prod_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], keepdims: bool) -> tuple:
    # d prod / d a_i = prod / a_i: defined for nonzero inputs only.
    scaled = tsol.multiply(_kept(g, a, axis, keepdims), _kept(out, a, axis, keepdims))
    return (tsol.divide(scaled, a),)


def _var_grad(g: Any, a: Any, axis: tuple[int, ...], keepdims: bool, ddof: float) -> Any:
    dof = math.prod(a.shape[i] for i in axis) - ddof
    centered = tsol.subtract(a, tsol.mean(a, axis=axis, keepdims=True))
    return tsol.multiply(centered, tsol.multiply(_kept(g, a, axis, keepdims),
                                                 2.0 / dof if dof > 0 else math.inf))


def _var_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], ddof: float,
             keepdims: bool) -> tuple:
    return (_var_grad(g, a, axis, keepdims, ddof),)


def _std_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], ddof: float,
             keepdims: bool) -> tuple:
    # d std = d var / (2 std)
    return (_var_grad(tsol.divide(g, tsol.multiply(out, 2.0)), a, axis, keepdims, ddof),)


def _lse_vjp(g: Any, a: Any, *, out: Any, axis: tuple[int, ...], keepdims: bool) -> tuple:
    weights = tsol.exp(tsol.subtract(a, _kept(out, a, axis, keepdims)))
    return (tsol.multiply(weights, _kept(g, a, axis, keepdims)),)


# --- ops --------------------------------------------------------------------------------------

def _ref(fn: Any) -> Any:
    def ref(a: np.ndarray, *, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        if axis is not None and fn not in (np.argmax, np.argmin):
            axis = normalize_axes("reference", axis, a.ndim)     # NumPy's mean wants 0-d -> ()
        return fn(a, axis=axis, keepdims=keepdims, **kw)
    return _quiet(ref)


@defop(family="reduction", inputs=("a",), meta=_meta("sum", _sum_dtype), normalize=_normalize(
    "sum"), reference=_ref(np.sum), vjp=_sum_vjp, cost=_cost(1.0))
def sum(a, axis=None, *, keepdims=False, out=None):  # noqa: A001 - NumPy's name
    """Sum of the elements over ``axis`` (all axes when None), as ``np.sum``.

    - ``a``: any TSOL dtype. The result drops the reduced axes (keeps them as 1 with
      ``keepdims``); dtype int64 for bool and signed integers, uint64 for unsigned integers
      (wrapping on overflow like NumPy), the input dtype for floats (float16/bfloat16
      accumulate in float32). An empty reduction gives 0.
    - Deterministic: fixed blocks of 4096 elements folded in 256 interleaved lanes, then a
      pairwise tree (columns: blocks of 128 rows); the same input gives the same bits for any
      thread count, with error growing like NumPy's pairwise sum.
    - Raises AxisError for an axis out of range or repeated, DTypeError for an unsupported dtype,
      ArgumentError for a non-array, ShapeError/DTypeError for an ``out=`` that does not match.

    >>> import numpy as np, tsol
    >>> tsol.sum(np.arange(6, dtype=np.float32).reshape(2, 3), axis=0)
    array([3., 5., 7.], dtype=float32)
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_meta("mean", _mean_dtype),
       normalize=_normalize("mean"), reference=_ref(np.mean), vjp=_mean_vjp, cost=_cost(1.0))
def mean(a, axis=None, *, keepdims=False, out=None):
    """Arithmetic mean over ``axis``, as ``np.mean``: the deterministic sum divided by the count.

    - ``a``: any TSOL dtype; integers and bool give float64 (integers up to 32 bits are summed
      exactly in int64 first), floats keep their dtype (halves accumulate in float32).
    - An empty reduction gives NaN without an exception (NumPy also warns).
    - Raises like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> tsol.mean(np.array([[1, 2], [3, 5]], np.int32), axis=1)
    array([1.5, 4. ])
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_meta("max", lambda dt: dt),
       normalize=_normalize("max"), reference=_ref(np.max), vjp=_extreme_vjp, cost=_cost(1.0))
def max(a, axis=None, *, keepdims=False, out=None):  # noqa: A001 - NumPy's name
    """Largest element over ``axis``, as ``np.max``; the result keeps ``a``'s dtype.

    - NaN propagates: a slice holding a NaN gives NaN.
    - The VJP sends the cotangent to the maximal elements, split equally between ties.
    - Raises ShapeError for a reduction over zero elements ("zero-size array to reduction
      operation maximum which has no identity"), and otherwise like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> tsol.max(np.array([[1, 7], [4, 2]], np.int32), axis=0)
    array([4, 7], dtype=int32)
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_meta("min", lambda dt: dt),
       normalize=_normalize("min"), reference=_ref(np.min), vjp=_extreme_vjp, cost=_cost(1.0))
def min(a, axis=None, *, keepdims=False, out=None):  # noqa: A001 - NumPy's name
    """Smallest element over ``axis``, as ``np.min``; the result keeps ``a``'s dtype.

    - NaN propagates. The VJP splits the cotangent equally between tied minima.
    - Raises ShapeError for a reduction over zero elements, otherwise like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> float(tsol.min(np.array([3.0, -1.0, 2.0])))
    -1.0
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_meta("prod", _sum_dtype),
       normalize=_normalize("prod"), reference=_ref(np.prod), vjp=_prod_vjp, cost=_cost(1.0))
def prod(a, axis=None, *, keepdims=False, out=None):
    """Product of the elements over ``axis``, as ``np.prod``; dtypes as ``tsol.sum``.

    - An empty reduction gives 1. Integers wrap on overflow like NumPy. The same fixed blocked
      order as ``tsol.sum``. The VJP (``prod / a``) assumes nonzero inputs.
    - Raises like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> tsol.prod(np.array([[1, 2], [3, 4]], np.int8), axis=1)
    array([ 2, 12])
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_meta("var", _mean_dtype),
       normalize=_normalize("var"),
       reference=_ref(np.var),
       vjp=_var_vjp, cost=_cost(4.0, passes=2))
def var(a, axis=None, *, ddof=0, keepdims=False, out=None):
    """Variance over ``axis``, as ``np.var``: ``sum((a - mean)**2) / max(n - ddof, 0)``.

    - Two passes (the deterministic mean, then the deterministic sum of squared deviations
      from it), so there is no cancellation of ``E[a**2] - E[a]**2``.
    - Dtypes as ``tsol.mean`` (integers are converted to float64 once, as NumPy's own var does).
    - ``ddof``: a number. When ``n - ddof <= 0`` the divisor is 0 and the result is inf (NaN
      when every deviation is 0, e.g. n == 1 with ddof=1), like NumPy (which also warns).
      An empty reduction gives NaN.
    - Raises ArgumentError for a non-number ``ddof``, otherwise like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> float(tsol.var(np.array([1.0, 2.0, 3.0, 4.0]), ddof=1))
    1.6666666666666667
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_meta("std", _mean_dtype),
       normalize=_normalize("std"),
       reference=_ref(np.std),
       vjp=_std_vjp, cost=_cost(4.0, passes=2))
def std(a, axis=None, *, ddof=0, keepdims=False, out=None):
    """Standard deviation over ``axis``, as ``np.std``: the square root of ``tsol.var``.

    Same dtypes, ``ddof`` rule (inf or NaN when ``n - ddof <= 0``) and errors as ``tsol.var``.

    >>> import numpy as np, tsol
    >>> tsol.std(np.array([[1.0, 3.0], [2.0, 2.0]], np.float32), axis=1)
    array([1., 0.], dtype=float32)
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_arg_meta("argmax"),
       normalize=_arg_normalize("argmax"), reference=_ref(np.argmax), vjp=NON_DIFFERENTIABLE,
       cost=_cost(1.0))
def argmax(a, axis=None, *, keepdims=False, out=None):
    """Index of the largest element, as ``np.argmax``; int64.

    - ``axis`` None: an index into the C-order flattened array (a 0-d result, or all-ones
      shape with ``keepdims``); an int: indices along that axis. A tuple is not accepted.
    - Ties give the first occurrence; a NaN counts as the largest (the first NaN wins).
    - Raises ShapeError for a reduction over zero elements, AxisError for a bad axis, and
      otherwise like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> tsol.argmax(np.array([[1, 9, 9], [4, 2, 0]], np.int32), axis=1)
    array([1, 0])
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_arg_meta("argmin"),
       normalize=_arg_normalize("argmin"), reference=_ref(np.argmin), vjp=NON_DIFFERENTIABLE,
       cost=_cost(1.0))
def argmin(a, axis=None, *, keepdims=False, out=None):
    """Index of the smallest element, as ``np.argmin``; int64.

    Same axis rule, tie rule (first occurrence), NaN rule (the first NaN wins) and errors as
    ``tsol.argmax``.

    >>> import numpy as np, tsol
    >>> int(tsol.argmin(np.array([3.0, np.nan, -1.0])))
    1
    """
    ...


@defop(family="reduction", inputs=("a",), meta=_lse_meta, normalize=_normalize("logsumexp"),
       reference=_quiet(_lse_ref), vjp=_lse_vjp, cost=_cost(12.0, passes=2))
def logsumexp(a, axis=None, *, keepdims=False, out=None):
    """``log(sum(exp(a)))`` over ``axis`` without overflow, as ``scipy.special.logsumexp``.

    - Computed as ``m + log(sum(exp(a - m)))`` with ``m`` the max, replaced by 0 when it is not
      finite (SciPy's rule): all ``-inf`` gives ``-inf``, a ``+inf`` gives ``+inf``, a NaN gives
      NaN. An empty reduction gives ``-inf``.
    - ``a``: float64, float32, float16 or bfloat16 (halves compute in float32); the result keeps
      the dtype.
    - Raises DTypeError for integer or bool input, otherwise like ``tsol.sum``.

    >>> import numpy as np, tsol
    >>> float(tsol.logsumexp(np.array([1000.0, 1000.0])))
    1000.6931471805599
    """
    ...
