"""The ``fuse_prologues`` pass: elementwise prologues into reductions, softmax and norms.

Runs after ``fuse``. A reduction (sum, mean, max, min over trailing axes or all axes), a
softmax/log_softmax along the last axis or a layernorm/rmsnorm, whose input is a
``fused_elementwise`` node or a single elementwise op used by it alone, becomes one
``fused_reduction`` node: the elementwise value is computed inside the reduction's loop and
never stored. ``tsol.sum(tsol.exp(x - m) * w, axis=-1)``, ``tsol.mean(x * x, axis=-1)``,
``tsol.softmax(x * scale + mask)`` and ``tsol.layernorm(x * a + b, w, bias)`` each run as one
kernel. A norm's ``residual`` is one more prologue step (``v + residual``) and its weight and
bias are the start of the node's epilogue (``r * weight + bias``, cast to the norm's dtype), so
``fuse_epilogues`` can add the elementwise ops that consume the norm.

Left alone: a prologue value with another user or returned by the graph (it is stored anyway,
and the reduction then reads it once), non-float values, reductions over leading or middle
axes, reductions over zero elements, and nodes with attributes beyond the ones read here.
``fused_form`` gives the fused_reduction equivalent of such a node for ``fuse_epilogues`` too,
with the identity as prologue where it has none.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from tsol import dtypes
from tsol.errors import TSOLError
from tsol.ops.fused import Program, Step, with_dtypes
from tsol.ops.fused_reduction import FOLDS, NORMS, SOFTMAXES, identity_program
from tsol.registry import get_op

from .graph import Graph, Node, rebuild
from .passes import fusible, only_user, program_of

_ATTRS = {**{op: {"axis", "keepdims"} for op in FOLDS}, **{op: {"axis"} for op in SOFTMAXES},
          **{op: {"eps"} for op in NORMS}}
"""The attributes each reduction node has, as its op normalizes them: a node with others (an
op grown a new option) is not fused rather than fused wrongly."""


class FusedForm(NamedTuple):
    """A fused_reduction node to be: its operand nodes, its epilogue's extras and its
    attributes (normalized by the op), and its meta."""

    arrays: list[Node]
    extras: list[Node]
    attrs: dict[str, Any]
    meta: Any

    def build(self, g: Graph, mapping: dict[int, Node]) -> Node:
        """The node in the graph being rebuilt (``mapping``: old node ids to new nodes)."""
        extras = tuple(mapping[o.id] for o in self.extras) or None
        return g.op(get_op("fused_reduction"), [tuple(mapping[o.id] for o in self.arrays),
                                                extras], self.attrs, meta=self.meta)


def fuse_prologues(graph: Graph) -> Graph:
    """Each reduction, softmax or norm fed by an elementwise prologue used only by it becomes
    one ``fused_reduction`` node (see the module docstring for what qualifies)."""
    live = graph.live()
    outputs = {o.id for o in graph.outputs}
    replace: dict[int, Callable[..., Node]] = {}
    for n in live:
        form = fused_form(n, outputs, prologue_only=True)
        if form is not None:
            replace[n.id] = lambda g, inputs, mapping, form=form: form.build(g, mapping)
    return rebuild(graph, replace) if replace else graph


def fused_form(n: Node, outputs: set[int], *, prologue_only: bool = False) -> FusedForm | None:
    """The fused_reduction computing reduction node ``n`` (its prologue folded in when it has
    one used by it alone; else, unless ``prologue_only``, the identity), or None when ``n``
    does not qualify or the op's rule refuses it."""
    if n.op not in _ATTRS or {k for k, _ in n.attrs} != _ATTRS[n.op]:
        return None
    named = dict(zip(n.opdef.inputs, n.inputs))
    x = named["x"] if n.op in NORMS else n.inputs[0]
    if not isinstance(x, Node) or x.meta.weak or x.meta.dtype not in dtypes.FLOATS:
        return None
    found = _prologue(x, n, outputs)
    if found is None:
        if prologue_only:
            return None
        found = identity_program(x.meta.dtype), [x]
    program, arrays = found
    attrs = _reduce_attrs(n, x)
    if attrs is None:
        return None
    epilogue, extras = None, []
    if n.op in NORMS:
        program, arrays, epilogue, extras = _norm_parts(n, named, program, arrays)
    fr = get_op("fused_reduction")
    metas = (tuple(o.meta for o in arrays), tuple(o.meta for o in extras))
    try:            # the op's own rule has the last word (and gives the node's meta)
        attrs = fr.normalize(metas, program=program, epilogue=epilogue, **attrs)
        meta = fr.meta(*metas, **attrs)
    except TSOLError:
        return None
    if meta != n.meta:
        return None
    return FusedForm(arrays, extras, attrs, meta)


def _prologue(x: Node, n: Node, outputs: set[int]) -> tuple[Program, list[Node]] | None:
    """(program, operand nodes) of the elementwise node ``x`` feeding only ``n``, or None."""
    if not x.is_op or not only_user(x, n) or x.id in outputs:
        return None
    if x.op == "fused_elementwise":
        return x.attr["program"], list(x.inputs[0])
    if fusible(x):
        return program_of([x])
    return None


def _reduce_attrs(n: Node, x: Node) -> dict[str, Any] | None:
    """fused_reduction's reduce/axis/keepdims/eps for node ``n`` of input ``x``, or None."""
    v = x.meta
    nd = v.ndim
    if n.op in NORMS:
        return {"reduce": n.op, "axis": -1, "eps": n.attr["eps"]} if nd and v.size else None
    if n.op in SOFTMAXES:
        if nd == 0 or n.attr["axis"] != nd - 1 or v.size == 0:
            return None
        return {"reduce": n.op, "axis": (nd - 1,)}
    axis = tuple(n.attr["axis"])
    k = len(axis)
    if (nd and not k) or axis != tuple(range(nd - k, nd)):
        return None
    if math.prod(v.shape[i] for i in axis) == 0:
        return None
    return {"reduce": n.op, "axis": axis, "keepdims": bool(n.attr["keepdims"])}


def _norm_parts(n: Node, named: dict[str, Any], program: Program, arrays: list[Node]
                ) -> tuple[Program, list[Node], Program | None, list[Node]]:
    """A norm's residual as a last prologue step, its weight and bias as an epilogue."""
    arrays = list(arrays)
    residual = named.get("residual")
    if residual is not None:
        if residual not in arrays:
            arrays.append(residual)
        add = Step("add", (("step", program.output), ("in", arrays.index(residual))))
        program = with_dtypes(Program(program.steps + (add,), len(program.steps)),
                              [o.meta.dtype for o in arrays])
    extras = [p for p in (named.get("gamma"), named.get("beta")) if p is not None]
    if not extras:
        return program, arrays, None, []
    steps: list[Step] = []
    value: tuple[str, int] = ("in", 0)
    for op, k in (("multiply", named.get("gamma")), ("add", named.get("beta"))):
        if k is not None:
            steps.append(Step(op, (value, ("in", 1 + extras.index(k)))))
            value = ("step", len(steps) - 1)
    epilogue = with_dtypes(Program(tuple(steps), len(steps) - 1),
                           [n.meta.dtype] + [p.meta.dtype for p in extras])
    if epilogue.steps[-1].dtype != n.meta.dtype.name:      # float32 weights of a bf16 norm
        cast = Step("astype", (value,), (("dtype", n.meta.dtype.name),), n.meta.dtype.name)
        epilogue = Program(epilogue.steps + (cast,), len(epilogue.steps))
    return program, arrays, epilogue, extras


__all__ = ["fuse_prologues", "fused_form", "FusedForm"]
