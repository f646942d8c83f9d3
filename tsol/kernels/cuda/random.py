"""CUDA kernels for the random ops: Philox4x32-10 per counter, then per-element values.

The stream rule lives in ``tsol.ops.random``; these kernels follow the CPU kernels
(``tsol.kernels.cpu.random``) operation for operation, so rng_uniform, dropout and the float32
(and half) rng_normal give the CPU's bits exactly. Two things make that hold on the GPU:

- every float multiply and add of a value path goes through ``mul``/``add`` (``__nv_fmul_rn`` /
  ``__nv_fadd_rn``, rounded once each): the compiler would otherwise contract ``a * b + c``
  into an FMA, which rounds once where the CPU rounds twice;
- float32 Box-Muller uses the CPU's own polynomial log and cos/sin (``log_f32``,
  ``cos_sin_2pi_f32`` below, the same Cephes coefficients in the same order), not libdevice.

float64 rng_normal uses libdevice's log/cos/sin (specified to 1, 2 and 2 ulp) where the CPU
uses libm: the uniforms are the same bits and the values differ by a few ulp at most
(``tests/cuda/test_random.py`` asserts 8 ulp against the CPU kernel).

Launch shape: a block of ``B`` threads takes ``B`` consecutive counters per trip of a
grid-stride loop; each thread runs Philox once and puts its four words in shared memory, then
the block writes its ``B * E`` outputs (E values per counter) with consecutive threads on
consecutive elements, so stores (and dropout's loads) are coalesced.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Sequence

import numpy as np

from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
from tsol.kernels.cuda import reduction as red
from tsol.registry import Config, kernel

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
SHIFT8 = np.uint64(8)
ULP24 = np.float32(2.0 ** -24)
ULP53 = 1.1102230246251565e-16

# --- once-rounded arithmetic ----------------------------------------------------------------

def _rounded(op: Callable[[Any, Any], Any], name: str, ty: type) -> Any:
    """``op(a, b)`` in ``ty`` rounded once: libdevice's ``name`` (``__nv_fmul_rn``...), which the
    compiler never contracts into an FMA; plain ``op`` under the simulator (NumPy rounds each
    operation anyway)."""
    if gpu.SIMULATOR:
        return gpu.device(lambda a, b: op(a, b))
    fn = getattr(gpu.libdevice, name)
    return gpu.device(lambda a, b: fn(ty(a), ty(b)))


mul = _rounded(operator.mul, "fmul_rn", np.float32)
"""float32 a * b rounded once, never fused into an FMA."""
add = _rounded(operator.add, "fadd_rn", np.float32)
mul64 = _rounded(operator.mul, "dmul_rn", np.float64)
add64 = _rounded(operator.add, "dadd_rn", np.float64)

if gpu.SIMULATOR:
    @gpu.device
    def sqrt32(x):
        return np.sqrt(np.float32(x))

    @gpu.device
    def mulhi(a, b):
        """High 32 bits of the 64-bit product of 32-bit ``a`` and ``b``, as uint64."""
        return np.uint64((int(a) * int(b)) >> 32)

    @gpu.device
    def mullo(a, b):
        """Low 32 bits of the product of 32-bit ``a`` and ``b``, as uint64."""
        return np.uint64((int(a) * int(b)) & 0xFFFFFFFF)
else:
    @gpu.device
    def sqrt32(x):
        return gpu.libdevice.fsqrt_rn(np.float32(x))

    @gpu.device
    def mulhi(a, b):
        return np.uint64(gpu.libdevice.umulhi(np.uint32(a), np.uint32(b)))

    @gpu.device
    def mullo(a, b):
        return np.uint64(np.uint32(np.uint32(a) * np.uint32(b)))


# --- Philox and the per-element transforms (ports of tsol.kernels.cpu.random) -----------------

@gpu.device
def philox(c, k0, k1):
    """The four words of counter index ``c`` (int64 >= 0): Philox4x32-10 on (c lo, c hi, 0, 0),
    32-bit values held in uint64."""
    cu = np.uint64(c)
    c0 = cu & MASK32
    c1 = cu >> SHIFT32
    c2 = np.uint64(0)
    c3 = np.uint64(0)
    for _ in range(10):
        # 32-bit mulhi and mullo (a full 64-bit product costs several instructions more).
        n0 = mulhi(c2, np.uint32(0xCD9E8D57)) ^ c1 ^ k0
        n1 = mullo(c2, np.uint32(0xCD9E8D57))
        n2 = mulhi(c0, np.uint32(0xD2511F53)) ^ c3 ^ k1
        n3 = mullo(c0, np.uint32(0xD2511F53))
        c0, c1, c2, c3 = n0, n1, n2, n3
        k0 = (k0 + np.uint64(0x9E3779B9)) & MASK32
        k1 = (k1 + np.uint64(0xBB67AE85)) & MASK32
    return c0, c1, c2, c3


@gpu.device
def uniform_f32(w, shift, ulp, low, span):
    return add(low, mul(span, np.float32(np.int32(np.uint64(w) >> np.uint64(shift))) * ulp))


@gpu.device
def unit53(hi, lo):
    bits = (np.uint64(hi) << np.uint64(21)) | (np.uint64(lo) >> np.uint64(11))
    return np.float64(np.int64(bits)) * ULP53


@gpu.device
def uniform_f64(hi, lo, low, span):
    return add64(low, mul64(span, unit53(hi, lo)))


@gpu.device
def log1p_poly_f32(f):
    y = np.float32(7.0376836292e-2)
    y = add(mul(y, f), np.float32(-1.1514610310e-1))
    y = add(mul(y, f), np.float32(1.1676998740e-1))
    y = add(mul(y, f), np.float32(-1.2420140846e-1))
    y = add(mul(y, f), np.float32(1.4249322787e-1))
    y = add(mul(y, f), np.float32(-1.6668057665e-1))
    y = add(mul(y, f), np.float32(2.0000714765e-1))
    y = add(mul(y, f), np.float32(-2.4999993993e-1))
    return add(mul(y, f), np.float32(3.3333331174e-1))


@gpu.device
def log_f32(x):
    """The CPU kernels' Cephes logf, for x in (0, 1] (Box-Muller's u1 is never 0 or subnormal)."""
    i = gpu.f32_to_bits(np.float32(x))
    e = ((i >> np.int32(23)) & np.int32(0xFF)) - np.int32(126)
    m = gpu.f32_from_bits((i & np.int32(0x7FFFFF)) | np.int32(0x3F000000))
    if m < np.float32(0.70710678):
        e = e - np.int32(1)
        f = add(add(m, m), np.float32(-1.0))
    else:
        f = add(m, np.float32(-1.0))
    fe = np.float32(e)
    z = mul(f, f)
    y = mul(mul(log1p_poly_f32(f), f), z)
    y = add(y, mul(np.float32(-2.12194440e-4), fe))
    y = add(y, -mul(np.float32(0.5), z))
    return add(add(f, y), mul(np.float32(0.693359375), fe))


@gpu.device
def cos_sin_2pi_f32(u):
    """(cos(2 pi u), sin(2 pi u)) for u in [0, 1), as the CPU kernels compute them."""
    q4 = u * np.float32(4.0)                       # exact: u has 24 bits
    qi = np.int32(q4)
    f = q4 - np.float32(qi)                        # exact
    fold = f > np.float32(0.5)
    x = mul(np.float32(1.0) - f if fold else f, np.float32(1.5707963267948966))
    z = mul(x, x)
    s = add(mul(mul(add(mul(add(mul(np.float32(-1.9515295891e-4), z),
                                    np.float32(8.3321608736e-3)), z),
                        np.float32(-1.6666654611e-1)), z), x), x)
    c = add(add(mul(mul(add(mul(add(mul(np.float32(2.443315711809948e-5), z),
                                    np.float32(-1.388731625493765e-3)), z),
                            np.float32(4.166664568298827e-2)), z), z),
                -mul(np.float32(0.5), z)), np.float32(1.0))
    cq = s if fold else c
    sq = c if fold else s
    odd = (qi & np.int32(1)) == np.int32(1)
    cos_v = sq if odd else cq
    sin_v = cq if odd else sq
    if qi == np.int32(1) or qi == np.int32(2):
        cos_v = -cos_v
    if qi >= np.int32(2):
        sin_v = -sin_v
    return cos_v, sin_v


@gpu.device
def normal_f32(w1, w2, which, mean, std):
    u1 = np.float32(np.int32(np.uint64(w1) >> SHIFT8) + np.int32(1)) * ULP24
    u2 = np.float32(np.int32(np.uint64(w2) >> SHIFT8)) * ULP24
    r = sqrt32(mul(np.float32(-2.0), log_f32(u1)))
    c, s = cos_sin_2pi_f32(u2)
    return add(mean, mul(std, mul(r, c if which == 0 else s)))


@gpu.device
def normal_f64(w0, w1, w2, w3, which, mean, std):
    u1 = add64(unit53(w0, w1), ULP53)
    theta = mul64(6.283185307179586, unit53(w2, w3))
    r = math.sqrt(mul64(-2.0, gpu.log(u1)))
    z = mul64(r, gpu.cos(theta) if which == 0 else gpu.sin(theta))
    return add64(mean, mul64(std, z))


@gpu.device
def dropout_value(w, xv, scale, threshold):
    """x * scale where the 24-bit draw >= threshold, else an exact 0 (even for NaN x)."""
    return xv * scale if (np.uint64(w) >> SHIFT8) >= threshold else scale - scale


# --- generated kernels -------------------------------------------------------------------------

_TEMPLATE = '''
def {name}(out, src, n, offset, k0, k1, a, b):
    tid = gpu.threadIdx.x
    sh = gpu.shared_array({words}, np.uint32)
    first = offset // {per}
    last = (offset + n + {per} - 1) // {per}
    blk = gpu.blockIdx.x
    while blk * {B} < last - first:
        start = first + blk * {B}
        c = start + tid
        if c < last:
            w0, w1, w2, w3 = philox(c, k0, k1)
            sh[tid] = np.uint32(w0)
            sh[{B} + tid] = np.uint32(w1)
            sh[{B2} + tid] = np.uint32(w2)
            sh[{B3} + tid] = np.uint32(w3)
        gpu.syncthreads()
        for r in range({per}):
            e = r * {B} + tid
            i = start * {per} + e - offset
            if i >= 0 and i < n:
                q = e >> {shift}
                out[i] = {store}
        gpu.syncthreads()
        blk += gpu.gridDim.x
'''

_HALF_BITS = {"native": 24, "f16": 11, "bf16": 8}


def _word(q: str, B: int) -> str:
    return f"sh[({q}) * {B} + q]"


def _value_expr(kind: str, storage: str, wide: bool, B: int) -> tuple[int, str]:
    """(values per counter, value of local element ``e`` of counter ``q``, output index ``i``)."""
    if kind == "uniform" and wide:
        return 2, f"uniform_f64({_word('2 * (e & 1)', B)}, {_word('2 * (e & 1) + 1', B)}, a, b)"
    if kind == "uniform":
        bits = _HALF_BITS[storage]
        return 4, (f"uniform_f32({_word('e & 3', B)}, {32 - bits}, "
                   f"np.float32({2.0 ** -bits!r}), a, b)")
    if kind == "normal" and wide:
        return 2, (f"normal_f64({_word('0', B)}, {_word('1', B)}, {_word('2', B)}, "
                   f"{_word('3', B)}, e & 1, a, b)")
    if kind == "normal":
        return 4, f"normal_f32({_word('e & 2', B)}, {_word('(e & 2) + 1', B)}, e & 1, a, b)"
    load = {"native": "src[i]", "f16": "np.float32(src[i])",
            "bf16": "gpu.load_bf16(src[i])"}[storage]
    return 4, f"dropout_value({_word('e & 3', B)}, {load}, a, b)"


def _store(expr: str, storage: str) -> str:
    return {"native": expr, "f16": f"np.float16({expr})",
            "bf16": f"gpu.store_bf16({expr})"}[storage]


def storage_kind(dt: Any) -> str:
    dt = np.dtype(dt)
    return "bf16" if dt == dtypes.bfloat16 else "f16" if dt == dtypes.float16 else "native"


_kernels: dict[tuple[str, str, int], gpu.Kernel] = {}


def _kernel(kind: str, dt: np.dtype, B: int) -> tuple[gpu.Kernel, int]:
    """The generated kernel for (op kind, output dtype, block) and its values per counter."""
    storage = storage_kind(dt)
    per, value = _value_expr(kind, storage, dt == dtypes.float64, B)
    key = (kind, np.dtype(dt).str, B)
    k = _kernels.get(key)
    if k is None:
        name = f"rng_{kind}_{np.dtype(dt).name}_b{B}"
        source = _TEMPLATE.format(name=name, words=4 * B, per=per, B=B, B2=2 * B, B3=3 * B,
                                  shift=red.log2(per), store=_store(value, storage))
        ns = {"gpu": gpu, "np": np, "philox": philox, "uniform_f32": uniform_f32,
              "uniform_f64": uniform_f64, "normal_f32": normal_f32, "normal_f64": normal_f64,
              "dropout_value": dropout_value}
        k = _kernels[key] = red.build(name, source, ns, __name__)
    return k, per


GRID_CAP = 132 * 8
"""Blocks at most; each loops over further blocks of counters."""


_replays = replay.Replays()
"""Recorded launches per call layout and scalars (seed, offset, parameters): a later call with
all of them the same passes new pointers only (``replay``)."""


def _fill(kind: str, out: Any, x: Any, config: Config, seed: int, offset: int, a: Any,
          b: Any) -> None:
    """``out`` from the stream at (seed, offset); dropout reads ``x`` (None for the others)."""
    if out.size == 0:
        return
    arrays = (out,) if x is None else (out, x)
    key = (kind, config, seed, offset, a, b, *[(v.shape, v.strides, v.dtype) for v in arrays])
    _replays.run(key, arrays, lambda: _fill_planned(kind, out, x, config, seed, offset, a, b))


def _fill_planned(kind: str, out: Any, x: Any, config: Config, seed: int, offset: int, a: Any,
                  b: Any) -> None:
    n = out.size
    B = config.block
    kern, per = _kernel(kind, np.dtype(out.dtype), B)
    flat = gpu.kernel_view(out).reshape(-1)
    # The mask follows the C-order flat index: a non-contiguous x is made contiguous once.
    source = flat if x is None else \
        gpu.array_module().ascontiguousarray(gpu.kernel_view(x)).reshape(-1)
    counters = (offset + n + per - 1) // per - offset // per
    grid = min(gpu.cdiv(counters, B), GRID_CAP)
    gpu.launch(kern, grid, B, [flat, source, n, offset, np.uint64(seed & 0xFFFFFFFF),
                               np.uint64(seed >> 32), a, b])


# --- registrations -----------------------------------------------------------------------------

CONFIGS = [Config(block=256), Config(block=128), Config(block=512)]
"""Threads (= counters) a block per trip; every choice gives the same bits."""
SIM_CONFIG = Config(block=32)


def _heuristic(metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
    return SIM_CONFIG if gpu.SIMULATOR else CONFIGS[0]


def _float_out(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return np.dtype(attrs["dtype"]) in dtypes.FLOATS


def _compute(dt: Any) -> type:
    return np.float64 if np.dtype(dt) == dtypes.float64 else np.float32


@kernel("rng_uniform", backend="cuda", configs=CONFIGS, supports=_float_out,
        heuristic=_heuristic)
def rng_uniform_philox(*, out: Any, config: Config, shape: tuple[int, ...], seed: int,
                       offset: int, dtype: Any, low: float, high: float) -> None:
    ct = _compute(out.dtype)
    _fill("uniform", out, None, config, seed, offset, ct(low), ct(high - low))


@kernel("rng_normal", backend="cuda", configs=CONFIGS, supports=_float_out,
        heuristic=_heuristic)
def rng_normal_philox(*, out: Any, config: Config, shape: tuple[int, ...], seed: int,
                      offset: int, dtype: Any, mean: float, std: float) -> None:
    ct = _compute(out.dtype)
    _fill("normal", out, None, config, seed, offset, ct(mean), ct(std))


@kernel("dropout", backend="cuda", dtypes=dtypes.FLOATS, configs=CONFIGS, heuristic=_heuristic)
def dropout_philox(x: Any, *, out: Any, config: Config, p: float, seed: int, offset: int,
                   training: bool) -> None:
    if not training or p == 0.0:
        gpu.kernel_view(out)[...] = gpu.kernel_view(x)          # a bit copy
        return
    threshold = np.uint64(math.ceil(p * 2.0 ** 24))   # u24 * 2**-24 >= p  <=>  u24 >= threshold
    _fill("dropout", out, x, config, seed, offset, _compute(out.dtype)(1.0 / (1.0 - p)),
          threshold)


__all__ = ["philox", "log_f32", "cos_sin_2pi_f32", "normal_f32", "CONFIGS"]
