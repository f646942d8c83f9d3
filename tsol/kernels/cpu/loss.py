"""CPU kernels for cross_entropy, mse and kl_divergence, generated per storage dtype.

cross_entropy: logits arrive as a C-contiguous (R, C) matrix of rows (PyTorch's class axis
moved last; a free reshape for [N, C]). One pass over blocks of rows in parallel: each row is
loaded once into a compute-type scratch padded to whole vectors (with -inf), its max and sum of
exponentials are vector reductions in a fixed lane order (``row_max``/``row_sum``), and the
row's loss (``lse - x[t]`` or ``sum(p * (lse - x))``) is written in float64.

mse / kl_divergence: operands are broadcast and flattened (a copy only when they are not
already contiguous and of one shape); one pass over fixed blocks of 8192 elements computes the
pointwise loss, writes it for reduction="none", and sums it in 16 float64 lanes.

Reductions add the per-row or per-block float64 partials with NumPy's pairwise sum; the blocks
are fixed, so results never depend on the thread count.
"""

from __future__ import annotations

from string import Template
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cpu.attention_tiles import render
from tsol.kernels.cpu.jit import storage_kind
from tsol.kernels.cpu.scalar import storage_view
from tsol.ops.loss import class_axis, target_out_of_range
from tsol.registry import Config, kernel

POINTWISE = '''
@kernel_jit(parallel=True, $$JIT_OPTIONS)
def ${NAME}_blocks(a, b, out, write, flag, partial, block, bf16):
    """Pointwise ${NAME} of the flat a and b: into out if write, block sums into partial."""
    n = a.shape[0]
    for task in prange(partial.shape[0]):
        lanes = np.zeros(LANES, np.float64)
        start = task * block
        stop = min(n, start + block)
        for j0 in range(start, stop, LANES):
            for t in range(min(LANES, stop - j0)):
                x = $$CT($$LOAD(a[j0 + t], bf16))
                y = $$CT($$LOAD(b[j0 + t], bf16))
                $BODY
                if write:
                    out[j0 + t] = $$STORE(v, bf16)
                lanes[t] += v
        total = 0.0
        for t in range(LANES):
            total += lanes[t]
        partial[task] = total
'''

BODIES = {
    "mse": "d = x - y\n                v = d * d",
    # xlogy(t, t) - t * input, or exp(t) * (t - input) for log targets (flag).
    "kl": ("v = $EXP(y) * (y - x) if flag else "
           "(y * $LOG(y) if y != 0 else $CT(0.0)) - y * x"),
}

TEMPLATE = '''
@kernel_jit(parallel=True, $JIT_OPTIONS)
def cross_entropy_rows(x, tgt, probs, use_probs, ignore, per, rows_per_task, bf16):
    """Per-row loss of the (R, C) logits x: class tgt[r], or probabilities probs[r]."""
    r_len, c_len = x.shape
    cp = (c_len + NR - 1) // NR * NR
    for task in prange((r_len + rows_per_task - 1) // rows_per_task):
        row = np.empty((1, cp), $CT)
        ex = np.zeros((1, cp), $CT)
        for c in range(c_len, cp):
            row[0, c] = -np.inf
        for r in range(task * rows_per_task, min(r_len, (task + 1) * rows_per_task)):
            for c in range(c_len):
                row[0, c] = $LOAD(x[r, c], bf16)
            mx = row_max(row, 0, cp)
            # Like scipy's log_softmax, shift by 0 when the max is not finite.
            shift = mx if (mx > -np.inf and mx < np.inf) else $CT(0.0)
            for c in range(cp):
                ex[0, c] = $EXP(row[0, c] - shift)
            lse = np.float64(shift) + math.log(np.float64(row_sum(ex, 0, cp)))
            if use_probs:
                for c in range(c_len):
                    ex[0, c] = $CT($LOAD(probs[r, c], bf16)) * ($CT(lse) - row[0, c])
                for c in range(c_len, cp):
                    ex[0, c] = 0.0
                per[r] = row_sum(ex, 0, cp)
            elif tgt[r] == ignore:
                per[r] = 0.0
            else:
                per[r] = lse - np.float64(row[0, tgt[r]])
''' + "".join(Template(POINTWISE).substitute(NAME=name, BODY=body)
              for name, body in BODIES.items())

_modules: dict[str, ModuleType] = {}


def _kernels(dt: np.dtype) -> ModuleType:
    kind = storage_kind(dt)
    if kind not in _modules:
        _modules[kind] = render("loss", TEMPLATE, kind)
    return _modules[kind]


def _finish(per: np.ndarray, out: np.ndarray, reduction: str, count: float) -> None:
    """Write per-element float64 losses or their sum / mean into ``out`` (NumPy rounds)."""
    if reduction == "none":
        out[...] = per.reshape(out.shape)
        return
    total = float(np.sum(per))
    if reduction != "sum":
        total = total / count if count else float("nan")
    out[...] = total


# --- cross_entropy ------------------------------------------------------------------------

def _rows(a: np.ndarray) -> np.ndarray:
    """PyTorch-layout logits (or probabilities) as a C-contiguous (R, C) matrix."""
    if a.ndim == 1:
        return np.ascontiguousarray(a).reshape(1, -1)
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).reshape(-1, a.shape[1])


def _check_targets(t: np.ndarray, c: int, ignore: int | None, operands: Sequence[Any]) -> int:
    """Raise ArgumentError for a class index outside [0, C); return the non-ignored count."""
    keep = np.ones(t.shape, bool) if ignore is None else t != ignore
    bad = keep & ((t < 0) | (t >= c))
    if bad.any():
        raise target_out_of_range(operands[1], int(np.flatnonzero(bad)[0]), c, ignore, operands)
    return int(np.count_nonzero(keep))


def _ce_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return metas[0].dtype in dtypes.FLOATS


@kernel("cross_entropy", backend="cpu", supports=_ce_supports,
        configs=[Config(task_elems=32768)])
def cross_entropy_cpu(logits: np.ndarray, targets: np.ndarray, *, out: np.ndarray,
                      config: Config, reduction: str, ignore_index: int | None) -> None:
    """Per-sample losses in one parallel pass, then the reduction in float64."""
    c = logits.shape[class_axis(logits.ndim)]
    x = _rows(logits)
    use_probs = targets.dtype in dtypes.FLOATS
    per = np.empty(x.shape[0], np.float64)
    if use_probs:
        tgt, probs, count = np.zeros(1, np.int64), _rows(targets), x.shape[0]
    else:
        tgt = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
        count = _check_targets(tgt, c, ignore_index, (logits, targets))
        probs = x
    if x.shape[0]:
        rows = max(1, min(x.shape[0], config.task_elems // max(c, 1)))
        ignore = -(2 ** 63) if ignore_index is None else ignore_index
        _kernels(logits.dtype).cross_entropy_rows(storage_view(x), tgt, storage_view(probs),
                                                  use_probs, ignore, per, rows,
                                                  logits.dtype == dtypes.bfloat16)
    _finish(per, out, reduction, count)


# --- mse and kl_divergence ----------------------------------------------------------------

BLOCK = 8192
"""Elements per parallel task and per float64 partial sum."""


def _flat(a: np.ndarray, dt: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dt:
        a = a.astype(dt)
    if a.shape != shape or not a.flags.c_contiguous:
        a = np.ascontiguousarray(np.broadcast_to(a, shape))
    return a.reshape(-1)


def _pointwise(name: str, a: np.ndarray, b: np.ndarray, out: np.ndarray, reduction: str,
               flag: bool, config: Config) -> None:
    shape = np.broadcast_shapes(a.shape, b.shape)
    n = int(np.prod(shape, dtype=np.int64))
    write = reduction == "none"
    if write and n == 0:
        return
    fa, fb = _flat(a, out.dtype, shape), _flat(b, out.dtype, shape)
    partial = np.zeros((n + config.block - 1) // config.block, np.float64)
    target = storage_view(out).reshape(-1) if write else storage_view(fa)
    if n:
        getattr(_kernels(out.dtype), f"{name}_blocks")(storage_view(fa), storage_view(fb),
                                                       target, write, flag, partial,
                                                       config.block, out.dtype == dtypes.bfloat16)
    if write:
        return
    count = (shape[0] if shape else 1) if reduction == "batchmean" else n
    _finish(partial, out, "mean" if reduction == "batchmean" else reduction, count)


def _pair_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return all(m.dtype in dtypes.FLOATS for m in metas)


@kernel("mse", backend="cpu", supports=_pair_supports, configs=[Config(block=BLOCK)])
def mse_cpu(pred: np.ndarray, target: np.ndarray, *, out: np.ndarray, config: Config,
            reduction: str) -> None:
    """Squared differences in one parallel pass; sums in float64 blocks."""
    _pointwise("mse", pred, target, out, reduction, False, config)


@kernel("kl_divergence", backend="cpu", supports=_pair_supports, configs=[Config(block=BLOCK)])
def kl_divergence_cpu(input: np.ndarray, target: np.ndarray, *, out: np.ndarray,
                      config: Config, reduction: str, log_target: bool) -> None:
    """PyTorch's pointwise KL in one parallel pass; sums in float64 blocks."""
    _pointwise("kl", input, target, out, reduction, log_target, config)
