"""Host overhead of small eager calls and the first call in a fresh process.

    python -m tsol.bench.overhead [--backend cuda] [--profile add]

Per op: wall time per call on a tiny input (the device work is negligible, so this is the host
path: binding, selection, argument packing, launch), against the same call in CuPy (or NumPy on
cpu). One row is a compiled 3-op pipeline (relu, multiply, tanh: one fused kernel); its time over
the single-op ``exp`` row is printed, the target being at most 1.5x (a compiled call should cost
about one eager call, not one per op). Then a child process times its first ``tsol.exp`` (import
excluded), which the on-disk kernel caches should keep under a second once the kernel was
compiled before. ``--profile OP`` also prints where the host time of OP's calls goes (cProfile,
by own time).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

import tsol
from tsol import backends, op

COLD = """
import time, numpy as np, tsol
from tsol import backends, op
b = backends.get({backend!r})
xp = b.array_module()
x = xp.asarray(np.ones((1000, 1000), np.float32)); b.synchronize()
t = time.perf_counter(); tsol.exp(x); tsol.softmax(x); b.synchronize()
print(time.perf_counter() - t)
"""


def per_call(fn: Callable[[], Any], sync: Callable[[], None], n: int = 2000) -> float:
    for _ in range(20):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


def profile(name: str, fn: Callable[[], Any], n: int = 5000) -> None:
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.runcall(lambda: [fn() for _ in range(n)])
    print(f"\nhost profile of {n} calls of {name}:")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(16)


PIPELINE = "pipeline relu -> *2 -> tanh (compiled)"
"""The compiled row's name."""

SINGLE = "exp"
"""The single-op row the compiled pipeline's host time is compared with."""

PIPELINE_TARGET = 1.5
"""Most host time a compiled 3-op pipeline call may take, in single-op calls."""

Row = tuple[str, Callable[[], Any], Callable[[], Any] | None]
"""(name, TSOL call, the same computation in the array module, or None)."""


def overhead_rows(xp: Any, x: Any, y: Any) -> list[Row]:
    """(name, TSOL call, the array module's call or None) per row, on arrays ``x`` and ``y``
    of module ``xp``. The pipeline is compiled on its first call (the warm-up)."""
    chain = op.pipeline([op.relu, lambda v: v * 2, op.tanh], name="overhead_chain")
    xh, yh = tsol.astype(x, tsol.bfloat16), tsol.astype(y, tsol.bfloat16)
    return [("add", lambda: tsol.add(x, y), lambda: xp.add(x, y)),
            ("exp", lambda: tsol.exp(x), lambda: xp.exp(x)),
            ("multiply scalar", lambda: tsol.multiply(x, 2.0), lambda: xp.multiply(x, 2.0)),
            ("sum axis=-1", lambda: tsol.sum(x, axis=-1), lambda: xp.sum(x, axis=-1)),
            ("softmax", lambda: tsol.softmax(x), None),
            ("matmul", lambda: tsol.matmul(x, y), lambda: xp.matmul(x, y)),
            ("matmul_relu", lambda: tsol.matmul(x, y, epilogue="relu"),
             lambda: xp.maximum(xp.matmul(x, y), 0)),
            ("matmul_bf16", lambda: tsol.matmul(xh, yh), None),
            (PIPELINE, lambda: chain(x), lambda: xp.tanh(xp.maximum(x, 0) * 2))]


def overhead_table(rows: list[Row], b: Any, n: int = 2000) -> dict[str, float]:
    """Print the table of ``rows`` on backend ``b`` (``n`` calls per timing) and the pipeline
    over single-op ratio; return TSOL's microseconds per call by row name."""
    xp = b.array_module()
    print(f"| op (32x32 float32, {b.name}) | TSOL us/call | {xp.__name__} us/call |")
    print("|---|---:|---:|")
    ours_us: dict[str, float] = {}
    for name, ours, theirs in rows:
        try:
            ours_us[name] = per_call(ours, b.synchronize, n) * 1e6
        except tsol.TSOLError as exc:
            print(f"| {name} | {type(exc).__name__} | |")
            continue
        t_theirs = per_call(theirs, b.synchronize, n) * 1e6 if theirs else float("nan")
        print(f"| {name} | {ours_us[name]:.1f} | {t_theirs:.1f} |")
    if PIPELINE in ours_us and SINGLE in ours_us:
        ratio = ours_us[PIPELINE] / ours_us[SINGLE]
        verdict = "met" if ratio <= PIPELINE_TARGET else "MISSED"
        print(f"\ncompiled 3-op pipeline / single op ({SINGLE}): {ratio:.2f}x "
              f"(target <= {PIPELINE_TARGET:g}x: {verdict})")
    return ours_us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tsol-bench-overhead", description=__doc__)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--profile", action="append", default=[], metavar="OP",
                   help="profile the host path of this row's calls (repeatable)")
    args = p.parse_args(argv)
    b = backends.get(args.backend)
    xp = b.array_module()
    x = xp.asarray(np.random.default_rng(0).random((32, 32), np.float32))
    y = xp.asarray(np.random.default_rng(1).random((32, 32), np.float32))
    rows = overhead_rows(xp, x, y)
    overhead_table(rows, b)
    for name, ours, _ in rows:
        if name in args.profile:
            profile(name, ours)
    cold = [float(subprocess.run([sys.executable, "-c", COLD.format(backend=args.backend)],
                                 capture_output=True, text=True, check=True).stdout.split()[-1])
            for _ in range(2)]
    print(f"\nfirst exp + softmax in a new process: {cold[0]:.3f} s, then {cold[1]:.3f} s "
          "(second process: kernels cached on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
