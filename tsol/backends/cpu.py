"""The ``cpu`` backend: NumPy arrays, Numba ``@njit(parallel=True)`` kernels."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import numpy as np

from tsol.backends.base import Backend


class CPUBackend(Backend):
    name = "cpu"
    kernel_package = "tsol.kernels.cpu"
    array_type_modules = ("numpy",)

    def available(self) -> bool:
        return True

    def device_key(self) -> str:
        import numba
        cpu = _cpu_model()
        return f"cpu:{platform.machine()}:{cpu}:{os.cpu_count()}c:numba-{numba.__version__}"

    def array_module(self) -> Any:
        return np

    def timer(self) -> Callable[[Callable[[], Any]], float]:
        def time_once(fn: Callable[[], Any]) -> float:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        return time_once


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip().replace(" ", "_")
    except OSError:
        pass
    return platform.processor() or "unknown"
