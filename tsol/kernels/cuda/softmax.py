"""CUDA kernels for softmax and log_softmax along one axis, generated per storage dtype and tile.

The input is viewed as a C-contiguous ``(outer, n, inner)`` array around the axis (a copy first
when it is not C-contiguous); compute is float32 (float64 for float64), and each value is loaded
once into registers when its line fits, so the output costs one read and one write:

- ``inner == 1`` (the last axis), ``n <= 32 * 1024``: groups of ``T`` threads (a power of two)
  own one row each, ``B // T`` rows a block; thread ``t`` keeps elements ``t + k * T``
  (``k < K``, coalesced across the group) in registers. The row max is a xor-shuffle tree
  (and a shared-memory step across the group's warps), then ``exp(x - max)`` is summed the
  same way and the row is written from the registers. 16-bit rows whose every start is
  aligned to a word of 4 (or 2) elements are read and written a word at a time (``row_index``:
  wide accesses).
- ``inner > 1``, ``n <= 32 * TY``: a block is ``TX`` adjacent columns x ``TY`` row lanes;
  thread ``(tx, ty)`` keeps rows ``ty + k * TY`` of its column (each row read coalesced across
  ``tx``), folds them into an online (max, sum of exp) pair, the pairs merge in a shared-memory
  tree, and the registers are written out.
- longer lines: the reduction kernels' online (max, sum of exp) fold (``reduction.run``, split
  into segments over several blocks when the lines are few), then a streaming kernel of the
  column shape writes ``exp(x - max) / sum``: two reads and one write.

Every tree has a fixed shape, so results are bitwise repeatable. Edge cases follow
``scipy.special``: a line holding NaN, ``+inf`` or only ``-inf`` gives NaN throughout for
softmax; log_softmax shifts by 0 when the max is not finite (``-inf`` at finite entries and NaN
at ``+inf`` ones when the line holds ``+inf``, NaN for a line of only ``-inf``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay, row_index
from tsol.kernels.cuda import reduction as red
from tsol.registry import Config, kernel

KMAX = row_index.KMAX
"""Most elements a thread keeps in registers: rows up to 32 * 1024 elements in one pass."""


def _finish(log: bool, m: str, s: str) -> list[str]:
    """Per-line factors from the online fold (m, s): ``shift`` and ``inv`` (softmax) or
    ``lse`` (log_softmax), so that the result is f(v) of ``_value``."""
    if log:
        return [f"if finite({m}):", f"    shift = {m}", f"    lse = log_({s})", "else:",
                "    shift = A(0)", f"    lse = {s} if {s} != {s} else {m}"]
    return [f"shift = {m}", f"inv = A(1) / {s} if finite({m}) else A(np.nan)"]


def _value(log: bool, v: str) -> str:
    return f"({v} - shift) - lse" if log else f"exp_({v} - shift) * inv"


_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}


def _source(name: str, params: str, body: Sequence[str], funcs: str = "") -> str:
    """A kernel's source: the online merges (the 'lse' fold's too with ``funcs``) and its body."""
    return red.ONLINE_MERGES + funcs + f"\n\ndef {name}({params}):\n" + red.indent(body, 4) + "\n"


def _row_kernel(dt: np.dtype, acc: np.dtype, log: bool, T: int, B: int, K: int,
                exact: bool, W: int = 1) -> gpu.Kernel:
    """Rows held in registers: K elements a thread, T threads a row, B // T rows a block;
    ``exact``: rows of exactly T * K elements (``rows``); ``W > 1``: 16-bit rows read and
    written a word of W elements at a time (``row_index.word_width``), ``x`` and ``out`` the
    words."""
    key = ("row", dt.str, acc.str, log, T, B, K, exact, W)
    if key in _kernels:
        return _kernels[key]
    bf16 = dt == dtypes.bfloat16
    tag = "bf16" if bf16 else dt.name
    name = (f"{'log_' if log else ''}softmax_row_{tag}_t{T}_b{B}_k{K}{'_x' if exact else ''}"
            f"{f'_w{W}' if W > 1 else ''}")
    f32 = [np.dtype(acc)]
    alloc_a, red_max = red.rows_reduce(["mx"], f32, "merge_max", T, B, "a")
    alloc_b, red_sum = red.rows_reduce(["sm"], f32, "merge_sum", T, B, "b")
    words = "r" if W == 1 else f"r >> {red.log2(W)}"
    body = [*row_index.head(T, B, exact, n=words), *alloc_a, *alloc_b,
            *row_index.slots(T, K // W), "mx = LOW"]
    if W > 1:
        body += row_index.load_words(K, W, [("x", dt)], exact, "LOW")
    else:
        body += row_index.each(K, [f"v{{k}} = {red.load_expr('x[base + j{k}]', bf16)}"], exact,
                               default=["v{k} = LOW"])
    body += [f"mx = v{k} if v{k} > mx or v{k} != v{k} else mx" for k in range(K)]
    body += red_max
    body += ["shift = mx"] + (["if not finite(mx):", "    shift = A(0)"] if log else [])
    body.append("sm = A(0)")
    body += row_index.each(K, ["sm += exp_(v{k} - shift)"] if log else
                           ["v{k} = exp_(v{k} - shift)", "sm += v{k}"], exact, W=W)
    body += red_sum
    body.append("lse = log_(sm)" if log else "inv = A(1) / sm")
    value = "(v{k} - shift) - lse" if log else "v{k} * inv"
    if W > 1:
        body += row_index.store_words(K // W, lambda q: [
            f"out[base + j{q}] = "
            f"{row_index.pack([value.format(k=k) for k in range(q * W, q * W + W)], dt)}"],
            exact)
    else:
        body += row_index.stores(K, [f"out[base + j{{k}}] = {red.store_expr(value, dt)}"],
                                 exact)
    ns = dict(red.namespace(acc), **row_index.NAMESPACE)
    k = _kernels[key] = red.build(name, _source(name, "x, out, rows, r", body), ns, __name__,
                                  threads=B)
    return k


def _col_kernel(dt: np.dtype, acc: np.dtype, log: bool, TX: int, TY: int, K: int
                ) -> gpu.Kernel:
    """Columns held in registers: TX columns x TY row lanes a block, K rows a thread."""
    key = ("col", dt.str, acc.str, log, TX, TY, K)
    if key in _kernels:
        return _kernels[key]
    bf16 = dt == dtypes.bfloat16
    tag = "bf16" if bf16 else dt.name
    name = f"{'log_' if log else ''}softmax_col_{tag}_x{TX}_y{TY}_k{K}"
    alloc, tree = red.cols_reduce(["cm", "cs"], [np.dtype(acc)] * 2, "merge", TX, TY, "c",
                                  broadcast=True)
    body = [*red.cols_head(TX), *alloc, "n = r if col < inner else 0", "base = p * r * inner + col",
            "cm = LOW", "cs = A(0)"]
    for k in range(K):
        body += [f"j{k} = ty + {k * TY}", f"v{k} = LOW", f"if j{k} < n:",
                 f"    v{k} = {red.load_expr(f'x[base + j{k} * inner]', bf16)}",
                 f"    cm, cs = update(cm, cs, v{k}, j{k})"]
    body += tree + _finish(log, "cm", "cs")
    for k in range(K):
        body += [f"if j{k} < n:", f"    out[base + j{k} * inner] = "
                 f"{red.store_expr(_value(log, f'v{k}'), dt)}"]
    source = _source(name, "x, out, r, inner, tiles", body, red.KINDS["lse"][2])
    k = _kernels[key] = red.build(name, source, red.namespace(acc), __name__,
                                  threads=TX * TY)
    return k


def _apply_kernel(dt: np.dtype, acc: np.dtype, log: bool, TX: int, TY: int, K: int
                  ) -> gpu.Kernel:
    """The result from per-line (max, sum of exp) states: TX columns x TY row lanes a block,
    rows ``gridDim.y`` segments of ``seg``; K loads in flight a thread."""
    key = ("apply", dt.str, acc.str, log, TX, TY, K)
    if key in _kernels:
        return _kernels[key]
    bf16 = dt == dtypes.bfloat16
    tag = "bf16" if bf16 else dt.name
    name = f"{'log_' if log else ''}softmax_apply_{tag}_x{TX}_y{TY}_k{K}"
    body = [*red.cols_head(TX), "if col < inner:", "    o = p * inner + col", "    cm = m[o]",
            "    cs = s[o]"]
    loop = [*_finish(log, "cm", "cs"), "base = p * r * inner + col",
            "lo = gpu.blockIdx.y * seg", "hi = min(lo + seg, r)", "j = lo + ty",
            f"while j < hi - {(K - 1) * TY}:"]
    loop += [f"    v{k} = {red.load_expr(f'x[base + (j + {k * TY}) * inner]', bf16)}"
             for k in range(K)]
    loop += [f"    out[base + (j + {k * TY}) * inner] = "
             f"{red.store_expr(_value(log, f'v{k}'), dt)}" for k in range(K)]
    loop += [f"    j += {K * TY}", "while j < hi:",
             f"    v = {red.load_expr('x[base + j * inner]', bf16)}",
             f"    out[base + j * inner] = {red.store_expr(_value(log, 'v'), dt)}",
             f"    j += {TY}"]
    body += ["    " + line for line in loop]
    source = _source(name, "x, m, s, out, r, inner, tiles, seg", body)
    k = _kernels[key] = red.build(name, source, red.namespace(acc), __name__,
                                  threads=TX * TY)
    return k


def split_axis(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """``shape`` as (outer, n, inner) around ``axis``."""
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


_replays = replay.Replays()


def _run(x: Any, out: Any, axis: int, log: bool, config: Config) -> None:
    if x.size == 0:
        return
    key = (x.shape, x.strides, x.dtype, out.strides, axis, log, config)
    _replays.run(key, (x, out), lambda: _run_planned(x, out, axis, log, config))


def _run_planned(x: Any, out: Any, axis: int, log: bool, config: Config) -> None:
    xp = gpu.array_module()
    if not x.flags.c_contiguous:
        x = xp.ascontiguousarray(x)
    outer, n, inner = split_axis(x.shape, axis)
    dt = np.dtype(x.dtype)
    acc = np.dtype(np.float64 if dt == dtypes.float64 else np.float32)
    xs, os_ = gpu.kernel_view(x).reshape(-1), gpu.kernel_view(out).reshape(-1)
    work = config.work
    if inner == 1:
        T = min(red.TMAX, red.pow2ceil(-(-n // work)))
        K = red.pow2ceil(-(-n // T))
        if K <= min(KMAX, config.kmax):
            B = max(T, config.block)
            W = row_index.word_width(n, K, [xs, os_])
            gpu.launch(_row_kernel(dt, acc, log, T, B, K, row_index.is_exact(n, T, K), W),
                       -(-outer // (B // T)), B,
                       [row_index.words(xs, W), row_index.words(os_, W), outer, n])
            return
    else:
        TX = min(32, red.pow2ceil(inner))
        TY = max(1, min(config.block // TX, red.pow2ceil(-(-n // work))))
        K = red.pow2ceil(-(-n // TY))
        tiles = -(-inner // TX)
        if K <= min(KMAX, config.kmax):
            gpu.launch(_col_kernel(dt, acc, log, TX, TY, K), outer * tiles, TX * TY,
                       [xs, os_, n, inner, tiles])
            return
    # Long lines: the online (max, sum of exp) fold, then one streaming pass.
    m, s = red.run("lse", xs, outer, n, inner, acc,
                   Config(block=config.block, work=16, split=config.split),
                   bf16=dt == dtypes.bfloat16)
    TX = min(32, red.pow2ceil(inner)) if inner > 1 else 1
    TY = max(1, config.block // TX)
    K = red.unroll(xs.dtype.itemsize)
    tiles = -(-inner // TX)
    blocks = outer * tiles
    target = red.sms() * max(1, 2048 // (TX * TY)) * 2
    S = max(1, min(-(-target // blocks), -(-n // (TY * 4 * K)), 65535))
    seg = -(-n // S)
    S = -(-n // seg)
    gpu.launch(_apply_kernel(dt, acc, log, TX, TY, K), (blocks, S), TX * TY,
               [xs, m, s, os_, n, inner, tiles, seg])


CONFIGS, SIM_CONFIG = row_index.CONFIGS, row_index.SIM_CONFIG


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


# alias_ok: each element is read before its own output is written, by the same thread, so
# out=x is safe.
@kernel("softmax", backend="cuda", dtypes=dtypes.FLOATS, configs=CONFIGS, heuristic=_heuristic,
        replays=True)
def softmax_cuda(x: Any, *, out: Any, config: Config, axis: int) -> None:
    """Softmax along ``axis`` (already normalized to a non-negative int)."""
    _run(x, out, axis, False, config)


@kernel("log_softmax", backend="cuda", dtypes=dtypes.FLOATS, configs=CONFIGS,
        heuristic=_heuristic, replays=True)
def log_softmax_cuda(x: Any, *, out: Any, config: Config, axis: int) -> None:
    """Log-softmax along ``axis`` (already normalized to a non-negative int)."""
    _run(x, out, axis, True, config)


__all__ = ["CONFIGS", "split_axis"]
