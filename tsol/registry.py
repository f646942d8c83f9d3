"""The registry: every op definition and every kernel, and nothing else.

Ops (``tsol/ops/``) and kernels (``tsol/kernels/<backend>/``) register here by op name; the public
API, the schedule layer, ``dist``, ``bench`` and the tests read them only through this module.
Kernels of a backend are imported the first time that backend runs an op.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from tsol import backends
from tsol.errors import TSOLError


class Config:
    """Frozen, hashable tile knobs of one kernel variant, printed stably: ``Config(block=4096)``."""

    __slots__ = ("_items",)

    def __init__(self, **knobs: Any) -> None:
        object.__setattr__(self, "_items", tuple(sorted(knobs.items())))

    def __getattr__(self, name: str) -> Any:
        for key, value in object.__getattribute__(self, "_items"):
            if key == name:
                return value
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is frozen")

    def asdict(self) -> dict[str, Any]:
        return dict(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._items == other._items

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self._items)})"


DEFAULT_CONFIG = Config()


@dataclass(frozen=True)
class Kernel:
    """One registered implementation of an op on a backend.

    ``impl(*operands, out=out, config=config, **attrs)`` writes the result into ``out`` (always
    C-contiguous and not overlapping an operand unless ``alias_ok`` and identical to one).
    ``dtypes`` limits operand dtypes (None: any); ``supports(metas, attrs)`` is the legality rule;
    ``heuristic(metas, attrs)`` picks a config without measuring.
    """

    op: str
    backend: str
    name: str
    impl: Callable[..., None]
    dtypes: frozenset[np.dtype] | None = None
    configs: tuple[Config, ...] = (DEFAULT_CONFIG,)
    supports: Callable[[Sequence[Any], dict[str, Any]], bool] | None = None
    heuristic: Callable[[Sequence[Any], dict[str, Any]], Config] | None = None
    vendor: str | None = None
    priority: int = 0
    alias_ok: bool = True
    allocates: bool = False
    """``impl(*operands, config=config, **attrs)`` returns its result (a view of an operand, as
    NumPy gives for transpose or slicing) instead of writing ``out``."""
    replays: bool = False
    """What ``impl`` does on the device depends on its operands' layout and attrs alone (no host
    check of their values, no work after its launches): a backend may record one call's launches
    and replay them, with other data pointers, for later calls of the same signature."""
    source_file: str = ""
    launch: Callable[[Sequence[Any], dict[str, Any], Config], str] | None = None
    """``launch(metas, attrs, config)``: the launch geometry in words, for ``explain()``."""

    def legal(self, metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
        # An optional input left out (layernorm's gamma, matmul's bias) has no Meta: None.
        if self.dtypes is not None and any(m is not None and m.dtype not in self.dtypes
                                           for m in metas):
            return False
        return self.supports is None or bool(self.supports(metas, attrs))

    def default_config(self, metas: Sequence[Any], attrs: dict[str, Any]) -> Config:
        return self.heuristic(metas, attrs) if self.heuristic else self.configs[0]


NON_DIFFERENTIABLE = "non-differentiable"
"""Mark for ``vjp=`` on ops with no gradient (comparisons, argmax, casts to integers)."""


@dataclass
class OpDef:
    """An op defined once: signature, rules, reference and cost. See ``tsol.ops.base.defop``."""

    name: str
    family: str
    signature: inspect.Signature
    inputs: tuple[str, ...]
    meta: Callable[..., Any]
    reference: Callable[..., Any]
    vjp: Callable[..., Any] | str | None
    cost: Callable[..., tuple[float, float]] | None = None
    normalize: Callable[..., dict[str, Any]] | None = None
    decomposition: Callable[..., Any] | None = None
    sharding: Callable[..., Any] | None = None
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def differentiable(self) -> bool:
        return callable(self.vjp)


OPS: dict[str, OpDef] = {}
KERNELS: dict[tuple[str, str], list[Kernel]] = {}


def register_op(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise TSOLError(f"tsol: op '{opdef.name}' is defined twice")
    OPS[opdef.name] = opdef
    return opdef


def kernel(op: str, *, backend: str, dtypes: Iterable[Any] | None = None,
           configs: Sequence[Config] = (DEFAULT_CONFIG,), supports: Callable | None = None,
           heuristic: Callable | None = None, vendor: str | None = None, priority: int = 0,
           alias_ok: bool = True, allocates: bool = False, replays: bool = False,
           name: str | None = None, launch: Callable | None = None) -> Callable:
    """Decorator registering ``impl`` as a kernel of ``op`` on ``backend``; returns ``impl``."""

    def register(impl: Callable[..., None]) -> Callable[..., None]:
        k = Kernel(op=op, backend=backend, name=name or impl.__name__, impl=impl,
                   dtypes=None if dtypes is None else frozenset(np.dtype(d) for d in dtypes),
                   configs=tuple(configs), supports=supports, heuristic=heuristic,
                   vendor=vendor, priority=priority, alias_ok=alias_ok,
                   allocates=allocates, replays=replays, launch=launch,
                   source_file=inspect.getsourcefile(impl) or "")
        KERNELS.setdefault((op, backend), []).append(k)
        return impl

    return register


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise TSOLError(f"tsol: no op named {name!r}. "
                        "Fix: see tsol.coverage() for the list.") from None


def kernels(op: str, backend: str) -> list[Kernel]:
    """Every kernel registered for ``op`` on ``backend``, best priority first, vendors last."""
    backends.get(backend).load_kernels()
    found = KERNELS.get((op, backend), [])
    return sorted(found, key=lambda k: (k.vendor is not None, -k.priority, k.name))


def coverage(print_table: bool = True) -> dict[str, dict[str, list[str]]]:
    """Op x backend table of registered kernel names; printed unless ``print_table=False``.

    Loading a backend's kernels needs its Python packages, not its device, so the table shows
    every backend whose kernel package imports here.
    """
    table: dict[str, dict[str, list[str]]] = {}
    names = list(backends.BACKENDS)
    for b in names:
        try:
            backends.get(b).load_kernels()
        except (ImportError, TSOLError):
            pass
    for op in sorted(OPS):
        table[op] = {b: [k.name for k in KERNELS.get((op, b), [])] for b in names}
    if print_table:
        width = max(len(o) for o in table) if table else 4
        print(f"{'op':<{width}}  " + "  ".join(f"{b:<7}" for b in names))
        for op, row in table.items():
            cells = [(f"{len(row[b])} kern" if row[b] else ("decomp" if OPS[op].decomposition
                                                              else "-")) for b in names]
            print(f"{op:<{width}}  " + "  ".join(f"{c:<7}" for c in cells))
    return table
