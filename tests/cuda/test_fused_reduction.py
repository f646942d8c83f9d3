"""fused_reduction on the cuda backend against its float64 reference and against the unfused
ops on cuda: the CPU tests' table of cases (every reduction, softmax and norm, odd row lengths
from one thread to many a row, float dtypes, broadcast and strided operands, several and all
axes, special values, epilogues), row segments merged by the reduction kernels (with an
epilogue after them), empty values, repeatability, and compiled pipelines of one kernel."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.ops.test_fused import program
from tests.ops.test_fused_reduction import (
    F32_FOLD_SQUASH,
    F32_SQUARE,
    F32_WEIGHTED,
    FOLDS,
    TABLE,
    attrs_of,
    compare,
    run_case,
    unfused,
    weighted_operands,
)
from tests.support import assert_close, rand
from tsol.kernels.cuda import fused_reduction as cuda_kernel
from tsol.ops.fused import Program
from tsol.registry import Config, get_op

pytestmark = CUDA_TESTS


def run(arrays: Sequence[np.ndarray], extras: Sequence[np.ndarray], attrs: dict[str, Any]
        ) -> np.ndarray:
    with on_cuda():
        return to_host(tsol.fused_reduction([to_device(a) for a in arrays],
                                            [to_device(e) for e in extras] or None, **attrs))


def check(arrays: Sequence[np.ndarray], extras: Sequence[np.ndarray], prog: Program,
          reduce: str, axis: Any, keepdims: bool = False,
          epilogue: Program | None = None) -> Any:
    attrs = attrs_of(arrays, extras, prog, reduce, axis, keepdims, epilogue)
    got = run(arrays, extras, attrs)
    if COMPILE_ONLY:                       # nothing ran: only the compile is checked
        return got
    with on_cuda():
        want = to_host(unfused([to_device(a) for a in arrays], [to_device(e) for e in extras],
                               attrs))
    compare(got, want, arrays, extras, attrs, f"cuda fused {reduce}")
    return got


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_table(case, rng):
    run_case(case, rng, size, check)


@pytest.mark.parametrize("reduce", FOLDS)
def test_row_segments_merge_in_the_reduction_kernels(reduce, forced, rng):
    # split=3: each row's fold is split over gridDim.y, the partials merged by reduction.run,
    # then the epilogue applied by one more kernel.
    forced(Config(block=32, work=16, split=3), only="fused_reduction")
    arrays = weighted_operands((2, size(129, 40000)), np.float32, rng)
    check(arrays, [], F32_WEIGHTED, reduce, -1)
    check(arrays, [rand((2,), np.float32, rng, low=-1.0, high=1.0)], F32_WEIGHTED, reduce, -1,
          epilogue=F32_FOLD_SQUASH)


def test_empty_values(rng):
    cols0 = np.empty((3, 0), np.float32)
    got = run([cols0], [], attrs_of([cols0], [], F32_SQUARE, "sum", -1))
    s = rand((3,), np.float32, rng)
    squashed = run([cols0], [s], attrs_of([cols0], [s], F32_SQUARE, "mean", -1,
                                          epilogue=F32_FOLD_SQUASH))
    rows0 = np.empty((0, 4), np.float32)
    assert run([rows0], [], attrs_of([rows0], [], F32_SQUARE, "softmax", -1)).shape == (0, 4)
    if not COMPILE_ONLY:
        np.testing.assert_array_equal(got, np.zeros(3, np.float32))
        assert np.isnan(squashed).all()            # tanh(NaN / 4) * s: an empty mean is NaN


def test_repeatable_and_compiled_once(rng):
    arrays = weighted_operands((3, 21), np.float32, rng)
    attrs = attrs_of(arrays, [], F32_WEIGHTED, "layernorm", -1)
    first = run(arrays, [], attrs)
    before = len(cuda_kernel.GENERATED)
    again = run(arrays, [], attrs)
    assert len(cuda_kernel.GENERATED) == before
    if not COMPILE_ONLY:
        assert first.tobytes() == again.tobytes()


def compiled_run(f, *arrays):
    with on_cuda():
        return to_host(f(*[to_device(a) for a in arrays]))


def test_compiled_norm_with_prologue_and_epilogue_is_one_kernel(rng):
    # layernorm(x * a + b, w, bias) and gelu(rmsnorm(x, w)) each run as one fused kernel.
    n = size(33, 1031)
    x, a = rand((3, n), np.float32, rng), rand((n,), np.float32, rng)
    w, bias = rand((n,), np.float32, rng), rand((n,), np.float32, rng)
    f = tsol.jit(lambda x, a, w, bias: tsol.layernorm(x * a + 0.5, w, bias))
    g = tsol.jit(lambda x, w: tsol.gelu(tsol.rmsnorm(x, w)))
    got_f, got_g = compiled_run(f, x, a, w, bias), compiled_run(g, x, w)
    assert f.kernel_count() == 1 and g.kernel_count() == 1
    if COMPILE_ONLY:
        return
    x64, a64, w64, b64 = (v.astype(np.float64) for v in (x, a, w, bias))
    assert_close(got_f, get_op("layernorm").reference(x64 * a64 + 0.5, w64, b64, eps=1e-5),
                 np.float32, scale=3)
    y = get_op("rmsnorm").reference(x64, w64, eps=1e-6)
    want = get_op("fused_elementwise").reference([y], program=program([("gelu", ["in0"])],
                                                                       [np.float64]))
    assert_close(got_g, want, np.float32, scale=3)
