"""Linear algebra ops: matmul (NumPy rules) and gemm (BLAS form), each with a fused epilogue.

Epilogue. Both ops end with ``acc (+ bias) -> activation -> (+ residual)``, run on each output
tile before it is stored. It is given as

- ``bias=`` / ``residual=`` arrays (float, broadcastable to the result's shape: a bias is
  usually ``(N,)``, a residual the result's shape), and ``epilogue`` None; or
- a string naming the steps in that order, joined by ``_``: ``"relu"``, ``"bias"``,
  ``"bias_gelu"``, ``"bias_relu_residual"``, ``"gelu_tanh_residual"``; a string must name
  ``bias``/``residual`` exactly when the matching array is given; or
- a dict ``{"bias": array, "activation": "gelu", "residual": array}`` (each key optional).

Activations: ``none``, ``relu``, ``gelu`` (the exact form ``x * Phi(x)`` through erf, as
``tsol.gelu``), ``gelu_tanh`` (the tanh approximation) and ``silu``. Epilogue operands are read
in the compute dtype and do not change the result dtype.

Kernel selection on the CPU is documented in ``tsol/kernels/cpu/linalg.py``: our packed tile
kernel runs when ``tile_shape`` is given, an epilogue is fused, or a dtype is a half type;
plain float32/float64 products go to NumPy's BLAS, which measured faster there.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import scipy.special

import tsol
from tsol.errors import ArgumentError, ShapeError, op_error
from tsol.ops.base import Meta, defop, op_named, promote
from tsol.ops.rules import broadcasts_to, require_float, sum_to_shape
from tsol.registry import get_op

__all__ = ["matmul", "gemm"]

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")
EPILOGUE_KEYS = ("bias", "activation", "residual")

_ACTIVATION_OPS = {"relu": ("relu", {}), "gelu": ("gelu", {"approximate": "none"}),
                   "gelu_tanh": ("gelu", {"approximate": "tanh"}), "silu": ("silu", {})}
"""Each activation as the elementwise op whose VJP rule the epilogue's gradient reuses."""

_EPILOGUE_FLOPS = {"none": 0, "relu": 1, "gelu": 30, "gelu_tanh": 20, "silu": 15}


# --- the epilogue --------------------------------------------------------------------------------

def _epilogue_error(op: str, problem: str, operands: Sequence[Any] = ()) -> ArgumentError:
    fix = ("pass epilogue as None, a string of steps in the order bias, activation, residual "
           f"joined by '_' (activations: {', '.join(ACTIVATIONS)}; e.g. 'bias_gelu'), or a "
           f"dict with keys {', '.join(EPILOGUE_KEYS)}")
    return op_error(ArgumentError, op, problem, fix, operands)


def parse_epilogue(op: str, epilogue: Any, operands: Sequence[Any] = ()
                   ) -> tuple[bool, str, bool]:
    """(names bias, activation, names residual) of an epilogue string, dict or None."""
    if epilogue is None:
        return False, "none", False
    if isinstance(epilogue, dict):
        unknown = sorted(set(epilogue) - set(EPILOGUE_KEYS), key=str)
        if unknown:
            raise _epilogue_error(op, f"unknown epilogue key(s) {unknown}", operands)
        act = epilogue.get("activation") or "none"
        if act not in ACTIVATIONS:
            raise _epilogue_error(op, f"unknown activation {act!r}", operands)
        return (epilogue.get("bias") is not None, act, epilogue.get("residual") is not None)
    if not isinstance(epilogue, str):
        raise _epilogue_error(op, f"epilogue must be None, a string or a dict, got "
                              f"{type(epilogue).__name__}", operands)
    parts = epilogue.lower().replace("gelu_tanh", "gelu-tanh").split("_")
    parts = [p.replace("-", "_") for p in parts]
    order = {"bias": 0, "residual": 2, **{a: 1 for a in ACTIVATIONS}}
    bad = [p for p in parts if p not in order]
    if bad or not epilogue:
        raise _epilogue_error(op, f"epilogue {epilogue!r} has unknown part(s) {bad}", operands)
    ranks = [order[p] for p in parts]
    if ranks != sorted(set(ranks)):
        raise _epilogue_error(op, f"epilogue {epilogue!r} repeats a step or is out of order",
                              operands)
    act = next((p for p in parts if p in ACTIVATIONS), "none")
    return "bias" in parts, act, "residual" in parts


def _prepare(op: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Lift the arrays of a dict epilogue into the ``bias``/``residual`` inputs."""
    def prepare(params: dict[str, Any]) -> dict[str, Any]:
        epi = params.get("epilogue")
        if not isinstance(epi, dict):
            return params
        _, act, _ = parse_epilogue(op, epi)
        params = dict(params)
        for key in ("bias", "residual"):
            if epi.get(key) is not None:
                if params[key] is not None:
                    raise _epilogue_error(op, f"{key} is given both as {key}= and in the "
                                          "epilogue dict")
                params[key] = epi[key]
        steps = ["bias"] * (params["bias"] is not None) + [act] + \
            ["residual"] * (params["residual"] is not None)
        params["epilogue"] = "_".join(steps)
        return params
    return prepare


def _activation(op: str, epilogue: Any, bias: Meta | None, residual: Meta | None,
                metas: Sequence[Any]) -> str:
    """The canonical activation, checking that named steps and given arrays agree."""
    names_bias, act, names_res = parse_epilogue(op, epilogue, metas)
    if epilogue is None:
        return act
    for key, named, given in (("bias", names_bias, bias), ("residual", names_res, residual)):
        if named and given is None:
            raise op_error(ArgumentError, op, f"epilogue {epilogue!r} adds a {key} but "
                           f"{key}= is None", f"pass {key}=array", metas)
        if given is not None and not named:
            raise op_error(ArgumentError, op, f"{key}= is given but epilogue {epilogue!r} "
                           f"does not add it", f"name '{key}' in the epilogue (e.g. "
                           f"'bias_{act}') or leave epilogue=None", metas)
    return act


def _tile_shape(op: str, tile_shape: Any, metas: Sequence[Any]) -> tuple[int, int, int] | None:
    if tile_shape is None:
        return None
    ok = (isinstance(tile_shape, (tuple, list)) and len(tile_shape) == 3
          and all(isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_))
                  and t > 0 for t in tile_shape))
    if not ok:
        raise op_error(ArgumentError, op, f"tile_shape must be three positive ints (BM, BN, "
                       f"BK), got {tile_shape!r}", "pass e.g. tile_shape=(96, 128, 256), or "
                       "None for the default", metas)
    return tuple(int(t) for t in tile_shape)


def _check_epilogue_operand(op: str, name: str, m: Meta | None, shape: tuple[int, ...],
                            metas: Sequence[Any]) -> None:
    if m is None:
        return
    require_float(op, m)
    if not broadcasts_to(m.shape, shape):
        raise op_error(ShapeError, op, f"{name} of shape {m.shape} does not broadcast to the "
                       f"result shape {shape}", f"pass a {name} broadcastable to {shape} "
                       f"(a bias is usually ({shape[-1] if shape else 1},))", metas)


# --- shape rules -------------------------------------------------------------------------------

def _product_shape(op: str, a: tuple[int, ...], b: tuple[int, ...], metas: Sequence[Any],
                   drop: tuple[bool, bool] = (False, False)) -> tuple[int, ...]:
    """Result shape of (..., M, K) @ (..., K, N); ``drop`` removes a promoted M or N axis."""
    if a[-1] != b[-2]:
        raise op_error(ShapeError, op, f"inner dimensions differ: {a[-1]} (last of "
                       f"{tuple(metas[0].shape)}) vs {b[-2]} (of {tuple(metas[1].shape)})",
                       "make op(a)'s last dimension equal op(b)'s second-to-last", metas)
    try:
        batch = tuple(np.broadcast_shapes(a[:-2], b[:-2]))
    except ValueError:
        raise op_error(ShapeError, op, f"batch dimensions {a[:-2]} and {b[:-2]} do not "
                       "broadcast", "make the leading dimensions equal or 1", metas) from None
    return batch + ((a[-2],) if not drop[0] else ()) + ((b[-1],) if not drop[1] else ())


def _require_rank(op: str, metas: Sequence[Meta], least: int) -> None:
    for i, m in enumerate(metas):
        if m.ndim < least:
            raise op_error(ShapeError, op, f"operand {i} is {m.ndim}-d; {op} needs arrays of "
                           f"at least {least} dimension{'s' if least > 1 else ''}",
                           "use tsol.multiply for products with scalars" if least == 1 else
                           "reshape vectors to (1, K) or (K, 1) (or use tsol.matmul)", metas)


def _matmul_normalize(metas: Sequence[Any], epilogue: Any, tile_shape: Any) -> dict[str, Any]:
    return {"epilogue": _activation("matmul", epilogue, metas[2], metas[3], metas),
            "tile_shape": _tile_shape("matmul", tile_shape, metas)}


def _matmul_meta(a: Meta, b: Meta, bias: Meta | None, residual: Meta | None, *, epilogue: str,
                 tile_shape: Any) -> Meta:
    _require_rank("matmul", (a, b), 1)
    require_float("matmul", a, b)
    a2 = (1,) + a.shape if a.ndim == 1 else a.shape
    b2 = b.shape + (1,) if b.ndim == 1 else b.shape
    shape = _product_shape("matmul", a2, b2, (a, b), (a.ndim == 1, b.ndim == 1))
    for name, m in (("bias", bias), ("residual", residual)):
        _check_epilogue_operand("matmul", name, m, shape, (a, b, m))
    return Meta(shape, promote("matmul", a, b))


def _flag(op: str, name: str, value: Any, metas: Sequence[Any]) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise op_error(ArgumentError, op, f"{name} must be True or False, got {value!r}",
                       f"pass {name}=True or {name}=False", metas)
    return bool(value)


def _scalar(op: str, name: str, value: Any, metas: Sequence[Any]) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating)):
        raise op_error(ArgumentError, op, f"{name} must be a real number, got {value!r}",
                       f"pass {name} as a Python float", metas)
    return float(value)


def _gemm_normalize(metas: Sequence[Any], alpha: Any, beta: Any, trans_a: Any, trans_b: Any,
                    epilogue: Any, tile_shape: Any) -> dict[str, Any]:
    return {"alpha": _scalar("gemm", "alpha", alpha, metas),
            "beta": _scalar("gemm", "beta", beta, metas),
            "trans_a": _flag("gemm", "trans_a", trans_a, metas),
            "trans_b": _flag("gemm", "trans_b", trans_b, metas),
            "epilogue": _activation("gemm", epilogue, metas[3], metas[4], metas),
            "tile_shape": _tile_shape("gemm", tile_shape, metas)}


def _swap(shape: tuple[int, ...], flip: bool) -> tuple[int, ...]:
    return shape[:-2] + (shape[-1], shape[-2]) if flip else shape


def _gemm_meta(a: Meta, b: Meta, c: Meta | None, bias: Meta | None, residual: Meta | None, *,
               alpha: float, beta: float, trans_a: bool, trans_b: bool, epilogue: str,
               tile_shape: Any) -> Meta:
    _require_rank("gemm", (a, b), 2)
    require_float("gemm", a, b)
    shape = _product_shape("gemm", _swap(a.shape, trans_a), _swap(b.shape, trans_b), (a, b))
    for name, m in (("c", c), ("bias", bias), ("residual", residual)):
        _check_epilogue_operand("gemm", name, m, shape, (a, b, m))
    return Meta(shape, promote("gemm", a, b))


# --- references (float64, NumPy/SciPy) --------------------------------------------------------

def _activate_ref(z: np.ndarray, act: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        if act == "relu":
            return np.maximum(z, 0.0)
        if act == "gelu":
            return 0.5 * z * scipy.special.erfc(-z / math.sqrt(2.0))
        if act == "gelu_tanh":
            # 0.5 z (1 + tanh(u)) written as z * expit(2u): equal, without 1 + tanh(u)'s
            # cancellation (all accuracy lost for u < -19 even in float64).
            u = math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)
            return z * scipy.special.expit(2.0 * u)
        if act == "silu":
            return z * scipy.special.expit(z)
    return z


def _epilogue_ref(z: np.ndarray, bias: Any, residual: Any, epilogue: Any) -> np.ndarray:
    z = z if bias is None else z + bias
    z = _activate_ref(z, parse_epilogue("matmul", epilogue)[1])
    return z if residual is None else z + residual


def _matmul_ref(a: np.ndarray, b: np.ndarray, bias: Any = None, residual: Any = None, *,
                epilogue: Any = None, tile_shape: Any = None) -> np.ndarray:
    return _epilogue_ref(np.matmul(a, b), bias, residual, epilogue)


def _gemm_ref(a: np.ndarray, b: np.ndarray, c: Any = None, bias: Any = None,
              residual: Any = None, *, alpha: float = 1.0, beta: float = 0.0,
              trans_a: bool = False, trans_b: bool = False, epilogue: Any = None,
              tile_shape: Any = None) -> np.ndarray:
    z = alpha * np.matmul(np.swapaxes(a, -1, -2) if trans_a else a,
                          np.swapaxes(b, -1, -2) if trans_b else b)
    z = z if c is None else z + beta * c
    return _epilogue_ref(z, bias, residual, epilogue)


# --- VJP rules (in TSOL ops) ---------------------------------------------------------------------

def _swap_last(x: Any) -> Any:
    axes = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return tsol.transpose(x, axes=axes)


def _through_activation(g: Any, act: str, preactivation: Callable[[], Any]) -> Any:
    """Cotangent of the pre-activation, by the elementwise activation op's own VJP rule."""
    if act == "none":
        return g
    z = preactivation()
    name, attrs = _ACTIVATION_OPS[act]
    y = op_named(name)(z, **attrs)
    return get_op(name).vjp(g, z, out=y, **attrs)[0]


def _optional_sum(g: Any, x: Any) -> Any:
    return None if x is None else sum_to_shape(g, tuple(x.shape))


def _matmul_vjp(g: Any, a: Any, b: Any, bias: Any, residual: Any, *, out: Any, epilogue: str,
                tile_shape: Any) -> tuple[Any, ...]:
    # y = act(a @ b + bias) + residual: gz = dL/d(a @ b + bias); dA = gz b^T, dB = a^T gz,
    # each summed back over broadcast batch dimensions; 1-D operands as (1, K) and (K, 1).
    gz = _through_activation(g, epilogue, lambda: tsol.matmul(a, b, bias=bias))
    a2 = a if a.ndim > 1 else tsol.reshape(a, (1, a.shape[0]))
    b2 = b if b.ndim > 1 else tsol.reshape(b, (b.shape[0], 1))
    batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    g2 = tsol.reshape(gz, batch + (a2.shape[-2], b2.shape[-1]))
    ga = sum_to_shape(tsol.matmul(g2, _swap_last(b2)), tuple(a2.shape))
    gb = sum_to_shape(tsol.matmul(_swap_last(a2), g2), tuple(b2.shape))
    return (tsol.reshape(ga, tuple(a.shape)), tsol.reshape(gb, tuple(b.shape)),
            _optional_sum(gz, bias), _optional_sum(g, residual))


def _gemm_vjp(g: Any, a: Any, b: Any, c: Any, bias: Any, residual: Any, *, out: Any,
              alpha: float, beta: float, trans_a: bool, trans_b: bool, epilogue: str,
              tile_shape: Any) -> tuple[Any, ...]:
    # y = act(alpha op(a) op(b) + beta c + bias) + residual. With gz = dL/d(pre-activation):
    # d op(a) = alpha gz op(b)^T and d op(b) = alpha op(a)^T gz, each written as one gemm that
    # lands in a's (b's) own orientation.
    gz = _through_activation(g, epilogue, lambda: tsol.gemm(
        a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b, bias=bias))
    if trans_a:
        ga = tsol.gemm(b, gz, alpha=alpha, trans_a=trans_b, trans_b=True)
    else:
        ga = tsol.gemm(gz, b, alpha=alpha, trans_b=not trans_b)
    if trans_b:
        gb = tsol.gemm(gz, a, alpha=alpha, trans_a=True, trans_b=trans_a)
    else:
        gb = tsol.gemm(a, gz, alpha=alpha, trans_a=not trans_a)
    gc = None if c is None else sum_to_shape(tsol.multiply(gz, beta), tuple(c.shape))
    return (sum_to_shape(ga, tuple(a.shape)), sum_to_shape(gb, tuple(b.shape)), gc,
            _optional_sum(gz, bias), _optional_sum(g, residual))


# --- cost -----------------------------------------------------------------------------------------

def _cost(*metas: Meta | None, out: Meta, epilogue: str, **attrs: Any) -> tuple[float, float]:
    a = metas[0]
    k = a.shape[-1] if a.ndim == 1 or not attrs.get("trans_a") else a.shape[-2]
    extra = sum(m is not None for m in metas[2:]) + _EPILOGUE_FLOPS[epilogue]
    flops = 2.0 * out.size * k + extra * out.size
    return flops, float(sum(m.nbytes for m in metas if m is not None) + out.nbytes)


# --- the ops --------------------------------------------------------------------------------------

@defop(family="linalg", inputs=("a", "b", "bias", "residual"), meta=_matmul_meta,
       reference=_matmul_ref, vjp=_matmul_vjp, cost=_cost, normalize=_matmul_normalize,
       prepare=_prepare("matmul"))
def matmul(a, b, *, bias=None, residual=None, epilogue=None, tile_shape=None, out=None):
    """Matrix product with NumPy's ``matmul`` rules and an optional fused epilogue.

    - ``a``: (..., M, K), ``b``: (..., K, N); leading (batch) dimensions broadcast. A 1-D ``a``
      is promoted to (1, K) and a 1-D ``b`` to (K, 1), and the promoted axis is removed from
      the result: (K,) @ (K,) gives a 0-d array. Result: (batch..., M, N).
    - dtypes: float64, float32, float16, bfloat16; mixed operands promote as NumPy does
      (float16 with bfloat16 gives float32). Half types accumulate in float32 and store the
      half dtype. Products accumulate sequentially along K (fused multiply-adds), so results
      do not depend on the thread count or the tile shape.
    - ``bias``, ``residual``, ``epilogue``: ``act(a @ b + bias) + residual`` (module doc);
      ``gelu`` is the exact erf form, ``gelu_tanh`` the tanh approximation.
    - ``tile_shape``: (BM, BN, BK) for our CPU tile kernel (BM is rounded up to a multiple of
      12 rows, BN to 32 float32 / 16 float64 columns); giving it always runs our kernel.
      Otherwise plain float32/float64 products run NumPy's BLAS and the rest our kernel
      (selection rule in ``tsol/kernels/cpu/linalg.py``).
    - Raises ShapeError for 0-d operands, inner dimensions that differ (naming both shapes),
      batch dimensions that do not broadcast, or a bias/residual that does not broadcast to
      the result; DTypeError for integer or bool operands (cast with ``tsol.astype(x,
      tsol.float32)``); ArgumentError for an unknown epilogue or activation (listing the valid
      ones), a bad ``tile_shape`` or a non-array operand.

    >>> import numpy as np, tsol
    >>> a = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    >>> tsol.matmul(a, np.eye(2, dtype=np.float32), bias=np.ones(2, np.float32),
    ...             epilogue="bias_relu")
    array([[2., 0.],
           [4., 5.]], dtype=float32)
    """
    ...


@defop(family="linalg", inputs=("a", "b", "c", "bias", "residual"), meta=_gemm_meta,
       reference=_gemm_ref, vjp=_gemm_vjp, cost=_cost, normalize=_gemm_normalize,
       prepare=_prepare("gemm"))
def gemm(a, b, c=None, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False, bias=None,
         residual=None, epilogue=None, tile_shape=None, out=None):
    """BLAS-style ``alpha * op(a) @ op(b) + beta * c``, batched, with the fused epilogue.

    - ``a``, ``b``: at least 2-D; ``op(x)`` swaps the last two axes of x when ``trans_x`` is
      True (no copy is made). op(a) is (..., M, K), op(b) is (..., K, N); batch dimensions
      broadcast. Result: (batch..., M, N), dtype promoted from a and b as in matmul.
    - ``c``: optional, float, broadcastable to the result; ``beta * c`` is added when ``c`` is
      given (``beta`` then multiplies it even when 0, so NaNs in c propagate, as in NumPy).
    - ``alpha``, ``beta``: real numbers. ``bias``, ``residual``, ``epilogue``, ``tile_shape``:
      as in ``tsol.matmul``; the epilogue follows ``beta * c``.
    - Raises ShapeError for operands of fewer than 2 dimensions, inner dimensions that differ,
      or c/bias/residual that do not broadcast to the result; DTypeError for integer or bool
      operands; ArgumentError for non-numeric alpha/beta, non-bool trans flags, an unknown
      epilogue, a bad tile_shape or a non-array operand.

    >>> import numpy as np, tsol
    >>> a = np.arange(6, dtype=np.float64).reshape(3, 2)
    >>> tsol.gemm(a, a, np.ones((2, 2)), alpha=0.5, beta=2.0, trans_a=True)
    array([[12. , 15. ],
           [15. , 19.5]])
    """
    ...
