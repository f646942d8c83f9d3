"""``tsol-bench compare``: flag regressions between two results files.

    tsol-bench compare old.json new.json [--threshold 5%]

Rows are matched on backend, op and case name (which spells out the shape, dtype and
attributes); rows without a case name match on (op, shape, dtype, attrs). A row regresses when
its new median time is slower than the old by more than the threshold, when it passed before
and fails now, or when it is gone from the new file. The command exits 1 on any regression.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsol.bench.report import load_results, row_name

from tsol.errors import ArgumentError, TSOLError

DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class Compared:
    """One case in the old file, the new file or both."""

    case: str
    backend: str
    status: str
    """'slower', 'faster', 'same', 'now fails', 'fixed', 'still fails', 'missing', 'new',
    'new, fails' or 'untimed' (passed in both but a file has no median)."""
    old_s: float | None
    new_s: float | None
    regression: bool
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        """New median / old median (above 1: slower now)."""
        return self.new_s / self.old_s if self.old_s and self.new_s is not None else None


def parse_threshold(text: str | float) -> float:
    """A threshold as a fraction: ``'5%'`` and ``'0.05'`` are both 0.05.

    Raises ``ArgumentError`` for text that is not a number, a negative value, or a bare number
    of 1 or more (``'5'`` is ambiguous: write ``5%`` or ``0.05``).
    """
    s = str(text).strip()
    percent = s.endswith("%")
    try:
        value = float(s[:-1] if percent else s)
    except ValueError:
        value = float("nan")
    if percent:
        value /= 100
    if not value >= 0 or (not percent and value >= 1):
        raise ArgumentError(f"tsol-bench compare: threshold {text!r} is not a fraction below 1 "
                            f"or a percentage. Fix: write e.g. --threshold 5% or "
                            f"--threshold 0.05.")
    return value


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row across runs (see the module docstring)."""
    if r.get("case"):
        return (r.get("backend"), r.get("op"), r["case"])
    attrs = json.dumps(r.get("attrs") or {}, sort_keys=True, default=str)
    return (r.get("backend"), r.get("op"), tuple(r.get("shape") or ()), r.get("dtype"), attrs)


def compare_rows(old: list[dict[str, Any]], new: list[dict[str, Any]],
                 threshold: float = DEFAULT_THRESHOLD) -> list[Compared]:
    """Every case of ``old`` (in its order), then the cases only in ``new``."""
    new_by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in new:
        new_by_key.setdefault(row_key(r), r)
    out, seen = [], set()
    for o in old:
        key = row_key(o)
        if key in seen:
            continue
        seen.add(key)
        n = new_by_key.get(key)
        out.append(_compare_one(o, n, threshold))
    for key, n in new_by_key.items():
        if key not in seen:
            out.append(Compared(row_name(n), n["backend"], "new" if n.get("ok") else "new, fails",
                                None, n.get("median_s"), False,
                                "" if n.get("ok") else str(n.get("check", ""))))
    return out


def _compare_one(o: dict[str, Any], n: dict[str, Any] | None, threshold: float) -> Compared:
    name, backend, old_s = row_name(o), o["backend"], o.get("median_s")
    if n is None:
        return Compared(name, backend, "missing", old_s, None, True, "not in the new file")
    new_s = n.get("median_s")
    if not o.get("ok"):
        if n.get("ok"):
            return Compared(name, backend, "fixed", None, new_s, False)
        return Compared(name, backend, "still fails", None, None, False, str(n.get("check", "")))
    if not n.get("ok"):
        return Compared(name, backend, "now fails", old_s, None, True, str(n.get("check", "")))
    if not old_s or new_s is None:
        return Compared(name, backend, "untimed", old_s, new_s, False, "no median to compare")
    ratio = new_s / old_s
    status = "slower" if ratio > 1 + threshold else "faster" if ratio < 1 - threshold else "same"
    return Compared(name, backend, status, old_s, new_s, status == "slower")


def compare(old_path: str | Path, new_path: str | Path, threshold: float = DEFAULT_THRESHOLD
            ) -> tuple[list[Compared], list[Compared]]:
    """(every compared row, the regressions among them) between two results files.

    ``threshold`` is the fraction by which a new median may be slower before it counts
    (0.05: more than 5% slower). Raises what ``load_results`` raises for a bad file.

    >>> rows, regressions = compare("before.json", "after.json", 0.05)  # doctest: +SKIP
    """
    rows = compare_rows(load_results(old_path)["rows"], load_results(new_path)["rows"],
                        threshold)
    return rows, [r for r in rows if r.regression]


def _ms(s: float | None) -> str:
    return "" if s is None else f"{s * 1e3:.4g}"


def format_comparison(rows: list[Compared], threshold: float = DEFAULT_THRESHOLD) -> str:
    """The comparison as a Markdown table (regressions marked) and a one-line summary."""
    lines = ["| case | backend | old ms | new ms | new/old | status |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.3f}"
        status = ("**REGRESSION: " + r.status + "**") if r.regression else r.status
        if r.detail:
            status += f" ({r.detail})"
        cells = [r.case, r.backend, _ms(r.old_s), _ms(r.new_s), ratio, status]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    n = sum(r.regression for r in rows)
    lines += ["", f"{n} regression{'s' if n != 1 else ''} among {len(rows)} rows "
                  f"(threshold: more than {threshold:.1%} slower, a row that now fails, or a "
                  f"missing row)."]
    return "\n".join(lines)


def _threshold_arg(text: str) -> float:
    try:
        return parse_threshold(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main_compare(argv: list[str] | None = None) -> int:
    """``tsol-bench compare old.json new.json [--threshold 5%]``: 1 on any regression, 0
    otherwise, 2 for a file that cannot be read."""
    parser = argparse.ArgumentParser(prog="tsol-bench compare",
                                     description="Flag regressions between two results JSONs.")
    parser.add_argument("old", help="results JSON of the earlier run")
    parser.add_argument("new", help="results JSON of the later run")
    parser.add_argument("--threshold", type=_threshold_arg, default=DEFAULT_THRESHOLD,
                        help="how much slower counts as a regression: 5%% or 0.05 (default)")
    args = parser.parse_args(argv)
    try:
        old, new = load_results(args.old), load_results(args.new)
    except (OSError, json.JSONDecodeError, TSOLError) as exc:
        print(f"tsol-bench compare: {exc}", file=sys.stderr)
        return 2
    if old.get("device") != new.get("device"):
        print(f"Note: the runs are on different devices ({old.get('device')} vs "
              f"{new.get('device')}); time ratios compare the devices too.\n")
    rows = compare_rows(old["rows"], new["rows"], args.threshold)
    print(format_comparison(rows, args.threshold))
    return 1 if any(r.regression for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main_compare())
