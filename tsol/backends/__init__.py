"""Backend objects by name, and which backend owns a set of operands."""

from __future__ import annotations

from typing import Any, Iterable

from tsol import config
from tsol.backends.base import Backend
from tsol.backends.cpu import CPUBackend
from tsol.backends.gpu import CUDABackend, OneAPIBackend, ROCmBackend
from tsol.errors import BackendError

BACKENDS: dict[str, Backend] = {b.name: b for b in
                                (CPUBackend(), CUDABackend(), ROCmBackend(), OneAPIBackend())}


def get(name: str) -> Backend:
    """The backend called ``name``; raises BackendError for unknown names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"tsol: unknown backend {name!r}. Fix: use one of "
                           f"{sorted(BACKENDS)}.") from None


def available() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name, b in BACKENDS.items() if b.available()]


def owner(x: Any) -> Backend | None:
    """The backend whose array type ``x`` is, or None for anything else.

    NumPy arrays belong to ``cpu``, unless the default backend keeps its arrays in host memory
    (``host_arrays()``: the CUDA simulator), which then owns them.
    """
    for b in BACKENDS.values():
        if b.owns(x):
            if b.name == "cpu":
                default = BACKENDS.get(config.get().default_backend)
                if default is not None and default is not b and default.host_arrays():
                    return default
            return b
    return None


def for_arrays(arrays: Iterable[Any]) -> Backend | None:
    """The one backend owning every array in ``arrays``; None if there are none; else raises."""
    found: dict[str, Backend] = {}
    for a in arrays:
        b = owner(a)
        if b is not None:
            found.setdefault(b.name, b)
    if len(found) > 1:
        raise BackendError(f"operands live on different backends ({', '.join(sorted(found))})")
    return next(iter(found.values()), None)


__all__ = ["Backend", "BACKENDS", "get", "available", "owner", "for_arrays"]
