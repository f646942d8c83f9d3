"""Run benchmark cases: check each result against the float64 reference, then time it."""

from __future__ import annotations

import functools
import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
from tsol.bench.baselines import DIFFERENT_STREAM, LIBRARIES
from tsol.bench.cases import Case

import tsol
from tsol import backends
from tsol.dtypes import TOLERANCES
from tsol.ops.base import bind, meta_of, select
from tsol.registry import get_op

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
    if base is not None and case.op not in DIFFERENT_STREAM:
        bound = max(bound, 4.0 * _max_err(base, ref))
    return err <= bound, f"max error {err:.3g} (bound {bound:.3g})"


def bound_call(op: str, args: list[Any], kwargs: dict[str, Any]
               ) -> tuple[list[Any], dict[str, Any]]:
    """(operands, attrs) of the call: every input in the op's order (None where not given) and
    every attribute with defaults filled and normalized, as references and costs expect."""
    opdef = get_op(op)
    operands, attrs, _ = bind(opdef, args, kwargs)
    if opdef.normalize is not None:
        attrs = opdef.normalize([None if o is None else meta_of(o) for o in operands], **attrs)
    return operands, attrs


def reference(op: str, args: list[Any], kwargs: dict[str, Any]) -> np.ndarray:
    """The op's float64 reference on float64 copies of the float inputs."""
    operands, attrs = bound_call(op, args, kwargs)
    wide = [o.astype(np.float64) if isinstance(o, np.ndarray) and tsol.dtypes.is_float(o.dtype)
            else o for o in operands]
    return np.asarray(get_op(op).reference(*wide, **attrs))


def peak_memory(fn: Callable[[], Any]) -> int:
    """Bytes of NumPy memory that one call of ``fn`` held at its peak (tracemalloc)."""
    import tracemalloc
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def map_arrays(fn: Callable[[np.ndarray], Any], x: Any) -> Any:
    """``x`` with ``fn`` applied to every NumPy array in it, inside lists, tuples and dict
    values too (a call's (args, kwargs), attributes such as rope's ``positions=``)."""
    if isinstance(x, np.ndarray):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(map_arrays(fn, e) for e in x)
    if isinstance(x, dict):
        return {k: map_arrays(fn, v) for k, v in x.items()}
    return x


def to_backend(x: Any, b: Any) -> Any:
    """``x`` (an array or a call's (args, kwargs)) with every host array as ``b``'s array
    (CuPy for cuda); scalars, and everything for cpu or a backend on host arrays, unchanged."""
    if b.name == "cpu" or b.host_arrays():
        return x
    return map_arrays(b.array_module().asarray, x)


def to_host(x: Any) -> Any:
    """A result as a NumPy array: CuPy bfloat16 comes back through its bits (CuPy's copy of an
    ml_dtypes array does not always know the dtype), torch bfloat16 as float32."""
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        if np.dtype(x.dtype) == tsol.bfloat16:
            return x.view(np.uint16).get().view(tsol.bfloat16)
        return x.get()
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().float().numpy() if str(x.dtype) == "torch.bfloat16" \
            else x.detach().cpu().numpy()
    return x


GPU_BASELINES = ("cupy", "torch")
"""The baseline libraries of every case on a GPU backend."""


class BaselineCall(NamedTuple):
    """One baseline of a case, ready to run: ``call()`` on its library's own arrays."""

    label: str
    """The library's name, plus ' (float16)' when it ran a bfloat16 case in float16."""
    call: Callable[[], Any]
    same_dtype: bool
    """Whether it ran in the case's dtype (only then is its error a yardstick)."""


def baseline_calls(case: Case, b: Any, args: list[Any], kwargs: dict[str, Any]
                   ) -> list[BaselineCall]:
    """The installed baselines of ``case`` on backend ``b``, each on copies of the host call
    ``(args, kwargs)`` as its library's arrays; a library that cannot take bfloat16 gets the
    bfloat16 arrays as float16."""
    dts: list[Any] = []
    map_arrays(lambda x: dts.append(x.dtype), (args, kwargs))
    as_f16 = map_arrays(lambda x: x.astype(np.float16) if x.dtype == tsol.bfloat16 else x,
                        (args, kwargs)) if tsol.bfloat16 in dts else None
    out = []
    for name in case.baselines if b.name == "cpu" else GPU_BASELINES:
        lib = LIBRARIES.get(name)
        if lib is None or case.op not in lib.table or not lib.installed():
            continue
        cast = as_f16 is not None and not lib.bfloat16
        a, kw = map_arrays(lib.array, as_f16 if cast else (args, kwargs))
        out.append(BaselineCall(f"{name} (float16)" if cast else name,
                                functools.partial(lib.table[case.op], *a, **kw), not cast))
    return out


GPU_BATCH = 10
"""On GPUs one timing covers this many back-to-back calls (divided out): the host enqueues the
next launch while the device runs the current one, so host overhead does not pad the kernel's
time (a single call between two events would include the host's time to launch it)."""


def _batched(timer: Callable[[Callable[[], Any]], float], n: int
             ) -> Callable[[Callable[[], Any]], float]:
    def time_batch(fn: Callable[[], Any]) -> float:
        return timer(lambda: [fn() for _ in range(n)]) / n
    return time_batch


def _kernel_name(chosen: Any) -> str:
    """The kernel that runs: a config naming a vendor hands the call to that candidate."""
    if not chosen:
        return "decomposition"
    vendor = chosen[1].asdict().get("vendor")
    return f"{chosen[0].name} -> {vendor}" if vendor else chosen[0].name


def run_case(case: Case, backend: str = "cpu", quick: bool = False,
             rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One result row; a failed correctness check gives a row with ``ok=False`` and no time."""
    rng = rng or np.random.default_rng(0)
    b = backends.get(backend)
    inputs = case.make_inputs(rng, quick)
    host_args, host_kwargs = case.call_args(inputs)
    args, kwargs = to_backend((host_args, host_kwargs), b)
    fn = getattr(tsol, case.op)
    opdef = get_op(case.op)
    got = to_host(fn(*args, **kwargs))
    ref = reference(case.op, host_args, host_kwargs)
    operands, attrs = bound_call(case.op, args, kwargs)
    # A baseline that fails is reported in its entry; it never fails the row.
    calls, failed, base_out = baseline_calls(case, b, host_args, host_kwargs), {}, {}
    for bc in calls:
        try:
            base_out[bc.label] = to_host(bc.call())
        except Exception as exc:  # noqa: BLE001
            failed[bc.label] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    yardstick = next((base_out[bc.label] for bc in calls
                      if bc.same_dtype and bc.label in base_out), None)
    ok, detail = check(case, got, yardstick, ref)
    metas = [None if o is None else meta_of(o) for o in operands]
    chosen = select(opdef, backend, metas, attrs)
    flops, nbytes = opdef.cost(*metas, out=meta_of(got), **attrs)
    row: dict[str, Any] = {
        "case": case.id_at(case.quick_shape) if quick and case.quick_shape else case.id,
        "suite": case.suite, "op": case.op,
        "shape": list(inputs[0].shape), "dtype": case.dtype, "attrs": case.kwargs,
        "backend": backend, "device": b.device_key(), "ok": ok, "check": detail,
        "kernel": _kernel_name(chosen),
        "config": repr(chosen[1]) if chosen else "", "flops": flops, "bytes": nbytes,
    }
    if not ok:
        return row
    timer = b.timer()
    if backend != "cpu":
        timer = _batched(timer, GPU_BATCH)
    row.update(time_call(lambda: fn(*args, **kwargs), timer))
    if backend == "cpu":
        row["peak_bytes"] = peak_memory(lambda: fn(*args, **kwargs))
    row["GBps"] = nbytes / row["median_s"] / 1e9
    row["GFLOPs"] = flops / row["median_s"] / 1e9
    ceilings = b.ceilings()
    if "copy_GBps" in ceilings:
        row["pct_copy_bw"] = 100 * row["GBps"] / ceilings["copy_GBps"]
    row["baselines"] = failed
    for bc in calls:
        if bc.label not in base_out:
            continue
        try:
            t = time_call(bc.call, timer)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory while timing
            row["baselines"][bc.label] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        entry = row["baselines"][bc.label] = {"median_s": t["median_s"],
                                              "speedup": t["median_s"] / row["median_s"]}
        if backend == "cpu":
            entry["peak_bytes"] = peak_memory(bc.call)
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
        try:
            rows.append(run_case(case, backend, quick))
        except Exception as exc:  # noqa: BLE001 - a broken case is a failure row, not a crash
            rows.append({"case": case.id, "suite": case.suite, "op": case.op, "ok": False,
                         "kernel": "-", "check": f"{type(exc).__name__}: {exc}"[:300]})
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
    gpu = any("peak_bytes" not in r for r in doc["rows"] if r.get("ok"))
    last = "copy bandwidth; speedups" if gpu else "peak MiB (NumPy)"
    first = "baseline" if gpu else "NumPy"
    lines = [f"| case | kernel | median ms | GB/s | GFLOP/s | {first} ms | speedup vs {first} "
             f"| {last} |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    mib = 1 << 20
    for r in doc["rows"]:
        if not r["ok"]:
            lines.append(f"| {r['case']} | {r['kernel']} | FAILED: {r['check']} | | | | | |")
            continue
        base = next((v for v in r["baselines"].values() if "median_s" in v), None)
        cells = [r["case"], r["kernel"], f"{r['median_s'] * 1e3:.3f}", f"{r['GBps']:.1f}",
                 f"{r['GFLOPs']:.1f}",
                 f"{base['median_s'] * 1e3:.3f}" if base else "",
                 f"{base['speedup']:.2f}x" if base else ""]
        if "peak_bytes" in r:
            cells.append(f"{r['peak_bytes'] / mib:.1f}" + (
                f" ({base['peak_bytes'] / mib:.1f})" if base and "peak_bytes" in base else ""))
        else:
            cells.append(f"{r.get('pct_copy_bw', 0):.0f}% of copy; "
                         + ", ".join(f"{n} {v['speedup']:.2f}x" if "speedup" in v
                                     else f"{n} failed" for n, v in r["baselines"].items()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
