"""Losses with PyTorch's conventions: cross_entropy, mse and kl_divergence.

Each takes ``reduction``: "mean" (the default), "sum" or "none" (per-element or per-sample
losses); kl_divergence also takes "batchmean". Reductions accumulate in float64 in a fixed
blocked order, so results do not depend on the thread count; the result is cast to the input
dtype. The mean of zero elements (or of zero non-ignored targets) is NaN, as in PyTorch.

On CUDA an out-of-range target gives NaN instead of raising, unless value checks are on
(``tsol.config`` ``check_values``); the CPU backend always raises.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

import tsol
from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, ShapeError, op_error
from tsol.ops.base import Meta, defop, promote
from tsol.ops.rules import broadcast_shapes, require_float, sum_to_shape

__all__ = ["cross_entropy", "mse", "kl_divergence"]

REDUCTIONS = ("mean", "sum", "none")


def _reduction(op: str, reduction: Any, metas: Sequence[Any], allowed=REDUCTIONS) -> str:
    if not isinstance(reduction, str) or reduction not in allowed:
        raise op_error(ArgumentError, op, f"reduction must be one of "
                       f"{', '.join(map(repr, allowed))}, got {reduction!r}",
                       "pass reduction='mean', 'sum' or 'none'", metas)
    return reduction


def _reduce_ref(per: np.ndarray, reduction: str, divisor: float | None = None) -> np.ndarray:
    if reduction == "none":
        return per
    total = np.sum(per)
    if reduction == "sum":
        return np.asarray(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(total / (per.size if divisor is None else divisor))


def _reduced_shape(reduction: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if reduction == "none" else ()


def _scale_g(g: Any, reduction: str, count: float) -> Any:
    """The cotangent of each per-element loss: g itself, or g / count for a mean (NaN for the
    mean of nothing, as the loss)."""
    if reduction not in ("mean", "batchmean"):
        return g
    return tsol.multiply(g, 1.0 / count if count else math.nan)


# --- cross_entropy ------------------------------------------------------------------------

def class_axis(ndim: int) -> int:
    """PyTorch's class axis: 0 for 1-d logits, else 1."""
    return 0 if ndim == 1 else 1


def _ce_normalize(metas: Sequence[Meta], *, reduction: Any, ignore_index: Any
                  ) -> dict[str, Any]:
    op = "cross_entropy"
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_)) or
                                     not isinstance(ignore_index, (int, np.integer))):
        raise op_error(ArgumentError, op, f"ignore_index must be an int or None, got "
                       f"{ignore_index!r}", "pass ignore_index=-100 (PyTorch's usual value)",
                       metas)
    return {"reduction": _reduction(op, reduction, metas),
            "ignore_index": None if ignore_index is None else int(ignore_index)}


def _ce_meta(logits: Meta, targets: Meta, *, reduction: str, ignore_index: int | None) -> Meta:
    op, operands = "cross_entropy", (logits, targets)
    require_float(op, logits)
    if logits.ndim == 0:
        raise op_error(ShapeError, op, "logits must have a class axis, got a 0-d array",
                       "pass logits of shape [C], [N, C] or [N, C, d1, ...]", operands)
    cax = class_axis(logits.ndim)
    rows = logits.shape[:cax] + logits.shape[cax + 1:]
    if targets.dtype in dtypes.FLOATS:
        if targets.dtype != logits.dtype:
            raise op_error(DTypeError, op, "probability targets must have the logits' dtype",
                           "cast targets with tsol.astype(targets, logits.dtype)", operands)
        if targets.shape != logits.shape:
            raise op_error(ShapeError, op, f"probability targets {targets.shape} must have the "
                           f"logits' shape {logits.shape}", "pass class indices of shape "
                           f"{rows} or probabilities of shape {logits.shape}", operands)
        if ignore_index is not None:
            raise op_error(ArgumentError, op, "ignore_index applies to class-index targets, "
                           "not probabilities", "leave ignore_index=None (or give a zero "
                           "probability row to the samples to skip)", operands)
    elif targets.dtype in dtypes.INTEGERS and not targets.weak:
        if targets.shape != rows:
            raise op_error(ShapeError, op, f"class-index targets {targets.shape} must have "
                           f"shape {rows} (logits {logits.shape} without the class axis "
                           f"{cax})", f"pass targets of shape {rows}", operands)
    else:
        raise op_error(DTypeError, op, f"targets must be an integer array of class indices or "
                       f"float probabilities, got {targets}", "pass integer class indices "
                       "(np.int64) or probabilities with the logits' dtype", operands)
    return Meta(_reduced_shape(reduction, rows), logits.dtype)


def target_out_of_range(targets: Any, index: int, c: int, ignore: int | None,
                        operands: Sequence[Any]) -> ArgumentError:
    """The error every backend raises for a class index out of range: the one at flat (C-order)
    position ``index`` of ``targets``, for ``c`` classes."""
    value = int(targets.reshape(-1)[index])
    where = "" if targets.ndim == 0 else \
        f" at targets[{', '.join(str(int(i)) for i in np.unravel_index(index, targets.shape))}]"
    return op_error(ArgumentError, "cross_entropy", f"target {value}{where} is out of range: "
                    f"class indices must lie in [0, {c})" + (f" or equal ignore_index={ignore}"
                                                             if ignore is not None else ""),
                    "fix the labels, or pass ignore_index= for padding labels", operands)


def _ce_per_sample(logits: np.ndarray, targets: np.ndarray, ignore_index: int | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-sample losses and the mask of samples that count, in PyTorch's layout."""
    from scipy.special import log_softmax
    cax = class_axis(logits.ndim)
    logp = log_softmax(logits, axis=cax)
    if targets.dtype in dtypes.FLOATS:
        return -np.sum(targets * logp, axis=cax), np.ones(logp.sum(axis=cax).shape, bool)
    t = targets.astype(np.int64)
    keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    safe = np.where(keep, t, 0)
    picked = np.take_along_axis(logp, np.expand_dims(safe, cax), axis=cax).squeeze(cax)
    return np.where(keep, -picked, 0.0), keep


def _ce_ref(logits: np.ndarray, targets: np.ndarray, *, reduction: str,
            ignore_index: int | None) -> np.ndarray:
    per, keep = _ce_per_sample(logits, targets, ignore_index)
    return _reduce_ref(per, reduction, float(np.count_nonzero(keep)))


def _ce_vjp(g: Any, logits: Any, targets: Any, *, out: Any, reduction: str,
            ignore_index: int | None) -> tuple[Any, Any]:
    # d loss_n / d logits_n = softmax(logits_n) * sum(p_n) - p_n, where p_n is the target
    # distribution. Written in TSOL ops on the targets (captured values under tsol.grad).
    cax = class_axis(logits.ndim)
    c = logits.shape[cax]
    with_axis = logits.shape[:cax] + (1,) + logits.shape[cax + 1:]
    if targets.dtype in dtypes.FLOATS:
        gs = _ce_sample_g(g, reduction, math.prod(with_axis), with_axis)
        mass = tsol.sum(targets, axis=cax, keepdims=True)
        dlogits = tsol.multiply(tsol.subtract(
            tsol.multiply(tsol.softmax(logits, axis=cax), mass), targets), gs)
        dtargets = tsol.multiply(tsol.multiply(tsol.log_softmax(logits, axis=cax), -1.0), gs)
        return dlogits, dtargets
    # Class indices: p_n is one-hot, so the gradient row is (softmax_n - onehot_n) * w_n * g_n
    # with w_n = 1 for a sample that counts, 0 for an ignored one, and NaN for an index out of
    # range (its loss is NaN on CUDA without value checks). The targets compare as int64, so
    # that C and ignore_index fit whatever their dtype (uint8 labels, ignore_index=-100).
    t = tsol.reshape(tsol.astype(targets, dtypes.int64), with_axis)
    classes = np.arange(c, dtype=np.int64).reshape((c,) + (1,) * (logits.ndim - cax - 1))
    onehot = tsol.astype(tsol.equal(t, classes), logits.dtype)
    w = tsol.where(tsol.where(tsol.greater_equal(t, 0), tsol.less(t, c), False), 1.0, np.nan)
    count: Any = math.prod(with_axis)
    if ignore_index is not None:
        keep = tsol.not_equal(t, ignore_index)
        w = tsol.where(keep, w, 0.0)
        if reduction == "mean":         # the mean is over the samples that count
            count = tsol.sum(tsol.astype(keep, _count_dtype(logits.dtype)))
    ws = tsol.multiply(tsol.astype(w, logits.dtype), _ce_sample_g(g, reduction, count, with_axis))
    return tsol.multiply(tsol.subtract(tsol.softmax(logits, axis=cax), onehot), ws), None


def _count_dtype(dt: np.dtype) -> np.dtype:
    """The dtype a sample count is summed in: exact to 2**24 samples (2**53 for float64)."""
    return dtypes.float64 if dt == dtypes.float64 else dtypes.float32


def _ce_sample_g(g: Any, reduction: str, count: Any, with_axis: tuple[int, ...]) -> Any:
    """The cotangent of each per-sample loss, broadcastable against the logits: g, or g / count
    for a mean (``count`` an int, or a captured 0-d count of non-ignored samples, cast back
    to g's dtype); per-sample cotangents ("none") get the class axis back."""
    if reduction == "none":
        return tsol.reshape(g, with_axis)
    if reduction == "sum":
        return g
    if isinstance(count, int):
        return _scale_g(g, reduction, count)
    return tsol.astype(tsol.divide(g, count), g.dtype)


def _ce_cost(logits: Meta, targets: Meta, *, out: Meta, **_: Any) -> tuple[float, float]:
    # max, subtract, exp, add per logit, plus a multiply-add per probability target.
    return 5.0 * logits.size, float(logits.nbytes + targets.nbytes + out.nbytes)


@defop(family="loss", inputs=("logits", "targets"), meta=_ce_meta, reference=_ce_ref,
       vjp=_ce_vjp, cost=_ce_cost, normalize=_ce_normalize)
def cross_entropy(logits, targets, *, reduction="mean", ignore_index=None, out=None):
    """Cross-entropy of unnormalized ``logits`` against class indices or probabilities.

    Shapes follow PyTorch's ``cross_entropy``: the class axis is 0 for 1-d logits [C] and 1
    otherwise ([N, C], or [N, C, d1, ...] for per-position classes).

    - ``targets``: integer class indices with the logits' shape minus the class axis ([], [N]
      or [N, d1, ...]), each in ``[0, C)`` or equal to ``ignore_index``; or float
      probabilities with the logits' shape and dtype (soft labels).
    - Per-sample loss: ``logsumexp(logits) - logits[target]``, or ``-sum(p * log_softmax)`` for
      probabilities; computed stably (max-subtracted) in float32 for half inputs.
    - ``reduction``: "mean" (over non-ignored samples; for probabilities over all samples),
      "sum", or "none" (the per-sample losses, shaped like class-index targets).
    - ``ignore_index``: samples with this target contribute 0 and are left out of the mean
      (None ignores nothing). Every sample ignored gives a NaN mean, as in PyTorch.
    - Result dtype: the logits' (float64, float32, float16, bfloat16).
    - Raises ArgumentError for a target outside ``[0, C)`` and not ``ignore_index`` (naming the
      value, its position and the range), a bad reduction or ignore_index, or ignore_index
      with probability targets; ShapeError for mismatched shapes; DTypeError for non-float
      logits or unsupported target dtypes.
    - On CUDA an out-of-range target gives NaN instead of raising, unless value checks are on
      (``tsol.config.set(check_values=True)`` or ``TSOL_CHECK_VALUES=1``; the check costs a
      host sync a call): its sample's loss is NaN, so are the mean and the sum, and so is its
      gradient row.

    >>> import numpy as np, tsol
    >>> logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], np.float32))
    >>> tsol.cross_entropy(logits, np.array([0, 2]), reduction="none").round(4)
    array([0.6931, 0.2231], dtype=float32)
    """
    ...


# --- mse and kl_divergence ----------------------------------------------------------------

def _pair_meta(op: str, extra: tuple[str, ...] = ()) -> Any:
    def meta(a: Meta, b: Meta, *, reduction: str, **_: Any) -> Meta:
        require_float(op, a, b)
        shape = broadcast_shapes(op, a, b)
        return Meta(_reduced_shape(reduction, shape), promote(op, a, b))
    return meta


def _mse_ref(pred: np.ndarray, target: np.ndarray, *, reduction: str) -> np.ndarray:
    return _reduce_ref((pred - target) ** 2, reduction)


def _mse_vjp(g: Any, pred: Any, target: Any, *, out: Any, reduction: str) -> tuple[Any, Any]:
    shape = np.broadcast_shapes(np.shape(pred), np.shape(target))
    gs = _scale_g(g, reduction, math.prod(shape))
    d = tsol.multiply(tsol.multiply(tsol.subtract(pred, target), 2.0), gs)
    return (sum_to_shape(d, np.shape(pred)),
            sum_to_shape(tsol.multiply(d, -1.0), np.shape(target)))


def _elementwise_cost(flops: float) -> Any:
    def cost(a: Meta, b: Meta, *, out: Meta, **_: Any) -> tuple[float, float]:
        n = math.prod(np.broadcast_shapes(a.shape, b.shape))
        return flops * n, float(a.nbytes + b.nbytes + out.nbytes)
    return cost


@defop(family="loss", inputs=("pred", "target"), meta=_pair_meta("mse"), reference=_mse_ref,
       vjp=_mse_vjp, cost=_elementwise_cost(3.0),
       normalize=lambda metas, reduction: {"reduction": _reduction("mse", reduction, metas)})
def mse(pred, target, *, reduction="mean", out=None):
    """Mean squared error ``(pred - target) ** 2``, reduced like PyTorch's ``mse_loss``.

    - ``pred``, ``target``: float arrays whose shapes broadcast; the result dtype is their
      promoted dtype (half types compute in float32, sums in float64).
    - ``reduction``: "mean" (over every broadcast element), "sum", or "none" (elementwise, the
      broadcast shape).
    - Raises ShapeError for shapes that do not broadcast, DTypeError for non-float operands,
      ArgumentError for a bad reduction or a non-array operand.

    >>> import numpy as np, tsol
    >>> tsol.mse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 0.0]))
    array(4.33333333)
    """
    ...


def _kl_normalize(metas: Sequence[Meta], *, reduction: Any, log_target: Any) -> dict[str, Any]:
    op = "kl_divergence"
    if not isinstance(log_target, (bool, np.bool_)):
        raise op_error(ArgumentError, op, f"log_target must be True or False, got "
                       f"{log_target!r}", "pass log_target=True when target holds "
                       "log-probabilities", metas)
    return {"reduction": _reduction(op, reduction, metas, REDUCTIONS + ("batchmean",)),
            "log_target": bool(log_target)}


def _batch(shape: tuple[int, ...]) -> int:
    return shape[0] if shape else 1


def _kl_ref(input: np.ndarray, target: np.ndarray, *, reduction: str, log_target: bool
            ) -> np.ndarray:
    from scipy.special import xlogy
    if log_target:
        per = np.exp(target) * (target - input)
    else:
        per = xlogy(target, target) - target * input
    if reduction == "batchmean":
        return _reduce_ref(per, "mean", _batch(per.shape))
    return _reduce_ref(per, reduction)


def _kl_vjp(g: Any, input: Any, target: Any, *, out: Any, reduction: str, log_target: bool
            ) -> tuple[Any, Any]:
    shape = np.broadcast_shapes(np.shape(input), np.shape(target))
    count = _batch(shape) if reduction == "batchmean" else math.prod(shape)
    gs = _scale_g(g, reduction, count)
    if log_target:
        w = tsol.exp(target)                                   # d/dinput = -exp(t)
        dt = tsol.multiply(w, tsol.add(tsol.subtract(target, input), 1.0))
    else:
        w = target                                             # d/dinput = -t
        dt = tsol.add(tsol.subtract(tsol.log(target), input), 1.0)
    dinput = tsol.multiply(tsol.multiply(w, -1.0), gs)
    dtarget = tsol.multiply(dt, gs)
    return sum_to_shape(dinput, np.shape(input)), sum_to_shape(dtarget, np.shape(target))


@defop(family="loss", inputs=("input", "target"), meta=_pair_meta("kl_divergence"),
       reference=_kl_ref, vjp=_kl_vjp, cost=_elementwise_cost(5.0), normalize=_kl_normalize)
def kl_divergence(input, target, *, reduction="mean", log_target=False, out=None):
    """KL divergence ``KL(target || exp(input))`` with PyTorch's ``kl_div`` convention.

    ``input`` holds log-probabilities (e.g. ``tsol.log_softmax`` output); ``target`` holds
    probabilities, or log-probabilities when ``log_target=True``. Pointwise loss:
    ``xlogy(t, t) - t * input`` (0 where t == 0), or ``exp(t) * (t - input)`` for log targets.

    - Shapes broadcast; the result dtype is the promoted float dtype.
    - ``reduction``: "mean" (over every element, as PyTorch's default; the true KL per sample
      is "batchmean"), "batchmean" (the sum divided by the first dimension), "sum" or "none".
    - Raises ShapeError for shapes that do not broadcast, DTypeError for non-float operands,
      ArgumentError for a bad reduction or log_target.

    >>> import numpy as np, tsol
    >>> p = np.array([[0.5, 0.5]]); q = np.array([[0.25, 0.75]])
    >>> round(float(tsol.kl_divergence(np.log(q), p, reduction="batchmean")), 6)
    0.143841
    """
    ...
