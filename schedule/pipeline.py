"""``op.pipeline`` and ``graph.module``: the two ways of naming a captured computation."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tsol.errors import ArgumentError

from .compiled import Compiled


class Pipeline(Compiled):
    """Stages applied in order, captured and compiled as one function."""

    def __init__(self, stages: Sequence[Callable[..., Any]], name: str = "pipeline",
                 cuda_graph: bool = False) -> None:
        self.stages = tuple(stages)

        def chain(*args: Any) -> Any:
            x = self.stages[0](*args)
            for stage in self.stages[1:]:
                x = stage(x)
            return x
        super().__init__(chain, name, cuda_graph)

    def __repr__(self) -> str:
        names = ", ".join(getattr(s, "__name__", type(s).__name__) for s in self.stages)
        return f"<tsol pipeline [{names}]>"


def pipeline(stages: Sequence[Any], *, name: str = "pipeline", cuda_graph: bool = False) -> Any:
    """Compose ops (or any functions of TSOL ops) into one fused computation.

    - ``pipeline([f, g, h])`` returns a callable ``p`` with ``p(x) == h(g(f(x)))``, captured
      and compiled once per input signature; ``p.explain()`` prints its Graph IR, Schedule IR
      and kernels, ``p.kernel_count()`` how many kernels a call launches. The first stage may
      take several arguments.
    - ``pipeline([x, g, h])`` with an array first (already computed, such as
      ``op.matmul(X, X.T)``) applies the remaining stages to it at once and returns the result.
    - ``cuda_graph=True`` replays the compiled schedule as a CUDA graph on a CUDA device
      (``tsol.jit``).
    - Raises ArgumentError for an empty list or a stage that is not callable.

    >>> import numpy as np
    >>> from tsol import op
    >>> p = op.pipeline([op.relu, lambda x: x * 2 + 1, op.tanh])
    >>> p(np.zeros(2, np.float32))
    array([0.7615942, 0.7615942], dtype=float32)
    >>> p.kernel_count()
    1
    """
    stages = list(stages)
    if not stages:
        raise ArgumentError("tsol.op.pipeline: the list of stages is empty. Fix: pass ops or "
                            "functions, e.g. op.pipeline([op.relu, op.layernorm]).")
    first = stages[0]
    rest = stages[1:] if not callable(first) else stages
    bad = [i for i, s in enumerate(rest, start=len(stages) - len(rest)) if not callable(s)]
    if bad:
        raise ArgumentError(f"tsol.op.pipeline: stage {bad[0]} is a "
                            f"{type(stages[bad[0]]).__name__}, not callable. Fix: only the "
                            "first stage may be an array (a value already computed); the "
                            "others must be ops or functions.")
    if callable(first):
        return Pipeline(stages, name, cuda_graph)
    if not rest:
        return first
    return Pipeline(rest, name, cuda_graph)(first)


def module(name: str, *, cuda_graph: bool = False) -> Callable[[Callable[..., Any]], Compiled]:
    """Decorator: capture the function as the named graph module, compiled per signature.

    Calls record into a Graph IR named ``name``; pattern rewrites apply (for example
    ``softmax(Q K^T * scale) V`` becomes one flash-attention kernel) and the result runs as a
    schedule of fused kernels. The decorated object has ``explain()`` and ``kernel_count()``.

    >>> import numpy as np, tsol
    >>> from tsol import graph, op
    >>> @graph.module("attention")
    ... def attention(q, k, v):
    ...     return op.matmul(op.softmax(op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * 0.5), v)
    >>> q = np.ones((1, 1, 2, 4), np.float32)
    >>> attention(q, q, q).shape
    (1, 1, 2, 4)
    >>> attention.kernel_count()
    1
    """
    if not isinstance(name, str) or not name:
        raise ArgumentError("tsol.graph.module: the module needs a name. Fix: "
                            "@graph.module(\"attention\").")
    return lambda fn: Compiled(fn, name, cuda_graph)
