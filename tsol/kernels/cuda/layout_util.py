"""Broadcast layouts for GPU kernels: merge an output's dims with its operands' strides, and the
light strided views that carry such a layout into ``gpu.launch`` without a CuPy view per call."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tsol.kernels.cuda import gpu


def _element_strides(a: Any, shape: tuple[int, ...]) -> list[int]:
    """``a``'s strides in elements once broadcast to ``shape`` (0 along broadcast dims)."""
    lead = len(shape) - a.ndim
    out = [0] * lead
    for d, (n, s) in enumerate(zip(a.shape, a.strides)):
        out.append(0 if n == 1 and shape[lead + d] != 1 else s // a.itemsize)
    return out


def merged_dims(shape: tuple[int, ...], arrays: Sequence[Any], ndim: int
                ) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """(dims, element strides per array) of ``shape`` with size-1 dims dropped and adjacent dims
    merged where every array allows it, left-padded with 1s to ``ndim`` dims.

    Raises ValueError when more than ``ndim`` dims remain (the caller copies instead).
    """
    strides = [_element_strides(a, shape) for a in arrays]
    dims: list[int] = []
    merged: list[list[int]] = [[] for _ in arrays]
    for d, n in enumerate(shape):
        if n == 1:
            continue
        if dims and all(m[-1] == st[d] * n for m, st in zip(merged, strides)):
            dims[-1] *= n
            for m, st in zip(merged, strides):
                m[-1] = st[d]
            continue
        dims.append(n)
        for m, st in zip(merged, strides):
            m.append(st[d])
    if len(dims) > ndim:
        raise ValueError(f"{len(dims)} dims after merging, kernel takes {ndim}")
    pad = ndim - len(dims)
    return (1,) * pad + tuple(dims), [(0,) * pad + tuple(m) for m in merged]


class _Data:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class _Flags:
    c_contiguous = False
    f_contiguous = False


class StridedArg:
    """What ``gpu.launch`` reads of an array: dtype, shape, strides (bytes) and the address."""

    __slots__ = ("dtype", "shape", "strides", "size", "itemsize", "ndim", "data")
    flags = _Flags()

    def __init__(self, dtype: np.dtype, ptr: int, shape: tuple[int, ...],
                 strides: tuple[int, ...]) -> None:
        self.dtype, self.shape, self.strides = dtype, shape, strides
        self.itemsize = dtype.itemsize
        self.ndim = len(shape)
        self.size = int(np.prod(shape))
        self.data = _Data(ptr)


def strided_view(a: Any, dims: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """``a`` seen with shape ``dims`` and element ``strides`` (a NumPy view under the simulator)."""
    byte_strides = tuple(s * a.itemsize for s in strides)
    if gpu.HOST_ARRAYS:
        return np.lib.stride_tricks.as_strided(a, dims, byte_strides)
    return StridedArg(np.dtype(a.dtype), int(a.data.ptr), dims, byte_strides)
