"""fused_reduction on the CPU against its float64 reference (the program's reference, the
reduction's, then the epilogue's) and against the unfused ops: every reduction, softmax and
norm, odd row lengths across the work-item size, float dtypes, broadcast and strided operands,
reductions over several or all axes, epilogues over row ops and folds (broadcast, strided and
0-d extras, another result dtype), empty and 0-d values, special values, determinism across
thread counts, errors and cost.

``TABLE`` is the one table of cases; ``tests/cuda/test_fused_reduction.py`` runs it too, at the
simulator's sizes. Outputs are NaN-poisoned by the session fixture, so an element the kernel
skips fails. The cases share a few programs so that each generated kernel compiles once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numba
import numpy as np
import pytest

import tsol
from tests.ops.test_fused import program
from tests.support import TOLERANCES, assert_close, rand, to64
from tsol import dtypes
from tsol.errors import ArgumentError, AxisError, DTypeError, ShapeError
from tsol.kernels.cpu import fused_reduction as cpu_kernel
from tsol.kernels.cpu import reduction as cpu_reduction
from tsol.ops.base import meta_of
from tsol.ops.fused import Program
from tsol.registry import NON_DIFFERENTIABLE, get_op

OPDEF = get_op("fused_reduction")
FOLDS = ("sum", "mean", "max", "min")
ROW_OPS = ("softmax", "log_softmax", "layernorm", "rmsnorm")
REDUCES = FOLDS + ROW_OPS

# exp(x - m) * w: x a full operand, m a per-row column, w a row vector.
WEIGHTED = [("subtract", ["in0", "in1"]), ("exp", ["%0"]), ("multiply", ["%1", "in2"])]
SQUARE = [("multiply", ["in0", "in0"])]
# Epilogues over the result r = in0: gelu(r * w + b) with w, b along the row (a norm's
# affine step and an activation); tanh(r / 4) * s with s one value a result element.
ROW_AFFINE = [("multiply", ["in0", "in1"]), ("add", ["%0", "in2"]), ("gelu", ["%1"])]
FOLD_SQUASH = [("multiply", ["in0", 0.25]), ("tanh", ["%0"]), ("multiply", ["%1", "in1"])]
POSITIVE = [("greater", ["in0", 0.0])]

F32_WEIGHTED = program(WEIGHTED, [np.float32] * 3)
F32_SQUARE = program(SQUARE, [np.float32])
F32_ROW_AFFINE = program(ROW_AFFINE, [np.float32] * 3)
F32_FOLD_SQUASH = program(FOLD_SQUASH, [np.float32] * 2)

Size = Callable[[int, int], int]
"""``size(tiny, real)``: the CUDA simulator's tiny sizes, else real ones (the CPU's)."""
Operands = tuple[list[np.ndarray], list[np.ndarray]]


def real_size(tiny: int, real: int) -> int:
    return real


def weighted_operands(shape: tuple[int, ...], dt: Any, rng: np.random.Generator) -> list:
    x = rand(shape, dt, rng, low=-2.0, high=2.0)
    m = rand(shape[:-1] + (1,), dt, rng, low=-1.0, high=1.0)
    w = rand(shape[-1:], dt, rng)
    return [x, m, w]


def weighted(rows: tuple[int, int], n: tuple[int, int], dt: Any = np.float32
             ) -> Callable[[np.random.Generator, Size], Operands]:
    """Operands of WEIGHTED for (rows, n), each given as (tiny, real)."""
    return lambda rng, size: (weighted_operands((size(*rows), size(*n)), dt, rng), [])


def strided(rng: np.random.Generator, size: Size) -> Operands:
    # x strided along the row and transposed across rows, m broadcast along the leading dim,
    # w a 0-d operand: the modes s, c and b in one kernel, row offsets over two kept dims.
    base = rand((size(33, 65), 2, 3), np.float32, rng, low=-2.0, high=2.0)
    x = base.transpose(1, 2, 0)[..., ::2]                      # (2, 3, 17 or 33)
    m = rand((3, x.shape[-1]), np.float32, rng, low=-1.0, high=1.0)
    return [x, m, np.asarray(rand((), np.float32, rng))], []


def not_one_run(rng: np.random.Generator, size: Size) -> Operands:
    # Over the last two axes m (3, 1) broadcast along 17 is not one run: it is read as a copy.
    x = rand((2, 3, 17), np.float32, rng)
    return [x, rand((3, 1), np.float32, rng), rand((17,), np.float32, rng)], []


def special(rng: np.random.Generator, size: Size) -> Operands:
    # Rows with NaN, +inf and only -inf: softmax and log_softmax follow scipy, max lets a NaN
    # win, sum gives inf/NaN as NumPy does, a norm's row becomes NaN.
    x = rand((5, 9), np.float64, rng)
    x[0, 3], x[1, 2], x[2, :], x[3, 4] = np.nan, np.inf, -np.inf, -np.inf
    return [x], []


def row_affine(rng: np.random.Generator, size: Size) -> Operands:
    arrays = weighted_operands((size(3, 5), size(37, 129)), np.float32, rng)
    n = arrays[0].shape[-1]
    return arrays, [rand((n,), np.float32, rng, low=-1.0, high=1.0) for _ in range(2)]


def row_affine_views(rng: np.random.Generator, size: Size) -> Operands:
    # A 3-d value; the epilogue's w strided along the row, b 0-d: modes s and b.
    x = rand((2, 3, size(9, 33)), np.float32, rng, low=-2.0, high=2.0)
    n = x.shape[-1]
    w = rand((2 * n,), np.float32, rng, low=-1.0, high=1.0)[::2]
    return [x], [w, np.asarray(rand((), np.float32, rng))]


def fold_squash(rng: np.random.Generator, size: Size) -> Operands:
    arrays = weighted_operands((size(3, 5), size(37, 4099)), np.float32, rng)
    return arrays, [rand((arrays[0].shape[0],), np.float32, rng, low=-1.0, high=1.0)]


def fold_squash_keepdims(rng: np.random.Generator, size: Size) -> Operands:
    arrays, _ = not_one_run(rng, size)
    return arrays, [rand((2, 1, 1), np.float32, rng, low=-1.0, high=1.0)]


def fold_squash_0d(rng: np.random.Generator, size: Size) -> Operands:
    x = rand((4, 5, 3), np.float32, rng)
    return [x], [np.asarray(rand((), np.float32, rng))]


def half_affine(rng: np.random.Generator, size: Size) -> Operands:
    # bfloat16 values, float32 extras: the epilogue's value and the result are float32.
    x = rand((3, size(17, 129)), dtypes.bfloat16, rng)
    n = x.shape[-1]
    return [x], [rand((n,), np.float32, rng, low=-1.0, high=1.0) for _ in range(2)]


class Case(NamedTuple):
    """One row of the table: operands ``make(rng, size) -> (arrays, extras)``, the program,
    the reductions to run, their axis and keepdims, and the epilogue (None: none)."""

    id: str
    make: Callable[[np.random.Generator, Size], Operands]
    prog: Program
    reduces: Sequence[str]
    axis: Any = -1
    keepdims: bool = False
    epilogue: Program | None = None


def _dtype_cases() -> list[Case]:
    out = []
    for dt in (dtypes.float64, dtypes.float16, dtypes.bfloat16):
        out.append(Case(f"dtype-{np.dtype(dt)}", weighted((3, 3), (33, 1031), dt),
                        program(WEIGHTED, [dt] * 3), ("mean", "min", "log_softmax", "layernorm")))
    return out


TABLE = [
    Case("every-reduction", weighted((5, 7), (37, 4099)), F32_WEIGHTED, REDUCES),
    # n = 1 and 7: one thread a row on cuda; 129: a group of threads; 1031 several warps;
    # on the CPU 4099 is past the 4096-element work item (two partials a row).
    *[Case(f"rows-n{n}", weighted((3, 300), (n, n)), F32_WEIGHTED,
           ("sum", "max", "softmax", "layernorm")) for n in (1, 7, 129)],
    Case("long-rows", weighted((2, 2), (1031, 4099)), F32_WEIGHTED,
         ("sum", "log_softmax", "rmsnorm")),
    *_dtype_cases(),
    Case("half-to-float32", lambda rng, size: ([rand((4, 33), np.float16, rng),
                                                rand((33,), np.float32, rng)], []),
         program(SQUARE + [("multiply", ["%0", "in1"])], [np.float16, np.float32]),
         ("mean", "rmsnorm")),
    Case("broadcast-strided", strided, F32_WEIGHTED, ("sum", "min", "softmax", "layernorm")),
    Case("two-axes", not_one_run, F32_WEIGHTED, ("sum", "mean", "max"), (1, 2)),
    Case("two-axes-keepdims", not_one_run, F32_WEIGHTED, ("sum", "max"), (-2, -1), True),
    Case("all-axes", lambda rng, size: ([rand((5, 33, 3), np.float32, rng)], []), F32_SQUARE,
         ("mean", "min"), None, True),
    Case("0d", lambda rng, size: ([np.asarray(rand((), np.float32, rng))], []), F32_SQUARE,
         ("sum", "max"), None),
    Case("special-values", special, program([("multiply", ["in0", 2.0])], [np.float64]),
         REDUCES),
    Case("epilogue-rows", row_affine, F32_WEIGHTED, ROW_OPS, epilogue=F32_ROW_AFFINE),
    Case("epilogue-row-views", row_affine_views, F32_SQUARE, ("softmax", "rmsnorm"),
         epilogue=F32_ROW_AFFINE),
    Case("epilogue-folds", fold_squash, F32_WEIGHTED, FOLDS, epilogue=F32_FOLD_SQUASH),
    Case("epilogue-keepdims", fold_squash_keepdims, F32_WEIGHTED, ("sum", "max"), (1, 2), True,
         F32_FOLD_SQUASH),
    Case("epilogue-0d", fold_squash_0d, F32_SQUARE, ("mean",), None,
         epilogue=F32_FOLD_SQUASH),
    Case("epilogue-bfloat16", half_affine, program(SQUARE, [dtypes.bfloat16]),
         ("layernorm", "softmax"), epilogue=program(ROW_AFFINE, [dtypes.bfloat16, np.float32,
                                                             np.float32])),
    Case("epilogue-to-bool", weighted((3, 4), (9, 33)), F32_WEIGHTED, ("sum", "log_softmax"),
         epilogue=program(POSITIVE, [np.float32])),
]


# --- what both backends check ----------------------------------------------------------------

def attrs_of(arrays: Sequence[Any], extras: Sequence[Any], prog: Program, reduce: str,
             axis: Any, keepdims: bool = False, epilogue: Program | None = None
             ) -> dict[str, Any]:
    """The op's normalized attributes of a call (eps 1e-5 for the norms)."""
    metas = (tuple(meta_of(a) for a in arrays), tuple(meta_of(e) for e in extras))
    return OPDEF.normalize(metas, program=prog, reduce=reduce, axis=axis, keepdims=keepdims,
                           eps=1e-5 if reduce in ("layernorm", "rmsnorm") else None,
                           epilogue=epilogue)


def error_scale(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: tuple) -> float:
    """What rounding errors are relative to: the sum of the magnitudes a sum adds (per element
    for a mean); for softmax the largest value, whose rounding moves every exp(v - max); 1 for
    the norms. The table's epilogues do not grow errors (slopes within 1 on extras in [-1, 1])."""
    v = np.abs(get_op("fused_elementwise").reference([to64(a) for a in arrays], program=prog))
    if v.size == 0 or reduce in ("max", "min", "layernorm", "rmsnorm"):
        return 1.0
    if reduce in ("softmax", "log_softmax"):
        return max(1.0, float(np.nanmax(np.where(np.isinf(v), 0.0, v))))
    total = v.sum(axis=axis) if v.ndim else v
    n = v.size // max(1, np.size(total))
    return max(1.0, float(np.nanmax(np.where(np.isinf(total), 0.0, total))) /
               (n if reduce == "mean" else 1))


def compare(got: Any, unfused: Any, arrays: Sequence[np.ndarray], extras: Sequence[np.ndarray],
            attrs: dict[str, Any], what: str) -> None:
    """``got`` against the float64 reference and the unfused ops' ``unfused``."""
    metas = (tuple(meta_of(a) for a in arrays), tuple(meta_of(e) for e in extras))
    dt = OPDEF.meta(*metas, **attrs).dtype
    with np.errstate(invalid="ignore"):        # inf - inf in the norms' references
        want = OPDEF.reference([to64(a) for a in arrays], [to64(e) for e in extras], **attrs)
    assert got.dtype == dt and got.shape == np.shape(want), what
    scale = error_scale(arrays, attrs["program"], attrs["reduce"], attrs["axis"])
    assert_close(got, want, dt, scale=scale, what=f"{what} vs reference")
    # The unfused ops round the reduction's result to the value's dtype before the epilogue.
    vdt = np.dtype(attrs["program"].steps[attrs["program"].output].dtype)
    coarse = max((dt, vdt), key=lambda d: TOLERANCES.get(d, (0.0,))[0])
    assert_close(got, unfused, coarse, scale=scale, rtol_mult=2, what=f"{what} vs unfused")


def run_case(case: Case, rng: np.random.Generator, size: Size, check: Callable[..., Any]) -> None:
    """Every reduction of ``case`` by a backend's ``check(arrays, extras, prog, reduce, axis,
    keepdims, epilogue)``."""
    arrays, extras = case.make(rng, size)
    for reduce in case.reduces:
        check(arrays, extras, case.prog, reduce, case.axis, case.keepdims, case.epilogue)


def unfused(arrays: Sequence[Any], extras: Sequence[Any], attrs: dict[str, Any]) -> Any:
    """The value, the reduction and the epilogue run by the public ops one after another."""
    return OPDEF.decomposition(tuple(arrays), tuple(extras) or None, **attrs)


# --- the CPU ---------------------------------------------------------------------------------

def reduced(arrays: Sequence[np.ndarray], prog: Any, reduce: str, axis: Any,
            keepdims: bool = False, **kw: Any) -> np.ndarray:
    return tsol.fused_reduction(list(arrays), program=prog, reduce=reduce, axis=axis,
                                keepdims=keepdims, **kw)


def check(arrays: Sequence[np.ndarray], extras: Sequence[np.ndarray], prog: Program,
          reduce: str, axis: Any, keepdims: bool = False,
          epilogue: Program | None = None) -> np.ndarray:
    """The fused result against the float64 reference and the unfused ops."""
    attrs = attrs_of(arrays, extras, prog, reduce, axis, keepdims, epilogue)
    got = tsol.fused_reduction(list(arrays), list(extras) or None, **attrs)
    compare(got, unfused(arrays, extras, attrs), arrays, extras, attrs, f"fused {reduce}")
    return got


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_table(case, rng):
    run_case(case, rng, real_size, check)


def test_empty_values(rng):
    rows0 = np.empty((0, 5), np.float32)
    for reduce in REDUCES:
        eps = 1e-5 if reduce in ("layernorm", "rmsnorm") else None
        assert reduced([rows0], F32_SQUARE, reduce, -1, eps=eps).shape == (
            (0,) if reduce in FOLDS else (0, 5))
    cols0 = np.empty((3, 0), np.float32)
    np.testing.assert_array_equal(reduced([cols0], F32_SQUARE, "sum", -1), np.zeros(3, np.float32))
    assert np.isnan(reduced([cols0], F32_SQUARE, "mean", -1)).all()
    assert reduced([cols0], F32_SQUARE, "softmax", -1).shape == (3, 0)
    assert reduced([cols0], F32_SQUARE, "layernorm", -1, eps=0.0).shape == (3, 0)
    # An empty sum is 0, and the epilogue still runs on it: tanh(0 / 4) * s = 0.
    s = rand((3,), np.float32, rng)
    got = reduced([cols0], F32_SQUARE, "sum", -1, extras=[s], epilogue=F32_FOLD_SQUASH)
    np.testing.assert_array_equal(got, np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match=r"tsol\.fused_reduction: zero-size.*maximum"):
        reduced([cols0], F32_SQUARE, "max", -1)


def test_program_none_is_the_identity(rng):
    x = rand((4, 9), np.float32, rng)
    got = tsol.fused_reduction([x], reduce="rmsnorm", axis=-1, eps=1e-6)
    assert_close(got, tsol.rmsnorm(x), np.float32)
    with pytest.raises(ArgumentError, match=r"program=None \(the identity\) takes one operand"):
        tsol.fused_reduction([x, x], reduce="sum", axis=-1)


def test_bitwise_same_for_any_thread_count(rng, monkeypatch):
    # Split even small inputs over threads: the items of a row land on different threads.
    monkeypatch.setattr(cpu_reduction, "THREAD_MIN_ELEMENTS", 1)
    arrays = weighted_operands((16, 4099), np.float32, rng)
    extras = [rand((16,), np.float32, rng)]
    saved = numba.get_num_threads()
    try:
        for reduce, epilogue in (("sum", F32_FOLD_SQUASH), ("softmax", None),
                                 ("layernorm", None)):
            results = []
            for threads in (1, 2, 2):
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                results.append(tsol.fused_reduction(
                    arrays, extras if epilogue else None, program=F32_WEIGHTED, reduce=reduce,
                    axis=-1, eps=1e-5 if reduce == "layernorm" else None, epilogue=epilogue))
            for r in results[1:]:
                assert r.tobytes() == results[0].tobytes(), reduce
    finally:
        numba.set_num_threads(saved)


def test_compiles_once_per_program_and_layout(rng):
    arrays = weighted_operands((3, 7), np.float32, rng)
    reduced(arrays, F32_WEIGHTED, "sum", -1)
    before = len(cpu_kernel.GENERATED)
    for reduce in ("sum", "softmax", "rmsnorm"):
        reduced(weighted_operands((4, 9), np.float32, rng), F32_WEIGHTED, reduce, -1,
                eps=1e-6 if reduce == "rmsnorm" else None)
    assert len(cpu_kernel.GENERATED) == before


# --- errors, cost, registry ------------------------------------------------------------------

def test_errors_name_the_op_and_the_fix(rng):
    x = rand((3, 4), np.float32, rng)
    with pytest.raises(ArgumentError, match=r"fused_reduction: axis 0 of a 2-d value is not a run"):
        reduced([x], F32_SQUARE, "sum", 0)
    with pytest.raises(ArgumentError, match=r"softmax runs along the last axis"):
        reduced([x], F32_SQUARE, "softmax", 0)
    with pytest.raises(ArgumentError, match=r"keepdims=True does not apply"):
        reduced([x], F32_SQUARE, "log_softmax", -1, keepdims=True)
    with pytest.raises(ArgumentError, match=r"reduce='prod' is not supported"):
        reduced([x], F32_SQUARE, "prod", -1)
    with pytest.raises(AxisError, match=r"tsol\.fused_reduction: axis 2 is out of range"):
        reduced([x], F32_SQUARE, "sum", 2)
    pair = program([("multiply", ["in0", "in1"])], [np.float32] * 2)
    with pytest.raises(ShapeError, match=r"tsol\.fused_reduction: shapes"):
        reduced([x, rand((5,), np.float32, rng)], pair, "sum", -1)
    ints = program(SQUARE, [np.int32])
    with pytest.raises(DTypeError, match=r"tsol\.fused_reduction: the program's value is int32"):
        reduced([np.ones((3, 4), np.int32)], ints, "sum", -1)
    with pytest.raises(DTypeError, match=r"tsol\.fused_reduction: program: step 0"):
        reduced([x], ints, "sum", -1)          # declared int32 steps on float32 operands


def test_norm_and_epilogue_errors(rng):
    x = rand((3, 4), np.float32, rng)
    with pytest.raises(ArgumentError, match=r"layernorm needs eps, a finite non-negative"):
        reduced([x], F32_SQUARE, "layernorm", -1)
    with pytest.raises(ArgumentError, match=r"eps=0\.1 applies to layernorm and rmsnorm, not sum"):
        reduced([x], F32_SQUARE, "sum", -1, eps=0.1)
    s = rand((3,), np.float32, rng)
    with pytest.raises(ArgumentError, match=r"1 extras given without an epilogue"):
        reduced([x], F32_SQUARE, "sum", -1, extras=[s])
    with pytest.raises(ArgumentError, match=r"reads extras up to \('in', 1\).*takes 1 extras; "
                       r"got 0"):
        reduced([x], F32_SQUARE, "sum", -1, epilogue=F32_FOLD_SQUASH)
    with pytest.raises(ShapeError, match=r"extras \(4,\) do not broadcast to the sum result's "
                       r"shape \(3,\)"):
        reduced([x], F32_SQUARE, "sum", -1, extras=[rand((4,), np.float32, rng)],
                epilogue=F32_FOLD_SQUASH)
    bad = program(SQUARE, [np.int32])
    with pytest.raises(DTypeError, match=r"tsol\.fused_reduction: epilogue: step 0"):
        reduced([x], F32_SQUARE, "sum", -1, epilogue=bad)


def test_rules_cost_and_registry():
    metas = (tsol.ops.base.Meta((6, 10), np.dtype(np.float32)),)
    attrs = OPDEF.normalize((metas, None), program=F32_SQUARE, reduce="mean", axis=None,
                            keepdims=False)
    assert attrs["axis"] == (0, 1) and attrs["eps"] is None and attrs["epilogue"] is None
    out = OPDEF.meta(metas, None, **attrs)
    assert out.shape == () and out.dtype == np.float32
    flops, nbytes = OPDEF.cost(metas, None, out=out, **attrs)
    assert flops == 120.0 and nbytes == 240 + 4          # one multiply and one add an element
    s = (tsol.ops.base.Meta((6,), np.dtype(np.float32)),)
    attrs = OPDEF.normalize((metas, s), program=F32_SQUARE, reduce="sum", axis=-1,
                            epilogue=F32_FOLD_SQUASH)
    out = OPDEF.meta(metas, s, **attrs)
    assert out.shape == (6,) and out.dtype == np.float32
    flops, nbytes = OPDEF.cost(metas, s, out=out, **attrs)
    assert nbytes == 240 + 24 + 24 and flops > 120.0 + 3 * 6     # tanh costs more than 1
    assert OPDEF.vjp == NON_DIFFERENTIABLE and OPDEF.family == "fused_reduction"
    assert tsol.fused_reduction is tsol.op.fused_reduction
