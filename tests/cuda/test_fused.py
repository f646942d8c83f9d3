"""fused_elementwise on the cuda backend against its float64 reference and against the steps
run one at a time on cuda: flat (unrolled and tail) and strided layouts, scalars, broadcasting,
mixed dtypes, integer wrap-around, casts, views, many dims, errors and compile-once."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.ops.test_fused import CHAIN, program
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, to64
from tsol import dtypes
from tsol.errors import ArgumentError
from tsol.ops.fused import Program
from tsol.registry import get_op

pytestmark = CUDA_TESTS

OPDEF = get_op("fused_elementwise")


def run(arrays: Sequence[np.ndarray], prog: Program) -> np.ndarray:
    with on_cuda():
        return to_host(tsol.fused_elementwise([to_device(a) for a in arrays], program=prog))


def unfused(arrays: Sequence[np.ndarray], prog: Program) -> np.ndarray:
    """The program op by op through the public ops, on cuda."""
    values: list[Any] = []
    with on_cuda():
        dev = [to_device(a) for a in arrays]
        for s in prog.steps:
            args = [dev[v] if k == "in" else values[v] if k == "step" else v for k, v in s.args]
            values.append(getattr(tsol, s.op)(*args, **dict(s.attrs)))
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    return np.broadcast_to(to_host(values[prog.output]), shape)


def check(arrays: Sequence[np.ndarray], prog: Program, *, unfused_mult: float = 1.0) -> Any:
    got = run(arrays, prog)
    if COMPILE_ONLY:                       # nothing ran: only the compile is checked
        return got
    dt = dtypes.dtype(prog.steps[prog.output].dtype)
    assert got.dtype == dt and got.shape == np.broadcast_shapes(*[a.shape for a in arrays])
    want = OPDEF.reference([to64(a) for a in arrays], program=prog)
    assert_close(got, want, dt, what="cuda fused vs reference")
    assert_close(got, unfused(arrays, prog), dt, rtol_mult=unfused_mult,
                 what="cuda fused vs unfused")
    return got


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_chain_every_float_dtype(dt, rng):
    check([rand((3, size(37, 4099)), dt, rng)], program(CHAIN, [dt]), unfused_mult=4)


def test_flat_unrolled_main_loop_and_tail_with_a_scalar_operand(rng):
    # 4101 elements: the first threads take 4-element trips, the rest finish one by one; the
    # 0-d operand is loaded once and exp(s) is computed once a thread.
    x, s = rand((4101,), np.float32, rng), np.asarray(0.75, np.float32)
    prog = program([("sigmoid", ["in0"]), ("multiply", ["in0", "%0"]), ("exp", ["in1"]),
                    ("add", ["%1", "%2"])], [np.float32, np.float32])
    check([x, s], prog)


def test_broadcast_column_and_row_is_strided(rng):
    a, b = rand((7, 1), np.float32, rng), rand((1, size(33, 129)), np.float32, rng)
    prog = program([("multiply", ["in0", "in1"]), ("add", ["%0", "in1"]), ("exp", ["%1"]),
                    ("subtract", ["%2", "in0"])], [np.float32, np.float32])
    check([a, b], prog)


def test_dag_reuses_a_step(rng):
    x = rand((5, 13), dtypes.bfloat16, rng)
    prog = program([("sigmoid", ["in0"]), ("multiply", ["in0", "%0"]),
                    ("multiply", ["%1", "%1"]), ("add", ["%2", "%1"])], [dtypes.bfloat16])
    check([x], prog, unfused_mult=3)


def test_float16_int_promotion_comparison_and_where(rng):
    h = rand((4, 9), np.float16, rng)
    i = rng.integers(-3, 4, size=(9,)).astype(np.int32)    # (the simulator's exp raises past 709)
    f = rand((4, 9), np.float32, rng)
    prog = program([("add", ["in1", "in2"]), ("less", ["in0", 0.5]),
                    ("where", ["%1", "%0", "in0"]), ("gelu", ["%2"], {"approximate": "tanh"}),
                    ("multiply", ["%3", "in0"])], [np.float16, np.int32, np.float32])
    assert prog.steps[0].dtype == "float64" and prog.steps[-1].dtype == "float64"
    check([h, i, f], prog)


def test_int8_chain_wraps_like_the_unfused_ops(rng):
    a = rng.integers(-128, 128, size=(3, 17)).astype(np.int8)
    b = rng.integers(-128, 128, size=(17,)).astype(np.int8)
    prog = program([("add", ["in0", "in1"]), ("multiply", ["%0", 3]), ("add", ["%1", 100]),
                    ("neg", ["%2"]), ("maximum", ["%3", "in0"]), ("power", ["%4", 2])],
                   [np.int8, np.int8])
    got = check([a, b], prog)
    if not COMPILE_ONLY:
        with np.errstate(over="ignore"):
            want = np.maximum(-(((a + b) * np.int8(3)) + np.int8(100)), a) ** np.int8(2)
        np.testing.assert_array_equal(got, want)


def test_astype_and_a_float_condition_inside_the_chain(rng):
    # The float where-condition keeps its own truth (0.25 is true in an int8 where).
    x = (rng.integers(-100, 100, size=(6, 11)) + 0.25).astype(np.float32)
    cond = rng.choice([0.0, 0.25, -1e-30], size=(11,)).astype(np.float64)
    prog = program([("astype", ["in0"], {"dtype": "int8"}), ("multiply", ["%0", 5]),
                    ("where", ["in1", "%1", -7]), ("astype", ["%2"], {"dtype": "float16"}),
                    ("multiply", ["%3", 0.5]), ("astype", ["%4"], {"dtype": "bool"}),
                    ("where", ["%5", "%4", 0.125])], [np.float32, np.float64])
    assert prog.steps[-1].dtype == "float16"
    got = check([x, cond], prog)
    if not COMPILE_ONLY:
        with np.errstate(over="ignore"):
            picked = np.where(cond != 0, x.astype(np.int8) * np.int8(5), np.int8(-7))
        want = picked.astype(np.float16) * np.float16(0.5)
        np.testing.assert_array_equal(got, np.where(want != 0, want, np.float16(0.125)))


def test_transposed_zero_size_and_many_dims(rng):
    a = rand((9, 5), np.float64, rng).T
    prog = program([("multiply", ["in0", "in1"]), ("cos", ["%0"])], [np.float64, np.float64])
    check([a, rand((9,), np.float64, rng)], prog)
    check([rand((3, 0, 5), np.float64, rng), rand((5,), np.float64, rng)], prog)
    big, small = rand((2, 3, 4, 5, 6), np.float64, rng), rand((3, 1, 5, 1), np.float64, rng)
    check([big, small], prog)                     # > 4 dims after merging: dense copies


def test_compiles_once_per_program_dtypes_and_layout(rng):
    from tsol.kernels.cuda import fused as cuda_fused
    prog = program([("multiply", ["in0", 1.5]), ("tanh", ["%0"])], [np.float32])
    run([rand((3, 5), np.float32, rng)], prog)
    built = dict(cuda_fused.GENERATED)
    for _ in range(2):
        check([rand((3, 5), np.float32, rng)], prog)
    assert cuda_fused.GENERATED == built
    run([rand((5, 3), np.float32, rng).T], prog)    # the strided layout: one more kernel
    assert len(cuda_fused.GENERATED) == len(built) + 1


def test_integer_power_rejects_negative_exponents():
    prog = program([("power", ["in0", "in1"])], [np.int32, np.int32])
    with pytest.raises(ArgumentError, match="negative"):
        run([np.array([2, 3], np.int32), np.array([1, -1], np.int32)], prog)
