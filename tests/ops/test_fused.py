"""fused_elementwise on the CPU against its float64 reference and against running the steps
one at a time: chains and DAGs, broadcasting, mixed dtypes and promotion, integer wrap-around,
casts inside the chain, odd sizes and views, errors, cost and compile-once.

Outputs are NaN-poisoned by the session fixture, so an element the kernel skips fails.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

import tsol
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, to64
from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, ShapeError, TSOLError
from tsol.kernels.cpu import fused as cpu_fused
from tsol.kernels.cpu.jit import compile_stats
from tsol.ops import base
from tsol.ops.fused import Program, Step, with_dtypes
from tsol.registry import NON_DIFFERENTIABLE, get_op, kernels

OPDEF = get_op("fused_elementwise")


def program(steps: Sequence[tuple], in_dtypes: Sequence[Any], output: int = -1) -> Program:
    """A program from ``(op, args[, attrs])`` rows: args "in0", "%1" or Python scalars; step
    dtypes filled in by the ops' meta rules."""
    built = []
    for row in steps:
        op, args, attrs = (*row, {}) if len(row) == 2 else row
        refs = tuple(("in", int(a[2:])) if isinstance(a, str) and a.startswith("in") else
                     ("step", int(a[1:])) if isinstance(a, str) else ("const", a) for a in args)
        built.append(Step(op, refs, tuple(sorted(attrs.items()))))
    return with_dtypes(Program(tuple(built), output % len(built)), in_dtypes)


def fused(arrays: Sequence[np.ndarray], prog: Program, **kw: Any) -> np.ndarray:
    return base.call(OPDEF, (list(arrays),), {"program": prog, **kw})


def unfused(arrays: Sequence[np.ndarray], prog: Program) -> np.ndarray:
    """The program run op by op through the public ops (each result stored in its dtype)."""
    values: list[Any] = []
    for s in prog.steps:
        args = [arrays[v] if k == "in" else values[v] if k == "step" else v for k, v in s.args]
        values.append(getattr(tsol, s.op)(*args, **dict(s.attrs)))
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    return np.broadcast_to(values[prog.output], shape)


def check(arrays: Sequence[np.ndarray], prog: Program, *, unfused_mult: float = 1.0) -> np.ndarray:
    """The fused result against the float64 reference and the op-by-op result."""
    got = fused(arrays, prog)
    dt = dtypes.dtype(prog.steps[prog.output].dtype)
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    assert got.dtype == dt and got.shape == shape
    want = OPDEF.reference([to64(a) for a in arrays], program=prog)
    assert_close(got, want, dt, what="fused vs reference")
    assert_close(got, unfused(arrays, prog), dt, rtol_mult=unfused_mult, what="fused vs unfused")
    return got


# A chain: relu -> x * 2 + 1 -> tanh.
CHAIN = [("relu", ["in0"]), ("multiply", ["%0", 2.0]), ("add", ["%1", 1.0]), ("tanh", ["%2"])]


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_chain_every_float_dtype(dt, rng):
    x = rand((4099,), dt, rng)
    check([x], program(CHAIN, [dt]), unfused_mult=4)


@pytest.mark.parametrize("shape", [(4099,), (33, 65, 3), (1,), (), (3, 0, 5)], ids=str)
def test_chain_odd_shapes(shape, rng):
    x = rand(shape, np.float32, rng)
    check([x], program(CHAIN, [np.float32]))


def test_broadcast_column_and_row(rng):
    a, b = rand((7, 1), np.float32, rng), rand((1, 129), np.float32, rng)
    prog = program([("multiply", ["in0", "in1"]), ("add", ["%0", "in1"]), ("exp", ["%1"]),
                    ("subtract", ["%2", "in0"])], [np.float32, np.float32])
    got = check([a, b], prog)
    assert got.shape == (7, 129)


def test_dag_reuses_a_step_and_an_operand(rng):
    # x * sigmoid(x): the operand feeds two steps; silu(x) then reuses that product twice.
    x = rand((33, 65), np.float32, rng)
    prog = program([("sigmoid", ["in0"]), ("multiply", ["in0", "%0"]),
                    ("multiply", ["%1", "%1"]), ("add", ["%2", "%1"])], [np.float32])
    got = check([x], prog)
    silu = tsol.silu(x).astype(np.float64)
    assert_close(got, silu * silu + silu, np.float32, scale=4)


def test_float16_inputs_are_not_rounded_in_between(rng):
    # Unfused, every step rounds to float16; fused, only the store does. The fused result is
    # the reference's within float16 tolerance and the unfused one's within its accumulated
    # rounding.
    a, b = rand((5, 257), np.float16, rng), rand((257,), np.float16, rng)
    prog = program([("multiply", ["in0", "in1"]), ("sin", ["%0"]), ("multiply", ["%1", 3.0]),
                    ("add", ["%2", "in0"]), ("gelu", ["%3"], {"approximate": "tanh"})],
                   [np.float16, np.float16])
    check([a, b], prog, unfused_mult=5)


def test_int_and_float_promote_and_a_comparison_feeds_where(rng):
    i = rng.integers(-50, 50, size=(6, 41)).astype(np.int32)
    f = rand((41,), np.float32, rng)
    prog = program([("add", ["in0", "in1"]), ("less", ["in1", 0.5]),
                    ("where", ["%1", "%0", -1.0]), ("multiply", ["%2", "in1"])],
                   [np.int32, np.float32])
    assert [s.dtype for s in prog.steps] == ["float64", "bool", "float64", "float64"]
    check([i, f], prog)


def test_int8_chain_wraps_like_the_unfused_ops(rng):
    a = rng.integers(-128, 128, size=(3, 129)).astype(np.int8)
    b = rng.integers(-128, 128, size=(129,)).astype(np.int8)
    prog = program([("add", ["in0", "in1"]), ("multiply", ["%0", 3]), ("add", ["%1", 100]),
                    ("neg", ["%2"]), ("abs", ["%3"]), ("maximum", ["%4", "in0"])],
                   [np.int8, np.int8])
    got = check([a, b], prog)
    with np.errstate(over="ignore"):
        want = np.maximum(np.abs(-(((a + b) * np.int8(3)) + np.int8(100))), a)
    np.testing.assert_array_equal(got, want)


def test_unsigned_and_int64_mix(rng):
    a = rng.integers(0, 256, size=(65,)).astype(np.uint8)
    b = rng.integers(-2**40, 2**40, size=(65,)).astype(np.int64)
    prog = program([("subtract", ["in0", 7]), ("multiply", ["%0", "in1"]),
                    ("power", ["in0", 3]), ("add", ["%1", "%2"])], [np.uint8, np.int64])
    assert prog.steps[0].dtype == "uint8" and prog.steps[-1].dtype == "int64"
    check([a, b], prog)


def test_astype_inside_the_chain(rng):
    # float32 -> int32 truncates (inputs kept off integers), int math wraps, back to float16,
    # then a float step and a bool cast.
    x = (rng.integers(-1000, 1000, size=(33, 65)) + 0.25).astype(np.float32)
    n = rng.integers(-5, 5, size=(65,)).astype(np.int32)
    prog = program([("astype", ["in0"], {"dtype": "int32"}), ("multiply", ["%0", "in1"]),
                    ("astype", ["%1"], {"dtype": "float16"}), ("multiply", ["%2", 0.5]),
                    ("astype", ["%3"], {"dtype": "bool"}), ("where", ["%4", "%3", 7.0])],
                   [np.float32, np.int32])
    assert prog.steps[-1].dtype == "float16"
    check([x, n], prog)


def test_where_condition_truth_and_casts_to_bool(rng):
    # A float condition is true where nonzero, also below 1 and below float32's range, in an
    # int8 where; a float cast to bool is true for any nonzero fraction.
    cond = rng.choice([0.0, 0.25, -1e-300, 3.0], size=(5, 31))
    a, b = (rng.integers(-128, 128, size=(31,)).astype(np.int8) for _ in range(2))
    frac = rng.choice([0.0, 0.5, -0.25, 2.0], size=(31,)).astype(np.float32)
    prog = program([("where", ["in0", "in1", "in2"]), ("astype", ["in3"], {"dtype": "bool"}),
                    ("where", ["%1", "%0", 9])], [np.float64, np.int8, np.int8, np.float32])
    got = check([cond, a, b, frac], prog)
    np.testing.assert_array_equal(got, np.where(frac != 0, np.where(cond != 0, a, b), 9))


def test_bool_inputs_gelu_power_clip_and_special_values(rng):
    x = rand((4, 97), np.float64, rng)
    x[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    m = rng.random((97,)) < 0.5
    prog = program([("gelu", ["in0"]), ("power", ["%0", 2.0]), ("clip", ["%1", None, 2.5]),
                    ("where", ["in1", "%2", "in0"]), ("maximum", ["%3", -np.inf]),
                    ("clip", ["%4", -1.0, np.inf])], [np.float64, np.bool_])
    check([x, m], prog)


def test_float32_fallback_paths_large_sin_argument_and_large_exponent(rng):
    # |x| > 2**20 sends float32 sin to libm; |y| > 4 sends pow to its float64-internal version.
    x = np.concatenate([rng.uniform(-3e6, 3e6, 60), rng.uniform(0.5, 1.5, 60)]).astype(np.float32)
    y = rng.uniform(-7.0, 7.0, 120).astype(np.float32)
    prog = program([("sin", ["in0"]), ("abs", ["in0"]), ("power", ["%1", "in1"]),
                    ("minimum", ["%2", 1e6]), ("add", ["%0", "%3"])], [np.float32, np.float32])
    check([x, y], prog, unfused_mult=2)


@pytest.mark.parametrize("view", ["transposed", "reversed", "strided"])
def test_non_contiguous_inputs(view, rng):
    base_a = rand((65, 33), np.float32, rng)
    a = {"transposed": base_a.T, "reversed": base_a[::-1, ::-1].T,
         "strided": base_a[::2, :].T}[view]
    b = rand((a.shape[1],), dtypes.bfloat16, rng)
    prog = program([("multiply", ["in0", "in1"]), ("cos", ["%0"])], [np.float32, dtypes.bfloat16])
    check([a, b], prog)


def test_many_dims_loop_outside_the_kernel(rng):
    a = rand((2, 3, 4, 5, 6), np.float32, rng)
    b = rand((3, 1, 5, 1), np.float32, rng)
    prog = program([("subtract", ["in0", "in1"]), ("multiply", ["%0", "%0"])],
                   [np.float32, np.float32])
    check([a, b], prog)


def test_scalar_operand_and_unused_operand_still_broadcast(rng):
    s = np.asarray(1.5, np.float32)
    big = rand((5, 7), np.float32, rng)
    prog = program([("exp", ["in0"]), ("add", ["%0", 1.0])], [np.float32, np.float32])
    got = check([s, big], prog)                  # output reads only the 0-d operand
    assert got.shape == (5, 7) and np.all(got == got[0, 0])


def test_parallel_path_above_the_serial_limit(rng):
    x = rand((300, 257), np.float32, rng)       # 77100 elements: the prange driver
    assert x.size >= cpu_fused.PARALLEL_MIN_ELEMENTS
    check([x, x[0]], program(CHAIN + [("add", ["%3", "in1"])], [np.float32, np.float32]))


def test_output_need_not_be_the_last_step_and_dead_steps_are_skipped(rng):
    x = rand((129,), np.float32, rng)
    prog = program([("exp", ["in0"]), ("add", ["%0", 1.0]), ("log", ["in0"])], [np.float32],
                   output=1)
    check([x], prog)


def test_out_and_in_place(rng):
    x = rand((7, 33), np.float32, rng)
    prog = program(CHAIN, [np.float32])
    want = fused([x], prog)
    out = np.full((7, 33), np.nan, np.float32)
    assert fused([x], prog, out=out) is out
    np.testing.assert_array_equal(out, want)
    inplace = x.copy()
    fused([inplace], prog, out=inplace)
    np.testing.assert_array_equal(inplace, want)


def test_compiles_once_per_program_dtypes_and_layout(rng):
    prog = program([("multiply", ["in0", 1.25]), ("sqrt", ["%0"]), ("add", ["%1", "in0"])],
                   [np.float64])
    x = rand((129,), np.float64, rng, positive=True)
    fused([x], prog)
    before, modules = compile_stats(), len(cpu_fused.GENERATED)
    for _ in range(3):
        check([rand((7, 129), np.float64, rng, positive=True)], prog)
    assert compile_stats() == before and len(cpu_fused.GENERATED) == modules
    # A new layout mode (a broadcast inner dim) builds one more kernel, once.
    fused([rand((9, 1), np.float64, rng, positive=True)[:, [0] * 5]], prog)
    assert len(cpu_fused.GENERATED) == modules + 1


# --- the op's rules ----------------------------------------------------------------------------

def test_registration_meta_and_cost():
    assert OPDEF.vjp == NON_DIFFERENTIABLE and OPDEF.family == "fused"
    assert kernels("fused_elementwise", "cpu")
    prog = program(CHAIN, [np.float32])
    m = base.Meta((7, 129), np.dtype(np.float32))
    out = OPDEF.meta((m, base.Meta((129,), np.dtype(np.float32))), program=prog)
    assert out == base.Meta((7, 129), np.dtype(np.float32))
    flops, nbytes = OPDEF.cost((m,), out=m, program=prog)
    per_step = [get_op(s.op).cost(m, m, out=m)[0] for s in prog.steps]
    assert flops == sum(per_step) and nbytes == 2 * m.nbytes
    assert "%1 = multiply(%0, 2.0) : float32" in str(prog)


def _bad(steps: tuple, output: int = 0) -> Program:
    return Program(steps, output)


ERRORS = [
    ("unknown op", _bad((Step("frobnicate", (("in", 0),), (), "float32"),)), ArgumentError,
     "not a registered op"),
    ("not elementwise", _bad((Step("softmax", (("in", 0),), (("axis", -1),), "float32"),)),
     ArgumentError, "softmax' is a softmax op"),
    ("ref out of range", _bad((Step("exp", (("in", 3),), (), "float32"),)), ArgumentError,
     "out of range"),
    ("forward step ref", _bad((Step("exp", (("step", 0),), (), "float32"),)), ArgumentError,
     "only earlier steps"),
    ("arity", _bad((Step("add", (("in", 0),), (), "float32"),)), ArgumentError, "1 args"),
    ("wrong dtype", _bad((Step("exp", (("in", 0),), (), "float16"),)), DTypeError,
     "declares dtype 'float16'"),
    ("op's own meta", _bad((Step("exp", (("in", 1),), (), "int32"),)), DTypeError,
     r"step 0 \(exp\).*int32"),
    ("const too big", _bad((Step("add", (("in", 1), ("const", 300)), (), "int32"),)),
     None, None),
    ("bad output", _bad((Step("exp", (("in", 0),), (), "float32"),), output=2), ArgumentError,
     "not a step index"),
    ("unknown attr", _bad((Step("exp", (("in", 0),), (("axis", 0),), "float32"),)),
     ArgumentError, "unknown attribute"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_malformed_programs_raise_clear_errors(case, rng):
    _, prog, cls, match = case
    x, n = rand((4,), np.float32, rng), np.arange(4, dtype=np.int32)
    if cls is None:              # 300 fits int32: valid; the same const on int8 is not
        assert fused([x, n], prog).dtype == np.int32
        prog = _bad((Step("add", (("in", 1), ("const", 300)), (), "int8"),))
        n, cls, match = n.astype(np.int8), DTypeError, "300 does not fit int8"
    with pytest.raises(cls, match=match) as info:
        fused([x, n], prog)
    assert "tsol.fused_elementwise" in str(info.value)


def test_shape_and_argument_errors(rng):
    prog = program([("add", ["in0", "in1"])], [np.float32, np.float32])
    with pytest.raises(ShapeError, match=r"fused_elementwise: shapes \(3,\) and \(4,\)"):
        fused([rand((3,), np.float32, rng), rand((4,), np.float32, rng)], prog)
    with pytest.raises(ArgumentError, match="not a Program"):
        fused([rand((3,), np.float32, rng)], "add")
    with pytest.raises(ArgumentError, match="list of arrays"):
        base.call(OPDEF, (rand((3,), np.float32, rng),), {"program": prog})


def test_integer_power_rejects_negative_exponents_like_power():
    prog = program([("power", ["in0", "in1"])], [np.int32, np.int32])
    base_ = np.array([2, 3], np.int32)
    np.testing.assert_array_equal(fused([base_, np.array([3, 2], np.int32)], prog), [8, 9])
    with pytest.raises(ArgumentError, match="negative"):
        fused([base_, np.array([1, -1], np.int32)], prog)
    with pytest.raises(ArgumentError, match="negative integer powers"):
        fused([base_], program([("power", ["in0", -2])], [np.int32]))


def test_errors_are_tsol_errors():
    with pytest.raises(TSOLError):
        fused([np.ones(3, np.float32)], Program((), 0))
