"""layernorm and rmsnorm over the last axis: meta, float64 reference, VJP and cost.

Both take an optional ``residual`` of ``x``'s shape and normalize ``x + residual``: the fused
"residual add + norm" of transformer blocks. The kernels add it as they load each row (in the
compute dtype), so the sum is never written out; the result dtype promotes ``x`` with it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

import tsol
from tsol.errors import ArgumentError, ShapeError, op_error
from tsol.ops.base import Meta, defop, promote
from tsol.ops.rules import require_float, sum_to_shape

__all__ = ["layernorm", "rmsnorm"]


def _normalize(op: str) -> Any:
    def normalize(metas: Sequence[Meta | None], *, eps: Any) -> dict[str, Any]:
        ok = (isinstance(eps, (int, float, np.integer, np.floating))
              and not isinstance(eps, (bool, np.bool_)) and math.isfinite(eps) and eps >= 0)
        if not ok:
            raise op_error(ArgumentError, op, f"eps must be a finite non-negative float, got "
                           f"{eps!r}", "pass eps such as 1e-5", [m for m in metas if m])
        return {"eps": float(eps)}
    return normalize


def _meta(op: str, params: tuple[str, ...]) -> Any:
    def meta(x: Meta, *rest: Meta | None, eps: float) -> Meta:
        *affine, residual = rest
        present = [m for m in (x, *rest) if m is not None]
        if x.ndim == 0:
            raise op_error(ShapeError, op, "the input is 0-d; it normalizes over the last axis "
                           "so it needs at least 1 dimension",
                           "pass an array of shape (..., N), e.g. x.reshape(1)", present)
        require_float(op, *present)
        n = x.shape[-1]
        for name, p in zip(params, affine, strict=True):
            if p is not None and p.shape != (n,):
                raise op_error(ShapeError, op, f"{name} has shape {p.shape} but x has shape "
                               f"{x.shape}; {name} must have shape ({n},), one value per "
                               f"element of x's last axis",
                               f"pass a 1-D {name} of length {n} (or None)", present)
        if residual is None:
            return Meta(x.shape, x.dtype)
        if residual.shape != x.shape:
            raise op_error(ShapeError, op, f"residual has shape {residual.shape} but x has "
                           f"shape {x.shape}; the residual is added to x element by element "
                           "before normalizing, so the shapes must be equal",
                           f"pass a residual of shape {x.shape} (np.broadcast_to(residual, "
                           "x.shape) for a smaller one), or add it with tsol.add first",
                           present)
        return Meta(x.shape, promote(op, x, residual))
    return meta


def _cost(x: Meta, *rest: Meta | None, out: Meta, eps: float) -> tuple[float, float]:
    # Mean, squared deviations, then subtract/scale/shift: about 8 operations an element, one
    # more for the residual add; every operand (the residual too) is read once.
    residual = rest[-1]
    flops = (8.0 + (residual is not None)) * x.size
    moved = x.nbytes + out.nbytes + sum(p.nbytes for p in rest if p is not None)
    return flops, float(moved)


def _layernorm_ref(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                   residual: np.ndarray | None = None, *, eps: float) -> np.ndarray:
    x = x if residual is None else x + residual
    if x.size == 0:
        return np.empty(x.shape, np.float64)
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _rmsnorm_ref(x: np.ndarray, gamma: np.ndarray | None, residual: np.ndarray | None = None,
                 *, eps: float) -> np.ndarray:
    x = x if residual is None else x + residual
    if x.size == 0:
        return np.empty(x.shape, np.float64)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if gamma is None else y * gamma


def _layernorm_vjp(g: Any, x: Any, gamma: Any, beta: Any, residual: Any, *, out: Any,
                   eps: float) -> tuple:
    # With s = x + residual: xhat = (s - mean) * rstd; dxhat = g * gamma;
    # ds = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); dgamma = sum(g * xhat).
    # s is a plain sum, so x and residual both receive ds.
    s = x if residual is None else tsol.add(x, residual)
    d = tsol.subtract(s, tsol.mean(s, axis=-1, keepdims=True))
    rstd = tsol.rsqrt(tsol.add(tsol.mean(tsol.multiply(d, d), axis=-1, keepdims=True), eps))
    xhat = tsol.multiply(d, rstd)
    dxhat = g if gamma is None else tsol.multiply(g, gamma)
    m1 = tsol.mean(dxhat, axis=-1, keepdims=True)
    m2 = tsol.mean(tsol.multiply(dxhat, xhat), axis=-1, keepdims=True)
    dx = tsol.multiply(rstd, tsol.subtract(tsol.subtract(dxhat, m1), tsol.multiply(xhat, m2)))
    dgamma = None if gamma is None else sum_to_shape(tsol.multiply(g, xhat), gamma.shape)
    dbeta = None if beta is None else sum_to_shape(g, beta.shape)
    return dx, dgamma, dbeta, None if residual is None else dx


def _rmsnorm_vjp(g: Any, x: Any, gamma: Any, residual: Any, *, out: Any, eps: float) -> tuple:
    # With s = x + residual: r = rsqrt(mean(s^2) + eps); ds = r * g * gamma - s * r^3 *
    # mean(g * gamma * s); x and residual both receive ds.
    x = x if residual is None else tsol.add(x, residual)
    r = tsol.rsqrt(tsol.add(tsol.mean(tsol.multiply(x, x), axis=-1, keepdims=True), eps))
    gg = g if gamma is None else tsol.multiply(g, gamma)
    m = tsol.mean(tsol.multiply(gg, x), axis=-1, keepdims=True)
    r3m = tsol.multiply(tsol.multiply(r, tsol.multiply(r, r)), m)
    dx = tsol.subtract(tsol.multiply(r, gg), tsol.multiply(x, r3m))
    dgamma = None if gamma is None else sum_to_shape(tsol.multiply(g, tsol.multiply(x, r)),
                                                     gamma.shape)
    return dx, dgamma, None if residual is None else dx


@defop(family="normalization", inputs=("x", "gamma", "beta", "residual"),
       meta=_meta("layernorm", ("gamma", "beta")), reference=_layernorm_ref,
       vjp=_layernorm_vjp, cost=_cost, normalize=_normalize("layernorm"))
def layernorm(x, gamma=None, beta=None, eps=1e-5, *, residual=None, out=None):
    """Layer normalization over the last axis: ``(s - mean) / sqrt(var + eps) * gamma + beta``
    of ``s = x`` (or ``s = x + residual``).

    - ``x``: shape ``(..., N)`` with at least one dimension; float64, float32, float16 or
      bfloat16. The result has ``x``'s shape and dtype (promoted with ``residual``'s when one
      is given: float16 ``x`` with a float32 residual gives float32). ``var`` is the
      population variance.
    - ``gamma``, ``beta``: optional float arrays of shape ``(N,)`` (None: 1 and 0); their dtype
      may differ from ``x``'s (e.g. float32 gamma with bfloat16 x). Statistics and the affine
      step are computed in float32 (float64 for a float64 result).
    - ``residual``: optional float array of exactly ``x``'s shape, of any float dtype: the
      residual add before the norm of a transformer block, fused into the one kernel (the sum
      is formed in the compute dtype as each element is loaded and never stored).
    - ``eps``: a finite non-negative float. ``out``: an array of the result's shape and dtype
      (``x`` or ``residual`` itself is allowed). Sums run in a fixed order: the same bits for
      any thread count.
    - Raises ShapeError for 0-d ``x``, a gamma/beta of the wrong shape or a residual whose
      shape differs from ``x``'s, DTypeError for integer or bool operands, ArgumentError for
      a bad eps or a non-array such as a list.

    >>> import numpy as np, tsol
    >>> tsol.layernorm(np.array([[1.0, 3.0]]), eps=0.0)
    array([[-1.,  1.]])
    >>> tsol.layernorm(np.array([[1.0, 2.0]]), eps=0.0, residual=np.array([[0.0, 1.0]]))
    array([[-1.,  1.]])
    """
    ...


@defop(family="normalization", inputs=("x", "gamma", "residual"),
       meta=_meta("rmsnorm", ("gamma",)), reference=_rmsnorm_ref, vjp=_rmsnorm_vjp, cost=_cost,
       normalize=_normalize("rmsnorm"))
def rmsnorm(x, gamma=None, eps=1e-6, *, residual=None, out=None):
    """RMS normalization over the last axis: ``s / sqrt(mean(s**2) + eps) * gamma`` of
    ``s = x`` (or ``s = x + residual``).

    - ``x``: shape ``(..., N)`` with at least one dimension; float64, float32, float16 or
      bfloat16. The result has ``x``'s shape and dtype (promoted with ``residual``'s when one
      is given).
    - ``gamma``: an optional float array of shape ``(N,)`` (None: 1), of any float dtype.
      Statistics are computed in float32 (float64 for a float64 result).
    - ``residual``: optional float array of exactly ``x``'s shape, of any float dtype, added
      to ``x`` inside the kernel (in the compute dtype, never stored) before the norm.
    - ``eps``: a finite non-negative float. ``out``: an array of the result's shape and dtype
      (``x`` or ``residual`` itself is allowed). Sums run in a fixed order: the same bits for
      any thread count.
    - Raises ShapeError for 0-d ``x``, a gamma of the wrong shape or a residual whose shape
      differs from ``x``'s, DTypeError for integer or bool operands, ArgumentError for a bad
      eps or a non-array such as a list.

    >>> import numpy as np, tsol
    >>> tsol.rmsnorm(np.array([3.0, 4.0], np.float32), eps=0.0).round(4)
    array([0.8485, 1.1314], dtype=float32)
    >>> h = np.array([1.0, 2.0], np.float16)
    >>> tsol.rmsnorm(h, eps=0.0, residual=np.array([2.0, 2.0], np.float32)).round(4)
    array([0.8485, 1.1314], dtype=float32)
    """
    ...
