"""The ``fuse_epilogues`` pass: elementwise epilogues into reductions, softmax and norms.

Runs after ``fuse_prologues``. An elementwise node (a ``fused_elementwise`` node or a single
elementwise op) that reads the result ``r`` of a reduction, softmax/log_softmax or norm used by
it alone, and whose own shape is ``r``'s (so that its other operands broadcast to ``r``), joins
that reduction: the node becomes one ``fused_reduction`` whose epilogue ends with the
elementwise program, applied to each result element as it is written, its other operands
becoming the epilogue's extras. The reduction may already be a ``fused_reduction`` (with a
prologue, or a norm's weight and bias as its epilogue) or a plain op, which then gets the
identity as prologue (``prologue.fused_form``). ``tsol.softmax(x) * w``,
``tsol.exp(tsol.sum(x * x, axis=-1) * 0.5)`` and ``tsol.gelu(tsol.rmsnorm(x, w))`` each run as
one kernel.

Left alone: a result with another user or returned by the graph (it is stored anyway), an
elementwise node larger than the result (``x - tsol.max(x, axis=-1, keepdims=True)`` is a
prologue of what follows, not an epilogue), and whatever ``fused_form`` or the op's rule
refuses. One pass fuses one consumer into each reduction; ``fuse`` has already made each
chain of elementwise ops one node.
"""

from __future__ import annotations

from typing import Any, Callable

from tsol.errors import TSOLError
from tsol.ops.fused import Program, Step
from tsol.registry import get_op

from .graph import Graph, Node, rebuild
from .passes import fusible, only_user, program_of
from .prologue import FusedForm, fused_form


def fuse_epilogues(graph: Graph) -> Graph:
    """Each elementwise node reading a reduction's result used by it alone becomes one
    ``fused_reduction`` node with that reduction (see the module docstring)."""
    live = graph.live()
    outputs = {o.id for o in graph.outputs}
    replace: dict[int, Callable[..., Node]] = {}
    for c in live:
        form = _joined(c, outputs)
        if form is not None:
            replace[c.id] = lambda g, inputs, mapping, form=form: form.build(g, mapping)
    return rebuild(graph, replace) if replace else graph


def _consumer(c: Node) -> tuple[Program, list[Node]] | None:
    """(program, operand nodes) of elementwise node ``c``, or None."""
    if c.op == "fused_elementwise":
        return c.attr["program"], list(c.inputs[0])
    if fusible(c):
        return program_of([c])
    return None


def _form_of(r: Node, c: Node, outputs: set[int]) -> FusedForm | None:
    """The fused_reduction form of operand ``r`` of ``c`` when its result may join ``c``."""
    if not r.is_op or r.id in outputs or not only_user(r, c) or r.meta.shape != c.meta.shape:
        return None
    if r.op == "fused_reduction":
        return FusedForm(list(r.inputs[0]), list(r.inputs[1] or ()), r.attr, r.meta)
    return fused_form(r, outputs)


def _joined(c: Node, outputs: set[int]) -> FusedForm | None:
    found = _consumer(c)
    if found is None:
        return None
    program, operands = found
    for r in operands:
        form = _form_of(r, c, outputs)
        if form is None:
            continue
        epilogue, extras = _compose(form, r, program, operands)
        fr = get_op("fused_reduction")
        attrs = dict(form.attrs, epilogue=epilogue)
        metas = (tuple(o.meta for o in form.arrays), tuple(o.meta for o in extras))
        try:        # the op's own rule has the last word (and gives the node's meta)
            attrs = fr.normalize(metas, **attrs)
            meta = fr.meta(*metas, **attrs)
        except TSOLError:
            continue
        if meta == c.meta:
            return FusedForm(form.arrays, extras, attrs, meta)
    return None


def _compose(form: FusedForm, r: Node, program: Program, operands: list[Node]
             ) -> tuple[Program, list[Node]]:
    """``form``'s epilogue followed by ``program`` (over ``operands``, ``r`` among them), and
    the extras of the two: ``r`` reads as the result so far."""
    base = form.attrs.get("epilogue")
    steps = list(base.steps) if base is not None else []
    extras = list(form.extras)
    result = ("step", base.output) if base is not None else ("in", 0)
    offset = len(steps)

    def ref(arg: tuple[str, Any]) -> tuple[str, Any]:
        kind, v = arg
        if kind == "step":
            return ("step", v + offset)
        if kind != "in":
            return arg
        o = operands[v]
        if o is r:
            return result
        if o not in extras:
            extras.append(o)
        return ("in", 1 + extras.index(o))
    steps += [Step(s.op, tuple(ref(a) for a in s.args), s.attrs, s.dtype) for s in program.steps]
    return Program(tuple(steps), offset + program.output), extras


__all__ = ["fuse_epilogues"]
