"""fused_reduction on the CPU against its float64 reference (the program's reference, then the
reduction's) and against the unfused ops: every reduction, odd row lengths across the work-item
size, float dtypes, broadcast and strided operands, reductions over several or all axes,
empty and 0-d values, special values, determinism across thread counts, errors and cost.

Outputs are NaN-poisoned by the session fixture, so an element the kernel skips fails. The
tests share a few programs so that each generated kernel compiles once.
"""

from __future__ import annotations

from typing import Any, Sequence

import numba
import numpy as np
import pytest

import tsol
from tests.ops.test_fused import program
from tests.support import assert_close, dtype_id, rand, to64
from tsol import dtypes
from tsol.errors import ArgumentError, AxisError, DTypeError, ShapeError
from tsol.kernels.cpu import fused_reduction as cpu_kernel
from tsol.kernels.cpu import reduction as cpu_reduction
from tsol.registry import NON_DIFFERENTIABLE, get_op

OPDEF = get_op("fused_reduction")
REDUCES = ["sum", "mean", "max", "min", "softmax", "log_softmax"]

# exp(x - m) * w: x a full operand, m a per-row column, w a row vector.
WEIGHTED = [("subtract", ["in0", "in1"]), ("exp", ["%0"]), ("multiply", ["%1", "in2"])]
SQUARE = [("multiply", ["in0", "in0"])]


def axis_of(reduce: str, ndim: int, k: int = 1) -> Any:
    return -1 if reduce in ("softmax", "log_softmax") else tuple(range(ndim - k, ndim))


def reduced(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
            keepdims: bool = False) -> np.ndarray:
    return tsol.fused_reduction(list(arrays), program=prog, reduce=reduce, axis=axis,
                                keepdims=keepdims)


def unfused(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
            keepdims: bool = False) -> np.ndarray:
    v = tsol.fused_elementwise(list(arrays), program=prog)
    if reduce in ("softmax", "log_softmax"):
        return getattr(tsol, reduce)(v, axis=axis)
    return getattr(tsol, reduce)(v, axis=axis, keepdims=keepdims)


def error_scale(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: tuple) -> float:
    """What rounding errors are relative to: the sum of the magnitudes a sum adds (per element
    for a mean); for softmax the largest value, whose rounding moves every exp(v - max)."""
    v = np.abs(get_op("fused_elementwise").reference([to64(a) for a in arrays], program=prog))
    if v.size == 0 or reduce in ("max", "min"):
        return 1.0
    if reduce in ("softmax", "log_softmax"):
        return max(1.0, float(np.nanmax(np.where(np.isinf(v), 0.0, v))))
    total = v.sum(axis=axis) if v.ndim else v
    n = v.size // max(1, np.size(total))
    return max(1.0, float(np.nanmax(np.where(np.isinf(total), 0.0, total))) /
               (n if reduce == "mean" else 1))


def check(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
          keepdims: bool = False) -> np.ndarray:
    """The fused result against the float64 reference and the unfused ops."""
    got = reduced(arrays, prog, reduce, axis, keepdims)
    dt = dtypes.dtype(prog.steps[prog.output].dtype)
    attrs = OPDEF.normalize((tuple(tsol.ops.base.meta_of(a) for a in arrays),), program=prog,
                            reduce=reduce, axis=axis, keepdims=keepdims)
    want = OPDEF.reference([to64(a) for a in arrays], **attrs)
    assert got.dtype == dt and got.shape == np.shape(want)
    scale = error_scale(arrays, prog, reduce, attrs["axis"])
    assert_close(got, want, dt, scale=scale, what=f"fused {reduce} vs reference")
    assert_close(got, unfused(arrays, prog, reduce, axis, keepdims), dt, scale=scale,
                 rtol_mult=2, what=f"fused {reduce} vs unfused")
    return got


def weighted_operands(shape: tuple[int, ...], dt: Any, rng: np.random.Generator) -> list:
    x = rand(shape, dt, rng, low=-2.0, high=2.0)
    m = rand(shape[:-1] + (1,), dt, rng, low=-1.0, high=1.0)
    w = rand(shape[-1:], dt, rng)
    return [x, m, w]


F32_WEIGHTED = program(WEIGHTED, [np.float32] * 3)


@pytest.mark.parametrize("reduce", REDUCES)
def test_every_reduction_matches_the_reference(reduce, rng):
    arrays = weighted_operands((7, 129), np.float32, rng)
    got = check(arrays, F32_WEIGHTED, reduce, axis_of(reduce, 2))
    assert got.shape == ((7,) if reduce in ("sum", "mean", "max", "min") else (7, 129))


@pytest.mark.parametrize("n", [1, 7, 129, 4099], ids=lambda n: f"n{n}")
def test_odd_row_lengths(n, rng):
    # 4099 is past the 4096-element work item: two partials a row, combined by the tree.
    arrays = weighted_operands((3, n), np.float32, rng)
    for reduce in ("sum", "max", "softmax"):
        check(arrays, F32_WEIGHTED, reduce, axis_of(reduce, 2))


@pytest.mark.parametrize("dt", [dtypes.float64, dtypes.float16, dtypes.bfloat16], ids=dtype_id)
def test_float_dtypes_accumulate_wide_and_keep_their_dtype(dt, rng):
    prog = program(WEIGHTED, [dt] * 3)
    arrays = weighted_operands((5, 129), dt, rng)
    for reduce in ("sum", "mean", "min", "log_softmax"):
        got = check(arrays, prog, reduce, axis_of(reduce, 2))
        assert got.dtype == dt == getattr(tsol, reduce)(arrays[0], axis=-1).dtype


def test_half_inputs_to_a_float32_value(rng):
    # float16 x times a float32 weight: the value is float32, the result float32.
    prog = program(SQUARE + [("multiply", ["%0", "in1"])], [np.float16, np.float32])
    x, w = rand((4, 33), np.float16, rng), rand((33,), np.float32, rng)
    assert check([x, w], prog, "mean", -1).dtype == np.float32


def test_broadcast_and_strided_operands(rng):
    # x strided along the row and transposed across rows, m broadcast along the leading dim,
    # w a 0-d operand: the modes s, c and b in one kernel, row offsets over two kept dims.
    base = rand((65, 2, 3), np.float32, rng, low=-2.0, high=2.0)
    x = base.transpose(1, 2, 0)[..., ::2]                      # (2, 3, 33), strides (3, 1, 12)
    m = rand((3, 33), np.float32, rng, low=-1.0, high=1.0)
    w = np.asarray(rand((), np.float32, rng))
    for reduce in ("sum", "min", "softmax"):
        check([x, m, w], F32_WEIGHTED, reduce, axis_of(reduce, 3))


def test_several_trailing_axes_and_a_broadcast_that_is_not_one_run(rng):
    # Over the last two axes m (3, 1) broadcast along 17 is not one run: it is read as a copy.
    x = rand((2, 3, 17), np.float32, rng)
    m = rand((3, 1), np.float32, rng)
    w = rand((17,), np.float32, rng)
    for reduce in ("sum", "mean", "max"):
        check([x, m, w], F32_WEIGHTED, reduce, (1, 2))
        check([x, m, w], F32_WEIGHTED, reduce, (-2, -1), keepdims=True)


def test_all_axes_keepdims_and_a_0d_value(rng):
    sq = program(SQUARE, [np.float32])
    x = rand((5, 33, 3), np.float32, rng)
    got = check([x], sq, "mean", None, keepdims=True)
    assert got.shape == (1, 1, 1)
    assert check([x], sq, "sum", None).shape == ()
    s = np.asarray(rand((), np.float32, rng))
    assert check([s], sq, "max", None).shape == ()


def test_empty_values(rng):
    sq = program(SQUARE, [np.float32])
    rows0 = np.empty((0, 5), np.float32)
    for reduce in REDUCES:
        assert reduced([rows0], sq, reduce, -1).shape == ((0,) if reduce in ("sum", "mean",
                                                          "max", "min") else (0, 5))
    cols0 = np.empty((3, 0), np.float32)
    np.testing.assert_array_equal(reduced([cols0], sq, "sum", -1), np.zeros(3, np.float32))
    assert np.isnan(reduced([cols0], sq, "mean", -1)).all()
    assert reduced([cols0], sq, "softmax", -1).shape == (3, 0)
    with pytest.raises(ShapeError, match=r"tsol\.fused_reduction: zero-size.*maximum"):
        reduced([cols0], sq, "max", -1)


def test_special_values_follow_the_unfused_ops(rng):
    # Rows with NaN, +inf and only -inf: softmax and log_softmax follow scipy, max lets a NaN
    # win, sum gives inf/NaN as NumPy does.
    x = rand((5, 9), np.float64, rng)
    x[0, 3] = np.nan
    x[1, 2] = np.inf
    x[2, :] = -np.inf
    x[3, 4] = -np.inf
    prog = program([("multiply", ["in0", 2.0])], [np.float64])
    for reduce in REDUCES:
        check([x], prog, reduce, -1)


def test_bitwise_same_for_any_thread_count(rng, monkeypatch):
    # Split even small inputs over threads: the items of a row land on different threads.
    monkeypatch.setattr(cpu_reduction, "THREAD_MIN_ELEMENTS", 1)
    arrays = weighted_operands((16, 4099), np.float32, rng)
    saved = numba.get_num_threads()
    try:
        for reduce in ("sum", "softmax"):
            results = []
            for threads in (1, 2, 2):
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                results.append(reduced(arrays, F32_WEIGHTED, reduce, -1))
            for r in results[1:]:
                assert r.tobytes() == results[0].tobytes(), reduce
    finally:
        numba.set_num_threads(saved)


def test_compiles_once_per_program_and_layout(rng):
    arrays = weighted_operands((3, 7), np.float32, rng)
    reduced(arrays, F32_WEIGHTED, "sum", -1)
    before = len(cpu_kernel.GENERATED)
    for reduce in REDUCES:
        reduced(weighted_operands((4, 9), np.float32, rng), F32_WEIGHTED, reduce,
                axis_of(reduce, 2))
    assert len(cpu_kernel.GENERATED) == before


# --- errors, cost, registry ------------------------------------------------------------------

def test_errors_name_the_op_and_the_fix(rng):
    sq = program(SQUARE, [np.float32])
    x = rand((3, 4), np.float32, rng)
    with pytest.raises(ArgumentError, match=r"fused_reduction: axis 0 of a 2-d value is not a run"):
        reduced([x], sq, "sum", 0)
    with pytest.raises(ArgumentError, match=r"softmax runs along the last axis"):
        reduced([x], sq, "softmax", 0)
    with pytest.raises(ArgumentError, match=r"keepdims=True does not apply"):
        reduced([x], sq, "log_softmax", -1, keepdims=True)
    with pytest.raises(ArgumentError, match=r"reduce='prod' is not supported"):
        reduced([x], sq, "prod", -1)
    with pytest.raises(AxisError, match=r"tsol\.fused_reduction: axis 2 is out of range"):
        reduced([x], sq, "sum", 2)
    pair = program([("multiply", ["in0", "in1"])], [np.float32] * 2)
    with pytest.raises(ShapeError, match=r"tsol\.fused_reduction: shapes"):
        reduced([x, rand((5,), np.float32, rng)], pair, "sum", -1)
    ints = program(SQUARE, [np.int32])
    with pytest.raises(DTypeError, match=r"tsol\.fused_reduction: the program's value is int32"):
        reduced([np.ones((3, 4), np.int32)], ints, "sum", -1)
    with pytest.raises(DTypeError, match=r"tsol\.fused_reduction: program: step 0"):
        reduced([x], ints, "sum", -1)          # declared int32 steps on float32 operands


def test_rules_cost_and_registry():
    sq = program(SQUARE, [np.float32])
    metas = (tsol.ops.base.Meta((6, 10), np.dtype(np.float32)),)
    attrs = OPDEF.normalize((metas,), program=sq, reduce="mean", axis=None, keepdims=False)
    assert attrs["axis"] == (0, 1)
    out = OPDEF.meta(metas, **attrs)
    assert out.shape == () and out.dtype == np.float32
    flops, nbytes = OPDEF.cost(metas, out=out, **attrs)
    assert flops == 120.0 and nbytes == 240 + 4          # one multiply and one add an element
    assert OPDEF.vjp == NON_DIFFERENTIABLE and OPDEF.family == "fused_reduction"
    assert tsol.fused_reduction is tsol.op.fused_reduction


def test_decomposition_matches_the_kernel(rng):
    arrays = weighted_operands((4, 33), np.float32, rng)
    for reduce in ("mean", "log_softmax"):
        want = OPDEF.decomposition(tuple(arrays), program=F32_WEIGHTED, reduce=reduce,
                                   axis=(1,), keepdims=False)
        assert_close(reduced(arrays, F32_WEIGHTED, reduce, -1), want, np.float32,
                     scale=10, rtol_mult=2)
