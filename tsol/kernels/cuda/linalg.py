"""CUDA kernels for matmul and gemm: a register-blocked SIMT kernel, a tensor-core kernel, cuBLAS.

Both our kernels compute ``out = epilogue(alpha * op(a) @ op(b))`` per output tile, with the
epilogue ``+ beta * c``, ``+ bias``, activation, ``+ residual`` applied in registers before the
store. Operands of any strides (transposes, broadcast batches, negative strides) are passed as
a flat view of their memory, a per-batch element offset (``batch map``) and the two element
strides of their matrix, so no operand is ever copied. The grid is (N tiles, M tiles, batches);
blocks loop over batches past 65535.

- ``simt`` (every dtype pair; float64 computes in float64, the rest in float32): a ``bm x bn``
  block tile of ``(bm / tm) * (bn / tn)`` threads, each accumulating a ``tm x tn`` micro-tile
  in registers over ``bk``-deep K steps. With ``tm`` a multiple of 4, thread ``(ty, tx)`` owns
  quads of rows ``4 * ty + q * bm / (tm / 4) + (0..3)`` (else rows ``ty + i * bm / tm``), and
  the same for columns: each quad is one 16-byte shared read (``ld.shared.v4``, shared tiles
  16-byte aligned), and a warp's quads cover consecutive banks. Two shared
  stages: tile ``k + 1`` is loaded into registers before tile ``k`` is computed and stored to
  the other stage afterwards, one barrier per step. Global loads run along the operand's
  contiguous axis.
- ``mma`` (a and b of one half dtype, float16 or bfloat16): ``mma.sync.m16n8k16`` with float32
  accumulation (``tensorcore.py``). ``wm x wn`` warps, each owning a ``bm / wm x bn / wn`` warp
  tile of m16n8 fragments; A is staged ``[m][k]`` and B ``[k][n]`` in shared memory (rows
  padded by 8 halves: conflict-free ``ldmatrix``), ``stages`` deep. When an operand is
  contiguous along its staged rows with 16-byte aligned rows, tiles arrive by ``cp.async``
  (16 bytes, zero-filled past the matrix edge) in a multi-stage pipeline; otherwise (a
  transposed operand, odd strides) by plain loads into the same pipeline.
- ``cublas`` (vendor): ``cupy.matmul`` for float32/float64 products without an epilogue.

Selection until autotuning exists: plain float32/float64 products (one dtype, no epilogue, no
``c``, ``alpha == 1``, no ``tile_shape``) go to cuBLAS, which is expected to beat the SIMT
kernel (roughly 2x); this rule must be confirmed by measurement (``bench/gpu_linalg_check.py``).
Everything else runs ours: ``mma`` for one half dtype, ``simt`` for the rest. ``tile_shape``
(BM, BN, BK) always runs ours and is rounded to what the chosen kernel supports (``simt``:
powers of two, BM/BN 16..256, BK 4..32; ``mma``: BM/BN multiples of 32 up to 256, BK 16, 32
or 64). Registers are capped at ``gpu.register_cap`` of a block's threads: every tile launches.
"""

from __future__ import annotations

import ctypes
import math
import re
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
from tsol.kernels.cuda import reduction as red
from tsol.kernels.cuda import tensorcore as tc
from tsol.kernels.cuda.elementwise import BODIES
from tsol.registry import Config, kernel

FLOATS = (dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16)
HALF = (dtypes.float16, dtypes.bfloat16)
VENDOR_DTYPES = (dtypes.float64, dtypes.float32)

SIMT32 = Config(kind="simt", bm=128, bn=128, bk=8, tm=8, tn=8)
SIMT64 = Config(kind="simt", bm=64, bn=64, bk=8, tm=4, tn=4)
MMA = Config(kind="mma", bm=128, bn=128, bk=32, wm=2, wn=4, stages=3)
CUBLAS = Config(vendor="cublas")
CONFIGS = [SIMT32, SIMT64, MMA, Config(kind="simt", bm=64, bn=64, bk=16, tm=4, tn=4),
           Config(kind="mma", bm=128, bn=256, bk=32, wm=2, wn=4, stages=3),
           Config(kind="mma", bm=64, bn=128, bk=32, wm=2, wn=2, stages=4)]
"""Defaults first (float32 SIMT, float64 SIMT, tensor cores); the rest are for the tuner."""

ACTS = {"none": None, "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "silu": "silu"}
SMEM_LIMIT = 227 * 1024
PAD = 8
"""Halves of padding per staged row: row pitches of 16 mod 128 bytes keep ldmatrix's eight
row reads on distinct banks."""


# --- operands as (flat memory, batch map, strides) --------------------------------------------

def _flat(x: Any) -> tuple[Any, int, list[int]]:
    """(1-D array over ``x``'s memory, element offset of ``x[0, ..., 0]``, element strides)."""
    item = x.itemsize
    strides = [s // item for s in x.strides]
    if x.size == 0:
        return gpu.array_module().zeros(1, x.dtype), 0, strides
    lo = sum((d - 1) * s for d, s in zip(x.shape, strides) if s < 0)
    hi = sum((d - 1) * s for d, s in zip(x.shape, strides) if s > 0)
    span = hi - lo + 1
    if gpu.HOST_ARRAYS:
        ptr = x.__array_interface__["data"][0] + lo * item
        buf = (ctypes.c_char * (span * item)).from_address(ptr)
        flat = np.frombuffer(buf, x.dtype)
    else:
        import cupy
        flat = cupy.ndarray((span,), x.dtype, memptr=x.data + lo * item)
    return flat, -lo, strides


_maps: dict[tuple[Any, ...], Any] = {}


def _batch_map(base: int, strides: Sequence[int], own: tuple[int, ...],
               batch: tuple[int, ...]) -> tuple[Any, bool]:
    """(element offset of each output batch's matrix in an operand of batch shape ``own``,
    whether every offset is a multiple of 8)."""
    key = (base, tuple(strides), own, batch)
    m = _maps.get(key)
    if m is None:
        offs = np.full(own, base, np.int64)
        for ax, (d, s) in enumerate(zip(own, strides)):
            shape = [1] * len(own)
            shape[ax] = d
            offs = offs + (np.arange(d, dtype=np.int64) * s).reshape(shape)
        host = np.ascontiguousarray(np.broadcast_to(offs, batch).reshape(-1))
        m = (host if gpu.HOST_ARRAYS else gpu.array_module().asarray(host),
             bool((host % 8 == 0).all()))
        if len(_maps) > 1024:
            _maps.clear()
        _maps[key] = m
    return m


def _operand(x: Any, batch: tuple[int, ...]) -> tuple[list[Any], bool, bool]:
    """(kernel arguments of a (..., rows, cols) operand: flat, batch map, row and col strides;
    whether it can be staged by 16-byte cp.async along its rows: unit col stride, rows,
    batches and the base address on 16-byte bounds; the same along its columns (unit row
    stride: a transposed operand))."""
    flat, base, st = _flat(x)
    offs, mult8 = _batch_map(base, st[:-2], tuple(x.shape[:-2]), batch)
    replay.constant(offs)                 # a cached table: a replay passes it as it is
    ptr = flat.__array_interface__["data"][0] if gpu.HOST_ARRAYS else flat.data.ptr
    aligned = x.size > 0 and mult8 and ptr % 16 == 0
    vec = aligned and st[-1] == 1 and st[-2] % 8 == 0
    tvec = aligned and st[-2] == 1 and st[-1] % 8 == 0 and not vec
    return [flat, offs, st[-2], st[-1]], vec, tvec


_dummies: dict[Any, list[Any]] = {}


def _absent(ct: np.dtype) -> list[Any]:
    """Arguments standing in for a missing epilogue operand (never read)."""
    key = (np.dtype(ct).str, gpu.HOST_ARRAYS)
    if key not in _dummies:
        xp = gpu.array_module()
        _dummies[key] = [xp.zeros(1, ct), xp.zeros(1, np.int64), 0, 0]
    found = _dummies[key]
    replay.constant(found[0])             # cached across calls: a replay passes them as they are
    replay.constant(found[1])
    return found


# --- source generation --------------------------------------------------------------------------

PARAMS = ("a, aoff, sam, sak, b, boff, sbk, sbn, c, coff, scm, scn, bias, bioff, sbim, sbin, "
          "res, roff, srm, srn, out, M, N, K, nbatch, alpha, beta")


def _load(dt: np.dtype, src: str) -> str:
    """An element of storage dtype ``dt`` in the compute type F."""
    if np.dtype(dt) == dtypes.bfloat16:
        return f"F(gpu.load_bf16({src}))"
    return f"F({src})"


def _store(dt: np.dtype, expr: str) -> str:
    dt = np.dtype(dt)
    if dt == dtypes.bfloat16:
        return f"gpu.store_bf16(np.float32({expr}))"
    return f"np.{dt.name}({expr})"


def _epilogue(ind: str, row: str, col: str, v: str, spec: tuple[Any, ...]) -> list[str]:
    """Lines storing accumulator ``v`` at (row, col) of batch ``bz`` through the epilogue."""
    c_dt, bias_dt, res_dt, act, out_dt = spec
    lines = [f"if {row} < M and {col} < N:", f"    v = {v} * fal"]
    if c_dt is not None:
        lines.append(f"    v += fbe * {_load(c_dt, f'c[cb + {row} * scm + {col} * scn]')}")
    if bias_dt is not None:
        lines.append(f"    v += {_load(bias_dt, f'bias[bib + {row} * sbim + {col} * sbin]')}")
    if act is not None:
        lines += ["    x0 = v", f"    v = F({BODIES[act][1]})"]
    if res_dt is not None:
        lines.append(f"    v += {_load(res_dt, f'res[rb + {row} * srm + {col} * srn]')}")
    lines.append(f"    out[ob + {row} * N + {col}] = {_store(out_dt, 'v')}")
    return [ind + ln for ln in lines]


def _batch_head(BK: int, spec: tuple[Any, ...]) -> list[str]:
    """Kernel lines opening the loop over batches: scalars and this batch's base offsets."""
    lines = ["    fal = F(alpha)", "    fbe = F(beta)", f"    ntiles = (K + {BK - 1}) // {BK}",
             "    bz = gpu.blockIdx.z", "    while bz < nbatch:", "        ab = aoff[bz]",
             "        bb = boff[bz]", "        ob = bz * M * N"]
    for dt, var, offs in zip(spec[:3], ("cb", "bib", "rb"), ("coff", "bioff", "roff")):
        if dt is not None:
            lines.append(f"        {var} = {offs}[bz]")
    return lines


def simt_source(name: str, cfg: dict[str, int], a_dt: np.dtype, b_dt: np.dtype,
                a_kfast: bool, b_nfast: bool, spec: tuple[Any, ...]) -> str:
    """The SIMT kernel (module doc) for one tile, operand dtypes/orders and epilogue."""
    BM, BN, BK, TM, TN = (cfg[k] for k in ("bm", "bn", "bk", "tm", "tn"))
    RT, CT = BM // TM, BN // TN
    T = RT * CT
    LA, LB = gpu.cdiv(BM * BK, T), gpu.cdiv(BK * BN, T)
    # Micro-tile row i of a thread: quads (4 consecutive rows, one vector read) when tm allows.
    qm, qn = (4 if TM % 4 == 0 else 1), (4 if TN % 4 == 0 else 1)
    row = [(i // qm) * RT * qm + i % qm for i in range(TM)]
    col = [(j // qn) * CT * qn + j % qn for j in range(TN)]
    align = "" if gpu.SIMULATOR else ", 16"            # (the simulator takes no alignment)
    L = [f"def {name}({PARAMS}):",
         f"    As = gpu.shared_array({2 * BK * BM}, F{align})",
         f"    Bs = gpu.shared_array({2 * BK * BN}, F{align})",
         "    tid = gpu.threadIdx.x",
         f"    tx = tid % {CT}",
         f"    ty = tid // {CT}",
         f"    m0 = gpu.blockIdx.y * {BM}",
         f"    n0 = gpu.blockIdx.x * {BN}"]
    # Load coordinates of element e = tid + r * T of each tile, recomputed per tile from tid
    # (shifts and masks) rather than held: registers go to the accumulators.
    co: dict[str, str] = {}
    for r in range(LA):
        e = f"(tid + {r * T})"
        mm, kk = (f"{e} // {BK}", f"{e} % {BK}") if a_kfast else (f"{e} % {BM}", f"{e} // {BM}")
        co[f"am{r}"], co[f"ak{r}"] = f"({mm})", f"({kk})"
        co[f"aok{r}"] = f"(m0 + {mm} < M and {e} < {BM * BK})"
    for r in range(LB):
        e = f"(tid + {r * T})"
        nn, kk = (f"{e} % {BN}", f"{e} // {BN}") if b_nfast else (f"{e} // {BK}", f"{e} % {BK}")
        co[f"bn{r}"], co[f"bk{r}"] = f"({nn})", f"({kk})"
        co[f"bok{r}"] = f"(n0 + {nn} < N and {e} < {BK * BN})"

    def sub(line: str) -> str:
        return re.sub(r"\b(a[mk]\d+|aok\d+|b[nk]\d+|bok\d+)\b", lambda m: co[m.group(1)], line)

    L += _batch_head(BK, spec)
    ind = "        "

    def loads(k0: str) -> list[str]:
        out = []
        for r in range(LA):
            src = f"a[ab + (m0 + am{r}) * sam + ({k0} + ak{r}) * sak]"
            out.append(sub(f"{ind}ra{r} = {_load(a_dt, src)} if aok{r} and {k0} + ak{r} < K "
                           "else F(0)"))
        for r in range(LB):
            src = f"b[bb + ({k0} + bk{r}) * sbk + (n0 + bn{r}) * sbn]"
            out.append(sub(f"{ind}rb{r} = {_load(b_dt, src)} if bok{r} and {k0} + bk{r} < K "
                           "else F(0)"))
        return out

    def stores(stage: str, pre: str) -> list[str]:
        out = []
        for r in range(LA):
            guard = "" if (BM * BK) % T == 0 or r < LA - 1 else f"if tid + {r * T} < {BM * BK}: "
            out.append(sub(f"{pre}{guard}As[{stage} * {BK * BM} + ak{r} * {BM} + am{r}] = ra{r}"))
        for r in range(LB):
            guard = "" if (BK * BN) % T == 0 or r < LB - 1 else f"if tid + {r * T} < {BK * BN}: "
            out.append(sub(f"{pre}{guard}Bs[{stage} * {BK * BN} + bk{r} * {BN} + bn{r}] = rb{r}"))
        return out

    L += loads("0") + stores("0", ind) + [f"{ind}gpu.syncthreads()"]
    L += [f"{ind}acc{i}_{j} = F(0)" for i in range(TM) for j in range(TN)]
    L += [f"{ind}for t in range(ntiles):",
          f"{ind}    s = t & 1",
          f"{ind}    more = t + 1 < ntiles",
          f"{ind}    if more:",
          f"{ind}        k1 = (t + 1) * {BK}"]
    L += ["    " * 2 + ln for ln in loads("k1")]
    L += [f"{ind}    for kk in range({BK}):",
          f"{ind}        ka = np.uint32(s * {BK * BM} + kk * {BM} + ty * {qm})",
          f"{ind}        kb = np.uint32(s * {BK * BN} + kk * {BN} + tx * {qn})"]
    # Unsigned 64-bit sums of a 32-bit base (no wraparound) let NVVM merge a quad's reads.
    L += [f"{ind}        x{i} = As[ka + np.uint32({row[i]})]" for i in range(TM)]
    L += [f"{ind}        y{j} = Bs[kb + np.uint32({col[j]})]" for j in range(TN)]
    L += [f"{ind}        acc{i}_{j} += x{i} * y{j}" for i in range(TM) for j in range(TN)]
    L += [f"{ind}    if more:"] + stores("(1 - s)", ind + "        ")
    L += [f"{ind}    gpu.syncthreads()"]
    for i in range(TM):
        for j in range(TN):
            L += _epilogue(ind, f"(m0 + ty * {qm} + {row[i]})", f"(n0 + tx * {qn} + {col[j]})",
                           f"acc{i}_{j}", spec)
    L.append(f"{ind}bz += gpu.gridDim.z")
    return cheap_index_math("\n".join(L) + "\n")


def cheap_index_math(src: str) -> str:
    """``src`` with ``// 2**k`` as ``>> k``, ``% 2**k`` as ``& (2**k - 1)`` and shared-memory
    indices as uint32. Every divisor in the generated kernels is a power of two and every
    operand non-negative, so this is exact; Python's floor division and modulo of signed
    integers, and signed indices (which Numba wraps around when negative), cost selects and
    registers: the 128x128 float32 tile went from 255 registers and 444 bytes of spills to
    128 registers."""
    def shift(m: re.Match) -> str:
        x, op, n = m.group(1), m.group(2), int(m.group(3))
        if n <= 0 or n & (n - 1):
            return m.group(0)
        return f"({x} >> {n.bit_length() - 1})" if op == "//" else f"({x} & {n - 1})"
    # A left operand that is a name or one parenthesized group, not itself the right operand
    # of * / % (whose left-to-right grouping the parentheses would change).
    src = re.sub(r"(?<![*/%] )(\([^()]*\)|\b[A-Za-z_]\w*) (//|%) (\d+)\b(?!\.)", shift, src)
    return re.sub(r"\b(As|Bs)\[([^\]]+)\]", lambda m: m.group(0) if "np.uint32" in m.group(2)
                  else f"{m.group(1)}[np.uint32({m.group(2)})]", src)


_MMA_OPERANDS = {"a": ("mk", 0, "m0", "M", "sam", "rs"), "b": ("kn", 1, "n0", "N", "sbn", "cs"),
                 "bt": ("nk", 0, "n0", "N", "sbn", "cs")}
"""Per operand of the tensor-core kernel: its tile's dims (first, second), which of them is
the outer (M or N) one, that one's block origin, bound and stride, and the name of the line's
offset (``ars``: A's row start, ``bcs``: B's column start)."""


def _mma_load_coords(p: str, tile: tuple[int, int], count: int, T: int, unit: int,
                     fast_second: bool) -> list[str]:
    """Kernel lines: coordinates of load slot ``r < count`` (element or ``unit``-element chunk
    ``tid + r * T``) of operand ``p``'s ``tile``, whether it lies inside the matrix, and its
    line's offset. ``fast_second``: consecutive slots run along the tile's second dim."""
    dims, outer, origin, bound, stride, offset = _MMA_OPERANDS[p]
    p = p[0]                              # "bt": B's tile staged [n][k], B's names
    first, second = tile
    lines = []
    for r in range(count):
        e = f"(tid + {r * T})"
        if fast_second:
            c0, c1 = f"{e} // {second // unit}", f"({e} % {second // unit}) * {unit}"
        else:
            c0, c1 = f"{e} % {first}", f"{e} // {first}"
        o = f"{p}{dims[outer]}{r}"
        lines += [f"    {p}{dims[0]}{r} = {c0}", f"    {p}{dims[1]}{r} = {c1}",
                  f"    {p}ok{r} = {origin} + {o} < {bound} and {e} < {first * second // unit}",
                  f"    {p}{offset}{r} = ({origin} + {o}) * {stride} if {p}ok{r} else 0"]
    return lines


def mma_stage_halves(cfg: dict[str, int], b_tvec: bool = False) -> int:
    """Halves of shared memory one pipeline stage of the tensor-core kernel stages."""
    BM, BN, BK = cfg["bm"], cfg["bn"], cfg["bk"]
    return BM * (BK + PAD) + (BN * (BK + PAD) if b_tvec else BK * (BN + PAD))


def mma_source(name: str, cfg: dict[str, int], bf16: bool, a_vec: bool, b_vec: bool,
               a_kfast: bool, b_nfast: bool, b_tvec: bool = False, *,
               spec: tuple[Any, ...]) -> str:
    """The tensor-core kernel (module doc) for one tile, operand load modes and epilogue;
    ``b_tvec``: B is transposed (k contiguous, 16-byte rows) and staged ``[n][k]``."""
    BM, BN, BK, WM, WN, S = (cfg[k] for k in ("bm", "bn", "bk", "wm", "wn", "stages"))
    T = 32 * WM * WN
    WTM, WTN = BM // WM, BN // WN
    MT, NT = WTM // 16, WTN // 8
    LDA, LDB = BK + PAD, (BK + PAD if b_tvec else BN + PAD)
    SA, SB = BM * LDA, (BN if b_tvec else BK) * LDB
    mma = "tc.mma_bf16" if bf16 else "tc.mma_f16"
    L = [f"def {name}({PARAMS}):",
         "    sm = gpu.shared_array(0, U16)",
         f"    scratch = gpu.shared_array({tc.scratch_size(T)}, np.int64)",
         "    tid = gpu.threadIdx.x",
         "    lane = tid & 31",
         "    warp = tid >> 5",
         f"    wy = warp // {WN}",
         f"    wx = warp % {WN}",
         "    g = lane >> 2",
         "    t4 = lane & 3",
         f"    m0 = gpu.blockIdx.y * {BM}",
         f"    n0 = gpu.blockIdx.x * {BN}"]
    L += [f"    alds{mt} = (wy * {WTM} + {mt * 16} + (lane & 15)) * {LDA} + (lane >> 4) * 8"
          for mt in range(MT)]
    if b_tvec:
        # [n][k] rows: lane 8i + r passes row r of matrix i = (n 8 * (i >> 1) + r, k 8 * (i & 1)),
        # so plain ldmatrix gives b0, b1 of the pair's first n8 tile, then of its second.
        L += [f"    blds{p} = {S * SA} + (wx * {WTN} + {p * 16} + ((lane >> 4) << 3) "
              f"+ (lane & 7)) * {LDB} + ((lane >> 3) & 1) * 8" for p in range(NT // 2)]
    else:
        L += [f"    blds{p} = {S * SA} + (lane & 15) * {LDB} + wx * {WTN} + {p * 16} "
              "+ (lane >> 4) * 8" for p in range(NT // 2)]
    # Per-thread load coordinates: 8-half chunks (cp.async) or single elements.
    ua = 8 if a_vec else 1
    ub = 8 if b_vec or b_tvec else 1
    NA, NB = BM * BK // ua, BK * BN // ub
    LA, LB = gpu.cdiv(NA, T), gpu.cdiv(NB, T)
    L += _mma_load_coords("a", (BM, BK), LA, T, ua, a_vec or a_kfast)
    if b_tvec:
        L += _mma_load_coords("bt", (BN, BK), LB, T, ub, True)
    else:
        L += _mma_load_coords("b", (BK, BN), LB, T, ub, b_vec or b_nfast)
    L += _batch_head(BK, spec)
    ind = "        "

    def load_tile(pre: str, k0: str, stage: str) -> list[str]:
        out = []
        for r in range(LA):
            dst = f"{stage} * {SA} + am{r} * {LDA} + ak{r}"
            gk = f"({k0} + ak{r})"
            if a_vec:
                out += [f"nby = min(max((K - {gk}) * 2, 0), 16) if aok{r} else 0",
                        f"tc.cp_async16(sm, {dst}, a, ab + ars{r} + {gk} if nby > 0 else 0, "
                        "nby)"]
            else:
                out += [f"if {e_ok('a', r, NA, T, LA)}:",
                        f"    sm[{dst}] = a[ab + ars{r} + {gk} * sak] "
                        f"if aok{r} and {gk} < K else np.uint16(0)"]
        for r in range(LB):
            dst = f"{S * SA} + {stage} * {SB} + bk{r} * {LDB} + bn{r}"
            gk = f"({k0} + bk{r})"
            if b_tvec:
                dst = f"{S * SA} + {stage} * {SB} + bn{r} * {LDB} + bk{r}"
                out += [f"nby = min(max((K - {gk}) * 2, 0), 16) if bok{r} else 0",
                        f"tc.cp_async16(sm, {dst}, b, bb + bcs{r} + {gk} if nby > 0 else 0, "
                        "nby)"]
            elif b_vec:
                out += [f"nby = min(max((N - n0 - bn{r}) * 2, 0), 16) if {gk} < K else 0",
                        f"tc.cp_async16(sm, {dst}, b, bb + {gk} * sbk + bcs{r} "
                        "if nby > 0 else 0, nby)"]
            else:
                out += [f"if {e_ok('b', r, NB, T, LB)}:",
                        f"    sm[{dst}] = b[bb + {gk} * sbk + bcs{r}] "
                        f"if bok{r} and {gk} < K else np.uint16(0)"]
        return [pre + ln for ln in out]

    L += [f"{ind}acc{mt}_{nt}_{q} = np.float32(0)"
          for mt in range(MT) for nt in range(NT) for q in range(4)]
    L += [f"{ind}for s in range({S - 1}):", f"{ind}    if s < ntiles:"]
    L += load_tile(ind + "        ", f"s * {BK}", "s")
    L += [f"{ind}    tc.cp_async_commit()",
          f"{ind}for t in range(ntiles):",
          f"{ind}    tc.cp_async_wait({S - 2})",
          f"{ind}    gpu.syncthreads()",
          f"{ind}    tn = t + {S - 1}",
          f"{ind}    if tn < ntiles:"]
    L += load_tile(ind + "        ", f"tn * {BK}", f"(tn % {S})")
    L += [f"{ind}    tc.cp_async_commit()",
          f"{ind}    st = t % {S}",
          f"{ind}    for ks in range({BK // 16}):",
          f"{ind}        oa = st * {SA} + ks * 16",
          f"{ind}        obb = st * {SB} + ks * {16 if b_tvec else 16 * LDB}"]
    pre = ind + "        "
    for mt in range(MT):
        L.append(f"{pre}fa{mt}_0, fa{mt}_1, fa{mt}_2, fa{mt}_3 = "
                 f"tc.ldmatrix_x4(sm, oa + alds{mt}, scratch)")
    for p in range(NT // 2):
        L.append(f"{pre}fb{p}_0, fb{p}_1, fb{p}_2, fb{p}_3 = "
                 f"tc.ldmatrix_x4{'' if b_tvec else '_trans'}(sm, obb + blds{p}, scratch)")
    for mt in range(MT):
        for nt in range(NT):
            acc = ", ".join(f"acc{mt}_{nt}_{q}" for q in range(4))
            fa = ", ".join(f"fa{mt}_{q}" for q in range(4))
            p, h = divmod(nt, 2)
            L.append(f"{pre}{acc} = {mma}({acc}, {fa}, fb{p}_{2 * h}, fb{p}_{2 * h + 1}, "
                     "scratch)")
    L += [f"{ind}tc.cp_async_wait(0)", f"{ind}gpu.syncthreads()",
          f"{ind}er = m0 + wy * {WTM} + g", f"{ind}ec = n0 + wx * {WTN} + 2 * t4"]
    for mt in range(MT):
        for nt in range(NT):
            for q in range(4):
                row = f"(er + {mt * 16 + 8 * (q >> 1)})"
                col = f"(ec + {nt * 8 + (q & 1)})"
                L += _epilogue(ind, row, col, f"acc{mt}_{nt}_{q}", spec)
    L.append(f"{ind}bz += gpu.gridDim.z")
    return cheap_index_math("\n".join(L) + "\n")


def e_ok(x: str, r: int, n: int, T: int, count: int) -> str:
    """Guard of load slot ``r`` when the tile's ``n`` loads do not divide over ``T`` threads."""
    return "True" if n % T == 0 or r < count - 1 else f"tid + {r * T} < {n}"


_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}
_SIM_MATH = SimpleNamespace(exp=np.exp, erf=math.erf)
"""The activations' math under the simulator: NumPy's exp overflows to inf as the GPU's does,
where Python's raises."""


def _tag(dt: Any) -> str:
    return "x" if dt is None else ("bf16" if np.dtype(dt) == dtypes.bfloat16
                                   else np.dtype(dt).str.strip("<>|="))


def _build(kind: str, cfg: dict[str, int], ct: np.dtype, dts: tuple[Any, ...],
           modes: tuple[bool, ...], spec: tuple[Any, ...]) -> gpu.Kernel:
    key = (kind, tuple(sorted(cfg.items())), np.dtype(ct).str, tuple(map(_tag, dts)), modes,
           tuple(map(_tag, spec[:3])), spec[3], _tag(spec[4]))
    k = _kernels.get(key)
    if k is not None:
        return k
    name = "_".join([f"mm_{kind}", *(str(v) for _, v in sorted(cfg.items())),
                     *map(_tag, dts), *("v" if m else "s" for m in modes),
                     *map(_tag, spec[:3]), str(spec[3] or "id"), _tag(spec[4])])
    if kind == "mma":
        src = mma_source(name, cfg, np.dtype(dts[0]) == dtypes.bfloat16, *modes, spec=spec)
    else:
        src = simt_source(name, cfg, dts[0], dts[1], *modes, spec)
    # U16: the simulator sizes dynamic shared arrays by dtype.itemsize (a dtype instance).
    ns = {"gpu": gpu, "np": np, "math": _SIM_MATH if gpu.SIMULATOR else math, "tc": tc,
          "F": np.dtype(ct).type, "U16": np.dtype(np.uint16) if gpu.SIMULATOR else np.uint16}
    k = _kernels[key] = red.build(name, src, ns, __name__, threads=threads_per_block(kind, cfg))
    return k


def threads_per_block(kind: str, knobs: dict[str, int]) -> int:
    """Threads of one block of the ``kind`` ('mma' or 'simt') kernel for tile ``knobs``; its
    registers are capped to fit them (uncapped, 512 threads of 255 registers do not launch)."""
    return 32 * knobs["wm"] * knobs["wn"] if kind == "mma" else \
        (knobs["bm"] // knobs["tm"]) * (knobs["bn"] // knobs["tn"])


# --- configs and selection -----------------------------------------------------------------------

def _pow2(n: int, lo: int, hi: int) -> int:
    return min(max(red.pow2ceil(n), lo), hi)


def simt_tile(bm: int, bn: int, bk: int) -> Config:
    """The SIMT config nearest a requested (BM, BN, BK): powers of two, up to 1024 threads."""
    bm, bn, bk = _pow2(bm, 16, 256), _pow2(bn, 16, 256), _pow2(bk, 4, 32)
    return Config(kind="simt", bm=bm, bn=bn, bk=bk, tm=min(8, max(2, bm // 16)),
                  tn=min(8, max(2, bn // 16)))


def mma_tile(bm: int, bn: int, bk: int) -> Config:
    """The tensor-core config nearest a requested (BM, BN, BK); warp tiles of 64 x 32 at most."""
    bm = min(max(gpu.cdiv(bm, 32) * 32, 32), 256)
    bn = min(max(gpu.cdiv(bn, 32) * 32, 32), 256)
    bk = 16 if bk <= 16 else 32 if bk <= 32 else 64
    wm, wn = max(1, bm // 64), max(1, bn // 32)
    while bm % wm or (bm // wm) % 16:
        wm -= 1
    stages = 3
    tile = {"bm": bm, "bn": bn, "bk": bk}
    # Stages that fit either way B is staged ([k][n], or [n][k] when transposed).
    while stages > 2 and 2 * stages * max(mma_stage_halves(tile, t) for t in (False, True)) \
            > SMEM_LIMIT:
        stages -= 1
    return Config(kind="mma", bm=bm, bn=bn, bk=bk, wm=wm, wn=wn, stages=stages)


MMA_LARGE = mma_tile(128, 256, 32)
"""The tensor-core tile of large products: 128 x 256 x 32, 2 x 8 warps. Measured on the H200
(bench/RESULTS.md, 2026-12-04): bfloat16 8192^3 at 201.6 TFLOP/s against 146.4 with ``MMA``."""
LARGE_OUTPUT = 1 << 25
"""Output elements (8192 x 4096) from which the heuristic picks ``MMA_LARGE``."""
CONFIGS.append(MMA_LARGE)


def _one_half(metas: Sequence[Any]) -> bool:
    return metas[0].dtype == metas[1].dtype and metas[0].dtype in HALF


def plain(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    """No epilogue of any kind: no activation, no bias/residual/c, alpha == 1."""
    return (attrs.get("epilogue", "none") == "none" and all(m is None for m in metas[2:])
            and attrs.get("alpha", 1.0) == 1.0)


def prefer_cublas(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    """The selection rule of the module doc (to be confirmed by measurement)."""
    return (not gpu.HOST_ARRAYS and attrs.get("tile_shape") is None and plain(metas, attrs)
            and metas[0].dtype == metas[1].dtype and metas[0].dtype in VENDOR_DTYPES)


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    if prefer_cublas(metas, attrs):
        return CUBLAS
    tile = attrs.get("tile_shape")
    if _one_half(metas):
        if tile:
            return mma_tile(*tile)
        rows, cols = math.prod(metas[0].shape[:-1]), metas[1].shape[-1]
        return MMA_LARGE if rows * cols >= LARGE_OUTPUT else MMA
    if tile:
        return simt_tile(*tile)
    out = dtypes.result_type(metas[0].dtype, metas[1].dtype)
    return SIMT64 if out == dtypes.float64 else SIMT32


def _vendor_legal(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return plain(metas, attrs) and metas[0].dtype == metas[1].dtype


# --- running -------------------------------------------------------------------------------------

def run(a: Any, b: Any, out: Any, config: Config, *, c: Any = None, bias: Any = None,
        residual: Any = None, activation: str = "none", alpha: float = 1.0, beta: float = 0.0,
        trans_a: bool = False, trans_b: bool = False) -> None:
    """``out = epilogue(alpha * op(a) @ op(b))`` with NumPy matmul shape rules in our kernels."""
    if out.size == 0:
        return
    a2 = a[None, :] if a.ndim == 1 else (a.swapaxes(-1, -2) if trans_a else a)
    b2 = b[:, None] if b.ndim == 1 else (b.swapaxes(-1, -2) if trans_b else b)
    (M, K), N = a2.shape[-2:], b2.shape[-1]
    batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    nbatch = math.prod(batch)
    full = batch + (M, N)
    knobs = config.asdict()
    kind = knobs.pop("kind")
    mma = kind == "mma"
    ct = np.dtype(np.float32 if mma else dtypes.compute_dtype(out.dtype))
    if mma:
        a2, b2 = a2.view(np.uint16), b2.view(np.uint16)
    a_args, a_vec, _ = _operand(gpu.kernel_view(a2), batch)
    b_args, b_vec, b_tvec = _operand(gpu.kernel_view(b2), batch)
    args = a_args + b_args
    dts = [a.dtype, b.dtype]
    spec: list[Any] = []
    for x in (c, bias, residual):
        if x is None:
            args += _absent(ct)
            spec.append(None)
        else:
            xb = gpu.array_module().broadcast_to(x, out.shape).reshape(full)
            args += _operand(gpu.kernel_view(xb), batch)[0]
            spec.append(x.dtype)
    spec += [ACTS[activation], out.dtype]
    args += [gpu.kernel_view(out).reshape(-1), M, N, K, nbatch, float(alpha), float(beta)]
    a_kfast = abs(args[3]) <= abs(args[2])
    b_nfast = abs(args[7]) <= abs(args[6])
    # b_tvec: B transposed (k contiguous) is staged [n][k] by cp.async, as A is [m][k].
    modes = ((a_vec, b_vec, a_kfast, b_nfast) + ((True,) if b_tvec else ())) if mma else \
        (a_kfast, b_nfast)
    shared = 2 * knobs["stages"] * mma_stage_halves(knobs, b_tvec) if mma else 0
    kern = _build(kind, knobs, ct, tuple(dts), modes, tuple(spec))
    grid = (gpu.cdiv(N, knobs["bn"]), gpu.cdiv(M, knobs["bm"]), min(nbatch, 65535))
    gpu.launch(kern, grid, threads_per_block(kind, knobs), args, shared=shared)


def _config_for(config: Config, tile_shape: Any) -> Config:
    """``config``, refitted to ``tile_shape`` when one is given (tile_shape wins)."""
    if tile_shape is None:
        return config
    if config.asdict().get("kind") == "mma":
        return mma_tile(*tile_shape)
    return simt_tile(*tile_shape)


def _legal_kind(config: Config, a: Any, b: Any) -> Config:
    """The tensor-core path needs one half dtype; anything else falls back to SIMT."""
    if config.asdict().get("kind") == "mma" and not (a.dtype == b.dtype and a.dtype in HALF):
        return SIMT64 if dtypes.result_type(a.dtype, b.dtype) == dtypes.float64 else SIMT32
    return config


# --- registrations --------------------------------------------------------------------------------

@kernel("matmul", backend="cuda", dtypes=FLOATS, configs=CONFIGS, heuristic=_heuristic,
        replays=True)
def matmul_cuda(a: Any, b: Any, bias: Any, residual: Any, *, out: Any, config: Config,
                epilogue: str, tile_shape: tuple[int, int, int] | None) -> None:
    """NumPy-rule matmul with the fused epilogue; plain float32/float64 calls go to cuBLAS."""
    if config == CUBLAS:
        matmul_cublas(a, b, bias, residual, out=out, config=config, epilogue=epilogue,
                      tile_shape=tile_shape)
        return
    config = _legal_kind(_config_for(config, tile_shape), a, b)
    run(a, b, out, config, bias=bias, residual=residual, activation=epilogue)


@kernel("gemm", backend="cuda", dtypes=FLOATS, configs=CONFIGS, heuristic=_heuristic,
        replays=True)
def gemm_cuda(a: Any, b: Any, c: Any, bias: Any, residual: Any, *, out: Any, config: Config,
              alpha: float, beta: float, trans_a: bool, trans_b: bool, epilogue: str,
              tile_shape: tuple[int, int, int] | None) -> None:
    """``alpha * op(a) @ op(b) + beta * c`` with the fused epilogue, batched; transposes are
    strides."""
    if config == CUBLAS:
        gemm_cublas(a, b, c, bias, residual, out=out, config=config, alpha=alpha, beta=beta,
                    trans_a=trans_a, trans_b=trans_b, epilogue=epilogue, tile_shape=tile_shape)
        return
    config = _legal_kind(_config_for(config, tile_shape), a, b)
    run(a, b, out, config, c=c, bias=bias, residual=residual, activation=epilogue, alpha=alpha,
        beta=beta, trans_a=trans_a, trans_b=trans_b)


@kernel("matmul", backend="cuda", vendor="cublas", dtypes=VENDOR_DTYPES, supports=_vendor_legal)
def matmul_cublas(a: Any, b: Any, bias: None, residual: None, *, out: Any, config: Config,
                  epilogue: str, tile_shape: Any) -> None:
    """``cupy.matmul`` (cuBLAS sgemm/dgemm)."""
    gpu.array_module().matmul(a, b, out=out)


# alias_ok=False: out= may be c itself, which the passes after the product read.
@kernel("gemm", backend="cuda", vendor="cublas", dtypes=VENDOR_DTYPES, supports=_vendor_legal,
        alias_ok=False)
def gemm_cublas(a: Any, b: Any, c: Any, bias: None, residual: None, *, out: Any,
                config: Config, alpha: float, beta: float, trans_a: bool, trans_b: bool,
                epilogue: str, tile_shape: Any) -> None:
    """``cupy.matmul`` on transposed views (cuBLAS handles the transposes)."""
    gpu.array_module().matmul(a.swapaxes(-1, -2) if trans_a else a,
                              b.swapaxes(-1, -2) if trans_b else b, out=out)


__all__ = ["CONFIGS", "run", "simt_source", "mma_source", "simt_tile", "mma_tile",
           "prefer_cublas", "threads_per_block"]
