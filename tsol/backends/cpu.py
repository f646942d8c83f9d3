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

    def __init__(self) -> None:
        super().__init__()
        self._ceilings: dict[str, float] | None = None

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

    def ceilings(self) -> dict[str, float]:
        """The host's ceilings, measured once per process (about half a second; under two on
        a slow host): ``copy_GBps``, NumPy copying a 64 MiB float32 array (read + write
        counted), and ``gemm_fp32_GFLOPs``, NumPy's float32 matmul (its BLAS) at 2048^3.

        >>> sorted(CPUBackend().ceilings())
        ['copy_GBps', 'gemm_fp32_GFLOPs']
        """
        if self._ceilings is None:
            self._ceilings = {"copy_GBps": _copy_GBps(), "gemm_fp32_GFLOPs": _gemm_GFLOPs()}
        return dict(self._ceilings)


def _best_time(fn: Callable[[], Any], repeats: int, budget_s: float) -> float:
    """Best wall time of ``fn`` over ``repeats`` calls, fewer (at least one) past ``budget_s``."""
    best, start = float("inf"), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return best


def _copy_GBps(n: int = 1 << 24) -> float:
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)                          # first touch of dst's pages
    return 2 * src.nbytes / _best_time(lambda: np.copyto(dst, src), 5, 0.3) / 1e9


def _gemm_GFLOPs(n: int = 2048) -> float:
    a = np.full((1024, 1024), 0.5, np.float32)
    np.matmul(a, a)                              # starts the BLAS threads
    a = np.full((n, n), 0.5, np.float32)
    out = np.empty_like(a)
    t = _best_time(lambda: np.matmul(a, a, out=out), 3, 0.6)
    return 2.0 * n ** 3 / t / 1e9


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip().replace(" ", "_")
    except OSError:
        pass
    return platform.processor() or "unknown"
