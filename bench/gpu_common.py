"""Helpers shared by the GPU check scripts (``bench/gpu_*_check.py``): CuPy event timing and
the register/spill report of the kernels a script compiled."""

from __future__ import annotations

import traceback
from typing import Any, Callable

import numpy as np


def timed(fn: Callable[[], Any], reps: int = 10) -> float:
    """Median seconds of ``fn`` over ``reps`` calls, each between two CUDA events, after three
    warm-up calls."""
    import cupy as cp
    for _ in range(3):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


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
