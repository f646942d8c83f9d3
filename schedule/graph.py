"""The Graph IR: hash-consed nodes of registered ops, their results, inputs and constants.

A ``Node`` is one op application with its (normalized) attributes and result ``Meta``, or a
graph input, or a constant (a Python scalar or an array captured from the enclosing scope).
Nodes are built through a ``Graph``, which interns them: the same op on the same inputs with
the same attributes is one node, so common subexpressions merge as they are recorded. The
graph's ``key()`` (a hash of its structure, its input metas and its constants' identities)
keys the compile cache.

An op with several results (``split``) is one node whose meta is the list of its results'
Metas, read through one ``part`` node per result used (``%5 = part(%4, index=1)``). Parts are
what other nodes take as inputs and what a graph returns, so every edge still carries one
array: passes need not know multi-result nodes exist, the lowering runs the op once and hands
out its results, and autodiff gathers the parts' cotangents into the list the op's VJP rule
takes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from tsol.ops.base import Meta
from tsol.registry import OpDef, get_op

INPUT = "input"
CONST = "const"
PART = "part"


def freeze(value: Any) -> Any:
    """A hashable, stably printed form of an attribute value (lists and dicts become tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.dtype):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, value.step)
    return value


def thaw(value: Any) -> Any:
    """Undo ``freeze`` for slices (the only frozen form an op cannot take back as it is)."""
    if isinstance(value, tuple):
        if len(value) == 4 and value[0] == "slice":
            return slice(value[1], value[2], value[3])
        return tuple(thaw(v) for v in value)
    return value


@dataclass(eq=False)
class Node:
    """One value of the graph. ``inputs`` holds Nodes, None (an optional input left out) or a
    tuple of Nodes (a list operand such as ``concat``'s); ``attrs`` is a sorted tuple of
    (name, frozen value) pairs, already normalized by the op's rule."""

    op: str
    inputs: tuple[Any, ...]
    attrs: tuple[tuple[str, Any], ...]
    meta: Any
    value: Any = None
    """The constant's value (CONST), the input's position (INPUT) or the result's index
    (PART, also its ``index`` attribute)."""
    id: int = -1
    users: list[Node] = field(default_factory=list, repr=False)

    @property
    def opdef(self) -> OpDef:
        return get_op(self.op)

    @property
    def is_op(self) -> bool:
        return self.op not in (INPUT, CONST, PART)

    @property
    def producer(self) -> Node:
        """The node that computes this value: a part's multi-result node, else itself."""
        return self.inputs[0] if self.op == PART else self

    @property
    def attr(self) -> dict[str, Any]:
        return {k: thaw(v) for k, v in self.attrs}

    def operands(self) -> list[Node]:
        """The input Nodes, list operands flattened, left-out inputs skipped."""
        return [e for x in self.inputs if x is not None
                for e in (x if isinstance(x, tuple) else (x,))]

    def label(self) -> str:
        return f"%{self.id}"

    def __repr__(self) -> str:
        return f"Node({self.label()} {self.op} {self.meta})"


def _input_key(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(e.id for e in x)
    return x.id


def _const_key(value: Any) -> Any:
    """Scalars merge by value and type; arrays by identity (they are the caller's objects)."""
    if isinstance(value, (bool, int, float)):
        return (type(value).__name__, repr(value))
    return ("array", id(value))


class Graph:
    """A hash-consed DAG of Nodes with listed inputs and outputs, in creation (topological)
    order."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.outputs: list[Node] = []
        self._interned: dict[Any, Node] = {}

    def _add(self, key: Any, node: Node) -> Node:
        found = self._interned.get(key)
        if found is not None:
            return found
        node.id = len(self.nodes)
        self.nodes.append(node)
        self._interned[key] = node
        return node

    def input(self, meta: Meta) -> Node:
        n = Node(INPUT, (), (), meta, value=len(self.inputs))
        n.id = len(self.nodes)
        self.nodes.append(n)
        self.inputs.append(n)
        return n

    def const(self, value: Any, meta: Meta) -> Node:
        return self._add((CONST, _const_key(value), meta), Node(CONST, (), (), meta, value=value))

    def op(self, opdef: OpDef, inputs: Sequence[Any], attrs: dict[str, Any],
           meta: Any = None) -> Node:
        """The node of ``opdef`` on ``inputs`` with normalized ``attrs``; its meta from the op's
        meta rule unless given (a list of Metas for an op with several results: read them
        with ``part``)."""
        frozen = tuple(sorted((k, freeze(v)) for k, v in attrs.items()))
        key = (opdef.name, tuple(_input_key(x) for x in inputs), frozen)
        found = self._interned.get(key)
        if found is not None:
            return found
        if meta is None:
            metas = [None if x is None else tuple(e.meta for e in x) if isinstance(x, tuple)
                     else x.meta for x in inputs]
            meta = opdef.meta(*metas, **{k: thaw(v) for k, v in frozen})
        return self._add(key, Node(opdef.name, tuple(inputs), frozen, meta))

    def part(self, node: Node, index: int) -> Node:
        """Result ``index`` of multi-result node ``node``."""
        return self._add((PART, node.id, index), Node(PART, (node,), (("index", index),),
                                                      node.meta[index], value=index))

    # -- structure --------------------------------------------------------------------------
    def live(self, roots: Sequence[Node] | None = None) -> list[Node]:
        """Nodes the outputs (or ``roots``) depend on, and the inputs, in topological order,
        with ``users`` filled."""
        seen: set[int] = set()
        order: list[Node] = []

        def visit(n: Node) -> None:
            stack = [(n, False)]
            while stack:
                node, done = stack.pop()
                if done:
                    order.append(node)
                    continue
                if node.id in seen:
                    continue
                seen.add(node.id)
                stack.append((node, True))
                stack.extend((p, False) for p in reversed(node.operands()) if p.id not in seen)

        for out in self.outputs if roots is None else roots:
            visit(out)
        for n in self.inputs:
            if n.id not in seen:
                seen.add(n.id)
                order.append(n)
        order.sort(key=lambda n: n.id)
        for n in order:
            n.users = []
        for n in order:
            for p in n.operands():
                if n not in p.users:
                    p.users.append(n)
        return order

    def key(self) -> str:
        """Hash of the structure, input metas, constants and outputs."""
        h = hashlib.sha256()
        for n in self.live():
            const = _const_key(n.value) if n.op == CONST else None
            h.update(repr((n.id, n.op, [_input_key(x) for x in n.inputs], n.attrs,
                           str(n.meta), const)).encode())
        h.update(repr([o.id for o in self.outputs]).encode())
        return h.hexdigest()[:24]

    def text(self) -> str:
        """The Graph IR, one node a line: ``%3 = add(%1, %2) : float32[4, 8]``."""
        lines = [f"graph {self.name}({', '.join(f'{n.label()}: {n.meta}' for n in self.inputs)})"]
        for n in self.live():
            if n.op == INPUT:
                continue
            if n.op == CONST:
                v = n.value
                shown = repr(v) if isinstance(v, (bool, int, float)) else f"array {n.meta}"
                lines.append(f"  {n.label()} = const {shown}")
                continue
            args = ", ".join("None" if x is None else
                             "[" + ", ".join(e.label() for e in x) + "]" if isinstance(x, tuple)
                             else x.label() for x in n.inputs)
            attrs = "".join(f", {k}={v!r}" for k, v in n.attrs)
            lines.append(f"  {n.label()} = {n.op}({args}{attrs}) : {format_meta(n.meta)}")
        lines.append("  return " + ", ".join(o.label() for o in self.outputs))
        return "\n".join(lines)


def format_meta(meta: Any) -> str:
    if isinstance(meta, (list, tuple)):
        return "(" + ", ".join(str(m) for m in meta) + ")"
    return str(meta)


def rebuild(graph: Graph, replace: dict[int, Any], name: str | None = None) -> Graph:
    """A new graph equal to ``graph`` with node ``i`` replaced by ``replace[i](new_graph,
    new_inputs, mapping)`` where given; other nodes are copied onto their mapped inputs."""
    new = Graph(name or graph.name)
    for n in graph.inputs:
        new.input(n.meta)
    mapping = record_into(new, graph, replace)
    new.outputs = [mapping[o.id] for o in graph.outputs]
    return new


def record_into(target: Graph, graph: Graph, replace: dict[int, Any] | None = None
                ) -> dict[int, Node]:
    """Record ``graph``'s live nodes into ``target``, whose inputs stand for ``graph``'s (by
    position), replacing as ``rebuild`` does; returns the map from ``graph``'s node ids to
    ``target``'s nodes. A node ``target`` already holds is found, not added (hash-consing),
    so only what differs is new."""
    replace = replace or {}
    mapping: dict[int, Node] = {n.id: target.inputs[n.value] for n in graph.inputs}

    def m(x: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(mapping[e.id] for e in x)
        return mapping[x.id]

    for n in graph.live():
        if n.op == INPUT:
            continue
        if n.op == CONST:
            mapping[n.id] = target.const(n.value, n.meta)
            continue
        inputs = tuple(m(x) for x in n.inputs)
        fn = replace.get(n.id)
        if fn is not None:
            mapping[n.id] = fn(target, inputs, mapping)
        elif n.op == PART:
            mapping[n.id] = target.part(inputs[0], n.value)
        else:
            mapping[n.id] = target.op(n.opdef, inputs, n.attr, meta=n.meta)
    return mapping


def nodes_of(graph: Graph, ops: Iterable[str]) -> list[Node]:
    wanted = set(ops)
    return [n for n in graph.live() if n.op in wanted]
