"""Elementwise ops: unary math, arithmetic and comparisons with broadcasting, where, clip, astype.

Shapes broadcast like NumPy; result dtypes follow NumPy 2 promotion (NEP 50: a Python scalar
takes the array's kind, ``float32 + 2.0`` stays float32), with ``int / int -> float64`` as
``np.true_divide``. float16 and bfloat16 compute in float32 and round once on store. Integer
arithmetic wraps like NumPy's; maximum, minimum and clip propagate NaN.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import scipy.special

import tsol
from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, op_error
from tsol.ops.base import Meta, defop, promote
from tsol.ops.rules import broadcast_shapes, elementwise_cost, require_dtypes, sum_to_shape
from tsol.registry import NON_DIFFERENTIABLE

__all__ = ["neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu",
           "gelu", "silu", "add", "subtract", "multiply", "divide", "power", "maximum", "minimum",
           "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "where",
           "clip", "astype"]

FAMILY = "elementwise"
_FLOAT_WHAT = "a floating dtype (float16/bfloat16/float32/float64)"


# --- meta rules --------------------------------------------------------------------------------

def _strong(m: Meta) -> Meta:
    """``m`` as an array meta, so dtype rules also apply to Python scalars."""
    return Meta(m.shape, m.dtype)


def _unary_meta(op: str, allowed: frozenset, what: str) -> Callable[..., Meta]:
    def meta(x: Meta, **attrs: Any) -> Meta:
        require_dtypes(op, [_strong(x)], allowed, what)
        return Meta(x.shape, x.dtype)
    return meta


def _float_meta(op: str) -> Callable[..., Meta]:
    return _unary_meta(op, dtypes.FLOATS, _FLOAT_WHAT)


def _numeric_meta(op: str) -> Callable[..., Meta]:
    return _unary_meta(op, dtypes.NUMERIC, "a numeric dtype (integer or floating)")


def _binary_meta(op: str, on_bool: Any = "keep", ints_to: Any = None) -> Callable[..., Meta]:
    """Broadcast + promote. ``on_bool``: keep a bool result, "error", or a dtype to use;
    ``ints_to``: the dtype an integer result becomes (float64 for true division)."""

    def meta(*metas: Meta) -> Meta:
        require_dtypes(op, metas, dtypes.ALL, "a real numeric or bool dtype")
        shape = broadcast_shapes(op, *metas)
        dt = promote(op, *metas)
        if dt == dtypes.bool_ and on_bool == "error":
            raise op_error(DTypeError, op, "is not defined for two boolean operands",
                           "cast one operand with tsol.astype(x, tsol.int8) (or use "
                           "tsol.not_equal for exclusive or)", metas)
        if dt == dtypes.bool_ and on_bool != "keep":
            dt = np.dtype(on_bool)
        if ints_to is not None and dt.kind in "iub":
            dt = np.dtype(ints_to)
        return Meta(shape, dt)
    return meta


def _compare_meta(op: str) -> Callable[..., Meta]:
    base = _binary_meta(op)
    return lambda x1, x2: Meta(base(x1, x2).shape, dtypes.bool_)


def _where_meta(condition: Meta, x: Meta, y: Meta) -> Meta:
    require_dtypes("where", [condition, x, y], dtypes.ALL, "a real numeric or bool dtype")
    return Meta(broadcast_shapes("where", condition, x, y), promote("where", x, y))


def _clip_meta(a: Meta, a_min: Meta | None, a_max: Meta | None) -> Meta:
    if a_min is None and a_max is None:
        raise op_error(ArgumentError, "clip", "a_min and a_max are both None",
                       "pass at least one bound (an array or a scalar)", [a])
    return _binary_meta("clip")(*[m for m in (a, a_min, a_max) if m is not None])


def _gelu_meta(x: Meta, approximate: str) -> Meta:
    if approximate not in ("none", "tanh"):
        raise op_error(ArgumentError, "gelu", f"approximate={approximate!r} is not one of "
                       "'none', 'tanh'", "pass approximate='none' (erf) or 'tanh'", [x])
    return _float_meta("gelu")(x)


def _astype_normalize(metas: list[Meta], dtype: Any) -> dict[str, Any]:
    try:
        return {"dtype": dtypes.dtype(dtype)}
    except DTypeError as exc:
        raise op_error(DTypeError, "astype", str(exc).removeprefix("tsol: ").split(". Fix")[0],
                       "pass a dtype such as tsol.float32, 'bf16' or np.int32", metas) from None


def _astype_meta(x: Meta, dtype: np.dtype) -> Meta:
    require_dtypes("astype", [_strong(x)], dtypes.ALL, "a real numeric or bool dtype")
    return Meta(x.shape, dtype)


# --- references (float64 truth; NumPy/SciPy only) ---------------------------------------------

def _ref(fn: Callable[..., Any]) -> Callable[..., Any]:
    def reference(*arrays: Any, **attrs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*arrays, **attrs)
    return reference


def _gelu_ref(x: Any, approximate: str = "none") -> Any:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))


def _clip_ref(a: Any, a_min: Any, a_max: Any) -> Any:
    lo = a if a_min is None else np.maximum(a, a_min)
    return lo if a_max is None else np.minimum(lo, a_max)


def _astype_ref(x: Any, dtype: np.dtype) -> Any:
    """The exact value for a float target (tests round with its tolerance), else NumPy's cast."""
    x = np.asarray(x)
    return x.astype(np.float64) if dtype in dtypes.FLOATS else x.astype(dtype)


# --- VJP rules (in TSOL ops) -------------------------------------------------------------------

def _unbroadcast(g: Any, p: Any) -> Any:
    """Cotangent for primal ``p``: None for Python scalars and non-float arrays."""
    if p is None or isinstance(p, (bool, int, float)) or np.dtype(p.dtype) not in dtypes.FLOATS:
        return None
    return sum_to_shape(g, tuple(p.shape))


def _abs_vjp(g, x, *, out):
    sign_g = tsol.where(tsol.less(x, 0), tsol.neg(g), tsol.where(tsol.greater(x, 0), g, 0.0))
    return (_unbroadcast(sign_g, x),)


def _rsqrt_vjp(g, x, *, out):
    return (tsol.multiply(g, tsol.divide(tsol.multiply(out, -0.5), x)),)


def _sigmoid_vjp(g, x, *, out):
    return (tsol.multiply(g, tsol.multiply(out, tsol.subtract(1.0, out))),)


def _silu_vjp(g, x, *, out):
    s = tsol.sigmoid(x)
    return (tsol.multiply(g, tsol.multiply(s, tsol.add(1.0, tsol.multiply(
        x, tsol.subtract(1.0, s))))),)


def _gelu_vjp(g, x, *, out, approximate):
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = tsol.multiply(x, x)
        t = tsol.tanh(tsol.multiply(tsol.multiply(x, tsol.add(1.0, tsol.multiply(x2, 0.044715))),
                                    c))
        du = tsol.multiply(tsol.add(1.0, tsol.multiply(x2, 3 * 0.044715)), c)
        d = tsol.multiply(tsol.add(1.0, t), 0.5)
        d = tsol.add(d, tsol.multiply(tsol.multiply(tsol.multiply(x, 0.5),
                                                    tsol.subtract(1.0, tsol.multiply(t, t))), du))
        return (tsol.multiply(g, d),)
    # d/dx x Phi(x) = Phi(x) + x phi(x), with Phi(x) = gelu(x) / x (1/2 at 0).
    cdf = tsol.where(tsol.equal(x, 0), 0.5, tsol.divide(out, x))
    pdf = tsol.multiply(tsol.exp(tsol.multiply(tsol.multiply(x, x), -0.5)),
                        1.0 / math.sqrt(2.0 * math.pi))
    return (tsol.multiply(g, tsol.add(cdf, tsol.multiply(x, pdf))),)


def _subtract_vjp(g, x1, x2, *, out):
    return (_unbroadcast(g, x1), _unbroadcast(tsol.neg(g), x2))


def _multiply_vjp(g, x1, x2, *, out):
    return (_unbroadcast(tsol.multiply(g, x2), x1), _unbroadcast(tsol.multiply(g, x1), x2))


def _divide_vjp(g, x1, x2, *, out):
    return (_unbroadcast(tsol.divide(g, x2), x1),
            _unbroadcast(tsol.neg(tsol.divide(tsol.multiply(g, out), x2)), x2))


def _power_vjp(g, x1, x2, *, out):
    d1 = tsol.multiply(g, tsol.multiply(x2, tsol.power(x1, tsol.subtract(x2, 1.0))))
    positive = tsol.greater(x1, 0)
    logx = tsol.log(tsol.where(positive, x1, 1.0))      # d/dx2 is 0 where x1 <= 0
    d2 = tsol.where(positive, tsol.multiply(tsol.multiply(g, out), logx), 0.0)
    return (_unbroadcast(d1, x1), _unbroadcast(d2, x2))


def _select_vjp(pick_first: Callable[..., Any]) -> Callable[..., tuple]:
    def vjp(g, x1, x2, *, out):
        mask = pick_first(x1, x2)
        return (_unbroadcast(tsol.where(mask, g, 0.0), x1),
                _unbroadcast(tsol.where(mask, 0.0, g), x2))
    return vjp


def _where_vjp(g, condition, x, y, *, out):
    return (None, _unbroadcast(tsol.where(condition, g, 0.0), x),
            _unbroadcast(tsol.where(condition, 0.0, g), y))


def _clip_vjp(g, a, a_min, a_max, *, out):
    # out = min(max(a, lo), hi): g goes to a inside [lo, hi], to lo where it is the result
    # (a < lo < hi), to hi everywhere else it is (max(a, lo) > hi, including lo > hi).
    ga, gmin, gmax = g, None, None
    if a_min is not None:
        ga = tsol.where(tsol.greater_equal(a, a_min), ga, 0.0)
        takes_lo = tsol.less(a, a_min)
        if a_max is not None:
            takes_lo = tsol.where(takes_lo, tsol.less(a_min, a_max), False)
        gmin = _unbroadcast(tsol.where(takes_lo, g, 0.0), a_min)
    if a_max is not None:
        ga = tsol.where(tsol.less_equal(a, a_max), ga, 0.0)
        top = a if a_min is None else tsol.maximum(a, a_min)
        gmax = _unbroadcast(tsol.where(tsol.greater(top, a_max), g, 0.0), a_max)
    return (_unbroadcast(ga, a), gmin, gmax)


def _astype_vjp(g, x, *, out, dtype):
    if np.dtype(x.dtype) in dtypes.FLOATS and dtype in dtypes.FLOATS:
        return (tsol.astype(g, x.dtype),)
    return (None,)


# --- the ops -----------------------------------------------------------------------------------

def _op(*inputs: str, meta: Callable[..., Meta], ref: Callable[..., Any], vjp: Any,
        flops: float, **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return defop(family=FAMILY, inputs=inputs, meta=meta, reference=_ref(ref), vjp=vjp,
                 cost=elementwise_cost(flops), **extra)


@_op("x", meta=_numeric_meta("neg"), ref=np.negative,
     vjp=lambda g, x, *, out: (_unbroadcast(tsol.neg(g), x),), flops=1)
def neg(x, *, out=None):
    """Elementwise ``-x`` (NumPy ``negative``).

    ``x``: an integer or float array (or Python scalar); the result has its shape and dtype;
    integers wrap (``-(-128)`` is -128 in int8). Raises DTypeError for bool.

    >>> import numpy as np, tsol
    >>> tsol.neg(np.array([1, -2], np.int32))
    array([-1,  2], dtype=int32)
    """


@_op("x", meta=_numeric_meta("abs"), ref=np.absolute, vjp=_abs_vjp, flops=1)
def abs(x, *, out=None):  # noqa: A001 - NumPy's name
    """Elementwise ``|x|`` (NumPy ``absolute``); integers wrap (``abs(-128)`` is -128 in int8).

    ``x``: an integer or float array; same shape and dtype out. Raises DTypeError for bool.

    >>> import numpy as np, tsol
    >>> tsol.abs(np.array([-1.5, 2.0], np.float32))
    array([1.5, 2. ], dtype=float32)
    """


@_op("x", meta=_numeric_meta("relu"), ref=lambda x: np.maximum(x, np.zeros((), x.dtype)),
     vjp=lambda g, x, *, out: (_unbroadcast(tsol.where(tsol.greater(x, 0), g, 0.0), x),), flops=1)
def relu(x, *, out=None):
    """Elementwise ``max(x, 0)`` with NaN kept, as NumPy's ``maximum(x, 0)``.

    ``x``: an integer or float array; same shape and dtype out. Raises DTypeError for bool.

    >>> import numpy as np, tsol
    >>> tsol.relu(np.array([-1.0, 2.0], np.float32))
    array([0., 2.], dtype=float32)
    """


@_op("x", meta=_float_meta("exp"), ref=np.exp,
     vjp=lambda g, x, *, out: (tsol.multiply(g, out),), flops=20)
def exp(x, *, out=None):
    """Elementwise ``e**x``.

    ``x``: a float array (float16, bfloat16, float32, float64) or Python float; same shape and
    dtype out. Raises DTypeError for integer or bool input (cast with tsol.astype first).

    >>> import numpy as np, tsol
    >>> tsol.exp(np.array([0.0, 1.0]))
    array([1.        , 2.71828183])
    """


@_op("x", meta=_float_meta("log"), ref=np.log,
     vjp=lambda g, x, *, out: (tsol.divide(g, x),), flops=20)
def log(x, *, out=None):
    """Elementwise natural logarithm; ``log(0)`` is -inf and ``log(x < 0)`` is NaN.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.log(np.array([1.0, 0.0], np.float32))
    array([  0., -inf], dtype=float32)
    """


@_op("x", meta=_float_meta("sqrt"), ref=np.sqrt,
     vjp=lambda g, x, *, out: (tsol.divide(g, tsol.multiply(out, 2.0)),), flops=1)
def sqrt(x, *, out=None):
    """Elementwise square root; NaN for ``x < 0``.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.sqrt(np.array([4.0, 9.0], np.float32))
    array([2., 3.], dtype=float32)
    """


@_op("x", meta=_float_meta("rsqrt"), ref=lambda x: 1.0 / np.sqrt(x), vjp=_rsqrt_vjp, flops=2)
def rsqrt(x, *, out=None):
    """Elementwise ``1 / sqrt(x)``; inf at 0, NaN for ``x < 0``.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.rsqrt(np.array([4.0, 0.25], np.float32))
    array([0.5, 2. ], dtype=float32)
    """


@_op("x", meta=_float_meta("sin"), ref=np.sin,
     vjp=lambda g, x, *, out: (tsol.multiply(g, tsol.cos(x)),), flops=20)
def sin(x, *, out=None):
    """Elementwise sine (radians), accurate for every finite ``x``; NaN for +-inf.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.sin(np.array([0.0, np.pi / 2]))
    array([0., 1.])
    """


@_op("x", meta=_float_meta("cos"), ref=np.cos,
     vjp=lambda g, x, *, out: (tsol.neg(tsol.multiply(g, tsol.sin(x))),), flops=20)
def cos(x, *, out=None):
    """Elementwise cosine (radians), accurate for every finite ``x``; NaN for +-inf.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.cos(np.array([0.0, np.pi]))
    array([ 1., -1.])
    """


@_op("x", meta=_float_meta("tanh"), ref=np.tanh,
     flops=20,
     vjp=lambda g, x, *, out: (tsol.multiply(g, tsol.subtract(1.0, tsol.multiply(out, out))),))
def tanh(x, *, out=None):
    """Elementwise hyperbolic tangent.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.tanh(np.array([0.0, np.inf], np.float32))
    array([0., 1.], dtype=float32)
    """


@_op("x", meta=_float_meta("sigmoid"), ref=lambda x: 1.0 / (1.0 + np.exp(-x)),
     vjp=_sigmoid_vjp, flops=22)
def sigmoid(x, *, out=None):
    """Elementwise logistic function ``1 / (1 + exp(-x))``.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.sigmoid(np.array([0.0, -np.inf], np.float32))
    array([0.5, 0. ], dtype=float32)
    """


@_op("x", meta=_float_meta("silu"), ref=lambda x: x / (1.0 + np.exp(-x)), vjp=_silu_vjp,
     flops=23)
def silu(x, *, out=None):
    """Elementwise SiLU (swish), ``x * sigmoid(x)``.

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool).

    >>> import numpy as np, tsol
    >>> tsol.silu(np.array([0.0, 1.0])).round(4)
    array([0.    , 0.7311])
    """


@_op("x", meta=_gelu_meta, ref=_gelu_ref, vjp=_gelu_vjp, flops=30)
def gelu(x, approximate="none", *, out=None):
    """Elementwise GELU ``x * Phi(x)``: exact through erf (``approximate="none"``) or the tanh
    form ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))`` (``approximate="tanh"``).

    ``x``: a float array or Python float; same shape and dtype out (DTypeError for ints, bool);
    ArgumentError for another ``approximate``.

    >>> import numpy as np, tsol
    >>> tsol.gelu(np.array([0.0, 1.0]), approximate="tanh").round(4)
    array([0.    , 0.8412])
    """


@_op("x1", "x2", meta=_binary_meta("add"), ref=np.add,
     vjp=lambda g, x1, x2, *, out: (_unbroadcast(g, x1), _unbroadcast(g, x2)), flops=1)
def add(x1, x2, *, out=None):
    """Elementwise ``x1 + x2``, broadcasting; two bools give their logical or.

    Shapes broadcast, dtypes promote as NumPy 2 (``float32 + 2.0`` stays float32); raises
    ShapeError for shapes that do not broadcast, DTypeError for dtypes with no common type.

    >>> import numpy as np, tsol
    >>> tsol.add(np.array([[1.0], [4.0]], np.float32), np.array([2.0, 0.5], np.float32))
    array([[3. , 1.5],
           [6. , 4.5]], dtype=float32)
    """


@_op("x1", "x2", meta=_binary_meta("subtract", on_bool="error"), ref=np.subtract,
     vjp=_subtract_vjp, flops=1)
def subtract(x1, x2, *, out=None):
    """Elementwise ``x1 - x2``, broadcasting.

    Shapes broadcast, dtypes promote as NumPy 2; raises ShapeError for shapes that do not
    broadcast, DTypeError for two bools (as NumPy) or dtypes with no common type.

    >>> import numpy as np, tsol
    >>> tsol.subtract(np.array([3, 4], np.int8), 1)
    array([2, 3], dtype=int8)
    """


@_op("x1", "x2", meta=_binary_meta("multiply"), ref=np.multiply, vjp=_multiply_vjp, flops=1)
def multiply(x1, x2, *, out=None):
    """Elementwise ``x1 * x2``, broadcasting; two bools give their logical and.

    Shapes broadcast, dtypes promote as NumPy 2; raises ShapeError for shapes that do not
    broadcast, DTypeError for dtypes with no common type.

    >>> import numpy as np, tsol
    >>> tsol.multiply(np.array([1.5, 2.0], np.float32), 2.0)
    array([3., 4.], dtype=float32)
    """


@_op("x1", "x2", meta=_binary_meta("divide", ints_to=dtypes.float64), ref=np.true_divide,
     vjp=_divide_vjp, flops=1)
def divide(x1, x2, *, out=None):
    """Elementwise true division ``x1 / x2``, broadcasting; ``x / 0`` is +-inf (NaN for 0/0).

    Shapes broadcast, dtypes promote as NumPy 2, and integer or bool operands give float64 as
    ``np.true_divide``; raises ShapeError / DTypeError like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.divide(np.array([1, 3], np.int32), 2)
    array([0.5, 1.5])
    """


@_op("x1", "x2", meta=_binary_meta("power", on_bool=dtypes.int8), ref=np.power,
     vjp=_power_vjp, flops=40)
def power(x1, x2, *, out=None):
    """Elementwise ``x1 ** x2``, broadcasting; floats follow C99 ``pow`` (``0**-1`` is inf,
    a negative base to a non-integer power is NaN), integers wrap.

    Shapes broadcast, dtypes promote as NumPy 2 (two bools give int8); raises ShapeError /
    DTypeError like ``add``, and ArgumentError for an integer base with a negative integer
    exponent, as NumPy does.

    >>> import numpy as np, tsol
    >>> tsol.power(np.array([2.0, 4.0], np.float32), np.array([3.0, 0.5], np.float32))
    array([8., 2.], dtype=float32)
    """


@_op("x1", "x2", meta=_binary_meta("maximum"), ref=np.maximum,
     vjp=_select_vjp(lambda a, b: tsol.greater_equal(a, b)), flops=1)
def maximum(x1, x2, *, out=None):
    """Elementwise larger of ``x1`` and ``x2``, broadcasting; NaN if either is NaN.

    Shapes broadcast, dtypes promote as NumPy 2; raises ShapeError / DTypeError like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.maximum(np.array([1.0, np.nan, 3.0]), 2.0)
    array([ 2., nan,  3.])
    """


@_op("x1", "x2", meta=_binary_meta("minimum"), ref=np.minimum,
     vjp=_select_vjp(lambda a, b: tsol.less_equal(a, b)), flops=1)
def minimum(x1, x2, *, out=None):
    """Elementwise smaller of ``x1`` and ``x2``, broadcasting; NaN if either is NaN.

    Shapes broadcast, dtypes promote as NumPy 2; raises ShapeError / DTypeError like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.minimum(np.array([1.0, np.nan, 3.0]), 2.0)
    array([ 1., nan,  2.])
    """


# Comparisons: broadcast and promote like add (so int32 vs float32 compares in float64), and
# return bool. NaN compares unequal to everything.

def _compare(ref: np.ufunc) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The op decorator of the comparison named like its NumPy reference ``ref``."""
    return _op("x1", "x2", meta=_compare_meta(ref.__name__), ref=ref, vjp=NON_DIFFERENTIABLE,
               flops=1)


@_compare(np.equal)
def equal(x1, x2, *, out=None):
    """Elementwise ``x1 == x2`` as bool, broadcasting and promoting like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.equal(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    array([ True, False])
    """


@_compare(np.not_equal)
def not_equal(x1, x2, *, out=None):
    """Elementwise ``x1 != x2`` as bool, broadcasting and promoting like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.not_equal(np.array([1, 2], np.int8), 2)
    array([ True, False])
    """


@_compare(np.less)
def less(x1, x2, *, out=None):
    """Elementwise ``x1 < x2`` as bool, broadcasting and promoting like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.less(np.array([1.0, 2.0], np.float32), 1.5)
    array([ True, False])
    """


@_compare(np.less_equal)
def less_equal(x1, x2, *, out=None):
    """Elementwise ``x1 <= x2`` as bool, broadcasting and promoting like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.less_equal(np.array([1.0, 2.0], np.float32), 1.0)
    array([ True, False])
    """


@_compare(np.greater)
def greater(x1, x2, *, out=None):
    """Elementwise ``x1 > x2`` as bool, broadcasting and promoting like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.greater(np.array([1.0, 2.0], np.float32), 1.5)
    array([False,  True])
    """


@_compare(np.greater_equal)
def greater_equal(x1, x2, *, out=None):
    """Elementwise ``x1 >= x2`` as bool, broadcasting and promoting like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.greater_equal(np.array([1.0, 2.0], np.float32), 2.0)
    array([False,  True])
    """


@_op("condition", "x", "y", meta=_where_meta, ref=np.where, vjp=_where_vjp, flops=1)
def where(condition, x, y, *, out=None):
    """Elementwise ``x`` where ``condition`` is true (nonzero), else ``y``.

    ``condition`` (any dtype; nonzero counts as true), ``x`` and ``y`` broadcast together;
    the result has the promoted dtype of ``x`` and ``y``. Raises ShapeError when the shapes
    do not broadcast and DTypeError for dtypes with no common type.

    >>> import numpy as np, tsol
    >>> tsol.where(np.array([True, False]), np.array([1.0, 2.0], np.float32), 0.0)
    array([1., 0.], dtype=float32)
    """


@_op("a", "a_min", "a_max", meta=_clip_meta, ref=_clip_ref, vjp=_clip_vjp, flops=2)
def clip(a, a_min=None, a_max=None, *, out=None):
    """Elementwise ``minimum(maximum(a, a_min), a_max)``; a bound left None is not applied.

    ``a_min``/``a_max``: arrays or scalars broadcasting with ``a``; the result has the
    broadcast shape and the promoted dtype, and NaN propagates. Raises ArgumentError when
    both bounds are None, ShapeError / DTypeError like ``add``.

    >>> import numpy as np, tsol
    >>> tsol.clip(np.array([-2.0, 0.5, 3.0], np.float32), -1.0, 1.0)
    array([-1. ,  0.5,  1. ], dtype=float32)
    """


@_op("x", meta=_astype_meta, ref=_astype_ref, vjp=_astype_vjp, flops=0,
     normalize=_astype_normalize)
def astype(x, dtype, *, out=None):
    """``x`` converted to ``dtype`` (``np.float32``, ``tsol.bfloat16``, ``"bf16"``, ...).

    Any supported dtype converts to any other. float16/bfloat16 results round to nearest even
    (directly from float64, no double rounding); floats to integers truncate toward zero as
    NumPy's ``astype`` (NaN and out-of-range values give unspecified integers, as in NumPy);
    anything to bool is ``x != 0``. Raises DTypeError for an unknown or unsupported dtype.

    >>> import numpy as np, tsol
    >>> tsol.astype(np.array([1.7, -2.5]), np.int32)
    array([ 1, -2], dtype=int32)
    """
