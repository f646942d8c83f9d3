"""The one table of benchmark cases, shared by ``tsol-bench`` and the pytest-benchmark suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsol import dtypes

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
    """Operand recipe: 'x' one array, 'xy' two, 'x+' positive, 'xgb' x with gamma and beta..."""
    baselines: tuple[str, ...] = ("numpy",)
    quick_shape: tuple[int, ...] = field(default=(), compare=False)

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.attrs)
        return f"{self.op}[{'x'.join(map(str, self.shape))},{self.dtype}{',' + extra if extra else ''}]"

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
        }
        return recipes[self.inputs]()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.attrs)


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
    return out


CASES: list[Case] = _cases()
SUITES = sorted({c.suite for c in CASES})
