"""CPU kernels for the random ops: Philox4x32-10 over blocks of counters, then per-element values.

The stream rule is documented in ``tsol.ops.random``. Each kernel walks counters in fixed tiles
(``Config(counters=...)``) under ``prange``; every output element is a pure function of
(seed, offset + i), so neither the tile size nor the thread count can change a single bit.

Philox's 32-bit words live in uint64 lanes: a 32x32 -> 64-bit product gives mulhi and mullo
at once, and LLVM turns it into ``vpmuludq`` when it vectorizes the counter loop. One template
(``_TEMPLATE``) is specialized per (op kind, storage dtype) through ``generated_module`` because
the per-element transform and the half-precision store are inlined functions, which Numba
cannot take as (cacheable) kernel arguments.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cpu.jit import generated_module, kernel_jit, scalar_jit
from tsol.kernels.cpu.scalar import log_f32, storage_kind, storage_view
from tsol.registry import Config, kernel

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
SHIFT8 = np.uint64(8)
ULP24 = np.float32(2.0 ** -24)

# --- scalar helpers the generated kernels inline ----------------------------------------------


@scalar_jit
def philox4x32_10_words(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on 32-bit values held in uint64: returns the four output words."""
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0           # 32x32 -> 64: high half is mulhi, low mullo
        p1 = np.uint64(0xCD9E8D57) * c2
        n0 = (p1 >> SHIFT32) ^ c1 ^ k0
        n1 = p1 & MASK32
        n2 = (p0 >> SHIFT32) ^ c3 ^ k1
        n3 = p0 & MASK32
        c0, c1, c2, c3 = n0, n1, n2, n3
        k0 = (k0 + np.uint64(0x9E3779B9)) & MASK32
        k1 = (k1 + np.uint64(0xBB67AE85)) & MASK32
    return c0, c1, c2, c3


@scalar_jit
def philox_counter(c, k0, k1):
    """The words of counter index ``c`` (a non-negative int64): counter (c lo, c hi, 0, 0)."""
    cu = np.uint64(c)
    return philox4x32_10_words(cu & MASK32, cu >> SHIFT32, np.uint64(0), np.uint64(0), k0, k1)


@scalar_jit
def uniform_f32(w, shift, ulp, low, span):
    """low + span * u with u = (w >> shift) * ulp in [0, 1), all in float32."""
    return low + span * (np.float32(np.int32(np.uint64(w) >> shift)) * ulp)


@scalar_jit
def unit53(hi, lo):
    """53 bits of (hi, lo) as an exact float64 multiple of 2**-53 in [0, 1)."""
    bits = (np.uint64(hi) << np.uint64(21)) | (np.uint64(lo) >> np.uint64(11))
    return np.float64(np.int64(bits)) * 1.1102230246251565e-16


@scalar_jit
def uniform_f64(hi, lo, low, span):
    return low + span * unit53(hi, lo)


@scalar_jit
def cos_sin_2pi_f32(u):
    """(cos(2 pi u), sin(2 pi u)) for u in [0, 1), float32 and branch-free so loops vectorize.

    The quadrant is split off exactly (u has 24 bits), so the rounded angle is at most pi/4 and
    its error stays below 1e-7 rad; Cephes sinf/cosf polynomials on [0, pi/4] do the rest.
    """
    q4 = u * np.float32(4.0)
    q = np.floor(q4)
    f = q4 - q
    fold = f > np.float32(0.5)
    x = (np.float32(1.0) - f if fold else f) * np.float32(1.5707963267948966)
    z = x * x
    s = ((np.float32(-1.9515295891e-4) * z + np.float32(8.3321608736e-3)) * z
         - np.float32(1.6666654611e-1)) * z * x + x
    c = ((np.float32(2.443315711809948e-5) * z - np.float32(1.388731625493765e-3)) * z
         + np.float32(4.166664568298827e-2)) * z * z - np.float32(0.5) * z + np.float32(1.0)
    cq = s if fold else c                          # cos and sin of the angle within the quadrant
    sq = c if fold else s
    qi = np.int32(q)
    odd = (qi & np.int32(1)) == np.int32(1)
    cos_v = sq if odd else cq
    sin_v = cq if odd else sq
    cos_v = -cos_v if (qi == np.int32(1) or qi == np.int32(2)) else cos_v
    sin_v = -sin_v if qi >= np.int32(2) else sin_v
    return cos_v, sin_v


@scalar_jit
def normal_f32(w1, w2, which, mean, std):
    """Box-Muller in float32: u1 in (0, 1] from w1, angle from w2; ``which`` 0 -> cos, 1 -> sin."""
    u1 = np.float32(np.int32(np.uint64(w1) >> SHIFT8) + np.int32(1)) * ULP24
    u2 = np.float32(np.int32(np.uint64(w2) >> SHIFT8)) * ULP24
    r = np.sqrt(np.float32(-2.0) * log_f32(u1))
    c, s = cos_sin_2pi_f32(u2)
    return mean + std * (r * (c if which == 0 else s))


@scalar_jit
def normal_f64(w0, w1, w2, w3, which, mean, std):
    """Box-Muller in float64: u1 in (0, 1] from (w0, w1), angle from (w2, w3)."""
    u1 = unit53(w0, w1) + 1.1102230246251565e-16
    theta = 6.283185307179586 * unit53(w2, w3)
    r = math.sqrt(-2.0 * math.log(u1))
    return mean + std * (r * (math.cos(theta) if which == 0 else math.sin(theta)))


@scalar_jit
def dropout_value(w, xv, scale, threshold):
    """x * scale where the 24-bit draw (w >> 8) >= threshold, else an exact 0 (even for NaN x)."""
    return xv * scale if (np.uint64(w) >> SHIFT8) >= threshold else scale - scale


# --- the kernel template -----------------------------------------------------------------------

# Per tile of counters: phase 1 runs Philox for every counter and stores the words
# struct-of-arrays (words[slot, q]), which keeps the Philox loop vectorized; phase 2 makes each
# output element from its counter's words. Tiles only cover counters, so tail and head elements
# of a partial counter need no separate path.
_TEMPLATE = '''"""Generated by tsol.kernels.cpu.random: {kind} values stored as {storage}."""
import numpy as np
from numba import prange

from tsol.kernels.cpu.jit import kernel_jit
from tsol.kernels.cpu.random import (dropout_value, normal_f32, normal_f64, philox_counter,
                                     uniform_f32, uniform_f64)
from tsol.kernels.cpu.scalar import load_bf16, load_f16, store_bf16, store_f16

PER = {per}


@kernel_jit(parallel=True)
def fill(out, src, offset, k0, k1, a, b, tile):
    n = out.size
    if n == 0:
        return
    first = offset // PER
    ntiles = ((offset + n + PER - 1) // PER - first + tile - 1) // tile
    for t in prange(ntiles):
        start = first + t * tile
        count = min(tile, (offset + n + PER - 1) // PER - start)
        words = np.empty((4, tile), np.uint32)
        for q in range(count):
            w0, w1, w2, w3 = philox_counter(start + q, k0, k1)
            words[0, q] = w0
            words[1, q] = w1
            words[2, q] = w2
            words[3, q] = w3
        base = start * PER
        for j in range(max(base, offset), min(base + count * PER, offset + n)):
            e = j - base
            i = j - offset
            out[i] = {store}({value})
'''

_F32_BITS = {"native": 24, "f16": 11, "bf16": 8}
"""Uniform bits per float type: every draw is exactly representable, so [0, 1) stays open."""


def _value_expr(kind: str, storage: str, wide: bool) -> tuple[int, str]:
    """(values per counter, expression of element ``e`` of the tile (output index ``i``))."""
    if kind == "uniform" and wide:
        return 2, "uniform_f64(words[2 * (e & 1), e >> 1], words[2 * (e & 1) + 1, e >> 1], a, b)"
    if kind == "uniform":
        bits = _F32_BITS[storage]
        return 4, (f"uniform_f32(words[e & 3, e >> 2], np.uint64({32 - bits}), "
                   f"np.float32({2.0 ** -bits!r}), a, b)")
    if kind == "normal" and wide:
        return 2, ("normal_f64(words[0, e >> 1], words[1, e >> 1], words[2, e >> 1], "
                   "words[3, e >> 1], e & 1, a, b)")
    if kind == "normal":
        return 4, "normal_f32(words[e & 2, e >> 2], words[(e & 2) + 1, e >> 2], e & 1, a, b)"
    load = {"native": "", "f16": "load_f16", "bf16": "load_bf16"}[storage]
    return 4, f"dropout_value(words[e & 3, e >> 2], {load}(src[i]), a, b)"


def _kernel_module(kind: str, dt: np.dtype) -> ModuleType:
    """The generated module holding ``fill`` for this op kind and output dtype."""
    storage = storage_kind(dt)
    per, value = _value_expr(kind, storage, dt == dtypes.float64)
    store = {"native": "", "f16": "store_f16", "bf16": "store_bf16"}[storage]
    source = _TEMPLATE.format(kind=kind, storage=dt, per=per, store=store, value=value)
    return generated_module(f"random_{kind}_{dt}", source)


_MODULES: dict[tuple[str, np.dtype], ModuleType] = {}


def _fill(kind: str, out: np.ndarray, src: np.ndarray | None, config: Config, seed: int,
          offset: int, a: Any, b: Any) -> None:
    key = (kind, out.dtype)
    if key not in _MODULES:
        _MODULES[key] = _kernel_module(kind, out.dtype)
    flat = storage_view(out).reshape(-1)
    source = flat if src is None else src
    _MODULES[key].fill(flat, source, np.int64(offset), np.uint64(seed & 0xFFFFFFFF),
                       np.uint64(seed >> 32), a, b, np.int64(config.counters))


# --- registrations -----------------------------------------------------------------------------

CONFIGS = [Config(counters=2048), Config(counters=256), Config(counters=16384)]
"""Counters per parallel task; results are identical for every choice (each value is pure)."""


def _float_out(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return np.dtype(attrs["dtype"]) in dtypes.FLOATS


def _compute(dt: np.dtype) -> type:
    return np.float64 if dt == dtypes.float64 else np.float32


@kernel("rng_uniform", backend="cpu", configs=CONFIGS, supports=_float_out)
def rng_uniform_philox(*, out: np.ndarray, config: Config, shape: tuple[int, ...], seed: int,
                       offset: int, dtype: np.dtype, low: float, high: float) -> None:
    ct = _compute(out.dtype)
    _fill("uniform", out, None, config, seed, offset, ct(low), ct(high - low))


@kernel("rng_normal", backend="cpu", configs=CONFIGS, supports=_float_out)
def rng_normal_philox(*, out: np.ndarray, config: Config, shape: tuple[int, ...], seed: int,
                      offset: int, dtype: np.dtype, mean: float, std: float) -> None:
    ct = _compute(out.dtype)
    _fill("normal", out, None, config, seed, offset, ct(mean), ct(std))


@kernel("dropout", backend="cpu", dtypes=dtypes.FLOATS, configs=CONFIGS)
def dropout_philox(x: np.ndarray, *, out: np.ndarray, config: Config, p: float, seed: int,
                   offset: int, training: bool) -> None:
    if not training or p == 0.0:
        np.copyto(out, x)
        return
    # The mask follows the C-order flat index, so the kernel reads x as one flat run; a
    # non-contiguous x is copied once rather than compiling one kernel per rank and layout.
    src = storage_view(np.ascontiguousarray(x)).reshape(-1)
    threshold = np.uint64(math.ceil(p * 2.0 ** 24))   # u24 * 2**-24 >= p  <=>  u24 >= threshold
    _fill("dropout", out, src, config, seed, offset, _compute(out.dtype)(1.0 / (1.0 - p)),
          threshold)


# --- the raw generator, for known-answer tests -------------------------------------------------


@kernel_jit
def _philox_rows(ctr, key, out):
    for r in range(ctr.shape[0]):
        w = philox4x32_10_words(ctr[r, 0], ctr[r, 1], ctr[r, 2], ctr[r, 3], key[r, 0], key[r, 1])
        out[r, 0], out[r, 1], out[r, 2], out[r, 3] = w


def philox4x32_10(counter_words: Any, key_words: Any) -> np.ndarray:
    """Philox4x32-10 through the kernels' inlined helper: (..., 4) counters, (..., 2) keys."""
    ctr = np.asarray(counter_words, dtype=np.uint64)
    key = np.asarray(key_words, dtype=np.uint64)
    lead = np.broadcast_shapes(ctr.shape[:-1], key.shape[:-1])
    ctr = np.ascontiguousarray(np.broadcast_to(ctr, lead + (4,)).reshape(-1, 4))
    key = np.ascontiguousarray(np.broadcast_to(key, lead + (2,)).reshape(-1, 2))
    out = np.empty(ctr.shape, np.uint64)
    _philox_rows(ctr, key, out)
    return out.astype(np.uint32).reshape(lead + (4,))

