"""GPU backends (``cuda``, ``rocm``, ``oneapi``): registered now, kernels arrive with their issues.

Their modules import the GPU stack only inside methods, so ``import tsol`` stays light and
``available()`` answers without raising on machines with no GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable, Sequence

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


@functools.lru_cache(maxsize=None)
def cuda_simulator() -> bool:
    """True when the CUDA backend keeps arrays in host memory: under Numba's CUDA simulator
    (``NUMBA_ENABLE_CUDASIM=1``) or in compile-only mode (``TSOL_CUDA_COMPILE_ONLY=1``, kernels
    compile to PTX and do not run)."""
    return any(os.environ.get(v, "0") not in ("", "0")
               for v in ("NUMBA_ENABLE_CUDASIM", "TSOL_CUDA_COMPILE_ONLY"))


class CUDABackend(_LazyGPUBackend):
    """NVIDIA GPUs: CuPy arrays (torch CUDA tensors and other DLPack producers adopted zero-copy),
    numba-cuda kernels on CuPy's current stream.

    Under Numba's CUDA simulator the backend keeps its arrays in host memory: it runs on NumPy
    arrays when it is the default backend (``tsol.config.override(default_backend="cuda")``),
    which is how CI exercises the CUDA kernels without a GPU.
    """

    name = "cuda"
    kernel_package = "tsol.kernels.cuda"
    array_type_modules = ("cupy",)
    requires = ("cupy", "numba.cuda")
    extra = "cuda"

    def __init__(self) -> None:
        super().__init__()
        self._ceilings: dict[str, float] | None = None
        self._scalars: dict[Any, Any] = {}

    def available(self) -> bool:
        if cuda_simulator():
            return importlib.util.find_spec("numba.cuda") is not None
        return super().available()

    def host_arrays(self) -> bool:
        return cuda_simulator()

    def owns(self, x: Any) -> bool:
        module = type(x).__module__.split(".", 1)[0]
        if module == "cupy":
            return True
        if module == "torch":
            return bool(getattr(x, "is_cuda", False))
        return hasattr(x, "__cuda_array_interface__") and module != "numpy"

    def adopt(self, x: Any) -> Any:
        if cuda_simulator() or type(x).__module__.split(".", 1)[0] == "cupy" \
                or not hasattr(x, "shape"):
            return x
        import cupy
        return cupy.from_dlpack(x) if hasattr(x, "__dlpack__") else cupy.asarray(x)

    def export(self, result: Any, like: Any) -> Any:
        if type(like).__module__.split(".", 1)[0] == "torch" and hasattr(result, "__dlpack__"):
            import torch
            return torch.from_dlpack(result)
        return result

    def _device_count(self) -> int:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount())

    def scalar_array(self, value: Any, dtype: Any) -> Any:
        # A host-to-device copy per call would cost more than the kernel: keep one read-only
        # 0-d array per (device, value, dtype).
        if cuda_simulator():
            return super().scalar_array(value, dtype)
        import cupy
        key = (cupy.cuda.runtime.getDevice(), type(value), value, dtype)
        a = self._scalars.get(key)
        if a is None:
            if len(self._scalars) > 1024:
                self._scalars.clear()
            a = self._scalars[key] = cupy.asarray(value, dtype=dtype)
        return a

    def replayer(self) -> Callable[[Sequence[Any], Callable[[], Any]], None] | None:
        from tsol.kernels.cuda import replay
        return replay.PlanReplay()

    def array_module(self) -> Any:
        if cuda_simulator():
            import numpy
            return numpy
        import cupy
        return cupy

    def data_ptr(self, a: Any) -> int:
        if cuda_simulator():
            return super().data_ptr(a)
        return int(a.data.ptr)

    def device_key(self) -> str:
        if cuda_simulator():
            return "cuda:host-arrays"
        import cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return (f"cuda:{name.replace(' ', '_')}:sm{dev.compute_capability}:"
                f"driver{cupy.cuda.runtime.driverGetVersion()}")

    def synchronize(self) -> None:
        if not cuda_simulator():
            import cupy
            cupy.cuda.get_current_stream().synchronize()

    def timer(self) -> Callable[[Callable[[], Any]], float]:
        if cuda_simulator():
            return super().timer()
        import cupy

        def time_once(fn: Callable[[], Any]) -> float:
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return cupy.cuda.get_elapsed_time(start, stop) / 1e3
        return time_once

    def ceilings(self) -> dict[str, float]:
        """Device copy bandwidth (read + write, GB/s), measured once per process on 1 GiB."""
        if cuda_simulator():
            return {}
        if self._ceilings is None:
            import cupy
            src = cupy.ones(1 << 28, cupy.float32)
            dst = cupy.empty_like(src)
            timer = self.timer()
            for _ in range(3):
                dst[...] = src
            t = min(timer(lambda: dst.__setitem__(Ellipsis, src)) for _ in range(10))
            self._ceilings = {"copy_GBps": 2 * src.nbytes / t / 1e9}
            del src, dst
        return self._ceilings


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
