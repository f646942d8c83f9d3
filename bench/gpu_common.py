"""Helpers shared by the GPU check scripts (``bench/gpu_*_check.py``): the correctness-case
runner, CuPy event timing, the host-overhead loop and the register/spill report of the kernels
a script compiled."""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes

Allowed = Callable[[float, float, np.ndarray, float], np.ndarray]
"""``allowed(rtol, atol, want, scale)``: the error each element of ``want`` may have."""


def to_numpy(x: Any) -> np.ndarray:
    """A CuPy array on the host; bfloat16 travels as its bits (CuPy's copies of ml_dtypes
    arrays do not all know the dtype)."""
    import cupy as cp
    if np.dtype(x.dtype) == dtypes.bfloat16:
        return cp.asnumpy(x.view(np.uint16)).view(dtypes.bfloat16)
    return cp.asnumpy(x)


def check_case(name: str, fn: Callable[[], tuple[Any, Any, Any, float]], allowed: Allowed,
               width: int) -> None:
    """Run one correctness case and print its line: ``ok`` when every element's error is
    within ``allowed`` and nothing is NaN, else ``FAIL``; an exception prints ``ERROR`` and
    its traceback (the script goes on).

    ``fn()`` returns (result, float64 reference, dtype, scale): the result and reference as
    device arrays, the dtype whose ``dtypes.TOLERANCES`` entry bounds it and the case's
    tolerance scale handed to ``allowed``. ``width`` pads the name column.
    """
    try:
        t0 = time.perf_counter()
        got, want, dt, scale = fn()
        got = to_numpy(got).astype(np.float64)
        want = to_numpy(want)
        rtol, atol = {np.dtype(k): v for k, v in dtypes.TOLERANCES.items()}[np.dtype(dt)]
        bad = np.abs(got - want) / allowed(rtol, atol, want, scale)
        worst = float(np.nanmax(bad)) if bad.size else 0.0
        nan = bool(np.isnan(got).any())
        status = "ok" if worst <= 1 and not nan else "FAIL"
        print(f"{name:<{width}} {status:<5} err/tol={worst:8.3g} nan={nan} "
              f"({time.perf_counter() - t0:.1f}s incl. compile)", flush=True)
    except Exception:  # noqa: BLE001 - report and keep going
        print(f"{name:<{width}} ERROR\n{traceback.format_exc()}", flush=True)


def timed(fn: Callable[[], Any], reps: int = 10, *, batch: int = 1, warmup: int = 3) -> float:
    """Median seconds of one call of ``fn``: ``reps`` samples of ``batch`` back-to-back calls
    (so that host launch work overlaps the previous call's kernels), each sample between two
    CUDA events, after ``warmup`` calls."""
    import cupy as cp
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(batch):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3 / batch)
    return float(np.median(times))


def host_us(fn: Callable[[], Any], calls: int = 200, warmup: int = 20) -> float:
    """Microseconds of one call of ``fn`` on the host clock: ``calls`` calls after ``warmup``,
    between two device synchronizations (on small operands the launch path dominates)."""
    import cupy as cp
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def host_overhead(cases: Callable[[], Sequence[tuple[str, Callable[[], Any]]]],
                  width: int) -> None:
    """Print ``host_us`` of each ``(name, fn)`` that ``cases()`` makes; an exception prints
    its traceback (the script goes on)."""
    try:
        for name, fn in cases():
            print(f"host overhead {name:<{width}} {host_us(fn):7.1f} us/call")
    except Exception:  # noqa: BLE001 - report and keep going
        print(traceback.format_exc())


def print_compiled(kernels: Any) -> None:
    """Registers and local (spill) bytes of every compiled signature of ``kernels`` (a family
    module's kernel cache values)."""
    print("\n== compiled kernels (registers, local bytes) ==")
    try:
        import cupy as cp
        drv = cp.cuda.driver
        for k in kernels:
            for launcher in k._launchers.values():
                func = getattr(launcher, "func", None)
                if func is None:
                    continue
                regs = drv.funcGetAttribute(4, func)        # CU_FUNC_ATTRIBUTE_NUM_REGS
                local = drv.funcGetAttribute(3, func)       # LOCAL_SIZE_BYTES (spills)
                print(f"{k.name[:90]:<92} regs={regs:<4} local={local}")
    except Exception:  # noqa: BLE001 - a report, never a failure
        print(traceback.format_exc())
