"""CUDA elementwise kernels against the float64 reference: every op, float and integer dtypes,
broadcasting, non-contiguous views, scalars and out=."""

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
from tests.support import FLOAT_DTYPES, dtype_id, rand, reference

pytestmark = CUDA_TESTS

UNARY = ["exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "silu", "neg", "abs",
         "relu"]
BINARY = ["add", "subtract", "multiply", "divide", "maximum", "minimum", "power"]
COMPARE = ["equal", "less", "greater_equal"]
POSITIVE = {"log", "sqrt", "rsqrt", "power"}


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", UNARY)
def test_unary(op, dt, rng):
    x = rand((3, size(37, 4099)), dt, rng, positive=op in POSITIVE)
    check(op, [x], dt=dt)


@pytest.mark.parametrize("dt", [np.float32, np.float64, "bfloat16"], ids=dtype_id)
@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcast(op, dt, rng):
    a = rand((5, size(19, 1031)), dt, rng, positive=op in POSITIVE)
    b = rand((size(19, 1031),), dt, rng, positive=True)
    check(op, [a, b], dt=dt)
    check(op, [a[:, ::2].T, b[::2, None]] if op != "power" else [a, 2.0], dt=dt)


@pytest.mark.parametrize("dt", [np.int8, np.int32, np.int64, np.uint8], ids=dtype_id)
@pytest.mark.parametrize("op", ["add", "subtract", "multiply", "maximum", "neg", "abs"])
def test_integers_wrap_like_numpy(op, dt, rng):
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, size=(4, 9), endpoint=True).astype(dt)
    b = rng.integers(info.min, info.max, size=(9,), endpoint=True).astype(dt)
    args = [a] if op in ("neg", "abs") else [a, b]
    if op == "neg" and info.min == 0:
        pytest.skip("NumPy negates unsigned integers by wrapping; covered by subtract")
    with np.errstate(over="ignore"):
        want = getattr(np, {"neg": "negative"}.get(op, op))(*args)
    assert_equal(run(op, args), want)


@pytest.mark.parametrize("op", COMPARE)
def test_comparisons(op, rng):
    a, b = rand((6, 7), np.float32, rng), rand((7,), np.float64, rng)
    b[2] = a[0, 2]
    assert_equal(run(op, [a, b]), reference(op, a, b))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate, rng):
    check("gelu", [rand((4, 33), np.float32, rng)], {"approximate": approximate}, np.float32)


def test_where_clip_astype_and_scalars(rng):
    x = rand((5, 6), np.float32, rng)
    cond = rand((5, 6), np.float64, rng)
    assert_equal(run("where", [cond, x, 2.0]), np.where(cond != 0, x, 2.0))
    check("clip", [x, -1.0, 1.5], dt=np.float32)
    check("clip", [x, None, rand((6,), np.float32, rng)], dt=np.float32)
    assert_equal(run("astype", [x], {"dtype": np.int32}), x.astype(np.int32))
    assert_equal(run("astype", [x], {"dtype": np.float16}), x.astype(np.float16))
    check("add", [x, 3], dt=np.float32)


def test_many_dims_and_out(rng):
    a = rand((2, 3, 4, 5, 6), np.float64, rng)
    b = rand((2, 1, 4, 1, 6), np.float64, rng)             # > 4 dims after merging
    check("multiply", [a, b], dt=np.float64)
    x = rand((3, 4), np.float64, rng)
    with on_cuda():
        out = to_device(np.full((4, 3), np.nan)).T
        assert tsol.exp(to_device(x), out=out) is out
    if not COMPILE_ONLY:
        np.testing.assert_allclose(to_host(out), np.exp(x), rtol=1e-12)


@pytest.mark.parametrize("op", ["exp", "add"])
def test_unrolled_main_loop_and_tail(op, rng):
    # 4101 elements: 5 blocks of 256 threads; the first 261 threads take a 4-element trip,
    # the rest finish element by element.
    x = rand((4101,), np.float32, rng)
    check(op, [x] if op == "exp" else [x, x[::-1].copy()], dt=np.float32)
