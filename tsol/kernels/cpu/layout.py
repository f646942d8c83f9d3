"""CPU kernels for the layout ops: views where NumPy gives views, bit-moving gathers otherwise.

A layout op moves bits and never converts, so kernels see every dtype as the unsigned integer
of its size (``bits``): one compiled kernel per item size serves floats, halves, ints and bool.
A source of any strides (transposed, negative, zero, 0-d) is read through a 1-D window over its
memory (``flat_source``) with element offsets, so one kernel also serves every rank: dims are
collapsed first, the last two are tiled, and the leading ones become a table of base offsets.
"""

from __future__ import annotations

from builtins import slice as py_slice
from typing import Any, Sequence

import numpy as np
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numpy.lib.stride_tricks import as_strided

from tsol import config as settings
from tsol import dtypes
from tsol.kernels.cpu.jit import kernel_jit
from tsol.kernels.strides import c_strides, collapse
from tsol.registry import Config, kernel

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

OUTSIDE = -(1 << 50)
"""Offset-table entry for a padded (constant) position. Sums of a few of them stay below
``OUTSIDE // 2`` while every real offset is above it (arrays hold fewer than 2**49 elements)."""
_OUTSIDE_HALF = OUTSIDE // 2

COPY_CONFIGS = [Config(tile=32, run=1 << 20), Config(tile=64, run=1 << 20),
                Config(tile=16, run=1 << 20), Config(tile=32, run=1 << 16)]
"""``tile``: square tile edge when the inner source stride is not 1 (transposes), so the
lines a tile touches stay in L1; ``run``: elements per task when it is 1 (contiguous rows,
each moved by one memcpy, so a long run keeps the per-task overhead negligible)."""


def bits(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as the unsigned integer dtype of its item size (a view, any strides)."""
    return a.view(_UINT[a.dtype.itemsize])


def flat_source(a: np.ndarray) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """(window, origin, strides): ``a[i]`` is ``window[origin + sum(i_k * strides_k)]``.

    The window is a read-only 1-D bits view from the lowest address ``a`` touches to the highest.
    """
    u = bits(a)
    if u.size == 0:
        window = np.zeros(1, u.dtype)
        window.flags.writeable = False
        return window, 0, (0,) * a.ndim
    if any(s % u.itemsize for s in u.strides):
        u = u.copy()        # strides that split items exist only via as_strided: rare, copy
    strides = tuple(s // u.itemsize for s in u.strides)
    lowest = u[tuple(py_slice(None, None, -1) if s < 0 else py_slice(None) for s in strides)]
    span = 1 + sum(abs(s) * (n - 1) for s, n in zip(strides, u.shape, strict=True))
    window = as_strided(lowest, shape=(span,), strides=(u.itemsize,), writeable=False)
    origin = sum(-s * (n - 1) for s, n in zip(strides, u.shape, strict=True) if s < 0)
    return window, origin, strides


def base_offsets(tables: Sequence[np.ndarray], origin: int) -> np.ndarray:
    """Every sum ``origin + t0[i0] + t1[i1] + ...`` in C order, as one int64 table."""
    out = np.full(1, origin, np.int64)
    for t in tables:
        out = (out[:, None] + t[None, :]).reshape(-1)
    return out


@intrinsic
def copy_run(typingctx, dst, d_at, src, s_at, count):
    """``dst[d_at:d_at + count] = src[s_at:s_at + count]`` as one ``llvm.memcpy``.

    Both are contiguous 1-D arrays of one dtype that do not overlap. A memcpy call moves long
    runs about twice as fast as the element loop LLVM makes of a slice assignment here.
    """
    def codegen(context, builder, sig, args):
        d, d_off, s_arr, s_off, n = args
        d_ptr = builder.gep(context.make_array(sig.args[0])(context, builder, d).data, [d_off])
        s_ptr = builder.gep(context.make_array(sig.args[2])(context, builder, s_arr).data,
                            [s_off])
        cgutils.raw_memcpy(builder, d_ptr, s_ptr, n, sig.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(dst, types.int64, src, types.int64, types.int64), codegen


@kernel_jit(parallel=True)
def copy_strided(src, s_base, s_m, s_n, dst, d_base, d_m, d_n, m, n, tile_m, tile_n):
    """dst[d_base[b] + i*d_m + j*d_n] = src[s_base[b] + i*s_m + j*s_n], tiled over (i, j)."""
    tiles_m = (m + tile_m - 1) // tile_m
    tiles_n = (n + tile_n - 1) // tile_n
    per_b = tiles_m * tiles_n
    for t in prange(s_base.shape[0] * per_b):
        b = t // per_b
        i0 = (t % per_b) // tiles_n * tile_m
        j0 = (t % tiles_n) * tile_n
        i1 = min(i0 + tile_m, m)
        j1 = min(j0 + tile_n, n)
        for i in range(i0, i1):
            so = s_base[b] + i * s_m
            do = d_base[b] + i * d_m
            if s_n == 1 and d_n == 1:
                copy_run(dst, do + j0, src, so + j0, j1 - j0)
            else:
                for j in range(j0, j1):
                    dst[do + j * d_n] = src[so + j * s_n]


def copy_into(a: np.ndarray, dst: np.ndarray, d_origin: int, d_strides: Sequence[int],
              cfg: Config) -> None:
    """Copy ``a`` to ``dst[d_origin + sum(i_k * d_strides_k)]``; ``dst`` is a flat bits array."""
    if a.size == 0:
        return
    window, origin, s_strides = flat_source(a)
    shape, (ss, ds) = collapse(a.shape, s_strides, d_strides)
    if len(shape) < 2:      # the kernel tiles the last two dims: give it two
        fill = 2 - len(shape)
        shape, ss, ds = (1,) * fill + shape, (0,) * fill + ss, (0,) * fill + ds
    elif len(shape) > 2 and abs(ss[-1]) != 1:
        # Offsets are explicit, so dims may be visited in any order: tile the source's
        # fastest dim against the destination's last one (a transpose of any rank).
        k = min(range(len(shape) - 1), key=lambda d: abs(ss[d]))
        order = [d for d in range(len(shape) - 1) if d != k] + [k, len(shape) - 1]
        shape, ss, ds = (tuple(x[d] for d in order) for x in (shape, ss, ds))
    lead = [np.arange(n, dtype=np.int64) * s for n, s in zip(shape[:-2], ss[:-2], strict=True)]
    s_base = base_offsets(lead, origin)
    lead = [np.arange(n, dtype=np.int64) * s for n, s in zip(shape[:-2], ds[:-2], strict=True)]
    d_base = base_offsets(lead, d_origin)
    unit = ss[-1] == 1 and ds[-1] == 1
    tile_m, tile_n = (1, cfg.run) if unit else (cfg.tile, cfg.tile)
    copy_strided(window, s_base, ss[-2], ss[-1], dst, d_base, ds[-2], ds[-1], shape[-2],
                 shape[-1], tile_m, tile_n)


def _fresh(shape: tuple[int, ...], dt: np.dtype) -> np.ndarray:
    """A new result array, poisoned (all bits set) when the setting asks, as the call path does."""
    out = np.empty(shape, dt)
    if settings.get().poison_outputs:
        bits(out).fill(np.iinfo(_UINT[dt.itemsize]).max)
    return out


# --- views ------------------------------------------------------------------------------------

@kernel("transpose", backend="cpu", dtypes=dtypes.ALL, allocates=True)
def transpose_view(a: np.ndarray, *, config: Config, axes: tuple[int, ...]) -> np.ndarray:
    return a.transpose(axes)


@kernel("slice", backend="cpu", dtypes=dtypes.ALL, allocates=True)
def slice_view(a: np.ndarray, *, config: Config, key: tuple[Any, ...]) -> np.ndarray:
    return a[key + (Ellipsis,)]     # the Ellipsis keeps a 0-d result a view, not a scalar copy


@kernel("split", backend="cpu", dtypes=dtypes.ALL, allocates=True)
def split_views(a: np.ndarray, *, config: Config, indices_or_sections: tuple[int, ...],
                axis: int) -> list[np.ndarray]:
    points = [0, *indices_or_sections, a.shape[axis]]
    lead = (py_slice(None),) * axis
    return [a[lead + (py_slice(s, max(s, e)),)] for s, e in zip(points, points[1:], strict=False)]


@kernel("reshape", backend="cpu", dtypes=dtypes.ALL, configs=COPY_CONFIGS,
        allocates=True)
def reshape_view_or_copy(a: np.ndarray, *, config: Config, shape: tuple[int, ...]) -> np.ndarray:
    """A view when NumPy's no-copy rule allows one, else a strided gather into C order."""
    try:
        return a.reshape(shape, copy=False)
    except ValueError:
        pass
    out = _fresh(shape, a.dtype)
    copy_into(a, bits(out).reshape(-1), 0, c_strides(a.shape), config)
    return out


# --- copies -----------------------------------------------------------------------------------

def _one_dtype(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return len({m.dtype for m in metas}) == 1


@kernel("concat", backend="cpu", dtypes=dtypes.ALL, configs=COPY_CONFIGS,
        supports=_one_dtype)
def concat_copy(arrays: tuple[np.ndarray, ...], *, out: np.ndarray, config: Config,
                axis: int | None) -> None:
    """Each array is copied into its slab of ``out`` (tiles of a slab run in parallel)."""
    dst = bits(out).reshape(-1)
    offset = 0
    for a in arrays:
        if axis is None:
            copy_into(a, dst, offset, c_strides(a.shape), config)
            offset += a.size
        else:
            strides = c_strides(out.shape)
            copy_into(a, dst, offset * strides[axis], strides, config)
            offset += a.shape[axis]


def source_offsets(n: int, stride: int, before: int, after: int, mode: str) -> np.ndarray:
    """Element offset of the source of each index along a padded axis; OUTSIDE for constants."""
    x = np.arange(-before, n + after, dtype=np.int64)
    if mode == "constant":
        return np.where((x >= 0) & (x < n), x * stride, OUTSIDE)
    if mode == "edge" or n <= 1:
        return np.clip(x, 0, max(n - 1, 0)) * stride
    period = 2 * (n - 1)
    m = x % period
    return np.where(m < n, m, period - m) * stride


@kernel_jit(parallel=True)
def pad_rows(src, row_base, col_off, dst, fill, lo, n, s):
    """One output row per task: constant rows, then edge columns by table, interior by stride."""
    cols = col_off.shape[0]
    for r in prange(row_base.shape[0]):
        base = row_base[r]
        at = r * cols
        if base < _OUTSIDE_HALF:
            for j in range(cols):
                dst[at + j] = fill
        else:
            for j in range(lo):
                c = col_off[j]
                dst[at + j] = fill if c < _OUTSIDE_HALF else src[base + c]
            if s == 1:
                copy_run(dst, at + lo, src, base, n)
            else:
                for j in range(n):
                    dst[at + lo + j] = src[base + j * s]
            for j in range(lo + n, cols):
                c = col_off[j]
                dst[at + j] = fill if c < _OUTSIDE_HALF else src[base + c]


@kernel("pad", backend="cpu", dtypes=dtypes.ALL)
def pad_gather(a: np.ndarray, *, out: np.ndarray, config: Config,
               pad_width: tuple[tuple[int, int], ...], mode: str, constant_values: Any) -> None:
    """Rows of the padded result gather from the source through per-axis offset tables."""
    if out.size == 0:
        return
    fill = np.empty((), a.dtype)
    fill[()] = constant_values
    window, origin, strides = flat_source(a)
    # Unpadded size-1 dims drop out and unpadded neighbours that are one source run merge, so
    # the row table stays small (a 1-d view of the work wherever the layout allows).
    dims: list[list[int]] = []
    for n, s, (b, e) in zip(a.shape, strides, pad_width, strict=True):
        if n == 1 and b == e == 0:
            continue
        if dims and b == e == 0 and dims[-1][2] == dims[-1][3] == 0 and dims[-1][1] == s * n:
            dims[-1][0:2] = [dims[-1][0] * n, s]
        else:
            dims.append([n, s, b, e])
    if not dims:
        dims = [[1, 1, 0, 0]]
    tables = [source_offsets(n, s, b, e, mode) for n, s, b, e in dims]
    row_base = base_offsets(tables[:-1], origin)
    n, s, lo, _ = dims[-1]
    pad_rows(window, row_base, tables[-1], bits(out).reshape(-1), bits(fill)[()], lo,
             n if a.size else 0, s)
