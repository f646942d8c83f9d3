"""Elementwise ops against their float64 NumPy/SciPy references: every op x dtype x shape and
view, broadcasting, NEP 50 promotion, special values, casts, in-place and out=, errors, VJPs.

Float inputs are uniform in [-3, 3] (log, sqrt, rsqrt and power bases in (0.1, 3)); integer
inputs cover each dtype's extremes, so wrap-around is checked too. Tolerances are the per-dtype
ones of tests/support.py; integer and bool results must match NumPy exactly.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

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
from tsol.errors import ArgumentError, DTypeError, ShapeError, TSOLError
from tsol.registry import get_op, kernels

# --- random broadcastable shapes (hypothesis) ---------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, max_side=5),
       seed=st.integers(0, 2**32 - 1))
def test_random_broadcast_shapes_match_numpy(shapes, seed):
    rng = np.random.default_rng(seed)
    (s1, s2, s3), result = shapes.input_shapes, shapes.result_shape
    a, b = rand(s1, np.float64, rng), rand(s2, np.float32, rng)
    cond = rng.random(s3) < 0.5
    for op, args in [("add", (a, b)), ("multiply", (a, b)), ("where", (cond, a, b))]:
        got = getattr(tsol, op)(*args)
        want = getattr(np, op)(*args)
        assert got.shape == want.shape and got.dtype == np.float64
        np.testing.assert_array_equal(got, want, err_msg=op)
    assert tsol.where(cond, a, b).shape == result


# --- tables -----------------------------------------------------------------------------------

UNARY_FLOAT = ["exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "gelu",
               "gelu_tanh", "neg", "abs", "relu"]
POSITIVE = {"log", "sqrt", "rsqrt"}
BINARY = ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum"]
COMPARE = ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]
# (shape of x1, shape of x2): equal, row and column broadcasting, scalars, size 0, and a
# non-contiguous view mixed with a broadcast.
PAIRS = [((7, 129), (7, 129)), ((33, 65, 3), (65, 1)), ((4099,), ()), ((), (5, 4)),
         ((3, 0, 5), (5,)), ((2, 3, 4, 5, 6), (3, 1, 5, 1)), ((1,), (1,))]


def unary(op: str, x, **kw):
    if op == "gelu_tanh":
        return tsol.gelu(x, approximate="tanh", **kw)
    return getattr(tsol, op)(x, **kw)


def unary_ref(op: str, x):
    if op == "gelu_tanh":
        return reference("gelu", x, approximate="tanh")
    if op == "gelu":
        return reference("gelu", x, approximate="none")
    return reference(op, x)


def int_input(shape, dt, rng) -> np.ndarray:
    """Random integers of ``dt`` spread over its whole range, extremes included."""
    info = np.iinfo(dt)
    x = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
    if x.size >= 2:
        x.flat[0], x.flat[-1] = info.min, info.max
    return x


# --- unary ops --------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", UNARY_FLOAT)
def test_unary_float_every_shape_and_view(op, dt, rng):
    for shape in SHAPES:
        x = rand(shape, dt, rng, positive=op in POSITIVE)
        for name, v in views(x):
            got = unary(op, v)
            assert got.dtype == dt and got.shape == shape, (op, name)
            assert_close(got, unary_ref(op, v), dt, what=f"{op} {shape} {name}")


@pytest.mark.parametrize("dt", INT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", ["neg", "abs", "relu"])
def test_unary_integer_wraps_like_numpy(op, dt, rng):
    for shape in [(), (7,), (33, 65, 3)]:
        x = int_input(shape, dt, rng)
        for name, v in views(x):
            got = unary(op, v)
            assert got.dtype == dt
            np.testing.assert_array_equal(got, reference(op, v), err_msg=f"{op} {name}")


SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 1e-40, 30.0, -30.0, 100.0,
                    -100.0])


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", UNARY_FLOAT)
def test_unary_special_values(op, dt):
    x = SPECIAL.astype(dt)
    got = unary(op, x).astype(np.float64)
    with np.errstate(over="ignore"):                # exp(100) overflows the small dtypes
        want = unary_ref(op, x).astype(dt).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{op} NaN pattern")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=f"{op} inf")
    assert_close(got[finite], want[finite], dt, what=op)


@pytest.mark.parametrize("dt", [dtypes.float32, dtypes.float64], ids=dtype_id)
@pytest.mark.parametrize("op", ["sin", "cos"])
def test_sin_cos_are_accurate_for_large_arguments(op, dt, rng):
    # Past the float32 kernel's Cody-Waite range (|x| > 2**20) tiles fall back to libm.
    x = np.concatenate([rng.uniform(-1e5, 1e5, 5000), rng.uniform(-1e7, 1e7, 100),
                        [1048576.0, -1048577.0, 1e30, -3.4e38]]).astype(dt)
    assert_close(unary(op, x), reference(op, x), dt, what=op)


# --- binary ops -------------------------------------------------------------------------------

def binary_inputs(op: str, s1, s2, dt, rng) -> tuple[np.ndarray, np.ndarray]:
    if dt in dtypes.FLOATS:
        return rand(s1, dt, rng, positive=op == "power"), rand(s2, dt, rng)
    if op == "power":                       # small non-negative exponents; bases wrap anyway
        return int_input(s1, dt, rng), rng.integers(0, 9, size=s2).astype(dt)
    return int_input(s1, dt, rng), int_input(s2, dt, rng)


@pytest.mark.parametrize("dt", FLOAT_DTYPES + INT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcasting_and_views(op, dt, rng):
    for s1, s2 in PAIRS:
        a, b = binary_inputs(op, s1, s2, dt, rng)
        for name, v in views(a):
            got = getattr(tsol, op)(v, b)
            want = reference(op, v, b)
            out_dt = dtypes.float64 if op == "divide" and dt.kind in "iu" else dt
            assert got.dtype == out_dt and got.shape == np.broadcast_shapes(s1, s2)
            assert_close(got, want, out_dt, what=f"{op} {s1} {s2} {name}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES + INT_DTYPES + [dtypes.bool_], ids=dtype_id)
@pytest.mark.parametrize("op", COMPARE)
def test_comparisons_match_numpy_exactly(op, dt, rng):
    fresh = int_input if dt.kind in "iu" else rand
    a, b = fresh((33, 65), dt, rng), fresh((33, 65), dt, rng)
    b[::2] = a[::2]                                          # equal on every other row
    if dt in dtypes.FLOATS:
        a[0, :3] = np.array([np.nan, 1.0, np.nan]).astype(dt)
        b[0, :3] = np.array([np.nan, np.nan, 2.0]).astype(dt)
    for x1, x2 in [(a, b), (a.T, b.T), (a, b[0]), (a[::-1], a[0, 0])]:
        got = getattr(tsol, op)(x1, x2)
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, reference(op, x1, x2), err_msg=op)


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_propagate_nan(op):
    a = np.array([1.0, np.nan, 3.0, np.nan, -np.inf], np.float32)
    b = np.array([np.nan, 2.0, 1.0, np.nan, 0.0], np.float32)
    got = getattr(tsol, op)(a, b)
    np.testing.assert_array_equal(got, getattr(np, op)(a, b))
    assert np.isnan(got[:2]).all() and np.isnan(got[3])


def test_power_special_cases_follow_c99():
    vals = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 3.0, -3.0, np.inf, -np.inf, np.nan,
                     1e-40], np.float32)
    x1, x2 = np.meshgrid(vals, vals)
    for dt in (np.float32, np.float64):
        got = tsol.power(x1.astype(dt), x2.astype(dt))
        with np.errstate(all="ignore"):
            want = np.power(x1.astype(np.float64), x2.astype(np.float64)).astype(dt)
        np.testing.assert_allclose(got, want, rtol=2e-6, equal_nan=True)
        signed = ~np.isnan(want)                     # (a NaN's sign bit means nothing)
        np.testing.assert_array_equal(np.signbit(got[signed]), np.signbit(want[signed]))


def test_power_float32_is_accurate_for_large_exponents(rng):
    x1 = rng.uniform(0.5, 2.0, 20000).astype(np.float32)
    x2 = rng.uniform(-120, 120, 20000).astype(np.float32)
    want = reference("power", x1, x2)
    ok = (want > 1e-37) & (want < 1e38)
    assert_close(tsol.power(x1, x2)[ok], want[ok], dtypes.float32, what="power")


def test_integer_divide_is_true_division():
    got = tsol.divide(np.array([1, -7, 0, 5], np.int32), np.array([2, 2, 0, 0], np.int8))
    with np.errstate(all="ignore"):
        want = np.true_divide(np.array([1, -7, 0, 5], np.int32), np.array([2, 2, 0, 0], np.int8))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


# (x1, x2, result dtype): NumPy 2 promotion with weak Python scalars, bfloat16 as float16 is.
PROMOTIONS = [
    (np.ones(3, np.int32), np.ones(3, np.float32), dtypes.float64),
    (np.ones(3, np.int8), np.ones(3, np.float16), dtypes.float16),
    (np.ones(3, np.uint8), np.ones(3, np.int8), dtypes.int16),
    (np.ones(3, np.bool_), np.ones(3, np.int32), dtypes.int32),
    (np.ones(3, np.float32), 2.5, dtypes.float32),
    (np.ones(3, np.int8), 3, dtypes.int8),
    (np.ones(3, np.int64), 2.5, dtypes.float64),
    (np.ones(3, ml_dtypes.bfloat16), np.ones(3, np.float16), dtypes.float32),
    (np.ones(3, ml_dtypes.bfloat16), 3.0, dtypes.bfloat16),
    (np.ones(3, ml_dtypes.bfloat16), np.ones(3, np.int8), dtypes.bfloat16),
]


@pytest.mark.parametrize("x1,x2,dt", PROMOTIONS,
                         ids=[f"{a.dtype}-{getattr(b, 'dtype', type(b).__name__)}"
                              for a, b, _ in PROMOTIONS])
def test_mixed_dtypes_promote_like_numpy(x1, x2, dt, rng):
    a = (x1 * rand(x1.shape, np.float64, rng, low=1, high=4)).astype(x1.dtype)
    for op in ["add", "multiply", "maximum", "less"]:
        got = getattr(tsol, op)(a, x2)
        assert got.dtype == (np.bool_ if op == "less" else dt), op
        assert_close(got, reference(op, a, x2), got.dtype, what=op)


def test_bool_arithmetic_is_logical_like_numpy():
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    for op in ["add", "multiply", "maximum", "minimum"]:
        np.testing.assert_array_equal(getattr(tsol, op)(a, b), getattr(np, op)(a, b))
    got = tsol.power(a, b)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, np.power(a, b))


def test_uint64_keeps_its_full_range():
    a = np.array([2**64 - 1, 2**63, 5], np.uint64)
    b = np.array([1, 2**63 + 1, 7], np.uint64)
    np.testing.assert_array_equal(tsol.maximum(a, b), np.maximum(a, b))
    np.testing.assert_array_equal(tsol.less(a, b), np.less(a, b))
    np.testing.assert_array_equal(tsol.add(a, b), np.add(a, b))
    np.testing.assert_array_equal(tsol.astype(a, np.float64), a.astype(np.float64))


# --- where, clip -------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", FLOAT_DTYPES + [dtypes.int32, dtypes.bool_], ids=dtype_id)
def test_where_broadcasts_and_selects(dt, rng):
    x = rand((4, 1, 7), dt, rng)
    y = rand((5, 7), dt, rng)
    for cond in [rng.random((4, 5, 1)) < 0.5, rng.integers(-2, 3, (5, 7)).astype(np.int8),
                 np.array([0.0, 0.5, -0.0, np.nan, 1e-300, 2.0, 0.0])]:
        got = tsol.where(cond, x, y)
        assert got.dtype == dt
        np.testing.assert_array_equal(got, np.where(cond, x, y))
    np.testing.assert_array_equal(tsol.where(x > x.dtype.type(0), x, 0), np.where(x > 0, x, 0))


@pytest.mark.parametrize("dt", FLOAT_DTYPES + [dtypes.int8, dtypes.int64], ids=dtype_id)
def test_clip_bounds_arrays_scalars_and_none(dt, rng):
    a = rand((33, 65), dt, rng) if dt in dtypes.FLOATS else int_input((33, 65), dt, rng)
    lo = rand((65,), dt, rng, low=-2, high=-1)
    hi = rand((33, 1), dt, rng, low=1, high=2)
    for a_min, a_max in [(lo, hi), (-1, 1), (None, hi), (lo, None), (2, -2)]:
        got = tsol.clip(a, a_min, a_max)
        assert got.dtype == dt
        assert_close(got, reference("clip", a, a_min, a_max), dt, what=f"{a_min} {a_max}")
    x = np.array([np.nan, -5.0, 5.0], np.float32)
    np.testing.assert_array_equal(tsol.clip(x, np.float32(np.nan), 1.0), [np.nan] * 3)
    np.testing.assert_array_equal(tsol.clip(x, -1.0, 1.0), [np.nan, -1.0, 1.0])


# --- astype -----------------------------------------------------------------------------------

CAST_DTYPES = FLOAT_DTYPES + INT_DTYPES + [dtypes.bool_]


def round_to_bfloat16(v: np.ndarray) -> np.ndarray:
    """float64 values rounded to bfloat16's 8 significant bits, to nearest even, exactly (ml_dtypes
    goes through float32 and can round twice)."""
    m, e = np.frexp(v.astype(np.float64))
    return np.ldexp(np.rint(m * 256.0), e - 8)


@pytest.mark.parametrize("src", CAST_DTYPES, ids=dtype_id)
def test_astype_every_pair(src, rng):
    x = rand((33, 65), src, rng, low=-100, high=100) if src.kind != "u" else \
        rng.integers(0, 256, (33, 65)).astype(src)
    if src in dtypes.FLOATS:
        x[0, :4] = np.array([0.5, -0.5, 1.5, -2.5]).astype(src)
    for dst in CAST_DTYPES:
        for name, v in views(np.abs(x) if dst.kind == "u" else x):  # float -> uint: in range
            got = tsol.astype(v, dst)
            assert got.dtype == dst
            if dst in dtypes.FLOATS:
                want = round_to_bfloat16(v) if dst == dtypes.bfloat16 else \
                    v.astype(np.float64).astype(dst).astype(np.float64)
                np.testing.assert_array_equal(got.astype(np.float64), want,
                                              err_msg=f"{src}->{dst} {name}")
            else:
                np.testing.assert_array_equal(got, reference("astype", v, dtype=dst),
                                              err_msg=f"{src}->{dst} {name}")


def test_astype_rounds_float64_to_half_once():
    # Just above a tie: float64 -> float32 -> half would land on the tie and round to even.
    x = np.array([1 + 2.0**-8 + 2.0**-40, 1 + 2.0**-11 + 2.0**-40, -(1 + 3 * 2.0**-8)])
    bf = tsol.astype(x, tsol.bfloat16).astype(np.float64)
    np.testing.assert_array_equal(bf[:1], [1 + 2.0**-7])
    h = tsol.astype(x, tsol.float16)
    np.testing.assert_array_equal(h, x.astype(np.float16))
    assert h[1] == np.float16(1 + 2.0**-10)
    big = tsol.astype(np.array([70000.0, -1e6, np.nan, 3.4e38]), np.float16)
    np.testing.assert_array_equal(np.isinf(big), [True, True, False, True])
    assert np.isnan(big[2])


def test_astype_float_to_int_truncates_and_to_bool_tests_nonzero():
    x = np.array([2.9, -2.9, 0.5, -0.5, 127.0, 0.0, -0.0, np.nan], np.float32)
    np.testing.assert_array_equal(tsol.astype(x[:6], np.int32), x[:6].astype(np.int32))
    np.testing.assert_array_equal(tsol.astype(x[:5], np.int8), x[:5].astype(np.int8))
    np.testing.assert_array_equal(tsol.astype(x[:4], np.uint8), x[:4].astype(np.uint8))
    np.testing.assert_array_equal(tsol.astype(x, np.bool_), x.astype(np.bool_))
    assert tsol.astype(np.array([300, -129], np.int64), "int8").tolist() == [44, 127]


def test_astype_accepts_dtype_names():
    x = np.arange(4, dtype=np.float32)
    assert tsol.astype(x, "bf16").dtype == dtypes.bfloat16
    assert tsol.astype(x, "float64").dtype == np.float64
    assert tsol.astype(x, np.int16).dtype == np.int16


# --- layouts, out=, in place ------------------------------------------------------------------

def test_layouts_that_do_not_coalesce_and_negative_strides(rng):
    base = rand((6, 5, 4, 3, 7), np.float32, rng)
    x = base.transpose(4, 0, 3, 1, 2)[::-1, :, ::-2]        # 5 dims, none mergeable
    y = rand((7, 1, 2, 5, 1), np.float32, rng)
    got = tsol.multiply(x, y)
    np.testing.assert_array_equal(got, x * y)
    big = rand((3, 9000), np.float64, rng)                   # several tiles per row
    np.testing.assert_array_equal(tsol.subtract(big.T, big[0][:, None]), big.T - big[0][:, None])
    assert_close(tsol.exp(big[:, ::-3]), reference("exp", big[:, ::-3]), dtypes.float64)


def test_out_is_filled_and_returned(rng):
    x = rand((7, 129), np.float32, rng)
    out = np.full((7, 129), np.nan, np.float32)
    assert tsol.tanh(x, out=out) is out
    assert_close(out, reference("tanh", x), dtypes.float32, what="tanh out=")
    out_t = np.full((129, 7), np.nan, np.float32).T             # a non-contiguous out
    assert tsol.add(x, 1.0, out=out_t) is out_t
    np.testing.assert_array_equal(out_t, x + np.float32(1))
    bools = np.ones((7, 129), np.bool_)
    assert tsol.less(x, 0.0, out=bools) is bools
    np.testing.assert_array_equal(bools, x < 0)


@pytest.mark.parametrize("dt", [dtypes.float32, dtypes.bfloat16, dtypes.int32], ids=dtype_id)
def test_in_place(dt, rng):
    x = rand((33, 129), dt, rng)
    want_neg, want_sum = -x, x + x
    y = x.copy()
    assert tsol.neg(y, out=y) is y
    np.testing.assert_array_equal(y, want_neg)
    y = x.copy()
    assert tsol.add(y, y, out=y) is y
    np.testing.assert_array_equal(y, want_sum)
    if dt in dtypes.FLOATS:
        y = x.astype(np.float32)
        want = np.sin(y.astype(np.float64))
        y[0, 0] = 3e6                                # forces the libm fallback on one tile
        want[0, 0] = math.sin(3e6)
        tsol.sin(y, out=y)
        assert_close(y, want, dtypes.float32, what="sin in place")


# --- errors -----------------------------------------------------------------------------------

def raises(cls, op: str, fn, *args, **kw):
    with pytest.raises(cls) as info:
        fn(*args, **kw)
    assert isinstance(info.value, TSOLError) and f"tsol.{op}" in str(info.value)
    return info.value


@pytest.mark.parametrize("op", ["exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid",
                                "silu", "gelu"])
def test_float_ops_reject_integers_and_bool(op):
    for x in [np.arange(3, dtype=np.int32), np.ones(3, np.bool_), 3]:
        err = raises(DTypeError, op, getattr(tsol, op), x)
        assert "astype" in str(err)


def test_errors_name_the_op_and_the_fix():
    a, b = np.ones((3, 4), np.float32), np.ones((5,), np.float32)
    raises(ShapeError, "add", tsol.add, a, b)
    raises(ShapeError, "where", tsol.where, a > 0, a, b)
    raises(ArgumentError, "multiply", tsol.multiply, [1.0, 2.0], a)
    raises(ArgumentError, "neg", tsol.neg, "x")
    raises(DTypeError, "neg", tsol.neg, np.ones(3, np.bool_))
    raises(DTypeError, "subtract", tsol.subtract, a > 0, a > 1)
    raises(DTypeError, "add", tsol.add, np.ones(3, np.complex64), 1.0)
    raises(ArgumentError, "gelu", tsol.gelu, a, approximate="erf")
    raises(ArgumentError, "clip", tsol.clip, a)
    raises(DTypeError, "astype", tsol.astype, a, "float128")
    raises(DTypeError, "astype", tsol.astype, a, "no-such-type")
    raises(ArgumentError, "power", tsol.power, np.arange(3), np.array([1, -1, 2]))
    raises(ShapeError, "exp", tsol.exp, a, out=np.empty((4, 3), np.float32))
    raises(DTypeError, "exp", tsol.exp, a, out=np.empty((3, 4), np.float64))
    raises(DTypeError, "less", tsol.less, a, 1.0, out=np.empty((3, 4), np.float32))


def test_every_op_has_a_cpu_kernel():
    for name in tsol.ops.elementwise.__all__:
        assert kernels(name, "cpu"), name


# --- VJPs -------------------------------------------------------------------------------------

VJP_CASES = [
    ("neg", {}, 1), ("abs", {}, 1), ("exp", {}, 1), ("log", {}, 1), ("sqrt", {}, 1),
    ("rsqrt", {}, 1), ("sin", {}, 1), ("cos", {}, 1), ("tanh", {}, 1), ("sigmoid", {}, 1),
    ("relu", {}, 1), ("silu", {}, 1), ("gelu", {"approximate": "none"}, 1),
    ("gelu", {"approximate": "tanh"}, 1), ("add", {}, 2), ("subtract", {}, 2),
    ("multiply", {}, 2), ("divide", {}, 2), ("power", {}, 2), ("maximum", {}, 2),
    ("minimum", {}, 2), ("clip", {}, 3), ("astype", {"dtype": dtypes.float64}, 1),
]


BROADCAST_SHAPES = {1: [((3, 4),)], 2: [((3, 4), (3, 4)), ((3, 1), (4,)), ((), (2, 3))],
                    3: [((3, 4), (3, 4), (3, 4)), ((3, 4), (1, 4), (3, 1))]}
"""Primal shapes per arity: equal, and broadcast ones whose cotangents must be summed back."""


@pytest.mark.parametrize("op,attrs,nin,shapes", [
    (op, attrs, nin, shapes) for op, attrs, nin in VJP_CASES for shapes in BROADCAST_SHAPES[nin]],
    ids=[f"{op}-{'-'.join(map(str, a.values()))}-{'_'.join(map(str, s))}"
         for op, a, n in VJP_CASES for s in BROADCAST_SHAPES[n]])
def test_vjp(op, attrs, nin, shapes, rng):
    opdef = get_op(op)
    positive = op in ("log", "sqrt", "rsqrt", "power")
    primals = [rng.uniform(0.2, 2.0, s) if positive else rng.uniform(-2, 2, s) for s in shapes]
    if op == "clip":                     # bounds mostly ordered, some crossing (lo > hi)
        primals[1], primals[2] = primals[1] - 1.0, primals[2] + 0.5
    if op in ("abs", "relu"):
        primals[0][np.abs(primals[0]) < 0.05] = 0.3           # keep off the kink

    def fn(*p):
        return getattr(tsol, op)(*p, **attrs)

    def vjp(g, *p):
        return opdef.vjp(g, *p, out=fn(*p), **attrs)

    check_vjp(fn, primals, vjp)


def test_where_vjp_and_broadcast_cotangents(rng):
    if not hasattr(tsol, "sum"):
        pytest.skip("needs the reduction family (tsol.sum) for broadcast cotangents")
    cond = rng.random((3, 4)) < 0.5
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((4,))

    def fn(x, y):
        return tsol.where(cond, x, y)

    def vjp(g, x, y):
        return get_op("where").vjp(g, cond, x, y, out=fn(x, y))[1:]

    check_vjp(fn, [x, y], vjp)
    a, b = rng.standard_normal((3, 1)), rng.standard_normal((4,))
    check_vjp(tsol.multiply, [a, b],
              lambda g, a, b: get_op("multiply").vjp(g, a, b, out=tsol.multiply(a, b)))


def test_non_float_and_scalar_primals_get_no_cotangent():
    g = np.ones(3)
    grads = get_op("add").vjp(g, np.arange(3), 2.0, out=g)
    assert grads == (None, None)
    assert get_op("astype").vjp(g, np.ones(3), out=g, dtype=dtypes.int32) == (None,)
    assert get_op("less").vjp == "non-differentiable"
