"""Backend-neutral layout planning of reductions: which memory layouts a kernel can read as a
C-contiguous ``(outer, r, inner)`` array without a copy. Host code only; the CPU and CUDA
reduction kernels both plan with it."""

from __future__ import annotations

import math
from typing import Sequence


def reduction_groups(dims: Sequence[tuple[int, int, bool, int]], itemsize: int
                     ) -> tuple[int, int, int, tuple[int, ...]] | None:
    """(outer, r, inner, kept) when ``dims`` (size, byte stride, reduced, axis), outermost
    first, are exactly C-contiguous and read [kept] [reduced] [kept]; else None."""
    expect = itemsize
    for size, stride, _, _ in reversed(dims):
        if stride != expect:
            return None
        expect *= size
    pattern = [red for i, (_, _, red, _) in enumerate(dims) if i == 0 or red != dims[i - 1][2]]
    if pattern not in ([], [False], [True], [False, True], [True, False], [False, True, False]):
        return None
    lead = next((i for i, d in enumerate(dims) if d[2]), len(dims))
    outer = math.prod(d[0] for d in dims[:lead])
    r = math.prod(d[0] for d in dims if d[2])
    inner = math.prod(d[0] for d in dims[lead:] if not d[2])
    return outer, r, inner, tuple(d[3] for d in dims if not d[2])
