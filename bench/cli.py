"""``tsol-bench``: run the benchmark cases and print or save the results.

    tsol-bench run [--suite softmax ...] [--op exp ...] [--dtype bfloat16 ...] [--backend cpu]
                   [--quick] [--out r.json]   filters repeat (any of their values) and combine
    tsol-bench devices                        backends, devices and their measured ceilings
    tsol-bench report r.json [more.json] [--out DIR]   Markdown report and PNG plots (roofline,
                                              speedups) of one run or several on one device
    tsol-bench compare old.json new.json [--threshold 5%]   regressions; exit 1 on any
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tsol.bench.cases import CASES, DTYPES, SUITES, select
from tsol.bench.runner import markdown_table, run

from tsol import backends
from tsol.errors import TSOLError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # report and compare parse their own arguments (tsol.bench.report / tsol.bench.compare).
    if argv[:1] == ["report"]:
        from tsol.bench.report import main_report
        return main_report(argv[1:])
    if argv[:1] == ["compare"]:
        from tsol.bench.compare import main_compare
        return main_compare(argv[1:])
    parser = argparse.ArgumentParser(prog="tsol-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run benchmark cases")
    p_run.add_argument("--suite", action="append", choices=SUITES)
    p_run.add_argument("--op", action="append")
    p_run.add_argument("--dtype", action="append",
                       help=f"case dtype, repeatable ({', '.join(DTYPES)}; aliases as bf16)")
    p_run.add_argument("--backend", default="cpu")
    p_run.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p_run.add_argument("--out", help="write the results JSON here")
    sub.add_parser("devices", help="list the backends this machine can run")
    sub.add_parser("report", help="Markdown report and PNG plots of a results JSON "
                                  "(tsol-bench report r.json [--out DIR])")
    sub.add_parser("compare", help="flag regressions between two results JSONs "
                                   "(tsol-bench compare old.json new.json [--threshold 5%%])")
    args = parser.parse_args(argv)

    if args.command == "devices":
        for name in backends.BACKENDS:
            b = backends.get(name)
            if not b.available():
                print(f"{name:<7} unavailable ({b.why_unavailable()})")
                continue
            print(f"{name:<7} {b.device_key()}")
            ceilings = ", ".join(f"{k} {v:.1f}" for k, v in b.ceilings().items())
            print(f"{'':<7} ceilings: {ceilings or 'none measured'}")
        return 0

    try:
        if not backends.get(args.backend).available():
            print(f"tsol-bench: {backends.get(args.backend).why_unavailable()}", file=sys.stderr)
            return 2
        cases = select(CASES, backend=args.backend, suites=args.suite or (), ops=args.op or (),
                       dtypes=args.dtype or (), quick=args.quick)
    except TSOLError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not cases:
        given = " ".join(f"--{k} {v}" for k in ("suite", "op", "dtype")
                         for v in getattr(args, k) or ())
        print(f"tsol-bench: no case matches {given or 'the filters'} on backend "
              f"{args.backend!r}. Fix: drop a filter (tsol-bench run --help lists them).",
              file=sys.stderr)
        return 2
    doc = run(cases, backend=args.backend, quick=args.quick,
              checkpoint=(lambda d: write_json(d, args.out)) if args.out else None)
    print(markdown_table(doc))
    if args.out:
        write_json(doc, args.out)
    return 0 if all(r["ok"] for r in doc["rows"]) else 1


def write_json(doc: dict[str, Any], path: str) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a temporary file, then a rename): the
    file is rewritten after each case, so a run cut short keeps its finished rows."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
