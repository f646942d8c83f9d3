"""CUDA kernels for layernorm and rmsnorm over the last axis, generated per storage dtypes and tile.

The input is viewed as C-contiguous ``(rows, n)`` (a copy first when it is not C-contiguous);
statistics are computed in float32 (float64 for a float64 result), ``gamma``/``beta`` are read
in their own dtypes (any float dtype, any stride) and converted to the compute type per element.
An optional ``residual`` of ``x``'s shape is read in its own dtype with the same index as ``x``
and added to it in the compute type as each element is loaded (``_load``); the result has the
promoted dtype of the two.

- the register path (one read and one write) when ``n <= K * T``, ``K <= kmax`` and the ``K``
  values fit a ``B``-thread block's share of the register file (``_row_tile``): groups of ``T``
  threads (a power of two) own one row each, ``B // T`` rows a block; thread ``t`` keeps
  elements ``t + k * T`` (``k < K``, coalesced across the group) in registers. Layernorm: the
  sum gives ``hi``, the rounded mean; the pair (sum of ``d = x - hi``, sum of ``d * d``) gives
  ``lo``, the mean of ``d`` (what rounding the mean lost), and the variance
  ``(sum(d * d) - sum(d) * lo) / n`` about the exact mean: no cancellation however large the
  mean. Each sum is a xor-shuffle tree (and one shared-memory step across the group's warps,
  ``reduction.rows_reduce``). The row is written from the registers as
  ``((x - hi) - lo) * rstd * gamma + beta``. RMSnorm: one tree, the sum of ``x * x``.
  16-bit rows (x, the residual and out all bfloat16/float16) whose every start is aligned to
  a word of 4 (or 2) elements are read and written a word at a time, gamma/beta too when they
  are contiguous and aligned (``row_index``: wide accesses).
- longer rows: Welford (count, mean, M2) states of each row from the reduction kernels
  (``reduction.run("var", ...)``, split into segments over several blocks when rows are few),
  then a streaming kernel (a block per row segment) writes the result: two reads, one write.
  RMSnorm's mean square is ``M2 / n + mean**2`` (two non-negative terms). With a residual,
  this path first sums ``x + residual`` into a compute-dtype scratch (``_sum_kernel``: the
  statistics kernels of ``reduction.run`` read one operand) and both passes read that.

Trees have fixed shapes, so results are bitwise repeatable. ``out`` may be ``x`` itself: every
element is read before the same thread writes it; so may ``residual``.

The launches of a call (the statistics' scratch buffers included) are recorded per layout
(shapes, strides, dtypes, eps, config, which input ``out`` is, if any) and replayed by later
calls with their own pointers (``replay``): the residual's relocate like ``x``'s. A
non-C-contiguous ``x`` or residual is copied first, so those calls keep planning.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay, row_index
from tsol.kernels.cuda import reduction as red
from tsol.registry import Config, kernel

KMAX = row_index.KMAX
"""Most elements a thread keeps in registers; the register budget (``REGS_PER_WORD``) allows
fewer at 1024 threads: float32 layernorm rows up to 8 * 1024 elements take one pass."""
REGS_BASE = {False: 30, True: 22}
REGS_PER_WORD = {False: 3, True: 2}
"""Registers a row-path thread is budgeted, layernorm (False) and rmsnorm (True):
``REGS_BASE`` for indices, sums and addresses plus ``REGS_PER_WORD`` per 4-byte word of row it
keeps. Measured with nvJitLink 13.5 for sm_90 on rows that are not a multiple of the tile
(exact tiles take fewer): float32 layernorm 47 registers at K=8, 76 at K=16, 92 at K=32,
float64 61 at K=8; rmsnorm float32 37, 53, 85, float64 51 at K=8. Rows within the budget
neither spill nor exceed the register file."""

_FUNCS = '''
@gpu.device
def merge_sum(c0, o0):
    return (c0 + o0,)


@gpu.device
def merge_sum2(c0, c1, o0, o1):
    return c0 + o0, c1 + o1


@gpu.device
def inv_std(var, eps):
    # 1 / sqrt(var + eps) in float64, as the CPU kernels round it.
    return A(1.0 / sqrt_(np.float64(var) + eps))
'''

_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}


def _tag(dt: np.dtype | None) -> str:
    if dt is None:
        return "no"
    return "bf16" if dt == dtypes.bfloat16 else np.dtype(dt).name


class _Dtypes(NamedTuple):
    """The dtypes of a call's operands (None: absent) and of its result."""

    x: np.dtype
    residual: np.dtype | None
    gamma: np.dtype | None
    beta: np.dtype | None
    out: np.dtype

    def key(self) -> tuple[str, ...]:
        return tuple(_tag(d) for d in self)

    def name(self) -> str:
        return "_".join(f"{p}{_tag(d)}" for p, d in zip("xrgbo", self))


def _load(j: str, dts: _Dtypes) -> str:
    """Element ``j`` of the row in the compute type: ``x[j]``, plus ``r[j]`` with a residual."""
    v = red.load_expr(f"x[{j}]", dts.x == dtypes.bfloat16)
    if dts.residual is not None:
        v = f"{v} + {red.load_expr(f'r[{j}]', dts.residual == dtypes.bfloat16)}"
    return v


def _affine(v: str, j: str, dts: _Dtypes, loaded: dict[str, str] | None = None) -> str:
    """``v`` scaled by ``gamma[j]`` and shifted by ``beta[j]`` (those present); ``loaded``:
    the values of those already read (by parameter name)."""
    loaded = loaded or {}
    if dts.gamma is not None:
        v = f"{v} * {loaded.get('g') or red.load_expr(f'g[{j}]', dts.gamma == dtypes.bfloat16)}"
    if dts.beta is not None:
        v = f"{v} + {loaded.get('b') or red.load_expr(f'b[{j}]', dts.beta == dtypes.bfloat16)}"
    return v


def _params(dts: _Dtypes) -> str:
    """The array parameters ahead of ``out``: x, then those of the present operands."""
    present = (("r", dts.residual), ("g", dts.gamma), ("b", dts.beta))
    return "x, " + "".join(f"{p}, " for p, d in present if d is not None)


def _row_kernel(dts: _Dtypes, acc: np.dtype, rms: bool, T: int, B: int, K: int,
                exact: bool, W: int = 1, wide: str = "") -> gpu.Kernel:
    """Rows held in registers: K elements a thread, T threads a row, B // T rows a block;
    ``exact``: rows of exactly T * K elements (``rows``); ``W > 1``: 16-bit rows of x, the
    residual and out read and written a word of W elements at a time
    (``row_index.word_width``), those parameters the words, and so are gamma/beta where
    ``wide`` names them ("g", "b")."""
    key = ("row", dts.key(), acc.str, rms, T, B, K, exact, W, wide)
    if key in _kernels:
        return _kernels[key]
    name = (f"{'rms' if rms else 'layer'}norm_row_{dts.name()}_t{T}_b{B}_k{K}"
            f"{'_x' if exact else ''}{f'_w{W}{wide}' if W > 1 else ''}")
    accs = [np.dtype(acc)]
    body = [*row_index.head(T, B, exact, n="n" if W == 1 else f"n >> {red.log2(W)}"),
            *row_index.slots(T, K // W)]
    if W > 1:
        rows = [("x", dts.x)] + ([] if dts.residual is None else [("r", dts.residual)])
        body += row_index.load_words(K, W, rows, exact, "A(0)")
    else:
        body += row_index.each(K, [f"v{{k}} = {_load('base + j{k}', dts)}"], exact,
                               default=["v{k} = A(0)"])
    if rms:
        alloc, tree = red.rows_reduce(["s2"], accs, "merge_sum", T, B, "a")
        body += alloc + ["s2 = A(0)"] + [f"s2 += v{k} * v{k}" for k in range(K)] + tree
        body += ["rstd = inv_std(s2 / A(n), eps)"]
        value = "v{k} * rstd"
    else:
        alloc_a, tree_a = red.rows_reduce(["s"], accs, "merge_sum", T, B, "a")
        alloc_b, tree_b = red.rows_reduce(["d1", "d2"], accs * 2, "merge_sum2", T, B, "b")
        body += alloc_a + alloc_b + ["s = A(0)"] + [f"s += v{k}" for k in range(K)] + tree_a
        body += ["hi = s / A(n)", "d1 = A(0)", "d2 = A(0)"]
        body += row_index.each(K, ["d = v{k} - hi", "d1 += d", "d2 += d * d"], exact, W=W)
        body += tree_b
        # sum((d - lo)^2) = sum(d^2) - sum(d) * lo, with lo = sum(d) / n.
        body += ["lo = d1 / A(n)", "var = (d2 - d1 * lo) / A(n)",
                 "rstd = inv_std(var if var > A(0) else A(0), eps)"]
        value = "((v{k} - hi) - lo) * rstd"
    if W > 1:
        body += row_index.store_words(K // W, lambda q: _store_word(q, W, value, dts, wide),
                                      exact)
    else:
        body += row_index.stores(K, [f"out[base + j{{k}}] = "
                                     f"{red.store_expr(_affine(value, 'j{k}', dts), dts.out)}"],
                                 exact)
    params = f"{_params(dts)}out, rows, n, eps"
    source = _FUNCS + f"\n\ndef {name}({params}):\n" + red.indent(body, 4) + "\n"
    ns = dict(red.namespace(acc), **row_index.NAMESPACE)
    k = _kernels[key] = red.build(name, source, ns, __name__)
    # B threads of more registers each than the register file holds would not launch at all
    # (float64 layernorm at K = 8 needs 76 a thread, 1024 threads have 64): cap them, so that
    # any toolkit's allocation launches (spilling at worst).
    k.max_registers = gpu.register_cap(B)
    return k


def _store_word(q: int, W: int, value: str, dts: _Dtypes, wide: str) -> list[str]:
    """Lines writing word ``q`` of the row (elements ``v{k}``, ``k = q * W + e``, normalized by
    ``value``) out; gamma/beta are read a word at a time where ``wide`` names them, else an
    element at a time."""
    present = {"g": dts.gamma, "b": dts.beta}
    lines = [f"w{p}{q} = {p}[j{q}]" for p in wide]
    for e in range(W):
        loaded = {p: row_index.unpack(f"w{p}{q}", e, W, present[p]) for p in wide}
        affine = _affine(value.format(k=q * W + e), f"U({W}) * j{q} + U({e})", dts, loaded)
        lines.append(f"y{e} = {affine}")
    return lines + [f"out[base + j{q}] = {row_index.pack([f'y{e}' for e in range(W)], dts.out)}"]


def _apply_kernel(dts: _Dtypes, acc: np.dtype, rms: bool, B: int, U: int) -> gpu.Kernel:
    """The result from per-row Welford (mean, M2) states: a block per segment of ``seg``
    elements of a row (``blockIdx.x`` the row, ``blockIdx.y`` the segment), U loads in flight
    a thread."""
    key = ("apply", dts.key(), acc.str, rms, B, U)
    if key in _kernels:
        return _kernels[key]
    name = f"{'rms' if rms else 'layer'}norm_apply_{dts.name()}_b{B}_u{U}"
    if rms:
        stats = ["mu = mean[row]", "rstd = inv_std(m2[row] / A(n) + mu * mu, eps)"]
        value = "v{u} * rstd"
    else:
        stats = ["mu = mean[row]", "rstd = inv_std(m2[row] / A(n), eps)"]
        value = "(v{u} - mu) * rstd"

    def step(u: str, j: str) -> list[str]:
        return [f"out[base + {j}] = "
                f"{red.store_expr(_affine(value.format(u=u), j, dts), dts.out)}"]

    body = ["tid = gpu.threadIdx.x", "row = gpu.blockIdx.x", *stats, "base = row * n",
            "lo = gpu.blockIdx.y * seg", "hi = min(lo + seg, n)", "j = lo + tid",
            f"while j < hi - {(U - 1) * B}:"]
    body += [f"    v{u} = {_load(f'base + j + {u * B}', dts)}" for u in range(U)]
    for u in range(U):
        body += ["    " + s for s in step(str(u), f"j + {u * B}")]
    body += [f"    j += {U * B}", "while j < hi:",
             f"    v = {_load('base + j', dts)}", *("    " + s for s in step("", "j")),
             f"    j += {B}"]
    params = f"{_params(dts)}mean, m2, out, n, eps, seg"
    source = _FUNCS + f"\n\ndef {name}({params}):\n" + red.indent(body, 4) + "\n"
    k = _kernels[key] = red.build(name, source, red.namespace(acc), __name__)
    return k


def _row_tile(n: int, config: Config, acc: np.dtype, rms: bool) -> tuple[int, int, int] | None:
    """(T, B, K) of the register path for rows of n elements computed in ``acc``, or None when
    they do not fit: more than ``kmax`` values a thread, or more words than ``B`` threads'
    share of the register file holds (``REGS_BASE``, ``REGS_PER_WORD``)."""
    T = min(red.TMAX, red.pow2ceil(-(-n // config.work)))
    K = red.pow2ceil(-(-n // T))
    B = max(T, config.block)
    words = K * np.dtype(acc).itemsize // 4
    regs = REGS_BASE[rms] + words * REGS_PER_WORD[rms]
    if K > min(KMAX, config.kmax) or regs > gpu.register_cap(B):
        return None
    return T, B, K


def _sum_kernel(dts: _Dtypes, acc: np.dtype, B: int) -> gpu.Kernel:
    """``s = x + r`` in ``acc`` over flat arrays (grid-stride): the long-row path's input when
    a residual is given."""
    key = ("sum", dts.x.str, _tag(dts.residual), acc.str, B)
    if key in _kernels:
        return _kernels[key]
    name = f"norm_residual_sum_x{_tag(dts.x)}_r{_tag(dts.residual)}_b{B}"
    body = [f"i = gpu.blockIdx.x * {B} + gpu.threadIdx.x", f"step = gpu.gridDim.x * {B}",
            "while i < size:", f"    s[i] = {_load('i', dts)}", "    i += step"]
    source = f"def {name}(x, r, s, size):\n" + red.indent(body, 4) + "\n"
    k = _kernels[key] = red.build(name, source, red.namespace(acc), __name__)
    return k


def _dt(a: Any) -> np.dtype | None:
    return None if a is None else np.dtype(a.dtype)


def _layout(a: Any) -> Any:
    return None if a is None else (a.shape, a.dtype, a.strides)


_replays = replay.Replays()
"""Recorded launches per call layout: later calls of a layout skip planning (``replay``)."""


def _run(x: Any, residual: Any, gamma: Any, beta: Any, out: Any, eps: float, rms: bool,
         config: Config) -> None:
    if x.size == 0:
        return
    # An out= that aliases x (or the residual) is identical to it (the out= contract): its
    # pointers relocate by that input, which the key names.
    inputs = (x, residual)
    alias = next((i for i, a in enumerate(inputs)
                  if a is not None and replay.data_ptr(a) == replay.data_ptr(out)), None)
    key = (rms, _layout(x), _layout(residual), _layout(gamma), _layout(beta), out.dtype,
           alias, eps, config)
    arrays = [a for a in (x, residual, gamma, beta, None if alias is not None else out)
              if a is not None]
    _replays.run(key, arrays,
                 lambda: _run_planned(x, residual, gamma, beta, out, eps, rms, config))


def _rows_view(a: Any) -> Any:
    """The flat C-order storage the kernels read (a copy first when not C-contiguous)."""
    if not a.flags.c_contiguous:
        a = gpu.array_module().ascontiguousarray(a)
    return gpu.kernel_view(a).reshape(-1)


def _run_planned(x: Any, residual: Any, gamma: Any, beta: Any, out: Any, eps: float,
                 rms: bool, config: Config) -> None:
    n = x.shape[-1]
    rows = x.size // n
    dts = _Dtypes(np.dtype(x.dtype), _dt(residual), _dt(gamma), _dt(beta), np.dtype(out.dtype))
    acc = np.dtype(np.float64 if dts.out == dtypes.float64 else np.float32)
    xs, os_ = _rows_view(x), gpu.kernel_view(out).reshape(-1)
    ins = [xs] + ([] if residual is None else [_rows_view(residual)])
    params = [gpu.kernel_view(p) for p in (gamma, beta) if p is not None]
    tile = _row_tile(n, config, acc, rms)
    if tile is not None:
        T, B, K = tile
        W = row_index.word_width(n, K, [*ins, os_])
        # gamma/beta are read a word at a time where they allow it, else an element at a time
        # (any stride: every row reads them again, from the cache).
        letters = [p for p, a in zip("gb", (gamma, beta)) if a is not None]     # of params
        wide = "".join(p for p, v in zip(letters, params)
                       if W > 1 and row_index.word_width(n, W, [v]) == W)
        gpu.launch(_row_kernel(dts, acc, rms, T, B, K, row_index.is_exact(n, T, K), W, wide),
                   -(-rows // (B // T)), B,
                   [*(row_index.words(a, W) for a in ins),
                    *(row_index.words(v, W if p in wide else 1) for p, v in zip(letters, params)),
                    row_index.words(os_, W), rows, n, float(eps)])
        return
    B = config.block
    if residual is not None:
        # The statistics kernels read one operand: give them x + residual, summed once.
        xs = replay.scratch(x.size, acc)
        grid = max(1, min(-(-x.size // B), red.sms() * max(1, 2048 // B) * 4))
        gpu.launch(_sum_kernel(dts, acc, B), grid, B, [*ins, xs, x.size])
        dts = dts._replace(x=acc, residual=None)
        ins = [xs]
    # Long rows: Welford states per row (segments over several blocks when rows are few),
    # then one streaming pass.
    _, mean, m2 = red.run("var", xs, rows, n, 1, acc,
                          Config(block=config.block, work=16, split=config.split),
                          bf16=dts.x == dtypes.bfloat16)
    U = red.unroll(xs.dtype.itemsize)
    target = red.sms() * max(1, 2048 // B) * 2
    S = max(1, min(-(-target // rows), -(-n // (B * 4 * U)), 65535))
    seg = -(-n // S)
    S = -(-n // seg)
    gpu.launch(_apply_kernel(dts, acc, rms, B, U), (rows, S), B,
               [*ins, *params, mean, m2, os_, n, float(eps), seg])


def _supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    # gamma/beta/residual may be absent (None); the op's meta rule has checked their shapes.
    return metas[0].dtype in dtypes.FLOATS and all(
        m is None or m.dtype in dtypes.FLOATS for m in metas[1:])


CONFIGS, SIM_CONFIG = row_index.CONFIGS, row_index.SIM_CONFIG


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


@kernel("layernorm", backend="cuda", configs=CONFIGS, supports=_supports, heuristic=_heuristic,
        replays=True)
def layernorm_cuda(x: Any, gamma: Any, beta: Any, residual: Any, *, out: Any, config: Config,
                   eps: float) -> None:
    """Layernorm of ``x`` (+ ``residual``) over the last axis; statistics in float32 (float64
    for a float64 result)."""
    _run(x, residual, gamma, beta, out, eps, False, config)


@kernel("rmsnorm", backend="cuda", configs=CONFIGS, supports=_supports, heuristic=_heuristic,
        replays=True)
def rmsnorm_cuda(x: Any, gamma: Any, residual: Any, *, out: Any, config: Config,
                 eps: float) -> None:
    """RMSnorm of ``x`` (+ ``residual``) over the last axis; statistics in float32 (float64
    for a float64 result)."""
    _run(x, residual, gamma, None, out, eps, True, config)


__all__ = ["CONFIGS", "KMAX"]
