"""Scalar helpers that CPU kernels inline: bit casts, float16/bfloat16 storage, vectorizable math.

Numba has no CPU float16 or bfloat16, so kernels see half arrays as ``uint16`` bit patterns
(``storage_view``) and convert with ``load_f16``/``store_f16``/``load_bf16``/``store_bf16``,
computing in float32. libm's ``expf``/``logf`` are scalar calls that stop LLVM from vectorizing
a loop; ``exp_f32``/``log_f32`` are branch-free polynomial versions (within 2 ulp of the
float64 result on their whole range) that vectorize.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic

from tsol import dtypes
from tsol.kernels.cpu.jit import scalar_jit

# --- bit casts -------------------------------------------------------------------------------


def _bitcast(src, dst):
    @intrinsic
    def cast(typingctx, v):
        sig = dst(src)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst))
        return sig, codegen
    return cast


i32_as_f32 = _bitcast(types.int32, types.float32)
f32_as_i32 = _bitcast(types.float32, types.int32)


# --- half storage ----------------------------------------------------------------------------

def storage_view(a: np.ndarray) -> np.ndarray:
    """The array Numba kernels see: half types as uint16 bit patterns, others unchanged."""
    return a.view(np.uint16) if a.dtype in dtypes.HALF else a


def storage_kind(dt: np.dtype) -> str:
    """'bf16', 'f16' or 'native': which load/store pair a kernel uses for this dtype."""
    return "bf16" if dt == dtypes.bfloat16 else "f16" if dt == dtypes.float16 else "native"


@scalar_jit
def load_bf16(u):
    return i32_as_f32(np.int32(u) << np.int32(16))


@scalar_jit
def store_bf16(x):
    """float32 -> bfloat16 bits, rounding to nearest even; NaN stays a quiet NaN."""
    b = f32_as_i32(np.float32(x))
    if x != x:
        return np.uint16(((b >> np.int32(16)) & np.int32(0xFFFF)) | np.int32(0x40))
    b = b + np.int32(0x7FFF) + ((b >> np.int32(16)) & np.int32(1))
    return np.uint16((b >> np.int32(16)) & np.int32(0xFFFF))


@scalar_jit
def load_f16(u):
    h = np.int32(u)
    sign = (h & np.int32(0x8000)) << np.int32(16)
    em = h & np.int32(0x7FFF)
    # Shift exponent and mantissa into float32 position and rescale by 2**112; this is exact
    # for normal and subnormal halves. Infinities and NaNs keep an all-ones exponent.
    f = i32_as_f32(em << np.int32(13)) * np.float32(5.192296858534828e33)
    if em >= np.int32(0x7C00):
        f = i32_as_f32((em << np.int32(13)) | np.int32(0x7F800000))
    return i32_as_f32(f32_as_i32(f) | sign)


@scalar_jit
def store_f16(x):
    """float32 -> float16 bits, rounding to nearest even, with overflow to inf."""
    f = f32_as_i32(np.float32(x))
    sign = (f >> np.int32(16)) & np.int32(0x8000)
    a = f & np.int32(0x7FFFFFFF)
    if a >= np.int32(0x47800000):                      # |x| >= 65536, inf or nan
        o = np.int32(0x7E00) if a > np.int32(0x7F800000) else np.int32(0x7C00)
    elif a < np.int32(0x38800000):                     # below the smallest normal half
        g = i32_as_f32(a) + np.float32(0.5)            # denorm magic: 0.5 aligns the ulp
        o = f32_as_i32(g) - np.int32(0x3F000000)
    else:
        odd = (a >> np.int32(13)) & np.int32(1)
        a = a + np.int32(-939524096 + 0xFFF) + odd     # rebias exponent 127 -> 15, round
        o = a >> np.int32(13)
        if o > np.int32(0x7C00):
            o = np.int32(0x7C00)
    return np.uint16(o | sign)


# --- vectorizable float32 math ---------------------------------------------------------------

@scalar_jit
def exp_f32(x):
    """exp for float32 compute: range-reduced degree-6 polynomial, 2**k by exponent bits."""
    xc = min(max(x, np.float32(-103.0)), np.float32(88.72283))
    k = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))
    r = xc - k * np.float32(0.693359375)
    r = r - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    # 2**k in two factors so that k down to -149 (subnormal results) stays representable.
    k1 = np.int32(k) >> np.int32(1)
    k2 = np.int32(k) - k1
    y = p * i32_as_f32((k1 + np.int32(127)) << np.int32(23)) \
        * i32_as_f32((k2 + np.int32(127)) << np.int32(23))
    if x > np.float32(88.72283):
        y = np.float32(np.inf)
    if x < np.float32(-103.97208):
        y = np.float32(0.0)
    if x != x:
        y = x
    return y


@scalar_jit
def log1p_poly_f32(f):
    """Cephes logf's minimax P(f): log(1 + f) = f - f**2 / 2 + f**3 * P(f) for |f| < 0.42."""
    y = np.float32(7.0376836292e-2)
    y = y * f - np.float32(1.1514610310e-1)
    y = y * f + np.float32(1.1676998740e-1)
    y = y * f - np.float32(1.2420140846e-1)
    y = y * f + np.float32(1.4249322787e-1)
    y = y * f - np.float32(1.6668057665e-1)
    y = y * f + np.float32(2.0000714765e-1)
    y = y * f - np.float32(2.4999993993e-1)
    return y * f + np.float32(3.3333331174e-1)


@scalar_jit
def log_f32(x):
    """log for float32 compute (Cephes logf polynomial); log(0) = -inf, log(<0) = nan."""
    xs = x
    bias = np.int32(0)
    if xs < np.float32(1.1754944e-38):                 # subnormals: scale into normal range
        xs = xs * np.float32(8388608.0)
        bias = np.int32(23)
    i = f32_as_i32(xs)
    e = ((i >> np.int32(23)) & np.int32(0xFF)) - np.int32(126) - bias
    m = i32_as_f32((i & np.int32(0x7FFFFF)) | np.int32(0x3F000000))   # m in [0.5, 1)
    if m < np.float32(0.70710678):
        e = e - np.int32(1)
        f = m + m - np.float32(1.0)
    else:
        f = m - np.float32(1.0)
    fe = np.float32(e)
    z = f * f
    y = log1p_poly_f32(f) * f * z
    y = y + np.float32(-2.12194440e-4) * fe
    y = y - np.float32(0.5) * z
    out = f + y + np.float32(0.693359375) * fe
    if x == np.float32(0.0):
        out = np.float32(-np.inf)
    if x < np.float32(0.0) or x != x:
        out = np.float32(np.nan)
    if x == np.float32(np.inf):
        out = x
    return out
