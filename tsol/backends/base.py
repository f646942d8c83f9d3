"""The backend contract: what TSOL needs to know about a device family, on one screen."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence


class Backend:
    """A device family: which arrays it owns, how to allocate and time, where its kernels live.

    Subclasses set ``name`` and ``kernel_package`` and override the methods below. Nothing here
    imports a GPU stack at ``import tsol`` time: ``available()`` imports lazily and never raises.
    """

    name: str = ""
    kernel_package: str = ""
    array_type_modules: tuple[str, ...] = ()
    """Top-level module names whose array types this backend owns (``("numpy",)``)."""

    def __init__(self) -> None:
        self._kernels_loaded = False

    # -- identity -------------------------------------------------------------------------
    def available(self) -> bool:
        """True when this backend can run here; never raises."""
        return False

    def why_unavailable(self) -> str:
        """One line saying what is missing, for error messages."""
        return f"backend '{self.name}' is not available on this machine"

    def owns(self, x: Any) -> bool:
        """True when ``x`` is an array of this backend (checked by type, without imports)."""
        module = type(x).__module__.split(".", 1)[0]
        return module in self.array_type_modules

    def host_arrays(self) -> bool:
        """True when this backend runs on NumPy arrays in host memory (the CUDA simulator):
        as the default backend it then owns NumPy operands."""
        return False

    def adopt(self, x: Any) -> Any:
        """``x`` (owned by this backend) as this backend's native array type, zero-copy."""
        return x

    def export(self, result: Any, like: Any) -> Any:
        """``result`` in the array type of the caller's operand ``like`` (zero-copy)."""
        return result

    def data_ptr(self, a: Any) -> int:
        """Address of ``a``'s first element."""
        return int(a.__array_interface__["data"][0])

    def device_key(self) -> str:
        """Stable string naming the device model and toolchain; keys compile and tuning caches."""
        raise NotImplementedError

    # -- arrays ----------------------------------------------------------------------------
    def array_module(self) -> Any:
        """The NumPy-like module of this backend's arrays."""
        raise NotImplementedError

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.array_module().empty(shape, dtype=dtype)

    def scalar_array(self, value: Any, dtype: Any) -> Any:
        """A Python scalar operand as a 0-d array of ``dtype`` that kernels only read."""
        return self.array_module().asarray(value, dtype=dtype)

    def replayer(self) -> Callable[[Sequence[Any], Callable[[], Any]], None] | None:
        """A recorder for one call signature of a ``replays`` kernel, or None (no replay here):
        ``rec(arrays, run)`` calls ``run()`` the first time, recording its launches, and later
        replays them with the data pointers of ``arrays`` (the operands and the output, in the
        same order each time)."""
        return None

    def synchronize(self) -> None:
        """Wait for queued work; a no-op on synchronous backends."""

    def timer(self) -> Callable[[Callable[[], Any]], float]:
        """``time(fn) -> seconds``: one call of ``fn`` timed with this backend's clock."""
        raise NotImplementedError

    def ceilings(self) -> dict[str, float]:
        """Measured device ceilings (``copy_GBps``, ``gemm_fp32_GFLOPs``...); may be empty."""
        return {}

    # -- kernels ---------------------------------------------------------------------------
    def load_kernels(self) -> None:
        """Import this backend's kernel package once, which registers its kernels."""
        if not self._kernels_loaded:
            try:
                importlib.import_module(self.kernel_package)
            except ImportError as exc:
                # Kernels registered before the failure stay; the next call raises again
                # rather than running with a silently partial set.
                from tsol.errors import BackendError
                extra = getattr(self, "extra", "") or self.name
                raise BackendError(f"tsol: backend '{self.name}' could not load its kernels "
                                   f"({exc}). Fix: pip install 'tsol[{extra}]'.") from exc
            self._kernels_loaded = True

    def __repr__(self) -> str:
        return f"<tsol backend {self.name}>"
