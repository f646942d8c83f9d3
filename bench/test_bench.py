"""pytest-benchmark view of the case table: ``pytest bench/ --benchmark-only``."""

import numpy as np
import pytest

import tsol
from tsol.bench.baselines import BASELINES
from tsol.bench.cases import CASES
from tsol.bench.runner import check, reference


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("impl", ["tsol", "numpy"])
def test_case(benchmark, case, impl):
    inputs = case.make_inputs(np.random.default_rng(0))
    fn = getattr(tsol, case.op) if impl == "tsol" else BASELINES[impl][case.op]
    got = fn(*inputs, **case.kwargs)
    if impl == "tsol":
        ref = reference(case.op, inputs, case.kwargs)
        base = BASELINES["numpy"][case.op](*inputs, **case.kwargs)
        ok, detail = check(case, got, base, ref)
        assert ok, detail
    benchmark.group = case.id
    benchmark(fn, *inputs, **case.kwargs)
