"""The Schedule IR: a Graph lowered to launches with chosen kernels, configs and buffers.

``lower(graph, backend)`` decides, once per compiled signature, everything a call needs: for
each op node in topological order the kernel and config (the registry's heuristic, or the
tuner when one is installed as ``tsol.ops.base.selector``), its operands' sources, the
conversion of Python scalars to 0-d arrays, its cost, and the buffer it writes. Buffer
planning gives an intermediate the buffer of one that died before it (same shape and dtype),
so a chain of N ops keeps at most a few intermediates alive. An op with several results
(``split``) is one launch whose kernel returns them all; its ``part`` nodes are no launches,
only sources ``("part", (node id, index))`` that pick a result. ``run`` then only gathers arrays
and calls kernels: no meta rules, selection or planning per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tsol import backends, config, dtypes
from tsol.errors import BackendError, TSOLError, TSOLNotImplementedError, op_error
from tsol.ops import base
from tsol.ops.base import Meta, meta_of
from tsol.registry import Config, Kernel, OpDef

from .graph import CONST, INPUT, PART, Graph, Node, format_meta


@dataclass
class Launch:
    """One op of the schedule: ``kernel.impl(*operands, out=buffer, config=config, **attrs)``,
    or the op's decomposition when ``kernel`` is None."""

    node: Node
    opdef: OpDef
    kernel: Kernel | None
    config: Config | None
    attrs: dict[str, Any]
    sources: list[Any]
    """Per op input: None, ("in", i), ("node", id), ("part", (id, index)), ("value", array)
    or a tuple of those."""
    buffer: int | None = None
    """Index into ``Schedule.buffers`` for an intermediate; None allocates (a graph output)."""
    frees: list[int] = field(default_factory=list)
    flops: float = 0.0
    bytes: float = 0.0

    @property
    def name(self) -> str:
        return self.kernel.name if self.kernel is not None else f"{self.opdef.name} (decomposed)"


@dataclass
class Schedule:
    graph: Graph
    backend: backends.Backend
    launches: list[Launch]
    buffers: list[tuple[tuple[int, ...], np.dtype]]
    outputs: list[Any]

    @property
    def kernel_count(self) -> int:
        """Launches that run a kernel of their own (views and decompositions excluded)."""
        return sum(1 for L in self.launches if L.kernel is not None and not L.kernel.allocates)

    def text(self) -> str:
        lines = [f"schedule on {self.backend.name}: {len(self.launches)} launches, "
                 f"{self.kernel_count} kernels, {len(self.buffers)} intermediate buffers"]
        for i, L in enumerate(self.launches):
            what = L.node.op
            if what in ("fused_elementwise", "fused_reduction"):
                program, epilogue = L.attrs.get("program"), L.attrs.get("epilogue")
                names = [s.op for s in program.steps] if program is not None else []
                if what == "fused_reduction":
                    names.append(L.attrs["reduce"])
                    names += [s.op for s in epilogue.steps] if epilogue is not None else []
                what += "[" + " -> ".join(names) + "]"
            cfg = "" if L.config is None else f" {L.config}"
            buf = "new" if L.buffer is None else f"buf{L.buffer}"
            lines.append(f"  [{i}] {L.node.label()} {what}: kernel {L.name}{cfg} -> "
                         f"{format_meta(L.node.meta)} ({buf}); launch "
                         f"{launch_shape(L)}; {L.flops / 1e6:.3g} MFLOP, "
                         f"{L.bytes / 1e6:.3g} MB")
        return "\n".join(lines)


def launch_shape(L: Launch) -> str:
    """The kernel's launch geometry where its registration says, else its config."""
    describe = getattr(L.kernel, "launch", None)
    if describe is not None:
        metas = [meta_of(a) if hasattr(a, "shape") else a for a in _flat_metas(L)]
        return describe(metas, L.attrs, L.config)
    if L.kernel is None:
        return "its ops' own"
    if L.kernel.allocates:
        return "none (a view)"
    return "per config"


def _flat_metas(L: Launch) -> list[Any]:
    out = []
    for x in L.node.inputs:
        if isinstance(x, tuple):
            out.extend(e.meta for e in x)
        elif x is not None:
            out.append(x.meta)
    return out


def _scalar_dtype(value: Any, strong: Sequence[Meta]) -> np.dtype:
    """The dtype a Python scalar operand takes, as in the eager call."""
    return dtypes.result_type(*[m.dtype for m in strong], value) if strong \
        else np.result_type(value)


def _constant(value: Any, b: backends.Backend, user: str) -> Any:
    """A captured array as an operand of ``user`` (an op name, or 'output')."""
    if backends.owner(value) is not b:
        raise op_error(BackendError, user, f"an array captured by the function lives on "
                       f"{getattr(backends.owner(value), 'name', '?')} but the inputs on "
                       f"{b.name}", "pass the array as an argument, or move it to the inputs' "
                       "device before calling", [value])
    return b.adopt(value)


def lower(graph: Graph, b: backends.Backend) -> Schedule:
    """The Schedule of an optimized graph on backend ``b``."""
    live = graph.live()
    position = {n.id: i for i, n in enumerate(live)}
    launches: list[Launch] = []
    for n in live:
        if not n.is_op:
            continue
        launches.append(_launch(n, b))
    outputs = [_source(o, b, None) for o in graph.outputs]
    buffers = _plan_buffers(graph, launches, position)
    return Schedule(graph, b, launches, buffers, outputs)


def _source(x: Any, b: backends.Backend, opdef: OpDef | None, dt: Any = None) -> Any:
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_source(e, b, opdef) for e in x)
    if x.op == INPUT:
        return ("in", x.value)
    if x.op == PART:
        return ("part", (x.producer.id, x.value))
    if x.op == CONST:
        if isinstance(x.value, (bool, int, float)):
            dt = dt if dt is not None else np.result_type(x.value)
            return ("value", b.scalar_array(x.value, dt))
        return ("value", _constant(x.value, b, opdef.name if opdef else "output"))
    return ("node", x.id)


def _launch(n: Node, b: backends.Backend) -> Launch:
    opdef = n.opdef
    attrs = n.attr
    flat = n.operands()
    strong = [e.meta for e in flat if not e.meta.weak]
    sources = []
    metas: list[Any] = []
    for x in n.inputs:
        if isinstance(x, Node) and x.meta.weak:
            dt = _scalar_dtype(x.value, strong)
            sources.append(_source(x, b, opdef, dt))
            metas.append(Meta((), dt))
        else:
            sources.append(_source(x, b, opdef))
            if isinstance(x, tuple):
                metas.extend(e.meta for e in x)
            else:
                metas.append(None if x is None else x.meta)
    chosen = base.select(opdef, b.name, metas, attrs)
    in_metas = [None if x is None else tuple(e.meta for e in x) if isinstance(x, tuple)
                else x.meta for x in n.inputs]
    flops, nbytes = (opdef.cost(*in_metas, out=n.meta, **attrs) if opdef.cost else (0.0, 0.0))
    if chosen is None:
        if opdef.decomposition is None:
            raise TSOLNotImplementedError(opdef.name, b.name, [m.dtype for m in strong])
        return Launch(n, opdef, None, None, attrs, sources, flops=flops, bytes=nbytes)
    kern, cfg = chosen
    if isinstance(n.meta, list) and not kern.allocates:
        raise TSOLError(f"tsol.{opdef.name}: kernel {kern.name} has {len(n.meta)} results but "
                        "writes one out= array. Fix: register a kernel of a multi-result op "
                        "with allocates=True, returning the list of its results.")
    return Launch(n, opdef, kern, cfg, attrs, sources, flops=flops, bytes=nbytes)


def _plan_buffers(graph: Graph, launches: list[Launch], position: dict[int, int]
                  ) -> list[tuple[tuple[int, ...], np.dtype]]:
    """Assign intermediates to reusable buffers; fill each launch's ``buffer`` and ``frees``."""
    outputs = {o.id for o in graph.outputs}
    step_of = {L.node.id: i for i, L in enumerate(launches)}
    # A view (an allocating kernel) keeps its source's storage alive: alias it to the root.
    # A part lives in its producer's result, so it counts as that.
    root: dict[int, int] = {}
    for L in launches:
        src = L.node.inputs[0] if L.node.inputs else None
        src = src.producer if isinstance(src, Node) else None
        if L.kernel is not None and L.kernel.allocates and src is not None \
                and src.id in step_of:
            root[L.node.id] = root.get(src.id, src.id)
        else:
            root[L.node.id] = L.node.id
    last_use: dict[int, int] = {}
    for i, L in enumerate(launches):
        for p in L.node.operands():
            if p.producer.id in step_of:
                r = root[p.producer.id]
                last_use[r] = max(last_use.get(r, -1), i)
    for o in graph.outputs:
        if o.producer.id in root:
            last_use[root[o.producer.id]] = len(launches)      # returned: alive to the end
    buffers: list[tuple[tuple[int, ...], np.dtype]] = []
    free: list[int] = []
    owner_of: dict[int, int] = {}
    for i, L in enumerate(launches):
        n = L.node
        writes = L.kernel is not None and not L.kernel.allocates
        if writes and n.id not in outputs and root[n.id] == n.id and not isinstance(n.meta, list):
            want = (tuple(n.meta.shape), np.dtype(n.meta.dtype))
            match = next((k for k in free if buffers[k] == want), None)
            if match is None:
                buffers.append(want)
                match = len(buffers) - 1
            else:
                free.remove(match)
            L.buffer = match
            owner_of[n.id] = match
        # values whose last reader is this launch die here
        for r, last in last_use.items():
            if last == i:
                L.frees.append(r)
                if r in owner_of:
                    free.append(owner_of[r])
    return buffers


def run(s: Schedule, inputs: Sequence[Any], bufs: list[Any] | None = None,
        outs: dict[int, Any] | None = None) -> list[Any]:
    """Execute a schedule on input arrays (already checked against its signature).

    ``bufs`` (intermediate buffers by index) and ``outs`` (result arrays by node id) are used
    instead of allocating where given: a CUDA graph replays into the same memory."""
    b = s.backend
    env: dict[int, Any] = {}
    bufs = [None] * len(s.buffers) if bufs is None else bufs
    poison = config.get().poison_outputs

    def value(src: Any) -> Any:
        if src is None:
            return None
        if isinstance(src, tuple) and src and isinstance(src[0], tuple):
            return tuple(value(e) for e in src)
        kind, v = src
        if kind == "in":
            return inputs[v]
        if kind == "value":
            return v
        if kind == "part":
            return env[v[0]][v[1]]
        return env[v]

    for L in s.launches:
        arrays = [value(src) for src in L.sources]
        k = L.kernel
        if k is None:
            result = L.opdef.decomposition(*arrays, **L.attrs)
        elif k.allocates:
            result = k.impl(*arrays, config=L.config, **L.attrs)
        else:
            if L.buffer is None:
                result = outs.get(L.node.id) if outs is not None else None
                if result is None:
                    result = b.empty(L.node.meta.shape, L.node.meta.dtype)
            else:
                result = bufs[L.buffer]
                if result is None:
                    shape, dt = s.buffers[L.buffer]
                    result = bufs[L.buffer] = b.empty(shape, dt)
            if poison:
                base._poison(result)
            k.impl(*arrays, out=result, config=L.config, **L.attrs)
        env[L.node.id] = result
        for r in L.frees:
            env.pop(r, None)
    return [value(src) for src in s.outputs]


class LaunchReplay:
    """A schedule's launches recorded on one call and replayed on later ones (the backend's
    ``replayer``, as eager calls do), for schedules of ``replays`` kernels only: each call
    allocates its results and intermediates and relocates the recorded launches to them, the
    inputs and the schedule's constant arrays, instead of running each kernel's host code."""

    def __init__(self, s: Schedule, rec: Any) -> None:
        self.s, self.rec = s, rec
        self.outputs = [L for L in s.launches if L.buffer is None]
        # Each constant array once: a source given twice would read as overlapping operands.
        self.constants = list({id(v): v for L in s.launches for kind, v in
                               _flat_sources(L.sources)
                               if kind == "value" and hasattr(v, "shape")}.values())

    @staticmethod
    def build(s: Schedule) -> LaunchReplay | None:
        """The replay of ``s``, or None where it cannot replay (a decomposition, a view, a
        kernel not marked ``replays``, a result that is an input or a part, no replayer)."""
        if not s.launches or any(L.kernel is None or L.kernel.allocates or not L.kernel.replays
                                 for L in s.launches):
            return None
        if any(not (isinstance(src, tuple) and src and src[0] == "node") for src in s.outputs):
            return None
        rec = s.backend.replayer()
        return None if rec is None else LaunchReplay(s, rec)

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        s = self.s
        b = s.backend
        outs = {L.node.id: b.empty(L.node.meta.shape, L.node.meta.dtype) for L in self.outputs}
        bufs = [b.empty(shape, dt) for shape, dt in s.buffers]
        if config.get().poison_outputs:
            for a in [*outs.values(), *bufs]:
                base._poison(a)
        self.rec([*inputs, *outs.values(), *bufs, *self.constants],
                 lambda: run(s, inputs, bufs, outs))
        return [outs[src[1]] for src in s.outputs]


def _flat_sources(sources: Sequence[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for src in sources:
        if isinstance(src, tuple) and src and isinstance(src[0], tuple):
            out += _flat_sources(src)
        elif src is not None:
            out.append(src)
    return out
