"""cross_entropy, mse and kl_divergence against their float64 references (PyTorch conventions).

Every reduction, every float dtype, the shared shape table (mse, kl) and PyTorch's layouts
([C], [N, C], [N, C, d1, ...]) for cross_entropy, with class indices (ignore_index included)
and probability targets; errors; VJPs.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import tsol
from tests.ops.support import fails
from tests.support import (
    FLOAT_DTYPES,
    SHAPES,
    assert_close,
    check_vjp,
    dtype_id,
    rand,
    reference,
    views,
)
from tsol.errors import ArgumentError, DTypeError, ShapeError
from tsol.ops.base import bind, meta_of
from tsol.registry import get_op

REDUCTIONS = ["mean", "sum", "none"]
CE_SHAPES = [(5,), (6, 7), (4, 5, 3, 2), (0, 3), (3, 1), (2, 129), (1, 4099)]


def shape_id(s) -> str:
    return "x".join(map(str, s)) or "scalar"


def run_vjp(name, g, primals, **kwargs):
    """The op's VJP rule at ``primals`` with its normalized attributes."""
    opdef = get_op(name)
    operands, attrs, _ = bind(opdef, primals, kwargs)
    attrs = opdef.normalize([meta_of(o) for o in operands], **attrs)
    return opdef.vjp(g, *operands, out=getattr(tsol, name)(*primals, **kwargs), **attrs)


def _classes(shape):
    cax = 0 if len(shape) == 1 else 1
    return shape[cax], shape[:cax] + shape[cax + 1:]


def _probs(shape, dt, rng):
    cax = 0 if len(shape) == 1 else 1
    p = rng.random(shape)
    return (p / np.maximum(p.sum(axis=cax, keepdims=True), 1e-12)).astype(dt)


# --- cross_entropy ------------------------------------------------------------------------

@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=shape_id)
def test_cross_entropy(shape, dt, rng):
    x = rand(shape, dt, rng, low=-5.0, high=5.0)
    c, rows = _classes(shape)
    t = rng.integers(0, max(c, 1), rows)
    ignored = t.copy()
    ignored.reshape(-1)[:1] = -100
    for red in REDUCTIONS:
        for targets, ignore in ((t, None), (ignored, -100)):
            if c == 0 and t.size:
                continue                                  # no valid class index exists
            got = tsol.cross_entropy(x, targets, reduction=red, ignore_index=ignore)
            want = reference("cross_entropy", x, targets, reduction=red, ignore_index=ignore)
            assert got.dtype == dt
            assert_close(got, want, dt, what=f"{red} ignore={ignore}")
        p = _probs(shape, dt, rng)
        got = tsol.cross_entropy(x, p, reduction=red)
        assert_close(got, reference("cross_entropy", x, p, reduction=red, ignore_index=None),
                     dt, what=f"{red} probabilities")


def test_cross_entropy_out_views_and_edges(rng):
    x = rand((6, 5), np.float32, rng)
    t = rng.integers(0, 5, 6).astype(np.int32)
    want = reference("cross_entropy", x, t, reduction="none", ignore_index=None)
    out = np.full(6, np.nan, np.float32)
    assert tsol.cross_entropy(x, t, reduction="none", out=out) is out
    assert_close(out, want, np.float32)
    for name, v in views(x):
        assert_close(tsol.cross_entropy(v, t), reference("cross_entropy", v, t,
                                                         reduction="mean", ignore_index=None),
                     np.float32, what=name)
    # Every target ignored: the mean is 0/0 = NaN, as in PyTorch; the sum is 0.
    assert np.isnan(tsol.cross_entropy(x, np.full(6, 3), ignore_index=3))
    assert tsol.cross_entropy(x, np.full(6, 3), ignore_index=3, reduction="sum") == 0
    # Huge logits stay finite (the max is subtracted); uint8 targets work.
    big = np.array([[1000.0, 0.0], [0.0, 1000.0]], np.float32)
    np.testing.assert_allclose(tsol.cross_entropy(big, np.array([0, 0], np.uint8),
                                                  reduction="none"), [0.0, 1000.0])


def test_cross_entropy_errors(rng):
    x = rand((4, 3), np.float32, rng)
    ce, name = tsol.cross_entropy, "tsol.cross_entropy"
    # The CPU backend raises with value checks off (the default) as well as on.
    fails(lambda: ce(x, np.array([0, 1, 3, 0])), ArgumentError, name, "target 3 at targets[2]",
          "[0, 3)")
    fails(lambda: ce(x, np.array([0, -1, 2, 0]), ignore_index=-100), ArgumentError, name,
         "target -1")
    fails(lambda: ce(x, np.array([0, 1, 2])), ShapeError, name, "(4,)")
    fails(lambda: ce(x, np.zeros((4, 4), np.float32)), ShapeError, name, "probability")
    fails(lambda: ce(x, np.zeros((4, 3))), DTypeError, name, "dtype")
    fails(lambda: ce(x, _probs((4, 3), np.float32, rng), ignore_index=0), ArgumentError, name,
         "ignore_index")
    fails(lambda: ce(x, np.zeros(4, bool)), DTypeError, name, "targets")
    fails(lambda: ce(x, 1), DTypeError, name, "targets")
    fails(lambda: ce(x.astype(np.int32), np.zeros(4, np.int64)), DTypeError, name)
    fails(lambda: ce(np.float32(1.0), np.int64(0)), ShapeError, name, "class axis")
    fails(lambda: ce(x, np.zeros(4, np.int64), reduction="avg"), ArgumentError, name, "avg")
    fails(lambda: ce(x, np.zeros(4, np.int64), ignore_index=True), ArgumentError, name)
    fails(lambda: ce(x.tolist(), np.zeros(4, np.int64)), ArgumentError, name, "list")
    fails(lambda: ce(x, np.zeros(4, np.int64), out=np.empty(4, np.float32)), ShapeError, name,
         "out=")


@pytest.mark.parametrize("red", REDUCTIONS)
def test_cross_entropy_vjp(red, rng):
    x = rng.standard_normal((4, 5))
    t = np.array([1, -100, 4, 0])
    check_vjp(lambda x: tsol.cross_entropy(x, t, reduction=red, ignore_index=-100), [x],
              lambda g, x: run_vjp("cross_entropy", g, (x, t), reduction=red,
                                   ignore_index=-100)[:1])
    x, p = rng.standard_normal((3, 4, 2)), _probs((3, 4, 2), np.float64, rng)
    check_vjp(lambda x, p: tsol.cross_entropy(x, p, reduction=red), [x, p],
              lambda g, x, p: run_vjp("cross_entropy", g, (x, p), reduction=red))


@pytest.mark.parametrize("red", REDUCTIONS)
def test_cross_entropy_vjp_out_of_range_rows(red, rng):
    """A target out of [0, C) that is not ignore_index gets a NaN gradient row (its loss is NaN
    on CUDA; the CPU forward raises, so the rule is called directly); the others stay exact."""
    x, t = rng.standard_normal((5, 3, 2)), np.array([[0, 3], [-100, 2], [1, -1], [2, 0], [1, 1]])
    g = rng.standard_normal((5, 2)) if red == "none" else np.float64(1.5)
    opdef = get_op("cross_entropy")
    (got, none) = opdef.vjp(g, x, t, out=None, reduction=red, ignore_index=-100)
    bad = (t == 3) | (t == -1)
    assert none is None and np.isnan(got.transpose(0, 2, 1)[bad]).all()
    fine = np.where(bad, 0, t)      # as many samples count in the mean
    (want, _) = run_vjp("cross_entropy", g, (x, fine), reduction=red, ignore_index=-100)
    np.testing.assert_allclose(got.transpose(0, 2, 1)[~bad], want.transpose(0, 2, 1)[~bad],
                               rtol=1e-12, atol=1e-15)


# --- mse and kl_divergence ----------------------------------------------------------------

def _kl_inputs(shape, dt, rng):
    logq = rand(shape, dt, rng, low=-4.0, high=0.0)
    p = rand(shape, dt, rng, low=0.0, high=1.0)
    if p.size:
        p.reshape(-1)[0] = 0                              # xlogy(0, 0) = 0
    return logq, p


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_mse_kl(shape, dt, rng):
    a, b = rand(shape, dt, rng), rand(shape, dt, rng)
    for red in REDUCTIONS:
        got = tsol.mse(a, b, reduction=red)
        assert got.dtype == dt
        assert_close(got, reference("mse", a, b, reduction=red), dt, what=f"mse {red}")
    logq, p = _kl_inputs(shape, dt, rng)
    for red in REDUCTIONS + ["batchmean"]:
        for log_target, t in ((False, p), (True, logq[::-1] if logq.ndim else logq)):
            got = tsol.kl_divergence(logq, t, reduction=red, log_target=log_target)
            want = reference("kl_divergence", logq, t, reduction=red, log_target=log_target)
            assert_close(got, want, dt, what=f"kl {red} log_target={log_target}")


def test_mse_kl_broadcast_views_out(rng):
    a, b = rand((3, 4), np.float32, rng), rand((4,), np.float64, rng)
    got = tsol.mse(a, b, reduction="none")                # broadcast and promoted
    assert got.dtype == np.float64
    assert_close(got, reference("mse", a, b, reduction="none"), np.float64)
    for name, v in views(rand((7, 129), np.float32, rng)):
        w = rand((7, 129), np.float32, rng)
        assert_close(tsol.mse(v, w), reference("mse", v, w, reduction="mean"), np.float32,
                     what=name)
        assert_close(tsol.kl_divergence(v, np.abs(w), reduction="none"),
                     reference("kl_divergence", v, np.abs(w), reduction="none",
                               log_target=False), np.float32, what=name)
    out = np.full((), np.nan, np.float32)
    assert tsol.mse(a, a, reduction="sum", out=out) is out and out == 0
    assert np.isnan(tsol.mse(np.zeros(0), np.zeros(0)))   # mean of nothing, as PyTorch


def test_reductions_thread_count_invariant(rng):
    a, b = rand((300_001,), np.float32, rng), rand((300_001,), np.float32, rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = (tsol.mse(a, b), tsol.kl_divergence(a, np.abs(b), reduction="sum"))
        numba.set_num_threads(before)
        many = (tsol.mse(a, b), tsol.kl_divergence(a, np.abs(b), reduction="sum"))
    finally:
        numba.set_num_threads(before)
    for x, y in zip(one, many, strict=True):
        assert x.tobytes() == y.tobytes()


def test_mse_kl_errors(rng):
    a = rand((3, 4), np.float32, rng)
    for op in ("mse", "kl_divergence"):
        fn, name = getattr(tsol, op), f"tsol.{op}"
        fails(lambda fn=fn: fn(a, rand((3, 5), np.float32, rng)), ShapeError, name, "broadcast")
        fails(lambda fn=fn: fn(a.astype(np.int32), a), DTypeError, name)
        fails(lambda fn=fn: fn(a, a, reduction="mean "), ArgumentError, name, "reduction")
        fails(lambda fn=fn: fn(a.tolist(), a), ArgumentError, name, "list")
        fails(lambda fn=fn: fn(a, a, out=np.empty((3, 4), np.float32)), ShapeError, name, "out=")
    fails(lambda: tsol.mse(a, a, reduction="batchmean"), ArgumentError, "tsol.mse", "batchmean")
    fails(lambda: tsol.kl_divergence(a, a, log_target="no"), ArgumentError,
         "tsol.kl_divergence", "log_target")


@pytest.mark.parametrize("red", REDUCTIONS + ["batchmean"])
def test_mse_kl_vjp(red, rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    if red != "batchmean":
        check_vjp(lambda a, b: tsol.mse(a, b, reduction=red), [a, b],
                  lambda g, a, b: run_vjp("mse", g, (a, b), reduction=red))
    logq, p = np.log(rng.random((3, 4))), rng.random((3, 4)) + 0.1
    for log_target, t in ((False, p), (True, np.log(p))):
        def fn(a, t, lt=log_target):
            return tsol.kl_divergence(a, t, reduction=red, log_target=lt)

        def vjp(g, a, t, lt=log_target):
            return run_vjp("kl_divergence", g, (a, t), reduction=red, log_target=lt)

        check_vjp(fn, [logq, t], vjp)
