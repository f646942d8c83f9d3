"""Capture: while a function is traced, op calls on ``Tracer`` values record Graph IR nodes.

``trace(fn, metas)`` calls ``fn`` with one Tracer per input. Each TSOL op that receives a Tracer
(directly or in a list operand) records a node instead of running: its attributes are normalized
and its result meta computed by the op's own rules, so a bad call raises the same TSOLError it
would raise eagerly, at capture time. An op with several results (``split``) records one node
and returns a list of Tracers, one per result (``part`` nodes, see ``graph``). Ops that receive
no Tracer run eagerly as usual; their results (and arrays from the enclosing scope) enter the
graph as constants. Tracers support the arithmetic operators, ``@``, ``.T``, indexing and
``reshape``/``astype`` like arrays.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import tsol
from tsol.errors import ArgumentError, TSOLError
from tsol.ops import base
from tsol.ops.base import SCALAR_TYPES, Meta, meta_of
from tsol.registry import OpDef

from .graph import Graph, Node


class Tracer:
    """A symbolic array inside a captured function: its node, shape and dtype."""

    __array_priority__ = 1000          # NumPy defers binary operators to us
    __slots__ = ("graph", "node")

    def __init__(self, graph: Graph, node: Node) -> None:
        self.graph = graph
        self.node = node

    shape = property(lambda self: self.node.meta.shape)
    dtype = property(lambda self: self.node.meta.dtype)
    ndim = property(lambda self: self.node.meta.ndim)
    size = property(lambda self: self.node.meta.size)
    T = property(lambda self: tsol.transpose(self))

    def __repr__(self) -> str:
        return f"Tracer({self.node.label()}: {self.node.meta})"

    def __bool__(self) -> bool:
        raise ArgumentError("tsol: a captured value has no truth value while its function is "
                            "traced. Fix: use tsol.where for data-dependent choices, or keep "
                            "Python control flow on shapes and arguments only.")

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise ArgumentError("tsol: a captured value cannot become a NumPy array while its "
                            "function is traced. Fix: use tsol ops on it, not NumPy functions.")

    # arithmetic
    __add__ = lambda self, o: tsol.add(self, o)            # noqa: E731
    __radd__ = lambda self, o: tsol.add(o, self)           # noqa: E731
    __sub__ = lambda self, o: tsol.subtract(self, o)       # noqa: E731
    __rsub__ = lambda self, o: tsol.subtract(o, self)      # noqa: E731
    __mul__ = lambda self, o: tsol.multiply(self, o)       # noqa: E731
    __rmul__ = lambda self, o: tsol.multiply(o, self)      # noqa: E731
    __truediv__ = lambda self, o: tsol.divide(self, o)     # noqa: E731
    __rtruediv__ = lambda self, o: tsol.divide(o, self)    # noqa: E731
    __pow__ = lambda self, o: tsol.power(self, o)          # noqa: E731
    __rpow__ = lambda self, o: tsol.power(o, self)         # noqa: E731
    __matmul__ = lambda self, o: tsol.matmul(self, o)      # noqa: E731
    __rmatmul__ = lambda self, o: tsol.matmul(o, self)     # noqa: E731
    __neg__ = lambda self: tsol.neg(self)                  # noqa: E731
    __abs__ = lambda self: tsol.abs(self)                  # noqa: E731
    __lt__ = lambda self, o: tsol.less(self, o)            # noqa: E731
    __le__ = lambda self, o: tsol.less_equal(self, o)      # noqa: E731
    __gt__ = lambda self, o: tsol.greater(self, o)         # noqa: E731
    __ge__ = lambda self, o: tsol.greater_equal(self, o)   # noqa: E731
    __getitem__ = lambda self, key: tsol.slice(self, key)  # noqa: E731
    __hash__ = object.__hash__

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return tsol.equal(self, o)

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return tsol.not_equal(self, o)

    def reshape(self, *shape: Any) -> Any:
        return tsol.reshape(self, shape[0] if len(shape) == 1 else shape)

    def astype(self, dtype: Any) -> Any:
        return tsol.astype(self, dtype)

    def transpose(self, *axes: Any) -> Any:
        return tsol.transpose(self, (axes[0] if len(axes) == 1 else axes) or None)

    def sum(self, axis: Any = None, **kw: Any) -> Any:
        return tsol.sum(self, axis=axis, **kw)

    def mean(self, axis: Any = None, **kw: Any) -> Any:
        return tsol.mean(self, axis=axis, **kw)

    def max(self, axis: Any = None, **kw: Any) -> Any:
        return tsol.max(self, axis=axis, **kw)


_state = threading.local()


def _graph() -> Graph | None:
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


def _is_tracer(x: Any) -> bool:
    return isinstance(x, Tracer) or (isinstance(x, (list, tuple))
                                     and any(isinstance(e, Tracer) for e in x))


def _operand_node(g: Graph, opdef: OpDef, x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, Tracer):
        if x.graph is not g:
            raise ArgumentError(f"tsol.{opdef.name}: a value captured by another function "
                                "reached this one. Fix: pass it as an argument instead of "
                                "keeping it from an outer traced function.")
        return x.node
    if isinstance(x, (list, tuple)):
        return tuple(_operand_node(g, opdef, e) for e in x)
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, SCALAR_TYPES):
        return g.const(x, meta_of(x))
    base._check_operand(opdef, x, [x])
    return g.const(x, meta_of(x))


def record(opdef: OpDef, operands: list[Any], attrs: dict[str, Any]) -> Any:
    """``base.capture_hook``: the op's node as a Tracer, or NotImplemented to run eagerly."""
    g = _graph()
    if g is None or not any(_is_tracer(x) for x in operands):
        return NotImplemented
    if attrs.pop("out", None) is not None:
        raise ArgumentError(f"tsol.{opdef.name}: out= is not supported inside a captured "
                            "function. Fix: return the result; the compiled function "
                            "allocates and reuses buffers itself.")
    inputs = [_operand_node(g, opdef, x) for x in operands]
    metas = [None if x is None else tuple(e.meta for e in x) if isinstance(x, tuple) else x.meta
             for x in inputs]
    if opdef.normalize is not None:
        attrs = opdef.normalize(metas, **attrs)
    meta = opdef.meta(*metas, **attrs)
    node = g.op(opdef, inputs, attrs, meta=meta)
    if isinstance(meta, list):        # several results: a list of parts, as the op returns
        return [Tracer(g, g.part(node, i)) for i in range(len(meta))]
    return Tracer(g, node)


@contextmanager
def capturing(g: Graph) -> Iterator[Graph]:
    """Record op calls on ``g``'s Tracers while the block runs (nestable, per thread)."""
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(g)
    previous = base.capture_hook
    base.capture_hook = record
    try:
        yield g
    finally:
        stack.pop()
        base.capture_hook = previous if stack else None


def trace(fn: Callable[..., Any], metas: Sequence[Meta], name: str = "graph",
          statics: dict[int, Any] | None = None) -> tuple[Graph, Any]:
    """Capture ``fn`` on inputs of ``metas``: (graph, output structure). ``statics`` maps
    argument positions to values passed through unchanged (non-array arguments)."""
    g = Graph(name)
    statics = statics or {}
    args: list[Any] = []
    position = 0
    for i in range(len(metas) + len(statics)):
        if i in statics:
            args.append(statics[i])
        else:
            args.append(Tracer(g, g.input(metas[position])))
            position += 1
    with capturing(g):
        result = fn(*args)
    outs, structure = flatten_outputs(g, result, name)
    g.outputs = outs
    return g, structure


def flatten_outputs(g: Graph, result: Any, name: str) -> tuple[list[Node], Any]:
    """Output nodes of a traced result (a Tracer, an array constant or a tuple/list of them)
    and the structure to rebuild it: an int index, or a tuple/list of structures."""
    outs: list[Node] = []

    def walk(r: Any) -> Any:
        if isinstance(r, (list, tuple)):
            return type(r)(walk(e) for e in r)
        if isinstance(r, Tracer):
            node = r.node
        elif isinstance(r, SCALAR_TYPES) or hasattr(r, "shape"):
            node = g.const(r, meta_of(r))
        else:
            raise TSOLError(f"tsol: captured function {name!r} returned a "
                            f"{type(r).__name__}. Fix: return arrays (or a tuple of arrays).")
        outs.append(node)
        return len(outs) - 1

    return outs, walk(result)


def unflatten(structure: Any, values: Sequence[Any]) -> Any:
    if isinstance(structure, (list, tuple)):
        return type(structure)(unflatten(s, values) for s in structure)
    return values[structure]
