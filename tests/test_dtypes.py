"""Dtype names and promotion: NumPy 2 rules, extended to bfloat16."""

import numpy as np
import pytest

import tsol
from tsol import dtypes

bf16, f16, f32, f64 = dtypes.bfloat16, dtypes.float16, dtypes.float32, dtypes.float64


@pytest.mark.parametrize("operands, want", [
    ((bf16, f16), f32), ((bf16, f32), f32), ((bf16, f64), f64), ((bf16, bf16), bf16),
    ((bf16, dtypes.int8), bf16), ((bf16, dtypes.int32), f64), ((f16, dtypes.int32), f64),
    ((bf16, 2.0), bf16), ((bf16, 2), bf16), ((f32, 2.5), f32), ((dtypes.int32, 2.5), f64),
    ((dtypes.int8, 3), dtypes.int8), ((dtypes.bool_, True), dtypes.bool_),
    ((dtypes.uint8, dtypes.int8), dtypes.int16), ((f32, f16), f32),
], ids=str)
def test_result_type(operands, want):
    assert dtypes.result_type(*operands) == want


@pytest.mark.parametrize("name, want", [("bf16", bf16), ("bfloat16", bf16), ("fp16", f16),
                                        ("float32", f32), (np.float64, f64), ("int32",
                                                                              dtypes.int32)])
def test_dtype_names(name, want):
    assert dtypes.dtype(name) == want


@pytest.mark.parametrize("bad", ["complex64", "not-a-dtype", object])
def test_unsupported_dtype_names_the_fix(bad):
    with pytest.raises(tsol.DTypeError, match="Fix"):
        dtypes.dtype(bad)


def test_complex_scalar_is_rejected():
    with pytest.raises(tsol.DTypeError, match="complex"):
        dtypes.result_type(f32, 1j)


def test_half_types_compute_in_float32():
    assert dtypes.compute_dtype(bf16) == f32 and dtypes.compute_dtype(f16) == f32
    assert dtypes.compute_dtype(f64) == f64


def test_every_float_dtype_has_a_tolerance():
    assert set(dtypes.TOLERANCES) == set(dtypes.FLOATS)
