"""CUDA reduction kernels against the float64 reference: every op over rows, columns and whole
arrays, float and integer dtypes, lines split over several blocks, multi-warp groups and column
trees, views, NaN and ties, special values, ddof, out= and repeatability."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    assert_equal,
    check,
    on_cuda,
    run,
    size,
    to_device,
    to_host,
)
from tests.ops.test_reduction import EXACT, OPS, inputs, result_dtype, tolerance
from tests.support import rand, reference, views
from tsol import dtypes
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def check_red(op, x, axis=None, keepdims=False, **attrs):
    attrs = dict(attrs, axis=axis, keepdims=keepdims)
    if op in EXACT:
        got = run(op, [x], attrs)
        if not COMPILE_ONLY:
            want = reference(op, x, **attrs)
            assert got.dtype == result_dtype(op, x.dtype) and got.shape == np.shape(want)
            np.testing.assert_array_equal(got.astype(np.float64), np.asarray(want, np.float64),
                                          err_msg=f"{op} {x.dtype} {x.shape} {attrs}")
        return
    got = check(op, [x], attrs, result_dtype(op, x.dtype), **tolerance(op, x, axis))
    if not COMPILE_ONLY:
        assert got.dtype == result_dtype(op, x.dtype)


@pytest.mark.parametrize("axis", [-1, 0, None], ids=["rows", "cols", "all"])
@pytest.mark.parametrize("op", OPS)
def test_layouts_float32(op, axis, rng):
    check_red(op, inputs(op, (5, size(37, 4099)), np.float32, rng), axis)


FLOAT_CASES = [(op, dt) for dt in (dtypes.float64, dtypes.float16, dtypes.bfloat16)
               for op in OPS]


@pytest.mark.parametrize("op,dt", FLOAT_CASES, ids=[f"{o}-{d}" for o, d in FLOAT_CASES])
def test_float_dtypes(op, dt, rng):
    axis = 0 if op in ("sum", "argmin", "var", "logsumexp") else -1
    check_red(op, inputs(op, (size(13, 1031), 3), dt, rng), axis)


INT_CASES = [(dtypes.int8, op) for op in ("sum", "prod", "max", "argmin", "mean")] + \
            [(dtypes.int32, op) for op in ("mean", "prod", "min")] + \
            [(dtypes.int64, op) for op in ("sum", "mean", "var", "max", "argmax")] + \
            [(dtypes.uint64, op) for op in ("sum", "max", "min", "argmax", "mean")] + \
            [(dtypes.uint8, op) for op in ("sum", "min", "std")] + \
            [(dtypes.bool_, op) for op in ("sum", "max", "mean", "argmax")]


@pytest.mark.parametrize("dt,op", INT_CASES, ids=[f"{o}-{d}" for d, o in INT_CASES])
def test_integer_dtypes(dt, op, rng):
    x = rand((3, size(23, 1031)), dt, rng, low=-100, high=100)
    if dt == dtypes.uint64:            # values past int64 range: unsigned order and wrapping
        x = x + np.uint64(2**63 - 50)
    check_red(op, x, -1)
    check_red(op, x, 0)


SPLIT_CASES = [(op, axis) for op in ("sum", "argmax", "argmin", "var", "logsumexp", "max")
               for axis in (-1, 0)] + [("sum", None), ("argmax", None), ("std", None)]


@pytest.mark.parametrize("op,axis", SPLIT_CASES, ids=[f"{o}-ax{a}" for o, a in SPLIT_CASES])
def test_split_lines(op, axis, forced, rng):
    """Lines split into segments over several blocks, partial states merged by a second kernel."""
    forced(Config(block=32, work=2, split=3))
    x = inputs(op, (size(37, 5000), 3) if axis == 0 else (3, size(37, 5000)), np.float32, rng)
    check_red(op, x, axis)


@pytest.mark.parametrize("op", ["sum", "argmax", "var", "logsumexp", "min"])
@pytest.mark.parametrize("axis", [-1, 0], ids=["rows", "cols"])
def test_multi_warp_groups_and_column_trees(op, axis, forced, rng):
    """Rows over two warps (a shared-memory step after the shuffles); 16 row lanes a column."""
    forced(Config(block=128, work=1, split=0))
    x = inputs(op, (3, size(37, 3000)) if axis == -1 else (size(37, 3000), 5), np.float32, rng)
    check_red(op, x, axis)


@pytest.mark.parametrize("op", ["sum", "argmax", "std"])
@pytest.mark.parametrize("shape,axis", [((6, 9), 0), ((6, 9), None), ((3, 4, 5), 1),
                                        ((3, 4, 5), (0, 2))], ids=["cols", "all", "mid", "outer"])
def test_views(op, shape, axis, rng):
    """Fortran-order, strided, reversed and permuted inputs reduce like copies."""
    if op == "argmax" and isinstance(axis, tuple):
        axis = 2
    x = inputs(op, shape, np.float32, rng)
    cases = list(views(x))
    if x.ndim == 3:                   # memory order (2, 0, 1): kept axes come out of order
        cases.append(("permuted", np.ascontiguousarray(x.transpose(1, 2, 0)).transpose(2, 0, 1)))
    for _, v in cases:
        check_red(op, v, axis)


@pytest.mark.parametrize("axis", [-1, 0, None], ids=["rows", "cols", "all"])
def test_nan_and_ties(axis, rng):
    """Ties go to the first index; NaN propagates and the first NaN wins argmax/argmin."""
    x = np.round(rand((size(9, 300), 7), np.float64, rng)).astype(np.float32)
    for op in ("argmax", "argmin", "max", "min"):
        check_red(op, x, axis)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, size=3, replace=False)] = np.nan
    for op in ("argmax", "argmin", "max", "min", "sum", "logsumexp"):
        check_red(op, x, axis)


def test_special_values():
    inf = np.inf
    x = np.array([[-inf, -inf, -inf], [inf, 1.0, 2.0], [-inf, 0.0, 1.0], [inf, np.nan, 0.0]],
                 np.float32)
    check_red("logsumexp", x, -1)
    check_red("logsumexp", x.T.copy(), 0)
    assert_equal(run("sum", [np.zeros((2, 0), np.float32)], {"axis": 1}), [0.0, 0.0])
    assert_equal(run("prod", [np.zeros((2, 0), np.int32)], {"axis": 1}), [1, 1])
    assert_equal(run("logsumexp", [np.zeros((0, 3), dtypes.bfloat16)], {"axis": 0}),
                 np.full(3, -inf, dtypes.bfloat16))
    if not COMPILE_ONLY:
        assert np.isnan(run("mean", [np.zeros(0, np.float16)]))
        assert np.isnan(run("var", [np.zeros((0, 2))], {"axis": 0})).all()
    assert_equal(run("sum", [np.array([200, 100], np.uint8)]), 300)
    assert_equal(run("sum", [np.full(3, 2**62, np.int64)]), np.sum(np.full(3, 2**62, np.int64)))
    assert_equal(run("mean", [np.array([2**62, 2**62], np.int64)]), 2.0**62)
    assert_equal(run("max", [np.array([[False, True], [False, False]])], {"axis": 1}),
                 [True, False])
    assert_equal(run("sum", [np.float32(2.5)]), np.float32(2.5))         # 0-d input


@pytest.mark.parametrize("ddof", [1, 3, 1.5])
def test_ddof(ddof, rng):
    """n - ddof <= 0 divides by zero: inf, or NaN when every deviation is 0 (like NumPy)."""
    for x in (rand((2, 3), np.float64, rng), np.ones((2, 1), np.float32)):
        for op in ("var", "std"):
            check(op, [x], {"axis": 1, "ddof": ddof}, x.dtype, scale=9.0)


def test_out_keepdims_and_repeatability(rng):
    x = rand((7, size(33, 4099)), np.float32, rng)
    with on_cuda():
        out = to_device(np.full((7, 1), np.nan, np.float32))
        assert tsol.sum(to_device(x), axis=1, keepdims=True, out=out) is out
        first = to_host(tsol.sum(to_device(x)))
        again = to_host(tsol.sum(to_device(x)))
    if not COMPILE_ONLY:
        want = reference("sum", x, axis=1, keepdims=True)
        np.testing.assert_allclose(to_host(out), want, rtol=1e-5, atol=1e-4)
        assert first.tobytes() == again.tobytes()
