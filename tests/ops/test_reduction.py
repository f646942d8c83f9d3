"""Reductions against their float64 NumPy/SciPy references, layouts, errors, determinism, VJPs.

Tolerance scales (``scale=`` multiplies atol, ``rtol_mult=`` both) are set per op below:
sums of ``n`` terms cancel, so their absolute error follows the partial sums' size, about
``sqrt(n) * max|x|``; a mean divides that by ``n``; var and std are measured in ``max|x|**2``
and ``max|x|``; a product of ``n`` factors takes one rounding per factor, so its relative error
grows like ``sqrt(n)`` roundings. max, min, argmax and argmin are exact.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import pytest

import tsol
from tests.support import assert_close, check_vjp, dtype_id, rand, reference, views
from tsol import dtypes
from tsol.errors import ArgumentError, AxisError, DTypeError, ShapeError, TSOLError
from tsol.ops.base import meta_of
from tsol.registry import get_op, kernels

DTYPES = [dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16, dtypes.int32,
          dtypes.int64, dtypes.uint8, dtypes.bool_]
OPS = ["sum", "mean", "max", "min", "prod", "var", "std", "argmax", "argmin", "logsumexp"]
EXACT = {"max", "min", "argmax", "argmin"}
NEEDS_ELEMENTS = {"max", "min", "argmax", "argmin"}       # no identity: empty raises

# (shape, axis, keepdims): 0-d, size-0 and size-1 dims, odd sizes around the 4096-element
# blocks and the 128-row column blocks, rows (trailing axes), columns (leading or middle axes),
# non-adjacent axes (a copy), and one input big enough to run on several threads.
CASES = [
    ((), None, False), ((), 0, True), ((1,), None, True), ((0,), None, False),
    ((7,), 0, False), ((129,), -1, True), ((4099,), None, False), ((1, 1), (0, 1), False),
    ((3, 0, 5), 1, False), ((3, 0, 5), (0, 2), True), ((0, 4), 1, False),
    ((7, 129), 0, False), ((7, 129), -1, True), ((7, 129), None, False),
    ((33, 65, 3), 1, True), ((33, 65, 3), (0, 2), False), ((33, 65, 3), (1, 2), False),
    ((2, 3, 4, 5, 6), (1, 3), False), ((2, 3, 4, 5, 6), (0, 1), True),
    ((300, 5), 0, False), ((2, 9000), -1, False), ((3, 70001), None, False),
]


def case_id(case: tuple) -> str:
    shape, axis, keepdims = case
    return f"{shape}-ax{axis}" + ("-keep" if keepdims else "")


def allowed(op: str, dt: np.dtype) -> bool:
    return op != "logsumexp" or dt in dtypes.FLOATS


def axes_of(shape: tuple[int, ...], axis) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(len(shape)))
    items = axis if isinstance(axis, tuple) else (axis,)
    return tuple(a % len(shape) for a in items) if shape else ()


def inputs(op: str, shape: tuple[int, ...], dt: Any, rng: np.random.Generator) -> np.ndarray:
    if op == "prod" and np.dtype(dt) in dtypes.FLOATS:
        return rand(shape, dt, rng, low=0.9, high=1.1)     # a product of 70000 stays finite
    if op == "logsumexp":
        return rand(shape, dt, rng, low=-30.0, high=30.0)
    return rand(shape, dt, rng)


def result_dtype(op: str, dt: Any) -> np.dtype:
    dt = np.dtype(dt)
    if op in ("argmax", "argmin"):
        return dtypes.int64
    if op in ("sum", "prod") and dt.kind in "biu":
        return dtypes.uint64 if dt.kind == "u" else dtypes.int64
    if op in ("mean", "var", "std") and dt.kind in "biu":
        return dtypes.float64
    return dt


def tolerance(op: str, x: np.ndarray, axis) -> dict:
    n = max(1, math.prod(x.shape[a] for a in axes_of(x.shape, axis)))
    big = float(np.nanmax(np.abs(x.astype(np.float64)))) if x.size else 1.0
    big = big if np.isfinite(big) else 1.0              # inf or all-NaN inputs
    if op == "sum":
        return {"scale": math.sqrt(n) * big}
    if op == "mean":
        return {"scale": big / math.sqrt(n)}
    if op == "var":
        return {"scale": big * big}
    if op == "std":
        return {"scale": big}
    if op == "prod":
        return {"rtol_mult": math.sqrt(n)}
    return {}


def check(op: str, x: np.ndarray, axis, keepdims: bool, what: str) -> None:
    if op in ("argmax", "argmin") and isinstance(axis, tuple):    # they take one axis
        axis = axis[0] if len(axis) == 1 else None
    fn = getattr(tsol, op)
    if op in NEEDS_ELEMENTS and math.prod(x.shape[a] for a in axes_of(x.shape, axis)) == 0:
        with pytest.raises(ShapeError, match=f"tsol.{op}: zero-size"):
            fn(x, axis=axis, keepdims=keepdims)
        return
    got = fn(x, axis=axis, keepdims=keepdims)
    want = reference(op, x, axis=axis, keepdims=keepdims)
    assert got.dtype == result_dtype(op, x.dtype), what
    if op in EXACT:
        assert got.shape == np.shape(want), what
        np.testing.assert_array_equal(got.astype(np.float64), np.asarray(want, np.float64),
                                      err_msg=what)
    else:
        assert_close(got, want, got.dtype, what=what, **tolerance(op, x, axis))


OP_DTYPES = [(op, dt) for op in OPS for dt in DTYPES if allowed(op, dt)]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("op,dt", OP_DTYPES, ids=[f"{op}-{dt}" for op, dt in OP_DTYPES])
def test_against_reference(op, dt, case, rng):
    shape, axis, keepdims = case
    check(op, inputs(op, shape, dt, rng), axis, keepdims, f"{op} {dt} {case}")


LAYOUT_CASES = [((7, 129), 0), ((7, 129), 1), ((7, 129), None), ((33, 65, 3), (0, 2)),
                ((33, 65, 3), 1), ((5, 300), -1)]


@pytest.mark.parametrize("shape,axis", LAYOUT_CASES, ids=[f"{s}-ax{a}" for s, a in LAYOUT_CASES])
@pytest.mark.parametrize("op,dt", [(op, dt) for op, dt in OP_DTYPES if dt in (
    dtypes.float32, dtypes.int32, dtypes.bfloat16)], ids=lambda v: str(v))
def test_views(op, dt, shape, axis, rng):
    """Transposed (Fortran-order), strided, reversed and permuted views reduce like copies."""
    x = inputs(op, shape, dt, rng)
    cases = list(views(x))
    if x.ndim == 3:      # memory order (2, 0, 1): kept axes come out of order
        cases.append(("permuted", np.ascontiguousarray(x.transpose(1, 2, 0)).transpose(2, 0, 1)))
    for name, v in cases:
        check(op, v, axis, False, f"{op} {dt} {name} {shape} axis={axis}")


@pytest.mark.parametrize("dt", [dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16],
                         ids=dtype_id)
@pytest.mark.parametrize("shape,axis", [((4099,), None), ((3, 129), 1), ((129, 40), 0)],
                         ids=["row", "rows", "cols"])
def test_nan_and_ties(dt, shape, axis, rng):
    """NaN propagates through max/min and the first NaN wins argmax/argmin; ties go first."""
    x = np.round(rand(shape, np.float64, rng)).astype(dt)       # few distinct values: ties
    for op in ("argmax", "argmin", "max", "min"):
        check(op, x, axis, False, f"{op} ties {dt}")
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, size=3, replace=False)] = np.nan
    for op in ("argmax", "argmin", "max", "min", "sum", "logsumexp"):
        check(op, x, axis, False, f"{op} NaN {dt}")


def test_special_values():
    inf = np.inf
    assert tsol.logsumexp(np.array([-inf, -inf])) == -inf
    assert tsol.logsumexp(np.array([inf, 1.0], np.float32)) == inf
    assert tsol.logsumexp(np.zeros((0, 3)), axis=0).tolist() == [-inf] * 3
    assert float(tsol.logsumexp(np.array([1000.0, 1000.0]))) == pytest.approx(1000 + np.log(2))
    assert tsol.sum(np.zeros((2, 0)), axis=1).tolist() == [0.0, 0.0]
    assert tsol.prod(np.zeros((2, 0), np.int32), axis=1).tolist() == [1, 1]
    assert np.isnan(tsol.mean(np.zeros(0, np.float16))) and np.isnan(tsol.var(np.zeros(0)))
    assert tsol.sum(np.array([200, 100], np.uint8)) == 300          # widened like NumPy
    assert tsol.sum(np.full(3, 2**62, np.int64)) == np.sum(np.full(3, 2**62, np.int64))  # wraps
    assert tsol.mean(np.array([2**62, 2**62], np.int64)) == 2.0**62


@pytest.mark.parametrize("ddof", [0, 1, 2, 3, 1.5])
def test_ddof(ddof, rng):
    """n - ddof <= 0 divides by zero: inf, or NaN when every deviation is 0 (like NumPy)."""
    for x in (rand((2, 3), np.float64, rng), np.ones((2, 1)), rand((2, 3), np.float32, rng)):
        for op in ("var", "std"):
            got = getattr(tsol, op)(x, axis=1, ddof=ddof)
            want = reference(op, x, axis=1, ddof=ddof, keepdims=False)
            assert_close(got, want, x.dtype, scale=9.0, what=f"{op} ddof={ddof}")


def test_out(rng):
    """A NaN-filled out= is overwritten; the returned array is out."""
    x = rand((7, 129), np.float32, rng)
    for op in OPS:
        dt = result_dtype(op, x.dtype)
        out = np.full(7, np.nan) if dt.kind == "f" else np.zeros(7, dt)
        out = out.astype(dt)
        got = getattr(tsol, op)(x, axis=1, out=out)
        assert got is out
        want = reference(op, x, axis=1, keepdims=False)
        assert_close(out, want, dt, what=op, **tolerance(op, x, 1))


def test_errors():
    x = np.zeros((3, 4), np.float32)
    for op in OPS:
        fn = getattr(tsol, op)
        with pytest.raises(AxisError, match=f"tsol.{op}: axis"):
            fn(x, axis=2)
        with pytest.raises(ArgumentError, match=f"tsol.{op}"):
            fn([[1.0, 2.0]])
        with pytest.raises(DTypeError, match=f"tsol.{op}"):
            fn(np.zeros(3, np.complex64))
        with pytest.raises(ShapeError, match=f"tsol.{op}"):
            fn(x, axis=0, out=np.zeros(5, result_dtype(op, x.dtype)))
        with pytest.raises(DTypeError, match=f"tsol.{op}"):
            fn(x, axis=0, out=np.zeros(4, np.float16))
        with pytest.raises(ArgumentError, match=f"tsol.{op}: keepdims"):
            fn(x, keepdims="yes")
    for op in ("sum", "mean", "max", "min", "prod", "var", "std", "logsumexp"):
        with pytest.raises(AxisError, match=f"tsol.{op}: axis .* repeats"):
            getattr(tsol, op)(x, axis=(1, -1))
    for op in ("max", "min", "argmax", "argmin"):
        with pytest.raises(ShapeError, match=f"tsol.{op}: zero-size array .* no identity"):
            getattr(tsol, op)(np.zeros((0, 3)), axis=0)
    with pytest.raises(AxisError, match="tsol.argmax: axis must be an int"):
        tsol.argmax(x, axis=(0, 1))
    with pytest.raises(DTypeError, match="tsol.logsumexp: dtype int32"):
        tsol.logsumexp(np.zeros(3, np.int32))
    with pytest.raises(ArgumentError, match="tsol.var: ddof"):
        tsol.var(x, ddof="1")
    with pytest.raises(AxisError, match="tsol.sum: axis 0 is out of range for 0-d"):
        tsol.sum(np.float32(1.0), axis=(0, 1))
    assert all(issubclass(e, TSOLError) for e in (AxisError, ShapeError, DTypeError))


@pytest.mark.parametrize("op", ["sum", "mean", "var", "std", "prod", "logsumexp", "max",
                                "argmax"])
def test_deterministic_across_threads(op, rng):
    """Fixed blocks and trees: 1 and 2 threads (and a rerun) give bitwise-equal results."""
    saved = numba.get_num_threads()
    low, high = (0.99, 1.01) if op == "prod" else (-3.0, 3.0)
    cases = [(rand((1 << 19,), np.float32, rng, low=low, high=high), None),
             (rand((600, 700), np.float32, rng, low=low, high=high), 0),
             (rand((700, 600), np.float16, rng, low=low, high=high), -1)]
    try:
        for x, axis in cases:
            results = []
            for threads in (1, 2, 2):
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                results.append(getattr(tsol, op)(x, axis=axis))
            for r in results[1:]:
                assert r.tobytes() == results[0].tobytes(), f"{op} {x.shape} axis={axis}"
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("op,axis", [("sum", None), ("var", 0), ("logsumexp", 1),
                                     ("argmax", 1)])
def test_configs_share_the_order(op, axis, rng):
    """Tuning picks among a kernel's configs; none may change the result's bits."""
    x = rand((300, 5000), np.float32, rng)
    opdef = get_op(op)
    extra = {"ddof": 1} if op == "var" else {}
    attrs = opdef.normalize([meta_of(x)], axis=axis, keepdims=False, **extra)
    want = opdef.meta(meta_of(x), **attrs)
    results = []
    for k in kernels(op, "cpu"):
        for config in k.configs:
            out = np.empty(want.shape, want.dtype)
            k.impl(x, out=out, config=config, **attrs)
            results.append(out.tobytes())
    assert len(results) > 1 and all(r == results[0] for r in results)


def test_accuracy(rng):
    """Blocked lanes and the pairwise tree keep float32 sums within a few roundings of exact.

    Over 30 seeds the largest errors seen were 0.11 (NumPy's pairwise sum: the same) for the
    row and 1.3 eps * sum|x| per column; one sequential float32 sum would be off by tens.
    """
    x = rng.standard_normal(1 << 20).astype(np.float32) + np.float32(1.0)
    exact = np.sum(x.astype(np.float64))
    assert abs(float(tsol.sum(x)) - exact) <= 4e-7 * np.abs(x).sum()
    cols = x.reshape(4096, 256)
    err = np.abs(tsol.sum(cols, axis=0) - cols.astype(np.float64).sum(axis=0)).max()
    assert err <= 8 * np.finfo(np.float32).eps * np.abs(cols).sum(axis=0).max()


# --- VJPs ---------------------------------------------------------------------------------------

VJP_CASES = [((3, 4), None, False), ((3, 4), 0, True), ((2, 3, 4), (0, 2), False),
             ((5,), -1, False)]


def attrs_of(op: str, x: np.ndarray, **raw) -> dict:
    return get_op(op).normalize([meta_of(x)], **raw)


@pytest.mark.parametrize("case", VJP_CASES, ids=case_id)
@pytest.mark.parametrize("op,extra", [("sum", {}), ("mean", {}), ("max", {}), ("min", {}),
                                      ("prod", {}), ("var", {"ddof": 0}), ("var", {"ddof": 1}),
                                      ("std", {"ddof": 0}), ("std", {"ddof": 1}),
                                      ("logsumexp", {})],
                         ids=["sum", "mean", "max", "min", "prod", "var", "var1", "std", "std1",
                              "logsumexp"])
def test_vjp(op, extra, case, rng):
    shape, axis, keepdims = case
    fn = getattr(tsol, op)
    x = rng.uniform(0.5, 1.5, shape) if op == "prod" else rng.standard_normal(shape)
    attrs = attrs_of(op, x, axis=axis, keepdims=keepdims, **extra)

    def f(a):
        return fn(a, axis=axis, keepdims=keepdims, **extra)

    def vjp(g, a):
        return get_op(op).vjp(g, a, out=f(a), **attrs)

    check_vjp(f, [x], vjp, rtol=1e-5, atol=1e-7)


def test_max_vjp_splits_ties():
    """The cotangent of max/min is shared equally between tied extremes."""
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0], [5.0, 4.0, 1.0]])
    g = np.array([1.0, 2.0, 3.0])
    for op, hit in (("max", x == x.max(axis=1, keepdims=True)),
                    ("min", x == x.min(axis=1, keepdims=True))):
        want = hit * (g[:, None] / hit.sum(axis=1, keepdims=True))
        got = get_op(op).vjp(g, x, out=getattr(tsol, op)(x, axis=1),
                             **attrs_of(op, x, axis=1, keepdims=False))[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_non_differentiable():
    assert not get_op("argmax").differentiable and not get_op("argmin").differentiable
