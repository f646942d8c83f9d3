"""fused_reduction on the cuda backend against its float64 reference and against the unfused
ops on cuda: every reduction, odd row lengths (one thread to many a row), float dtypes,
broadcast and strided operands, several and all axes, row segments merged by the reduction
kernels, empty values, special values and repeatability."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.ops.test_fused import program
from tests.ops.test_fused_reduction import (
    REDUCES,
    SQUARE,
    WEIGHTED,
    axis_of,
    error_scale,
    weighted_operands,
)
from tests.support import assert_close, dtype_id, rand, to64
from tsol import dtypes
from tsol.kernels.cuda import fused_reduction as cuda_kernel
from tsol.registry import Config, get_op

pytestmark = CUDA_TESTS

OPDEF = get_op("fused_reduction")
F32_WEIGHTED = program(WEIGHTED, [np.float32] * 3)
FOLDS = ("sum", "mean", "max", "min")


def run(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
        keepdims: bool = False) -> np.ndarray:
    with on_cuda():
        return to_host(tsol.fused_reduction([to_device(a) for a in arrays], program=prog,
                                            reduce=reduce, axis=axis, keepdims=keepdims))


def unfused(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
            keepdims: bool = False) -> np.ndarray:
    with on_cuda():
        v = tsol.fused_elementwise([to_device(a) for a in arrays], program=prog)
        if reduce in FOLDS:
            return to_host(getattr(tsol, reduce)(v, axis=axis, keepdims=keepdims))
        return to_host(getattr(tsol, reduce)(v, axis=axis))


def check(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
          keepdims: bool = False) -> Any:
    got = run(arrays, prog, reduce, axis, keepdims)
    if COMPILE_ONLY:                       # nothing ran: only the compile is checked
        return got
    dt = dtypes.dtype(prog.steps[prog.output].dtype)
    attrs = OPDEF.normalize((tuple(tsol.ops.base.meta_of(a) for a in arrays),), program=prog,
                            reduce=reduce, axis=axis, keepdims=keepdims)
    want = OPDEF.reference([to64(a) for a in arrays], **attrs)
    assert got.dtype == dt and got.shape == np.shape(want)
    scale = error_scale(arrays, prog, reduce, attrs["axis"])
    assert_close(got, want, dt, scale=scale, what=f"cuda fused {reduce} vs reference")
    assert_close(got, unfused(arrays, prog, reduce, axis, keepdims), dt, scale=scale,
                 rtol_mult=2, what=f"cuda fused {reduce} vs unfused")
    return got


@pytest.mark.parametrize("reduce", REDUCES)
def test_every_reduction_matches_the_reference(reduce, rng):
    arrays = weighted_operands((5, size(37, 4099)), np.float32, rng)
    check(arrays, F32_WEIGHTED, reduce, axis_of(reduce, 2))


@pytest.mark.parametrize("n", [1, 7, 129], ids=lambda n: f"n{n}")
def test_odd_row_lengths(n, rng):
    # n = 1 and 7: one thread a row, many rows a block; 129: a group of 16 threads a row.
    arrays = weighted_operands((size(3, 300), n), np.float32, rng)
    for reduce in ("sum", "max", "softmax"):
        check(arrays, F32_WEIGHTED, reduce, axis_of(reduce, 2))


def test_long_rows_span_several_warps(rng):
    # 1031 elements: a group of 128 threads a row (4 warps merged through shared memory).
    arrays = weighted_operands((2, 1031), np.float32, rng)
    for reduce in ("sum", "log_softmax"):
        check(arrays, F32_WEIGHTED, reduce, -1)


@pytest.mark.parametrize("dt", [dtypes.float64, dtypes.float16, dtypes.bfloat16], ids=dtype_id)
def test_float_dtypes(dt, rng):
    prog = program(WEIGHTED, [dt] * 3)
    arrays = weighted_operands((3, size(33, 1031)), dt, rng)
    for reduce in ("mean", "min", "log_softmax"):
        assert check(arrays, prog, reduce, axis_of(reduce, 2)).dtype == dt


def test_broadcast_and_strided_operands(rng):
    base = rand((size(33, 513), 2, 3), np.float32, rng, low=-2.0, high=2.0)
    x = base.transpose(1, 2, 0)[..., ::2]                      # strided along the row
    m = rand((3, x.shape[-1]), np.float32, rng, low=-1.0, high=1.0)
    w = np.asarray(rand((), np.float32, rng))
    for reduce in ("sum", "max", "softmax"):
        check([x, m, w], F32_WEIGHTED, reduce, axis_of(reduce, 3))


def test_several_and_all_axes_with_keepdims(rng):
    x = rand((2, 3, 17), np.float32, rng)
    m = rand((3, 1), np.float32, rng)                          # not one run over (3, 17)
    w = rand((17,), np.float32, rng)
    check([x, m, w], F32_WEIGHTED, "sum", (1, 2), keepdims=True)
    sq = program(SQUARE, [np.float32])
    assert check([x], sq, "mean", None).shape == ()
    assert check([x], sq, "min", None, keepdims=True).shape == (1, 1, 1)


@pytest.mark.parametrize("reduce", FOLDS)
def test_row_segments_merge_in_the_reduction_kernels(reduce, forced, rng):
    # split=3: each row's fold is split over gridDim.y, the partials merged by reduction.run.
    forced(Config(block=32, work=16, split=3), only="fused_reduction")
    arrays = weighted_operands((2, size(129, 40000)), np.float32, rng)
    check(arrays, F32_WEIGHTED, reduce, -1)


def test_empty_and_special_values(rng):
    sq = program(SQUARE, [np.float32])
    got = run([np.empty((3, 0), np.float32)], sq, "sum", -1)
    if not COMPILE_ONLY:
        np.testing.assert_array_equal(got, np.zeros(3, np.float32))
        assert run([np.empty((0, 4), np.float32)], sq, "softmax", -1).shape == (0, 4)
    x = rand((4, 9), np.float64, rng)
    x[0, 3], x[1, 2], x[2, :], x[3, 4] = np.nan, np.inf, -np.inf, -np.inf
    prog = program([("multiply", ["in0", 2.0])], [np.float64])
    for reduce in REDUCES:
        check([x], prog, reduce, -1)


def test_repeatable_and_compiled_once(rng):
    arrays = weighted_operands((3, 21), np.float32, rng)
    first = run(arrays, F32_WEIGHTED, "sum", -1)
    before = len(cuda_kernel.GENERATED)
    again = run(arrays, F32_WEIGHTED, "sum", -1)
    assert len(cuda_kernel.GENERATED) == before
    if not COMPILE_ONLY:
        assert first.tobytes() == again.tobytes()
