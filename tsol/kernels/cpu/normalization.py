"""CPU kernels for layernorm and rmsnorm over the last axis, generated per storage dtype.

One row kernel serves both ops (``rms`` skips the mean). The input is viewed as ``(rows, n)``
(a free reshape of a C-contiguous array; any other layout is first copied to C order) and each
parallel task takes a block of rows. Per row, with pairwise trees over the row while it sits
in L1/L2: the mean, kept in two parts (``hi``, the rounded mean, and ``lo``, the mean of
``x - hi``) so that a mean much larger than the spread costs no accuracy; the sum of squared
deviations (two-pass variance: no cancellation); then one pass writing
``((x - hi) - lo) * rstd * gamma + beta``.

Statistics are computed in float32 for float32/float16/bfloat16 input and float64 for float64,
in an order that depends on ``n`` alone (the trees of ``tsol.kernels.cpu.softmax``), so results
are bitwise repeatable for any thread count. ``gamma``/``beta`` are converted to the compute
dtype once (an ``n``-element copy); absent ones become ones/zeros, which change no bits.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cpu.jit import storage_kind
from tsol.kernels.cpu.scalar import storage_view
from tsol.kernels.cpu.softmax import read_only, render, rows_per_task
from tsol.registry import Config, kernel

TEMPLATE = '''
@kernel_jit($JIT_OPTIONS)
def norm_row(xr, orow, gamma, beta, eps, rms, bf16, tmp, xbuf):
    """Layernorm (RMSnorm when ``rms``) of the row ``xr`` into ``orow``; tmp, xbuf: scratch."""
    n = xr.shape[0]
    xf = compute_row(xr, xbuf, bf16)
    # The mean in two parts: hi, the rounded mean, and lo, the mean of x - hi. x - hi is exact
    # where it matters (x close to hi), so a mean much larger than the spread costs no accuracy.
    hi = $CT(0.0)
    lo = $CT(0.0)
    if not rms:
        hi = $CT(tree_sum(xf, n, hi, lo, False, tmp) / n)
        lo = $CT(tree_sum(xf, n, hi, lo, False, tmp) / n)
    var = tree_sum(xf, n, hi, lo, True, tmp) / n
    rstd = $CT(1.0 / math.sqrt(var + eps))
    for j in range(n):
        orow[j] = store(((xf[j] - hi) - lo) * rstd * gamma[j] + beta[j], bf16)


@kernel_jit(parallel=True, $JIT_OPTIONS)
def norm_rows(x, out, gamma, beta, eps, rms, rows_per_task, bf16):
    """Layernorm (RMSnorm when ``rms``) of each row of the C-contiguous (m, n) ``x``."""
    m, n = x.shape
    for task in prange((m + rows_per_task - 1) // rows_per_task):
        tmp = np.empty(n // 2 + 1, $CT)
        xbuf = np.empty(n * SCRATCH, np.float32)
        for i in range(task * rows_per_task, min(m, (task + 1) * rows_per_task)):
            norm_row(x[i], out[i], gamma, beta, eps, rms, bf16, tmp, xbuf)
'''

_modules: dict[str, ModuleType] = {}


def _kernels(dt: np.dtype) -> ModuleType:
    kind = storage_kind(dt)
    if kind not in _modules:
        _modules[kind] = render("normalization", TEMPLATE, kind)
    return _modules[kind]


def _param(p: np.ndarray | None, n: int, ct: np.dtype, fill: float) -> np.ndarray:
    if p is None:
        return np.full(n, fill, ct)
    return np.ascontiguousarray(p, dtype=ct)


def _run(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, out: np.ndarray,
         eps: float, rms: bool, config: Config) -> None:
    if x.size == 0:
        return
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    n = x.shape[-1]
    m = x.size // n
    ct = dtypes.compute_dtype(x.dtype)
    _kernels(x.dtype).norm_rows(read_only(storage_view(x)).reshape(m, n),
                                storage_view(out).reshape(m, n),
                                read_only(_param(gamma, n, ct, 1.0)),
                                read_only(_param(beta, n, ct, 0.0)),
                                float(eps), rms, rows_per_task(m, n, config.task_elems),
                                x.dtype == dtypes.bfloat16)


def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    # gamma/beta may be absent (None); the op's meta rule has checked their shapes and dtypes.
    return metas[0].dtype in dtypes.FLOATS and all(
        m is None or m.dtype in dtypes.FLOATS for m in metas[1:])


CONFIGS = [Config(task_elems=t) for t in (32768, 8192, 131072)]


@kernel("layernorm", backend="cpu", configs=CONFIGS, supports=_supports)
def layernorm_cpu(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, *,
                  out: np.ndarray, config: Config, eps: float) -> None:
    """Layernorm over the last axis; statistics in float32 (float64 for float64 input)."""
    _run(x, gamma, beta, out, eps, False, config)


@kernel("rmsnorm", backend="cpu", configs=CONFIGS, supports=_supports)
def rmsnorm_cpu(x: np.ndarray, gamma: np.ndarray | None, *, out: np.ndarray, config: Config,
                eps: float) -> None:
    """RMSnorm over the last axis; statistics in float32 (float64 for float64 input)."""
    _run(x, gamma, None, out, eps, True, config)
