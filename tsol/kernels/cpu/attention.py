"""CPU kernels for flash_attention and rope, generated per storage dtype from one template.

flash_attention: one parallel task per (batch, head, query tile). A task packs its ``bq x D``
query tile (times ``scale``) into float32 scratch (float64 for float64), then walks the key
tiles: it packs ``K_blk^T`` (D x bk) and ``V_blk`` (bk x Dv), computes ``S = Q_blk K_blk^T``
with ``tile_fma`` register tiles (4 query rows x 128 bytes of keys, accumulators in registers;
see attention_tiles.py), and runs the online softmax per row: the new running max ``m``
(``row_max``), ``alpha = exp(m_old - m)`` rescales the running sum and the accumulator,
``P = exp(S - m)`` overwrites S, its row sum (``row_sum``) updates the running sum, and
``acc += P V_blk`` runs on the same register tiles. The last step divides by the running sum.
Scratch per task is a few tiles, so memory is O(S * D) and no S x Skv buffer exists. Causal
runs stop at the last key tile a tile's bottom query sees and mask only inside the diagonal
tiles. Tasks interleave early and late query tiles (0, n-1, 1, n-2, ...) so that Numba's static
split of the causal work between threads is even. Sums run in tile and lane order: results
depend on the block sizes, never on the thread count. float16 and bfloat16 share one compiled
"half" kernel (loads convert to float32 in the packing loops). An additive mask is added to each
row of S (over its visible keys) before the row max; the kernels take it as a [B, H, S, Skv]
broadcast view, or None, for which Numba compiles its branches out (the unmasked code stays as
it was).

rope: cos/sin tables, one row per element of ``positions`` (at most one per row of x), are
computed in float64 by NumPy and kept in the compute type; one parallel pass over the rows of
x rotates each (2i, 2i+1) pair by its row's table entry.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cpu.attention_tiles import render
from tsol.kernels.cpu.jit import storage_kind
from tsol.kernels.cpu.scalar import storage_view
from tsol.ops.attention import default_positions, rope_angles
from tsol.registry import Config, kernel

TEMPLATE = '''
@kernel_jit($JIT_OPTIONS)
def attend_tile(q, k, v, mask, out, b, h, hk, i0, bq, bk, scale, offset, causal, bf16):
    """Rows i0:i0+bq of head h (kv head hk) of batch b: online softmax over key tiles.
    ``mask``: None (its branches are compiled out) or the [B, H, S, Skv] additive mask."""
    s_len, d_len = q.shape[2], q.shape[3]
    skv, dv = k.shape[2], v.shape[3]
    ni = min(bq, s_len - i0)
    nip = (ni + MR - 1) // MR * MR           # rows padded to the micro-tile; padding is zeros
    bkp = (bk + NR - 1) // NR * NR           # columns padded to whole vectors
    dvp = (dv + NR - 1) // NR * NR
    sc = $CT(scale)
    qb = np.zeros((nip, d_len), $CT)
    kt = np.zeros((d_len, bkp), $CT)
    vb = np.zeros((bk, dvp), $CT)
    s = np.zeros((nip, bkp), $CT)
    acc = np.zeros((nip, dvp), $CT)
    m = np.empty(nip, $CT)
    l = np.zeros(nip, $CT)
    for i in range(ni):
        m[i] = -np.inf
        for d in range(d_len):
            qb[i, d] = $CT($LOAD(q[b, h, i0 + i, d], bf16)) * sc
    # Keys past the last one the bottom row sees are masked for the whole tile.
    kend = skv if not causal else max(0, min(skv, i0 + ni + offset))
    for j0 in range(0, kend, bk):
        nj = min(bk, kend - j0)
        njp = (nj + NR - 1) // NR * NR
        for j in range(nj):
            for d in range(d_len):
                kt[d, j] = $LOAD(k[b, hk, j0 + j, d], bf16)
            for d in range(dv):
                vb[j, d] = $LOAD(v[b, hk, j0 + j, d], bf16)
        # S = Q K^T by MR x NR register tiles. Columns nj:njp see stale K columns; nothing
        # reads them.
        for i in range(nip):
            for j in range(njp):
                s[i, j] = 0.0
        for i in range(0, nip, MR):
            for jc in range(0, njp, NR):
                tile_fma(s, qb, kt, i, jc, d_len)
        # Online softmax: P = exp(S - m_new) replaces S; alpha rescales the old sum and acc.
        # Masked and padding columns become -inf, so whole vectors reduce and exp gives 0.
        for i in range(ni):
            lim = nj if not causal else max(0, min(nj, i0 + i + offset - j0 + 1))
            if mask is not None:
                mrow = mask[b, h, i0 + i]
                for j in range(lim):
                    s[i, j] += $CT(mrow[j0 + j])
            for j in range(lim, njp):
                s[i, j] = -np.inf
            mx = max(m[i], row_max(s, i, njp))
            if mx == -np.inf:                # no visible key, or only -inf and NaN scores
                for j in range(lim):
                    mx = s[i, j] if s[i, j] != s[i, j] else mx
            if mx == -np.inf:
                for j in range(njp):
                    s[i, j] = 0.0
                continue
            for j in range(njp):
                s[i, j] = $EXP(s[i, j] - mx)
            alpha = $EXP(m[i] - mx)
            m[i] = mx
            l[i] = l[i] * alpha + row_sum(s, i, njp)
            if alpha != 1.0:
                for d in range(dv):
                    acc[i, d] *= alpha
        for i in range(ni, nip):
            for j in range(njp):
                s[i, j] = 0.0
        # acc += P V_blk, the same register tiles with the key axis as the inner dimension.
        for i in range(0, nip, MR):
            for dc in range(0, dvp, NR):
                tile_fma(acc, s, vb, i, dc, nj)
    for i in range(ni):
        inv = $CT(1.0) / l[i] if l[i] != 0.0 else $CT(0.0)
        for d in range(dv):
            out[b, h, i0 + i, d] = $STORE(acc[i, d] * inv, bf16)


@kernel_jit(parallel=True, $JIT_OPTIONS)
def flash_attention_fwd(q, k, v, mask, out, scale, causal, bq, bk, bf16):
    """out[b, h] = softmax(q[b, h] k[b, hk]^T * scale + mask[b, h]) v[b, hk] for every (b, h)
    in parallel; ``mask`` None or [B, H, S, Skv] (a broadcast view)."""
    nb, nh, s_len = q.shape[0], q.shape[1], q.shape[2]
    group = nh // k.shape[1]
    nqb = (s_len + bq - 1) // bq
    offset = k.shape[2] - s_len
    for task in prange(nb * nh * nqb):
        bh = task // nqb
        t = task - bh * nqb
        qi = t // 2 if t % 2 == 0 else nqb - 1 - t // 2
        b = bh // nh
        h = bh - b * nh
        attend_tile(q, k, v, mask, out, b, h, h // group, qi * bq, bq, bk, scale, offset,
                    causal, bf16)


@kernel_jit(parallel=True, $JIT_OPTIONS)
def rope_rows(x, out, row_pos, cos_t, sin_t, rows_per_task, bf16):
    """Rotate each (2i, 2i+1) pair of row r of the (R, D) x by table row row_pos[r]."""
    r_len, half = x.shape[0], x.shape[1] // 2
    for task in prange((r_len + rows_per_task - 1) // rows_per_task):
        for r in range(task * rows_per_task, min(r_len, (task + 1) * rows_per_task)):
            c, s, xr, orow = cos_t[row_pos[r]], sin_t[row_pos[r]], x[r], out[r]
            for i in range(half):
                x0 = $CT($LOAD(xr[2 * i], bf16))
                x1 = $CT($LOAD(xr[2 * i + 1], bf16))
                orow[2 * i] = $STORE(x0 * c[i] - x1 * s[i], bf16)
                orow[2 * i + 1] = $STORE(x0 * s[i] + x1 * c[i], bf16)
'''

_modules: dict[str, ModuleType] = {}


def _kernels(dt: np.dtype) -> ModuleType:
    kind = storage_kind(dt)
    if kind not in _modules:
        _modules[kind] = render("attention", TEMPLATE, kind)
    return _modules[kind]


# --- flash_attention ----------------------------------------------------------------------

BLOCKS = (16, 32, 64, 128)
CONFIGS = [Config(block_q=bq, block_k=bk) for bq in BLOCKS for bk in BLOCKS]


def _attention_heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    # 64 x 64 tiles: Q, K^T, V, S and the accumulator (80 KB at D = 64, float32) sit in L2,
    # and a 64-wide row of S is a few vectors. Short sequences shrink the query tile so that
    # B * H * S/bq tasks still feed every thread.
    s_len = metas[0].shape[2]
    bq = 64 if s_len >= 256 else 32 if s_len >= 64 else 16
    return Config(block_q=bq, block_k=64)


@kernel("flash_attention", backend="cpu", dtypes=dtypes.FLOATS, configs=CONFIGS,
        heuristic=_attention_heuristic, alias_ok=False)
def flash_attention_cpu(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                        *, out: np.ndarray, config: Config, causal: bool, scale: float,
                        block_q: int | None, block_k: int | None) -> None:
    """Tiled flash attention; ``block_q``/``block_k`` override the config's tiles. A mask
    reaches the kernel as a [B, H, S, Skv] broadcast view (no copy), half masks widened to
    float32 in their own shape first."""
    if out.size == 0:
        return
    bq = block_q or config.block_q
    bk = block_k or config.block_k
    if mask is not None:
        wide = mask.astype(np.float32) if mask.dtype in dtypes.HALF else mask
        mask = np.broadcast_to(wide, (*q.shape[:3], k.shape[2]))
    _kernels(q.dtype).flash_attention_fwd(storage_view(q), storage_view(k), storage_view(v),
                                          mask, storage_view(out), scale, causal, bq, bk,
                                          q.dtype == dtypes.bfloat16)


# --- rope ---------------------------------------------------------------------------------

def _rope_supports(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return metas[0].dtype in dtypes.FLOATS


@kernel("rope", backend="cpu", supports=_rope_supports, configs=[Config(task_elems=32768)])
def rope_cpu(x: np.ndarray, positions: np.ndarray | None, *, out: np.ndarray, config: Config,
             theta: float) -> None:
    """Rotate pairs of the last axis by the angles of ``positions`` (default 0..S-1)."""
    if x.size == 0:
        return
    d = x.shape[-1]
    lead = x.shape[:-1]
    pos = default_positions(x.shape) if positions is None else np.asarray(positions)
    # One table row per element of ``positions`` (at most one per row of x), mapped to rows
    # through a broadcast index.
    table_pos = pos.reshape(-1)
    row_pos = np.broadcast_to(np.arange(table_pos.size).reshape(pos.shape), lead).reshape(-1)
    # The tables are constants of the positions: NumPy's float64 cos/sin, then the compute type.
    ang = rope_angles(table_pos, d, theta)
    ct = dtypes.compute_dtype(x.dtype)
    cos_t, sin_t = np.cos(ang).astype(ct), np.sin(ang).astype(ct)
    k = _kernels(x.dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, d)
    rows = max(1, min(x2.shape[0], config.task_elems // max(d, 1)))
    k.rope_rows(storage_view(x2), storage_view(out).reshape(-1, d),
                np.ascontiguousarray(row_pos), cos_t, sin_t, rows, x.dtype == dtypes.bfloat16)

