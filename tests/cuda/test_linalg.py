"""CUDA matmul and gemm against the float64 reference: the SIMT kernel (float64/float32 and mixed
dtypes), the tensor-core kernel (float16/bfloat16, cp.async and plain-load staging), odd sizes
past the tiles, 1-D operands, broadcast batches, every epilogue, gemm's alpha/beta/c and
transposes as strides, tile_shape, views, empty products, out= and user errors.

Half-type tolerances scale with sqrt(K) (float32 accumulation over K products of size ~9);
simulator sizes stay tiny (one or two warps, about 32 x 32 x 32)."""

import math

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    HOST,
    check,
    on_cuda,
    size,
    to_device,
    to_host,
)
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, reference
from tsol.errors import ArgumentError, DTypeError, ShapeError
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

M, N, K = size(33, 1000), size(17, 1031), size(45, 999)
SMALL_TC = (32, 32, 16)
"""A one-warp tensor-core tile, so the simulator runs whole fragments quickly."""


def scale_for(k):
    """atol multiplier: the size of a K-long sum of products of uniform(-3, 3) values."""
    return 9.0 * math.sqrt(max(k, 1))


def tile_for(dt):
    """A small tile under the simulator (the defaults on a GPU) for ``dt``."""
    if not HOST:
        return None
    return SMALL_TC if np.dtype(dt) in (tsol.float16, tsol.bfloat16) else (16, 16, 8)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_odd_sizes_every_dtype(dt, rng):
    a, b = rand((M, K), dt, rng), rand((K, N), dt, rng)
    attrs = {"tile_shape": tile_for(dt)} if tile_for(dt) else {}
    check("matmul", [a, b], attrs, dt, scale=scale_for(K))


@pytest.mark.parametrize("dt", [np.float32, tsol.bfloat16], ids=dtype_id)
def test_every_epilogue(dt, rng):
    m, n, k = size(20, 300), size(24, 260), size(32, 200)
    a, b = rand((m, k), dt, rng), rand((k, n), dt, rng)
    bias, res = rand((n,), np.float32, rng), rand((m, n), dt, rng)
    ts = tile_for(dt)
    for epi, extra in [("relu", {}), ("bias_gelu", {"bias": bias}),
                       ("gelu_tanh_residual", {"residual": res}),
                       ("bias_silu_residual", {"bias": bias, "residual": res})]:
        attrs = {"epilogue": epi, "tile_shape": ts, **extra}
        check("matmul", [a, b], attrs, dt, scale=scale_for(k))


def test_tensor_core_two_warps_plain_loads_and_fp16(forced, rng):
    """Two warps (wn=2), a 2-stage pipeline, and operands that cannot be staged by cp.async
    (a transposed A, a B whose rows are not 16-byte aligned)."""
    cfg = Config(kind="mma", bm=32, bn=32, bk=16, wm=1, wn=2, stages=2)
    forced(cfg)
    m, n, k = size(20, 513), size(30, 700), size(35, 333)
    a, b = rand((m, k), tsol.float16, rng), rand((k, n), tsol.float16, rng)
    check("matmul", [a, b], {}, tsol.float16, scale=scale_for(k))
    at = np.ascontiguousarray(rand((k, m), tsol.bfloat16, rng)).T    # k-stride != 1
    bo = rand((k, n + 1), tsol.bfloat16, rng)[:, 1:]                 # rows off 16-byte bounds
    check("matmul", [at, bo], {}, tsol.bfloat16, scale=scale_for(k))
    if not COMPILE_ONLY:
        forced(Config(kind="mma", bm=32, bn=32, bk=32, wm=1, wn=1, stages=3))
        a, b = rand((m, k), tsol.float16, rng), rand((k, n), tsol.float16, rng)
        check("matmul", [a, b], {}, tsol.float16, scale=scale_for(k))


def test_one_d_operands_and_batches(rng):
    k, n = size(13, 700), size(11, 300)
    dt = np.float32
    ts = (16, 16, 8)
    v, w = rand((k,), dt, rng), rand((k,), dt, rng)
    b = rand((k, n), dt, rng)
    check("matmul", [v, w], {"tile_shape": ts}, dt, scale=scale_for(k))   # 0-d result
    check("matmul", [v, b], {"tile_shape": ts}, dt, scale=scale_for(k))
    check("matmul", [b.T, v], {"tile_shape": ts}, dt, scale=scale_for(k))
    a3 = rand((2, 1, 5, k), dt, rng)
    b3 = rand((3, k, n), dt, rng)                            # batch (2, 1) x (3,) -> (2, 3)
    check("matmul", [a3, b3], {"tile_shape": ts}, dt, scale=scale_for(k))
    bias = rand((3, 1, n), dt, rng)                          # broadcast over batch and rows
    check("matmul", [a3, b3], {"tile_shape": ts, "bias": bias, "epilogue": "bias_relu"}, dt,
          scale=scale_for(k))
    hb = rand((2, 1, 5, k), tsol.bfloat16, rng), rand((3, k, n), tsol.bfloat16, rng)
    check("matmul", list(hb), {"tile_shape": SMALL_TC}, tsol.bfloat16, scale=scale_for(k))


@pytest.mark.parametrize("dt", [np.float64, np.float32, tsol.float16], ids=dtype_id)
def test_gemm_flags_as_strides(dt, rng):
    m, n, k = size(19, 400), size(21, 500), size(27, 300)
    ts = tile_for(dt) or None
    c = rand((m, n), dt, rng)
    for ta in (False, True):
        for tb in (False, True):
            a = rand((k, m) if ta else (m, k), dt, rng)
            b = rand((n, k) if tb else (k, n), dt, rng)
            attrs = {"alpha": 0.5, "beta": -1.5, "trans_a": ta, "trans_b": tb,
                     "tile_shape": ts}
            check("gemm", [a, b, c], attrs, dt, scale=scale_for(k))
    a, b = rand((2, k, m), dt, rng), rand((k, n), dt, rng)
    check("gemm", [a, b, c[:1]], {"trans_a": True, "beta": 2.0, "bias": c[0],
                                  "epilogue": "bias_silu", "tile_shape": ts}, dt,
          scale=scale_for(k))


@pytest.mark.parametrize("dt", [tsol.float16, tsol.bfloat16], ids=dtype_id)
def test_transposed_b_staged_by_cp_async(dt, rng, monkeypatch):
    """B given transposed (k contiguous, 16-byte rows: K a multiple of 8) is staged [n][k] by
    cp.async and read by plain ldmatrix; rows off 16-byte bounds take the plain loads."""
    from tsol.kernels.cuda import linalg
    built = []
    real = linalg._build
    monkeypatch.setattr(linalg, "_build", lambda kind, cfg, ct, dts, modes, spec: (
        built.append(len(modes) == 5), real(kind, cfg, ct, dts, modes, spec))[1])
    ts = tile_for(dt)
    m, n = size(19, 300), size(21, 500)
    for k in (size(16, 256), size(40, 296), size(8, 8)):      # whole, partial and one K tile
        a, bt, c = rand((m, k), dt, rng), rand((n, k), dt, rng), rand((m, n), dt, rng)
        check("gemm", [a, bt, c], {"alpha": 0.5, "beta": -1.5, "trans_b": True,
                                   "tile_shape": ts}, dt, scale=scale_for(k))
        assert built[-1], f"K={k}: B was not staged transposed"
    k = size(24, 256)
    a, bt = rand((2, 1, m, k), dt, rng), rand((3, n, k), dt, rng)   # batches of B^T
    bias = rand((n,), np.float32, rng)
    check("gemm", [a, bt, None], {"trans_b": True, "bias": bias, "epilogue": "bias_relu",
                                  "tile_shape": ts}, dt, scale=scale_for(k))
    assert built[-1]
    store = rand((n * k + 1,), dt, rng)
    shifted = store[1:].reshape(n, k)                               # rows 2 bytes off
    check("gemm", [a[0, 0], shifted, None], {"trans_b": True, "tile_shape": ts}, dt,
          scale=scale_for(k))
    if HOST:                          # (on a GPU the operand is copied to aligned memory)
        assert not built[-1]


def test_gpu_default_configs(forced, rng):
    """The configs a GPU picks by default (the simulator tests use small tiles): SIMT64 and
    SIMT32 with transposed operands, c and epilogue operands; the 8-warp tensor-core tile with A
    staged by cp.async and B by plain loads (rows of 36 halves are not 16-byte aligned)."""
    from tsol.kernels.cuda.linalg import MMA, SIMT32, SIMT64
    m, n, k = size(70, 400), size(66, 500), size(20, 300)
    for cfg, dt, flags in [(SIMT64, np.float64, [(False, True), (True, False)]),
                           (SIMT32, np.float32, [(True, True)])]:
        forced(cfg)
        c, bias = rand((m, n), dt, rng), rand((n,), np.float32, rng)
        for ta, tb in flags:
            a = rand((k, m) if ta else (m, k), dt, rng)
            b = rand((n, k) if tb else (k, n), dt, rng)
            check("gemm", [a, b, c], {"alpha": 0.5, "beta": -1.5, "trans_a": ta, "trans_b": tb,
                                      "bias": bias, "epilogue": "bias_silu"}, dt,
                  scale=scale_for(k))
    forced(MMA)
    m, n, k = size(40, 300), size(36, 260), size(48, 200)
    a, b = rand((m, k), tsol.bfloat16, rng), rand((k, n), tsol.bfloat16, rng)
    bias, res = rand((n,), np.float32, rng), rand((m, n), tsol.bfloat16, rng)
    check("matmul", [a, b], {"bias": bias, "residual": res, "epilogue": "bias_silu_residual"},
          tsol.bfloat16, scale=scale_for(k))


def test_mixed_dtypes_views_empty_and_out(rng):
    m, n, k = size(9, 300), size(10, 301), size(11, 302)
    ts = (16, 16, 8)
    a, b = rand((m, k), tsol.float16, rng), rand((k, n), tsol.bfloat16, rng)
    check("matmul", [a, b], {"tile_shape": ts}, np.float32, scale=scale_for(k))
    x = rand((2 * m, 2 * k), np.float32, rng)[::2, ::-2]     # strided and reversed
    y = rand((k, n), np.float32, rng).T.copy().T
    check("matmul", [x, y], {"tile_shape": ts}, np.float32, scale=scale_for(k))
    check("matmul", [x, y], {}, np.float32, scale=scale_for(k))   # cuBLAS on a GPU
    for shape_a, shape_b in [((0, 5), (5, 3)), ((4, 0), (0, 3)), ((2, 0, 5), (5, 3))]:
        check("matmul", [np.ones(shape_a, np.float32), np.ones(shape_b, np.float32)],
              {"tile_shape": ts, "epilogue": "relu"}, np.float32)
    with on_cuda():
        d_a, d_b = to_device(rand((m, k), np.float32, rng)), to_device(rand((k, n), np.float32,
                                                                            rng))
        res_h = rand((m, n), np.float32, rng)
        res = to_device(res_h.copy())
        o = tsol.matmul(d_a, d_b, residual=res, epilogue="residual", tile_shape=ts, out=res)
        assert o is res
    if not COMPILE_ONLY:
        want = reference("matmul", to_host(d_a), to_host(d_b), residual=res_h,
                         epilogue="residual")
        assert_close(to_host(res), want, np.float32, scale=scale_for(k), what="out=residual")


def test_user_errors(rng):
    a, b = rand((3, 4), np.float32, rng), rand((5, 6), np.float32, rng)
    with on_cuda():
        with pytest.raises(ShapeError, match="inner dimensions"):
            tsol.matmul(to_device(a), to_device(b))
        with pytest.raises(DTypeError):
            tsol.matmul(to_device(a.astype(np.int32)), to_device(b.T.astype(np.int32)))
        with pytest.raises(ArgumentError, match="tile_shape"):
            tsol.matmul(to_device(a), to_device(a.T), tile_shape=(0, 1, 2))
        with pytest.raises(ArgumentError, match="activation|epilogue"):
            tsol.matmul(to_device(a), to_device(a.T), epilogue="tanh")
        with pytest.raises(ShapeError):
            tsol.gemm(to_device(a[0]), to_device(a.T))


CHECK_TILES = [(128, 128, 8), (64, 128, 64), (256, 128, 32), (128, 256, 32)]
"""The tile_shapes bench/gpu_linalg_check.py runs, plus the largest and smallest tiles."""


def test_every_tile_fits_the_register_file():
    """Every registered matmul/gemm config and every tile a tile_shape of the check script
    (and the extremes) maps to, of either kind, builds a kernel whose registers are capped so
    that a block launches: threads x max_registers <= the register file (uncapped, the
    512-thread tile of tile_shape=(256, 128, 32) took 255 registers a thread and failed with
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)."""
    from tsol.kernels.cuda import gpu, linalg
    from tsol.registry import kernels
    configs = {c for op in ("matmul", "gemm") for k in kernels(op, "cuda") for c in k.configs
               if "kind" in c.asdict()}
    for tile in CHECK_TILES + [(256, 256, 64), (16, 16, 4)]:
        configs |= {linalg.mma_tile(*tile), linalg.simt_tile(*tile)}
    assert Config(kind="mma", bm=256, bn=128, bk=32, wm=4, wn=4, stages=3) in configs
    for cfg in sorted(configs, key=repr):
        knobs = cfg.asdict()
        kind = knobs.pop("kind")
        threads = linalg.threads_per_block(kind, knobs)
        dt = tsol.bfloat16 if kind == "mma" else np.float32
        modes = (True,) * (4 if kind == "mma" else 2)
        k = linalg._build(kind, knobs, np.dtype(np.float32), (dt, dt), modes,
                          (None, None, None, None, dt))
        assert 32 <= threads <= 1024, (cfg, threads)
        assert k.max_registers, (k.name, "no register cap")
        assert threads * k.max_registers <= gpu.REGISTERS_PER_BLOCK, (k.name, threads,
                                                                      k.max_registers)
