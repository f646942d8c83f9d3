"""CUDA kernels for cross_entropy, mse and kl_divergence, generated per storage dtypes and tile.

cross_entropy: the logits are viewed as C-contiguous ``(R, C)`` rows (PyTorch's class axis
moved last: free for [C] and [N, C], one copy for [N, C, d1, ...] or other layouts). Groups of
``T`` threads own one row each, ``B // T`` rows a block: the row max is a xor-shuffle tree
(``reduction.rows_reduce``), then the sum of ``exp(x - max)`` (with probability targets also
the sums of ``p`` and of ``p * (max - x)``, all non-negative, so no cancellation) is a second
tree; thread 0 of the group gathers ``x[target]`` and writes the row's loss
``max + log(sum) - x[target]`` in float64 (or in the output dtype for reduction="none").
Rows of up to ``kmax * 1024`` elements (``16 * 1024`` in float64: the logits may take half of
the 64 registers a thread of a 1024-thread block has) are read once into registers; longer rows
are read twice, streaming (the second read mostly hits L2). Every kernel is compiled with its
block's register cap, so it launches. A row whose class index is out of range (and not
``ignore_index``) gets a NaN loss; for a mean or sum, and when value checks are on, each row
also records whether its target was ignored, counted or out of range.

mse / kl_divergence: one grid-stride pass over the broadcast elements (operands that are a
single element are read as scalars, other broadcasts are first copied), four loads in flight a
thread, writing the pointwise loss for reduction="none", else summing it in float64 per thread,
then per block through a tree: one partial a block, a fixed grid of at most ``GRID`` blocks.

The mean/sum of per-row losses or block partials is one more kernel: a single block folds them
in float64 in a fixed order (thread ``i`` takes ``i, i + B, ...``, then a tree), counts the
non-ignored targets for the mean (an out-of-range row adds its NaN), and with value checks
finds the first out-of-range target. Every order is fixed by the shapes and the config alone,
so results are bitwise repeatable; no float atomics.

On CUDA an out-of-range target gives NaN instead of raising, unless value checks are on
(``tsol.config`` ``check_values``, ``TSOL_CHECK_VALUES=1``): then it raises ``ArgumentError``
as on the CPU, which takes one device-to-host copy of one integer after the kernels (a host
sync) per call with class-index targets. By default no loss syncs.

The launches of a call are recorded per layout (shapes, strides, dtypes, attributes, config)
and replayed by later calls with their own pointers (``replay``); calls that copy an operand
on the way keep planning. All three kernels are also marked ``replays``: planned eager calls
and compiled schedules replay their launches without running their host code, except
cross_entropy's with value checks, whose calls opt out (``replay.unreplayable``) so that each
reads the flag back. The host code of mse and kl_divergence decides on layouts alone; the mean
or sum of no elements, filled on the host, opts out too.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tsol import config as settings
from tsol import dtypes
from tsol.kernels.cuda import gpu, replay, row_index
from tsol.kernels.cuda import reduction as red
from tsol.ops.loss import class_axis, target_out_of_range
from tsol.registry import Config, kernel

KMAX = 32
"""Most logits a thread keeps in registers: rows up to 32 * 1024 classes in one read."""
GRID = 1024
"""Most blocks of the pointwise pass (its partials are folded by one block)."""

_FUNCS = red.ONLINE_MERGES + '''

@gpu.device
def merge_sum3(c0, c1, c2, o0, o1, o2):
    return c0 + o0, c1 + o1, c2 + o2


@gpu.device
def merge_sum2(c0, c1, o0, o1):
    return c0 + o0, c1 + o1


@gpu.device
def merge_fin(c0, c1, c2, o0, o1, o2):
    # (sum, count, first bad index)
    return c0 + o0, c1 + o1, (o2 if o2 < c2 else c2)
'''

_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}


def _tag(dt: Any) -> str:
    dt = np.dtype(dt)
    return "bf16" if dt == dtypes.bfloat16 else dt.name


def _build(name: str, params: str, body: Sequence[str], acc: np.dtype) -> gpu.Kernel:
    source = _FUNCS + f"\n\ndef {name}({params}):\n" + red.indent(body, 4) + "\n"
    return red.build(name, source, dict(red.namespace(acc), U=row_index.U), __name__)


def _head(T: int, B: int) -> list[str]:
    return ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5",
            f"t = tid & {T - 1}", f"row = gpu.blockIdx.x * {B // T} + (tid >> {red.log2(T)})"]


def _passes(first: Sequence[str], second: Sequence[str], loads: Sequence[str], between:
            Sequence[str], regs: bool, T: int, K: int, U: int) -> list[str]:
    """Two passes over a row of ``m`` elements at ``base``: ``first`` then ``second`` (lines
    in ``v``, the element, ``j`` its index, ``{s}`` the suffix of per-element names), with
    ``between`` run by every thread in between. ``regs``: the elements stay in registers
    (``K`` a thread), else each pass streams them (``U`` loads in flight a thread)."""
    def fmt(lines: Sequence[str], s: str, j: str) -> list[str]:
        return [line.format(v=f"v{s}", j=j, s=s) for line in lines]

    body: list[str] = []
    if regs:
        def each(lines: Sequence[str], default: Sequence[str] = ()) -> list[str]:
            return row_index.each(K, fmt(lines, "{k}", "j{k}"), False, default)
        body += row_index.slots(T, K) + each(loads, ["v{k} = LOW"])
        body += [s.format(k=k) for k in range(K) for s in fmt(first, "{k}", "j{k}")]
        return body + list(between) + each(second)
    for lines, rest in ((first, between), (second, [])):
        body += ["j = t", f"while j < m - {(U - 1) * T}:"]
        for u in range(U):
            body += ["    " + s for s in fmt(loads, str(u), f"j + {u * T}")]
        for u in range(U):
            body += ["    " + s for s in fmt(lines, str(u), f"j + {u * T}")]
        body += [f"    j += {U * T}", "while j < m:", *("    " + s for s in fmt(loads, "", "j")),
                 *("    " + s for s in fmt(lines, "", "j")), f"    j += {T}", *rest]
    return body


def _ce_kernel(dt: np.dtype, tdt: np.dtype | None, acc: np.dtype, sink: str, ignore: bool,
               regs: bool, T: int, B: int, K: int, stat: bool = True) -> gpu.Kernel:
    """Per-row cross-entropy of (rows, n) logits ``x``; ``tdt``: the class-index dtype, None
    for probability targets ``p``; ``sink``: 'none' (losses into ``out``) or 'per' (float64
    into ``per``); ``ignore``: targets equal to ``ignore`` are skipped (loss 0); a target out
    of range gives a NaN loss; ``stat``: class-index rows also write whether their target was
    ignored (0), counted (1) or out of range (2) into ``stat``."""
    U = red.unroll(dt.itemsize)
    probs = tdt is None
    stat = stat and not probs
    key = ("ce", dt.str, None if probs else tdt.str, acc.str, sink, ignore, stat, regs, T, B,
           K if regs else U)
    if key in _kernels:
        return _kernels[key]
    bf16 = dt == dtypes.bfloat16
    name = (f"cross_entropy_{'regs' if regs else 'stream'}_{_tag(dt)}_"
            f"{'probs' if probs else _tag(tdt)}_{sink}{'_ign' if ignore else ''}"
            f"{'_stat' if stat else ''}_t{T}_b{B}_{'k' if regs else 'u'}{K if regs else U}")
    f32 = [np.dtype(acc)]
    alloc_a, tree_a = red.rows_reduce(["mx"], f32, "merge_max", T, B, "a")
    sums = ["s", "sp", "spd"] if probs else ["s"]
    alloc_b, tree_b = red.rows_reduce(sums, f32 * len(sums),
                                      "merge_sum3" if probs else "merge_sum", T, B, "b")
    loads = [f"{{v}} = {red.load_expr('x[base + {j}]', bf16)}"]
    first = ["mx = {v} if {v} > mx or {v} != {v} else mx"]
    second = ["s += exp_({v} - shift)"]
    if probs:
        second = [f"q{{s}} = {red.load_expr('p[base + {j}]', bf16)}", *second,
                  "sp += q{s}", "spd += q{s} * (shift - {v})"]
    between = [*tree_a, "shift = mx if finite(mx) else A(0)", *(f"{v} = A(0)" for v in sums)]
    # The register path indexes with unsigned offsets (``row_index``), the streaming one signed.
    head = row_index.head(T, B, False) if regs else [
        *_head(T, B), "m = n if row < rows else 0", "base = row * n"]
    # The target's class and logit are fetched first, so that their dependent loads overlap
    # the row's instead of following the reductions.
    cast = "U" if regs else "I64"            # the offsets' signedness (a mix computes in float)
    fetch = [] if probs else [
        "ti = I64(0)", "xt = A(0)", "if t == 0 and row < rows:", "    ti = I64(tg[row])",
        "    if ti >= 0 and ti < n:",
        f"        xt = {red.load_expr(f'x[base + {cast}(ti)]', bf16)}"]
    body = [*head, *alloc_a, *alloc_b, *fetch, "mx = LOW",
            *_passes(first, second, loads, between, regs, T, K, U), *tree_b]
    tail = ["ls = log_(np.float64(s))"]
    if probs:
        # A row of no classes (or of zero probabilities) adds nothing, even where ls is -inf.
        tail += ["loss = np.float64(spd) + (ls * np.float64(sp) if sp != A(0) else 0.0)"]
    else:
        def branch(loss: str, st: int) -> list[str]:
            return [f"    loss = {loss}"] + ([f"    st = {st}"] if stat else [])
        tail += ["if ti == ign:", *branch("0.0", 0), "elif ti < 0 or ti >= n:"] \
            if ignore else ["if ti < 0 or ti >= n:"]
        tail += [*branch("np.float64(np.nan)", 2), "else:",
                 *branch("(np.float64(shift) + ls) - np.float64(xt)", 1)]
        tail += ["stat[row] = np.int8(st)"] if stat else []
    tail.append(f"out[row] = {red.store_expr('loss', dt)}" if sink == "none" else
                "per[row] = loss")
    body += ["if t == 0 and row < rows:", *("    " + s for s in tail)]
    params = ("x, p, " if probs else "x, tg, ") + ("out, " if sink == "none" else "per, ")
    params += ("stat, " if stat else "") + "rows, n" + (", ign" if ignore else "")
    k = _kernels[key] = _build(name, params, body, acc)
    # B threads of more registers each than the register file holds would not launch at all
    # (float32 rows of 32000 classes keep 32 logits a thread: 79 registers, 1024 threads have
    # 64 each): cap them, so that any toolkit's allocation launches (spilling at worst).
    k.max_registers = gpu.register_cap(B)
    return k


def _finish_kernel(out_dt: np.dtype | None, stat: bool, mode: str, B: int,
                   check: bool = False) -> gpu.Kernel:
    """One block folding ``L`` float64 ``per`` values in a fixed order into ``out[0]``: their
    sum ('sum'), or the sum over ``count`` ('mean'). With ``stat`` (class-index rows) the
    ignored rows (stat 0) are left out, an out-of-range row (stat 2) adds its NaN, and the mean
    divides by the rows whose stat is 1. With ``check`` the first index whose stat is 2 (``L``
    if none) goes to ``info[0]``; mode 'check' does only that."""
    key = ("fin", None if out_dt is None else out_dt.str, stat, mode, B, check)
    if key in _kernels:
        return _kernels[key]
    name = (f"loss_finish_{mode}_{'stat' if stat else 'all'}{'_check' if check else ''}_"
            f"{_tag(out_dt or np.int8)}_b{B}")
    f64, i64 = np.dtype(np.float64), np.dtype(np.int64)
    vs, dts, merge = (["s", "c", "bad"], [f64, i64, i64], "merge_fin") if check else \
        (["s", "c"], [f64, i64], "merge_sum2") if stat else (["s"], [f64], "merge_sum")
    alloc, tree = red.rows_reduce(vs, dts, merge, B, B, "f")
    body = [*_head(B, B), *alloc, "s = A(0)", "c = I64(0)", *(["bad = I64(L)"] if check else []),
            "j = tid", "while j < L:"]
    if stat:
        body += ["    st = stat[j]", "    if st == 1:", "        c += 1"]
        body += ["    if st != 0:", "        s += per[j]"] if mode != "check" else []
        body += ["    if st == 2 and bad == L:", "        bad = j"] if check else []
    else:
        body += ["    s += per[j]"]
    body += [f"    j += {B}", *tree, "if tid == 0:"]
    if check:
        body += ["    info[0] = bad"]
    if stat:
        body += ["    count = A(c)"]
    if mode != "check":
        value = "s" if mode == "sum" else "(s / count if count != A(0) else A(np.nan))"
        body += [f"    out[0] = {red.store_expr(value, out_dt)}"]
    params = ", ".join((["per"] if mode != "check" else []) + (["stat"] if stat else []) +
                       ["L"] + ([] if stat else ["count"]) +
                       (["out"] if mode != "check" else []) + (["info"] if check else []))
    k = _kernels[key] = _build(name, params, body, np.dtype(np.float64))
    k.max_registers = gpu.register_cap(B)
    return k


POINTWISE = {
    "mse": ["d{s} = {x} - {y}", "{v} = d{s} * d{s}"],
    "kl": ["{v} = ({y} * log_({y}) if {y} != A(0) else A(0)) - {y} * {x}"],
    "kl_log": ["{v} = exp_({y}) * ({y} - {x})"],
}
"""Pointwise losses in the compute type A: lines in ``x`` (pred / input), ``y`` (target)."""


def _pointwise_kernel(name: str, adt: np.dtype, bdt: np.dtype, modes: tuple[str, str],
                      out_dt: np.dtype, sink: str, B: int) -> gpu.Kernel:
    """Grid-stride pass over ``n`` flat elements of ``a`` and ``b`` (each 'flat' or a 'scalar'):
    the pointwise loss into ``out`` (sink 'none') or float64 block sums into ``part``."""
    key = ("pw", name, adt.str, bdt.str, modes, out_dt.str, sink, B)
    if key in _kernels:
        return _kernels[key]
    acc = np.dtype(np.float64 if out_dt == dtypes.float64 else np.float32)
    U = 4
    kname = f"loss_{name}_{_tag(adt)}_{_tag(bdt)}_{'_'.join(modes)}_{_tag(out_dt)}_{sink}_b{B}"

    def element(s: str, i: str) -> list[str]:
        xi, yi = (i if mode == "flat" else "0" for mode in modes)
        lines = [f"x{s} = {red.load_expr(f'a[{xi}]', adt == dtypes.bfloat16)}",
                 f"y{s} = {red.load_expr(f'b[{yi}]', bdt == dtypes.bfloat16)}"]
        return lines + [line.format(x=f"x{s}", y=f"y{s}", v=f"v{s}", s=s)
                        for line in POINTWISE[name]]

    def use(s: str, i: str) -> str:
        return (f"out[{i}] = {red.store_expr(f'v{s}', out_dt)}" if sink == "none" else
                f"tot += np.float64(v{s})")

    alloc, tree = red.rows_reduce(["tot"], [np.dtype(np.float64)], "merge_sum", B, B, "p") \
        if sink == "part" else ([], [])
    body = [*_head(B, B), *alloc, f"step = gpu.gridDim.x * {B}", f"i = gpu.blockIdx.x * {B} + tid",
            "tot = np.float64(0)", f"while i < n - {U - 1} * step:"]
    for u in range(U):
        body += ["    " + s for s in element(str(u), f"i + {u} * step")]
    body += [f"    {use(str(u), f'i + {u} * step')}" for u in range(U)]
    body += [f"    i += {U} * step", "while i < n:", *("    " + s for s in element("", "i")),
             f"    {use('', 'i')}", "    i += step", *tree]
    if sink == "part":
        body += ["if tid == 0:", "    part[gpu.blockIdx.x] = tot"]
    params = "a, b, n, " + ("out" if sink == "none" else "part")
    k = _kernels[key] = _build(kname, params, body, acc)
    k.max_registers = gpu.register_cap(B)
    return k


# --- launching --------------------------------------------------------------------------------

_replays = replay.Replays()
"""Recorded launches per call layout: later calls of a layout skip planning (``replay``)."""


def _fin_block() -> int:
    return 32 if gpu.SIMULATOR else 1024


# --- cross_entropy ----------------------------------------------------------------------------

def _rows(a: Any) -> Any:
    """PyTorch-layout logits (or probabilities) as C-contiguous (R, C) rows."""
    xp = gpu.array_module()
    if a.ndim == 1:
        return xp.ascontiguousarray(a).reshape(1, -1)
    rows = math.prod(a.shape[:1] + a.shape[2:])
    return xp.ascontiguousarray(xp.moveaxis(a, 1, -1)).reshape(rows, a.shape[1])


def _ce(logits: Any, targets: Any, out: Any, reduction: str, ignore: int | None,
        config: Config) -> None:
    probs = targets.dtype in dtypes.FLOATS
    if ignore is not None and not -2 ** 63 <= ignore < 2 ** 63:
        ignore = None                   # no int64 class index can equal it
    check = not probs and settings.get().check_values
    info = None
    if check:
        # The kernels write the first out-of-range row to ``info``, an operand of the inner
        # replay (not scratch), so that it is read after a replayed launch sequence too; a
        # replay of the whole call would skip the read.
        replay.unreplayable()
        info = gpu.array_module().empty(1, np.int64)
    key = ("ce", logits.shape, logits.strides, logits.dtype, targets.shape, targets.strides,
           targets.dtype, out.shape, out.strides, out.dtype, reduction, ignore, check, config)
    arrays = (logits, targets, out) if info is None else (logits, targets, out, info)
    _replays.run(key, arrays, lambda: _ce_planned(logits, targets, out, info, reduction, ignore,
                                                  config))
    rows = math.prod(targets.shape)
    if info is None or rows == 0 or gpu.COMPILE_ONLY:
        return
    # The host sync of value checks: whether some target was out of range.
    bad = int(info[0]) if gpu.HOST_ARRAYS else int(info.get()[0])
    if bad < rows:
        raise target_out_of_range(targets, bad, logits.shape[class_axis(logits.ndim)], ignore,
                                  [targets])


def _ce_tile(c: int, config: Config, acc: np.dtype) -> tuple[int, int, int, bool]:
    """(T, B, K, regs) for rows of ``c`` classes: groups of ``T`` threads, ``B`` threads a
    block, ``K`` logits a thread; ``regs``: they stay in registers, which needs ``K`` within
    ``kmax`` and their words within half a thread's share of the register file (the other
    half holds indices, sums and addresses; float64 rows of 32000 classes at 1024 threads
    would spill hundreds of bytes a thread, so they stream instead)."""
    T = min(red.TMAX, red.pow2ceil(-(-c // config.work)))
    K = red.pow2ceil(-(-c // T))
    B = max(T, config.block)
    words = K * np.dtype(acc).itemsize // 4
    return T, B, K, K <= min(KMAX, config.kmax) and words <= gpu.register_cap(B) // 2


def _ce_planned(logits: Any, targets: Any, out: Any, info: Any, reduction: str,
                ignore: int | None, config: Config) -> None:
    """Plan and launch one call: per-row losses, then (unless reduction="none") the fold,
    and with ``info`` (value checks, class indices) the range check into ``info``."""
    probs = targets.dtype in dtypes.FLOATS
    c = logits.shape[class_axis(logits.ndim)]
    x = _rows(logits)
    rows = x.shape[0]
    dt = np.dtype(logits.dtype)
    acc = np.dtype(np.float64 if dt == dtypes.float64 else np.float32)
    xs = gpu.kernel_view(x).reshape(-1)
    tg = gpu.kernel_view(_rows(targets)).reshape(-1) if probs else \
        gpu.array_module().ascontiguousarray(targets).reshape(-1)
    T, B, K, regs = _ce_tile(c, config, acc)
    sink = "none" if reduction == "none" else "per"
    # Class-index rows note their status for the fold's count and for the check.
    stat = None if probs or (sink == "none" and info is None) else \
        replay.scratch(rows, np.int8)
    kern = _ce_kernel(dt, None if probs else np.dtype(tg.dtype), acc, sink,
                      ignore is not None and not probs, regs, T, B, K, stat is not None)
    per = None if sink == "none" else replay.scratch(rows, np.float64)
    args = [xs, tg, red.out_storage(out).reshape(-1) if per is None else per]
    if stat is not None:
        args.append(stat)
    args += [rows, c] + ([ignore] if ignore is not None and not probs else [])
    gpu.launch(kern, -(-rows // (B // T)), B, args)
    if sink == "none" and (info is None or rows == 0):
        return
    FB = _fin_block()
    mode = "check" if sink == "none" else reduction
    fin = _finish_kernel(None if mode == "check" else np.dtype(out.dtype), not probs, mode, FB,
                         info is not None)
    args = [per] if mode != "check" else []
    if stat is not None:
        args.append(stat)
    args.append(rows)
    if probs:
        args.append(float(rows))
    if mode != "check":
        args.append(red.out_storage(out).reshape(-1))
    if info is not None:
        args.append(info)
    gpu.launch(fin, 1, FB, args)


# --- mse and kl_divergence --------------------------------------------------------------------

def _pointwise(name: str, a: Any, b: Any, out: Any, reduction: str, config: Config) -> None:
    shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    n = math.prod(shape)
    if n == 0:
        if reduction != "none":
            # Filled on the host, not by a launch: a replay would skip it (and leave the
            # result unwritten), so a recorded call with no elements is never replayed.
            replay.unreplayable()
            count = (shape[0] if shape else 1) if reduction == "batchmean" else n
            red.fill(out, 0.0 if reduction == "sum" or count else np.nan)
        return
    key = (name, reduction, a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype,
           out.shape, out.strides, out.dtype, config)
    _replays.run(key, (a, b, out), lambda: _pointwise_planned(name, a, b, out, shape, reduction,
                                                              config))


def _pointwise_planned(name: str, a: Any, b: Any, out: Any, shape: tuple[int, ...],
                       reduction: str, config: Config) -> None:
    """Plan and launch one call of ``n > 0`` broadcast elements of ``shape``."""
    n = math.prod(shape)

    def mode(v: Any) -> str:
        return "scalar" if v.size == 1 else "flat" if tuple(v.shape) == shape and \
            v.flags.c_contiguous else "copy"

    modes = (mode(a), mode(b))
    xp = gpu.array_module()
    ops = [gpu.kernel_view(v if m != "copy" else
                           xp.ascontiguousarray(xp.broadcast_to(v, shape))).reshape(-1)
           for v, m in zip((a, b), modes)]
    modes = tuple("flat" if m == "copy" else m for m in modes)
    if n == 1:
        modes = ("scalar", "scalar")
    B = config.block
    grid = min(GRID, -(-n // (B * 4)))
    sink = "none" if reduction == "none" else "part"
    kern = _pointwise_kernel(name, np.dtype(a.dtype), np.dtype(b.dtype), modes,
                             np.dtype(out.dtype), sink, B)
    if sink == "none":
        gpu.launch(kern, grid, B, [*ops, n, red.out_storage(out).reshape(-1)])
        return
    part = replay.scratch(grid, np.float64)
    gpu.launch(kern, grid, B, [*ops, n, part])
    count = (shape[0] if shape else 1) if reduction == "batchmean" else n
    FB = _fin_block()
    fin = _finish_kernel(np.dtype(out.dtype), False, "sum" if reduction == "sum" else "mean", FB)
    gpu.launch(fin, 1, FB, [part, grid, float(count), red.out_storage(out).reshape(-1)])


# --- registration -----------------------------------------------------------------------------

CONFIGS = [Config(block=256, work=8, kmax=KMAX), Config(block=256, work=16, kmax=KMAX),
           Config(block=128, work=8, kmax=KMAX), Config(block=512, work=4, kmax=KMAX)]
"""``block``: threads a block (at least); ``work``: logits a thread aims at (rows of 8192 in
groups of 1024 threads, 8 registers each); ``kmax``: most logits a thread keeps in registers
(longer rows are read twice)."""
SIM_CONFIG = Config(block=32, work=8, kmax=KMAX)
"""Under the simulator (every thread a Python thread): small blocks."""


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


def _ce_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return metas[0].dtype in dtypes.FLOATS


def _pair_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return all(m.dtype in dtypes.FLOATS for m in metas)


@kernel("cross_entropy", backend="cuda", supports=_ce_supports, configs=CONFIGS,
        heuristic=_heuristic, replays=True)
def cross_entropy_cuda(logits: Any, targets: Any, *, out: Any, config: Config, reduction: str,
                       ignore_index: int | None) -> None:
    """Per-row losses in one pass, then a fixed-order float64 mean/sum. A class index outside
    [0, C) gives NaN; with ``check_values`` it raises ArgumentError (one host sync)."""
    _ce(logits, targets, out, reduction, ignore_index, config)


@kernel("mse", backend="cuda", supports=_pair_supports, configs=CONFIGS, heuristic=_heuristic,
        replays=True)
def mse_cuda(pred: Any, target: Any, *, out: Any, config: Config, reduction: str) -> None:
    """Squared differences in one pass; sums in float64 per block, then in one block."""
    _pointwise("mse", pred, target, out, reduction, config)


@kernel("kl_divergence", backend="cuda", supports=_pair_supports, configs=CONFIGS,
        heuristic=_heuristic, replays=True)
def kl_divergence_cuda(input: Any, target: Any, *, out: Any, config: Config, reduction: str,
                       log_target: bool) -> None:
    """PyTorch's pointwise KL in one pass; sums in float64 per block, then in one block."""
    _pointwise("kl_log" if log_target else "kl", input, target, out, reduction, config)


__all__ = ["CONFIGS", "KMAX", "GRID", "POINTWISE"]
