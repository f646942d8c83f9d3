"""Running ops on the ``cuda`` backend in tests, in each of its three modes.

- CI, Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set by ``tests/conftest.py`` unless
  ``-m gpu`` is asked for): the backend runs its kernels as Python on NumPy arrays; tiny sizes.
- compile-only (``TSOL_CUDA_COMPILE_ONLY=1``, ``test_ptx.py`` re-runs these tests so): every
  kernel signature compiles to PTX for sm_90 and nothing runs; results are not compared.
- a real GPU (``pytest -m gpu``): operands move to CuPy, real sizes.

``check(op, inputs, attrs, dt)`` runs ``tsol.<op>`` on the backend and compares it with the
op's float64 reference using the per-dtype tolerances of ``tests/support.py``; outputs are
NaN-poisoned by the session fixture, so an unwritten element fails.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import numpy as np
import pytest

import tsol
from tests.support import assert_close, reference

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
COMPILE_ONLY = os.environ.get("TSOL_CUDA_COMPILE_ONLY", "0") not in ("", "0")
HOST = SIMULATOR or COMPILE_ONLY
"""True when the backend runs on NumPy arrays (simulator or compile-only)."""
PREBUILD = os.environ.get("TSOL_CUDA_COMPILE_ONLY") == "cubin"
"""Compile-only mode building the GPU run's cubins (``bench/gpu_prebuild.py``): GPU sizes."""

needs_cuda = pytest.mark.skipif(not HOST and not tsol.backends.get("cuda").available(),
                                reason="no CUDA device, simulator or compile-only mode")
CUDA_TESTS = [needs_cuda, pytest.mark.gpu]
"""``pytestmark = CUDA_TESTS`` in every CUDA test module: simulator in CI, real GPU with -m gpu."""


def size(tiny: int, real: int) -> int:
    """``tiny`` under the simulator and compile-only mode, ``real`` on a GPU (and when
    prebuilding its cubins)."""
    return tiny if HOST and not PREBUILD else real


def to_device(x: Any) -> Any:
    """A NumPy array or scalar as a CuPy array on a real GPU (Python scalars stay scalars)."""
    if HOST or not isinstance(x, (np.ndarray, np.generic)):
        return x
    import cupy
    return cupy.asarray(x)


def to_host(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(to_host(e) for e in x)
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


@contextlib.contextmanager
def on_cuda() -> Iterator[None]:
    """Run ops on ``cuda``: NumPy operands belong to it under the simulator/compile-only."""
    with tsol.config.override(default_backend="cuda"):
        yield


def run(op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None) -> Any:
    """``tsol.<op>(*inputs, **attrs)`` on the cuda backend, result on the host."""
    attrs = {k: to_device(v) for k, v in (attrs or {}).items()}     # bias=, residual= too
    with on_cuda():
        return to_host(getattr(tsol, op)(*[to_device(x) for x in inputs], **attrs))


def check(op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None,
          dt: Any = None, *, ref_attrs: dict[str, Any] | None = None, scale: float = 1.0,
          rtol_mult: float = 1.0) -> Any:
    """Run ``op`` on cuda and compare with its float64 reference (skipped in compile-only)."""
    attrs = attrs or {}
    got = run(op, inputs, attrs)
    if COMPILE_ONLY:
        return got
    want = reference(op, *inputs, **(attrs if ref_attrs is None else ref_attrs))
    dt = dt if dt is not None else np.asarray(got).dtype
    if isinstance(want, (list, tuple)):
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, dt, scale=scale, rtol_mult=rtol_mult, what=f"cuda {op}")
    else:
        assert_close(got, want, dt, scale=scale, rtol_mult=rtol_mult, what=f"cuda {op}")
    return got


def assert_equal(got: Any, want: Any) -> None:
    """Exact comparison of a cuda result (skipped in compile-only mode, where nothing runs)."""
    if not COMPILE_ONLY:
        np.testing.assert_array_equal(to_host(got), want)
