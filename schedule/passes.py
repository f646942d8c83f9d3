"""Graph passes: small named functions from Graph to Graph, run in the order of ``PASSES``.

- ``canonicalize``: fold last-two-axes transposes into gemm's ``trans_a``/``trans_b`` flags,
  drop no-ops (identity casts, reshapes and transposes; ``x * 1``, ``x + 0``), fold chains of
  scalar constants (``(x * a) * b`` -> ``x * (a * b)``).
- ``rewrite``: ``softmax(Q K^T * scale [+ mask]) V`` -> ``flash_attention`` (with the mask);
  ``act(x @ W + b) + r`` -> matmul/gemm with that epilogue; ``norm(x + r)`` -> the norm with
  ``residual=r``.
- ``fuse``: connected elementwise ops (with broadcasting) -> one ``fused_elementwise`` node.
- ``fuse_prologues``: an elementwise node feeding only a reduction (sum, mean, max, min over
  trailing axes), a softmax/log_softmax or a layernorm/rmsnorm -> one ``fused_reduction`` node
  (``prologue.py``).
- ``fuse_epilogues``: an elementwise node reading a reduction's, softmax's or norm's result
  used by it alone (other operands broadcast to that result) -> that ``fused_reduction``'s
  epilogue (``epilogue.py``).

Buffer planning runs when the graph is lowered (``schedule.lower``), where sizes are known.
A pass never changes what the graph computes; each rewrite checks that the node it replaces
has no other users that would still need the intermediate.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tsol import dtypes
from tsol.ops.base import Meta
from tsol.registry import get_op

from .graph import CONST, Graph, Node, rebuild

ELEMENTWISE = "elementwise"
ACTIVATIONS = {"relu": "relu", "silu": "silu"}
"""Elementwise ops (without attributes) a matmul epilogue can apply, by epilogue name."""


def only_user(n: Node, user: Node) -> bool:
    """True when ``user`` is the one node that reads ``n`` (never for a constant: it is no
    intermediate that fusing would save)."""
    return all(u is user for u in n.users) and n.op != CONST


def _scalar(n: Any) -> Any:
    """The Python value of a scalar constant node, else None."""
    if isinstance(n, Node) and n.op == CONST and isinstance(n.value, (bool, int, float)):
        return n.value
    return None


def _swaps_last_two(n: Node) -> bool:
    if n.op != "transpose" or n.meta.ndim < 2:
        return False
    axes = tuple(n.attr["axes"])
    k = len(axes)
    return axes == tuple(range(k - 2)) + (k - 1, k - 2)


def _product_inputs(n: Node) -> dict[str, Any]:
    """A matmul or gemm node's inputs by name."""
    return dict(zip(n.opdef.inputs, n.inputs))


def _as_gemm(g: Graph, n: Node, inputs: dict[str, Any], **attrs: Any) -> Node:
    """A gemm node computing what matmul/gemm node ``n`` does, with ``attrs`` changed."""
    base = dict(n.attr) if n.op == "gemm" else {
        "alpha": 1.0, "beta": 0.0, "trans_a": False, "trans_b": False,
        "epilogue": n.attr["epilogue"], "tile_shape": n.attr["tile_shape"]}
    base.update(attrs)
    gemm = get_op("gemm")
    args = [inputs.get(name) for name in gemm.inputs]
    return g.op(gemm, args, base)


# --- canonicalize ---------------------------------------------------------------------------------

def canonicalize(graph: Graph) -> Graph:
    """Fold transposes into gemm flags, drop no-ops, fold scalar constant chains."""
    graph.live()
    replace: dict[int, Callable[..., Node]] = {}
    for n in graph.live():
        fn = _fold_transpose(n) or _drop_noop(n) or _fold_scalars(n)
        if fn is not None:
            replace[n.id] = fn
    return rebuild(graph, replace) if replace else graph


def _fold_transpose(n: Node) -> Any:
    if n.op not in ("matmul", "gemm"):
        return None
    ins = _product_inputs(n)
    a, b = ins["a"], ins["b"]
    fold_a = a.meta.ndim >= 2 and b.meta.ndim >= 2 and _swaps_last_two(a)
    fold_b = a.meta.ndim >= 2 and b.meta.ndim >= 2 and _swaps_last_two(b)
    if not (fold_a or fold_b):
        return None
    attrs = n.attr if n.op == "gemm" else {"trans_a": False, "trans_b": False}

    def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node]) -> Node:
        named = dict(zip(n.opdef.inputs, inputs))
        flags = {}
        for side, fold in (("a", fold_a), ("b", fold_b)):
            if fold:
                named[side] = mapping[ins[side].inputs[0].id]
                flags[f"trans_{side}"] = not attrs[f"trans_{side}"]
        return _as_gemm(g, n, named, **flags)
    return build


def _drop_noop(n: Node) -> Any:
    src = None
    if n.op == "astype" and n.inputs[0].meta == n.meta:
        src = n.inputs[0]
    elif n.op == "reshape" and n.inputs[0].meta.shape == n.meta.shape:
        src = n.inputs[0]
    elif n.op == "transpose" and tuple(n.attr["axes"]) == tuple(range(n.meta.ndim)):
        src = n.inputs[0]
    elif n.op in ("multiply", "add", "subtract", "divide"):
        unit = 0 if n.op in ("add", "subtract") else 1
        x, c = n.inputs
        if _scalar(c) is not None and _scalar(c) == unit and x.meta == n.meta:
            src = x
        elif n.op in ("add", "multiply") and _scalar(x) is not None and _scalar(x) == unit \
                and c.meta == n.meta:
            src = c
    if src is None:
        return None
    return lambda g, inputs, mapping: mapping[src.id]


def _fold_scalars(n: Node) -> Any:
    """``(x * a) * b`` -> ``x * (a * b)`` and ``(x + a) + b`` -> ``x + (a + b)`` for Python
    scalars a, b (exact for integers; for floats the product is rounded once instead of
    twice, within every dtype's tolerance)."""
    if n.op not in ("multiply", "add"):
        return None
    inner, b = n.inputs
    if _scalar(b) is None:
        inner, b = b, inner
    if _scalar(b) is None or not isinstance(inner, Node) or inner.op != n.op \
            or not only_user(inner, n):
        return None
    x, a = inner.inputs
    if _scalar(a) is None:
        x, a = a, x
    if _scalar(a) is None or type(_scalar(a)) is not type(_scalar(b)):
        return None
    value = _scalar(a) * _scalar(b) if n.op == "multiply" else _scalar(a) + _scalar(b)

    def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node]) -> Node:
        c = g.const(value, Meta((), np.result_type(value), weak=True))
        return g.op(n.opdef, [mapping[x.id], c], n.attr)
    return build


# --- rewrite --------------------------------------------------------------------------------------

def rewrite(graph: Graph) -> Graph:
    """Pattern rewrites to fused kernels; repeated until nothing matches (each one removes a
    node, so this ends)."""
    for _ in range(64):
        graph.live()
        replace: dict[int, Callable[..., Node]] = {}
        for n in graph.live():
            if any(p.id in replace for p in n.operands()):
                continue            # one rewrite per neighbourhood per round
            fn = attention_rewrite(n) or _epilogue(n) or _residual_norm(n)
            if fn is not None:
                replace[n.id] = fn
        if not replace:
            return graph
        graph = rebuild(graph, replace)
    return graph


def _plain_product(n: Any) -> bool:
    """A matmul, or a gemm with alpha 1 and no c: its epilogue may still grow."""
    if not isinstance(n, Node) or n.op not in ("matmul", "gemm"):
        return False
    return n.op == "matmul" or (n.attr["alpha"] == 1.0 and _product_inputs(n)["c"] is None)


def _epilogue(n: Node) -> Any:
    """``act(P)``, ``P + bias`` (before the activation) or ``P + residual`` (after) for a
    matmul/gemm P used only here, into P's epilogue."""
    if n.op in ACTIVATIONS or (n.op == "gelu"):
        p = n.inputs[0]
        if not (_plain_product(p) and only_user(p, n)):
            return None
        ins = _product_inputs(p)
        if p.attr["epilogue"] != "none" or ins["residual"] is not None:
            return None
        act = ACTIVATIONS.get(n.op) or ("gelu" if n.attr["approximate"] == "none"
                                        else "gelu_tanh")
        return _product_with(p, epilogue=act)
    if n.op != "add":
        return None
    for p, other in (n.inputs, n.inputs[::-1]):
        if not (_plain_product(p) and only_user(p, n)) or _scalar(other) is not None:
            continue
        if other.meta.dtype.kind != "f" or n.meta != p.meta:
            continue
        ins = _product_inputs(p)
        if ins["residual"] is not None:
            continue
        slot = "bias" if ins["bias"] is None and p.attr["epilogue"] == "none" else "residual"
        return _product_with(p, **{slot: other})
    return None


def _product_with(p: Node, **changes: Any) -> Callable[..., Node]:
    """A builder of product node ``p`` with attrs and inputs changed (inputs given as Nodes of
    the old graph)."""
    def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node]) -> Node:
        named = dict(zip(p.opdef.inputs, (mapping.get(x.id) if isinstance(x, Node) else x
                                          for x in p.inputs)))
        attrs = dict(p.attr)
        for k, v in changes.items():
            if isinstance(v, Node):
                named[k] = mapping[v.id]
            else:
                attrs[k] = v
        return g.op(p.opdef, [named[name] for name in p.opdef.inputs], attrs)
    return build


def _scores(n: Any) -> tuple[Node, Node, float] | None:
    """(q, k, scale) of ``q @ k^T`` or ``(q @ k^T) * scale`` as canonicalized (a gemm with
    trans_b), else None."""
    scale = 1.0
    if isinstance(n, Node) and n.op in ("multiply", "divide"):
        x, c = n.inputs
        if _scalar(c) is None and n.op == "multiply":
            x, c = c, x
        value = _scalar(c)
        if value is None or isinstance(value, bool) or not only_user(x, n):
            return None
        scale = float(value) if n.op == "multiply" else 1.0 / float(value)
        n = x
    if not isinstance(n, Node) or n.op != "gemm":
        return None
    ins = _product_inputs(n)
    a = n.attr
    if not (a["trans_b"] and not a["trans_a"] and a["alpha"] == 1.0 and a["epilogue"] == "none"
            and ins["c"] is None and ins["bias"] is None and ins["residual"] is None):
        return None
    return ins["a"], ins["b"], scale


def _causal_mask(n: Any, s: int, skv: int) -> bool:
    """Whether ``n`` is a constant additive causal mask of [s, skv] scores (leading dims of 1):
    0 where key ``j <= i + (skv - s)``, ``-inf`` elsewhere (flash_attention's bottom-right
    alignment). Rows that keep no key (s > skv) give zeros either way, as a general mask's."""
    if not (isinstance(n, Node) and n.op == CONST and hasattr(n.value, "shape")):
        return False
    m = n.value
    if m.ndim < 2 or tuple(m.shape[-2:]) != (s, skv) or any(d != 1 for d in m.shape[:-2]):
        return False
    host = np.asarray(m.get() if hasattr(m, "get") else m).reshape(s, skv)
    keep = np.arange(skv)[None, :] <= np.arange(s)[:, None] + (skv - s)
    return bool(np.all(host[keep] == 0) and np.all(np.isneginf(host[~keep])))


def _masked_scores(x: Any, user: Node) -> tuple[Any, Any] | None:
    """(scores, mask) of ``scores + mask`` (either order) read by ``user`` alone, the mask a
    float array that broadcasts into the scores' shape; else None."""
    if not (isinstance(x, Node) and x.op == "add" and only_user(x, user)):
        return None
    for scores, mask in (x.inputs, x.inputs[::-1]):
        if isinstance(scores, Node) and scores.meta.shape == x.meta.shape and \
                isinstance(mask, Node) and mask is not scores and _scalar(mask) is None and \
                dtypes.is_float(mask.meta.dtype) and _scores(scores) is not None:
            return scores, mask
    return None


def attention_rewrite(n: Node) -> Any:
    """``softmax(q @ k^T * scale [+ mask], axis=-1) @ v`` on 4-d [B, H, S, D] operands of one
    float dtype -> ``flash_attention(q, k, v, mask, scale=scale, causal=...)``: the rewrite's
    builder, or None when ``n`` is not that pattern (``autodiff`` applies it to forwards it
    differentiates). Any additive float mask that broadcasts into the scores fuses; a constant
    equal to the causal mask (``_causal_mask``) becomes ``causal=True`` instead, which skips
    the tiles above the diagonal. One difference: a query whose every key is masked gives
    zeros fused (flash_attention's rule) where the unfused softmax gives NaN (0 / 0)."""
    if n.op != "matmul":
        return None
    ins = _product_inputs(n)
    sm, v = ins["a"], ins["b"]
    if n.attr["epilogue"] != "none" or ins["bias"] is not None or ins["residual"] is not None:
        return None
    if not (isinstance(sm, Node) and sm.op == "softmax" and only_user(sm, n)
            and sm.attr["axis"] == sm.meta.ndim - 1):
        return None
    x, user, mask, causal = sm.inputs[0], sm, None, False
    if isinstance(x, Node) and x.op == "add":
        found = _masked_scores(x, sm)
        if found is None:
            return None
        s_, skv = x.meta.shape[-2:] if x.meta.ndim >= 2 else (0, 0)
        (x, mask), user = found, x
        if _causal_mask(mask, s_, skv):
            mask, causal = None, True
    found = _scores(x)
    if found is None or not only_user(x, user):
        return None
    q, k, scale = found
    if not all(m.ndim == 4 for m in (q.meta, k.meta, v.meta)) or \
            not q.meta.dtype == k.meta.dtype == v.meta.dtype == n.meta.dtype:
        return None
    if q.meta.shape[:2] != k.meta.shape[:2] or k.meta.shape[:3] != v.meta.shape[:3]:
        return None
    fa = get_op("flash_attention")

    def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node]) -> Node:
        attrs = {"causal": causal, "scale": scale, "block_q": None, "block_k": None}
        operands = [mapping[q.id], mapping[k.id], mapping[v.id],
                    None if mask is None else mapping[mask.id]]
        return g.op(fa, operands, attrs)
    return build


def _residual_norm(n: Node) -> Any:
    """``layernorm(x + r)`` / ``rmsnorm(x + r)`` with x, r of the sum's shape -> the norm with
    ``residual=r`` (the sum is never stored)."""
    if n.op not in ("layernorm", "rmsnorm") or "residual" not in n.opdef.inputs:
        return None
    named = dict(zip(n.opdef.inputs, n.inputs))
    s = named["x"]
    if named["residual"] is not None or not (isinstance(s, Node) and s.op == "add"
                                             and only_user(s, n)):
        return None
    x, r = s.inputs
    if _scalar(x) is not None or _scalar(r) is not None or \
            not x.meta.shape == r.meta.shape == s.meta.shape:
        return None

    def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node]) -> Node:
        args = dict(zip(n.opdef.inputs, inputs))
        args["x"], args["residual"] = mapping[x.id], mapping[r.id]
        return g.op(n.opdef, [args[name] for name in n.opdef.inputs], n.attr)
    return build


# --- fuse -----------------------------------------------------------------------------------------

def fusible(n: Node) -> bool:
    """True for an elementwise op node of one result with every input given."""
    return (n.is_op and n.opdef.family == ELEMENTWISE and not isinstance(n.meta, list)
            and all(x is not None for x in n.inputs))


def elementwise_groups(graph: Graph) -> list[list[Node]]:
    """Groups of connected elementwise nodes, each in topological order, with one output (its
    last node): a producer joins its consumers' group when every user of it is in that group
    and its shape is the group's. Visiting consumers first makes groups maximal."""
    live = graph.live()
    outputs = {o.id for o in graph.outputs}
    group_of: dict[int, int] = {}
    groups: list[list[Node]] = []
    for n in reversed(live):
        if not fusible(n):
            continue
        owners = {group_of.get(u.id, -1) for u in n.users}
        g = owners.pop() if len(owners) == 1 else -1
        if g >= 0 and n.id not in outputs and n.meta.shape == groups[g][0].meta.shape:
            groups[g].append(n)
            group_of[n.id] = g
        else:
            group_of[n.id] = len(groups)
            groups.append([n])
    return [sorted(gr, key=lambda x: x.id) for gr in groups]


def program_of(nodes: list[Node]) -> tuple[Any, list[Node]]:
    """The fused program of a group and its operand nodes (in first-use order)."""
    from tsol.ops.fused import Program, Step
    index = {n.id: i for i, n in enumerate(nodes)}
    operands: list[Node] = []
    steps = []
    for n in nodes:
        args: list[tuple[str, Any]] = []
        for x in n.inputs:
            if x.id in index:
                args.append(("step", index[x.id]))
            elif _scalar(x) is not None:
                args.append(("const", _scalar(x)))
            else:
                if x not in operands:
                    operands.append(x)
                args.append(("in", operands.index(x)))
        attrs = tuple((k, _dtype_name(v) if isinstance(v, np.dtype) else v) for k, v in n.attrs)
        steps.append(Step(n.op, tuple(args), attrs, _dtype_name(n.meta.dtype)))
    return Program(tuple(steps), len(steps) - 1), operands


def _dtype_name(dt: np.dtype) -> str:
    return np.dtype(dt).name


def fuse(graph: Graph) -> Graph:
    """Each elementwise group of two or more nodes becomes one ``fused_elementwise`` node."""
    fused = get_op("fused_elementwise")
    replace: dict[int, Callable[..., Node]] = {}
    for group in elementwise_groups(graph):
        if len(group) < 2:
            continue
        program, operands = program_of(group)
        last = group[-1]

        def build(g: Graph, inputs: tuple[Any, ...], mapping: dict[int, Node],
                  program: Any = program, operands: list[Node] = operands,
                  last: Node = last) -> Node:
            return g.op(fused, [tuple(mapping[o.id] for o in operands)], {"program": program},
                        meta=last.meta)
        replace[last.id] = build
    return rebuild(graph, replace) if replace else graph


from .epilogue import fuse_epilogues  # noqa: E402 - these build on the helpers above
from .prologue import fuse_prologues  # noqa: E402

PASSES: list[tuple[str, Callable[[Graph], Graph]]] = [
    ("canonicalize", canonicalize),
    ("rewrite", rewrite),
    ("fuse", fuse),
    ("fuse_prologues", fuse_prologues),
    ("fuse_epilogues", fuse_epilogues),
]
"""The pass pipeline, in order. ``run_passes`` applies it; ``explain`` names each step."""


def run_passes(graph: Graph, passes: list[tuple[str, Callable[[Graph], Graph]]] | None = None
               ) -> Graph:
    for _, fn in passes or PASSES:
        graph = fn(graph)
    graph.live()
    return graph
