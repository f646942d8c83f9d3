"""Run benchmark cases: check each result against the float64 reference, then time it."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterable

import numpy as np

import tsol
from tsol import backends
from tsol.dtypes import TOLERANCES
from tsol.ops.base import bind, meta_of, select
from tsol.registry import get_op

from tsol.bench.baselines import BASELINES
from tsol.bench.cases import Case

SCHEMA_VERSION = 1


def time_call(fn: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], *,
              min_time: float = 0.4, min_repeats: int = 5, max_repeats: int = 50,
              warmup: int = 2) -> dict[str, float]:
    """Median, p95 and coefficient of variation of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_repeats or (time.perf_counter() - start < min_time
                                         and len(samples) < max_repeats):
        samples.append(timer(fn))
    samples.sort()
    mean = statistics.fmean(samples)
    return {"median_s": statistics.median(samples),
            "p95_s": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
            "cv": statistics.pstdev(samples) / mean if mean else 0.0, "repeats": len(samples)}


def _max_err(got: Any, ref: np.ndarray) -> float:
    g = np.asarray(got).astype(np.float64)
    if g.shape != ref.shape:
        return float("inf")
    diff = np.abs(g - ref)
    both_nan = np.isnan(g) & np.isnan(ref)
    return float(np.max(np.where(both_nan, 0.0, diff), initial=0.0))


def check(case: Case, got: Any, base: Any, ref: np.ndarray) -> tuple[bool, str]:
    """A result passes when it is no less accurate than the baseline's (or within tolerance)."""
    err = _max_err(got, ref)
    if np.isnan(err):
        return False, "NaN in result"
    rtol, atol = TOLERANCES.get(tsol.dtypes.dtype(case.dtype), (0.0, 0.0))
    bound = atol * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    if base is not None:
        bound = max(bound, 4.0 * _max_err(base, ref))
    return err <= bound, f"max error {err:.3g} (bound {bound:.3g})"


def full_attrs(op: str, inputs: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every attribute of the call, defaults filled and normalized, as references expect."""
    opdef = get_op(op)
    operands, attrs, _ = bind(opdef, inputs, kwargs)
    if opdef.normalize is not None:
        attrs = opdef.normalize([meta_of(o) for o in operands], **attrs)
    return attrs


def reference(op: str, inputs: list[Any], kwargs: dict[str, Any]) -> np.ndarray:
    """The op's float64 reference on float64 copies of ``inputs``."""
    attrs = full_attrs(op, inputs, kwargs)
    return np.asarray(get_op(op).reference(*[x.astype(np.float64) for x in inputs], **attrs))


def run_case(case: Case, backend: str = "cpu", quick: bool = False,
             rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One result row; a failed correctness check gives a row with ``ok=False`` and no time."""
    rng = rng or np.random.default_rng(0)
    b = backends.get(backend)
    inputs = case.make_inputs(rng, quick)
    kwargs = case.kwargs
    fn = getattr(tsol, case.op)
    opdef = get_op(case.op)
    got = fn(*inputs, **kwargs)
    ref = reference(case.op, inputs, kwargs)
    attrs = full_attrs(case.op, inputs, kwargs)
    baseline_fns = {name: BASELINES[name][case.op] for name in case.baselines
                    if case.op in BASELINES.get(name, {})}
    base_out = {name: f(*inputs, **kwargs) for name, f in baseline_fns.items()}
    ok, detail = check(case, got, base_out.get("numpy"), ref)
    metas = [meta_of(x) for x in inputs]
    chosen = select(opdef, backend, metas, attrs)
    flops, nbytes = opdef.cost(*metas, out=meta_of(got), **attrs)
    row: dict[str, Any] = {
        "case": case.id, "suite": case.suite, "op": case.op,
        "shape": list(inputs[0].shape), "dtype": case.dtype, "attrs": kwargs,
        "backend": backend, "device": b.device_key(), "ok": ok, "check": detail,
        "kernel": chosen[0].name if chosen else "decomposition",
        "config": repr(chosen[1]) if chosen else "", "flops": flops, "bytes": nbytes,
    }
    if not ok:
        return row
    timer = b.timer()
    row.update(time_call(lambda: fn(*inputs, **kwargs), timer))
    row["GBps"] = nbytes / row["median_s"] / 1e9
    row["GFLOPs"] = flops / row["median_s"] / 1e9
    ceilings = b.ceilings()
    if "copy_GBps" in ceilings:
        row["pct_copy_bw"] = 100 * row["GBps"] / ceilings["copy_GBps"]
    row["baselines"] = {}
    for name, f in baseline_fns.items():
        t = time_call(lambda: f(*inputs, **kwargs), timer)
        row["baselines"][name] = {"median_s": t["median_s"],
                                  "speedup": t["median_s"] / row["median_s"]}
    return row


def run(cases: Iterable[Case], backend: str = "cpu", quick: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Run ``cases`` and return the results document (schema in bench/README.md)."""
    import numba
    cases = list(cases)
    rows = []
    for i, case in enumerate(cases, 1):
        if progress:
            print(f"\r[{i}/{len(cases)}] {case.id:<60}", end="", file=sys.stderr, flush=True)
        rows.append(run_case(case, backend, quick))
    if progress:
        print(file=sys.stderr)
    return {"schema_version": SCHEMA_VERSION, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "device": backends.get(backend).device_key(), "backend": backend, "quick": quick,
            "platform": platform.platform(),
            "versions": {"tsol": tsol.__version__, "numpy": np.__version__,
                         "numba": numba.__version__, "python": platform.python_version()},
            "rows": rows}


def markdown_table(doc: dict[str, Any]) -> str:
    """The results as a Markdown table: one row per case, speedup against each baseline."""
    lines = ["| case | kernel | median ms | GB/s | NumPy ms | speedup vs NumPy |",
             "|---|---|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        if not r["ok"]:
            lines.append(f"| {r['case']} | {r['kernel']} | FAILED: {r['check']} | | | |")
            continue
        base = r["baselines"].get("numpy")
        lines.append(f"| {r['case']} | {r['kernel']} | {r['median_s'] * 1e3:.2f} | "
                     f"{r['GBps']:.1f} | {base['median_s'] * 1e3:.2f} | "
                     f"{base['speedup']:.2f}x |" if base else
                     f"| {r['case']} | {r['kernel']} | {r['median_s'] * 1e3:.2f} | "
                     f"{r['GBps']:.1f} | | |")
    return "\n".join(lines)
