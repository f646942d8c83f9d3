"""CUDA kernels for flash_attention and rope, generated per storage dtype and tile.

flash_attention, SIMT (every float dtype; fp32 compute, fp64 for fp64): one block of ``W`` warps
per (batch x head, query tile of ``BQ = W * R`` rows), heavy causal tiles launched first. The
block stages its query tile (times ``scale``) in shared memory, then walks key tiles of
``BK = 32 * KPL`` keys: K (rows padded to D + 1 against bank conflicts) and V tiles are loaded
into shared memory, warp ``w`` owns rows ``w * R ... w * R + R - 1``, lane ``l`` computes the
scores of keys ``l, l + 32, ...`` for its warp's rows, the tile's row max is a xor-shuffle
tree, ``P = exp(S - m)`` goes to shared memory and lane ``l`` accumulates output columns
``l, l + 32, ...`` of ``P V`` in registers, rescaled by ``alpha = exp(m_old - m)`` (the online
softmax). Row sums stay per lane until one shuffle tree at the end. Memory is O(S * D); no
S x Skv buffer exists. Causal runs stop at the last key tile the tile's bottom row sees.

flash_attention, tensor cores (float16, bfloat16; D and Dv multiples of 16 up to 128): the
FlashAttention-2 forward on ``tensorcore``'s mma.sync m16n8k16 (fp32 accumulation), ldmatrix
and cp.async. A block of 4 warps owns 64 query rows (16 a warp, their Q fragments kept in
registers) and walks 64-key tiles: S = Q K^T stays in the accumulator fragments, the row max
and sum run over the 4 lanes of a row (two xor shuffles), P is packed to 16-bit pairs in
registers as the A operand of P V (``attention.cu``), and V tiles go through a transposing
ldmatrix. The V tile streams in while S is computed, the next K tile while P V is. Shared rows
are padded by 16 bytes against bank conflicts. The heuristic picks it whenever the dtype and
head dims allow (and no explicit tiles are asked); the SIMT kernel covers everything else.

An additive mask (any float dtype, broadcastable to [B, H, S, Skv]) reaches either kernel as a
[B, H, S, Skv] broadcast view (zero strides, no copy) and selects its masked variant, generated
apart so that the unmasked kernels' code is unchanged: per key tile each thread adds the mask
entries of the scores it holds (SIMT: lane ``l``'s keys, consecutive across the warp; tensor
cores: the accumulator fragment's pairs of adjacent keys, in base 2 like the scores), before the
row max. Every mask element a block needs is read once, straight from global memory.

rope: first a small kernel fills the cos/sin table of the ``period`` distinct row positions x
D/2 pairs: angles ``pos * inv_freq[i]`` in float64 (``inv_freq`` a small cached table, NumPy's
float64 powers), reduced to [-pi, pi] in float64, then cos/sin in float32 (the
special-function unit's for float16 and bfloat16; float64 for float64). Then a 2-d
grid-stride kernel over the rows of x viewed as ``(rows, D)`` (TX threads along the pairs of a
row, TY rows a block, U rows a thread in flight) rotates each pair by its row's table entries
(row r has position ``r % period``): one read and one write of x, the table read from cache,
and no transcendental per element of x. When the positions are nearly one a row (``period``
above a quarter of the rows) the table would be as large as x: the rows compute their own
angles instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
from tsol.kernels.cuda import reduction as red
from tsol.registry import Config, kernel

_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}
_prepared: dict[tuple[Any, ...], gpu.Prepared] = {}


def _acc(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float64 if dt == dtypes.float64 else np.float32)


def _tag(dt: np.dtype) -> str:
    return "bf16" if dt == dtypes.bfloat16 else dt.name


def _load(src: str, dt: np.dtype) -> str:
    return red.load_expr(src, dt == dtypes.bfloat16)


def _launch(kern: gpu.Kernel, grid: Any, block: int, args: Sequence[Any], shared: int = 0
            ) -> None:
    """``gpu.launch`` through a prepared launch keyed by every argument but the data pointers."""
    arrays = [a for a in args if not isinstance(a, (bool, int, float))]
    layout = (id(kern), grid, block, shared, *[
        (type(a), a) if isinstance(a, (bool, int, float)) else (a.shape, a.strides, a.dtype.str)
        for a in args])
    prepared = _prepared.get(layout)
    if prepared is None:
        prepared = gpu.prepare(kern, grid, block, args, shared)
        if prepared is None:
            gpu.launch(kern, grid, block, args, shared)
            return
        if len(_prepared) > 4096:
            _prepared.clear()
        _prepared[layout] = prepared
    prepared([a.data.ptr for a in arrays])


# --- flash_attention, SIMT ----------------------------------------------------------------

_NANMAX = '''
@gpu.device
def nanmax(a, b):
    return b if b > a or b != b else a
'''


def _mask_tag(mdt: np.dtype | None) -> str:
    return "" if mdt is None else f"_mask_{_tag(mdt)}"


def _simt_kernel(dt: np.dtype, d: int, dv: int, W: int, R: int, KPL: int,
                 mdt: np.dtype | None = None) -> gpu.Kernel:
    """The SIMT kernel for head dims ``d``/``dv``: W warps, R rows a warp, 32 * KPL keys a tile;
    ``mdt``: the dtype of an additive [B, H, S, Skv] mask, None for the kernel without one."""
    key = ("simt", dt.str, d, dv, W, R, KPL, None if mdt is None else mdt.str)
    if key in _kernels:
        return _kernels[key]
    acc = _acc(dt)
    name = f"flash_attention_simt_{_tag(dt)}_d{d}_v{dv}_w{W}_r{R}_k{KPL}{_mask_tag(mdt)}"
    BQ, BK, NT = W * R, 32 * KPL, 32 * W
    DT = gpu.cdiv(max(dv, 1), 32)
    DVP, KS = 32 * DT, d + 1
    OV, OQ = BK * KS, BK * KS + BK * DVP
    OP = OQ + BQ * d
    rows, keys, cols = range(R), range(KPL), range(DT)
    body = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5",
            "nh = q.shape[1]", "bh = gpu.blockIdx.x", "b = bh // nh", "h = bh - b * nh",
            "hk = h // group", "s_len = q.shape[2]", "skv = k.shape[2]",
            f"i0 = (gpu.gridDim.y - 1 - gpu.blockIdx.y) * {BQ}",
            "smem = gpu.shared_array(0, SDT)", f"scr = gpu.shared_array({red.SCR}, A)",
            "sc = A(scale)",
            f"for e in range(tid, {BQ * d}, {NT}):", f"    r = e // {d}", f"    c = e - r * {d}",
            "    val = A(0)", "    if i0 + r < s_len:",
            f"        val = {_load('q[b, h, i0 + r, c]', dt)} * sc",
            f"    smem[{OQ} + e] = val",
            "kend = skv", "if causal:", f"    kend = min(skv, max(0, i0 + {BQ} + offset))"]
    for r in rows:
        body += [f"row{r} = warp * {R} + {r}", f"lim{r} = i0 + row{r} + offset",
                 f"m{r} = LOW", f"l{r} = A(0)"] + [f"a{r}_{t} = A(0)" for t in cols]
        if mdt is not None:          # rows past the end read the last row's mask, unused
            body.append(f"mr{r} = min(i0 + row{r}, s_len - 1)")
    body += ["j0 = 0", "while j0 < kend:", "    gpu.syncthreads()"]
    loop = [f"for e in range(tid, {BK * d}, {NT}):",
            f"    j = e // {d}", f"    c = e - j * {d}", "    val = A(0)",
            "    if j0 + j < skv:", f"        val = {_load('k[b, hk, j0 + j, c]', dt)}",
            f"    smem[j * {KS} + c] = val",
            f"for e in range(tid, {BK * DVP}, {NT}):", f"    j = e // {DVP}",
            f"    c = e - j * {DVP}", "    val = A(0)", f"    if j0 + j < skv and c < {dv}:",
            f"        val = {_load('v[b, hk, j0 + j, c]', dt)}", f"    smem[{OV} + e] = val",
            "gpu.syncthreads()"]
    loop += [f"s{r}_{c} = A(0)" for r in rows for c in keys]
    loop += [f"for c in range({d}):"]
    loop += [f"    k{c} = smem[({c * 32} + lane) * {KS} + c]" for c in keys]
    for r in rows:
        loop.append(f"    q{r} = smem[{OQ} + row{r} * {d} + c]")
        loop += [f"    s{r}_{c} += q{r} * k{c}" for c in keys]
    for c in keys:
        loop += [f"jj{c} = j0 + {c * 32} + lane", f"ok{c} = jj{c} < skv"]
    if mdt is not None:              # keys past the end read the last key's mask, then LOW
        loop += [f"mj{c} = min(jj{c}, skv - 1)" for c in keys]
        loop += [f"s{r}_{c} += {_load(f'mask[b, h, mr{r}, mj{c}]', mdt)}"
                 for r in rows for c in keys]
    for r in rows:
        for c in keys:
            loop += [f"if not ok{c} or (causal and jj{c} > lim{r}):", f"    s{r}_{c} = LOW"]
        loop.append(f"x{r} = s{r}_0")
        loop += [f"x{r} = nanmax(x{r}, s{r}_{c})" for c in keys[1:]]
    loop += ["off = 16", "while off > 0:"]
    loop += [f"    x{r} = nanmax(x{r}, shfl(x{r}, off, scr))" for r in rows]
    loop += ["    off >>= 1"]
    for r in rows:
        loop += [f"mn = nanmax(m{r}, x{r})", "if mn == LOW:", "    alpha = A(1)"]
        loop += [f"    s{r}_{c} = A(0)" for c in keys]
        loop += ["else:", f"    alpha = exp_(m{r} - mn)"]
        loop += [f"    s{r}_{c} = exp_(s{r}_{c} - mn)" for c in keys]
        loop += [f"m{r} = mn", f"l{r} = l{r} * alpha" + "".join(f" + s{r}_{c}" for c in keys)]
        loop += [f"a{r}_{t} *= alpha" for t in cols]
        loop += [f"smem[{OP} + row{r} * {BK} + {c * 32} + lane] = s{r}_{c}" for c in keys]
    loop += ["gpu.syncthreads()", f"for j in range({BK}):"]
    loop += [f"    v{t} = smem[{OV} + j * {DVP} + {t * 32} + lane]" for t in cols]
    for r in rows:
        loop.append(f"    p{r} = smem[{OP} + row{r} * {BK} + j]")
        loop += [f"    a{r}_{t} += p{r} * v{t}" for t in cols]
    loop.append(f"j0 += {BK}")
    body += ["    " + line for line in loop]
    body += ["off = 16", "while off > 0:"]
    body += [f"    l{r} += shfl(l{r}, off, scr)" for r in rows]
    body += ["    off >>= 1"]
    for r in rows:
        body += [f"qi = i0 + row{r}", "if qi < s_len:",
                 f"    inv = A(1) / l{r} if l{r} != A(0) else A(0)"]
        for t in cols:
            body += [f"    if {t * 32} + lane < {dv}:",
                     f"        out[b, h, qi, {t * 32} + lane] = "
                     f"{red.store_expr(f'a{r}_{t} * inv', dt)}"]
    params = "q, k, v, out" if mdt is None else "q, k, v, mask, out"
    source = (_NANMAX + f"\n\ndef {name}({params}, scale, causal, group, offset):\n"
              + red.indent(body, 4) + "\n")
    # The simulator sizes dynamic shared memory by ``dtype.itemsize``: it needs a dtype object.
    ns = dict(red.namespace(acc), SDT=acc if gpu.SIMULATOR else acc.type)
    k = _kernels[key] = red.build(name, source, ns, __name__)
    return k


def simt_shared_bytes(dt: np.dtype, d: int, dv: int, W: int, R: int, KPL: int) -> int:
    """Dynamic shared memory of the SIMT kernel: K, V, Q and P tiles."""
    BK, DVP = 32 * KPL, 32 * gpu.cdiv(max(dv, 1), 32)
    return (BK * (d + 1) + BK * DVP + W * R * d + W * R * BK) * _acc(dt).itemsize


SHARED_LIMIT = 227 * 1024
"""Dynamic shared memory a block may ask for (H100/H200)."""


def _simt_tiles(config: Config, dt: np.dtype, d: int, dv: int, block_q: int | None,
                block_k: int | None) -> tuple[int, int, int]:
    """(W, R, KPL): the config's tiles, overridden by block_q/block_k, shrunk to fit."""
    W = config.warps
    R = config.rows if block_q is None else max(1, min(16, gpu.cdiv(block_q, W)))
    KPL = config.keys // 32 if block_k is None else max(1, min(4, gpu.cdiv(block_k, 32)))
    while simt_shared_bytes(dt, d, dv, W, R, KPL) > SHARED_LIMIT and (R > 1 or KPL > 1):
        if KPL > 1:
            KPL -= 1
        else:
            R = max(1, R // 2)
    return W, R, KPL


def _mask_view(mask: Any, q: Any, k: Any) -> Any:
    """The mask as the kernels read it: a [B, H, S, Skv] broadcast view (no copy)."""
    shape = (*q.shape[:3], k.shape[2])
    return gpu.array_module().broadcast_to(gpu.kernel_view(mask), shape)


def flash_attention_simt(q: Any, k: Any, v: Any, mask: Any, out: Any, config: Config,
                         causal: bool, scale: float, block_q: int | None, block_k: int | None
                         ) -> None:
    """Run the SIMT kernel on [B, H, S, D] operands (``mask`` None or broadcastable to the
    scores) into ``out`` (size > 0)."""
    dt = np.dtype(q.dtype)
    b, h, s, d = q.shape
    dv = v.shape[3]
    W, R, KPL = _simt_tiles(config, dt, d, dv, block_q, block_k)
    mdt = None if mask is None else np.dtype(mask.dtype)
    kern = _simt_kernel(dt, d, dv, W, R, KPL, mdt)
    shared = simt_shared_bytes(dt, d, dv, W, R, KPL)
    args = [gpu.kernel_view(a) for a in (q, k, v, out)]
    if mask is not None:
        args.insert(3, _mask_view(mask, q, k))
    args += [float(scale), bool(causal), h // max(k.shape[1], 1), k.shape[2] - s]
    _launch(kern, (b * h, gpu.cdiv(s, W * R)), 32 * W, args, shared)


# --- flash_attention, tensor cores -------------------------------------------------------

LINK = str(gpu.KERNEL_DIR / "attention.cu")
TC_ROWS, TC_KEYS, TC_WARPS = 64, 64, 4
"""The tensor-core tile: 64 query rows (16 a warp) x 64 keys a step."""
TC_PAD = 8
"""Shared rows are padded by 16 bytes, so the 8 rows an ldmatrix reads hit distinct banks."""

if gpu.SIMULATOR:
    import ml_dtypes

    @gpu.device
    def exp2_(x):
        return np.float32(np.exp2(np.float32(x)))

    def _bits(x: Any, dt: Any) -> int:
        return int(np.array(np.float32(x)).astype(dt).view(np.uint16))

    @gpu.device
    def pack_bf16x2(lo, hi):
        """Two float32 as the bfloat16 pair register (``lo`` in the low half), rounded to
        nearest even."""
        return np.uint32(_bits(lo, ml_dtypes.bfloat16) | (_bits(hi, ml_dtypes.bfloat16) << 16))

    @gpu.device
    def pack_f16x2(lo, hi):
        """Two float32 as the float16 pair register (``lo`` in the low half)."""
        return np.uint32(_bits(lo, np.float16) | (_bits(hi, np.float16) << 16))
else:
    from numba import types

    _pack_sig = types.uint32(types.float32, types.float32)
    _pack_bf16 = gpu.declare_device("tsol_pack_bf16x2", _pack_sig, link=[LINK])
    _pack_f16 = gpu.declare_device("tsol_pack_f16x2", _pack_sig, link=[LINK])

    @gpu.device
    def exp2_(x):
        return gpu.libdevice.exp2f(x)

    @gpu.device
    def pack_bf16x2(lo, hi):
        return _pack_bf16(lo, hi)

    @gpu.device
    def pack_f16x2(lo, hi):
        return _pack_f16(lo, hi)


def _tc_kernel(dt: np.dtype, d: int, dv: int, mdt: np.dtype | None = None) -> gpu.Kernel:
    """The tensor-core kernel for float16/bfloat16 with ``d``, ``dv`` multiples of 16; ``mdt``:
    the dtype of an additive [B, H, S, Skv] mask, None for the kernel without one."""
    key = ("tc", dt.str, d, dv, None if mdt is None else mdt.str)
    if key in _kernels:
        return _kernels[key]
    from tsol.kernels.cuda import tensorcore as tc

    bf16 = dt == dtypes.bfloat16
    mma, pack = ("tc.mma_bf16", "pack_bf16x2") if bf16 else ("tc.mma_f16", "pack_f16x2")
    name = f"flash_attention_tc_{_tag(dt)}_d{d}_v{dv}{_mask_tag(mdt)}"
    BQ, BK, NT = TC_ROWS, TC_KEYS, 32 * TC_WARPS
    QS, VS = d + TC_PAD, dv + TC_PAD
    OK, OV = BQ * QS, BQ * QS + BK * QS
    NB, NO = BK // 8, dv // 8              # n-blocks of S (keys) and of O (value columns)

    def copy_tile(dst: int, stride: int, width: int, src: str, row0: str, base: str,
                  limit: str) -> list[str]:
        # 16-byte asynchronous copies; rows past ``limit`` are zero-filled.
        chunks = width // 8
        return [f"for e in range(tid, {BQ * chunks}, {NT}):", f"    r = e // {chunks}",
                f"    c = (e - r * {chunks}) * 8", "    src_off = 0", "    n = 0",
                f"    if {row0} + r < {limit}:",
                f"        src_off = ({base} + {row0} + r) * {width} + c", "        n = 16",
                f"    tc.cp_async16(smem, {dst} + r * {stride} + c, {src}, src_off, n)"]

    def quad(prefix: str) -> str:
        return ", ".join(f"{prefix}_{e}" for e in range(4))

    body = ["tid = gpu.threadIdx.x", "lane = tid & 31", "warp = tid >> 5", "g = lane >> 2",
            "t = lane & 3", "bh = gpu.blockIdx.x", "b = bh // nh", "h = bh - b * nh",
            "hk = h // group", f"i0 = (gpu.gridDim.y - 1 - gpu.blockIdx.y) * {BQ}",
            # 16-byte alignment: ldmatrix rows and cp.async chunks are 16-byte units (the
            # simulator takes no alignment argument).
            f"smem = gpu.shared_array(0, SDT{'' if gpu.SIMULATOR else ', 16'})",
            f"scratch = gpu.shared_array({tc.scratch_size(NT)}"
            ", np.int64)", f"scr = gpu.shared_array({red.SCR}, A)", "sc2 = A(scale2)",
            "kvb = (b * (nh // group) + hk) * skv",
            *copy_tile(0, QS, d, "q", "i0", "bh * s_len", "s_len"),
            "kend = skv", "if causal:", f"    kend = min(skv, max(0, i0 + {BQ} + offset))",
            "if kend > 0:", *["    " + x for x in copy_tile(OK, QS, d, "k", "0", "kvb", "skv")],
            "tc.cp_async_commit()", "tc.cp_async_wait(0)", "gpu.syncthreads()"]
    for kk in range(d // 16):
        body.append(f"{quad(f'qf{kk}')} = tc.ldmatrix_x4(smem, (warp * 16 + (lane & 15)) * {QS}"
                    f" + {kk * 16} + ((lane >> 4) << 3), scratch)")
    body += ["m0 = LOW", "m1 = LOW", "l0 = A(0)", "l1 = A(0)",
             "row0 = i0 + warp * 16 + g", "lim0 = row0 + offset", "lim1 = lim0 + 8"]
    if mdt is not None:              # rows past the end read the last row's mask, unused
        body += ["mr0 = min(row0, s_len - 1)", "mr1 = min(row0 + 8, s_len - 1)",
                 "mlast = skv - 1"]
    body += [f"o{n}_{e} = A(0)" for n in range(NO) for e in range(4)]
    loop = ["tc.cp_async_wait(0)", "gpu.syncthreads()",
            *copy_tile(OV, VS, dv, "v", "j0", "kvb", "skv"), "tc.cp_async_commit()"]
    loop += [f"s{n}_{e} = A(0)" for n in range(NB) for e in range(4)]
    for kk in range(d // 16):
        for pair in range(NB // 2):
            loop.append(f"b0, b1, b2, b3 = tc.ldmatrix_x4(smem, {OK} + ({pair * 16} + "
                        f"((lane >> 4) << 3) + (lane & 7)) * {QS} + {kk * 16} + "
                        "(((lane >> 3) & 1) << 3), scratch)")
            for n, regs in ((2 * pair, "b0, b1"), (2 * pair + 1, "b2, b3")):
                loop.append(f"{quad(f's{n}')} = {mma}({quad(f's{n}')}, {quad(f'qf{kk}')}, "
                            f"{regs}, scratch)")
    loop += [f"s{n}_{e} *= sc2" for n in range(NB) for e in range(4)]
    if mdt is not None:
        # The scores are in base 2 (exp2 below): the mask is too. Each (row, key) of the tile
        # is one lane's, so every mask element is read once; keys past the end read the last
        # key's mask, then become LOW.
        loop.append("mc = j0 + 2 * t")
        for n in range(NB):
            for e in range(4):
                at = f"mask[b, h, mr{e >> 1}, min(mc + {n * 8 + (e & 1)}, mlast)]"
                loop.append(f"s{n}_{e} += {_load(at, mdt)} * LOG2E")
    # Masks only where the tile crosses the sequence end or the warp's causal diagonal.
    loop += [f"if j0 + {BK} > skv or (causal and j0 + {BK - 1} > i0 + warp * 16 + offset):"]
    for n in range(NB):
        for e in range(4):
            lim = "lim0" if e < 2 else "lim1"
            loop += [f"    col = j0 + {n * 8 + (e & 1)} + 2 * t",
                     f"    if col >= skv or (causal and col > {lim}):", f"        s{n}_{e} = LOW"]
    for half, (e0, e1) in enumerate(((0, 1), (2, 3))):
        loop.append(f"x{half} = nanmax(s0_{e0}, s0_{e1})")
        loop += [f"x{half} = nanmax(x{half}, nanmax(s{n}_{e0}, s{n}_{e1}))" for n in range(1, NB)]
    for off in (1, 2):
        loop += [f"x{h} = nanmax(x{h}, shfl(x{h}, {off}, scr))" for h in (0, 1)]
    for half, (e0, e1) in enumerate(((0, 1), (2, 3))):
        loop += [f"mn = nanmax(m{half}, x{half})", "if mn == LOW:",
                 f"    alpha{half} = A(1)", f"    sh{half} = A(0)", "else:",
                 f"    alpha{half} = exp2_(m{half} - mn)", f"    sh{half} = mn", f"m{half} = mn"]
        loop += [f"s{n}_{e} = exp2_(s{n}_{e} - sh{half})" for n in range(NB) for e in (e0, e1)]
        loop.append(f"l{half} = l{half} * alpha{half}" +
                    "".join(f" + s{n}_{e}" for n in range(NB) for e in (e0, e1)))
        loop += [f"o{n}_{e} *= alpha{half}" for n in range(NO) for e in (e0, e1)]
    for kk in range(NB // 2):
        lo, hi = 2 * kk, 2 * kk + 1
        loop += [f"pa{kk}_0 = {pack}(s{lo}_0, s{lo}_1)", f"pa{kk}_1 = {pack}(s{lo}_2, s{lo}_3)",
                 f"pa{kk}_2 = {pack}(s{hi}_0, s{hi}_1)", f"pa{kk}_3 = {pack}(s{hi}_2, s{hi}_3)"]
    # V landed and every warp is done with K: the next K tile streams in during P V.
    loop += ["tc.cp_async_wait(0)", "gpu.syncthreads()", f"if j0 + {BK} < kend:"]
    loop += ["    " + x for x in copy_tile(OK, QS, d, "k", f"j0 + {BK}", "kvb", "skv")]
    loop.append("tc.cp_async_commit()")
    for kk in range(NB // 2):
        for pair in range(dv // 16):
            loop.append(f"b0, b1, b2, b3 = tc.ldmatrix_x4_trans(smem, {OV} + ({kk * 16} + "
                        f"(lane & 15)) * {VS} + {pair * 16} + ((lane >> 4) << 3), scratch)")
            for n, regs in ((2 * pair, "b0, b1"), (2 * pair + 1, "b2, b3")):
                loop.append(f"{quad(f'o{n}')} = {mma}({quad(f'o{n}')}, {quad(f'pa{kk}')}, "
                            f"{regs}, scratch)")
    loop.append(f"j0 += {BK}")
    body += ["j0 = 0", "while j0 < kend:"] + ["    " + x for x in loop]
    body.append("tc.cp_async_wait(0)")
    for off in (1, 2):
        body += [f"l{h} += shfl(l{h}, {off}, scr)" for h in (0, 1)]
    for half in (0, 1):
        body += [f"inv = A(1) / l{half} if l{half} != A(0) else A(0)",
                 f"row = row0 + {8 * half}", "if row < s_len:",
                 f"    ob = (bh * s_len + row) * {dv} + 2 * t"]
        for n in range(NO):
            for e in (0, 1):
                body.append(f"    out[ob + {n * 8 + e}] = "
                            f"{red.store_expr(f'o{n}_{2 * half + e} * inv', dt)}")
    params = "q, k, v, out" if mdt is None else "q, k, v, mask, out"
    source = (_NANMAX + f"\n\ndef {name}({params}, scale2, causal, group, offset, nh, "
              "s_len, skv):\n" + red.indent(body, 4) + "\n")
    ns = dict(red.namespace(np.dtype(np.float32)), tc=tc, exp2_=exp2_, pack_bf16x2=pack_bf16x2,
              pack_f16x2=pack_f16x2, SDT=np.dtype(np.uint16) if gpu.SIMULATOR else np.uint16,
              LOG2E=np.float32(math.log2(math.e)))
    k = _kernels[key] = red.build(name, source, ns, __name__)
    return k


def tc_shared_bytes(d: int, dv: int) -> int:
    """Dynamic shared memory of the tensor-core kernel: Q, K and V tiles of 16-bit values."""
    return 2 * (TC_ROWS * (d + TC_PAD) + TC_KEYS * (d + TC_PAD) + TC_KEYS * (dv + TC_PAD))


TC_MAX_DIM = 128


def tc_eligible(dt: Any, d: int, dv: int) -> bool:
    """Whether the tensor-core kernel takes these dtypes and head dims."""
    return (np.dtype(dt) in (dtypes.float16, dtypes.bfloat16) and d % 16 == 0 and dv % 16 == 0
            and 0 < d <= TC_MAX_DIM and 0 < dv <= TC_MAX_DIM)


def _address(a: Any) -> int:
    return a.ctypes.data if gpu.HOST_ARRAYS else a.data.ptr


def flash_attention_tc(q: Any, k: Any, v: Any, mask: Any, out: Any, causal: bool,
                       scale: float) -> bool:
    """Run the tensor-core kernel (False, running nothing, when an operand is not 16-byte
    aligned once contiguous); ``mask`` None or broadcastable to the scores."""
    xp = gpu.array_module()
    ops = [xp.ascontiguousarray(a).view(np.uint16) for a in (q, k, v)]
    if any(_address(a) % 16 for a in ops):          # cp.async copies 16-byte chunks
        return False
    b, h, s, d = q.shape
    dv = v.shape[3]
    args = [a.reshape(-1) for a in ops] + [gpu.kernel_view(out).reshape(-1)]
    mdt = None
    if mask is not None:
        mdt = np.dtype(mask.dtype)
        args.insert(3, _mask_view(mask, q, k))
    args += [float(scale) * math.log2(math.e), bool(causal), h // k.shape[1], k.shape[2] - s,
             h, s, k.shape[2]]
    _launch(_tc_kernel(np.dtype(q.dtype), d, dv, mdt), (b * h, gpu.cdiv(s, TC_ROWS)),
            32 * TC_WARPS, args, tc_shared_bytes(d, dv))
    return True


# --- registration -------------------------------------------------------------------------

SIMT_CONFIGS = [Config(path="simt", warps=4, rows=8, keys=32),
                Config(path="simt", warps=4, rows=4, keys=32),
                Config(path="simt", warps=4, rows=4, keys=64),
                Config(path="simt", warps=2, rows=8, keys=32)]
"""``warps`` a block, query ``rows`` a warp, ``keys`` a tile (a multiple of 32)."""
SIM_SIMT = Config(path="simt", warps=1, rows=4, keys=32)
"""Under the simulator (every thread a Python thread): one warp a block."""
MAX_HEAD_DIM = 256


def _attention_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return metas[0].shape[3] <= MAX_HEAD_DIM and metas[2].shape[3] <= MAX_HEAD_DIM


TC_CONFIG = Config(path="tc", warps=TC_WARPS, rows=TC_ROWS // TC_WARPS, keys=TC_KEYS)
"""The tensor-core kernel (float16/bfloat16, head dims multiples of 16 up to 128); other
operands run the SIMT kernel of the first config."""


def _attention_heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    if tc_eligible(metas[0].dtype, metas[0].shape[3], metas[2].shape[3]) and \
            attrs.get("block_q") is None and attrs.get("block_k") is None:
        return TC_CONFIG
    return SIM_SIMT if gpu.SIMULATOR else SIMT_CONFIGS[0]


@kernel("flash_attention", backend="cuda", dtypes=dtypes.FLOATS,
        configs=[TC_CONFIG, *SIMT_CONFIGS],
        supports=_attention_supports, heuristic=_attention_heuristic, alias_ok=False)
def flash_attention_cuda(q: Any, k: Any, v: Any, mask: Any, *, out: Any, config: Config,
                         causal: bool, scale: float, block_q: int | None, block_k: int | None
                         ) -> None:
    """Flash attention forward, head dims up to 256. The tensor-core config runs float16 and
    bfloat16 with head dims multiples of 16 up to 128 (its tiles are fixed); everything else
    runs a SIMT config, whose query rows and key tile ``block_q``/``block_k`` override (rows
    rounded up to a multiple of the warps, keys to a multiple of 32, at most 128). A mask (any
    float dtype, broadcast to [B, H, S, Skv] without a copy) selects each kernel's masked
    variant, generated apart so the unmasked kernels stay as they are."""
    if out.size == 0:
        return
    if config.path == "tc" and q.shape[1] and tc_eligible(q.dtype, q.shape[3], v.shape[3]):
        if flash_attention_tc(q, k, v, mask, out, causal, scale):
            return
    if config.path == "tc":
        config = SIM_SIMT if gpu.SIMULATOR else SIMT_CONFIGS[0]
    flash_attention_simt(q, k, v, mask, out, config, causal, scale, block_q, block_k)


# --- rope ---------------------------------------------------------------------------------

TWO_PI_HI = 6.283185307179586
TWO_PI_LO = 2.4492935982947064e-16
"""2 pi as a float64 sum: the reduction of a large angle keeps float32 accuracy."""


if gpu.SIMULATOR:
    fast_cos, fast_sin = math.cos, math.sin
else:
    @gpu.device
    def fast_cos(x):
        """cos of float32 ``x`` in [-pi, pi] by the special-function unit (abs error ~5e-7):
        half types only, where it keeps rope compute under the memory time."""
        return gpu.libdevice.fast_cosf(x)

    @gpu.device
    def fast_sin(x):
        return gpu.libdevice.fast_sinf(x)


def _angle_lines(acc: np.dtype, p: str, w: str) -> list[str]:
    """``ang`` = position ``p`` x inverse frequency ``w`` (float64), reduced to [-pi, pi] in
    float64 and rounded to the compute type for float32 compute."""
    lines = [f"ang = {p} * {w}"]
    if acc == np.float32:
        lines += ["n = math.floor(ang * INV_TWO_PI + 0.5)",
                  "ang = A((ang - n * TWO_PI_HI) - n * TWO_PI_LO)"]
    return lines


def _rope_namespace(dt: np.dtype) -> dict[str, Any]:
    fast = dt in (dtypes.float16, dtypes.bfloat16)
    return dict(red.namespace(_acc(dt)), TWO_PI_HI=TWO_PI_HI, TWO_PI_LO=TWO_PI_LO,
                INV_TWO_PI=1.0 / TWO_PI_HI, cos_=fast_cos if fast else math.cos,
                sin_=fast_sin if fast else math.sin, U32=np.uint32)


TABLE_BLOCK = 256
TABLE_SHARE = 4
"""The table serves calls with at least this many rows of x a distinct row position; the
others compute their angles per element (``_rope_direct_kernel``)."""


def _rope_table_kernel(dt: np.dtype, indexed: bool) -> gpu.Kernel:
    """cos and sin of every (position q < period, pair i < half) angle, in the compute type:
    the table the rows of x share."""
    key = ("rope_table", dt.str, indexed)
    if key in _kernels:
        return _kernels[key]
    name = f"rope_table_{_tag(dt)}_{'pos' if indexed else 'seq'}"
    B = TABLE_BLOCK
    body = [f"e = gpu.blockIdx.x * {B} + gpu.threadIdx.x", f"step = gpu.gridDim.x * {B}",
            "total = period * half", "while e < total:", "    q = e // half",
            "    i = e - q * half",
            f"    p = np.float64({'pos[q]' if indexed else 'q'})",
            *("    " + s for s in _angle_lines(_acc(dt), "p", "inv[i]")),
            "    cs[e] = cos_(ang)", "    sn[e] = sin_(ang)", "    e += step"]
    source = f"def {name}(pos, inv, cs, sn, period, half):\n" + red.indent(body, 4) + "\n"
    k = _kernels[key] = red.build(name, source, _rope_namespace(dt), __name__)
    return k


def _rope_rows(name: str, params: str, dt: np.dtype, TX: int, TY: int, U: int,
               per_row: Callable[[int], str], per_pair: list[str],
               angle: Callable[[int], list[str]]) -> gpu.Kernel:
    """The grid-stride rope kernel over rows of the ``(rows, D)`` x: TX threads along the
    pairs, TY x U rows a block step. ``per_row(u)``: the line of row ``r + u * TY``'s own
    value; ``per_pair``: lines at each pair ``i``; ``angle(u)``: lines giving ``cs``, ``sn``."""
    body = ["tid = gpu.threadIdx.x", f"tx = tid & {TX - 1}", f"ty = tid >> {red.log2(TX)}",
            "rows = x.shape[0]", "half = x.shape[1] // 2",
            f"r = gpu.blockIdx.x * {TY * U} + ty", f"step = gpu.gridDim.x * {TY * U}",
            "while r < rows:"]
    loop = [per_row(u) for u in range(U)] + ["i = tx", "while i < half:"]
    inner = list(per_pair)
    for u in range(U):
        inner += [f"ok{u} = r + {u * TY} < rows", f"x0_{u} = A(0)", f"x1_{u} = A(0)",
                  f"if ok{u}:",
                  f"    x0_{u} = {_load(f'x[r + {u * TY}, 2 * i]', dt)}",
                  f"    x1_{u} = {_load(f'x[r + {u * TY}, 2 * i + 1]', dt)}"]
    for u in range(U):
        inner += angle(u) + [f"if ok{u}:", f"    out[r + {u * TY}, 2 * i] = "
                             f"{red.store_expr(f'x0_{u} * cs - x1_{u} * sn', dt)}",
                             f"    out[r + {u * TY}, 2 * i + 1] = "
                             f"{red.store_expr(f'x0_{u} * sn + x1_{u} * cs', dt)}"]
    loop += ["    " + line for line in inner + [f"i += {TX}"]]
    body += ["    " + line for line in loop + ["r += step"]]
    source = f"def {name}({params}):\n" + red.indent(body, 4) + "\n"
    return red.build(name, source, _rope_namespace(dt), __name__)


def _rope_kernel(dt: np.dtype, narrow: bool, TX: int, TY: int, U: int) -> gpu.Kernel:
    """Rows of the ``(rows, D)`` x: TX threads along the pairs, TY x U rows a block step; row
    r reads the table row ``r % period``; ``narrow``: rows fit 32 bits (a cheaper modulo)."""
    key = ("rope", dt.str, narrow, TX, TY, U)
    if key not in _kernels:
        def row(u: int) -> str:
            at = (f"I64(U32(r + {u * TY}) % U32(period))" if narrow else
                  f"(r + {u * TY}) % period")
            return f"t{u} = {at} * half"
        _kernels[key] = _rope_rows(
            f"rope_{_tag(dt)}_{'n' if narrow else 'w'}_x{TX}_y{TY}_u{U}",
            "x, out, cos_t, sin_t, period", dt, TX, TY, U, row, [],
            lambda u: [f"cs = cos_t[t{u} + i]", f"sn = sin_t[t{u} + i]"])
    return _kernels[key]


def _rope_direct_kernel(dt: np.dtype, indexed: bool, TX: int, TY: int, U: int) -> gpu.Kernel:
    """Rows of the ``(rows, D)`` x as ``_rope_kernel``, each computing its own angles (for
    positions nearly one a row, where a table would be as large as x): ``indexed``: row r's
    position is ``pos[r % period]``, else ``r % period``."""
    key = ("rope_direct", dt.str, indexed, TX, TY, U)
    if key not in _kernels:
        def row(u: int) -> str:
            at = f"(r + {u * TY}) % period"
            return f"p{u} = np.float64({f'pos[{at}]' if indexed else at})"
        _kernels[key] = _rope_rows(
            f"rope_direct_{_tag(dt)}_{'pos' if indexed else 'seq'}_x{TX}_y{TY}_u{U}",
            "x, out, pos, inv, period", dt, TX, TY, U, row, ["w = inv[i]"],
            lambda u: _angle_lines(_acc(dt), f"p{u}", "w") + ["cs = cos_(ang)", "sn = sin_(ang)"])
    return _kernels[key]


_tables: dict[tuple[Any, ...], tuple[Any, Any]] = {}
"""cos/sin tables of the default positions (``0 .. period - 1``), per compute dtype, period,
D, theta and device."""


def _rope_table(dt: np.dtype, pos: Any, period: int, d: int, theta: float) -> tuple[Any, Any]:
    """The (cos, sin) tables of ``period`` positions (``pos``, or ``0 .. period - 1`` when
    None: those are computed once and kept) x D/2 pairs."""
    device = -1 if gpu.HOST_ARRAYS else gpu.array_module().cuda.runtime.getDevice()
    key = (_acc(dt).str, dt == dtypes.float16 or dt == dtypes.bfloat16, period, d, theta,
           device)
    if pos is None and key in _tables:
        return tuple(replay.constant(t) for t in _tables[key])
    half = d // 2
    # Kept tables are constants of a recorded call; a table of given positions is its scratch.
    if pos is None:
        xp = gpu.array_module()
        tables = tuple(replay.constant(xp.empty(period * half, _acc(dt))) for _ in range(2))
    else:
        tables = tuple(replay.scratch(period * half, _acc(dt)) for _ in range(2))
    grid = max(1, min(gpu.cdiv(period * half, TABLE_BLOCK), GRID_CAP))
    _launch(_rope_table_kernel(dt, pos is not None), grid, TABLE_BLOCK,
            [inv_freq(2, 1.0) if pos is None else pos, inv_freq(d, theta), *tables, period,
             half])
    if pos is None:
        if len(_tables) > 64:
            _tables.clear()
        _tables[key] = tables
    return tables


_inv_freq: dict[tuple[Any, ...], Any] = {}


def inv_freq(d: int, theta: float) -> Any:
    """float64 ``theta ** (-2i / D)`` on the device, cached per (D, theta)."""
    key = (d, theta, gpu.HOST_ARRAYS)
    table = _inv_freq.get(key)
    if table is None:
        host = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        table = _inv_freq[key] = gpu.array_module().asarray(host)
    return replay.constant(table)          # kept across calls: a replay passes it as it is


def _rope_positions(positions: Any, lead: tuple[int, ...]) -> tuple[Any, int]:
    """(flat int64 positions on the device, period): row r of x has position ``pos[r % period]``.

    Positions whose shape, leading 1s dropped, is a suffix of ``lead`` (such as [S] or [H, S])
    repeat with the rows as they are; others are broadcast to one position a row first.
    """
    xp = gpu.array_module()
    pos = positions if positions.dtype == np.int64 else positions.astype(np.int64)
    shape = list(pos.shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    if tuple(shape) != lead[len(lead) - len(shape):]:
        pos = xp.broadcast_to(pos, lead)
    flat = xp.ascontiguousarray(pos).reshape(-1)
    return flat, flat.size


ROPE_CONFIGS = [Config(block=256, unroll=4), Config(block=256, unroll=2),
                Config(block=512, unroll=2), Config(block=128, unroll=4)]
"""``block`` threads, ``unroll`` rows a thread in flight."""
SIM_ROPE = Config(block=32, unroll=2)
GRID_CAP = 132 * 16


def _rope_heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return SIM_ROPE if gpu.SIMULATOR else ROPE_CONFIGS[0]


def _rope_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return metas[0].dtype in dtypes.FLOATS


@kernel("rope", backend="cuda", supports=_rope_supports, configs=ROPE_CONFIGS,
        heuristic=_rope_heuristic, replays=True)
def rope_cuda(x: Any, positions: Any, *, out: Any, config: Config, theta: float) -> None:
    """Rotate pairs (2i, 2i+1) of the last axis by ``pos * theta ** (-2i / D)``."""
    if x.size == 0:
        return
    dt = np.dtype(x.dtype)
    d = x.shape[-1]
    lead = tuple(x.shape[:-1])
    x2 = gpu.kernel_view(x).reshape(-1, d)      # a view unless x's rows cannot be merged
    o2 = gpu.kernel_view(out).reshape(-1, d)
    if positions is None:
        pos, period, indexed = inv_freq(2, 1.0), lead[-1], False   # pos unused
    else:
        pos, period = _rope_positions(positions, lead)
        indexed = True
    half = d // 2
    TX = min(config.block, red.pow2ceil(half))
    TY = config.block // TX
    U = config.unroll
    rows = x2.shape[0]
    grid = max(1, min(gpu.cdiv(rows, TY * U), GRID_CAP))
    if period * TABLE_SHARE > rows:
        kern = _rope_direct_kernel(dt, indexed, TX, TY, U)
        _launch(kern, grid, config.block, [x2, o2, pos, inv_freq(d, theta), int(period)])
        return
    cos_t, sin_t = _rope_table(dt, pos if indexed else None, int(period), d, theta)
    kern = _rope_kernel(dt, rows + TY * U * grid < 2 ** 31, TX, TY, U)
    _launch(kern, grid, config.block, [x2, o2, cos_t, sin_t, int(period)])


__all__ = ["flash_attention_simt", "flash_attention_tc", "tc_eligible", "simt_shared_bytes",
           "tc_shared_bytes", "inv_freq", "SIMT_CONFIGS",
           "ROPE_CONFIGS"]
