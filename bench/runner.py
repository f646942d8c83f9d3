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


class BaselineCall(NamedTuple):
    """One baseline of a case, ready to run: ``call()`` on its library's own arrays."""

    label: str
    """The library's name, plus ' (float16)' when it ran a bfloat16 case in float16."""
    call: Callable[[], Any]
    same_dtype: bool
    """Whether it ran in the case's dtype (only then is its error a yardstick)."""


def baseline_dtype(case: Case, b: Any, lib: Any) -> np.dtype | None:
    """The dtype the library ``lib`` gets the case's arrays in on backend ``b`` when not the
    case's own (None): the case's cpu baseline dtype, or float16 for bfloat16 arrays a library
    cannot take."""
    if b.name == "cpu" and case.cpu_baseline_dtype:
        want = tsol.dtypes.dtype(case.cpu_baseline_dtype)
        return None if want == tsol.dtypes.dtype(case.dtype) else want
    if not lib.bfloat16 and tsol.dtypes.dtype(case.dtype) == tsol.bfloat16:
        return tsol.dtypes.float16
    return None


def _cast(x: np.ndarray, src: np.dtype, dst: np.dtype) -> np.ndarray:
    return x.astype(dst) if x.dtype == src else x


def baseline_calls(case: Case, b: Any, args: list[Any], kwargs: dict[str, Any]
                   ) -> list[BaselineCall]:
    """The installed baselines of ``case`` on backend ``b``, each on copies of the host call
    ``(args, kwargs)`` as its library's arrays; arrays of the case's dtype go in the dtype of
    ``baseline_dtype`` where it names one (the label then says which: 'cupy (float16)')."""
    case_dt = tsol.dtypes.dtype(case.dtype)
    out = []
    for name in case.baselines if b.name == "cpu" else case.gpu_baselines:
        lib = LIBRARIES.get(name)
        if lib is None or case.op not in lib.table or not lib.installed():
            continue
        cast = baseline_dtype(case, b, lib)
        call = (args, kwargs) if cast is None else map_arrays(
            functools.partial(_cast, src=case_dt, dst=cast), (args, kwargs))
        to_lib = lib.array or (lambda x: to_backend(x, b))
        a, kw = map_arrays(to_lib, call)
        out.append(BaselineCall(f"{name} ({cast.name})" if cast is not None else name,
                                functools.partial(lib.table[case.op], *a, **kw), cast is None))
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


def tsol_function(case: Case) -> Callable[..., Any]:
    """What a case times for TSOL: its compiled program (built afresh) or ``tsol.<op>``."""
    return case.program.build() if case.program is not None else getattr(tsol, case.op)


def case_reference(case: Case, args: list[Any], kwargs: dict[str, Any]) -> np.ndarray:
    """The float64 truth of the case's call on host arrays ``(args, kwargs)``."""
    if case.program is None:
        return reference(case.op, args, kwargs)
    wide = [a.astype(np.float64) if tsol.dtypes.is_float(a.dtype) else a for a in args]
    return np.asarray(case.program.reference(*wide, **kwargs))


class Checked(NamedTuple):
    """A case's baselines after one call each, and the check of TSOL's result."""

    calls: list[BaselineCall]
    results: dict[str, Any]
    failed: dict[str, dict[str, str]]
    ok: bool
    detail: str


def run_and_check(case: Case, b: Any, got: Any, host_args: list[Any],
                  host_kwargs: dict[str, Any]) -> Checked:
    """Run each baseline once and check ``got`` against the float64 reference, the first
    baseline in the case's dtype being the yardstick. A baseline that fails is reported in its
    entry; it never fails the row. A case with a ``sample`` is checked on that part only."""
    calls, failed, base_out = baseline_calls(case, b, host_args, host_kwargs), {}, {}
    for bc in calls:
        try:
            base_out[bc.label] = to_host(bc.call())
        except Exception as exc:  # noqa: BLE001
            failed[bc.label] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    yardstick = next((base_out[bc.label] for bc in calls
                      if bc.same_dtype and bc.label in base_out), None)
    sampled = ""
    if case.sample is not None and np.ndim(got) > 0:
        s, n = case.sample, np.shape(got)[case.sample.axis]
        idx = s.indices(n)
        host_args = [s.take(a, idx) if i in s.operands else a for i, a in enumerate(host_args)]
        got = s.take(got, idx)
        yardstick = None if yardstick is None else s.take(np.asarray(yardstick), idx)
        sampled = f"; checked {len(idx)} of {n} along axis {s.axis}"
    ok, detail = check(case, got, yardstick, case_reference(case, host_args, host_kwargs))
    return Checked(calls, base_out, failed, ok, detail + sampled)


def run_case(case: Case, backend: str = "cpu", quick: bool = False,
             rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One result row; a failed correctness check gives a row with ``ok=False`` and no time."""
    if case.program is not None:
        return run_program_case(case, backend, quick, rng)
    rng = rng or np.random.default_rng(0)
    b = backends.get(backend)
    inputs = case.make_inputs(rng, quick)
    host_args, host_kwargs = case.call_args(inputs)
    args, kwargs = to_backend((host_args, host_kwargs), b)
    fn = getattr(tsol, case.op)
    opdef = get_op(case.op)
    got = to_host(fn(*args, **kwargs))
    operands, attrs = bound_call(case.op, args, kwargs)
    checked = run_and_check(case, b, got, host_args, host_kwargs)
    metas = [None if o is None else meta_of(o) for o in operands]
    chosen = select(opdef, backend, metas, attrs)
    flops, nbytes = opdef.cost(*metas, out=meta_of(got), **attrs)
    row: dict[str, Any] = {
        "case": case.run_id(quick),
        "suite": case.suite, "op": case.op,
        "shape": list(inputs[0].shape), "dtype": case.dtype, "attrs": case.kwargs,
        "backend": backend, "device": b.device_key(), "ok": checked.ok,
        "check": checked.detail, "kernel": _kernel_name(chosen),
        "config": repr(chosen[1]) if chosen else "", "flops": flops, "bytes": nbytes,
    }
    if checked.ok:
        time_row(row, b, lambda: fn(*args, **kwargs), checked, quick)
    return row


def run_program_case(case: Case, backend: str = "cpu", quick: bool = False,
                     rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The row of a pipeline case: its compiled program checked against the float64
    reference, then timed with its baselines. ``kernel`` names the schedule's launches in order
    (`` + `` between them), ``kernel_count`` counts those that run a kernel of their own,
    ``bytes`` is the inputs and the result once (what a single fused pass moves), ``flops``
    the schedule's estimate, and ``targets`` the verdict of each target speedup."""
    rng = rng or np.random.default_rng(0)
    b = backends.get(backend)
    inputs = case.make_inputs(rng, quick)
    host_args, host_kwargs = case.call_args(inputs)
    args, kwargs = to_backend((host_args, host_kwargs), b)
    compiled = tsol_function(case)
    got = to_host(compiled(*args, **kwargs))
    checked = run_and_check(case, b, got, host_args, host_kwargs)
    schedule = compiled.executable(*args).schedule
    row: dict[str, Any] = {
        "case": case.run_id(quick),
        "suite": case.suite, "op": case.op, "shape": list(inputs[0].shape),
        "dtype": case.dtype, "attrs": case.kwargs, "backend": backend,
        "device": b.device_key(), "ok": checked.ok, "check": checked.detail,
        "kernel": " + ".join(L.name for L in schedule.launches),
        "kernel_count": schedule.kernel_count,
        "config": "; ".join(repr(L.config) for L in schedule.launches if L.config is not None),
        "flops": sum(L.flops for L in schedule.launches),
        "bytes": sum(a.nbytes for a in inputs) + np.asarray(got).nbytes,
    }
    if not checked.ok:
        return row
    time_row(row, b, lambda: compiled(*args, **kwargs), checked, quick)
    row["targets"] = {}
    for where, name, least in case.program.targets:
        if where == backend:
            speedup = row["baselines"].get(name, {}).get("speedup")
            row["targets"][name] = {"min_speedup": least,
                                    "met": None if speedup is None else speedup >= least}
    return row


QUICK_TIMING = {"min_time": 0.02, "max_repeats": 10}
"""``time_call`` settings of a --quick run: a smoke test, whose tiny sizes measure overheads
rather than kernels; 5 to 10 samples keep it to seconds on a loaded machine."""


def time_row(row: dict[str, Any], b: Any, fn: Callable[[], Any], checked: Checked,
             quick: bool = False) -> None:
    """Add the timings, rates and baseline comparisons of a checked case to its ``row``."""
    timer = b.timer()
    if b.name != "cpu":
        timer = _batched(timer, GPU_BATCH)
    settings = QUICK_TIMING if quick else {}
    row.update(time_call(fn, timer, **settings))
    if b.name == "cpu":
        row["peak_bytes"] = peak_memory(fn)
    row["GBps"] = row["bytes"] / row["median_s"] / 1e9
    row["GFLOPs"] = row["flops"] / row["median_s"] / 1e9
    ceilings = b.ceilings()
    if "copy_GBps" in ceilings:
        row["pct_copy_bw"] = 100 * row["GBps"] / ceilings["copy_GBps"]
    row["baselines"] = dict(checked.failed)
    for bc in checked.calls:
        if bc.label not in checked.results:
            continue
        try:
            t = time_call(bc.call, timer, **settings)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory while timing
            row["baselines"][bc.label] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        entry = row["baselines"][bc.label] = {"median_s": t["median_s"],
                                              "speedup": t["median_s"] / row["median_s"]}
        if b.name == "cpu":
            entry["peak_bytes"] = peak_memory(bc.call)


def run(cases: Iterable[Case], backend: str = "cpu", quick: bool = False,
        progress: bool = True, checkpoint: Callable[[dict[str, Any]], None] | None = None
        ) -> dict[str, Any]:
    """Run ``cases`` and return the results document (schema in bench/README.md);
    ``checkpoint(doc)`` gets the document of the rows so far after each case (a run cut short
    keeps them)."""
    cases = list(cases)
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(cases, 1):
        if progress:
            print(f"\r[{i}/{len(cases)}] {case.run_id(quick):<60}", end="", file=sys.stderr,
                  flush=True)
        try:
            # Host arrays (the CUDA simulator, compile-only mode) run on ``backend`` only as the
            # default backend.
            with tsol.config.override(default_backend=backend):
                rows.append(run_case(case, backend, quick))
        except Exception as exc:  # noqa: BLE001 - a broken case is a failure row, not a crash
            rows.append({"case": case.run_id(quick), "suite": case.suite, "op": case.op,
                         "ok": False, "kernel": "-",
                         "check": f"{type(exc).__name__}: {exc}"[:300]})
        if checkpoint is not None:
            checkpoint(document(rows, backend, quick))
    if progress:
        print(file=sys.stderr)
    return document(rows, backend, quick)


def document(rows: list[dict[str, Any]], backend: str, quick: bool) -> dict[str, Any]:
    """The results document of ``rows``: schema version, date, device, versions, ceilings."""
    import numba
    return {"schema_version": SCHEMA_VERSION, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "device": backends.get(backend).device_key(), "backend": backend, "quick": quick,
            "platform": platform.platform(),
            "versions": {"tsol": tsol.__version__, "numpy": np.__version__,
                         "numba": numba.__version__, "python": platform.python_version()},
            "ceilings": backends.get(backend).ceilings(), "rows": rows}


def _notes(r: dict[str, Any], shown: str | None, gpu: bool) -> str:
    """A row's notes: the speedups the table has no column for, and each target's verdict."""
    parts = [] if gpu else [f"{n} {v['speedup']:.2f}x" for n, v in r["baselines"].items()
                            if n != shown and "speedup" in v]
    verdicts = {True: "met", False: "MISSED", None: "not measured"}
    parts += [f"target >= {t['min_speedup']:g}x vs {n}: {verdicts[t['met']]}"
              for n, t in r.get("targets", {}).items()]
    return "; ".join(parts)


def markdown_table(doc: dict[str, Any]) -> str:
    """The results as a Markdown table: one row per case, speedup against each baseline; a
    notes column (the other baselines, target verdicts) when some row has targets."""
    gpu = any("peak_bytes" not in r for r in doc["rows"] if r.get("ok"))
    notes = any("targets" in r or "kernel_count" in r for r in doc["rows"])
    last = "copy bandwidth; speedups" if gpu else "peak MiB (NumPy)"
    first = "baseline" if gpu else "NumPy"
    lines = [f"| case | kernel | median ms | GB/s | GFLOP/s | {first} ms | speedup vs {first} "
             f"| {last} |" + (" notes |" if notes else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if notes else "")]
    mib = 1 << 20
    for r in doc["rows"]:
        kernel = r["kernel"]
        if "kernel_count" in r:
            kernel += f" ({r['kernel_count']} kernel{'s' if r['kernel_count'] != 1 else ''})"
        if not r["ok"]:
            lines.append(f"| {r['case']} | {kernel} | FAILED: {r['check']} | | | | | |"
                         + (" |" if notes else ""))
            continue
        shown, base = next(((n, v) for n, v in r["baselines"].items() if "median_s" in v),
                           (None, None))
        cells = [r["case"], kernel, f"{r['median_s'] * 1e3:.3f}", f"{r['GBps']:.1f}",
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
        if notes:
            cells.append(_notes(r, shown, gpu))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
