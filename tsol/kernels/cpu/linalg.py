"""CPU kernels for matmul and gemm: packed tiles with a fused epilogue, and NumPy's BLAS.

``matmul_tiles`` / ``gemm_tiles`` (ours, ``tsol/kernels/cpu/linalg_tiles.py``): operands of any
strides, float64/float32/float16/bfloat16 (half types are packed to float32, accumulate in
float32 and store the half dtype), batched broadcasting, and the epilogue ``alpha * acc +
beta * c + bias -> activation -> + residual`` applied per tile before the store. Configs are
tile shapes ``(bm, bn, bk)``; ``bm`` is rounded up to a multiple of the micro-tile's 12 rows and
``bn`` to its 32 (float32) or 16 (float64) columns.

``matmul_numpy_blas`` / ``gemm_numpy_blas`` (vendor ``numpy-blas``): ``np.matmul`` on OpenBLAS
for float32/float64 operands of one dtype without an epilogue. They are candidates for the
schedule layer's tuner and never replace ours in the registry.

Selection until the autotuner exists (``prefer_blas``): our kernel runs whenever ``tile_shape``
is given, an epilogue is fused (bias, activation or residual), gemm has ``c`` or ``alpha != 1``,
or a dtype is a half type or the two operand dtypes differ. For the remaining plain float32 and
float64 products BLAS measured faster on the development machine (2-core AVX-512 Xeon; ours
reached about 65-75% of OpenBLAS at 2048^3 and less on small or thin products, where packing
dominates), so the heuristic answers ``Config(vendor="numpy-blas")`` and our kernel hands the
call to the registered BLAS candidate.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import numba
import numpy as np

from tsol import dtypes
from tsol.kernels.cpu.linalg_tiles import ACTIVATIONS, MR, panel_width, tile_module
from tsol.kernels.cpu.scalar import storage_view
from tsol.registry import Config, kernel

FLOATS = (dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16)
BLAS_DTYPES = (dtypes.float64, dtypes.float32)

CONFIGS = [Config(bm=192, bn=128, bk=256), Config(bm=96, bn=128, bk=256),
           Config(bm=96, bn=256, bk=256), Config(bm=144, bn=128, bk=384),
           Config(bm=48, bn=64, bk=128)]
"""Tile shapes (bm x bn outputs per task, bk-long K blocks). 192 x 128 x 256 keeps the 32 KB
float32 B micro-panel (256 x 32) in L1 and the 192 KB A block in L2; it was the fastest of
these at 2048^3 on the development machine (the others within 10-20%). The rest are for the
tuner."""

SERIAL_FLOPS = 1 << 23
"""Products under this many flops (about 0.2 ms on one core) run on the calling thread alone:
waking Numba's thread pool costs more than it saves, and far more on a loaded machine."""

BLAS = Config(vendor="numpy-blas")
"""The heuristic's answer when the selection rule prefers BLAS: ``*_tiles`` delegate to it."""


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def tile_for(shape: tuple[int, int, int], M: int, N: int, K: int,
             nr: int) -> tuple[int, int, int]:
    """A requested (bm, bn, bk) fitted to the problem: rounded to the micro-tile, clamped."""
    bm, bn, bk = shape
    bm = _round_up(max(1, min(bm, M)), MR)
    bn = _round_up(max(1, min(bn, N)), nr)
    return bm, bn, max(1, min(bk, K))


def default_tile(M: int, N: int, K: int, nbatch: int, nr: int) -> tuple[int, int, int]:
    """CONFIGS[0], halved along its longer side until every thread has about 4 tasks."""
    bm, bn, bk = tile_for((192, 128, 256), M, N, K, nr)
    want = 4 * numba.get_num_threads()
    while nbatch * math.ceil(M / bm) * math.ceil(N / bn) < want and (bm > MR or bn > nr):
        if bm >= bn and bm > MR or bn <= nr:
            bm = _round_up(bm // 2, MR)
        else:
            bn = _round_up(bn // 2, nr)
    return bm, bn, bk


def prefer_blas(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    """The documented selection rule (module doc): True for a plain float32/float64 product."""
    a, b = metas[0], metas[1]
    rest = metas[2:]
    if attrs.get("tile_shape") is not None or attrs.get("epilogue", "none") != "none":
        return False
    if any(m is not None for m in rest) or attrs.get("alpha", 1.0) != 1.0:
        return False
    return a.dtype == b.dtype and a.dtype in BLAS_DTYPES


def problem_dims(metas: Sequence[Any], attrs: dict[str, Any]) -> tuple[int, int, int, int]:
    """(M, N, K, batch) of a matmul/gemm call after 1-D promotion and transposes."""
    a, b = metas[0].shape, metas[1].shape
    a = (1,) + a if len(a) == 1 else a[:-2] + a[-2:][::-1] if attrs.get("trans_a") else a
    b = b + (1,) if len(b) == 1 else b[:-2] + b[-2:][::-1] if attrs.get("trans_b") else b
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return a[-2], b[-1], a[-1], math.prod(batch)


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    if prefer_blas(metas, attrs):
        return BLAS
    M, N, K, nbatch = problem_dims(metas, attrs)
    nr = panel_width(dtypes.compute_dtype(dtypes.result_type(metas[0].dtype, metas[1].dtype)))
    if attrs.get("tile_shape") is not None:
        bm, bn, bk = tile_for(attrs["tile_shape"], M, N, K, nr)
    else:
        bm, bn, bk = default_tile(M, N, K, nbatch, nr)
    return Config(bm=bm, bn=bn, bk=bk)


def _plain(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    """Legality of the BLAS candidates: one dtype, no epilogue operand or activation."""
    a, b = metas[0], metas[1]
    return (a.dtype == b.dtype and attrs.get("epilogue", "none") == "none"
            and metas[-1] is None and metas[-2] is None)


# --- running the tiles ---------------------------------------------------------------------------

def _pack(x: np.ndarray, width: int, bk: int, ct: np.dtype) -> np.ndarray:
    """``x`` (..., rows, K) packed into (batch, rows_p * K) panels (linalg_tiles doc)."""
    rows, K = x.shape[-2:]
    x3 = storage_view(x.reshape((math.prod(x.shape[:-2]), rows, K)))
    dst = np.empty((x3.shape[0], _round_up(rows, width) * K), ct)
    if dst.size:
        # The stride-0 leading axis gives every layout one Numba type (see _epilogue_view).
        tile_module(x.dtype).pack_panels(np.broadcast_to(x3, (2,) + x3.shape), dst, bk, width)
    return dst


def _batch_map(own: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For each flat output batch index, the flat batch index of an operand of batch ``own``."""
    ids = np.arange(math.prod(own), dtype=np.int64).reshape(own)
    return np.array(np.broadcast_to(ids, batch)).reshape(-1)     # a writeable copy: one type


def _epilogue_view(x: np.ndarray | None, out_shape: tuple[int, ...],
                   shape3: tuple[int, int, int], ct: np.dtype) -> np.ndarray:
    """``x`` broadcast to the output as (2, batch, M, N) in the compute dtype.

    The leading length-2 axis of stride 0 makes every epilogue operand, contiguous or not,
    the same Numba type (a non-contiguous read-only array), so one compiled kernel serves all.
    """
    if x is None:
        return np.broadcast_to(np.zeros(1, ct), (2, 1, 1, 1))
    x = np.broadcast_to(np.asarray(x, dtype=ct), out_shape).reshape(shape3)
    return np.broadcast_to(x, (2,) + shape3)


@contextlib.contextmanager
def _threads_for(flops: float) -> Iterator[None]:
    """One thread for small products (SERIAL_FLOPS); Numba's setting is per calling thread."""
    if flops >= SERIAL_FLOPS:
        yield
        return
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def run_tiles(a: np.ndarray, b: np.ndarray, out: np.ndarray, *, tile: Any = None,
              c: np.ndarray | None = None, bias: np.ndarray | None = None,
              residual: np.ndarray | None = None, activation: str = "none",
              alpha: float = 1.0, beta: float = 0.0, trans_a: bool = False,
              trans_b: bool = False) -> None:
    """``out = epilogue(op(a) @ op(b))`` with NumPy matmul shape rules, in our tile kernel."""
    if out.size == 0:
        return
    a2 = a[None, :] if a.ndim == 1 else (a.swapaxes(-1, -2) if trans_a else a)
    b2 = b[:, None] if b.ndim == 1 else (b.swapaxes(-1, -2) if trans_b else b)
    (M, K), N = a2.shape[-2:], b2.shape[-1]
    batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    nbatch = math.prod(batch)
    ct = dtypes.compute_dtype(out.dtype)
    nr = panel_width(ct)
    bm, bn, bk = tile_for(tile, M, N, K, nr) if tile else default_tile(M, N, K, nbatch, nr)
    shape3 = (nbatch, M, N)
    terms = [_epilogue_view(x, out.shape, shape3, ct) for x in (c, bias, residual)]
    with _threads_for(2.0 * nbatch * M * N * K):
        ap = _pack(a2, MR, bk, ct)
        bp = _pack(b2.swapaxes(-1, -2), nr, bk, ct)
        tile_module(out.dtype).gemm_tiles(
            ap, bp, _batch_map(a2.shape[:-2], batch), _batch_map(b2.shape[:-2], batch),
            storage_view(out).reshape(shape3), K, bm, bn, bk, nr, ct.type(alpha),
            ct.type(beta), *terms, ACTIVATIONS[activation], c is not None, bias is not None,
            residual is not None)


def _tile_of(config: Config, tile_shape: Any) -> Any:
    """The tile to run: ``tile_shape`` if given, else the config's (None: the default rule)."""
    if tile_shape is not None:
        return tile_shape
    knobs = config.asdict()
    return (knobs["bm"], knobs["bn"], knobs["bk"]) if "bm" in knobs else None


# --- registrations --------------------------------------------------------------------------------

@kernel("matmul", backend="cpu", dtypes=FLOATS, configs=CONFIGS, heuristic=_heuristic)
def matmul_tiles(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None,
                 residual: np.ndarray | None, *, out: np.ndarray, config: Config,
                 epilogue: str, tile_shape: tuple[int, int, int] | None) -> None:
    """NumPy-rule matmul with the fused epilogue; hands plain BLAS-class calls to BLAS."""
    if config == BLAS:
        matmul_numpy_blas(a, b, bias, residual, out=out, config=config, epilogue=epilogue,
                          tile_shape=tile_shape)
        return
    run_tiles(a, b, out, tile=_tile_of(config, tile_shape), bias=bias, residual=residual,
              activation=epilogue)


@kernel("gemm", backend="cpu", dtypes=FLOATS, configs=CONFIGS, heuristic=_heuristic)
def gemm_tiles(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, bias: np.ndarray | None,
               residual: np.ndarray | None, *, out: np.ndarray, config: Config, alpha: float,
               beta: float, trans_a: bool, trans_b: bool, epilogue: str,
               tile_shape: tuple[int, int, int] | None) -> None:
    """``alpha * op(a) @ op(b) + beta * c`` with the fused epilogue, batched."""
    if config == BLAS:
        gemm_numpy_blas(a, b, c, bias, residual, out=out, config=config, alpha=alpha, beta=beta,
                        trans_a=trans_a, trans_b=trans_b, epilogue=epilogue,
                        tile_shape=tile_shape)
        return
    run_tiles(a, b, out, tile=_tile_of(config, tile_shape), c=c, bias=bias, residual=residual,
              activation=epilogue, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)


@kernel("matmul", backend="cpu", vendor="numpy-blas", dtypes=BLAS_DTYPES, supports=_plain)
def matmul_numpy_blas(a: np.ndarray, b: np.ndarray, bias: None, residual: None, *,
                      out: np.ndarray, config: Config, epilogue: str,
                      tile_shape: Any) -> None:
    """``np.matmul`` (OpenBLAS sgemm/dgemm)."""
    np.matmul(a, b, out=out)


# alias_ok=False: out= may be c itself, which the NumPy passes read after the product is written.
@kernel("gemm", backend="cpu", vendor="numpy-blas", dtypes=BLAS_DTYPES, supports=_plain,
        alias_ok=False)
def gemm_numpy_blas(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, bias: None,
                    residual: None, *, out: np.ndarray, config: Config, alpha: float,
                    beta: float, trans_a: bool, trans_b: bool, epilogue: str,
                    tile_shape: Any) -> None:
    """``np.matmul`` (OpenBLAS), then ``alpha`` and ``beta * c`` as NumPy passes."""
    np.matmul(a.swapaxes(-1, -2) if trans_a else a, b.swapaxes(-1, -2) if trans_b else b,
              out=out)
    if alpha != 1.0:
        out *= alpha
    if c is not None:
        out += beta * c
