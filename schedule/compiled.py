"""Compiled functions: ``tsol.jit``, ``graph.module`` and the callable ``op.pipeline``.

A ``Compiled`` wraps a Python function of arrays. Its first call with a new signature (each
array argument's type, shape, dtype and backend; other arguments by value) traces the function
into Graph IR, runs the passes, lowers the result to a Schedule and keeps it; later calls with
that signature only run the schedule. ``explain()`` shows the three stages of the last (or a
given) signature.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from tsol import backends, config
from tsol.errors import ArgumentError, BackendError
from tsol.ops import base
from tsol.ops.base import SCALAR_TYPES, meta_of

from . import passes
from .capture import trace, unflatten
from .graph import Graph
from .lower import LaunchReplay, Schedule, lower, run


class Executable:
    """One signature's compiled form: the captured graph, the optimized graph, the schedule."""

    def __init__(self, captured: Graph, optimized: Graph, schedule: Schedule,
                 structure: Any) -> None:
        self.captured = captured
        self.optimized = optimized
        self.schedule = schedule
        self.structure = structure
        self.positions: list[int] = []
        self.foreign = False
        self.settings: Any = None

        self.replay: Any = None
        """A ``cuda_graph.GraphReplay`` when the function replays as CUDA graphs."""
        self.launches = LaunchReplay.build(schedule)
        """The schedule's recorded launches (``lower.LaunchReplay``) where it can replay them."""

    def __call__(self, arrays: Sequence[Any]) -> Any:
        if self.replay is not None:
            values = self.replay(arrays)
        elif self.launches is not None:
            values = self.launches(arrays)
        else:
            values = run(self.schedule, arrays)
        return unflatten(self.structure, values)

    def explain(self) -> str:
        s = self.schedule
        total_flops = sum(L.flops for L in s.launches)
        total_bytes = sum(L.bytes for L in s.launches)
        names = " -> ".join(name for name, _ in passes.PASSES)
        return "\n".join([
            "== Graph IR (captured) ==", self.captured.text(),
            f"== Graph IR (after {names}) ==", self.optimized.text(),
            "== Schedule IR ==", s.text(),
            f"total: {s.kernel_count} kernels, {total_flops / 1e6:.3g} MFLOP, "
            f"{total_bytes / 1e6:.3g} MB moved (estimated)"])


def _backend_of(name: str, arrays: Sequence[Any]) -> backends.Backend:
    try:
        b = backends.for_arrays(list(arrays))
    except BackendError:
        raise BackendError(f"tsol: compiled function {name!r}: arguments live on different "
                           "backends (TSOL never copies between devices on its own). Fix: move "
                           "every argument to one device first.") from None
    b = b or backends.get(config.get().default_backend)
    if not b.available():
        raise BackendError(f"tsol: compiled function {name!r}: {b.why_unavailable()}. Fix: "
                           "install the backend's extra or pass NumPy arrays.")
    return b


class Compiled:
    """A function captured and compiled once per input signature."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None,
                 cuda_graph: bool = False) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.cuda_graph = cuda_graph
        self._cache: dict[Any, Executable] = {}
        self._last: Any = None
        functools.update_wrapper(self, fn)

    def _split(self, args: Sequence[Any]) -> tuple[list[int], dict[int, Any]]:
        """Positions of the array arguments, and the static ones by position (checked)."""
        positions, statics = [], {}
        for i, a in enumerate(args):
            if _is_array(a):
                if backends.owner(a) is None:
                    raise ArgumentError(f"tsol: compiled function {self.name!r}: argument {i} "
                                        f"is a {type(a).__name__}, which no backend owns. Fix: "
                                        "pass a NumPy, CuPy or dpnp array.")
                positions.append(i)
            else:
                try:
                    hash(a)
                except TypeError:
                    raise ArgumentError(f"tsol: compiled function {self.name!r}: argument {i} "
                                        f"({type(a).__name__}) is neither an array nor "
                                        "hashable. Fix: pass arrays, or Python values that "
                                        "select the computation (they key the compile cache)."
                                        ) from None
                statics[i] = a
        return positions, statics

    def executable(self, *args: Any) -> Executable:
        """The compiled form for these arguments (compiling on the first such signature)."""
        key = _signature(args)
        try:
            ex = self._cache.get(key)
        except TypeError:                 # an unhashable static argument: _split explains
            ex = None
        if ex is None:
            ex = self._compile(args, key)
        self._last = ex
        return ex

    def _compile(self, args: Sequence[Any], key: Any) -> Executable:
        positions, statics = self._split(args)
        arrays = [args[i] for i in positions]
        b = _backend_of(self.name, arrays)
        adopted = [b.adopt(a) for a in arrays]
        captured, structure = trace(self.fn, [meta_of(a) for a in adopted], self.name, statics)
        optimized = passes.run_passes(captured)
        ex = Executable(captured, optimized, lower(optimized, b), structure)
        ex.positions = positions
        ex.foreign = any(x is not a for x, a in zip(adopted, arrays))
        ex.settings = config.get()            # keeps the settings object (its id is keyed)
        if self.cuda_graph and b.name == "cuda" and not b.host_arrays():
            from .cuda_graph import GraphReplay
            ex.replay = GraphReplay(ex.schedule)
        self._cache[key] = ex
        return ex

    def __call__(self, *args: Any) -> Any:
        ex = self.executable(*args)
        arrays = [args[i] for i in ex.positions]
        if not ex.foreign:
            return ex(arrays)
        b = ex.schedule.backend
        like = next(a for a in arrays if b.adopt(a) is not a)
        return _export(ex([b.adopt(a) for a in arrays]), b, like)

    def explain(self, *args: Any) -> str:
        """Graph IR, optimized Graph IR and Schedule IR (kernels, configs, launch shapes,
        estimated flops and bytes) for ``args``, or for the last call's signature."""
        if args:
            return self.executable(*args).explain()
        if self._last is None:
            raise ArgumentError(f"tsol: {self.name!r} has not been called yet, so no input "
                                "signature is known. Fix: call it first, or pass example "
                                "arguments: explain(x).")
        return self._last.explain()

    def kernel_count(self, *args: Any) -> int:
        """How many kernels one call launches for ``args`` (or the last signature)."""
        ex = self.executable(*args) if args else self._last
        if ex is None:
            raise ArgumentError(f"tsol: {self.name!r}: pass example arguments.")
        return ex.schedule.kernel_count

    def __repr__(self) -> str:
        return f"<tsol compiled {self.name!r}: {len(self._cache)} signature(s)>"


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, SCALAR_TYPES) \
        and not isinstance(a, np.generic)


def _signature(args: Sequence[Any]) -> Any:
    """The compile-cache key of a call: each array's type, shape and dtype, each other
    argument by value, the settings object and the installed selector."""
    parts = [(type(a), a.shape, a.dtype) if _is_array(a) else ("static", type(a), a)
             for a in args]
    return (tuple(parts), id(config.get()), id(base.selector))


def _export(result: Any, b: backends.Backend, like: Any) -> Any:
    if isinstance(result, (list, tuple)):
        return type(result)(_export(r, b, like) for r in result)
    return b.export(result, like)


def jit(fn: Callable[..., Any] | None = None, *, name: str | None = None,
        cuda_graph: bool = False) -> Any:
    """Compile ``fn``: its TSOL op calls are captured once per input signature, fused and run
    as a schedule of kernels.

    Array arguments (NumPy, CuPy, DLPack producers) become graph inputs; other arguments are
    static and key the compile cache. ``cuda_graph=True``: on a CUDA device the schedule is
    captured as a CUDA graph and replayed, one driver call per call for inputs at the same
    addresses (results are copied out, so they stay valid). Inside, use TSOL ops
    (``tsol.exp``, ``op.matmul``) and the operators of the traced values (``+ - * / @ .T``);
    NumPy functions on traced values raise ArgumentError.

    >>> import numpy as np, tsol
    >>> @tsol.jit
    ... def f(x):
    ...     return tsol.tanh(tsol.relu(x) * 2 + 1)
    >>> f(np.zeros(3, np.float32))
    array([0.7615942, 0.7615942, 0.7615942], dtype=float32)
    >>> f.kernel_count()
    1
    """
    if fn is None:
        return lambda f: Compiled(f, name, cuda_graph)
    return Compiled(fn, name, cuda_graph)
