"""Random ops on the counter-based Philox4x32-10 generator: rng_uniform, rng_normal, dropout.

The stream rule (every backend implements it bit for bit)
---------------------------------------------------------
Philox4x32-10 (Salmon et al., SC'11; the Random123 library) maps a counter of four 32-bit words
and a key of two to four 32-bit output words w0..w3. TSOL uses

- key = (seed & 0xFFFFFFFF, seed >> 32), for a Python int seed in [0, 2**64);
- counter number c = (c & 0xFFFFFFFF, c >> 32, 0, 0).

The element at flat C-order index i has stream position j = offset + i. It reads counter
c = j // E at slot s = j % E, where E = 4 values per counter for float32, float16, bfloat16 and
dropout, and E = 2 for float64. With u24(w) = (w >> 8) * 2**-24 and
u53(a, b) = ((a << 21) | (b >> 11)) * 2**-53 (a gives the high bits):

- rng_uniform, float32: u = u24(w_s). float16 / bfloat16: u = (w_s >> 21) * 2**-11 and
  (w_s >> 24) * 2**-8, so every draw is exact in the storage type and stays in [0, 1).
  float64: u = u53(w_2s, w_2s+1). Value: low + (high - low) * u, evaluated in the compute dtype
  (float32 for float32 and the half types, which are then rounded to nearest even) with low and
  (high - low) rounded to it.
- rng_normal, Box-Muller on a pair: float64 uses u1 = u53(w0, w1) + 2**-53 (in (0, 1]) and
  u2 = u53(w2, w3); the others use pair k = s // 2 with u1 = u24(w_2k) + 2**-24 and
  u2 = u24(w_2k+1). z = sqrt(-2 log u1) * (cos(2 pi u2) if s is even else sin(2 pi u2)), and
  the value is mean + std * z in the compute dtype (half types rounded from float32).
- dropout: element i is kept iff u24(w_s) >= p with E = 4 for every dtype, that is iff
  ``rng_uniform(x.shape, seed=seed, offset=offset, dtype=float32)[i] >= p``.

So the value at flat index i depends only on (seed, offset + i) and the dtype: it is the same for
any tile or thread split and under any sharding (a shard that starts at flat index k passes
offset=k). Uniform values and dropout masks use only exact integer steps and single IEEE
roundings, so every backend gives the same bits; rng_normal uses the same draws everywhere, but
its log/cos/sin may differ between backends in the last units of the dtype.
``philox4x32_10`` below is the NumPy reference of the generator.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

import tsol
from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError, ShapeError, op_error
from tsol.ops.base import Meta, defop
from tsol.ops.rules import require_float
from tsol.registry import NON_DIFFERENTIABLE

__all__ = ["rng_uniform", "rng_normal", "dropout"]

_MASK = 0xFFFFFFFF
MAX_POSITION = 2 ** 62
"""offset + size must not exceed this: stream positions stay exact in int64 everywhere."""


# --- NumPy reference of the generator ----------------------------------------------------------

def philox4x32_10(counter_words: Any, key_words: Any) -> np.ndarray:
    """Philox4x32-10 in NumPy: counters (..., 4) and keys (..., 2) of uint32 -> words (..., 4)."""
    ctr = np.asarray(counter_words, dtype=np.uint64)
    key = np.asarray(key_words, dtype=np.uint64)
    c0, c1, c2, c3 = (ctr[..., n] for n in range(4))
    k0, k1 = key[..., 0], key[..., 1]
    for _ in range(10):
        p0 = c0 * 0xD2511F53
        p1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
        k0 = (k0 + 0x9E3779B9) & _MASK
        k1 = (k1 + 0xBB67AE85) & _MASK
    return np.stack(np.broadcast_arrays(c0, c1, c2, c3), axis=-1).astype(np.uint32)


def _stream(seed: int, offset: int, size: int, per: int) -> tuple[np.ndarray, np.ndarray]:
    """Each element's counter words (size, 4) as uint64, and its slot s = (offset + i) % per."""
    j = offset + np.arange(size, dtype=np.uint64)
    c = j // np.uint64(per)
    zero = np.zeros_like(c)
    words = philox4x32_10(np.stack([c & _MASK, c >> 32, zero, zero], axis=-1),
                          [seed & _MASK, seed >> 32]).astype(np.uint64)
    return words, (j % np.uint64(per)).astype(np.intp)


def _pick(words: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(words, index[:, None], axis=1)[:, 0]


def _u24(w: np.ndarray) -> np.ndarray:
    return (w >> 8).astype(np.float64) * 2.0 ** -24


def _u53(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a << 21) | (b >> 11)).astype(np.float64) * 2.0 ** -53


_HALF_BITS = {dtypes.float16: 11, dtypes.bfloat16: 8}


def _generated(shape: Any, seed: int, offset: int, dtype: Any
               ) -> tuple[tuple[int, ...], np.dtype, np.ndarray, np.ndarray]:
    """(shape, dtype, counter words, slots) of a generated array: E = 2 values a counter for
    float64, 4 for the others."""
    shape, dt = _shape_tuple(shape), np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    words, s = _stream(seed, offset, size, 2 if dt == dtypes.float64 else 4)
    return shape, dt, words, s


def _uniform_ref(*, shape: Any, seed: int, offset: int = 0, dtype: Any = dtypes.float32,
                 low: float = 0.0, high: float = 1.0) -> np.ndarray:
    shape, dt, words, s = _generated(shape, seed, offset, dtype)
    if dt == dtypes.float64:
        u = _u53(_pick(words, 2 * s), _pick(words, 2 * s + 1))
    else:
        bits = _HALF_BITS.get(dt, 24)
        u = (_pick(words, s) >> (32 - bits)).astype(np.float64) * 2.0 ** -bits
    return (low + (high - low) * u).reshape(shape)


def _normal_ref(*, shape: Any, seed: int, offset: int = 0, dtype: Any = dtypes.float32,
                mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    shape, dt, words, s = _generated(shape, seed, offset, dtype)
    if dt == dtypes.float64:
        u1 = _u53(words[:, 0], words[:, 1]) + 2.0 ** -53
        u2 = _u53(words[:, 2], words[:, 3])
    else:
        pair = 2 * (s // 2)
        u1 = _u24(_pick(words, pair)) + 2.0 ** -24
        u2 = _u24(_pick(words, pair + 1))
    angle = 2.0 * np.pi * u2
    z = np.sqrt(-2.0 * np.log(u1)) * np.where(s % 2 == 0, np.cos(angle), np.sin(angle))
    return (mean + std * z).reshape(shape)


def _dropout_ref(x: np.ndarray, p: float, *, seed: int, offset: int = 0,
                 training: bool = True) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not training or p == 0:
        return x.copy()
    words, s = _stream(seed, offset, x.size, 4)
    keep = (_u24(_pick(words, s)) >= p).reshape(x.shape)
    return np.where(keep, x * (1.0 / (1.0 - p)), 0.0)


# --- attribute rules ---------------------------------------------------------------------------

def _shape_tuple(shape: Any) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _stream_attrs(op: str, seed: Any, offset: Any, size: int) -> tuple[int, int]:
    if not _is_int(seed) or not 0 <= seed < 2 ** 64:
        raise op_error(ArgumentError, op, f"seed must be an int in [0, 2**64), got {seed!r}",
                       "pass a non-negative Python int seed below 2**64")
    if not _is_int(offset) or offset < 0:
        raise op_error(ArgumentError, op, f"offset must be a non-negative int, got {offset!r}",
                       "pass the flat index where this tensor's stream starts (0 by default)")
    if offset + size > MAX_POSITION:
        raise op_error(ArgumentError, op, f"offset + size = {offset + size} passes 2**62",
                       "use a smaller offset (or a new seed for a new stream)")
    return int(seed), int(offset)


def _generator_attrs(op: str, shape: Any, seed: Any, offset: Any, dtype: Any,
                     params: dict[str, Any]) -> dict[str, Any]:
    """Canonical attrs of rng_uniform / rng_normal: shape tuple, dtype, ints and floats."""
    items = (shape,) if _is_int(shape) else shape
    if not isinstance(items, (tuple, list)) or not all(_is_int(d) for d in items):
        raise op_error(ArgumentError, op, f"shape must be an int or a tuple of ints, got "
                       f"{shape!r}", "pass shape=(rows, cols) or an int length")
    shape = tuple(int(d) for d in items)
    if any(d < 0 for d in shape):
        raise op_error(ShapeError, op, f"shape {shape} has a negative dimension",
                       "pass non-negative dimensions")
    try:
        dt = dtypes.dtype(dtype)
    except DTypeError:
        dt = None
    if dt not in dtypes.FLOATS:
        raise op_error(DTypeError, op, f"dtype {dtype!r} is not a floating dtype",
                       "pass dtype=tsol.float32 (or float64, float16, bfloat16)")
    for name, value in params.items():
        if not _is_real(value) or not np.isfinite(value):
            raise op_error(ArgumentError, op, f"{name} must be a finite real number, got "
                           f"{value!r}", f"pass a finite float {name}")
    seed, offset = _stream_attrs(op, seed, offset, int(np.prod(shape, dtype=np.int64)))
    return dict(shape=shape, seed=seed, offset=offset, dtype=dt,
                **{k: float(v) for k, v in params.items()})


def _uniform_normalize(metas: list[Meta], *, shape: Any, seed: Any, offset: Any, dtype: Any,
                       low: Any, high: Any) -> dict[str, Any]:
    return _generator_attrs("rng_uniform", shape, seed, offset, dtype, dict(low=low, high=high))


def _normal_normalize(metas: list[Meta], *, shape: Any, seed: Any, offset: Any, dtype: Any,
                      mean: Any, std: Any) -> dict[str, Any]:
    attrs = _generator_attrs("rng_normal", shape, seed, offset, dtype, dict(mean=mean, std=std))
    if attrs["std"] < 0:
        raise op_error(ArgumentError, "rng_normal", f"std must be >= 0, got {std!r}",
                       "pass a non-negative standard deviation")
    return attrs


def _generator_meta(**attrs: Any) -> Meta:
    return Meta(attrs["shape"], attrs["dtype"])


def _dropout_normalize(metas: list[Meta], *, p: Any, seed: Any, offset: Any,
                       training: Any) -> dict[str, Any]:
    if not _is_real(p) or not 0 <= p < 1:
        fix = ("p=1 drops every element: use tsol.multiply(x, 0.0) for all zeros"
               if _is_real(p) and p == 1 else "pass a drop probability p with 0 <= p < 1")
        raise op_error(ArgumentError, "dropout", f"p must be a real number in [0, 1), got "
                       f"{p!r}", fix, metas)
    seed, offset = _stream_attrs("dropout", seed, offset, metas[0].size)
    return dict(p=float(p), seed=seed, offset=offset, training=bool(training))


def _dropout_meta(x: Meta, **attrs: Any) -> Meta:
    require_float("dropout", x)
    return Meta(x.shape, x.dtype)


def _dropout_vjp(g: Any, x: Any, *, out: Any, p: float, seed: int, offset: int,
                 training: bool) -> tuple[Any]:
    # y = mask * x / (1 - p) is linear in x with the mask fixed by (seed, offset): the same
    # dropout applied to g is exactly the mask-and-scale.
    return (tsol.dropout(g, p, seed=seed, offset=offset, training=training),)


def _generator_cost(*, out: Meta, flops: float, **attrs: Any) -> tuple[float, float]:
    # Philox's integer work is not counted as flops; bytes are the output written once.
    return flops * out.size, float(out.nbytes)


def _uniform_cost(*metas: Meta, out: Meta, **attrs: Any) -> tuple[float, float]:
    return _generator_cost(out=out, flops=2.0)


def _normal_cost(*metas: Meta, out: Meta, **attrs: Any) -> tuple[float, float]:
    return _generator_cost(out=out, flops=30.0)


def _dropout_cost(x: Meta, *, out: Meta, **attrs: Any) -> tuple[float, float]:
    return float(x.size), float(x.nbytes + out.nbytes)


# --- the ops -----------------------------------------------------------------------------------

@defop(family="random", inputs=(), meta=_generator_meta, reference=_uniform_ref,
       vjp=NON_DIFFERENTIABLE, cost=_uniform_cost, normalize=_uniform_normalize)
def rng_uniform(shape, *, seed, offset=0, dtype=dtypes.float32, low=0.0, high=1.0, out=None):
    """Uniform random values in [low, high) from the Philox4x32-10 counter-based generator.

    The value at flat C-order index i depends only on (seed, offset + i) and the dtype, so it is
    identical on every backend, for any tile or thread split, and under sharding: a shard that
    starts at flat index k passes ``offset=k``. The exact bits used are the stream rule in
    ``tsol.ops.random``: float32 uses the top 24 bits of one Philox word, float16 and bfloat16
    the top 11 and 8 bits, float64 53 bits of two words; the value is low + (high - low) * u in
    the compute dtype. As with NumPy, rounding can yield ``high`` when low != 0 or high != 1.

    - shape: an int or tuple of non-negative ints. dtype: float64, float32, float16, bfloat16.
    - seed: an int in [0, 2**64); offset: a non-negative int with offset + size <= 2**62.
    - low, high: finite reals. Runs on ``tsol.config.get().default_backend`` (or out's).

    Raises ArgumentError (bad seed, offset, shape entries, low/high), ShapeError (negative
    dimension or out of the wrong shape), DTypeError (non-float dtype or out of another dtype).

    >>> import tsol
    >>> a = tsol.rng_uniform((2, 3), seed=7)
    >>> bool(((0 <= a) & (a < 1)).all()), a.dtype.name
    (True, 'float32')
    >>> bool((tsol.rng_uniform(4, seed=7, offset=2) == a.reshape(-1)[2:]).all())
    True
    """
    ...


@defop(family="random", inputs=(), meta=_generator_meta, reference=_normal_ref,
       vjp=NON_DIFFERENTIABLE, cost=_normal_cost, normalize=_normal_normalize)
def rng_normal(shape, *, seed, offset=0, dtype=dtypes.float32, mean=0.0, std=1.0, out=None):
    """Normal random values (Box-Muller on Philox4x32-10 draws): mean + std * z.

    The value at flat C-order index i depends only on (seed, offset + i) and the dtype: tiles,
    threads and shards with ``offset=k`` agree bitwise; other backends draw the same uniforms,
    and their log/cos/sin may differ in the last units of the dtype.
    Pairing: float32/float16/bfloat16 take 4 values per Philox counter, value s of counter
    (offset + i) // 4 using the Box-Muller pair of words (2(s//2), 2(s//2)+1), cos for even s and
    sin for odd s; float64 takes 2 values per counter, u1 from words 0-1 and the angle from
    words 2-3 at 53 bits each. u1 lies in (0, 1], so every value is finite (|z| < 5.8 for
    float32, < 8.6 for float64). Half types are computed in float32 and rounded.

    - shape: an int or tuple of non-negative ints. dtype: float64, float32, float16, bfloat16.
    - seed: an int in [0, 2**64); offset: a non-negative int; mean finite, std finite and >= 0.

    Raises ArgumentError (bad seed, offset, mean, std), ShapeError, DTypeError as rng_uniform.

    >>> import tsol
    >>> z = tsol.rng_normal(100_000, seed=1)
    >>> round(float(z.mean()), 1) == 0.0, round(float(z.std()), 1)
    (True, 1.0)
    """
    ...


@defop(family="random", inputs=("x",), meta=_dropout_meta, reference=_dropout_ref,
       vjp=_dropout_vjp, cost=_dropout_cost, normalize=_dropout_normalize)
def dropout(x, p, *, seed, offset=0, training=True, out=None):
    """Zero each element of ``x`` with probability ``p`` and scale the kept ones by 1/(1 - p).

    Element i (flat C-order index) is kept iff ``rng_uniform(x.shape, seed=seed,
    offset=offset, dtype=float32)[i] >= p``: the mask depends only on (seed, offset + i), not on
    x's dtype, backend, tiling, threads or sharding (a shard starting at flat index k passes
    ``offset=k``). Kept values are ``x * s`` with s = 1 / (1 - p) rounded to the compute dtype
    (float32 for float32 and the half types, then rounded to nearest even); dropped values are
    exactly 0, even where x is NaN or inf. ``training=False`` or ``p == 0`` returns a copy of x.
    The gradient is the same mask and scale applied to the cotangent (same seed and offset).

    - x: float64, float32, float16 or bfloat16 array of any shape and strides; result like x.
    - p: a real number in [0, 1). seed: an int in [0, 2**64). offset: a non-negative int.

    Raises ArgumentError (p outside [0, 1), p == 1, bad seed or offset, x not an array),
    DTypeError (non-float x, or out of another dtype), ShapeError (out of another shape).

    >>> import numpy as np, tsol
    >>> y = tsol.dropout(np.ones(8, np.float32), 0.5, seed=3)
    >>> y.tolist()
    [2.0, 0.0, 2.0, 2.0, 0.0, 2.0, 0.0, 2.0]
    >>> bool(((y > 0) == (tsol.rng_uniform(8, seed=3) >= 0.5)).all())
    True
    """
    ...
