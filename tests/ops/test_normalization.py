"""layernorm and rmsnorm against the float64 reference: every dtype, shape and view, with and
without gamma/beta (also of another dtype than x) and a residual (also of another dtype);
out=; determinism; errors; VJPs; cost."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import tsol
from tests.support import (
    FLOAT_DTYPES,
    INT_DTYPES,
    SHAPES,
    assert_close,
    check_vjp,
    dtype_id,
    rand,
    reference,
    views,
)
from tsol import dtypes
from tsol.ops.base import Meta
from tsol.registry import get_op, kernels

ND_SHAPES = [s for s in SHAPES if s] + [(5, 4096), (2, 1, 1)]
# Which of gamma/beta are passed, and their dtype: "x" (x's dtype) or float32.
LAYERNORM_PARAMS = [("none", None), ("gamma", "x"), ("beta", "x"), ("both", "x"),
                    ("both", "float32")]
RMSNORM_PARAMS = [("none", None), ("gamma", "x"), ("gamma", "float32")]


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def params(which: str, pdt: str | None, shape, dt, rng) -> dict:
    pdt = dt if pdt == "x" else pdt
    n = shape[-1]
    return {name: rand((n,), pdt, rng) if which in (name, "both") else None
            for name in ("gamma", "beta")}


@pytest.mark.parametrize("which,pdt", LAYERNORM_PARAMS,
                         ids=[f"{w}-{p}" for w, p in LAYERNORM_PARAMS])
@pytest.mark.parametrize("shape", ND_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_layernorm(dt, shape, which, pdt, rng):
    x = rand(shape, dt, rng)
    p = params(which, pdt, shape, dt, rng)
    for name, v in views(x):
        got = tsol.layernorm(v, p["gamma"], p["beta"])
        assert got.dtype == dt and got.shape == shape
        want = reference("layernorm", v, p["gamma"], p["beta"], eps=1e-5)
        assert_close(got, want, dt, what=f"layernorm {name}")


@pytest.mark.parametrize("which,pdt", RMSNORM_PARAMS, ids=[f"{w}-{p}" for w, p in RMSNORM_PARAMS])
@pytest.mark.parametrize("shape", ND_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_rmsnorm(dt, shape, which, pdt, rng):
    x = rand(shape, dt, rng)
    gamma = params(which, pdt, shape, dt, rng)["gamma"]
    for name, v in views(x):
        got = tsol.rmsnorm(v, gamma)
        assert got.dtype == dt and got.shape == shape
        assert_close(got, reference("rmsnorm", v, gamma, eps=1e-6), dt, what=f"rmsnorm {name}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_eps_keywords_and_mixed_half_params(dt, rng):
    x = rand((7, 129), dt, rng)
    g = rand((129,), dtypes.bfloat16, rng)
    b = rand((129,), np.float64, rng)
    want = reference("layernorm", x, g, b, eps=0.25)
    assert_close(tsol.layernorm(x, g, b, eps=0.25), want, dt)
    assert_close(tsol.layernorm(x, beta=b, gamma=g, eps=0.25), want, dt)
    assert_close(tsol.rmsnorm(x, g, 3), reference("rmsnorm", x, g, eps=3.0), dt)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_constant_rows_give_beta(dt, rng):
    # Variance 0: x - mean is exactly 0, so the result is beta exactly.
    x = np.full((3, 100), 5.0, dt)
    b = rand((100,), dt, rng)
    np.testing.assert_array_equal(tsol.layernorm(x, None, b), np.broadcast_to(b, x.shape))


@pytest.mark.parametrize("n", [3, 1000])
def test_float32_mean_much_larger_than_spread(n, rng):
    # An offset of 1e4 over unit spread: a one-pass E[x^2] - E[x]^2 in float32 loses all of it,
    # and even x - round(mean) alone is off by the mean's rounding (1e4 * 2**-24 per unit of
    # spread). The kernel keeps the mean in two parts, so the float32 tolerance holds.
    x = (1e4 + rng.standard_normal((50, n))).astype(np.float32)
    assert_close(tsol.layernorm(x), reference("layernorm", x, None, None, eps=1e-5),
                 np.float32)


def test_out_nan_filled_and_in_place(rng):
    x = rand((33, 65), np.float32, rng)
    g, b = rand((65,), np.float32, rng), rand((65,), np.float32, rng)
    want = reference("layernorm", x, g, b, eps=1e-5)
    out = np.full(x.shape, np.nan, np.float32)
    assert tsol.layernorm(x, g, b, out=out) is out
    assert_close(out, want, np.float32, what="out=")
    y = x.copy()
    assert tsol.layernorm(y, g, b, out=y) is y
    assert_close(y, want, np.float32, what="in place")
    out = np.full(x.shape, np.nan, np.float32)
    assert tsol.rmsnorm(x, g, out=out) is out
    assert_close(out, reference("rmsnorm", x, g, eps=1e-6), np.float32, what="rmsnorm out=")


def test_read_only_operands(rng):
    x, g, b = rand((9, 130), np.float32, rng), rand((130,), np.float32, rng), \
        rand((130,), np.float32, rng)
    for a in (x, g, b):
        a.flags.writeable = False
    assert_close(tsol.layernorm(x, g, b), reference("layernorm", x, g, b, eps=1e-5), np.float32)
    assert_close(tsol.rmsnorm(x, g), reference("rmsnorm", x, g, eps=1e-6), np.float32)


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_bitwise_same_for_every_config_and_thread_count(op, rng):
    x = rand((37, 1031), np.float32, rng)
    g = rand((1031,), np.float32, rng)
    for res in (None, rand(x.shape, np.float32, rng)):
        operands = [x, g, g, res] if op == "layernorm" else [x, g, res]
        kern = kernels(op, "cpu")[0]
        results = []
        for cfg in kern.configs:
            out = np.full(x.shape, np.nan, np.float32)
            kern.impl(*operands, out=out, config=cfg, eps=1e-5)
            results.append(out)
        threads = numba.get_num_threads()
        try:
            numba.set_num_threads(1)
            results.append(getattr(tsol, op)(*operands[:-1], eps=1e-5, residual=res))
        finally:
            numba.set_num_threads(threads)
        for r in results[1:]:
            np.testing.assert_array_equal(r.view(np.uint32), results[0].view(np.uint32))


# --- the fused residual add ----------------------------------------------------------------

# (x dtype, residual dtype): same dtypes, and mixed ones whose sum promotes.
RESIDUAL_DTYPES = [(np.float32, np.float32), (np.float16, np.float16),
                   (dtypes.bfloat16, dtypes.bfloat16), (np.float64, np.float64),
                   (np.float16, np.float32), (dtypes.bfloat16, np.float16),
                   (np.float32, np.float64)]
RESIDUAL_SHAPES = [(7, 129), (33, 4099), (1, 65), (2, 3, 5)]


def norm(op: str, x, p: dict, **kw):
    if op == "layernorm":
        return tsol.layernorm(x, p["gamma"], p["beta"], **kw)
    return tsol.rmsnorm(x, p["gamma"], **kw)


def norm_ref(op: str, x, p: dict, r, eps: float):
    if op == "layernorm":
        return reference(op, x, p["gamma"], p["beta"], r, eps=eps)
    return reference(op, x, p["gamma"], r, eps=eps)


@pytest.mark.parametrize("which", ["none", "both"])
@pytest.mark.parametrize("shape", RESIDUAL_SHAPES, ids=shape_id)
@pytest.mark.parametrize("xdt,rdt", RESIDUAL_DTYPES,
                         ids=[f"{dtype_id(a)}+{dtype_id(b)}" for a, b in RESIDUAL_DTYPES])
@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_residual(op, xdt, rdt, shape, which, rng):
    x, r = rand(shape, xdt, rng), rand(shape, rdt, rng)
    p = params(which, "float32", shape, xdt, rng)
    want_dt = dtypes.result_type(np.dtype(xdt), np.dtype(rdt))
    eps = 1e-5
    got = norm(op, x, p, eps=eps, residual=r)
    assert got.dtype == want_dt and got.shape == shape
    assert_close(got, norm_ref(op, x, p, r, eps), want_dt, what=f"{op} residual")
    # The reference of the sum is not the reference of x: the residual was really added.
    assert not np.allclose(norm_ref(op, x, p, None, eps), norm_ref(op, x, p, r, eps))


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_residual_views_and_bitwise_equal_to_the_unfused_sum(op, rng):
    # float32 + float32 and float16 + float32 round their sum in float32 exactly as the fused
    # load does, so the fused call gives the bits of the norm of the materialized sum.
    shape = (9, 130)
    for xdt in (np.float32, np.float16):
        x, r = rand(shape, xdt, rng), rand(shape, np.float32, rng)
        p = params("both", "float32", shape, np.float32, rng)
        for name, rv in views(r):          # (views of other values: "strided" is)
            got = norm(op, x, p, residual=rv)
            unfused = norm(op, x.astype(np.float32) + rv, p)
            np.testing.assert_array_equal(got.view(np.uint32), unfused.view(np.uint32),
                                          err_msg=f"{op} residual {name}")
        for name, xv in views(x):
            assert_close(norm(op, xv, p, eps=0.5, residual=r), norm_ref(op, xv, p, r, 0.5),
                         np.float32, what=f"{op} x {name}")


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_residual_out_and_in_place(op, rng):
    shape = (33, 65)
    x, r = rand(shape, np.float32, rng), rand(shape, np.float32, rng)
    p = params("both", "x", shape, np.float32, rng)
    eps = 1e-5
    want = norm_ref(op, x, p, r, eps)
    out = np.full(shape, np.nan, np.float32)
    assert norm(op, x, p, eps=eps, residual=r, out=out) is out
    assert_close(out, want, np.float32, what="out=")
    for target in ("x", "residual"):
        y, s = x.copy(), r.copy()
        dest = y if target == "x" else s
        assert norm(op, y, p, eps=eps, residual=s, out=dest) is dest
        assert_close(dest, want, np.float32, what=f"out={target}")
    # A float16 x with a float32 residual gives float32: out= may be the residual.
    h, s = rand(shape, np.float16, rng), r.copy()
    want = norm_ref(op, h, p, s, eps)
    assert norm(op, h, p, eps=eps, residual=s, out=s) is s
    assert_close(s, want, np.float32, what="out=residual, mixed")


def test_residual_cost_counts_its_bytes():
    x = Meta((4, 8), np.dtype(np.float16))
    r = Meta((4, 8), np.dtype(np.float32))
    out = Meta((4, 8), np.dtype(np.float32))
    g = Meta((8,), np.dtype(np.float32))
    base_flops, base_bytes = get_op("layernorm").cost(x, g, None, None, out=out, eps=1e-5)
    flops, moved = get_op("layernorm").cost(x, g, None, r, out=out, eps=1e-5)
    assert moved == base_bytes + r.nbytes and flops == base_flops + x.size
    flops, moved = get_op("rmsnorm").cost(x, g, r, out=out, eps=1e-5)
    assert moved == x.nbytes + g.nbytes + r.nbytes + out.nbytes and flops > 0


# --- errors ------------------------------------------------------------------------------------

def raises(cls, op: str):
    return pytest.raises(cls, match=f"tsol.{op}")


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_errors(op):
    f = getattr(tsol, op)
    x = np.ones((3, 4), np.float32)
    for dt in INT_DTYPES + [np.dtype(bool)]:
        with raises(tsol.DTypeError, op):
            f(np.ones((3, 4), dt))
    with raises(tsol.DTypeError, op):
        f(x, np.ones(4, np.int32))
    for bad in (np.ones(3, np.float32), np.ones((1, 4), np.float32), np.ones(5, np.float32)):
        with raises(tsol.ShapeError, op) as e:
            f(x, bad)
        assert f"gamma has shape {bad.shape}" in str(e.value) and "(3, 4)" in str(e.value)
        assert "(4,)" in str(e.value)
    with raises(tsol.ShapeError, op) as e:
        f(np.float32(2.0))
    assert "0-d" in str(e.value)
    with raises(tsol.ShapeError, op):
        f(2.0)
    with raises(tsol.ArgumentError, op):
        f([[1.0, 2.0]])
    with raises(tsol.ArgumentError, op):
        f(x, [1.0, 2.0, 3.0, 4.0])
    for eps in (-1e-5, float("nan"), float("inf"), "1e-5", True, None):
        with raises(tsol.ArgumentError, op) as e:
            f(x, eps=eps)
        assert "eps" in str(e.value)
    with raises(tsol.ShapeError, op):
        f(x, out=np.empty((4, 3), np.float32))
    with raises(tsol.DTypeError, op):
        f(x, out=np.empty((3, 4), np.float64))


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_residual_errors(op):
    f = getattr(tsol, op)
    x = np.ones((3, 4), np.float32)
    for bad in ((3, 5), (4,), (1, 4), (3, 4, 1), ()):
        with raises(tsol.ShapeError, op) as e:
            f(x, residual=np.ones(bad, np.float32))
        msg = str(e.value)
        assert f"residual has shape {bad}" in msg and "x has shape (3, 4)" in msg, msg
        assert "Fix: pass a residual of shape (3, 4)" in msg, msg
    with raises(tsol.ShapeError, op):
        f(x, residual=2.0)
    with raises(tsol.DTypeError, op):
        f(x, residual=np.ones((3, 4), np.int32))
    with raises(tsol.ArgumentError, op):
        f(x, residual=[[1.0] * 4] * 3)
    with raises(tsol.DTypeError, op):
        f(x, residual=np.ones((3, 4), np.float64), out=np.empty((3, 4), np.float32))


def test_layernorm_beta_errors():
    x = np.ones((3, 4), np.float32)
    with raises(tsol.ShapeError, "layernorm") as e:
        tsol.layernorm(x, None, np.ones(3, np.float32))
    assert "beta has shape (3,)" in str(e.value)
    with raises(tsol.DTypeError, "layernorm"):
        tsol.layernorm(x, None, np.ones(4, np.int64))


# --- VJPs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)], ids=shape_id)
def test_layernorm_vjp(shape, rng):
    opdef = get_op("layernorm")
    x, g, b, r = rng.standard_normal(shape), rng.standard_normal(shape[-1:]), \
        rng.standard_normal(shape[-1:]), rng.standard_normal(shape)

    def fn(x, g, b, r=None):
        return tsol.layernorm(x, g, b, eps=0.1, residual=r)

    def vjp(ct, x, g, b, r=None):
        return opdef.vjp(ct, x, g, b, r, out=fn(x, g, b, r), eps=0.1)[:3 if r is None else 4]

    check_vjp(fn, [x, g, b], vjp)
    check_vjp(fn, [x, g, b, r], vjp)
    grads = vjp(rng.standard_normal(shape), x, g, b, r)
    np.testing.assert_array_equal(np.asarray(grads[3]), np.asarray(grads[0]))
    check_vjp(lambda x: tsol.layernorm(x, eps=0.1), [x],
              lambda ct, x: opdef.vjp(ct, x, None, None, None, out=None, eps=0.1)[:1])
    check_vjp(lambda x, r: tsol.layernorm(x, eps=0.1, residual=r), [x, r],
              lambda ct, x, r: opdef.vjp(ct, x, None, None, r, out=None, eps=0.1)[::3])


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)], ids=shape_id)
def test_rmsnorm_vjp(shape, rng):
    opdef = get_op("rmsnorm")
    x, g, r = rng.standard_normal(shape), rng.standard_normal(shape[-1:]), \
        rng.standard_normal(shape)

    def fn(x, g, r=None):
        return tsol.rmsnorm(x, g, eps=0.1, residual=r)

    def vjp(ct, x, g, r=None):
        return opdef.vjp(ct, x, g, r, out=fn(x, g, r), eps=0.1)[:2 if r is None else 3]

    check_vjp(fn, [x, g], vjp)
    check_vjp(fn, [x, g, r], vjp)
    check_vjp(lambda x: tsol.rmsnorm(x, eps=0.1), [x],
              lambda ct, x: opdef.vjp(ct, x, None, None, out=None, eps=0.1)[:1])
    check_vjp(lambda x, r: tsol.rmsnorm(x, eps=0.1, residual=r), [x, r],
              lambda ct, x, r: opdef.vjp(ct, x, None, r, out=None, eps=0.1)[::2])
