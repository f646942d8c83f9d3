"""The registry's completeness, the public namespaces, and the errors of the shared call path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tsol
from tsol import op
from tsol.registry import NON_DIFFERENTIABLE, OPS, coverage, kernels

OP_NAMES = sorted(OPS)


def test_issue_ops_are_defined():
    wanted = """neg abs exp log sqrt rsqrt sin cos tanh sigmoid relu gelu silu add subtract
    multiply divide power maximum minimum equal not_equal less less_equal greater greater_equal
    where clip astype sum mean max min prod var std argmax argmin logsumexp softmax log_softmax
    layernorm rmsnorm""".split()
    assert not sorted(set(wanted) - set(OPS))


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_definition_is_complete(name):
    d = OPS[name]
    assert callable(d.meta), f"{name} has no meta rule"
    assert callable(d.reference), f"{name} has no float64 reference"
    assert callable(d.vjp) or d.vjp == NON_DIFFERENTIABLE, f"{name} has no VJP rule or mark"
    assert callable(d.cost), f"{name} has no cost rule"
    assert ">>>" in d.doc, f"{name}'s docstring has no example"
    assert kernels(name, "cpu"), f"{name} has no CPU kernel"


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_is_public_under_both_names(name):
    assert getattr(tsol, name) is getattr(op, name)
    assert getattr(tsol, name).__doc__ == OPS[name].doc or getattr(tsol, name).__doc__


def test_coverage_table_lists_every_op(capsys):
    table = coverage()
    printed = capsys.readouterr().out
    assert set(table) == set(OPS)
    for name in OPS:
        assert name in printed and table[name]["cpu"]


def test_import_loads_no_compiler_or_gpu_stack():
    code = ("import sys, tsol; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('numba', 'cupy', 'dpnp', 'dpctl', 'torch', 'llvmlite')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_second_process_reuses_compiled_kernels(tmp_path):
    code = ("import numpy as np, tsol, json; from tsol.kernels.cpu.jit import compile_stats\n"
            "x = np.ones((3, 5), np.float32)\n"
            "tsol.softmax(x); tsol.add(x, 1.0); tsol.sum(x, axis=0)\n"
            "print(json.dumps(compile_stats()))")
    env = dict(os.environ, TSOL_CACHE_DIR=str(tmp_path))
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["cache_misses"] > 0
    assert runs[1]["cache_misses"] == 0 and runs[1]["cache_hits"] > 0


# -- errors of the shared call path ------------------------------------------------------------

class _FakeGPUArray:
    """Looks like a CuPy array to the backend lookup, without CuPy."""

    shape, dtype = (3,), np.dtype(np.float32)


_FakeGPUArray.__module__ = "cupy._core.core"


def test_mixed_backends_raise_backend_error():
    with pytest.raises(tsol.BackendError, match=r"tsol\.add.*different backends"):
        tsol.add(np.ones(3, np.float32), _FakeGPUArray())


def test_non_array_operand_names_the_fix():
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.exp: operand of type list.*np\.asarray"):
        tsol.exp([1.0, 2.0])


def test_unknown_keyword_shows_the_signature():
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.softmax: .*Fix: call it as"):
        tsol.softmax(np.ones(3, np.float32), dim=0)


def test_out_must_be_writeable_and_right():
    x = np.ones(4, np.float32)
    ro = np.empty(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(tsol.ArgumentError, match="read-only"):
        tsol.exp(x, out=ro)
    with pytest.raises(tsol.ShapeError, match=r"out= is float32\[5\]"):
        tsol.exp(x, out=np.empty(5, np.float32))
    with pytest.raises(tsol.DTypeError, match=r"out= is float64\[4\]"):
        tsol.exp(x, out=np.empty(4, np.float64))


def test_out_that_overlaps_an_operand_gets_the_right_answer():
    x = np.arange(10, dtype=np.float64)
    want = x[:-1] + x[1:]
    tsol.add(x[:-1], x[1:], out=x[1:])
    np.testing.assert_array_equal(x[1:], want)


def test_non_contiguous_out_is_filled():
    x = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = np.full((4, 3), np.nan, np.float32).T
    tsol.exp(x, out=out)
    np.testing.assert_allclose(out, np.exp(x), rtol=2e-6)
