"""The one table of benchmark cases, shared by ``tsol-bench`` and the pytest-benchmark suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import tsol
from tsol import dtypes
from tsol import op as tsol_op
from tsol.registry import get_op

M16 = 1 << 24
SQUARE = (4096, 4096)


@dataclass(frozen=True)
class Case:
    """One timed call: ``tsol.<op>(*inputs, **attrs)`` against each baseline's same call."""

    suite: str
    op: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    attrs: tuple[tuple[str, Any], ...] = ()
    inputs: str = "x"
    """Operand recipe (``RECIPES``): 'x' one array, 'xy' two, 'x+' positive, 'xgb' x with gamma
    and beta, 'mm' a [M, K] @ [K, N] pair for shape (M, K, N), 'qkv' three [B, H, S, D]..."""
    keywords: tuple[str, ...] = ()
    """Names under which the recipe's trailing arrays are passed (matmul's ``bias=``)."""
    baselines: tuple[str, ...] = ("numpy",)
    """Baseline libraries on the cpu backend (``LIBRARIES`` names), the first that runs in the
    case's dtype being the accuracy yardstick."""
    gpu_baselines: tuple[str, ...] = ("cupy", "torch")
    """Baseline libraries on a GPU backend."""
    quick_shape: tuple[int, ...] = field(default=(), compare=False)
    backends: tuple[str, ...] = ()
    """Backends the case is meant for (empty: every backend): sizes and tiles that fit one."""

    def runs_on(self, backend: str) -> bool:
        return not self.backends or backend in self.backends

    @property
    def program(self) -> Program | None:
        """The compiled function this case times instead of ``tsol.<op>`` (pipeline suite)."""
        return PROGRAMS.get(self.op)

    @property
    def id(self) -> str:
        return self.id_at(self.shape)

    def id_at(self, shape: tuple[int, ...]) -> str:
        """The case's name at ``shape`` (its --quick shape names the quick run's rows)."""
        extra = ",".join(f"{k}={v}" for k, v in self.attrs)
        return f"{self.op}[{'x'.join(map(str, shape))},{self.dtype}{',' + extra if extra else ''}]"

    def make_inputs(self, rng: np.random.Generator, quick: bool = False) -> list[np.ndarray]:
        shape = self.quick_shape if quick and self.quick_shape else self.shape
        dt = dtypes.dtype(self.dtype)

        def arr(s: tuple[int, ...], positive: bool = False) -> np.ndarray:
            lo = 0.1 if positive else -3.0
            return rng.uniform(lo, 3.0, size=s).astype(dt)

        n = shape[-1]
        recipes = {
            "x": lambda: [arr(shape)],
            "x+": lambda: [arr(shape, positive=True)],
            "xy": lambda: [arr(shape), arr(shape)],
            "xg": lambda: [arr(shape), arr((n,))],
            "xgb": lambda: [arr(shape), arr((n,)), arr((n,))],
            "mm": lambda: [arr(shape[:2]) / 8, arr(shape[1:]) / 8],
            "mm+bias": lambda: [arr(shape[:2]) / 8, arr(shape[1:]) / 8, arr((n,))],
            "qkv": lambda: [arr(shape), arr(shape), arr(shape)],
            "logits": lambda: [arr(shape), rng.integers(0, n, size=shape[:-1])],
        }
        return recipes[self.inputs]()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.attrs)

    def call_args(self, inputs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """(positional arrays, keyword arguments) of the call on ``inputs``."""
        k = len(self.keywords)
        args = inputs[:len(inputs) - k]
        return args, {**dict(zip(self.keywords, inputs[len(args):])), **self.kwargs}


def _q(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The --quick size of a shape: about 64K elements, same rank."""
    return (256, 256) if len(shape) == 2 else (1 << 16,)


def _cases() -> list[Case]:
    out: list[Case] = []
    rows = [("softmax", "x", ()), ("log_softmax", "x", ()), ("layernorm", "xgb", ()),
            ("rmsnorm", "xg", ())]
    for op, inputs, attrs in rows:
        suite = "softmax" if "softmax" in op else "normalization"
        out.append(Case(suite, op, SQUARE, inputs=inputs, attrs=attrs, quick_shape=_q(SQUARE)))
    out.append(Case("softmax", "softmax", SQUARE, attrs=(("axis", 0),), quick_shape=_q(SQUARE)))
    for op in ("neg", "abs", "exp", "tanh", "sin", "cos", "sigmoid", "relu", "silu"):
        out.append(Case("elementwise", op, (M16,), quick_shape=_q((M16,))))
    for op in ("log", "sqrt", "rsqrt"):
        out.append(Case("elementwise", op, (M16,), inputs="x+", quick_shape=_q((M16,))))
    for approx in ("none", "tanh"):
        out.append(Case("elementwise", "gelu", (M16,), attrs=(("approximate", approx),),
                        quick_shape=_q((M16,))))
    for op in ("add", "subtract", "multiply", "divide", "maximum", "minimum"):
        out.append(Case("elementwise", op, (M16,), inputs="xy", quick_shape=_q((M16,))))
    for op in ("sum", "mean", "max", "min", "var", "std", "argmax", "logsumexp"):
        out.append(Case("reduction", op, (M16,), quick_shape=_q((M16,))))
        for axis in (-1, 0):
            if op != "argmax" or axis == -1:
                out.append(Case("reduction", op, SQUARE, attrs=(("axis", axis),),
                                quick_shape=_q(SQUARE)))
    out += _ml_cases()
    return out


def _ml_cases() -> list[Case]:
    """matmul, attention, rope, losses and dropout at the sizes the CPU targets name."""
    mm, mm_q = (2048, 2048, 2048), (96, 80, 72)
    thin = (2048, 512, 2048)
    attn, attn_q = (1, 8, 2048, 64), (1, 2, 96, 32)
    rows, rows_q = (8192, 4096), (128, 130)
    return [
        Case("linalg", "matmul", mm, inputs="mm", quick_shape=mm_q),
        Case("linalg", "matmul", mm, inputs="mm", attrs=(("tile_shape", (192, 128, 256)),),
             quick_shape=mm_q, backends=("cpu",)),
        Case("linalg", "matmul", thin, inputs="mm+bias", keywords=("bias",),
             attrs=(("epilogue", "bias_gelu"),), quick_shape=mm_q),
        Case("attention", "flash_attention", attn, inputs="qkv", quick_shape=attn_q),
        Case("attention", "flash_attention", attn, inputs="qkv", attrs=(("causal", True),),
             quick_shape=attn_q),
        Case("attention", "rope", (16, 2048, 128),
             quick_shape=(2, 96, 64)),
        Case("loss", "cross_entropy", (4096, 8192), inputs="logits", quick_shape=(64, 100)),
        Case("loss", "mse", rows, inputs="xy", quick_shape=rows_q),
        Case("random", "dropout", (M16,), attrs=(("p", 0.1), ("seed", 1)),
             quick_shape=_q((M16,))),
    ]


def _gpu_cases() -> list[Case]:
    """Sizes that fill an H100/H200: the CUDA targets' shapes where a float64 host reference
    stays affordable (larger products are checked on the device by bench/gpu_*_check.py)."""
    gpu = ("cuda",)
    big, big_q = (4096, 4096, 4096), (96, 80, 72)
    attn, attn_q = (4, 16, 2048, 128), (1, 2, 96, 64)
    return [
        Case("linalg", "matmul", big, inputs="mm", quick_shape=big_q, backends=gpu),
        Case("linalg", "matmul", big, dtype="bfloat16", inputs="mm", quick_shape=big_q,
             backends=gpu),
        Case("linalg", "matmul", big, dtype="bfloat16", inputs="mm+bias", keywords=("bias",),
             attrs=(("epilogue", "bias_gelu"),), quick_shape=big_q, backends=gpu),
        Case("attention", "flash_attention", attn, dtype="bfloat16", inputs="qkv",
             quick_shape=attn_q, backends=gpu),
        Case("attention", "flash_attention", attn, dtype="bfloat16", inputs="qkv",
             attrs=(("causal", True),), quick_shape=attn_q, backends=gpu),
        Case("normalization", "layernorm", SQUARE, dtype="bfloat16", inputs="xgb",
             quick_shape=_q(SQUARE), backends=gpu),
        Case("softmax", "softmax", (8192, 8192), quick_shape=_q(SQUARE), backends=gpu),
    ]


@dataclass(frozen=True)
class Program:
    """A compiled TSOL function timed as one call: the pipeline suite's unit.

    ``build()`` returns a fresh ``op.pipeline`` or ``tsol.jit`` object (compiled on its first
    call, which the warm-up absorbs); ``reference`` computes the same result in float64 NumPy
    from float64 copies of the inputs; ``targets`` are (backend, baseline, minimum speedup)
    triples that the tables print a verdict for.
    """

    build: Callable[[], Any]
    reference: Callable[..., np.ndarray]
    targets: tuple[tuple[str, str, float], ...] = ()


def _chain4() -> Any:
    return tsol_op.pipeline([tsol_op.relu, lambda x: x * 2, lambda x: x + 1, tsol_op.tanh],
                            name="chain4")


def _matmul_bias_gelu() -> Any:
    return tsol.jit(lambda x, w, b: tsol.gelu(x @ w + b), name="matmul_bias_gelu")


PROGRAMS: dict[str, Program] = {
    "chain4": Program(
        _chain4, lambda x: np.tanh(np.maximum(x, 0) * 2 + 1),
        targets=(("cpu", "numpy", 5.0), ("cuda", "cupy.fuse", 1.0), ("cuda", "torch", 2.0))),
    "matmul_bias_gelu": Program(
        _matmul_bias_gelu,
        lambda x, w, b: get_op("matmul").reference(x, w, b, None, epilogue="gelu"),
        targets=(("cpu", "tsol unfused", 1.2), ("cuda", "tsol unfused", 1.2))),
}
"""The pipeline suite's programs by case op name: a 4-op elementwise chain that fuses into
one kernel, and gelu(x @ w + b) that becomes one matmul with a bias+gelu epilogue."""


def _pipeline_cases() -> list[Case]:
    """Compiled programs against the same computation eager (NumPy, CuPy, torch), fused by
    hand (cupy.fuse) and as separate TSOL calls ('tsol unfused')."""
    mm_q = (96, 80, 72)
    return [
        Case("pipeline", "chain4", (M16,), baselines=("numpy", "tsol unfused"),
             gpu_baselines=("cupy", "cupy.fuse", "torch", "tsol unfused"),
             quick_shape=_q((M16,))),
        Case("pipeline", "matmul_bias_gelu", (2048, 512, 2048), inputs="mm+bias",
             baselines=("numpy", "tsol unfused"), quick_shape=mm_q, backends=("cpu",)),
        Case("pipeline", "matmul_bias_gelu", (4096, 4096, 4096), inputs="mm+bias",
             gpu_baselines=("cupy", "tsol unfused", "torch"), quick_shape=mm_q,
             backends=("cuda",)),
    ]


CASES: list[Case] = _cases() + _gpu_cases() + _pipeline_cases()
SUITES = sorted({c.suite for c in CASES})
