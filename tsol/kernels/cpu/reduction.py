"""CPU kernels of the reduction family: layout planning, the fixed combine tree, finalization.

Each op views its input as a C-contiguous ``(outer, r, inner)`` array, ``r`` the product of the
reduced axes, without copying when it can:

- size-1 axes are dropped, adjacent axes of one kind (reduced or kept) merge, and the result
  must be ``[kept] [reduced] [kept]`` over memory that is exactly C-contiguous in logical
  order, or in memory order (a transposed or Fortran-order array; the kept results are then
  transposed back into ``out``). Reducing trailing axes gives rows (``inner == 1``), leading
  or middle axes give columns (``inner > 1``).
- anything else (strided, reversed, broadcast views, non-adjacent reduced axes) is copied once
  with the reduced axes moved last.

The generated tile kernels (``reduction_tiles``) write one partial per fixed block; NumPy then
combines the partials in a fixed pairwise tree (step 1, 2, 4, ...) and finalizes them (divide,
square root, log) in the accumulator dtype before casting into ``out``. The block and lane
structure is fixed by the shape and the config, so results are bitwise repeatable for any
thread count.

Threads: ``run_items`` splits the work items into contiguous ranges over
``numba.get_num_threads()`` threads of a small pool, each calling the serial kernel (which
releases the GIL). This replaces ``prange`` on purpose. With ``parallel=True`` Numba compiles
the item code again inside the parfor's gufunc and LLVM re-optimizes it once more in the
caller: measured on these kernels, about twice the compile time (13 s against 6.5 s per
storage dtype), and the family compiles for seven storage dtypes. The split into items never
changes a result, and ``numba.set_num_threads`` still sets the thread count.

Accumulators: float64 for float64, float32 for float32, float16 and bfloat16 (stored back to
the half dtype at the end), int64 for signed integers, uint64 for unsigned integers and bool.
``mean`` of integers of up to 32 bits sums exactly in int64 and divides in float64; ``mean`` of
64-bit integers and ``var``/``std`` of any integers convert the input to float64 once (as
NumPy's own ``var`` does).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numba
import numpy as np

from tsol import dtypes
from tsol.kernels.cpu import reduction_tiles as tiles
from tsol.kernels.reduction_layout import reduction_groups
from tsol.registry import Config, kernel


@dataclass(frozen=True)
class Plan:
    """A reduction's canonical view: flat storage ``x`` of the C-contiguous (outer, r, inner).

    ``kept``: the kept logical axes in the order results come out (size-1 axes left out);
    ``storage``: 'f16', 'bf16' or 'native'.
    """

    x: np.ndarray
    outer: int
    r: int
    inner: int
    kept: tuple[int, ...]
    storage: str

    @property
    def count(self) -> int:
        return self.outer * self.inner


def storage_of(a: np.ndarray) -> tuple[np.ndarray, str]:
    """The array the kernels read: halves as uint16 bits, bool as uint8."""
    if a.dtype == dtypes.bool_:
        return a.view(np.uint8), "native"
    if a.dtype in dtypes.HALF:
        return a.view(np.uint16), "bf16" if a.dtype == dtypes.bfloat16 else "f16"
    return a, "native"


def plan(a: np.ndarray, axes: tuple[int, ...], *, ordered: bool = False) -> Plan:
    """Canonical view of ``a`` (``a.size > 0``) reduced over ``axes``.

    ``ordered``: the reduced axes must keep their logical order (flat indices of argmax).
    """
    s, storage = storage_of(a)
    dims = [(n, st, ax in axes, ax)
            for ax, (n, st) in enumerate(zip(s.shape, s.strides, strict=True)) if n != 1]
    found = reduction_groups(dims, s.itemsize)
    if found is None:
        by_memory = sorted(dims, key=lambda d: -d[1])
        reduced = [d[3] for d in by_memory if d[2]]
        if not ordered or reduced == sorted(reduced):
            found = reduction_groups(by_memory, s.itemsize)
    if found is not None:
        outer, r, inner, kept = found
        # Every stride is positive, so the array's first element is its lowest address.
        x = np.lib.stride_tricks.as_strided(s, shape=(outer * r * inner,), strides=(s.itemsize,))
        return Plan(x, outer, r, inner, kept, storage)
    kept_axes = tuple(ax for ax in range(a.ndim) if ax not in axes)
    moved = np.ascontiguousarray(s.transpose(kept_axes + tuple(axes)))
    r = math.prod(a.shape[ax] for ax in axes)
    return Plan(moved.reshape(-1), moved.size // r, r, 1, kept_axes, storage)


def write(out: np.ndarray, vals: np.ndarray, p: Plan, shape: tuple[int, ...]) -> None:
    """Cast results ``vals`` (flat, in plan order) into ``out``, transposing kept axes back."""
    if list(p.kept) != sorted(p.kept):
        vals = vals.reshape([shape[ax] for ax in p.kept]).transpose(np.argsort(p.kept))
    with np.errstate(over="ignore"):       # float32 results beyond float16 become inf
        out[...] = vals.reshape(out.shape)


def tree(parts: tuple[np.ndarray, ...], combine: Callable[..., None]) -> tuple[np.ndarray, ...]:
    """Combine partials along axis 1 of (m, n, k) arrays in a fixed pairwise tree, in place.

    Step 1 combines (0, 1), (2, 3), ...; step 2 combines (0, 2), (4, 6), ...; the left
    operand always holds the earlier block. Returns the (m * k,) results.
    """
    n = parts[0].shape[1]
    step = 1
    with np.errstate(over="ignore", invalid="ignore"):     # inf and NaN are results here
        while step < n:
            combine(tuple(q[:, 0:n - step:2 * step] for q in parts),
                    tuple(q[:, step::2 * step] for q in parts))
            step *= 2
    return tuple(q[:, 0].reshape(-1) for q in parts)


def _add(left: tuple, right: tuple) -> None:
    np.add(left[0], right[0], out=left[0])


def _mul(left: tuple, right: tuple) -> None:
    np.multiply(left[0], right[0], out=left[0])


def _max(left: tuple, right: tuple) -> None:
    np.maximum(left[0], right[0], out=left[0])


def _arg_combine(left: tuple, right: tuple) -> None:
    # The right block's indices are all larger: it wins only when strictly larger, or NaN
    # against a number (the first NaN wins).
    (lv, li), (rv, ri) = left, right
    take = np.greater(rv, lv)
    if lv.dtype.kind == "f":
        take |= np.isnan(rv) & ~np.isnan(lv)
    np.copyto(lv, rv, where=take)
    np.copyto(li, ri, where=take)


COMBINE = {"sum": _add, "sqdev": _add, "sumexp": _add, "prod": _mul, "max": _max}


EXACT_BLOCKS = 4
"""max, min, argmax and argmin give the same result in any order, so their row segments are
this many blocks long: the per-segment lane tree costs a quarter as much."""


def _geometry(p: Plan, config: Config, exact: bool = False) -> np.ndarray:
    block = config.block * (EXACT_BLOCKS if exact else 1)
    return tiles.geometry(p.outer, p.r, p.inner, block=block, lanes=config.lanes,
                          rows=config.rows, cols=config.cols, task=max(config.task, block))


def _parts(p: Plan, flat: np.ndarray) -> np.ndarray:
    """Flat partials as (outer, blocks, inner)."""
    return flat.reshape(p.outer, -1, p.inner)


THREAD_MIN_ELEMENTS = 1 << 17
"""Below this many input elements a reduction runs on the calling thread alone."""

_pool: ThreadPoolExecutor | None = None


def run_items(kernel: Callable[[int, int], None], items: int, elements: int) -> None:
    """Run ``kernel(t0, t1)`` over work items ``0:items``, split into contiguous ranges over
    ``numba.get_num_threads()`` threads (the kernels release the GIL).

    Items write disjoint partials, so the split never changes a result.
    """
    global _pool
    threads = min(numba.get_num_threads(), items, max(1, elements // THREAD_MIN_ELEMENTS))
    if threads <= 1:
        kernel(0, items)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS, "tsol-reduction")
    cuts = [items * k // threads for k in range(threads + 1)]
    futures = [_pool.submit(kernel, t0, t1) for t0, t1 in zip(cuts[1:-1], cuts[2:], strict=True)]
    kernel(cuts[0], cuts[1])
    for f in futures:
        f.result()


def flip_of(acc: np.dtype, reverse: bool) -> np.generic:
    """The kernels' ``flip``: max of ``v * flip`` (floats) or ``v ^ flip`` (integers) is the
    max (flip 1 or 0) or, order reversed by -v or ~v (flip -1 or all ones), the min."""
    if acc.kind == "f":
        return acc.type(-1.0 if reverse else 1.0)
    return acc.type(np.iinfo(acc).max if acc.kind == "u" else -1) if reverse else acc.type(0)


def unflip(vals: np.ndarray, reverse: bool) -> np.ndarray:
    """Values of reversed order back to themselves (-v or ~v)."""
    if not reverse:
        return vals
    return np.negative(vals) if vals.dtype.kind == "f" else np.invert(vals)


def fold(p: Plan, kind: str, acc: np.dtype, config: Config,
         center: np.ndarray | None = None) -> np.ndarray:
    """Per-output fold ``kind`` (a key of ``tiles.FOLDS``, or 'min') in dtype ``acc``, in plan
    order. ``center``: per-output values in plan order, for 'sqdev' (the mean) and 'sumexp'
    (the shift). A reduction over zero elements gives the identity (max and min need
    ``r >= 1``).
    """
    acc = np.dtype(acc)
    if p.count == 0 or p.r == 0:
        return np.full(p.count, 1 if kind == "prod" else 0, acc)
    reverse = kind == "min"
    kind = "max" if reverse else kind
    c = np.zeros(1, acc) if center is None else np.ascontiguousarray(center, acc)
    g = _geometry(p, config, exact=kind == "max")
    flat = np.empty(tiles.partial_count(g), acc)
    fn = tiles.module(p.storage, acc.name).fold
    flip = flip_of(acc, reverse)
    run_items(lambda t0, t1: fn(p.x, c, flat, g, t0, t1, tiles.KINDS[kind], flip),
              int(g[tiles.ITEMS]), p.x.size)
    return unflip(tree((_parts(p, flat),), COMBINE[kind])[0], reverse)


def arg(p: Plan, acc: np.dtype, config: Config, *, is_max: bool) -> np.ndarray:
    """Per-output index of the first max (or min) along the reduced extent; NaN wins."""
    acc = np.dtype(acc)
    if p.count == 0:
        return np.zeros(0, np.int64)
    g = _geometry(p, config, exact=True)
    n = tiles.partial_count(g)
    vals, idx = np.empty(n, acc), np.empty(n, np.int64)
    fn = tiles.module(p.storage, acc.name).arg
    flip = flip_of(acc, not is_max)
    run_items(lambda t0, t1: fn(p.x, vals, idx, g, t0, t1, flip), int(g[tiles.ITEMS]),
              p.x.size)
    return tree((_parts(p, vals), _parts(p, idx)), _arg_combine)[1]


# --- registered kernels -----------------------------------------------------------------------

ORDER = dict(block=4096, lanes=256, rows=128)
"""The knobs that fix the order of operations: elements per row block, interleaved lanes per
row block, rows per column block. Every config shares them, so tuning never changes a result."""

CONFIGS = [Config(**ORDER, cols=4096, task=65536), Config(**ORDER, cols=1024, task=32768),
           Config(**ORDER, cols=8192, task=262144)]
"""Scheduling knobs only: ``cols`` columns per column tile, ``task`` elements per work item."""


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    # 4096-element blocks in 256 lanes: 16 sequential adds per lane, then a tree, as accurate
    # as NumPy's pairwise sum; 128-row column blocks bound the sequential part of a column.
    return CONFIGS[0]


def acc_of(dt: np.dtype) -> np.dtype:
    """Accumulator dtype of ``dt``: float64, float32 (float32 and halves), int64 or uint64."""
    if dt == dtypes.float64 or dt in dtypes.FLOATS:
        return dtypes.compute_dtype(dt)
    return dtypes.uint64 if dt.kind in "ub" else dtypes.int64


def _count(shape: tuple[int, ...], axis: tuple[int, ...]) -> int:
    return math.prod(shape[ax] for ax in axis)


def _sum_or_prod(kind: str, a: np.ndarray, out: np.ndarray, config: Config,
                 axis: tuple[int, ...]) -> None:
    if a.size == 0:
        out.fill(1 if kind == "prod" else 0)
        return
    p = plan(a, axis)
    write(out, fold(p, kind, acc_of(a.dtype), config), p, a.shape)


def _moments(a: np.ndarray, axis: tuple[int, ...], config: Config, ddof: float | None
             ) -> tuple[np.ndarray, Plan]:
    """Mean (``ddof`` None) or variance over ``axis`` in the accumulator dtype; a.size > 0."""
    n = _count(a.shape, axis)
    if ddof is None and a.dtype.kind in "iub" and a.dtype.itemsize <= 4:
        p = plan(a, axis)     # an exact int64/uint64 sum, then one rounding to float64
        return fold(p, "sum", acc_of(a.dtype), config).astype(np.float64) / n, p
    if a.dtype.kind in "iub":
        a = a.astype(np.float64)
    p = plan(a, axis)
    acc = acc_of(a.dtype)
    mean = fold(p, "sum", acc, config) / acc.type(n)
    if ddof is None:
        return mean, p
    squares = fold(p, "sqdev", acc, config, center=mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        return squares / acc.type(max(n - ddof, 0)), p


def _spread(a: np.ndarray, out: np.ndarray, config: Config, axis: tuple[int, ...],
            ddof: float, root: bool) -> None:
    if a.size == 0:
        out.fill(np.nan)
        return
    var, p = _moments(a, axis, config, ddof)
    write(out, np.sqrt(var) if root else var, p, a.shape)


def _extreme(kind: str, a: np.ndarray, out: np.ndarray, config: Config,
             axis: tuple[int, ...]) -> None:
    if a.size:            # the meta rule let an empty input through only for an empty result
        p = plan(a, axis)
        write(out, fold(p, kind, acc_of(a.dtype), config), p, a.shape)


def _index(is_max: bool, a: np.ndarray, out: np.ndarray, config: Config,
           axis: int | None) -> None:
    if a.size:
        p = plan(a, tuple(range(a.ndim)) if axis is None else (axis,), ordered=True)
        write(out, arg(p, acc_of(a.dtype), config, is_max=is_max), p, a.shape)


@kernel("sum", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def sum_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
            keepdims: bool) -> None:
    """Blocked lane sum; integers and bool in int64/uint64 (wrapping like NumPy)."""
    _sum_or_prod("sum", a, out, config, axis)


@kernel("prod", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def prod_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
             keepdims: bool) -> None:
    """Blocked lane product, the structure of sum."""
    _sum_or_prod("prod", a, out, config, axis)


@kernel("mean", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def mean_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
             keepdims: bool) -> None:
    """Blocked sum divided by the count; NaN for an empty reduction."""
    if a.size == 0:
        out.fill(np.nan)
        return
    mean, p = _moments(a, axis, config, None)
    write(out, mean, p, a.shape)


@kernel("var", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def var_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
            ddof: float, keepdims: bool) -> None:
    """Two passes: the blocked mean, then the blocked sum of squared deviations from it."""
    _spread(a, out, config, axis, ddof, root=False)


@kernel("std", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def std_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
            ddof: float, keepdims: bool) -> None:
    """Square root of var's two-pass result."""
    _spread(a, out, config, axis, ddof, root=True)


@kernel("max", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def max_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
            keepdims: bool) -> None:
    """Lane-wise maximum; NaN propagates."""
    _extreme("max", a, out, config, axis)


@kernel("min", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def min_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
            keepdims: bool) -> None:
    """Lane-wise minimum; NaN propagates."""
    _extreme("min", a, out, config, axis)


@kernel("argmax", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def argmax_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: int | None,
               keepdims: bool) -> None:
    """Lane-wise maximum, then its first position; the first NaN wins."""
    _index(True, a, out, config, axis)


@kernel("argmin", backend="cpu", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)
def argmin_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: int | None,
               keepdims: bool) -> None:
    """Lane-wise minimum, then its first position; the first NaN wins."""
    _index(False, a, out, config, axis)


@kernel("logsumexp", backend="cpu", dtypes=dtypes.FLOATS, configs=CONFIGS,
        heuristic=_heuristic)
def logsumexp_cpu(a: np.ndarray, *, out: np.ndarray, config: Config, axis: tuple[int, ...],
                  keepdims: bool) -> None:
    """Two passes: the blocked max, then the blocked sum of exp(x - shift), where the shift
    is the max when finite and 0 otherwise (SciPy's rule)."""
    if a.size == 0:
        out.fill(-np.inf)
        return
    p = plan(a, axis)
    acc = acc_of(a.dtype)
    peak = fold(p, "max", acc, config)
    shift = np.where(np.isfinite(peak), peak, acc.type(0))
    total = fold(p, "sumexp", acc, config, center=shift)
    with np.errstate(divide="ignore"):
        write(out, np.log(total) + shift, p, a.shape)
