"""GPU backends (``cuda``, ``rocm``, ``oneapi``): registered now, kernels arrive with their issues.

Their modules import the GPU stack only inside methods, so ``import tsol`` stays light and
``available()`` answers without raising on machines with no GPU.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tsol.backends.base import Backend


class _LazyGPUBackend(Backend):
    requires: tuple[str, ...] = ()

    def available(self) -> bool:
        try:
            if not all(importlib.util.find_spec(m) is not None for m in self.requires):
                return False
            return self._device_count() > 0
        except Exception:  # noqa: BLE001 - available() must never raise
            return False

    def why_unavailable(self) -> str:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return (f"backend '{self.name}' needs {', '.join(missing)}; install it with "
                    f"pip install 'tsol[{self.extra}]'")
        return f"backend '{self.name}' found no device"

    extra = ""

    def _device_count(self) -> int:
        return 0


class CUDABackend(_LazyGPUBackend):
    name = "cuda"
    kernel_package = "tsol.kernels.cuda"
    array_type_modules = ("cupy",)
    requires = ("cupy", "numba.cuda")
    extra = "cuda"

    def _device_count(self) -> int:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount())

    def array_module(self) -> Any:
        import cupy
        return cupy


class ROCmBackend(_LazyGPUBackend):
    name = "rocm"
    kernel_package = "tsol.kernels.rocm"
    array_type_modules = ()  # CuPy-for-ROCm arrays are told apart from CUDA ones at run time
    requires = ("cupy", "numba.hip")
    extra = "rocm"


class OneAPIBackend(_LazyGPUBackend):
    name = "oneapi"
    kernel_package = "tsol.kernels.oneapi"
    array_type_modules = ("dpnp", "dpctl")
    requires = ("dpnp", "dpctl")
    extra = "oneapi"

    def _device_count(self) -> int:
        import dpctl
        return len(dpctl.get_devices())

    def array_module(self) -> Any:
        import dpnp
        return dpnp
