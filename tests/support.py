"""Shared test helpers: tolerances (the one place they live), inputs, views, comparison, VJP check.

Every kernel test compares against the op's float64 reference on fresh random inputs. Outputs
are poisoned with NaN before kernels run (conftest turns ``poison_outputs`` on), so an element
a kernel never writes fails the comparison.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

import tsol
from tsol import dtypes
from tsol.dtypes import TOLERANCES  # the one table of per-dtype tolerances
from tsol.registry import get_op

FLOAT_DTYPES = [dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16]
INT_DTYPES = [dtypes.int8, dtypes.int32, dtypes.int64, dtypes.uint8]

# Shapes that exercise tails and edges: 0-d, size-1 and size-0 dims, odd sizes past tile sizes.
SHAPES = [(), (1,), (0,), (7,), (129,), (4099,), (1, 1), (3, 0, 5), (7, 129), (33, 65, 3),
          (2, 3, 4, 5, 6)]


def dtype_id(dt: Any) -> str:
    return str(np.dtype(dt))


def rand(shape: Sequence[int], dt: Any, rng: np.random.Generator, *, low: float = -3.0,
         high: float = 3.0, positive: bool = False) -> np.ndarray:
    """Fresh random array of ``dt``; floats uniform in [low, high) (or (0.1, high) if positive)."""
    dt = np.dtype(dt)
    if dt == dtypes.bool_:
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(low), info.min), min(int(high) + 1, info.max)
        return rng.integers(max(lo, 1) if positive else lo, hi, size=shape).astype(dt)
    lo = 0.1 if positive else low
    return rng.uniform(lo, high, size=shape).astype(dt)


def views(x: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The array itself plus non-contiguous views of the same shape family."""
    yield "contig", x
    if x.ndim >= 2:
        yield "transposed", np.ascontiguousarray(x.swapaxes(0, 1)).swapaxes(0, 1)
    if x.ndim >= 1 and x.shape[-1] > 1:
        big = np.concatenate([x, x], axis=-1)
        yield "strided", big[..., ::2]
        yield "reversed", np.ascontiguousarray(x[..., ::-1])[..., ::-1]


def to64(x: Any) -> Any:
    """float64 copy of a float array (half types included) for the reference; others as is."""
    if isinstance(x, np.ndarray) and (x.dtype.kind == "f" or x.dtype in dtypes.HALF):
        return x.astype(np.float64)
    return x


def reference(op_name: str, *operands: Any, **attrs: Any) -> np.ndarray:
    """The op's float64 reference on float64 copies of ``operands``."""
    return get_op(op_name).reference(*[to64(o) for o in operands], **attrs)


def assert_close(got: np.ndarray, want: np.ndarray, dt: Any, *, scale: float = 1.0,
                 rtol_mult: float = 1.0, what: str = "") -> None:
    """Assert ``got`` matches the float64 reference within ``dt``'s tolerance (exact for ints)."""
    dt = np.dtype(dt)
    got_a, want_a = np.asarray(got), np.asarray(want)
    assert got_a.shape == want_a.shape, f"{what}: shape {got_a.shape} != {want_a.shape}"
    if dt not in TOLERANCES:
        np.testing.assert_array_equal(got_a, want_a, err_msg=what)
        return
    rtol, atol = TOLERANCES[dt]
    g = got_a.astype(np.float64)
    w = want_a.astype(np.float64)
    np.testing.assert_allclose(g, w, rtol=rtol * rtol_mult, atol=atol * scale * rtol_mult,
                               equal_nan=True, err_msg=what)
    assert not np.isnan(g[~np.isnan(w)]).any(), f"{what}: NaN where the reference has none"


def check_vjp(fn: Callable[..., np.ndarray], primals: Sequence[np.ndarray],
              vjp: Callable[..., Sequence[Any]], *, eps: float = 1e-6, rtol: float = 1e-6,
              atol: float = 1e-7, seed: int = 0) -> None:
    """Check ``vjp(g, *primals)`` against central differences of ``<g, fn(*primals)>``.

    Everything runs in float64; ``vjp`` returns one cotangent per primal (None to skip one).
    """
    rng = np.random.default_rng(seed)
    primals = [np.array(p, dtype=np.float64) for p in primals]
    y = np.asarray(fn(*primals))
    g = rng.standard_normal(y.shape)
    grads = vjp(g, *primals)
    assert len(grads) == len(primals), "vjp must return one cotangent per primal"
    for i, (p, grad) in enumerate(zip(primals, grads)):
        if grad is None:
            continue
        grad = np.asarray(grad)
        assert grad.shape == p.shape, f"cotangent {i} has shape {grad.shape}, primal {p.shape}"
        numeric = np.zeros_like(p)
        flat = p.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            plus = np.sum(g * np.asarray(fn(*primals)))
            flat[j] = old - eps
            minus = np.sum(g * np.asarray(fn(*primals)))
            flat[j] = old
            numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"VJP of input {i} disagrees with finite differences")


__all__ = ["TOLERANCES", "FLOAT_DTYPES", "INT_DTYPES", "SHAPES", "dtype_id", "rand", "views",
           "to64", "reference", "assert_close", "check_vjp", "tsol"]
