"""CUDA layernorm and rmsnorm against the float64 reference: every float dtype, odd widths,
gamma/beta absent or of other dtypes and strides, a mean far larger than the spread, rows
longer than the registers hold (Welford statistics split over blocks, then a streaming pass),
multi-warp rows, views, in-place out=, empty inputs and user errors; the fused residual add
(same and mixed dtypes, both paths, out= the residual, replayed layouts); 16-bit rows read a
word at a time where every row start is aligned to it."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    HOST,
    SIMULATOR,
    check,
    on_cuda,
    run,
    size,
    to_device,
    to_host,
)
from tests.cuda.test_softmax import HALF_ROWS, launched, placed
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, reference, to64
from tsol import dtypes
from tsol.errors import DTypeError, ShapeError, TSOLError
from tsol.kernels.cuda import gpu, normalization, replay, row_index
from tsol.ops import base
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

OPS = ["layernorm", "rmsnorm"]


def params(op, n, dt, rng, affine=True):
    """(gamma, beta) for layernorm, (gamma,) for rmsnorm; None when not ``affine``."""
    g = rand((n,), dt, rng, low=0.5, high=1.5) if affine else None
    if op == "rmsnorm":
        return [g]
    return [g, rand((n,), dt, rng) if affine else None]


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_dtypes_and_odd_widths(op, dt, rng):
    for n in (size(37, 4099), size(129, 1000)):
        x = rand((size(5, 300), n), dt, rng)
        check(op, [x, *params(op, n, dt, rng)], {"eps": 1e-5}, dt)
    x = rand((3, 4, size(7, 513)), dt, rng)
    check(op, [x, *params(op, x.shape[-1], dt, rng, affine=False)], {"eps": 1e-6}, dt)


@pytest.mark.parametrize("op", OPS)
def test_float64_rows_of_1024_threads(op, rng):
    """float64 rows of 4099 take 1024 threads of 8 values: over a thread's 64-register share
    for layernorm (two passes instead), within it for rmsnorm (registers)."""
    n = 4099
    x = rand((2, n), np.float64, rng)
    check(op, [x, *params(op, n, np.float64, rng)], {"eps": 1e-5}, np.float64)


def test_register_path_fits_the_register_file():
    """Every register-path tile launches: threads x registers a thread <= the register file
    (the PTX assembled for sm_90 by nvJitLink; a launch over it fails on the GPU)."""
    config = normalization.CONFIGS[0]
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    tile = normalization._row_tile
    assert tile(4099, config, f64, False) is None
    assert tile(4099, config, f64, True) == (1024, 1024, 8)
    assert tile(4099, config, f32, False) == (1024, 1024, 8)
    assert tile(8193, config, f32, False) is None
    assert tile(8193, config, f32, True) == (1024, 1024, 16)
    assert tile(2049, config, f64, False) == (512, 512, 8)
    if SIMULATOR:
        return      # no PTX under the simulator
    pytest.importorskip("cuda.bindings.nvjitlink")
    for dt, W in ((f64, 1), (f32, 1), (np.dtype(dtypes.bfloat16), 1),
                  (np.dtype(dtypes.bfloat16), 4)):
        acc = f64 if dt == f64 else f32
        arr = gpu.numba_type(((gpu.storage(dt)[0] if W == 1 else row_index.WORDS[W]).str, 1,
                              "C"))
        for rms in (False, True):
            for n in (1000, 4099, 8193):
                planned = tile(n, config, acc, rms)
                if planned is None or n % W:
                    continue
                T, B, K = planned
                for res in (None, dt):
                    dts = normalization._Dtypes(dt, res, dt, None if rms else dt, dt)
                    k = normalization._row_kernel(dts, acc, rms, T, B, K, n == T * K, W,
                                                  "" if W == 1 else "gb"[:2 - rms])
                    argtypes = [arr] * (3 + (not rms) + (res is not None)) \
                        + [gpu.numba_type(int)] * 2 + [gpu.numba_type(float)]
                    used = gpu.registers(k, argtypes)
                    assert used * B <= gpu.REGISTERS_PER_BLOCK, (k.name, used, B)


@pytest.mark.parametrize("dt", sorted(dtypes.HALF, key=str), ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_half_rows_by_words_and_misaligned(op, dt, monkeypatch, rng):
    """bfloat16/float16 rows of x, the residual and out whose every start is aligned to 4 (or
    2) elements are read and written that many an access, gamma/beta too when contiguous and
    aligned (else an element at a time: reversed, float32); odd lengths and a misaligned x or
    residual take element accesses throughout."""
    seen = launched(monkeypatch)
    affine = "g" if op == "rmsnorm" else "gb"
    for n, offset, width in HALF_ROWS:
        x, r = rand((5, n), dt, rng), rand((5, n), dt, rng)
        p = params(op, n, dt, rng)
        cases = [(p, None, affine), ([q[::-1] for q in p], None, ""),
                 (params(op, n, np.float32, rng), None, ""),
                 (params(op, n, dt, rng, affine=False), None, ""),
                 (p, offset, affine), (p, 1 - offset % 2, affine)]
        for q, r_offset, wide in cases:
            attrs = {"eps": 1e-5}
            if r_offset is not None:
                attrs["residual"] = placed(r, r_offset)
            expect = str(width) + wide if width > 1 and r_offset in (None, offset) else "1"
            seen.clear()
            got = run(op, [placed(x, offset), *q], attrs)
            if HOST:
                assert seen == [expect], (n, offset, r_offset)
            if not COMPILE_ONLY:
                ref = reference(op, x, *q, None if r_offset is None else to64(r), eps=1e-5)
                assert_close(got, ref, dt, what=f"cuda {op} n={n}+{offset}")


@pytest.mark.parametrize("op", OPS)
def test_mixed_param_dtypes_and_strides(op, rng):
    """float32 gamma/beta with bfloat16 x (and the reverse), strided and reversed params."""
    n = size(37, 2049)
    x = rand((4, n), dtypes.bfloat16, rng)
    check(op, [x, *params(op, n, np.float32, rng)], {"eps": 1e-5}, dtypes.bfloat16)
    x32 = rand((4, n), np.float32, rng)
    p = [None if q is None else q.astype(dtypes.float16) for q in params(op, n, np.float32, rng)]
    check(op, [x32, *p], {"eps": 1e-5}, np.float32)
    wide = [np.concatenate([q, q])[::2] for q in params(op, n, np.float64, rng)]
    check(op, [x32, *[q[::-1] for q in wide]], {"eps": 1e-5}, np.float32)


@pytest.mark.parametrize("op", OPS)
def test_large_mean_and_constant_rows(op, rng):
    """A mean 1000x the spread costs no accuracy (two-pass variance about hi + lo)."""
    x = (rand((4, size(29, 3000)), np.float32, rng) + 1000).astype(np.float32)
    check(op, [x, *params(op, x.shape[-1], np.float32, rng, affine=False)], {"eps": 1e-5},
          np.float32)
    const = np.full((2, 33), 7.0, np.float32)
    check(op, [const, *params(op, 33, np.float32, rng, affine=False)], {"eps": 1e-5},
          np.float32)


@pytest.mark.parametrize("dt", [np.float32, dtypes.bfloat16, np.float64], ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_long_rows_two_pass(op, dt, forced, rng):
    """Rows longer than the registers hold: Welford statistics split over 3 blocks, then a
    streaming pass."""
    forced(Config(block=32, work=16, kmax=1, split=3))
    n = size(129, 50000)
    x = (rand((3, n), np.float32, rng) + 4).astype(dt)
    check(op, [x, *params(op, n, dt, rng)], {"eps": 1e-5}, dt)
    check(op, [x, *params(op, n, dt, rng, affine=False)], {"eps": 1e-5}, dt)


@pytest.mark.parametrize("op", OPS)
def test_multi_warp_rows(op, forced, rng):
    forced(Config(block=128, work=1, kmax=32, split=0))
    n = size(101, 3000)
    x = rand((3, n), np.float32, rng)
    check(op, [x, *params(op, n, np.float32, rng)], {"eps": 1e-5}, np.float32)


def test_views_in_place_and_empty(rng):
    x = rand((size(9, 513), 6), np.float32, rng)
    check("layernorm", [x.T, None, None], {"eps": 1e-5}, np.float32)  # not C-contiguous
    check("rmsnorm", [x[::2], None], {"eps": 1e-5}, np.float32)
    for shape in [(0, 5), (3, 0), (0,)]:
        for op in OPS:
            got = run(op, [np.zeros(shape, np.float32)], {"eps": 1e-5})
            assert got.shape == shape and got.dtype == np.float32
    g = rand((6,), np.float32, rng)
    with on_cuda():
        d = to_device(x.copy())
        assert tsol.layernorm(d, to_device(g), None, 1e-5, out=d) is d
        e = to_device(x.copy())
        assert tsol.rmsnorm(e, None, 1e-5, out=e) is e
    if not COMPILE_ONLY:
        np.testing.assert_allclose(to_host(d), reference("layernorm", x, g, None, eps=1e-5),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to_host(e), reference("rmsnorm", x, None, eps=1e-5),
                                   rtol=1e-5, atol=1e-5)


def test_repeated_calls_reuse_launches_and_are_bitwise_equal(rng):
    x = rand((size(6, 1024), size(40, 4096)), np.float32, rng)
    g, b = params("layernorm", x.shape[-1], np.float32, rng)
    first = run("layernorm", [x, g, b], {"eps": 1e-5})
    for _ in range(2):
        again = run("layernorm", [x, g, b], {"eps": 1e-5})
        if not COMPILE_ONLY:
            np.testing.assert_array_equal(again, first)
    if not COMPILE_ONLY:
        other = rand(x.shape, np.float32, rng)     # same layout, new data: new pointers
        np.testing.assert_allclose(run("layernorm", [other, g, b], {"eps": 1e-5}),
                                   reference("layernorm", other, g, b, eps=1e-5),
                                   rtol=1e-5, atol=1e-5)


def test_second_call_of_a_layout_replays(forced, monkeypatch, rng):
    """Later calls of a layout replay the first call's launches (planning would raise) on their
    own data: the register path, the two-pass path with its scratch statistics, and in place."""
    monkeypatch.setattr(normalization, "_replays", replay.Replays())
    monkeypatch.setattr(base, "_plans", base._PlanTable())      # earlier tests' plans would skip _run
    n = size(40, 4096)
    heuristic = base.selector

    def calls():
        for config in (None, Config(block=32, work=16, kmax=1, split=3)):   # 1 and 2 passes
            if config is None:
                monkeypatch.setattr(base, "selector", heuristic)
            else:
                forced(config)
            x = rand((size(6, 64), n), np.float32, rng) + 3
            g, b = params("layernorm", n, np.float32, rng)
            with on_cuda():
                d = to_device(x.copy())
                assert tsol.layernorm(d, to_device(g), None, 1e-5, out=d) is d
            if not COMPILE_ONLY:
                np.testing.assert_allclose(to_host(d), reference("layernorm", x, g, None,
                                                                 eps=1e-5), rtol=1e-5, atol=1e-5)
            check("layernorm", [x, g, b], {"eps": 1e-5}, np.float32)
            check("rmsnorm", [x, g[::-1]], {"eps": 1e-5}, np.float32)
            r = rand(x.shape, dtypes.bfloat16, rng)
            check_residual("layernorm", x, r, [g, b])
            check_residual("rmsnorm", x, r, [None])
            with on_cuda():
                d, e = to_device(x.copy()), to_device(r.astype(np.float32))
                assert tsol.rmsnorm(d, to_device(g), 1e-5, residual=e, out=e) is e
            if not COMPILE_ONLY:
                np.testing.assert_allclose(to_host(e), reference("rmsnorm", x, g, to64(r),
                                                                 eps=1e-5), rtol=1e-5, atol=1e-5)

    calls()
    assert len(normalization._replays.cache) == 12
    assert None not in normalization._replays.cache.values()
    monkeypatch.setattr(normalization, "_run_planned",
                        lambda *a, **k: pytest.fail("planned a replayed call"))
    calls()

# --- the fused residual add ----------------------------------------------------------------

RESIDUAL_DTYPES = [(np.float32, np.float32), (np.float16, np.float16),
                   (dtypes.bfloat16, dtypes.bfloat16), (np.float64, np.float64),
                   (np.float16, np.float32), (np.float32, np.float64)]


def check_residual(op, x, r, p, eps=1e-5, **attrs):
    """``op`` of ``x + r`` on cuda against the float64 reference, in the promoted dtype."""
    dt = dtypes.result_type(x.dtype, r.dtype)
    got = check(op, [x, *p], {"eps": eps, "residual": r, **attrs}, dt,
                ref_attrs={"eps": eps, "residual": to64(r)})
    assert got.dtype == dt and got.shape == x.shape
    return got


@pytest.mark.parametrize("xdt,rdt", RESIDUAL_DTYPES,
                         ids=[f"{dtype_id(a)}+{dtype_id(b)}" for a, b in RESIDUAL_DTYPES])
@pytest.mark.parametrize("op", OPS)
def test_residual_dtypes_and_odd_widths(op, xdt, rdt, rng):
    """x + residual in the register path: odd widths, one row, gamma/beta present and absent."""
    for shape in [(size(3, 300), size(37, 4099)), (1, size(33, 1000)), (2, 3, size(7, 513))]:
        x, r = rand(shape, xdt, rng), rand(shape, rdt, rng)
        check_residual(op, x, r, params(op, shape[-1], xdt, rng))
        check_residual(op, x, r, params(op, shape[-1], xdt, rng, affine=False))


@pytest.mark.parametrize("xdt,rdt", [(np.float32, dtypes.bfloat16),
                                     (dtypes.bfloat16, dtypes.bfloat16),
                                     (np.float64, np.float32)], ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_residual_long_rows_two_pass(op, xdt, rdt, forced, rng):
    """Rows longer than the registers hold, with a residual: summed once into the statistics'
    input, Welford statistics split over 3 blocks, then the streaming pass."""
    forced(Config(block=32, work=16, kmax=1, split=3))
    n = size(129, 50000)
    x = (rand((3, n), np.float32, rng) + 4).astype(xdt)
    r = rand((3, n), rdt, rng)
    check_residual(op, x, r, params(op, n, np.float32, rng))
    check_residual(op, x, r, params(op, n, np.float32, rng, affine=False))


@pytest.mark.parametrize("op", OPS)
def test_residual_views_and_out_aliases(op, rng):
    """A strided residual is copied first; out= may be x or the residual itself."""
    n = size(9, 513)
    x, r = rand((size(6, 64), n), np.float32, rng), rand((n, size(6, 64)), np.float32, rng).T
    p = params(op, n, np.float32, rng)
    check_residual(op, x, r, p)                       # r is not C-contiguous
    want = reference(op, x, *p, np.ascontiguousarray(r), eps=1e-5)
    for target in ("x", "residual"):
        y, s = x.copy(), np.ascontiguousarray(r)
        with on_cuda():
            dy, ds = to_device(y), to_device(s)
            dest = dy if target == "x" else ds
            assert getattr(tsol, op)(dy, *[to_device(q) for q in p], 1e-5, residual=ds,
                                     out=dest) is dest
        if not COMPILE_ONLY:
            np.testing.assert_allclose(to_host(dest), want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"out={target}")


def test_residual_errors(rng):
    x = rand((4, 5), np.float32, rng)
    for op in OPS:
        with pytest.raises(ShapeError) as info:
            run(op, [x], {"eps": 1e-5, "residual": np.ones((4, 1), np.float32)})
        assert "residual has shape (4, 1)" in str(info.value)
        with pytest.raises(DTypeError):
            run(op, [x], {"eps": 1e-5, "residual": np.ones((4, 5), np.int32)})


def test_errors(rng):
    x = rand((4, 5), np.float32, rng)
    cases = [
        (ShapeError, lambda: run("layernorm", [x, np.ones(4, np.float32)]), "gamma"),
        (ShapeError, lambda: run("rmsnorm", [np.float32(1.0)]), "0-d"),
        (DTypeError, lambda: run("layernorm", [x.astype(np.int32)]), "layernorm"),
        (TSOLError, lambda: run("rmsnorm", [x], {"eps": -1.0}), "eps"),
    ]
    for cls, fn, fragment in cases:
        with pytest.raises(cls) as info:
            fn()
        assert fragment in str(info.value)
