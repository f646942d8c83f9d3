"""softmax and log_softmax along one axis: meta, float64 reference, VJP and cost."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

import tsol
from tsol.ops.base import Meta, defop
from tsol.ops.rules import normalize_axis, require_float

__all__ = ["softmax", "log_softmax"]


def _cost(x: Meta, *, out: Meta, axis: int) -> tuple[float, float]:
    # max, subtract, exp, add, scale: five operations an element; one read and one write.
    return 5.0 * x.size, float(x.nbytes + out.nbytes)


def _softmax_ref(x: np.ndarray, *, axis: int) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax
    if x.size == 0:  # SciPy's max has no identity for an empty axis
        return np.empty(x.shape, np.float64)
    with np.errstate(invalid="ignore"):
        return scipy_softmax(x, axis=axis)


def _log_softmax_ref(x: np.ndarray, *, axis: int) -> np.ndarray:
    from scipy.special import log_softmax as scipy_log_softmax
    if x.size == 0:
        return np.empty(x.shape, np.float64)
    with np.errstate(invalid="ignore"):
        return scipy_log_softmax(x, axis=axis)


def _softmax_vjp(g: Any, x: Any, *, out: Any, axis: int) -> tuple[Any]:
    # dx = y * (g - sum(g * y)) along the axis.
    dot = tsol.sum(tsol.multiply(g, out), axis=axis, keepdims=True)
    return (tsol.multiply(out, tsol.subtract(g, dot)),)


def _log_softmax_vjp(g: Any, x: Any, *, out: Any, axis: int) -> tuple[Any]:
    # dx = g - softmax(x) * sum(g), with softmax(x) = exp(y).
    total = tsol.sum(g, axis=axis, keepdims=True)
    return (tsol.subtract(g, tsol.multiply(tsol.exp(out), total)),)


def _along_axis(op: str, reference: Callable[..., Any], vjp: Callable[..., Any]) -> Any:
    """The ``defop`` decorator of ``op``: a float array to one of its shape and dtype, along
    one ``axis`` (normalized to a non-negative int first)."""
    def meta(x: Meta, *, axis: int) -> Meta:
        require_float(op, x)
        return Meta(x.shape, x.dtype)

    def normalize(metas: Sequence[Meta], *, axis: Any) -> dict[str, Any]:
        return {"axis": normalize_axis(op, axis, metas[0].ndim, metas)}
    return defop(family="softmax", inputs=("x",), meta=meta, reference=reference, vjp=vjp,
                 cost=_cost, normalize=normalize)


@_along_axis("softmax", _softmax_ref, _softmax_vjp)
def softmax(x, axis=-1, *, out=None):
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``, each slice summing to 1.

    - ``x``: an array of at least one dimension, float64, float32, float16 or bfloat16; half
      types compute in float32. The result has ``x``'s shape and dtype.
    - ``axis``: one int in ``[-x.ndim, x.ndim)``. ``out``: an array of the result's shape
      and dtype (``x`` itself is allowed).
    - Sums run in a fixed order: the same bits for any thread count.
    - Edge cases follow ``scipy.special.softmax``: a slice of all ``-inf`` gives NaN (the max
      is ``-inf`` and ``-inf - -inf`` is NaN); a slice holding ``+inf`` gives NaN throughout;
      a NaN makes its whole slice NaN. Size-0 dimensions give an empty result.
    - Raises DTypeError for integer or bool input (cast first), AxisError for an axis out of
      range (a 0-d input has none), ArgumentError for a non-array such as a list.

    >>> import numpy as np, tsol
    >>> tsol.softmax(np.array([[1.0, 1.0], [0.0, np.log(3.0)]], np.float32)).round(4)
    array([[0.5 , 0.5 ],
           [0.25, 0.75]], dtype=float32)
    """
    ...


@_along_axis("log_softmax", _log_softmax_ref, _log_softmax_vjp)
def log_softmax(x, axis=-1, *, out=None):
    """Log of softmax along ``axis``: ``x - max - log(sum(exp(x - max)))``, without overflow.

    - ``x``: an array of at least one dimension, float64, float32, float16 or bfloat16; half
      types compute in float32. The result has ``x``'s shape and dtype.
    - ``axis``: one int in ``[-x.ndim, x.ndim)``. ``out``: an array of the result's shape
      and dtype (``x`` itself is allowed).
    - Sums run in a fixed order: the same bits for any thread count.
    - Edge cases follow ``scipy.special.log_softmax``, which shifts by 0 instead of a
      non-finite max: a slice of all ``-inf`` gives NaN; a slice holding ``+inf`` gives NaN at
      the ``+inf`` entries and ``-inf`` elsewhere; a NaN makes its whole slice NaN.
    - Raises DTypeError for integer or bool input (cast first), AxisError for an axis out of
      range (a 0-d input has none), ArgumentError for a non-array such as a list.

    >>> import numpy as np, tsol
    >>> tsol.log_softmax(np.array([0.0, 0.0], np.float64))
    array([-0.69314718, -0.69314718])
    """
    ...
