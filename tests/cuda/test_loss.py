"""CUDA cross_entropy, mse and kl_divergence against the float64 reference: every float dtype
and reduction, odd class counts, PyTorch's layouts ([C], [N, C], [N, C, d]), ignore_index,
probability targets, rows longer than the registers hold (read twice), multi-warp rows,
broadcasting and promotion, views, out=, empty inputs, repeatability, replays, out-of-range
targets (NaN by default, ArgumentError with value checks) and user errors."""

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
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, reference
from tsol import dtypes, registry
from tsol.errors import ArgumentError, DTypeError, ShapeError, TSOLError
from tsol.kernels.cuda import gpu, loss, replay
from tsol.ops import base
from tsol.registry import Config, get_op

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

REDUCTIONS = ["mean", "sum", "none"]
CE_MEAN = {"reduction": "mean", "ignore_index": None}
CE_NONE = {"reduction": "none", "ignore_index": None}


def probs(shape, dt, rng):
    cax = 0 if len(shape) == 1 else 1
    p = rng.random(shape)
    return (p / np.maximum(p.sum(axis=cax, keepdims=True), 1e-12)).astype(dt)


def ce_cases(shape, dt, rng):
    """(targets, ignore_index) pairs: class indices, with one ignored, and probabilities."""
    cax = 0 if len(shape) == 1 else 1
    rows = shape[:cax] + shape[cax + 1:]
    t = rng.integers(0, shape[cax], rows)
    ignored = t.copy()
    ignored.reshape(-1)[:1] = -100
    return [(t, None), (ignored, -100), (probs(shape, dt, rng), None)]


def check_ce(x, rng, reductions=REDUCTIONS):
    for targets, ignore in ce_cases(x.shape, x.dtype, rng):
        for red in reductions:
            check("cross_entropy", [x, targets], {"reduction": red, "ignore_index": ignore},
                  x.dtype)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_cross_entropy_dtypes_and_odd_classes(dt, rng):
    check_ce(rand((size(5, 300), size(37, 4099)), dt, rng, low=-5.0, high=5.0), rng)
    check_ce(rand((3, size(129, 32000)), dt, rng, low=-5.0, high=5.0), rng, ["none"])


@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 6, 3, 2), (1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cross_entropy_layouts(shape, rng):
    check_ce(rand(shape, np.float32, rng, low=-5.0, high=5.0), rng)


@pytest.mark.parametrize("dt", [np.float64, np.float32, "bfloat16"], ids=dtype_id)
def test_cross_entropy_long_rows_streamed(dt, forced, rng):
    """Rows longer than the registers hold: two streaming reads per row."""
    forced(Config(block=32, work=8, kmax=1))
    check_ce(rand((3, size(301, 300_001)), np.float32, rng, low=-5.0, high=5.0).astype(dt),
             rng, ["none", "mean"])


def test_cross_entropy_tiles_fit_the_register_file():
    """Every tile launches: threads x registers a thread <= the register file (the PTX
    assembled for sm_90 by nvJitLink; a launch over it fails on the GPU). float32 rows of 32000
    keep 32 logits a thread in registers (79 registers uncapped, 1024 threads have 64 each);
    float64 rows that long stream instead."""
    config = loss.CONFIGS[0]
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert loss._ce_tile(4099, config, f64) == (1024, 1024, 8, True)
    assert loss._ce_tile(32000, config, f32) == (1024, 1024, 32, True)
    assert loss._ce_tile(16384, config, f64) == (1024, 1024, 16, True)
    assert loss._ce_tile(32000, config, f64) == (1024, 1024, 32, False)
    assert loss._ce_tile(37, loss.SIM_CONFIG, f64) == (8, 32, 8, True)
    if SIMULATOR:
        return      # no PTX under the simulator
    pytest.importorskip("cuda.bindings.nvjitlink")

    def vec(dt):
        return gpu.numba_type((gpu.storage(dt)[0].str, 1, "C"))

    i64 = gpu.numba_type(int)
    for dt in (f64, f32, np.dtype(dtypes.bfloat16)):
        acc = f64 if dt == f64 else f32
        for c in (4099, 32000):
            T, B, K, regs = loss._ce_tile(c, config, acc)
            for probs in (False, True):
                tdt = None if probs else np.dtype(np.int64)
                k = loss._ce_kernel(dt, tdt, acc, "per", False, regs, T, B, K)
                argtypes = [vec(dt), vec(dt if probs else tdt), vec(f64),
                            *([] if probs else [vec(np.int8)]), i64, i64]
                used = gpu.registers(k, argtypes)
                assert used * B <= gpu.REGISTERS_PER_BLOCK, (k.name, used, B)
    for checked in (False, True):
        fin = loss._finish_kernel(f32, True, "mean", 1024, checked)
        used = gpu.registers(fin, [vec(f64), vec(np.int8), i64, vec(f32),
                                   *([vec(np.int64)] if checked else [])])
        assert used * 1024 <= gpu.REGISTERS_PER_BLOCK, (fin.name, used)


def test_cross_entropy_multi_warp_rows(forced, rng):
    forced(Config(block=128, work=1, kmax=32))
    check_ce(rand((3, size(101, 5000)), np.float32, rng, low=-5.0, high=5.0), rng, ["none"])


def test_cross_entropy_edges(rng):
    x = rand((6, 5), np.float32, rng)
    # Every target ignored: the mean is 0/0 = NaN, as in PyTorch; the sum is 0.
    all_ignored = np.full(6, 3)
    mean = run("cross_entropy", [x, all_ignored], {"ignore_index": 3})
    total = run("cross_entropy", [x, all_ignored], {"ignore_index": 3, "reduction": "sum"})
    assert COMPILE_ONLY or (np.isnan(mean) and total == 0)
    # Huge logits stay finite (the max is subtracted); uint8 and int32 targets work; -inf
    # logits (masked classes) are fine away from the target.
    big = np.array([[1000.0, 0.0, -np.inf], [0.0, 1000.0, -np.inf]], np.float32)
    check("cross_entropy", [big, np.array([0, 0], np.uint8)], CE_NONE, np.float32)
    check("cross_entropy", [x, rng.integers(0, 5, 6).astype(np.int32)], CE_MEAN, np.float32)
    nan = x.copy()
    nan[2, 1] = np.nan
    check("cross_entropy", [nan, rng.integers(0, 5, 6)], CE_NONE, np.float32)
    # Views (copied to rows first) and out=.
    t = rng.integers(0, 6, 5)
    check("cross_entropy", [x.T, t], CE_MEAN, np.float32)
    with on_cuda():
        out = to_device(np.full(6, np.nan, np.float32))
        assert tsol.cross_entropy(to_device(x), to_device(t[:1].repeat(6) % 5),
                                  reduction="none", out=out) is out
    # Empty: no samples (mean NaN, sum 0) and no classes with every target ignored.
    got = run("cross_entropy", [np.zeros((0, 3), np.float32), np.zeros(0, np.int64)])
    assert COMPILE_ONLY or np.isnan(got)
    assert run("cross_entropy", [np.zeros((0, 3), np.float32), np.zeros(0, np.int64)],
               {"reduction": "none"}).shape == (0,)
    got = run("cross_entropy", [np.zeros((2, 0), np.float32), np.full(2, -1)],
              {"ignore_index": -1, "reduction": "sum"})
    assert COMPILE_ONLY or got == 0


def test_cross_entropy_repeated_calls(rng):
    """Later calls replay the recorded launches with new pointers; results are bitwise equal."""
    x = rand((size(6, 512), size(40, 8192)), np.float32, rng)
    t = rng.integers(0, x.shape[1], x.shape[0])
    first = run("cross_entropy", [x, t], {"reduction": "mean", "ignore_index": 0})
    for _ in range(2):
        again = run("cross_entropy", [x, t], {"reduction": "mean", "ignore_index": 0})
        if not COMPILE_ONLY:
            assert again.tobytes() == first.tobytes()
    check("cross_entropy", [rand(x.shape, np.float32, rng), t],
          {"reduction": "mean", "ignore_index": 0}, np.float32)


def test_second_call_of_a_layout_replays(monkeypatch, rng):
    """Later calls of a layout replay the first call's launches (planning would raise) on their
    own data, scratch included, with value checks off and on; with them on, an out-of-range
    target still raises on a replayed call."""
    monkeypatch.setattr(loss, "_replays", replay.Replays())
    monkeypatch.setattr(base, "_plans", base._PlanTable())   # first calls reach the kernels' host code
    shape = (size(5, 300), size(37, 4099))

    def cases():
        x = rand(shape, np.float32, rng, low=-5.0, high=5.0)
        t = rng.integers(0, shape[1], shape[0])
        a, b = rand(shape, np.float32, rng), rand(shape, np.float32, rng)
        return [("cross_entropy", [x, t], {"reduction": "mean", "ignore_index": -100}),
                ("cross_entropy", [x, t], CE_NONE),
                ("cross_entropy", [x, probs(shape, np.float32, rng)], CE_MEAN),
                ("mse", [a, b], {"reduction": "sum"}),
                ("kl_divergence", [a, b], {"reduction": "none", "log_target": True})]

    def each_case():
        for checked in (False, True):
            with tsol.config.override(check_values=checked):
                for op, inputs, attrs in cases():
                    check(op, inputs, attrs, np.float32)

    each_case()
    # Five layouts, and the two with class indices again with checks (other launches).
    assert len(loss._replays.cache) == 7 and None not in loss._replays.cache.values()
    for name in ("_ce_planned", "_pointwise_planned"):
        monkeypatch.setattr(loss, name, lambda *a, **k: pytest.fail("planned a replayed call"))
    each_case()
    if not COMPILE_ONLY:
        for attrs in ({"reduction": "mean", "ignore_index": -100}, CE_NONE):
            bad = rng.integers(0, shape[1], shape[0])
            bad[-1] = shape[1]
            with tsol.config.override(check_values=True):
                with pytest.raises(ArgumentError, match=f"target {shape[1]} at targets"):
                    run("cross_entropy", [cases()[0][1][0], bad], attrs)
            got = run("cross_entropy", [cases()[0][1][0], bad], attrs)
            assert np.isnan(got).any() if attrs is CE_NONE else np.isnan(got)


def test_eager_calls_replay_and_checked_calls_do_not(monkeypatch, rng):
    """cross_entropy is marked ``replays``: from the third eager call of a signature the plan
    replays its launches without running the kernel's host code (reduction="none" in one flat
    launch); with value checks on every call runs it, so that it reads the flag back."""
    assert all(k.replays for k in registry.KERNELS[("cross_entropy", "cuda")])
    monkeypatch.setattr(base, "_plans", base._PlanTable())
    shape = (size(5, 300), size(37, 4099))
    x = rand(shape, np.float32, rng, low=-5.0, high=5.0)
    calls = []
    real = loss._ce
    monkeypatch.setattr(loss, "_ce", lambda *a, **k: (calls.append(1), real(*a, **k)))
    for checked in (False, True):
        for attrs in ({"reduction": "mean", "ignore_index": -100}, CE_NONE):
            calls.clear()
            with tsol.config.override(check_values=checked):
                for _ in range(4):
                    check("cross_entropy", [x, rng.integers(0, shape[1], shape[0])], attrs,
                          np.float32)
            assert len(calls) == (4 if checked else 2), (checked, attrs, len(calls))
    if not HOST:
        flat = [p.attrs["reduction"] for p in base._plans.values()
                if p.replay is not None and p.replay.flat is not None]
        assert flat == ["none"], flat


def test_out_of_range_targets_give_nan(rng):
    """With value checks off (the default) a target outside [0, C) that is not ignore_index
    gives its sample a NaN loss, so the mean and the sum are NaN; ignored samples stay 0 and out
    of the mean; the other samples are right. The rows are replayed too."""
    for shape in [(size(7, 301), size(37, 4099)), (3, 5, 4)]:
        c = shape[1]
        x = rand(shape, np.float32, rng, low=-5.0, high=5.0)
        rows = shape[:1] + shape[2:]
        for _ in range(3):                       # planned, recorded, replayed
            t = rng.integers(0, c, rows)
            flat = t.reshape(-1)
            flat[1], flat[3], flat[4] = c, -1, -100
            got = run("cross_entropy", [x, t], {"reduction": "none", "ignore_index": -100})
            for red in ("mean", "sum"):
                total = run("cross_entropy", [x, t], {"reduction": red, "ignore_index": -100})
                assert COMPILE_ONLY or np.isnan(total)
            if COMPILE_ONLY:
                continue
            got = got.reshape(-1)
            assert np.isnan(got[[1, 3]]).all() and got[4] == 0, got
            ok = t.copy()
            ok.reshape(-1)[[1, 3]] = -100
            want = reference("cross_entropy", x, ok, reduction="none", ignore_index=-100)
            keep = np.ones(got.shape, bool)
            keep[[1, 3]] = False
            assert_close(got[keep], want.reshape(-1)[keep], np.float32, what="cuda rows")
        # No ignore_index: -100 is out of range as well.
        t = rng.integers(0, c, rows)
        t.reshape(-1)[2] = -100
        got = run("cross_entropy", [x, t], CE_NONE)
        assert COMPILE_ONLY or np.isnan(got.reshape(-1)[2])


@pytest.mark.parametrize("streamed", [False, True], ids=["registers", "streamed"])
def test_out_of_range_targets_give_nan_every_dtype(streamed, forced, rng):
    """Every dtype, rows kept in registers or read twice: the bad sample is NaN, an ignored one
    0, a counted one right, and the mean and sum are NaN."""
    if streamed:
        forced(Config(block=32, work=8, kmax=1))
    for dt in FLOAT_DTYPES:
        x = rand((3, size(41, 4099)), dt, rng, low=-5.0, high=5.0)
        t = np.array([0, x.shape[1], -100])
        attrs = {"reduction": "none", "ignore_index": -100}
        got = run("cross_entropy", [x, t], attrs)
        means = [run("cross_entropy", [x, t], {"reduction": red, "ignore_index": -100})
                 for red in ("mean", "sum")]
        if COMPILE_ONLY:
            continue
        assert np.isnan(got[1]) and got[2] == 0 and np.isnan(means).all(), (got, means)
        want = reference("cross_entropy", x, np.array([0, -100, -100]), **attrs)
        assert_close(got[:1], want[:1], dt, what="cuda cross_entropy")


@pytest.mark.skipif(not HOST, reason="the VJP builds its one-hot targets with NumPy")
def test_out_of_range_target_gives_nan_gradient_rows(rng):
    x = rand((5, 7), np.float32, rng, low=-3.0, high=3.0)
    t = np.array([2, 7, -100, 0, -3])
    g = rand((5,), np.float32, rng)
    with on_cuda():
        out = tsol.cross_entropy(x, t, reduction="none", ignore_index=-100)
        dx = get_op("cross_entropy").vjp(g, x, t, out=out, reduction="none",
                                         ignore_index=-100)[0]
    if COMPILE_ONLY:
        return
    dx = np.asarray(dx)
    assert np.isnan(dx[[1, 4]]).all() and not np.isnan(dx[[0, 2, 3]]).any()
    x64 = x.astype(np.float64)
    p = np.exp(x64 - x64.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[[0, 3], t[[0, 3]]] -= 1.0
    want = p * g.astype(np.float64)[:, None]
    want[2] = 0.0
    assert_close(dx[[0, 2, 3]], want[[0, 2, 3]], np.float32, what="cuda cross_entropy vjp")


def test_cross_entropy_errors(rng):
    """User errors; with value checks on, an out-of-range target raises as on the CPU, naming
    the value, its position, the class count and the fix."""
    x = rand((4, 3), np.float32, rng)
    cases = [
        (ArgumentError, [x, np.array([0, 1, 3, 0])], {},
         ["target 3 at targets[2]", "[0, 3)", "Fix: fix the labels"]),
        (ArgumentError, [x, np.array([0, -1, 2, 0])], {"ignore_index": -100},
         ["target -1 at targets[1]", "ignore_index=-100"]),
        (ArgumentError, [x, np.array([0, -1, 2, 0])], {"reduction": "none"}, ["target -1"]),
        (ArgumentError, [rand((2, 3, 2), np.float32, rng), np.array([[0, 1], [2, 5]])],
         {"reduction": "sum"}, ["target 5 at targets[1, 1]"]),
        (ShapeError, [x, np.array([0, 1, 2])], {}, ["(4,)"]),
        (DTypeError, [x, np.zeros((4, 3))], {}, ["dtype"]),
        (ArgumentError, [x, probs((4, 3), np.float32, rng)], {"ignore_index": 0},
         ["ignore_index"]),
        (DTypeError, [x.astype(np.int32), np.zeros(4, np.int64)], {}, []),
    ]
    for cls, inputs, attrs, fragments in cases:
        checked = tsol.config.override(check_values=True)
        if COMPILE_ONLY and cls is ArgumentError and "target" in fragments[0]:
            with checked:
                run("cross_entropy", inputs, attrs)   # compiled, not run: nothing to check
            continue
        with checked, pytest.raises(cls) as info:
            run("cross_entropy", inputs, attrs)
        assert isinstance(info.value, TSOLError) and "cross_entropy" in str(info.value)
        for f in fragments:
            assert f in str(info.value), str(info.value)
    # After an error, a good call with the same layout still works.
    check("cross_entropy", [x, np.array([0, 1, 2, 0])], CE_MEAN, np.float32)


def kl_inputs(shape, dt, rng, low=-4.0, high=1.0):
    """log q in [low, 0), p in [0, high) with one exact zero."""
    logq = rand(shape, dt, rng, low=low, high=0.0)
    p = rand(shape, dt, rng, low=0.0, high=high)
    if p.size:
        p.reshape(-1)[0] = 0                              # xlogy(0, 0) = 0
    return logq, p


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_mse_kl_dtypes_and_reductions(dt, rng):
    shape = (size(3, 30), size(43, 4099))
    # float16 tops out at 65504: at the real size, sums of values this small (about 20000, not
    # 740000) stay finite, so the sums are compared, not overflowed (checked below).
    half = dt == dtypes.float16
    span = 0.5 if half else 3.0
    a, b = rand(shape, dt, rng, low=-span, high=span), rand(shape, dt, rng, low=-span, high=span)
    for red in REDUCTIONS:
        check("mse", [a, b], {"reduction": red}, dt)
    logq, p = kl_inputs(shape, dt, rng, *((-1.0, 0.5) if half else ()))
    for red in REDUCTIONS + ["batchmean"]:
        check("kl_divergence", [logq, p], {"reduction": red, "log_target": False}, dt)
        check("kl_divergence", [logq, logq[::-1].copy()], {"reduction": red, "log_target": True},
              dt)
    if half:
        # Terms of 40000 (exact in float16): the float64 sum overflows float16 to inf, as the
        # reference's would; the mean, accumulated in float64, does not.
        big = np.full(shape, 100.0, dt)
        assert COMPILE_ONLY or np.isposinf(run("mse", [big, -big], {"reduction": "sum"}))
        check("mse", [big, -big], {"reduction": "mean"}, dt)


def test_mse_kl_broadcast_promotion_views_out(rng):
    a, b = rand((3, size(37, 1001)), np.float32, rng), rand((size(37, 1001),), np.float64, rng)
    check("mse", [a, b], {"reduction": "none"}, np.float64)           # broadcast, promoted
    check("mse", [a, b], {"reduction": "sum"}, np.float64)
    # 0-d arrays for scalar operands: a NumPy scalar becomes a host array, which does not mix
    # with CuPy operands (nor run on the GPU on its own).
    check("mse", [a, np.array(0.5, np.float32)], {"reduction": "mean"}, np.float32)
    h = rand((4, 9), "bfloat16", rng)
    check("kl_divergence", [h, rand((4, 9), np.float16, rng, low=0.0, high=1.0)],
          {"reduction": "batchmean", "log_target": False}, np.float32)  # bf16 + fp16 -> fp32
    v = rand((size(7, 300), 20), np.float32, rng)[:, ::2]
    check("mse", [v, v.T.copy().T], {"reduction": "mean"}, np.float32)
    check("kl_divergence", [v, np.abs(v)], {"reduction": "none", "log_target": False},
          np.float32)
    check("mse", [np.array(2.0, np.float32), np.array(0.5, np.float32)], {"reduction": "sum"},
          np.float32)
    with on_cuda():
        out = to_device(np.full((), np.nan, np.float32))
        d = to_device(a)
        assert tsol.mse(d, d, reduction="sum", out=out) is out
    assert COMPILE_ONLY or to_host(out) == 0
    assert np.isnan(run("mse", [np.zeros(0), np.zeros(0)]))             # mean of nothing
    assert run("mse", [np.zeros(0), np.zeros(0)], {"reduction": "sum"}) == 0
    assert run("kl_divergence", [np.zeros((3, 0)), np.zeros((3, 0))],
               {"reduction": "batchmean"}) == 0                        # filled on the host


def test_mse_kl_repeatable_and_split_over_blocks(forced, rng):
    """More elements than one grid pass covers: partials per block, folded in one block."""
    forced(Config(block=32, work=8, kmax=32))
    n = size(9 * 32 * 4 + 17, 5_000_001)
    a, b = rand((n,), np.float32, rng), rand((n,), np.float32, rng)
    first = check("mse", [a, b], {"reduction": "sum"}, np.float32, scale=n ** 0.5)
    again = run("mse", [a, b], {"reduction": "sum"})
    assert COMPILE_ONLY or again.tobytes() == first.tobytes()
    check("kl_divergence", [a, np.abs(b)], {"reduction": "mean", "log_target": False},
          np.float32)


def test_mse_kl_errors(rng):
    a = rand((3, 4), np.float32, rng)
    for op in ("mse", "kl_divergence"):
        with pytest.raises(ShapeError, match="broadcast"):
            run(op, [a, rand((3, 5), np.float32, rng)])
        with pytest.raises(DTypeError):
            run(op, [a.astype(np.int32), a])
        with pytest.raises(ArgumentError, match="reduction"):
            run(op, [a, a], {"reduction": "mean "})
    with pytest.raises(ArgumentError, match="batchmean"):
        run("mse", [a, a], {"reduction": "batchmean"})
