"""Dtype names and promotion.

TSOL uses NumPy dtypes; bfloat16 is ``ml_dtypes.bfloat16``. Promotion follows NumPy (NEP 50:
Python scalars are weak and take the array's kind), extended to bfloat16 as NumPy treats
float16, with bfloat16 + float16 -> float32.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from tsol.errors import DTypeError

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
bool_ = np.dtype(np.bool_)
int8, int16, int32, int64 = (np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))
uint8, uint16, uint32, uint64 = (np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64))

FLOATS = frozenset({float16, bfloat16, float32, float64})
INTEGERS = frozenset({int8, int16, int32, int64, uint8, uint16, uint32, uint64})
SIGNED = frozenset({int8, int16, int32, int64})
NUMERIC = FLOATS | INTEGERS
ALL = NUMERIC | {bool_}
HALF = frozenset({float16, bfloat16})
"""Storage-only floats: kernels load them, compute in float32 and store them back."""

TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    float64: (1e-12, 1e-12),
    float32: (2e-6, 2e-6),
    float16: (2e-3, 2e-3),
    bfloat16: (1.6e-2, 1.6e-2),
}
"""(rtol, atol) of a kernel result against the float64 reference computed from the same, already
rounded inputs: a few units of the dtype's rounding error. Tests and benchmark checks use this
one table; reductions scale ``atol`` by the size of the terms summed."""

_ALIASES = {"bf16": bfloat16, "bfloat16": bfloat16, "fp16": float16, "half": float16,
            "fp32": float32, "float": float32, "fp64": float64, "double": float64}


def dtype(x: Any) -> np.dtype:
    """Resolve a dtype-like (``np.float32``, ``"bf16"``, ``"bfloat16"``, ``np.dtype``) or raise."""
    if isinstance(x, str) and x.lower() in _ALIASES:
        return _ALIASES[x.lower()]
    try:
        dt = np.dtype(x)
    except TypeError as exc:
        raise DTypeError(f"tsol: {x!r} is not a dtype. Fix: pass a NumPy dtype, "
                         f"tsol.bfloat16, or a name such as 'float32' or 'bf16'.") from exc
    if dt not in ALL:
        raise DTypeError(f"tsol: dtype {dt} is not supported. Fix: use one of "
                         f"{', '.join(sorted(str(d) for d in ALL))}.")
    return dt


def is_float(dt: np.dtype) -> bool:
    return dt in FLOATS


def compute_dtype(dt: np.dtype) -> np.dtype:
    """Dtype kernels compute in: float32 for the half types, else the dtype itself."""
    return float32 if dt in HALF else dt


def _strong(dts: list[np.dtype]) -> np.dtype:
    """NumPy promotion of array dtypes, with bfloat16 treated as float16 is."""
    has_bf16 = bfloat16 in dts
    if has_bf16 and float16 in dts:
        subst = [float32 if d in HALF else d for d in dts]
        return np.result_type(*subst)
    subst = [float16 if d == bfloat16 else d for d in dts]
    out = np.result_type(*subst)
    return bfloat16 if has_bf16 and out == float16 else out


def result_type(*operands: Any) -> np.dtype:
    """Promote array dtypes and weak Python scalars the way NumPy 2 does.

    ``operands`` are dtypes, arrays, or Python ``bool``/``int``/``float`` values.
    """
    strong, weak = [], []
    for o in operands:
        if isinstance(o, (bool, int, float)) and not isinstance(o, np.generic):
            weak.append(o)
        elif isinstance(o, complex):
            raise DTypeError("tsol: complex values are not supported. Fix: pass real operands.")
        else:
            strong.append(np.dtype(getattr(o, "dtype", o)))
    if not strong:
        return np.result_type(*weak)
    base = _strong(strong)
    if not weak:
        return base
    if base == bfloat16:
        widened = np.result_type(float16, *weak)
        return bfloat16 if widened == float16 else widened
    return np.result_type(base, *weak)
