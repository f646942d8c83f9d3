"""softmax and log_softmax against SciPy's float64 reference: every dtype, shape, axis and view;
edge values; out=; determinism across task sizes and thread counts; errors; VJPs."""

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
from tsol.registry import get_op, kernels

OPS = ["softmax", "log_softmax"]
# The shared table (0-d has no axis: see the error tests) plus shapes whose reduced axis is long
# with a short inner axis, and inner axes wider than one column block of the strided kernel.
EXTRA_SHAPES = [(4099, 3), (5, 600), (3, 7, 300)]
ND_SHAPES = [s for s in SHAPES if s] + EXTRA_SHAPES


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def run(op: str, x, **kw):
    return getattr(tsol, op)(x, **kw)


@pytest.mark.parametrize("shape", ND_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_every_axis_and_view(op, dt, shape, rng):
    x = rand(shape, dt, rng)
    for axis in range(-len(shape), len(shape)):
        for name, v in views(x):
            got = run(op, v, axis=axis)
            assert got.dtype == dt and got.shape == shape
            assert_close(got, reference(op, v, axis=axis), dt, what=f"{op} axis={axis} {name}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_default_axis_is_last_and_large_values_do_not_overflow(op, dt, rng):
    # exp(x) alone would overflow every dtype here; the max-subtracted form must not.
    x = (rand((6, 129), dt, rng).astype(np.float32) * 10 + 1000).astype(dt)
    want = reference(op, x, axis=-1)
    assert_close(run(op, x), want, dt, what=op)
    assert np.isfinite(run(op, x).astype(np.float64)).all()


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_infinities_and_nan_follow_scipy(op, dt, axis):
    inf, nan = np.inf, np.nan
    rows = np.array([[-inf, -inf, -inf, -inf],     # all -inf: NaN (-inf - -inf)
                     [0.0, inf, 1.0, -inf],        # +inf: NaN (softmax); -inf/NaN (log)
                     [0.0, nan, 1.0, 2.0],         # NaN: the whole row is NaN
                     [0.0, -inf, 1.0, 2.0]])       # -inf entry: an exact zero / -inf
    x = rows.astype(dt) if axis == -1 else np.ascontiguousarray(rows.T).astype(dt)
    got = run(op, x, axis=axis).astype(np.float64)
    want = reference(op, x, axis=axis)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{op} NaN pattern")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{op} inf pattern")
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], dt, what=op)
    if op == "log_softmax":
        row = got[1] if axis == -1 else got[:, 1]
        assert np.isnan(row[1]) and (row[[0, 2, 3]] == -np.inf).all()


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("op", OPS)
def test_out_nan_filled_and_in_place(op, axis, rng):
    x = rand((33, 65), np.float32, rng)
    want = reference(op, x, axis=axis)
    out = np.full(x.shape, np.nan, np.float32)
    assert run(op, x, axis=axis, out=out) is out
    assert_close(out, want, np.float32, what=f"{op} out=")
    y = x.copy()
    assert run(op, y, axis=axis, out=y) is y
    assert_close(y, want, np.float32, what=f"{op} in place")


@pytest.mark.parametrize("axis", [-1, 0])
def test_read_only_input(axis, rng):
    x = rand((9, 130), np.float32, rng)
    x.flags.writeable = False
    assert_close(tsol.softmax(x, axis=axis), reference("softmax", x, axis=axis), np.float32)


@pytest.mark.parametrize("shape,axis", [((37, 1031), -1), ((1031, 37), 0), ((3, 300, 270), 1)],
                         ids=["rows", "axis0", "inner"])
@pytest.mark.parametrize("op", OPS)
def test_bitwise_same_for_every_config_and_thread_count(op, shape, axis, rng):
    x = rand(shape, np.float32, rng)
    kern = kernels(op, "cpu")[0]
    results = []
    for cfg in kern.configs:
        out = np.full(shape, np.nan, np.float32)
        kern.impl(x, out=out, config=cfg, axis=axis % len(shape))
        results.append(out)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        results.append(run(op, x, axis=axis))
    finally:
        numba.set_num_threads(threads)
    results.append(run(op, x, axis=axis))
    for r in results[1:]:
        np.testing.assert_array_equal(r.view(np.uint32), results[0].view(np.uint32))


# --- errors ------------------------------------------------------------------------------------

def raises(cls, op: str):
    return pytest.raises(cls, match=f"tsol.{op}")


@pytest.mark.parametrize("dt", INT_DTYPES + [np.dtype(bool)], ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_integer_input_is_a_dtype_error(op, dt):
    with raises(tsol.DTypeError, op) as e:
        run(op, np.ones((3, 4), dt))
    assert "tsol.astype" in str(e.value)


@pytest.mark.parametrize("op", OPS)
def test_axis_errors(op):
    x = np.ones((3, 4), np.float32)
    for axis in (2, -3):
        with raises(tsol.AxisError, op) as e:
            run(op, x, axis=axis)
        assert "[-2, 1]" in str(e.value)
    with raises(tsol.AxisError, op):
        run(op, x, axis=1.0)
    with raises(tsol.AxisError, op):
        run(op, x, axis=(0, 1))
    with raises(tsol.AxisError, op):
        run(op, np.float32(1.0))


@pytest.mark.parametrize("op", OPS)
def test_non_array_and_bad_out(op):
    with raises(tsol.ArgumentError, op) as e:
        run(op, [1.0, 2.0])
    assert "np.asarray" in str(e.value)
    x = np.ones((3, 4), np.float32)
    with raises(tsol.ShapeError, op):
        run(op, x, out=np.empty((4, 3), np.float32))
    with raises(tsol.DTypeError, op):
        run(op, x, out=np.empty((3, 4), np.float64))


# --- VJPs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("op", OPS)
def test_vjp(op, axis, rng):
    opdef = get_op(op)
    x = rng.standard_normal((3, 4, 5))

    def fn(x):
        return run(op, x, axis=axis)

    def vjp(g, x):
        return opdef.vjp(g, x, out=fn(x), axis=axis % x.ndim)

    check_vjp(fn, [x], vjp)
