"""The ``fuse_prologues`` pass: elementwise prologues into reductions and softmax.

Runs after ``fuse``. A reduction (sum, mean, max, min over trailing axes or all axes) or a
softmax/log_softmax along the last axis, whose input is a ``fused_elementwise`` node or a single
elementwise op used by it alone, becomes one ``fused_reduction`` node: the elementwise value is
computed inside the reduction's loop and never stored. ``tsol.sum(tsol.exp(x - m) * w,
axis=-1)``, ``tsol.mean(x * x, axis=-1)`` and ``tsol.softmax(x * scale + mask)`` each run as one
kernel.

Left alone: a prologue value with another user or returned by the graph (it is stored anyway,
and the reduction then reads it once), non-float values, reductions over leading or middle
axes, reductions over zero elements, and nodes with attributes beyond the ones read here.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from tsol import dtypes
from tsol.errors import TSOLError
from tsol.ops.fused_reduction import FOLDS, ROW_OPS
from tsol.registry import get_op

from .graph import Graph, Node, rebuild
from .passes import _fusible, _only_user, program_of

_ATTRS = {**{op: {"axis", "keepdims"} for op in FOLDS}, **{op: {"axis"} for op in ROW_OPS}}
"""The attributes each reduction node has, as its op normalizes them: a node with others (an
op grown a new option) is not fused rather than fused wrongly."""


def fuse_prologues(graph: Graph) -> Graph:
    """Each reduction or softmax fed by an elementwise prologue used only by it becomes one
    ``fused_reduction`` node (see the module docstring for what qualifies)."""
    live = graph.live()
    outputs = {o.id for o in graph.outputs}
    replace: dict[int, Callable[..., Node]] = {}
    for n in live:
        fn = _prologue(n, outputs)
        if fn is not None:
            replace[n.id] = fn
    return rebuild(graph, replace) if replace else graph


def _reduce_attrs(n: Node) -> dict[str, Any] | None:
    """fused_reduction's reduce/axis/keepdims for reduction node ``n``, or None."""
    if n.op not in _ATTRS or {k for k, _ in n.attrs} != _ATTRS[n.op]:
        return None
    v = n.inputs[0].meta
    nd = v.ndim
    if n.op in ROW_OPS:
        if nd == 0 or n.attr["axis"] != nd - 1 or v.size == 0:
            return None
        return {"reduce": n.op, "axis": (nd - 1,), "keepdims": False}
    axis = tuple(n.attr["axis"])
    k = len(axis)
    if (nd and not k) or axis != tuple(range(nd - k, nd)):
        return None
    if math.prod(v.shape[i] for i in axis) == 0:
        return None
    return {"reduce": n.op, "axis": axis, "keepdims": bool(n.attr["keepdims"])}


def _program(p: Any) -> tuple[Any, list[Node]] | None:
    """(program, operand nodes) of prologue node ``p``, or None when it is not one."""
    if not isinstance(p, Node) or not p.is_op:
        return None
    if p.op == "fused_elementwise":
        return p.attr["program"], list(p.inputs[0])
    if _fusible(p):
        return program_of([p])
    return None


def _prologue(n: Node, outputs: set[int]) -> Callable[..., Node] | None:
    if n.op not in _ATTRS or not n.inputs or not isinstance(n.inputs[0], Node):
        return None
    p = n.inputs[0]
    if not _only_user(p, n) or p.id in outputs or p.meta.dtype not in dtypes.FLOATS:
        return None
    attrs = _reduce_attrs(n)
    found = _program(p)
    if attrs is None or found is None:
        return None
    program, operands = found
    attrs["program"] = program
    fr = get_op("fused_reduction")
    try:            # the op's own rule has the last word (and gives the node's meta)
        meta = fr.meta(tuple(o.meta for o in operands), **attrs)
    except TSOLError:
        return None
    if meta != n.meta:
        return None

    def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node]) -> Node:
        return g.op(fr, [tuple(mapping[o.id] for o in operands)], attrs, meta=meta)
    return build


__all__ = ["fuse_prologues"]
