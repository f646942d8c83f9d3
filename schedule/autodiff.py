"""Reverse mode through the captured graph: ``tsol.grad``, ``tsol.value_and_grad``, ``tsol.vjp``.

The function is traced as any compiled function is; then, still while tracing, each op's VJP
rule (written in TSOL ops) is called on the traced primals in reverse topological order, so
the backward pass is recorded into the same Graph IR. Forward and backward then go through
the same passes (fusion of backward elementwise chains, epilogue rewrites) and run as one
schedule. Cotangents of a value used several times are summed; an input the output does not
depend on gets zeros. The cotangents of a multi-result op's parts (``split``'s pieces) reach its
VJP rule as one list, None for a part the output does not depend on.

Attention is rewritten before it is differentiated: each ``softmax(Q K^T * scale) V`` block of
the forward becomes one ``flash_attention`` node (the ``rewrite`` pass's own pattern, matched on
the canonicalized forward), so the forward runs the flash-attention kernel and never stores the
score matrix, and the backward takes flash_attention's VJP rule, which recomputes the
probabilities from Q and K. Done after differentiating, the rewrite could not fire: the
backward of the unfused form reads the softmax output, so it would have to stay.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tsol
from tsol.errors import ArgumentError, DTypeError
from tsol.ops.base import Meta

from . import passes
from .capture import Tracer
from .compiled import Compiled
from .graph import CONST, PART, Graph, Node, record_into


def backprop(g: Graph, out: Node, seed: Tracer) -> dict[int, Any]:
    """Cotangent Tracers of every node ``out`` depends on, seeded with ``seed`` at ``out``."""
    ct: dict[int, Any] = {out.id: seed}
    for n in reversed(g.live([out])):
        if n.op == PART and n.id in ct:      # every user of the part is done: pass it on
            multi = n.producer
            ct.setdefault(multi.id, [None] * len(multi.meta))[n.value] = ct[n.id]
            continue
        if not n.is_op or n.id not in ct or not n.opdef.differentiable:
            continue
        primals = [None if x is None else tuple(Tracer(g, e) for e in x)
                   if isinstance(x, tuple) else Tracer(g, x) for x in n.inputs]
        result = [Tracer(g, g.part(n, i)) for i in range(len(n.meta))] \
            if isinstance(n.meta, list) else Tracer(g, n)
        grads = n.opdef.vjp(ct[n.id], *primals, out=result, **n.attr)
        for x, gx in zip(n.inputs, grads):
            if x is None or gx is None:
                continue
            pairs = zip(x, gx) if isinstance(x, tuple) else ((x, gx),)
            for node, grad in pairs:
                if grad is None or node.op == CONST:
                    continue
                ct[node.id] = grad if node.id not in ct else tsol.add(ct[node.id], grad)
    return ct


def fuse_attention(g: Graph, out: Tracer) -> Tracer:
    """``out`` recorded again into ``g`` with each attention block of the forward that computes
    it as one ``flash_attention`` node (see the module docstring); ``out`` itself when there is
    none. The forward is canonicalized first, as the rewrite pass expects (transposes folded
    into gemm flags), so the backward then reads gemm's VJP rule where the forward had
    ``q @ k.T``."""
    g.outputs = [out.node]
    forward = passes.canonicalize(g)
    replace = {}
    for n in forward.live():
        build = passes.attention_rewrite(n)
        if build is not None:
            replace[n.id] = build
    if not replace:
        return out
    mapping = record_into(g, forward, replace)
    return Tracer(g, mapping[forward.outputs[0].id])


def _zeros_like(x: Tracer) -> Any:
    """Zeros of x's shape and dtype, without reading x's values (NaN < NaN is False)."""
    return tsol.astype(tsol.less(x, x), x.dtype)


def _argnums(argnums: int | Sequence[int], name: str) -> tuple[tuple[int, ...], bool]:
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    if not nums or not all(isinstance(i, int) and i >= 0 for i in nums):
        raise ArgumentError(f"tsol.{name}: argnums must be a non-negative int or a tuple of "
                            f"them, got {argnums!r}. Fix: argnums=0 or argnums=(0, 1).")
    return nums, single


class _Differentiated:
    """``f``'s value and cotangents, compiled per signature: forward and backward in one
    schedule. The compiled function takes f's arguments and the output cotangent last."""

    def __init__(self, f: Callable[..., Any], argnums: int | Sequence[int], name: str,
                 scalar_output: bool) -> None:
        self.f = f
        self.nums, self.single = _argnums(argnums, name)
        self.name = name
        self.scalar_output = scalar_output
        self.compiled = Compiled(self._forward_backward, getattr(f, "__name__", name))

    def _forward_backward(self, *args: Any) -> Any:
        *primal, seed = args
        out = self.f(*primal)
        fname = getattr(self.f, "__name__", "f")
        if not isinstance(out, Tracer):
            raise ArgumentError(f"tsol.{self.name}: {fname} must return one array computed "
                                f"from its arguments, got {type(out).__name__}. Fix: return a "
                                "TSOL op's result.")
        if self.scalar_output and out.shape != ():
            raise ArgumentError(f"tsol.{self.name}: {fname} returns shape {out.shape}; grad "
                                "needs a scalar (0-d) output. Fix: reduce it (tsol.sum / "
                                "tsol.mean) or use tsol.vjp with a cotangent.")
        if out.dtype.kind != "f":
            raise DTypeError(f"tsol.{self.name}: {fname} returns {out.dtype}; gradients need "
                             "a float output. Fix: compute the loss in a float dtype.")
        for i in self.nums:
            if i >= len(primal) or not isinstance(primal[i], Tracer):
                raise ArgumentError(f"tsol.{self.name}: argnums {i} is not an array argument "
                                    f"of {fname}. Fix: differentiate with respect to array "
                                    "arguments only.")
        g = out.graph
        out = fuse_attention(g, out)
        if seed is None:
            seed = Tracer(g, g.input(Meta(out.shape, out.dtype)))
        ct = backprop(g, out.node, seed)
        grads = tuple(_zeros_like(primal[i]) if ct.get(primal[i].node.id) is None
                      else ct[primal[i].node.id] for i in self.nums)
        return (out, *grads)

    def run(self, args: Sequence[Any], seed: Any) -> tuple[Any, Any]:
        """(f's value, cotangents for argnums) at ``args`` with output cotangent ``seed``
        (None: ones of the output, for grad)."""
        full = (*args, seed)
        ex = self.compiled.executable(*full)
        b = ex.schedule.backend
        arrays = [b.adopt(a) for a in full if hasattr(a, "shape")]
        if seed is None:
            seed_meta = ex.captured.inputs[-1].meta
            arrays.append(b.array_module().ones(seed_meta.shape, seed_meta.dtype))
        value, *grads = ex(arrays)
        like = next((a for a in args if hasattr(a, "shape") and b.adopt(a) is not a), None)
        if like is not None:
            value, grads = b.export(value, like), [b.export(x, like) for x in grads]
        return value, (grads[0] if self.single else tuple(grads))

    def explain(self, *args: Any) -> str:
        return self.compiled.explain(*args, None) if args else self.compiled.explain()


def grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The gradient of scalar-valued ``f`` with respect to argument(s) ``argnums``.

    ``f`` is captured and compiled per input signature together with its backward graph,
    built from each op's VJP rule; both run through the same fusion passes. Returns one array
    for an int ``argnums``, a tuple for a tuple. Raises ArgumentError when f's output is not
    0-d or an argnum is not an array argument, DTypeError for a non-float output.

    >>> import numpy as np, tsol
    >>> df = tsol.grad(lambda x: tsol.sum(x * x))
    >>> df(np.array([1.0, 2.0], np.float32))
    array([2., 4.], dtype=float32)
    """
    d = _Differentiated(f, argnums, "grad", scalar_output=True)

    def gradient(*args: Any) -> Any:
        return d.run(args, None)[1]
    gradient.explain = d.explain  # type: ignore[attr-defined]
    return gradient


def value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0
                   ) -> Callable[..., Any]:
    """Like ``grad``, returning ``(f(*args), gradient)`` from one compiled schedule.

    >>> import numpy as np, tsol
    >>> v, g = tsol.value_and_grad(lambda x: tsol.sum(x * x))(np.ones(2, np.float32))
    >>> float(v), g
    (2.0, array([2., 2.], dtype=float32))
    """
    d = _Differentiated(f, argnums, "value_and_grad", scalar_output=True)

    def both(*args: Any) -> Any:
        return d.run(args, None)
    both.explain = d.explain  # type: ignore[attr-defined]
    return both


def vjp(f: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``(f(*primals), vjp_fn)``: ``vjp_fn(cotangent)`` returns the cotangents of every
    primal (a tuple), for an ``f`` with one array output of any shape.

    >>> import numpy as np, tsol
    >>> y, back = tsol.vjp(tsol.exp, np.zeros(2, np.float32))
    >>> back(np.ones(2, np.float32))
    (array([1., 1.], dtype=float32),)
    """
    nums = tuple(range(len(primals)))
    d = _Differentiated(f, nums, "vjp", scalar_output=False)
    value = Compiled(f, getattr(f, "__name__", "f"))(*primals)

    def back(cotangent: Any) -> tuple[Any, ...]:
        if not hasattr(cotangent, "shape") or tuple(cotangent.shape) != tuple(value.shape):
            raise ArgumentError(f"tsol.vjp: the cotangent must be an array of the output's "
                                f"shape {tuple(value.shape)}, got "
                                f"{getattr(cotangent, 'shape', type(cotangent).__name__)}. "
                                "Fix: pass an array like the output.")
        return d.run(primals, cotangent)[1]
    return value, back
