"""Backend-neutral stride arithmetic of the copy kernels (host code): C-order strides and the
collapsing of dims that every operand walks as one run. The CPU and CUDA layout kernels both
plan their copies with it."""

from __future__ import annotations

from typing import Sequence


def c_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """C-order strides of ``shape``, in elements."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return tuple(reversed(out))



def collapse(shape: Sequence[int], *strides: Sequence[int]
             ) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Drop size-1 dims and merge neighbours that are one run in every stride list."""
    dims: list[tuple[int, list[int]]] = []
    for k, n in enumerate(shape):
        ss = [s[k] for s in strides]
        if n == 1:
            continue
        if dims and all(p == s * n for p, s in zip(dims[-1][1], ss, strict=True)):
            dims[-1] = (dims[-1][0] * n, ss)
        else:
            dims.append((n, ss))
    return (tuple(n for n, _ in dims),
            [tuple(ss[i] for _, ss in dims) for i in range(len(strides))])
