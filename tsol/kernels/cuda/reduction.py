"""CUDA kernels for the reduction ops: sum, mean, prod, max, min, var, std, argmax, argmin and
logsumexp, generated per (fold kind, storage dtype, accumulator, output dtype, layout).

Layout: the input is viewed as a C-contiguous ``(outer, r, inner)`` array, ``r`` the product
of the reduced axes (``plan``: no copy when the array is contiguous in logical or memory order
with the reduced axes adjacent, else one copy with the reduced axes moved last), and each
output is the fold of one ``r``-long line. Each fold kind is a *state* (one to three values:
a sum; a (value, index) pair; Welford's (count, mean, M2); an online (max, sum of exp)) with
``update(state, x, j)``, ``merge(state, state)`` and ``final(state)`` device functions.

- ``inner == 1`` (rows): groups of ``T`` threads (a power of two, 1..1024) fold one row each,
  ``B // T`` rows a block. Thread ``t`` reads ``t, t + T, ...`` (coalesced across the group),
  ``K`` loads in flight per step; then a xor-shuffle tree inside the warp and, for
  ``T > 32``, one more across the group's warps through shared memory.
- ``inner > 1`` (columns): a block is ``TX`` adjacent columns x ``TY`` row lanes; thread
  ``(tx, ty)`` folds rows ``ty, ty + TY, ...`` of its column (each row read is coalesced across
  ``tx``), then a shared-memory tree over ``ty``.
- Few outputs over long lines (a full reduction, a few columns): ``S`` segments of each line
  run in separate blocks (``gridDim.y``) and write partial states; a second kernel merges the
  ``S`` partials of each output in one group. No float atomics anywhere.

Every tree has a fixed shape given by the problem's shape and the config, so results are
bitwise repeatable. Accumulators follow the CPU kernels: float64 for float64, float32 for
float32/float16/bfloat16, int64 for integers and bool (wrapping like NumPy; uint64 for max/min
of uint64), float64 for mean of 64-bit integers and var/std of any integer. argmax/argmin give
the first index of the extreme value, a NaN counting as the extreme (the first NaN wins).
logsumexp follows SciPy's rule (max replaced by 0 when not finite). ``run`` (a fold over a
flat ``(outer, r, inner)`` view returning the states, or finishing into an output) also serves
the softmax kernels.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
from tsol.kernels.reduction_layout import reduction_groups
from tsol.registry import Config, kernel

TMAX = 1024
"""Most threads of a block (and of one row group)."""
SCR = TMAX if gpu.SIMULATOR else 1
"""Scratch elements of the simulator's shuffle twin (unused, one element, on the GPU)."""


# --- device helpers ---------------------------------------------------------------------------
if gpu.SIMULATOR:
    @gpu.device
    def shfl(v, off, scratch):
        """Shared-memory twin of ``shfl_xor``: every thread of the block must call it."""
        tid = gpu.threadIdx.x
        scratch[tid] = v
        gpu.syncthreads()
        r = scratch[tid ^ off]
        gpu.syncthreads()
        return r
else:
    @gpu.device
    def shfl(v, off, scratch):
        """``v`` of lane ``lane ^ off`` (a full-warp xor shuffle)."""
        return gpu.shfl_xor(0xFFFFFFFF, v, off)

exp_, log_, sqrt_ = gpu.exp, gpu.log, gpu.sqrt


# --- fold kinds -------------------------------------------------------------------------------
# Each kind: component dtypes ("A" is the accumulator), initial values, and the device functions
# update(c..., v, j) -> state, merge(c..., o...) -> state, final(c..., fscal) -> value.
# Names in scope: A (accumulator type), R (mean's result type), LOW/HIGH (A's extremes),
# I64, exp_, log_, sqrt_.

_EXTREME = '''
@gpu.device
def update(c0, v, j):
    return (v if v {op} c0 or v != v else c0,)


@gpu.device
def merge(c0, o0):
    return (o0 if o0 {op} c0 or o0 != o0 else c0,)


@gpu.device
def final(c0, fscal):
    return c0
'''

_ARG = '''
@gpu.device
def update(c0, c1, v, j):
    if c1 < 0 or v {op} c0 or (v != v and c0 == c0):
        return v, I64(j)
    return c0, c1


@gpu.device
def merge(c0, c1, o0, o1):
    # Ties (NaN ties included) go to the smaller index: the first occurrence wins.
    if o1 < 0:
        return c0, c1
    if c1 < 0 or o0 {op} c0 or (o0 != o0 and c0 == c0):
        return o0, o1
    if (o0 == c0 or (o0 != o0 and c0 != c0)) and o1 < c1:
        return o0, o1
    return c0, c1


@gpu.device
def final(c0, c1, fscal):
    return c1
'''

_SUM = '''
@gpu.device
def update(c0, v, j):
    return (c0 {op} v,)


@gpu.device
def merge(c0, o0):
    return (c0 {op} o0,)


@gpu.device
def final(c0, fscal):
    return {final}
'''

_WELFORD = '''
@gpu.device
def update(c0, c1, c2, v, j):
    n = c0 + 1
    d = v - c1
    m = c1 + d / A(n)
    return n, m, c2 + d * (v - m)


@gpu.device
def merge(c0, c1, c2, o0, o1, o2):
    # Chan's pairwise update of (count, mean, M2).
    if o0 == 0:
        return c0, c1, c2
    if c0 == 0:
        return o0, o1, o2
    n = c0 + o0
    d = o1 - c1
    w = A(o0) / A(n)
    return n, c1 + d * w, c2 + o2 + d * d * (A(c0) * w)


@gpu.device
def final(c0, c1, c2, fscal):
    return {final}
'''

_LSE = '''
@gpu.device
def update(c0, c1, v, j):
    # c1 is the sum of exp(x - c0) over the values seen, c0 their max; a NaN poisons c1.
    if v > c0:
        return v, c1 * exp_(c0 - v) + A(1)
    if v == c0:
        return c0, c1 + A(1)
    return c0, c1 + exp_(v - c0)


@gpu.device
def merge(c0, c1, o0, o1):
    m = o0 if o0 > c0 else c0
    e0 = A(1) if c0 == m else exp_(c0 - m)
    e1 = A(1) if o0 == m else exp_(o0 - m)
    return m, c1 * e0 + o1 * e1


@gpu.device
def final(c0, c1, fscal):
    if c1 != c1:
        return c1
    if c0 == HIGH or c0 == LOW:
        return c0
    return c0 + log_(c1)
'''

ONLINE_MERGES = '''
@gpu.device
def merge_max(c0, o0):
    return (o0 if o0 > c0 or o0 != o0 else c0,)


@gpu.device
def merge_sum(c0, o0):
    return (c0 + o0,)


@gpu.device
def finite(m):
    return m > LOW and m < HIGH
'''
"""Device functions of the kernels that take a line's max, then its sum of exp(x - max), in
two trees (softmax, cross_entropy): merge_max lets a NaN win; ``finite`` tests the max."""

KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "sum": (("A",), ("A(0)",), _SUM.format(op="+", final="c0")),
    "mean": (("A",), ("A(0)",), _SUM.format(op="+", final="R(c0) / R(fscal)")),
    "prod": (("A",), ("A(1)",), _SUM.format(op="*", final="c0")),
    "max": (("A",), ("LOW",), _EXTREME.format(op=">")),
    "min": (("A",), ("HIGH",), _EXTREME.format(op="<")),
    "argmax": (("A", "I64"), ("LOW", "I64(-1)"), _ARG.format(op=">")),
    "argmin": (("A", "I64"), ("HIGH", "I64(-1)"), _ARG.format(op="<")),
    "var": (("I64", "A", "A"), ("I64(0)", "A(0)", "A(0)"),
            _WELFORD.format(final="c2 / A(fscal)")),
    "std": (("I64", "A", "A"), ("I64(0)", "A(0)", "A(0)"),
            _WELFORD.format(final="sqrt_(c2 / A(fscal))")),
    "lse": (("A", "A"), ("LOW", "A(0)"), _LSE),
}
"""kind -> (component dtypes, initial values, device functions)."""


# --- source generation ------------------------------------------------------------------------

def pow2ceil(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def log2(n: int) -> int:
    return int(n).bit_length() - 1


def tup(names: Sequence[str]) -> str:
    """Assignment target of a state: 'c0,' for one component, 'c0, c1' for more."""
    return ", ".join(names) + ("," if len(names) == 1 else "")


def load_expr(src: str, bf16: bool) -> str:
    """``src`` (an element of the storage array) in the compute type ``A``."""
    return f"gpu.load_bf16({src})" if bf16 else f"A({src})"


def store_expr(expr: str, out_dt: np.dtype) -> str:
    """``expr`` converted to the output dtype (bool is stored as uint8, bfloat16 as uint16)."""
    out_dt = np.dtype(out_dt)
    if out_dt == dtypes.bfloat16:
        return f"gpu.store_bf16(np.float32({expr}))"
    if out_dt == dtypes.bool_:
        return f"np.uint8({expr})"
    return f"np.{out_dt.name}({expr})"


def _shfl(var: str, dt: np.dtype, scratch: str) -> str:
    if dt == np.uint64 and not gpu.SIMULATOR:      # shuffles move 32/64-bit ints and floats
        return f"np.uint64(shfl(np.int64({var}), off, {scratch}))"
    return f"shfl({var}, off, {scratch})"


def rows_reduce(vs: Sequence[str], dts: Sequence[np.dtype], merge: str, T: int, B: int,
                tag: str) -> tuple[list[str], list[str]]:
    """(allocations, body) merging state ``vs`` over aligned groups of ``T`` threads (a power of
    two): xor shuffles inside the warp, then across the group's warps through shared memory.
    Every thread of the block runs the body; afterwards every thread holds its group's state.
    Needs ``lane`` and ``warp`` in scope."""
    os_ = [f"{v}_o" for v in vs]
    scr = [f"scr{tag}{k}" for k in range(len(vs))]
    alloc = [f"{s} = gpu.shared_array({SCR}, np.{dt.name})" for s, dt in zip(scr, dts)]
    body: list[str] = []

    def butterfly(start: int) -> None:
        body.extend([f"off = {start}", "while off > 0:"])
        body.extend(f"    {o} = {_shfl(v, dt, s)}" for v, o, dt, s in zip(vs, os_, dts, scr))
        body.append(f"    {tup(vs)} = {merge}({', '.join(list(vs) + os_)})")
        body.append("    off >>= 1")

    if min(T, 32) > 1:
        butterfly(min(T, 32) // 2)
    if T > 32:
        nw = T // 32
        sh = [f"sh{tag}{k}" for k in range(len(vs))]
        alloc += [f"{s} = gpu.shared_array({B // 32}, np.{dt.name})" for s, dt in zip(sh, dts)]
        body.append("if lane == 0:")
        body.extend(f"    {s}[warp] = {v}" for s, v in zip(sh, vs))
        body.append("gpu.syncthreads()")
        body.append(f"q = warp - (warp & {nw - 1}) + (lane & {nw - 1})")
        body.extend(f"{v} = {s}[q]" for s, v in zip(sh, vs))
        butterfly(nw // 2)
    return alloc, body


def cols_reduce(vs: Sequence[str], dts: Sequence[np.dtype], merge: str, TX: int, TY: int,
                tag: str, broadcast: bool) -> tuple[list[str], list[str]]:
    """(allocations, body) merging state ``vs`` over the ``TY`` threads ``tid = ty * TX + tx``
    of each ``tx`` through a shared-memory tree; thread ``ty == 0`` ends with the result (every
    thread with ``broadcast``). Every thread of the block runs the body."""
    os_ = [f"{v}_o" for v in vs]
    sh = [f"sh{tag}{k}" for k in range(len(vs))]
    alloc = [f"{s} = gpu.shared_array({TX * TY}, np.{dt.name})" for s, dt in zip(sh, dts)]
    body = [f"{s}[tid] = {v}" for s, v in zip(sh, vs)]
    body += [f"off = {TY // 2}", "while off > 0:", "    gpu.syncthreads()", "    if ty < off:"]
    body += [f"        {o} = {s}[tid + off * {TX}]" for s, o in zip(sh, os_)]
    body.append(f"        {tup(vs)} = {merge}({', '.join(list(vs) + os_)})")
    body += [f"        {s}[tid] = {v}" for s, v in zip(sh, vs)]
    body.append("    off >>= 1")
    if broadcast:
        body.append("gpu.syncthreads()")
        body += [f"{v} = {s}[tx]" for s, v in zip(sh, vs)]
    return alloc, body


def cols_head(TX: int) -> list[str]:
    """Kernel lines placing a thread of a column block (``TX`` adjacent columns x row lanes,
    ``tiles`` blocks per outer index): ``tid``, ``tx``, ``ty``, the outer index ``p`` and the
    column ``col``."""
    return ["tid = gpu.threadIdx.x", f"tx = tid & {TX - 1}", f"ty = tid >> {log2(TX)}",
            "bx = gpu.blockIdx.x", "p = bx // tiles", f"col = (bx - p * tiles) * {TX} + tx"]


def indent(lines: Sequence[str], n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line for line in lines)


def namespace(acc: np.dtype) -> dict[str, Any]:
    """Globals of generated kernels computing in ``acc``."""
    A = np.dtype(acc).type
    if acc.kind == "f":
        low, high = A(-np.inf), A(np.inf)
    else:
        low, high = A(np.iinfo(acc).min), A(np.iinfo(acc).max)
    return {"gpu": gpu, "np": np, "math": math, "A": A, "LOW": low, "HIGH": high,
            "R": A if acc.kind == "f" else np.float64, "I64": np.int64, "shfl": shfl,
            "exp_": exp_, "log_": log_, "sqrt_": sqrt_}


_COMPILED_NAMES = (("gpu.threadIdx", "cu.threadIdx"), ("gpu.blockIdx", "cu.blockIdx"),
                   ("gpu.gridDim", "cu.gridDim"), ("gpu.shared_array(", "cu.shared.array("))
"""Facade gap: in compiled kernels Numba types ``threadIdx``, ``blockIdx``, ``gridDim`` and
``shared.array`` only as attributes of the ``numba.cuda`` module itself, not as ``gpu.*``
names (those work under the simulator alone), so generated sources reach them through the
module the facade imported (``gpu.cuda``) when compiled."""


def build(name: str, source: str, ns: dict[str, Any], module: str,
          threads: int | None = None) -> gpu.Kernel:
    """Compile ``source`` (defining ``name``) in ``ns`` into a kernel of ``module``; with
    ``threads`` (a block's), its registers are capped so that such a block can launch."""
    if not gpu.SIMULATOR:
        for old, new in _COMPILED_NAMES:
            source = source.replace(old, new)
        ns = dict(ns, cu=gpu.cuda)
    exec(compile(source, f"<{module}:{name}>", "exec"), ns)
    fn = ns[name]
    fn.__module__ = module
    return gpu.kernel(fn, max_registers=gpu.register_cap(threads) if threads else None)


_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}


def _fold_kernel(layout: str, kind: str, src_dt: np.dtype, bf16: bool, acc: np.dtype,
                 sink: Any, T: int, B: int, K: int) -> gpu.Kernel:
    """The kernel of one fold. ``layout``: 'row' (groups of T threads a row), 'col' (T columns
    x B // T row lanes) or 'fin' (rows of partial states); ``sink``: an output dtype (finalize
    and store) or 'state' (write the states)."""
    key = (layout, kind, src_dt.str, bf16, acc.str, sink if sink == "state" else
           np.dtype(sink).str, T, B, K)
    k = _kernels.get(key)
    if k is not None:
        return k
    comp_names, inits, funcs = KINDS[kind]
    ns = namespace(acc)
    dts = [acc if c == "A" else np.dtype(np.int64) for c in comp_names]
    n = len(dts)
    cs = [f"c{i}" for i in range(n)]
    state = ", ".join(cs)
    outs = "out" if sink != "state" else ", ".join(f"q{i}" for i in range(n))
    stag = "st" if sink == "state" else np.dtype(sink).str.strip("<>|=")
    if bf16:
        stag += "bf"
    name = (f"red_{layout}_{kind}_{src_dt.str.strip('<>|=')}{'bf' if bf16 else ''}_"
            f"{acc.str.strip('<>|=')}_{stag}_t{T}_b{B}_k{K}")

    def sink_lines(index: str) -> list[str]:
        if sink == "state":
            return [f"q{i}[{index}] = c{i}" for i in range(n)]
        return [f"out[o] = {store_expr(f'final({state}, fscal)', sink)}"]

    init = [f"{c} = {v}" for c, v in zip(cs, inits)]
    if layout in ("row", "fin"):
        G = B // T
        alloc, red = rows_reduce(cs, dts, "merge", T, B, "r")
        head = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5",
                f"t = tid & {T - 1}", f"row = gpu.blockIdx.x * {G} + (tid >> {log2(T)})"]
        if layout == "row":
            params = f"x, rows, r, seg, fscal, {outs}"
            loads = [f"v{i} = {load_expr(f'x[base + j + {i * T}]', bf16)}" for i in range(K)]
            ups = [f"{tup(cs)} = update({state}, v{i}, j + {i * T})" for i in range(K)]
            loop = ["base = row * r", "lo = gpu.blockIdx.y * seg", "hi = min(lo + seg, r)",
                    "j = lo + t", f"while j < hi - {(K - 1) * T}:", *("    " + s for s in loads),
                    *("    " + s for s in ups), f"    j += {K * T}", "while j < hi:",
                    f"    {tup(cs)} = update({state}, {load_expr('x[base + j]', bf16)}, j)",
                    f"    j += {T}"]
            index = "o * gpu.gridDim.y + gpu.blockIdx.y"
        else:
            ins = ", ".join(f"p{i}" for i in range(n))
            params = f"{ins}, rows, S, fscal, {outs}"
            parts = ", ".join(f"p{i}[row * S + j]" for i in range(n))
            loop = ["j = t", "while j < S:", f"    {tup(cs)} = merge({state}, {parts})",
                    f"    j += {T}"]
            index = "o"
        body = head + alloc + init + ["if row < rows:", *("    " + s for s in loop)] + red
        body += ["if t == 0 and row < rows:", "    o = row", *("    " + s for s in
                                                             sink_lines(index))]
    else:
        TX, TY = T, B // T
        alloc, red = cols_reduce(cs, dts, "merge", TX, TY, "c", broadcast=False)
        params = f"x, r, inner, tiles, seg, fscal, {outs}"
        loads = [f"v{i} = {load_expr(f'x[base + (j + {i * TY}) * inner]', bf16)}"
                 for i in range(K)]
        ups = [f"{tup(cs)} = update({state}, v{i}, j + {i * TY})" for i in range(K)]
        loop = ["base = p * r * inner + col", "lo = gpu.blockIdx.y * seg",
                "hi = min(lo + seg, r)", "j = lo + ty", f"while j < hi - {(K - 1) * TY}:",
                *("    " + s for s in loads), *("    " + s for s in ups), f"    j += {K * TY}",
                "while j < hi:",
                f"    {tup(cs)} = update({state}, {load_expr('x[base + j * inner]', bf16)}, j)",
                f"    j += {TY}"]
        body = [*cols_head(TX), *alloc, *init, "if col < inner:", *("    " + s for s in loop), *red,
                "if ty == 0 and col < inner:", "    o = p * inner + col",
                *("    " + s for s in sink_lines("o * gpu.gridDim.y + gpu.blockIdx.y"))]
    source = funcs + f"\n\ndef {name}({params}):\n" + indent(body, 4) + "\n"
    k = _kernels[key] = build(name, source, ns, __name__, threads=B)
    return k


# --- scheduling -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def sms() -> int:
    """Streaming multiprocessors of the current device (2 on host arrays)."""
    if gpu.HOST_ARRAYS:
        return 2
    import cupy
    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def unroll(itemsize: int) -> int:
    """Loads in flight per thread and step: about 16 bytes."""
    return max(2, min(8, 16 // itemsize))


def _segments(blocks: int, B: int, r: int, lane_rows: int, config: Config) -> tuple[int, int]:
    """(S, seg): split each line into S segments of seg elements when ``blocks`` blocks of
    ``B`` threads fall short of one full wave, keeping ``config.work`` elements a thread."""
    target = sms() * max(1, 2048 // B)
    S = 1
    if blocks < target:
        S = min(-(-target // blocks), -(-r // (lane_rows * config.work)))
    S = max(1, min(max(S, config.split), r, 65535))
    seg = -(-r // S)
    return -(-r // seg), seg


def row_schedule(rows: int, r: int, config: Config) -> tuple[int, int, int, int]:
    """(T threads a row, B threads a block, S segments, seg) for rows of length r."""
    T = min(TMAX, pow2ceil(-(-r // config.work)))
    B = max(T, config.block)
    S, seg = _segments(-(-rows // (B // T)), B, r, T, config) if T == TMAX or config.split \
        else (1, max(r, 1))
    return T, B, S, seg


def col_schedule(outer: int, r: int, inner: int, config: Config
                 ) -> tuple[int, int, int, int, int]:
    """(TX columns, TY row lanes, tiles of TX columns per outer index, S, seg)."""
    TX = min(32, pow2ceil(inner))
    TY = max(1, min(config.block // TX, pow2ceil(-(-r // config.work))))
    tiles = -(-inner // TX)
    S, seg = _segments(outer * tiles, TX * TY, r, TY, config)
    return TX, TY, tiles, S, seg


def run(kind: str, x: Any, outer: int, r: int, inner: int, acc: Any, config: Config, *,
        bf16: bool = False, target: Any = None, out_dt: Any = None, fscal: float = 0.0) -> Any:
    """Fold ``kind`` over axis 1 of the C-contiguous ``(outer, r, inner)`` flat storage ``x``
    (``r >= 1``; bfloat16 as uint16 with ``bf16``) in ``acc``.

    With ``target`` (a flat C-contiguous output in storage dtype, of logical dtype ``out_dt``)
    the finalized values go there, in ``(outer, inner)`` order; without, the merged states
    come back (one array a component).
    """
    acc = np.dtype(acc)
    count = outer * inner
    K = unroll(x.dtype.itemsize)
    src = np.dtype(x.dtype)
    comp = [acc if c == "A" else np.dtype(np.int64) for c in KINDS[kind][0]]
    if target is not None:
        out_dt = np.dtype(target.dtype if out_dt is None else out_dt)
    if inner == 1:
        T, B, S, seg = row_schedule(outer, r, config)
        layout, grid, args = "row", (-(-outer // (B // T)), S), [x, outer, r, seg, fscal]
    else:
        T, TY, tiles, S, seg = col_schedule(outer, r, inner, config)
        B = T * TY
        layout, grid, args = "col", (outer * tiles, S), [x, r, inner, tiles, seg, fscal]
    if S == 1 and target is not None:
        gpu.launch(_fold_kernel(layout, kind, src, bf16, acc, out_dt, T, B, K), grid, B,
                   args + [target])
        return target
    parts = [replay.scratch(count * S, dt) for dt in comp]
    gpu.launch(_fold_kernel(layout, kind, src, bf16, acc, "state", T, B, K), grid, B,
               args + parts)
    if S == 1:
        return parts
    T2 = min(256, pow2ceil(-(-S // 4)))
    B2 = max(T2, 128)
    grid2 = -(-count // (B2 // T2))
    if target is not None:
        gpu.launch(_fold_kernel("fin", kind, src, bf16, acc, out_dt, T2, B2, 1), grid2, B2,
                   parts + [count, S, fscal, target])
        return target
    states = [replay.scratch(count, dt) for dt in comp]
    gpu.launch(_fold_kernel("fin", kind, src, bf16, acc, "state", T2, B2, 1), grid2, B2,
               parts + [count, S, fscal] + states)
    return states


# --- layout planning --------------------------------------------------------------------------

def storage_of(a: Any) -> tuple[Any, bool]:
    """(the array the kernels read, is bfloat16): bool as uint8, bfloat16 as uint16."""
    if a.dtype == dtypes.bool_:
        return a.view(np.uint8), False
    if a.dtype == dtypes.bfloat16:
        return a.view(np.uint16), True
    return a, False


def plan(a: Any, axes: tuple[int, ...], *, ordered: bool = False
         ) -> tuple[Any, int, int, int, tuple[int, ...], bool]:
    """(flat storage x, outer, r, inner, kept axes in result order, bf16) of ``a`` (size > 0)
    reduced over ``axes``: a view when ``a`` is contiguous in logical or memory order with the
    reduced axes adjacent, else a copy with them moved last. ``ordered``: the reduced axes
    must keep their logical order (flat indices of argmax)."""
    s, bf16 = storage_of(a)
    dims = [(n, st, ax in axes, ax)
            for ax, (n, st) in enumerate(zip(s.shape, s.strides)) if n != 1]
    found = reduction_groups(dims, s.itemsize)
    order = dims
    if found is None:
        by_memory = sorted(dims, key=lambda d: -d[1])
        reduced = [d[3] for d in by_memory if d[2]]
        if not ordered or reduced == sorted(reduced):
            found, order = reduction_groups(by_memory, s.itemsize), by_memory
    if found is not None:
        outer, r, inner, kept = found
        perm = [d[3] for d in order] + [ax for ax in range(a.ndim) if s.shape[ax] == 1]
        v = s if perm == list(range(a.ndim)) else s.transpose(perm)
        if not v.flags.c_contiguous:                      # not expected: stay correct
            v = gpu.array_module().ascontiguousarray(v)
        return v.reshape(-1), outer, r, inner, kept, bf16
    kept = tuple(ax for ax in range(a.ndim) if ax not in axes)
    moved = gpu.array_module().ascontiguousarray(s.transpose(kept + tuple(axes)))
    r = math.prod(a.shape[ax] for ax in axes)
    return moved.reshape(-1), moved.size // r, r, 1, kept, bf16


def out_storage(out: Any) -> Any:
    """``out`` as the kernels write it: bool as uint8, bfloat16 as uint16."""
    return out.view(np.uint8) if out.dtype == dtypes.bool_ else gpu.kernel_view(out)


def fill(out: Any, value: float) -> None:
    if out.dtype == dtypes.bfloat16:
        bits = int(np.array(value, np.float32).view(np.uint32)) >> 16
        out.view(np.uint16).fill(bits)
    else:
        out.fill(value)


_replays = replay.Replays()


def reduce(kind: str, a: Any, out: Any, axes: tuple[int, ...], acc: Any, config: Config, *,
           ordered: bool = False, fscal: float = 0.0) -> None:
    """Fold ``kind`` of ``a`` (size > 0) over ``axes`` into ``out`` (replayed per layout)."""
    key = (kind, a.shape, a.strides, a.dtype, out.shape, out.strides, out.dtype, axes, acc,
           config, ordered, fscal)
    _replays.run(key, (a, out), lambda: _reduce_planned(kind, a, out, axes, acc, config,
                                                         ordered, fscal))


def _reduce_planned(kind: str, a: Any, out: Any, axes: tuple[int, ...], acc: Any,
                    config: Config, ordered: bool, fscal: float) -> None:
    x, outer, r, inner, kept, bf16 = plan(a, axes, ordered=ordered)
    o = out_storage(out)
    if list(kept) == sorted(kept):
        run(kind, x, outer, r, inner, acc, config, bf16=bf16, target=o.reshape(-1),
            out_dt=out.dtype, fscal=fscal)
        return
    tmp = gpu.array_module().empty(outer * inner, o.dtype)
    run(kind, x, outer, r, inner, acc, config, bf16=bf16, target=tmp, out_dt=out.dtype,
        fscal=fscal)
    shape = a.shape
    o.reshape([shape[ax] for ax in sorted(kept)])[...] = \
        tmp.reshape([shape[ax] for ax in kept]).transpose(np.argsort(kept))


# --- registered kernels -----------------------------------------------------------------------

CONFIGS = [Config(block=256, work=16, split=0), Config(block=128, work=16, split=0),
           Config(block=512, work=8, split=0), Config(block=256, work=32, split=0)]
"""``block``: threads a block (at least); ``work``: elements a thread aims at (sets the row
group size and the segment split); ``split``: at least this many segments a line (tests)."""
SIM_CONFIG = Config(block=32, work=16, split=0)
"""Under the simulator (every thread a Python thread): small blocks."""


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    # 16 elements a thread: 4096-long rows in groups of 256 threads, 4 steps of 4 loads each.
    return SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


def acc_of(dt: Any, kind: str) -> np.dtype:
    """Accumulator of ``kind`` over ``dt``."""
    dt = np.dtype(dt)
    if dt in dtypes.FLOATS:
        return np.dtype(np.float64) if dt == dtypes.float64 else np.dtype(np.float32)
    if kind in ("var", "std") or (kind == "mean" and dt.itemsize == 8):
        return np.dtype(np.float64)
    if kind in ("max", "min", "argmax", "argmin") and dt == np.uint64:
        return np.dtype(np.uint64)
    return np.dtype(np.int64)


def _count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return math.prod(shape[ax] for ax in axes)


def _register(op: str, empty: float | None, dts: Any = dtypes.ALL) -> None:
    def impl(a: Any, *, out: Any, config: Config, axis: tuple[int, ...], keepdims: bool,
             ddof: float = 0) -> None:
        if a.size == 0:
            if empty is not None:
                fill(out, empty)
            return
        n = _count(a.shape, axis)
        fscal = float(max(n - ddof, 0)) if op in ("var", "std") else float(n)
        reduce("lse" if op == "logsumexp" else op, a, out, axis, acc_of(a.dtype, op), config,
               fscal=fscal)

    impl.__name__ = impl.__qualname__ = f"{op}_cuda"
    kernel(op, backend="cuda", dtypes=dts, configs=CONFIGS, heuristic=_heuristic,
           replays=True)(impl)


for _op, _empty in (("sum", 0.0), ("prod", 1.0), ("mean", np.nan), ("var", np.nan),
                    ("std", np.nan), ("max", None), ("min", None)):
    _register(_op, _empty)
_register("logsumexp", -np.inf, dtypes.FLOATS)


def _register_arg(op: str) -> None:
    def impl(a: Any, *, out: Any, config: Config, axis: int | None, keepdims: bool) -> None:
        if a.size:          # the meta rule lets an empty input through only for an empty result
            axes = tuple(range(a.ndim)) if axis is None else (axis,)
            reduce(op, a, out, axes, acc_of(a.dtype, op), config, ordered=True)

    impl.__name__ = impl.__qualname__ = f"{op}_cuda"
    kernel(op, backend="cuda", dtypes=dtypes.ALL, configs=CONFIGS, heuristic=_heuristic)(impl)


for _op in ("argmax", "argmin"):
    _register_arg(_op)


__all__ = ["KINDS", "ONLINE_MERGES", "run", "reduce", "plan", "row_schedule", "col_schedule",
           "rows_reduce", "cols_reduce", "cols_head", "load_expr", "store_expr", "namespace",
           "build", "pow2ceil", "log2", "tup", "indent", "sms", "unroll", "shfl", "exp_", "log_",
           "sqrt_"]
