"""Time every registered config of the memory-bound CUDA kernels (the heuristic's candidates).

    python bench/gpu_config_sweep.py [--quick] [--op softmax ...] [--shape 4096x4096 ...]
                                     [--dtype float32 ...]

For softmax, log_softmax, layernorm, rmsnorm, cross_entropy and sum at sizes that fill the GPU,
each config of the op's first cuda kernel runs (forced through the selection hook), is checked
against the float64 reference and timed with device events over batches of calls; the table
gives GB/s and the share of the measured copy bandwidth, the heuristic's pick marked with '*'.
Until the schedule layer tunes on its own, this is how a heuristic's default is chosen by
measurement.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tsol.bench.runner import GPU_BATCH, _batched, bound_call, reference, time_call, to_host

import tsol
from tsol import backends, dtypes
from tsol.ops import base
from tsol.registry import kernels

OPS = ("softmax", "log_softmax", "layernorm", "rmsnorm", "cross_entropy", "sum")


def _inputs(op: str, shape: tuple[int, int], dt: np.dtype, rng: np.random.Generator) -> list:
    x = rng.uniform(-3, 3, shape).astype(dt)
    n = shape[-1]
    if op == "cross_entropy":
        return [x, rng.integers(0, n, shape[0])]
    params = {"layernorm": 2, "rmsnorm": 1}.get(op, 0)
    return [x] + [rng.uniform(0.5, 1.5, n).astype(dt) for _ in range(params)]


def prepare(op: str, shape: tuple[int, int], dt: np.dtype, rng: np.random.Generator
            ) -> tuple[list[np.ndarray], dict[str, object], np.ndarray]:
    """(host inputs, call attributes, float64 reference) of one sweep row; the reference gets
    the op's normalized attributes, as the benchmark runner builds them."""
    host = _inputs(op, shape, dt, rng)
    attrs = {"axis": -1} if op == "sum" else {}
    return host, attrs, reference(op, host, attrs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--op", action="append", choices=OPS, help="ops to sweep (default: all)")
    p.add_argument("--shape", action="append", help="ROWSxN shapes (default: 4096x4096 and "
                   "65536x1024)")
    p.add_argument("--dtype", action="append", help="dtypes (default: float32 and bfloat16)")
    args = p.parse_args(argv)
    b = backends.get("cuda")
    import cupy
    rng = np.random.default_rng(0)
    timer = _batched(b.timer(), GPU_BATCH)
    copy = b.ceilings().get("copy_GBps", float("nan"))
    shapes = [(256, 512)] if args.quick else [(4096, 4096), (65536, 1024)]
    if args.shape:
        shapes = [tuple(int(d) for d in s.lower().split("x")) for s in args.shape]
    dts = [dtypes.dtype(d) for d in args.dtype or ("float32", "bfloat16")]
    print(f"copy ceiling: {copy:.0f} GB/s")
    print("| op | shape | dtype | config | GB/s | % of copy | max err |")
    print("|---|---|---|---|---:|---:|---:|")
    saved = base.selector
    for op in args.op or OPS:
        kern = kernels(op, "cuda")[0]
        for shape in shapes:
            for dt in dts:
                host, attrs, ref = prepare(op, shape, dt, rng)
                dev = [cupy.asarray(h) for h in host]
                operands, norm = bound_call(op, dev, attrs)
                pick = kern.default_config(
                    [None if o is None else base.meta_of(o) for o in operands], norm)
                for cfg in kern.configs:
                    base.selector = lambda opdef, be, m, a, cfg=cfg: (
                        (kernels(opdef.name, "cuda")[0], cfg) if be == "cuda" else None)
                    try:
                        fn = getattr(tsol, op)
                        got = to_host(fn(*dev, **attrs)).astype(np.float64)
                        err = float(np.max(np.abs(got - ref)))
                        t = time_call(lambda: fn(*dev, **attrs),  # noqa: B023 - called here
                                      timer)["median_s"]
                        nbytes = sum(d.nbytes for d in dev) + got.size * dt.itemsize
                        gbps = nbytes / t / 1e9
                        mark = "*" if cfg == pick else ""
                        print(f"| {op} | {shape[0]}x{shape[1]} | {dt} | {cfg}{mark} | "
                              f"{gbps:.0f} | {100 * gbps / copy:.0f}% | {err:.2g} |")
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"| {op} | {shape} | {dt} | {cfg} | ERROR {type(exc).__name__}: "
                              f"{str(exc)[:120]} | | |")
                    finally:
                        base.selector = saved
                        base._plans.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
