"""The one table of benchmark cases, shared by ``tsol-bench`` and the pytest-benchmark suite."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

import tsol
from tsol import dtypes
from tsol import op as tsol_op
from tsol.errors import ArgumentError, DTypeError
from tsol.registry import get_op

M16 = 1 << 24
SQUARE = (4096, 4096)
GPU = ("cuda",)

CPU_MAX_FLOPS = 2 * 4096 ** 3
"""The cpu cap: products of more flops than a 4096^3 matmul (about a second of float32 BLAS
on two cores) run on GPUs only, so that a full cpu run stays within minutes."""


@dataclass(frozen=True)
class Sample:
    """Check part of a large case's result: ``count`` evenly spaced indices of ``axis`` (first
    and last included), against the float64 reference of the operands ``operands`` sliced the
    same way. Exact where the slice of the result depends only on the slices of those
    operands: matmul rows (axis -2 of ``a``), attention heads (axis 1 of q, k and v).

    >>> Sample(axis=-2, count=3).indices(10)
    array([0, 4, 9])
    """

    axis: int
    count: int
    operands: tuple[int, ...] = (0,)

    def indices(self, n: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, min(self.count, n)).round().astype(np.intp))

    def take(self, x: Any, idx: np.ndarray) -> Any:
        return np.take(x, idx, axis=self.axis)


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
    and beta, 'mm' a [..., M, K] @ [..., K, N] pair for shape (..., M, K, N), 'mmT' the same
    with b stored [..., N, K] (gemm's trans_b), 'qkv' three [B, H, S, D]..."""
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
    cpu_baseline_dtype: str = ""
    """On the cpu backend, the dtype the baselines get the case's arrays in ('': the case's
    own). NumPy has no half-precision BLAS (its float16 matmul runs at under 1 GFLOP/s), so
    half-type products are compared with NumPy's float32 product."""
    sample: Sample | None = None
    """Check only this part of the result (``Sample``): products whose full float64 host
    reference would cost more than the run itself."""

    def runs_on(self, backend: str) -> bool:
        return not self.backends or backend in self.backends

    @property
    def program(self) -> Program | None:
        """The compiled function this case times instead of ``tsol.<op>`` (pipeline suite)."""
        return PROGRAMS.get(self.op)

    @property
    def id(self) -> str:
        return self.id_at(self.shape)

    def run_id(self, quick: bool = False) -> str:
        """The name of the case's row: at its --quick size when ``quick``."""
        return self.id_at(self.quick_shape) if quick and self.quick_shape else self.id

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

        def mm(transpose_b: bool = False) -> list[np.ndarray]:
            *batch, m, k, n_ = shape
            return [arr((*batch, m, k)) / 8,
                    arr((*batch, n_, k) if transpose_b else (*batch, k, n_)) / 8]

        recipes = {
            "x": lambda: [arr(shape)],
            "x+": lambda: [arr(shape, positive=True)],
            "xy": lambda: [arr(shape), arr(shape)],
            "xg": lambda: [arr(shape), arr((n,))],
            "xgb": lambda: [arr(shape), arr((n,)), arr((n,))],
            "mm": mm,
            "mmT": lambda: mm(transpose_b=True),
            "mm+bias": lambda: mm() + [arr((n,))],
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
    """matmul and gemm, attention, rope, losses and dropout."""
    rows, rows_q = (8192, 4096), (128, 130)
    return _linalg_cases() + _attention_cases() + [
        Case("attention", "rope", (16, 2048, 128),
             quick_shape=(2, 96, 64)),
        Case("loss", "cross_entropy", (4096, 8192), inputs="logits", quick_shape=(64, 100)),
        Case("loss", "mse", rows, inputs="xy", quick_shape=rows_q),
        Case("random", "dropout", (M16,), attrs=(("p", 0.1), ("seed", 1)),
             quick_shape=_q((M16,))),
    ]


LINALG_DTYPES = ("float32", "float16", "bfloat16")
SQUARE_SIZES = tuple(1 << p for p in range(8, 15))
"""Square products 256^3 .. 16384^3; those above ``CPU_MAX_FLOPS`` run on GPUs only."""
ML_SHAPES = ((8192, 4096, 4096), (4096, 11008, 4096), (2048, 2048, 8192), (1024, 4096, 1024))
"""(M, N, K) of the products in transformer layers (projections, MLP up/down, attention
output); the case shapes spell them (M, K, N), as the 'mm' recipe takes them."""
ML_BATCH = 8
"""Batch of the batched ML product: ``ML_BATCH`` x (1024, 4096, 1024)."""


def _linalg_where(shape: tuple[int, ...]) -> dict[str, Any]:
    """``backends`` and ``sample`` of a product: every backend within the cpu cap, else GPUs
    only, checked on 64 rows (a full float64 host reference of 16384^3 is 8.8 TFLOP)."""
    if 2 * math.prod(shape) <= CPU_MAX_FLOPS:
        return {}
    return {"backends": GPU, "sample": Sample(axis=-2, count=64)}


def _linalg_cases() -> list[Case]:
    """Square matmul 256..16384, the ML shapes as matmul, one batched, and as gemm with
    ``trans_b`` (a linear layer's ``x @ W^T``, W stored [N, K]), in float32, float16 and
    bfloat16; half-type cpu baselines run NumPy in float32. Plus the CPU targets' forced-tile
    and fused-epilogue products."""
    mm_q, bmm_q = (96, 80, 72), (3, 40, 24, 36)
    out: list[Case] = []
    for dt in LINALG_DTYPES:
        half = {"cpu_baseline_dtype": "float32"} if dt != "float32" else {}
        shapes = [(n, n, n) for n in SQUARE_SIZES] + [(m, k, n) for m, n, k in ML_SHAPES]
        for shape in shapes:
            out.append(Case("linalg", "matmul", shape, dtype=dt, inputs="mm", quick_shape=mm_q,
                            **half, **_linalg_where(shape)))
        m, n, k = ML_SHAPES[-1]
        out.append(Case("linalg", "matmul", (ML_BATCH, m, k, n), dtype=dt, inputs="mm",
                        quick_shape=bmm_q, **half))
        for m, n, k in ML_SHAPES:
            out.append(Case("linalg", "gemm", (m, k, n), dtype=dt, inputs="mmT",
                            attrs=(("trans_b", True),), quick_shape=mm_q, **half,
                            **_linalg_where((m, k, n))))
    thin = (2048, 512, 2048)
    return out + [
        Case("linalg", "matmul", (2048, 2048, 2048), inputs="mm",
             attrs=(("tile_shape", (192, 128, 256)),), quick_shape=mm_q, backends=("cpu",)),
        Case("linalg", "matmul", thin, inputs="mm+bias", keywords=("bias",),
             attrs=(("epilogue", "bias_gelu"),), quick_shape=mm_q),
    ]


ATTENTION_SEQ = tuple(1 << p for p in range(9, 14))
"""Sequence lengths 512..8192 of the GPU attention cases (the cpu ones stop at 4096)."""


def _attention_sample(shape: tuple[int, ...]) -> Sample | None:
    """Heads to check when the float64 reference's score matrices would pass 2 GiB."""
    b, h, s, _ = shape
    if b * h * s * s <= 1 << 28:
        return None
    return Sample(axis=1, count=max(1, (1 << 28) // (b * s * s)), operands=(0, 1, 2))


def _attention_cases() -> list[Case]:
    """flash_attention, causal and not: float32 [1, 8, S, 64] with S 512..4096 on every
    backend, float16 and bfloat16 [4, 16, S, 128] with S 512..8192 on GPUs."""
    out: list[Case] = []
    for causal in ((), (("causal", True),)):
        out += [Case("attention", "flash_attention", (1, 8, s, 64), inputs="qkv",
                     attrs=causal, quick_shape=(1, 2, 96, 32))
                for s in ATTENTION_SEQ if s <= 4096]
        for dt in ("float16", "bfloat16"):
            out += [Case("attention", "flash_attention", (4, 16, s, 128), dtype=dt,
                         inputs="qkv", attrs=causal, quick_shape=(1, 2, 96, 64), backends=GPU,
                         sample=_attention_sample((4, 16, s, 128)))
                    for s in ATTENTION_SEQ]
    return out


def _gpu_cases() -> list[Case]:
    """Sizes that fill an H100/H200 beyond the series above."""
    big_q = (96, 80, 72)
    return [
        Case("linalg", "matmul", (4096, 4096, 4096), dtype="bfloat16", inputs="mm+bias",
             keywords=("bias",), attrs=(("epilogue", "bias_gelu"),), quick_shape=big_q,
             backends=GPU),
        Case("normalization", "layernorm", SQUARE, dtype="bfloat16", inputs="xgb",
             quick_shape=_q(SQUARE), backends=GPU),
        Case("softmax", "softmax", (8192, 8192), quick_shape=_q(SQUARE), backends=GPU),
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


STREAM_SCALAR = 3.0
"""The scalar ``s`` of the STREAM scale and triad kernels."""


def _stream_scale() -> Any:
    return tsol_op.pipeline([lambda x: x * STREAM_SCALAR], name="stream_scale")


def _stream_add() -> Any:
    return tsol.jit(lambda x, y: x + y, name="stream_add")


def _stream_triad() -> Any:
    return tsol.jit(lambda x, y: x + STREAM_SCALAR * y, name="stream_triad")


PROGRAMS: dict[str, Program] = {
    "chain4": Program(
        _chain4, lambda x: np.tanh(np.maximum(x, 0) * 2 + 1),
        targets=(("cpu", "numpy", 5.0), ("cuda", "cupy.fuse", 1.0), ("cuda", "torch", 2.0))),
    "matmul_bias_gelu": Program(
        _matmul_bias_gelu,
        lambda x, w, b: get_op("matmul").reference(x, w, b, None, epilogue="gelu"),
        targets=(("cpu", "tsol unfused", 1.2), ("cuda", "tsol unfused", 1.2))),
    "stream_scale": Program(_stream_scale, lambda x: STREAM_SCALAR * x),
    "stream_add": Program(_stream_add, lambda x, y: x + y),
    "stream_triad": Program(_stream_triad, lambda x, y: x + STREAM_SCALAR * y),
}
"""Compiled programs by case op name. The pipeline suite's: a 4-op elementwise chain that
fuses into one kernel, and gelu(x @ w + b) that becomes one matmul with a bias+gelu epilogue;
the stream suite's scale ``s * x``, add ``x + y`` and triad ``x + s * y`` (one fused kernel)."""


STREAM_SIZE = 1 << 26
"""Elements of each STREAM operand: 256 MiB of float32, past every cache (an H200's L2 is
50 MiB), as STREAM asks (operands at least 4x the last-level cache)."""


def _stream_cases() -> list[Case]:
    """STREAM's copy (``tsol.astype`` to the same dtype: a one-kernel copy), scale, add and
    triad on float32; GB/s counts the inputs and the result once, so the rows measure the
    bandwidth a single pass reaches against the copy ceiling."""
    n, q = (STREAM_SIZE,), _q((M16,))
    return [
        Case("stream", "astype", n, attrs=(("dtype", "float32"),), quick_shape=q),
        Case("stream", "stream_scale", n, quick_shape=q,
             gpu_baselines=("cupy", "cupy.fuse", "torch")),
        Case("stream", "stream_add", n, inputs="xy", quick_shape=q),
        Case("stream", "stream_triad", n, inputs="xy", quick_shape=q,
             baselines=("numpy", "tsol unfused"),
             gpu_baselines=("cupy", "cupy.fuse", "torch", "tsol unfused")),
    ]


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


CASES: list[Case] = _cases() + _gpu_cases() + _pipeline_cases() + _stream_cases()
SUITES = sorted({c.suite for c in CASES})
DTYPES = sorted({c.dtype for c in CASES})


def _dtype_name(name: str) -> str:
    try:
        return dtypes.dtype(name).name
    except DTypeError:
        return name


def select(cases: list[Case], *, backend: str = "cpu", suites: Sequence[str] = (),
           ops: Sequence[str] = (), dtypes: Sequence[str] = (), quick: bool = False
           ) -> list[Case]:
    """The cases that run on ``backend`` and pass every filter given (an empty filter passes
    all): suite, op and dtype names (aliases such as 'bf16' allowed), each a list of choices.
    With ``quick``, cases that share a name at their --quick size (a series of full sizes)
    run once, as the first of them.

    Raises ArgumentError for a suite, op or dtype that no case has, listing those that exist.

    >>> [c.run_id(quick=True) for c in select(CASES, suites=["stream"], quick=True)][:2]
    ['astype[65536,float32,dtype=float32]', 'stream_scale[65536,float32]']
    """
    wanted = [_dtype_name(d) for d in dtypes]
    for kind, given, known in (("suite", suites, {c.suite for c in cases}),
                               ("op", ops, {c.op for c in cases}),
                               ("dtype", wanted, {c.dtype for c in cases})):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ArgumentError(f"tsol-bench: no case has {kind} {unknown[0]!r}. Fix: use one "
                                f"of {', '.join(sorted(known))}.")
    out, seen = [], set()
    for c in cases:
        if (suites and c.suite not in suites or ops and c.op not in ops
                or wanted and c.dtype not in wanted or not c.runs_on(backend)):
            continue
        if quick:
            if c.run_id(quick=True) in seen:
                continue
            seen.add(c.run_id(quick=True))
        out.append(c)
    return out
