"""``tsol-bench report``: a Markdown report and PNG plots of one results JSON.

    tsol-bench report results.json [--out DIR]

The report has a header (device, date, versions, ceilings), one table per suite and, when
matplotlib is installed (``pip install 'tsol[bench]'``), a roofline plot per backend and a bar
chart per suite of TSOL's speedup over each baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tsol.errors import ArgumentError, TSOLError

SCHEMA_VERSIONS = (1,)
"""Results schema versions this module reads (bench/README.md)."""

DTYPE_ALIASES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Short dtype names of ceiling keys (``gemm_fp32_GFLOPs``) -> the dtype names rows use."""

_GEMM_KEY = re.compile(r"^gemm(?:_(\w+?))?_GFLOPs$")


def load_results(path: str | Path) -> dict[str, Any]:
    """The results document at ``path`` with every row's ``backend`` filled in.

    Raises ``ArgumentError`` when the file is not a results JSON of a known schema version
    (``OSError`` and ``json.JSONDecodeError`` pass through for unreadable files).
    """
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ArgumentError(f"tsol-bench: {path} is not a results file (no 'rows' list). "
                            f"Fix: pass the JSON that 'tsol-bench run --out' wrote.")
    version = doc.get("schema_version")
    if version not in SCHEMA_VERSIONS:
        raise ArgumentError(f"tsol-bench: {path} has schema_version {version!r}; this version "
                            f"reads {list(SCHEMA_VERSIONS)}. Fix: rerun 'tsol-bench run' with "
                            f"this TSOL version.")
    for r in doc["rows"]:
        r.setdefault("backend", doc.get("backend", "?"))
    return doc


def row_name(r: dict[str, Any]) -> str:
    """A row's case name, or one spelled from its op, shape and dtype when it has none."""
    if r.get("case"):
        return str(r["case"])
    shape = "x".join(str(s) for s in r.get("shape", []))
    return f"{r.get('op', '?')}[{shape},{r.get('dtype', '?')}]"


# --- ceilings -------------------------------------------------------------------------------

@dataclass
class Ceilings:
    """One backend's ceilings: copy bandwidth (GB/s, and where it came from), GEMM rates."""

    copy_GBps: float | None = None
    copy_source: str = "none"
    """'file' (measured, in the results), 'rows' (recovered from the rows' pct_copy_bw),
    'max observed' (no ceiling anywhere: the best GB/s of any row) or 'none' (no timed row)."""
    gemm_GFLOPs: dict[str, float] = field(default_factory=dict)
    """dtype name ('float32', or '*' for every dtype) -> the vendor GEMM rate."""

    def gemm_for(self, dtype: str | None) -> float | None:
        return self.gemm_GFLOPs.get(str(dtype), self.gemm_GFLOPs.get("*"))


def _file_ceilings(doc: dict[str, Any], backend: str) -> dict[str, float]:
    """The ceilings the file records for ``backend``: a flat ``ceilings`` dict applies to the
    file's backend, a dict of dicts is keyed by backend."""
    c = doc.get("ceilings") or {}
    if c and all(isinstance(v, dict) for v in c.values()):
        return dict(c.get(backend, {}))
    return dict(c) if backend == doc.get("backend") else {}


def ceilings_for(doc: dict[str, Any], backend: str) -> Ceilings:
    """The ceilings of ``backend``'s rows, from the file when it has them (see ``Ceilings``)."""
    given = _file_ceilings(doc, backend)
    out = Ceilings()
    for key, value in given.items():
        m = _GEMM_KEY.match(key)
        if m and isinstance(value, (int, float)):
            dt = m.group(1)
            out.gemm_GFLOPs[DTYPE_ALIASES.get(dt, dt) if dt else "*"] = float(value)
    timed = [r for r in doc["rows"] if r.get("backend") == backend and r.get("GBps")]
    if isinstance(given.get("copy_GBps"), (int, float)):
        out.copy_GBps, out.copy_source = float(given["copy_GBps"]), "file"
    elif any(r.get("pct_copy_bw") for r in timed):
        # The runner divides by the measured ceiling, so each such row gives it back exactly.
        r = next(r for r in timed if r.get("pct_copy_bw"))
        out.copy_GBps, out.copy_source = 100 * r["GBps"] / r["pct_copy_bw"], "rows"
    elif timed:
        out.copy_GBps, out.copy_source = max(r["GBps"] for r in timed), "max observed"
    return out


def pct_copy(r: dict[str, Any], c: Ceilings) -> float | None:
    """Percent of the copy-bandwidth ceiling a timed row reached."""
    if r.get("pct_copy_bw") is not None and c.copy_source in ("file", "rows"):
        return float(r["pct_copy_bw"])
    if c.copy_GBps and r.get("GBps") is not None:
        return 100 * r["GBps"] / c.copy_GBps
    return None


def pct_gemm(r: dict[str, Any], c: Ceilings) -> float | None:
    """Percent of the vendor GEMM rate (for the row's dtype) a timed row reached."""
    peak = c.gemm_for(r.get("dtype"))
    return 100 * r["GFLOPs"] / peak if peak and r.get("GFLOPs") is not None else None


def _describe_ceilings(backend: str, c: Ceilings) -> str:
    if c.copy_source == "file":
        copy = f"copy bandwidth {c.copy_GBps:.1f} GB/s (measured)"
    elif c.copy_source == "rows":
        copy = f"copy bandwidth {c.copy_GBps:.1f} GB/s (recovered from the rows' % of copy)"
    elif c.copy_source == "max observed":
        copy = (f"copy bandwidth not in the file: using the max observed {c.copy_GBps:.1f} GB/s, "
                f"so '% BW' is relative to the best row, not to the device")
    else:
        copy = "copy bandwidth unknown (no timed row)"
    gemm = ", ".join(f"GEMM {'all dtypes' if dt == '*' else dt} {v:.1f} GFLOP/s"
                     for dt, v in c.gemm_GFLOPs.items()) or "vendor GEMM ceiling not in the file"
    return f"- Ceilings ({backend}): {copy}; {gemm}"


# --- Markdown -------------------------------------------------------------------------------

def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _op_cell(r: dict[str, Any]) -> str:
    attrs = r.get("attrs") or {}
    extra = ", ".join(f"{k}={v}" for k, v in attrs.items()) if isinstance(attrs, dict) else ""
    return f"{r.get('op', '?')} ({extra})" if extra else str(r.get("op", "?"))


def _kernel_cell(r: dict[str, Any]) -> str:
    kernel = str(r.get("kernel", ""))
    if "kernel_count" in r:
        kernel += f" ({r['kernel_count']} kernel{'s' if r['kernel_count'] != 1 else ''})"
    return kernel + (f" `{r['config']}`" if r.get("config") else "")


def _notes(r: dict[str, Any]) -> str:
    verdicts = {True: "met", False: "MISSED", None: "not measured"}
    return "; ".join(f"target >= {t['min_speedup']:g}x vs {n}: {verdicts[t.get('met')]}"
                     for n, t in (r.get("targets") or {}).items())


def suites_of(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by suite, suites in the order they first appear."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.get("suite") or "other"), []).append(r)
    return out


def baseline_names(rows: list[dict[str, Any]]) -> list[str]:
    """Every baseline name of ``rows``, in the order they first appear."""
    return list(dict.fromkeys(n for r in rows for n in (r.get("baselines") or {})))


def suite_table(rows: list[dict[str, Any]], ceilings: dict[str, Ceilings]) -> str:
    """One suite's rows as a Markdown table; a failed row shows its check in the time column."""
    names = baseline_names(rows)
    gemm = any(ceilings[r["backend"]].gemm_for(r.get("dtype")) for r in rows)
    notes = any(r.get("targets") for r in rows)
    guessed = any(ceilings[r["backend"]].copy_source == "max observed" for r in rows)
    head = ["op", "shape", "dtype", "kernel / config", "median ms", "p95 ms", "GB/s", "GFLOP/s",
            "% max obs. BW" if guessed else "% copy BW"]
    head += ["% GEMM"] if gemm else []
    head += [f"vs {n}" for n in names] + (["notes"] if notes else [])
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" * 4 + "---:|" * (len(head) - 4 - notes) + "---|" * notes]
    failures = []
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"]) if r.get("shape") else ""
        cells = [_op_cell(r), shape, r.get("dtype", ""), _kernel_cell(r)]
        if not r.get("ok"):
            cells += [f"FAILED: {r.get('check', '')}"] + [""] * (len(head) - 5)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            continue
        c = ceilings[r["backend"]]
        median, p95 = r.get("median_s"), r.get("p95_s")
        cells += [_num(None if median is None else median * 1e3, ".4g"),
                  _num(None if p95 is None else p95 * 1e3, ".4g"),
                  _num(r.get("GBps"), ".1f"), _num(r.get("GFLOPs"), ".1f"),
                  _num(pct_copy(r, c), ".1f")]
        cells += [_num(pct_gemm(r, c), ".1f")] if gemm else []
        for n in names:
            b = (r.get("baselines") or {}).get(n)
            if b is None:
                cells.append("")
            elif "speedup" in b:
                cells.append(f"{b['speedup']:.2f}x")
            else:
                cells.append("failed")
                failures.append(f"- {row_name(r)}, {n}: {b.get('error', 'no time')}")
        cells += [_notes(r)] if notes else []
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    if names:
        lines.append("\n`vs <baseline>`: baseline time / TSOL time (above 1: TSOL is faster).")
    if failures:
        lines += ["", "Baselines that failed:", ""] + [_cell(f) for f in failures]
    return "\n".join(lines)


def markdown_report(doc: dict[str, Any], plots: dict[str, Path] | None = None) -> str:
    """The whole report as Markdown; ``plots`` (plot name -> file) are linked where they fit:
    ``roofline:<backend>`` after the header, ``speedup:<suite>`` after that suite's table."""
    plots = plots or {}
    rows = doc["rows"]
    backends = list(dict.fromkeys(r["backend"] for r in rows)) or [doc.get("backend", "?")]
    ceilings = {b: ceilings_for(doc, b) for b in backends}
    versions = ", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items())
    failed = sum(not r.get("ok") for r in rows)
    lines = ["# TSOL benchmark report", "",
             f"- Device: `{doc.get('device', '?')}` (backend {doc.get('backend', '?')})",
             f"- Date: {doc.get('date', '?')}",
             f"- Versions: {versions or 'not recorded'}",
             f"- Platform: {doc.get('platform', 'not recorded')}",
             f"- Sizes: {'quick (smoke test)' if doc.get('quick') else 'full'}"]
    lines += [_describe_ceilings(b, ceilings[b]) for b in backends]
    lines.append(f"- Rows: {len(rows)}, failed: {failed}")
    for b in backends:
        if f"roofline:{b}" in plots:
            lines += ["", f"![roofline {b}]({plots[f'roofline:{b}'].name})"]
    for suite, srows in suites_of(rows).items():
        lines += ["", f"## {suite}", "", suite_table(srows, ceilings)]
        if f"speedup:{suite}" in plots:
            lines += ["", f"![speedup {suite}]({plots[f'speedup:{suite}'].name})"]
    return "\n".join(lines) + "\n"


# --- plots (matplotlib, optional) -----------------------------------------------------------

def _figure_api() -> Any:
    """matplotlib's ``Figure`` class drawn by the Agg canvas, or None when not installed.
    Figures are built without pyplot, so no global backend is switched under the caller."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    def new_figure(**kw: Any) -> Any:
        fig = Figure(**kw)
        FigureCanvasAgg(fig)
        return fig
    return new_figure


def _positive(*xs: Any) -> bool:
    """Whether every value is a finite number above zero (a point a log axis can show)."""
    return all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in xs)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def roofline_points(rows: list[dict[str, Any]]) -> list[tuple[float, float, str, str]]:
    """(flops/bytes, GFLOP/s, op, suite) of every timed row a log-log roofline can place."""
    return [(r["flops"] / r["bytes"], r["GFLOPs"], str(r.get("op", "?")), str(r.get("suite")))
            for r in rows if r.get("ok") and _positive(r.get("flops"), r.get("bytes"),
                                                       r.get("GFLOPs"))]


def plot_roofline(new_figure: Any, backend: str, rows: list[dict[str, Any]], c: Ceilings,
                  path: Path) -> bool:
    """Achieved GFLOP/s against arithmetic intensity, with the memory roof (copy bandwidth)
    and the compute roofs (vendor GEMM rates) where known; False when no row can be placed."""
    pts = roofline_points(rows)
    if not pts:
        return False
    xs = [p[0] for p in pts]
    lo, hi = min(xs) / 4, max(xs) * 4
    for peak in c.gemm_GFLOPs.values():
        if c.copy_GBps:
            # Widen the axis to show the ridge point, where the two roofs meet.
            ridge = peak / c.copy_GBps
            lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
    fig = new_figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    top = max(c.gemm_GFLOPs.values(), default=math.inf)
    if c.copy_GBps:
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        label = (f"memory roof {c.copy_GBps:.0f} GB/s" if c.copy_source in ("file", "rows")
                 else f"best observed {c.copy_GBps:.0f} GB/s (no copy ceiling in the file)")
        ax.plot(grid, [min(c.copy_GBps * x, top) for x in grid], "k-", lw=1.5, label=label)
    for dt, peak in c.gemm_GFLOPs.items():
        ax.axhline(peak, ls="--", lw=1, color="tab:red",
                   label=f"GEMM {'' if dt == '*' else dt + ' '}{peak:.0f} GFLOP/s")
    suites = list(dict.fromkeys(p[3] for p in pts))
    for i, suite in enumerate(suites):
        mine = [p for p in pts if p[3] == suite]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=18, color=f"C{i % 10}",
                   label=suite, zorder=3)
        for x, y, op, _ in mine:
            ax.annotate(op, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (flop/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"Roofline: {backend}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def plot_speedups(new_figure: Any, suite: str, rows: list[dict[str, Any]], path: Path) -> bool:
    """Bars of TSOL's speedup over each baseline, one group per timed row, on a log axis with
    the 1.0 line; False when no row of the suite has a speedup."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    names = baseline_names(rows)
    timed = [r for r in rows if r.get("ok") and any(
        _positive((r.get("baselines") or {}).get(n, {}).get("speedup")) for n in names)]
    if not timed:
        return False
    width = 0.8 / len(names)
    fig = new_figure(figsize=(max(6.0, 0.45 * len(timed) * max(1, len(names)) + 2), 5))
    ax = fig.add_subplot()
    values: list[float] = []
    for j, n in enumerate(names):
        xs, ys = [], []
        for i, r in enumerate(timed):
            s = (r.get("baselines") or {}).get(n, {}).get("speedup")
            if _positive(s):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(s)
        # Bars grow from the 1.0 line, so a slowdown points down instead of looking short.
        ax.bar(xs, [y - 1 for y in ys], bottom=1.0, width=width, color=f"C{j % 10}",
               label=f"vs {n}")
        values += ys
    ax.axhline(1.0, color="k", lw=1)
    ax.set_yscale("log")
    ax.set_ylim(min(min(values), 1.0) / 1.5, max(max(values), 1.0) * 1.5)
    as_x = FuncFormatter(lambda v, _: f"{v:g}x")
    ax.yaxis.set_major_formatter(as_x)
    # Label the minor ticks (2x, 3x...) only when the axis spans less than a decade or so.
    ax.yaxis.set_minor_formatter(as_x if max(values) / min(values) < 20 else NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.set_xticks(range(len(timed)))
    ax.set_xticklabels([row_name(r) for r in timed], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup (baseline time / TSOL time)")
    ax.set_title(f"TSOL speedup: {suite}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_plots(doc: dict[str, Any], out: Path) -> dict[str, Path] | None:
    """The report's PNG files under ``out`` (plot name -> path: ``roofline:<backend>``,
    ``speedup:<suite>``), or None when matplotlib is not installed."""
    new_figure = _figure_api()
    if new_figure is None:
        return None
    written: dict[str, Path] = {}
    rows = doc["rows"]
    for b in dict.fromkeys(r["backend"] for r in rows):
        path = out / f"roofline_{_safe(b)}.png"
        if plot_roofline(new_figure, b, [r for r in rows if r["backend"] == b],
                         ceilings_for(doc, b), path):
            written[f"roofline:{b}"] = path
    for suite, srows in suites_of(rows).items():
        path = out / f"speedup_{_safe(suite)}.png"
        if plot_speedups(new_figure, suite, srows, path):
            written[f"speedup:{suite}"] = path
    return written


# --- files and the command ------------------------------------------------------------------

def merge_results(docs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """One results document of several runs on one device (say one ``tsol-bench run`` per
    suite): the first's header, every run's rows in order. Raises ``ArgumentError`` when the
    runs' devices differ."""
    devices = {d.get("device") for d in docs}
    if len(devices) > 1:
        raise ArgumentError(f"tsol-bench report: {', '.join(names)} come from different "
                            f"devices ({sorted(map(str, devices))}). Fix: report each device's "
                            f"runs separately.")
    return {**docs[0], "rows": [r for d in docs for r in d["rows"]]}


def write_report(results_json_path: str | Path | Sequence[str | Path], out_dir: str | Path
                 ) -> list[Path]:
    """Write ``report.md`` and, when matplotlib is installed, the PNG plots into ``out_dir``,
    of one results JSON or of several runs on one device (``merge_results``).

    Returns the files written, ``report.md`` first. Without matplotlib the Markdown is still
    written and one line on stderr says how to get the plots. Raises what ``load_results``
    raises for a file that is not a results JSON.

    >>> write_report("results.json", "report")  # doctest: +SKIP
    [PosixPath('report/report.md'), PosixPath('report/roofline_cpu.png'), ...]
    >>> write_report(["linalg.json", "softmax.json"], "report")  # doctest: +SKIP
    """
    paths = ([results_json_path] if isinstance(results_json_path, (str, Path))
             else list(results_json_path))
    doc = merge_results([load_results(p) for p in paths], [str(p) for p in paths])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = write_plots(doc, out)
    if written is None:
        print("tsol-bench report: plots need matplotlib: pip install 'tsol[bench]' "
              "(wrote the Markdown only)", file=sys.stderr)
        written = {}
    md = out / "report.md"
    md.write_text(markdown_report(doc, written))
    return [md, *written.values()]


def default_out_dir(results: str | Path) -> Path:
    """``results.json`` -> ``results_report/`` next to it."""
    p = Path(results)
    return p.with_name(p.stem + "_report")


def main_report(argv: list[str] | None = None) -> int:
    """``tsol-bench report results.json [more.json ...] [--out DIR]``: 0 when written, 2 for
    a bad file."""
    parser = argparse.ArgumentParser(prog="tsol-bench report",
                                     description="Markdown report and PNG plots of a results "
                                                 "JSON written by 'tsol-bench run --out'.")
    parser.add_argument("results", nargs="+",
                        help="results JSON (several: runs on one device, reported as one)")
    parser.add_argument("--out", help="folder for report.md and the plots "
                                      "(default: <results>_report next to the file)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.results, args.out or default_out_dir(args.results[0]))
    except (OSError, json.JSONDecodeError, TSOLError) as exc:
        print(f"tsol-bench report: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main_report())
