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

Wide accesses: 16-bit rows (bfloat16, float16) whose every start is aligned to a word of ``W``
elements (``word_width``: 4 in a 64-bit word, 2 in a 32-bit one) are read and written as
words, one access moving ``W`` elements: with an access per 2-byte value too few bytes are in
flight (bfloat16 layernorm reached 42% of the copy bandwidth on the H200, float32 77%). The kernel
then sees the arrays as words (``words``) and the row as ``n / W`` of them: thread ``t`` keeps
words ``j{q} = t + q * T`` (``q < K / W``), which hold its elements ``v{k}``, ``k = q * W + e``
(``e < W``, element ``W * j{q} + e`` of the row); ``unpack`` and ``pack`` convert between a
word and its elements in float32. A word is in the row or past it as a whole, so one guard
``j{q} < m`` covers its ``W`` elements (``m`` counts words). The host picks ``W`` from the data
pointers, which a replay of the call re-checks modulo ``replay.ALIGN`` (a multiple of every
word size), so a replayed launch never meets a misaligned word. The two paths give a thread
other elements, so their sums round differently in the last bits; each path is bitwise
repeatable.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
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


def each_word(Q: int, lines: Callable[[int], Sequence[str]], exact: bool,
              default: Callable[[int], Sequence[str]] = lambda q: ()) -> list[str]:
    """``lines(q)`` for every slot ``q < Q`` this thread holds (an element, or a word of them):
    guarded by ``j{q} < m`` unless ``exact``; ``default(q)`` comes first when guarded, the
    values of elements outside the row."""
    out: list[str] = []
    for q in range(Q):
        body = list(lines(q))
        if exact:
            out += body
        else:
            out += [*default(q), f"if j{q} < m:", *("    " + s for s in body)]
    return out


def store_words(Q: int, lines: Callable[[int], Sequence[str]], exact: bool) -> list[str]:
    """``lines(q)`` writing slot ``q`` out: exact kernels skip a group without a row as a
    whole, the others test each slot."""
    if not exact:
        return each_word(Q, lines, False)
    return ["if valid:", *("    " + s for q in range(Q) for s in lines(q))]


def _per_element(lines: Sequence[str], W: int) -> Callable[[int], list[str]]:
    """The lines of slot ``q``: ``lines`` formatted with ``k`` for each of its ``W`` elements."""
    return lambda q: [s.format(k=k) for k in range(q * W, q * W + W) for s in lines]


def each(K: int, lines: Sequence[str], exact: bool, default: Sequence[str] = (),
         W: int = 1) -> list[str]:
    """``lines`` (formatted with ``k``) for every element ``k`` this thread holds: guarded by
    ``j{k // W} < m`` (the word holding it) unless ``exact``; ``default`` lines (formatted too)
    come first when guarded, the value of an element outside the row."""
    return each_word(K // W, _per_element(lines, W), exact, _per_element(default, W))


def stores(K: int, lines: Sequence[str], exact: bool) -> list[str]:
    """``lines`` (formatted with ``k``) writing element ``k`` out: exact kernels skip a group
    without a row as a whole, the others test each element."""
    return store_words(K, _per_element(lines, 1), exact)


def is_exact(n: int, T: int, K: int) -> bool:
    """Whether rows of ``n`` elements fill a ``T x K`` tile exactly."""
    return n == T * K


# --- wide accesses of 16-bit rows ----------------------------------------------------------------
WORDS = {2: np.dtype(np.uint32), 4: np.dtype(np.uint64)}
"""The word type of ``W`` 16-bit elements."""


def word_width(n: int, K: int, arrays: Sequence[Any]) -> int:
    """Elements one access moves in the rows of ``n`` elements (``K`` a thread) of ``arrays``
    (kernel views, row ``i`` at ``i * n`` elements): 4 or 2 when every array is C-contiguous
    16-bit storage and each row start is aligned to a word of that many elements (``n`` and the
    data pointers), ``K`` a multiple of it; else 1 (element accesses)."""
    if not all(a.dtype.itemsize == 2 and a.flags.c_contiguous for a in arrays):
        return 1
    for W in sorted(WORDS, reverse=True):
        if K % W == 0 and n % W == 0 and all(replay.data_ptr(a) % (2 * W) == 0 for a in arrays):
            return W
    return 1


def words(a: Any, W: int) -> Any:
    """The kernel view ``a`` as words of ``W`` elements (``a`` itself for ``W == 1``)."""
    return a if W == 1 else a.view(WORDS[W])


def _halves(word: str, e: int, W: int) -> tuple[str, int]:
    """(the 32-bit part of ``word`` holding element ``e``, ``e``'s half in it)."""
    if W == 2:
        return word, e
    return (f"np.uint32({word})" if e < 2 else f"np.uint32({word} >> np.uint64(32))"), e & 1


def unpack(word: str, e: int, W: int, dt: Any) -> str:
    """Element ``e`` (the lowest address 0) of ``word``, ``W`` elements of 16-bit ``dt``, as
    float32: bfloat16 is the high half of a float32, float16 converts (``f16_bits_to_f32``)."""
    part, half = _halves(word, e, W)
    if np.dtype(dt) == dtypes.bfloat16:
        bits = f"{part} & np.uint32(0xFFFF0000)" if half else f"{part} << np.uint32(16)"
        return f"gpu.f32_from_bits({bits})"
    return f"f16_bits_to_f32({f'{part} >> np.uint32(16)' if half else part})"


def pack(values: Sequence[str], dt: Any) -> str:
    """The word of float32 ``values`` (one a word element, lowest address first) stored as
    16-bit ``dt``, rounded to nearest even."""
    store = "gpu.store_bf16" if np.dtype(dt) == dtypes.bfloat16 else "f32_to_f16_bits"
    bits = [f"np.uint32({store}(np.float32({v})))" for v in values]
    pairs = [f"{lo} | ({hi} << np.uint32(16))" for lo, hi in zip(bits[::2], bits[1::2])]
    if len(pairs) == 1:
        return pairs[0]
    return f"np.uint64({pairs[0]}) | (np.uint64({pairs[1]}) << np.uint64(32))"


def load_words(K: int, W: int, arrays: Sequence[tuple[str, Any]], exact: bool,
               default: str) -> list[str]:
    """Lines setting this thread's elements ``v{k}`` to the sum of element ``k`` of the
    ``arrays`` (kernel parameter, 16-bit dtype), each read a word ``j{q}`` at a time from
    ``base``; ``default`` outside the row."""
    def lines(q: int) -> list[str]:
        out = [f"w{p}{q} = {p}[base + j{q}]" for p, _ in arrays]
        return out + [f"v{q * W + e} = " + " + ".join(unpack(f"w{p}{q}", e, W, dt)
                                                       for p, dt in arrays)
                      for e in range(W)]
    return each_word(K // W, lines, exact, lambda q: [f"v{k} = {default}"
                                                      for k in range(q * W, q * W + W)])


if gpu.SIMULATOR:
    @gpu.device
    def f16_bits_to_f32(h):
        """The float32 value of the float16 bits in the low half of ``h``."""
        return np.float32(np.array(int(h) & 0xFFFF, np.uint16).view(np.float16)[()])

    @gpu.device
    def f32_to_f16_bits(x):
        """The float16 bits (uint16) of float32 ``x``, rounded to nearest even."""
        return np.array(np.float32(x)).astype(np.float16).view(np.uint16)[()]
else:
    @gpu.device
    def f16_bits_to_f32(h):
        return gpu.libdevice.half2float(np.int16(h))

    @gpu.device
    def f32_to_f16_bits(x):
        return np.uint16(gpu.libdevice.float2half_rn(np.float32(x)))

NAMESPACE = {"U": U, "f16_bits_to_f32": f16_bits_to_f32, "f32_to_f16_bits": f32_to_f16_bits}
"""What generated row-kernel sources name besides ``reduction.namespace``."""


__all__ = ["CONFIGS", "KMAX", "NAMESPACE", "SIM_CONFIG", "U", "WORDS", "each", "each_word",
           "head", "is_exact", "load_words", "pack", "slots", "store_words", "stores", "unpack",
           "word_width", "words"]
