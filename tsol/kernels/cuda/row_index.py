"""Index math of the register-resident row kernels (softmax, log_softmax, layernorm, rmsnorm,
cross_entropy): generated source lines, shared so that every row kernel indexes alike.

A row kernel gives each group of ``T`` threads (a power of two) one row of ``n`` elements,
``B // T`` rows a block; thread ``t`` of a group keeps the elements ``j{k} = t + k * T``
(``k < K``) in registers, coalesced across the group. Offsets are unsigned 64-bit (``U``), so
Numba emits no negative-index wraparound at each access and ptxas folds ``k * T`` into the
loads' immediate offsets from one base address: the 4096-element float32 softmax row at
``K = 32`` takes 86 registers a thread instead of 126 (nvJitLink, sm_90).

``exact`` kernels serve rows of exactly ``T * K`` elements (the launcher checks): no bounds
test per element. A group past the last row (the last block's spare groups) then reads the
last row again and writes nothing, so every thread still takes part in the group's shuffles
and barriers. Otherwise each element is guarded by ``j{k} < m``, with ``m = 0`` past the last
row.

Mixing ``U`` with a signed 64-bit value makes Numba compute in float64: convert the other side
first (``x[base + U(i)]``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tsol.registry import Config

KMAX = 32
"""Most elements a row-kernel thread keeps in registers."""

CONFIGS = [Config(block=256, work=8, kmax=KMAX, split=0),
           Config(block=256, work=16, kmax=KMAX, split=0),
           Config(block=128, work=8, kmax=KMAX, split=0),
           Config(block=512, work=4, kmax=KMAX, split=0),
           Config(block=256, work=32, kmax=KMAX, split=0),
           Config(block=128, work=32, kmax=KMAX, split=0)]
"""The configs of the softmax and norm kernels: ``block``: threads a block (at least);
``work``: elements a thread aims at (rows of 4096 in groups of 512 threads, 8 registers each);
``kmax``: most elements a thread keeps in registers (longer rows take the two-pass path);
``split``: at least this many segments a row in the two-pass statistics (tests). The first is
the heuristic's: best or within 3% of the best on the H200 (bench/RESULTS.md, 2026-12-04)."""
SIM_CONFIG = Config(block=32, work=8, kmax=KMAX, split=0)
"""Under the simulator (every thread a Python thread): small blocks."""

U = np.uint64
"""The offsets' type in generated sources (put ``"U": U`` in the kernel's namespace)."""


def head(T: int, B: int, exact: bool, rows: str = "rows", n: str = "n") -> list[str]:
    """Lines defining ``tid``, ``lane``, ``warp``, ``t``, ``row``, ``valid`` (the group has a
    row), ``m`` (its length, 0 without one) and ``base`` (its first element's offset)."""
    lines = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5",
             f"t = U(tid & {T - 1})",
             f"row = gpu.blockIdx.x * {B // T} + (tid >> {T.bit_length() - 1})",
             f"valid = row < {rows}", f"m = U({n}) if valid else U(0)"]
    src = f"(row if valid else {rows} - 1)" if exact else "row"
    return lines + [f"base = U({src}) * U({n})"]


def slots(T: int, K: int) -> list[str]:
    """The offsets ``j0 .. j{K-1}`` of this thread's elements within its row."""
    return [f"j{k} = t + U({k * T})" for k in range(K)]


def each(K: int, lines: Sequence[str], exact: bool, default: Sequence[str] = ()) -> list[str]:
    """``lines`` (formatted with ``k``) for every element ``k`` this thread holds: guarded by
    ``j{k} < m`` unless ``exact``; ``default`` lines (formatted too) come first when guarded,
    the value of an element outside the row."""
    out: list[str] = []
    for k in range(K):
        body = [s.format(k=k) for s in lines]
        if exact:
            out += body
        else:
            out += [s.format(k=k) for s in default]
            out += [f"if j{k} < m:", *("    " + s for s in body)]
    return out


def stores(K: int, lines: Sequence[str], exact: bool) -> list[str]:
    """``lines`` (formatted with ``k``) writing element ``k`` out: exact kernels skip a group
    without a row as a whole, the others test each element."""
    if not exact:
        return each(K, lines, False)
    return ["if valid:", *("    " + s.format(k=k) for k in range(K) for s in lines)]


def is_exact(n: int, T: int, K: int) -> bool:
    """Whether rows of ``n`` elements fill a ``T x K`` tile exactly."""
    return n == T * K


__all__ = ["CONFIGS", "KMAX", "SIM_CONFIG", "U", "each", "head", "is_exact", "slots", "stores"]
