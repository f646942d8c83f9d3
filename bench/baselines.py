"""What a user would write without TSOL: the baseline expression for each op, per library."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tsol.bench.cases import STREAM_SCALAR

import tsol
from tsol import dtypes


def _xp(x: Any) -> Any:
    """The array module of ``x``'s library. NumPy calls on CuPy arrays dispatch to CuPy, but an
    array a baseline creates (a mask, angles, random numbers) must come from that library too:
    CuPy refuses NumPy operands."""
    if type(x).__module__.split(".", 1)[0] == "cupy":
        import cupy
        return cupy
    return np


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _layernorm(x, gamma=None, beta=None, eps=1e-5):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y * gamma + beta if gamma is not None else y


def _rmsnorm(x, gamma=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * gamma if gamma is not None else y


def _logsumexp(a, axis=None, keepdims=False):
    m = a.max(axis=axis, keepdims=True)
    s = np.log(np.exp(a - m).sum(axis=axis, keepdims=True)) + m
    if keepdims:
        return s
    return s.reshape(()) if axis is None else np.squeeze(s, axis=axis)


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        c = np.float32(0.7978845608) if x.dtype == np.float32 else 0.7978845608028654
        return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x * x * x)))
    if getattr(_xp(x), "__name__", "") == "cupy":
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)).astype(x.dtype))


_ACT = {"none": lambda y: y, "relu": lambda y: np.maximum(y, 0), "gelu": _gelu,
        "silu": lambda y: y / (1 + np.exp(-y))}


def _epilogue(y, *, bias=None, residual=None, epilogue=None, tile_shape=None):
    """matmul's and gemm's epilogue on a fresh product ``y``: (+ bias) -> act -> (+ residual)."""
    steps = (epilogue or "").split("_")
    if bias is not None:
        y += bias
    y = _ACT[next((s for s in steps if s in _ACT), "none")](y)
    return y + residual if residual is not None else y


def _matmul(a, b, **epilogue):
    return _epilogue(a @ b, **epilogue)


def _gemm(a, b, c=None, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False, **epilogue):
    """``alpha * op(a) @ op(b) + beta * c``, then the epilogue; op() swaps the last two axes
    (a view: the BLAS call reads the transposed layout)."""
    y = (np.swapaxes(a, -1, -2) if trans_a else a) @ (np.swapaxes(b, -1, -2) if trans_b else b)
    if alpha != 1:
        y *= alpha
    if c is not None:
        y = y + beta * c
    return _epilogue(y, **epilogue)


def _attention(q, k, v, *, causal=False, scale=None):
    s = (q @ np.swapaxes(k, -1, -2)) * (scale or 1 / np.sqrt(q.shape[-1]))
    if causal:
        n, m = s.shape[-2:]
        xp = _xp(q)
        s = xp.where(xp.tri(n, m, m - n, dtype=bool), s, -np.inf)
    return _softmax(s) @ v


def _rope(x, theta=10000.0):
    s, d = x.shape[-2:]
    xp = _xp(x)
    ang = xp.arange(s)[:, None] * theta ** (-xp.arange(0, d, 2) / d)
    c, sn = xp.cos(ang).astype(x.dtype), xp.sin(ang).astype(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = xp.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * sn
    out[..., 1::2] = x0 * sn + x1 * c
    return out


def _cross_entropy(logits, targets, reduction="mean"):
    lp = _log_softmax(logits)
    nll = -np.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
    return nll.mean() if reduction == "mean" else nll


def _dropout(x, p, seed=0):
    xp = _xp(x)
    keep = xp.random.default_rng(seed).random(x.shape, dtype=np.float32) >= p
    return xp.where(keep, x / (1 - p), 0).astype(x.dtype)


def _chain4(xp: Any = np) -> Callable[[Any], Any]:
    """The pipeline case chain4, ``tanh(relu(x) * 2 + 1)``, written with ``xp``'s functions."""
    def chain4(x):
        return xp.tanh(xp.maximum(x, 0) * 2 + 1)
    return chain4


def _stream_scale(xp: Any = np) -> Callable[[Any], Any]:
    def stream_scale(x):
        return x * STREAM_SCALAR
    return stream_scale


def _stream_triad(xp: Any = np) -> Callable[[Any, Any], Any]:
    def stream_triad(x, y):
        return x + STREAM_SCALAR * y
    return stream_triad


ELEMENTWISE_PIPELINES: dict[str, Callable[[Any], Callable[..., Any]]] = {
    "chain4": _chain4, "stream_scale": _stream_scale, "stream_triad": _stream_triad}
"""The elementwise programs as functions of an array module (what cupy.fuse takes: inside a
fused function only CuPy's own ufuncs trace)."""


NUMPY: dict[str, Callable[..., Any]] = {
    "neg": np.negative, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x), "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0),
    "gelu": _gelu, "silu": lambda x: x / (1 + np.exp(-x)),
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "power": np.power, "maximum": np.maximum, "minimum": np.minimum, "less": np.less,
    "where": np.where, "clip": np.clip, "astype": lambda x, dtype: x.astype(dtype),
    "sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod,
    "var": np.var, "std": np.std, "argmax": np.argmax, "argmin": np.argmin,
    "logsumexp": _logsumexp, "softmax": _softmax, "log_softmax": _log_softmax,
    "layernorm": _layernorm, "rmsnorm": _rmsnorm, "matmul": _matmul,
    "flash_attention": _attention, "rope": _rope, "cross_entropy": _cross_entropy,
    "mse": lambda a, b: np.mean((a - b) ** 2), "dropout": _dropout,
    "gemm": _gemm, "chain4": _chain4(np), "matmul_bias_gelu": lambda x, w, b: _gelu(x @ w + b),
    "stream_scale": _stream_scale(np), "stream_add": np.add, "stream_triad": _stream_triad(np),
}
"""NumPy's own ufunc or reduction where one exists, else the composed NumPy expression (for
the programs: the same computation eager, one NumPy call per op; STREAM's triad so makes two
passes)."""


def fused(name: str, cupy: Any) -> Callable[..., Any]:
    """``cupy.fuse`` of the elementwise pipeline ``name``, its body written with ``cupy``'s
    functions: one generated CuPy kernel. ``cupy`` is the CuPy module, or any module with
    NumPy's functions and a ``fuse(kernel_name=...)`` decorator.

    >>> import types
    >>> fake = types.SimpleNamespace(tanh=np.tanh, maximum=np.maximum,
    ...                              fuse=lambda kernel_name: lambda f: f)
    >>> fused("chain4", fake)(np.zeros(2, np.float32))
    array([0.7615942, 0.7615942], dtype=float32)
    """
    return cupy.fuse(kernel_name=name)(ELEMENTWISE_PIPELINES[name](cupy))


class FusedTable(Mapping):
    """The cupy.fuse baseline of each elementwise pipeline, built on first use (importing the
    bench never imports CuPy) and kept: CuPy caches a fused kernel per decorated function."""

    def __init__(self, load: Callable[[], Any] = lambda: importlib.import_module("cupy")):
        self._load = load
        self._built: dict[str, Callable[..., Any]] = {}

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in ELEMENTWISE_PIPELINES:
            raise KeyError(name)
        if name not in self._built:
            self._built[name] = fused(name, self._load())
        return self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in ELEMENTWISE_PIPELINES

    def __iter__(self) -> Iterator[str]:
        return iter(ELEMENTWISE_PIPELINES)

    def __len__(self) -> int:
        return len(ELEMENTWISE_PIPELINES)


TSOL_UNFUSED: dict[str, Callable[..., Any]] = {
    "chain4": lambda x: tsol.tanh(tsol.add(tsol.multiply(tsol.relu(x), 2), 1)),
    "matmul_bias_gelu": lambda x, w, b: tsol.gelu(tsol.add(tsol.matmul(x, w), b)),
    "stream_triad": lambda x, y: tsol.add(x, tsol.multiply(y, STREAM_SCALAR)),
}
"""The programs as separate eager TSOL calls: one kernel and one result per op."""


def _torch_table() -> dict[str, Callable[..., Any]]:
    """PyTorch's eager calls on CUDA tensors, when torch is installed."""
    try:
        import torch
        import torch.nn.functional as tf
    except ImportError:
        return {}

    def layernorm(x, g, b):
        return tf.layer_norm(x, (x.shape[-1],), g, b)

    def rmsnorm(x, g):
        return tf.rms_norm(x, (x.shape[-1],), g, eps=1e-6)

    def sdpa(q, k, v, *, causal=False, scale=None):
        return tf.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    def matmul(a, b, *, bias=None, epilogue=None, tile_shape=None):
        y = a @ b
        if bias is not None:
            y = tf.gelu(y + bias) if epilogue and "gelu" in epilogue else y + bias
        return y

    def gemm(a, b, c=None, *, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        y = (a.mT if trans_a else a) @ (b.mT if trans_b else b)
        y = y * alpha if alpha != 1 else y
        return y if c is None else y + beta * c

    def astype(x, dtype):
        return x.to(getattr(torch, dtypes.dtype(dtype).name), copy=True)

    return {"softmax": lambda x, axis=-1: torch.softmax(x, axis),
            "log_softmax": lambda x, axis=-1: torch.log_softmax(x, axis),
            "layernorm": layernorm, "rmsnorm": rmsnorm, "exp": torch.exp, "add": torch.add,
            "multiply": torch.mul, "gelu": lambda x, approximate="none": tf.gelu(
                x, approximate=approximate), "sum": lambda x, axis=None: torch.sum(
                x, axis) if axis is not None else torch.sum(x),
            "flash_attention": sdpa, "matmul": matmul, "gemm": gemm, "astype": astype,
            "cross_entropy": lambda x, tgt: tf.cross_entropy(x, tgt),
            "chain4": lambda x: torch.tanh(torch.relu(x) * 2 + 1),
            "matmul_bias_gelu": lambda x, w, b: tf.gelu(x @ w + b),
            "stream_scale": _stream_scale(), "stream_add": torch.add,
            # torch.add's alpha scales the second operand in the same kernel: a fused triad.
            "stream_triad": lambda x, y: torch.add(x, y, alpha=STREAM_SCALAR)}


def _to_cupy(x: np.ndarray) -> Any:
    import cupy
    return cupy.asarray(x)


def _to_torch(x: np.ndarray) -> Any:
    """A CUDA tensor of ``x``; bfloat16 travels as its int16 bits (torch knows no ml_dtypes)."""
    import torch
    if x.dtype == dtypes.bfloat16:
        bits = torch.from_numpy(np.ascontiguousarray(x).view(np.int16))
        return bits.to("cuda").view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x)).to("cuda")


@dataclass(frozen=True)
class Library:
    """A baseline library: its expression of each op, how a host array becomes one of its
    arrays (what its expressions take; None: the benchmarked backend's own arrays), whether
    those expressions take bfloat16, and the module it needs installed."""

    table: Mapping[str, Callable[..., Any]]
    array: Callable[[np.ndarray], Any] | None
    bfloat16: bool = True
    module: str = "numpy"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


LIBRARIES: dict[str, Library] = {
    "numpy": Library(NUMPY, lambda x: x),
    # CuPy's bfloat16 support is partial (no bfloat16 GEMM, some copies fail on dtype 'E'):
    # its baselines of bfloat16 cases run in float16.
    "cupy": Library(NUMPY, _to_cupy, bfloat16=False, module="cupy"),
    "torch": Library(_torch_table(), _to_torch, module="torch"),
    "cupy.fuse": Library(FusedTable(), _to_cupy, bfloat16=False, module="cupy"),
    "tsol unfused": Library(TSOL_UNFUSED, None, module="tsol"),
}
"""The baselines by library name. The cupy baseline is the NumPy expression on CuPy arrays
(NumPy dispatches to CuPy)."""

BASELINES = {name: lib.table for name, lib in LIBRARIES.items()}
"""Each library's expressions by op."""

DIFFERENT_STREAM = {"dropout"}
"""Ops whose baseline draws other random numbers: its result is no accuracy yardstick."""
