"""pytest-benchmark view of the case table: ``pytest bench/ --benchmark-only``."""

import numpy as np
import pytest
from tsol.bench.baselines import BASELINES
from tsol.bench.cases import CASES
from tsol.bench.runner import check, reference

import tsol

CPU_CASES = [c for c in CASES if c.runs_on("cpu")]


@pytest.mark.parametrize("case", CPU_CASES, ids=[c.id for c in CPU_CASES])
@pytest.mark.parametrize("impl", ["tsol", "numpy"])
def test_case(benchmark, case, impl):
    args, kwargs = case.call_args(case.make_inputs(np.random.default_rng(0)))
    fn = getattr(tsol, case.op) if impl == "tsol" else BASELINES[impl][case.op]
    got = fn(*args, **kwargs)
    if impl == "tsol":
        ref = reference(case.op, args, kwargs)
        base = BASELINES["numpy"][case.op](*args, **kwargs)
        ok, detail = check(case, got, base, ref)
        assert ok, detail
    benchmark.group = case.id
    benchmark(fn, *args, **kwargs)
