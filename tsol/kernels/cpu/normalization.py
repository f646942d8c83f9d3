"""CPU kernels for layernorm and rmsnorm over the last axis, generated per storage dtypes.

One row kernel serves both ops (``rms`` skips the mean). The input is viewed as ``(rows, n)``
(a free reshape of a C-contiguous array; any other layout is first copied to C order) and each
parallel task takes a block of rows. Per row, with pairwise trees over the row while it sits
in L1/L2: the mean, kept in two parts (``hi``, the rounded mean, and ``lo``, the mean of
``x - hi``) so that a mean much larger than the spread costs no accuracy; the sum of squared
deviations (two-pass variance: no cancellation); then one pass writing
``((x - hi) - lo) * rstd * gamma + beta``.

With a ``residual`` the row kernel normalizes ``x + residual``: the first pass over a row loads
both, converts them to the compute dtype and adds them into the task's row scratch, which the
statistics and the final pass then read (the sum is never written to memory outside it). The
template is generated per (result kind, x storage, residual storage: none, native or half), so
the load of each operand is fixed in the source and absent residuals cost nothing.

Statistics are computed in float32 for float32/float16/bfloat16 results and float64 for
float64, in an order that depends on ``n`` alone (the trees of ``tsol.kernels.cpu.softmax``),
so results are bitwise repeatable for any thread count. ``gamma``/``beta`` are converted to the
compute dtype once (an ``n``-element copy); absent ones become ones/zeros, which change no bits.
"""

from __future__ import annotations

from string import Template
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
def norm_row(xr, rr, orow, gamma, beta, eps, rms, bf16x, bf16r, bf16o, tmp, xbuf):
    """Layernorm (RMSnorm when ``rms``) of the row ``xr`` (plus ``rr`` when this kind has a
    residual) into ``orow``; tmp, xbuf: scratch."""
    n = xr.shape[0]
$LOAD_ROW
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
        orow[j] = store(((xf[j] - hi) - lo) * rstd * gamma[j] + beta[j], bf16o)


@kernel_jit(parallel=True, $JIT_OPTIONS)
def norm_rows(x, r, out, gamma, beta, eps, rms, rows_per_task, bf16x, bf16r, bf16o):
    """Layernorm (RMSnorm when ``rms``) of each row of the C-contiguous (m, n) ``x`` (plus
    ``r`` when this kind has a residual; else ``r`` is not read)."""
    m, n = x.shape
    for task in prange((m + rows_per_task - 1) // rows_per_task):
        tmp = np.empty(n // 2 + 1, $CT)
        xbuf = np.empty(n * $XBUF_ELEMS, $XBUF_DTYPE)
        for i in range(task * rows_per_task, min(m, (task + 1) * rows_per_task)):
            norm_row(x[i], r[i], out[i], gamma, beta, eps, rms, bf16x, bf16r, bf16o, tmp, xbuf)
'''

_HALF_LOADS = {True: "load_bf16", False: "load_f16"}


def _sum_row(x_half: bool, r_half: bool) -> str:
    """Source of the row load ``xf = x + r`` in the compute type, into ``xbuf``. Each half
    operand's conversion is chosen by its flag outside the loop, so every loop vectorizes."""
    def loop(fx: str | None, fr: str | None, pad: str) -> list[str]:
        lx = f"$CT({fx}(xr[j]))" if fx else "$CT(xr[j])"
        lr = f"$CT({fr}(rr[j]))" if fr else "$CT(rr[j])"
        return [f"{pad}for j in range(n):", f"{pad}    xbuf[j] = {lx} + {lr}"]

    lines: list[str] = []
    xs = [(True, "if bf16x:"), (False, "else:")] if x_half else [(None, "")]
    for xb, xhead in xs:
        pad = "    "
        if xhead:
            lines.append(pad + xhead)
            pad += "    "
        rs = [(True, "if bf16r:"), (False, "else:")] if r_half else [(None, "")]
        for rb, rhead in rs:
            inner = pad
            if rhead:
                lines.append(pad + rhead)
                inner += "    "
            lines += loop(_HALF_LOADS.get(xb), _HALF_LOADS.get(rb), inner)
    return "\n".join(lines + ["    xf = xbuf"])


_modules: dict[tuple[str, str, str], ModuleType] = {}


def _storage_class(dt: np.dtype | None) -> str:
    return "none" if dt is None else "half" if dt in dtypes.HALF else "native"


def _kernels(dt: np.dtype, rdt: np.dtype | None, odt: np.dtype) -> ModuleType:
    """The generated module for x of ``dt``, a residual of ``rdt`` (None: none), result ``odt``."""
    key = (storage_kind(odt), _storage_class(dt), _storage_class(rdt))
    if key not in _modules:
        kind, xc, rc = key
        if rc == "none":
            # x has the result's dtype: its row is used in place (native) or converted into
            # the float32 scratch (half), as ``compute_row`` does for softmax.
            subs = dict(LOAD_ROW="    xf = compute_row(xr, xbuf, bf16x)",
                        XBUF_ELEMS="SCRATCH", XBUF_DTYPE="np.float32")
        else:
            subs = dict(LOAD_ROW=_sum_row(xc == "half", rc == "half"), XBUF_ELEMS="1",
                        XBUF_DTYPE="$CT")
        source = Template(TEMPLATE).safe_substitute(subs)
        family = "normalization" if rc == "none" else f"normalization_x{xc}_r{rc}"
        _modules[key] = render(family, source, kind)
    return _modules[key]


def _param(p: np.ndarray | None, n: int, ct: np.dtype, fill: float) -> np.ndarray:
    if p is None:
        return np.full(n, fill, ct)
    return np.ascontiguousarray(p, dtype=ct)


def _rows(a: np.ndarray, m: int, n: int) -> np.ndarray:
    """A C-contiguous, read-only (m, n) storage view of an input (copied when strided)."""
    return read_only(storage_view(np.ascontiguousarray(a))).reshape(m, n)


def _run(x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray | None,
         beta: np.ndarray | None, out: np.ndarray, eps: float, rms: bool,
         config: Config) -> None:
    if x.size == 0:
        return
    n = x.shape[-1]
    m = x.size // n
    ct = dtypes.compute_dtype(out.dtype)
    xs = _rows(x, m, n)
    # Without a residual, ``x`` stands in for it: that kind's row kernel never reads it.
    rs = xs if residual is None else _rows(residual, m, n)
    rdt = None if residual is None else residual.dtype
    _kernels(x.dtype, rdt, out.dtype).norm_rows(
        xs, rs, storage_view(out).reshape(m, n), read_only(_param(gamma, n, ct, 1.0)),
        read_only(_param(beta, n, ct, 0.0)), float(eps), rms,
        rows_per_task(m, n, config.task_elems), x.dtype == dtypes.bfloat16,
        rdt == dtypes.bfloat16, out.dtype == dtypes.bfloat16)


def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    # gamma/beta/residual may be absent (None); the op's meta rule has checked their shapes.
    return metas[0].dtype in dtypes.FLOATS and all(
        m is None or m.dtype in dtypes.FLOATS for m in metas[1:])


CONFIGS = [Config(task_elems=t) for t in (32768, 8192, 131072)]


# Every row is read (into the row scratch, or as the native row) before its output row is
# written, by the same task: out= may be x or the residual itself.
@kernel("layernorm", backend="cpu", configs=CONFIGS, supports=_supports)
def layernorm_cpu(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                  residual: np.ndarray | None, *, out: np.ndarray, config: Config,
                  eps: float) -> None:
    """Layernorm of ``x`` (+ ``residual``) over the last axis; statistics in float32
    (float64 for a float64 result)."""
    _run(x, residual, gamma, beta, out, eps, False, config)


@kernel("rmsnorm", backend="cpu", configs=CONFIGS, supports=_supports)
def rmsnorm_cpu(x: np.ndarray, gamma: np.ndarray | None, residual: np.ndarray | None, *,
                out: np.ndarray, config: Config, eps: float) -> None:
    """RMSnorm of ``x`` (+ ``residual``) over the last axis; statistics in float32 (float64
    for a float64 result)."""
    _run(x, residual, gamma, None, out, eps, True, config)
