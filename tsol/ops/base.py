"""``defop``: define an op once, and the eager call path every op shares.

An op module writes::

    @defop(family="softmax", inputs=("x",), meta=softmax_meta, reference=softmax_ref,
           vjp=softmax_vjp, cost=softmax_cost)
    def softmax(x, axis=-1, *, out=None):
        '''Contract docstring with a runnable example.'''

The decorated body is never run: the signature and docstring become the public function, and a
call binds the arguments, applies the meta rule, selects a registered kernel for the operands'
backend and runs it (or the op's decomposition), writing a fresh or the given ``out`` array.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from tsol import backends, config, dtypes
from tsol.errors import (
    ArgumentError,
    BackendError,
    DTypeError,
    ShapeError,
    TSOLError,
    TSOLNotImplementedError,
    op_error,
)
from tsol.registry import OpDef, get_op, kernels, register_op

SCALAR_TYPES = (bool, int, float)


@dataclass(frozen=True)
class Meta:
    """Shape and dtype of an operand or result. ``weak`` marks a Python scalar (NEP 50)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    weak: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(s) for s in self.shape)}]"


def meta_of(x: Any) -> Meta:
    """Meta of an array, NumPy scalar or Python scalar (weak)."""
    if isinstance(x, SCALAR_TYPES) and not isinstance(x, np.generic):
        return Meta((), np.result_type(x), weak=True)
    return Meta(tuple(int(s) for s in x.shape), np.dtype(x.dtype))


def promote(op: str, *operands: Any) -> np.dtype:
    """Result dtype of operands (arrays, Metas, Python scalars) by NumPy rules, or DTypeError."""
    items = []
    for o in operands:
        items.append(o.dtype if isinstance(o, Meta) and not o.weak else o)
    try:
        return dtypes.result_type(*[(_weak_value(o) if isinstance(o, Meta) and o.weak else o)
                                    for o in items])
    except (TypeError, ValueError) as exc:
        raise op_error(DTypeError, op, f"these dtypes have no common type ({exc})",
                       "cast the operands to one dtype with tsol.astype", operands) from None


def _weak_value(m: Meta) -> Any:
    return {"b": True, "i": 1, "u": 1, "f": 1.0}[m.dtype.kind]


# --------------------------------------------------------------------------------------------
# defop


def defop(*, family: str, inputs: Sequence[str], meta: Callable[..., Any],
          reference: Callable[..., Any], vjp: Callable[..., Any] | str,
          cost: Callable[..., tuple[float, float]] | None = None,
          normalize: Callable[..., dict[str, Any]] | None = None,
          decomposition: Callable[..., Any] | None = None,
          name: str | None = None, sequence_inputs: Sequence[str] = (),
          prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
          ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an op and return its public function.

    - ``inputs``: names of the array parameters; the other parameters (except ``out``) are attrs.
    - ``meta(*metas, **attrs) -> Meta`` raises a TSOLError for bad input (``metas[i].weak`` marks
      Python scalars). ``normalize(metas, **attrs) -> attrs`` canonicalizes attributes first.
    - ``reference(*arrays, **attrs)``: float64 NumPy truth for tests and benchmarks.
    - ``vjp(g, *primals, out=y, **attrs) -> tuple`` of cotangents (None for non-array inputs),
      written in TSOL ops; or ``NON_DIFFERENTIABLE``.
    - ``cost(*metas, out=Meta, **attrs) -> (flops, bytes)``.
    - ``decomposition(*operands, **attrs)``: the op in other TSOL ops, used where no kernel is.
    - ``sequence_inputs``: inputs that take a list of arrays (``concat``'s ``arrays``). Such an
      operand reaches ``meta`` as a tuple of Metas and the kernel as a tuple of arrays; kernel
      legality sees every array's Meta, flattened. A ``meta`` may return a list of Metas for an
      op whose (allocating) kernel returns a list, such as ``split``.
    - ``prepare(params) -> params`` rewrites the bound arguments (a dict by parameter name)
      before operands are split from attrs, for an attr that may carry arrays: matmul lifts
      the arrays of an ``epilogue={"bias": ...}`` dict into its ``bias``/``residual`` inputs.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        for n in (*inputs, *sequence_inputs):
            if n not in sig.parameters or n not in inputs:
                raise TSOLError(f"defop {fn.__name__}: input {n!r} is not a parameter")
        opdef = register_op(OpDef(
            name=name or fn.__name__, family=family, signature=sig, inputs=tuple(inputs),
            meta=meta, reference=reference, vjp=vjp, cost=cost, normalize=normalize,
            decomposition=decomposition, doc=inspect.getdoc(fn) or "",
            extra={**({"sequence_inputs": tuple(sequence_inputs)} if sequence_inputs else {}),
                   **({"prepare": prepare} if prepare else {})}))

        @functools.wraps(fn)
        def public(*args: Any, **kwargs: Any) -> Any:
            return call(opdef, args, kwargs)

        public.opdef = opdef  # type: ignore[attr-defined]
        return public

    return wrap


# --------------------------------------------------------------------------------------------
# the eager call path

capture_hook: Callable[[OpDef, list[Any], dict[str, Any]], Any] | None = None
"""Set by the schedule layer while a function is being captured; returns a recorded node."""


def bind(opdef: OpDef, args: Sequence[Any], kwargs: dict[str, Any]
         ) -> tuple[list[Any], dict[str, Any], Any]:
    """Split a call into (operands, attrs, out), raising ArgumentError for a bad call."""
    try:
        bound = opdef.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentError(f"tsol.{opdef.name}: {exc}. Fix: call it as "
                            f"tsol.{opdef.name}{opdef.signature}.") from None
    bound.apply_defaults()
    params = dict(bound.arguments)
    if "prepare" in opdef.extra:
        params = opdef.extra["prepare"](params)
    out = params.pop("out", None)
    operands = [params.pop(n) for n in opdef.inputs]
    return operands, params, out


def _check_operand(opdef: OpDef, x: Any, operands: Sequence[Any]) -> Any:
    if isinstance(x, SCALAR_TYPES) or isinstance(x, np.generic):
        return np.asarray(x) if isinstance(x, np.generic) else x
    if backends.owner(x) is not None and hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    fix = "wrap it with np.asarray(...)" if isinstance(x, (list, tuple)) else \
        "pass a NumPy array (or a CuPy/dpnp array for a GPU backend) or a Python scalar"
    raise op_error(ArgumentError, opdef.name, f"operand of type {type(x).__name__} is not an array",
                   fix, operands)


def _optional(opdef: OpDef, name: str) -> bool:
    """True for an array input whose parameter defaults to None (layernorm's gamma, beta)."""
    return opdef.signature.parameters[name].default is None


def _check_sequence(opdef: OpDef, x: Any, operands: Sequence[Any]) -> tuple[Any, ...]:
    """A list operand (``concat``'s arrays) as a tuple of checked arrays."""
    if not isinstance(x, (list, tuple)):
        raise op_error(ArgumentError, opdef.name, f"expects a list of arrays, got a "
                       f"{type(x).__name__}", "pass a list or tuple of arrays", [x])
    items = tuple(_check_operand(opdef, e, operands) for e in x)
    if any(isinstance(e, SCALAR_TYPES) for e in items):
        raise op_error(ArgumentError, opdef.name, "a Python scalar is not an array",
                       "pass arrays in the list (np.asarray(...))", items)
    return items


def _flatten(items: Sequence[Any]) -> list[Any]:
    """Operands (or metas) with list operands expanded in place."""
    return [e for x in items for e in (x if isinstance(x, tuple) else (x,))]


def _backend_for(opdef: OpDef, operands: Sequence[Any], out: Any) -> backends.Backend:
    arrays = [o for o in operands if o is not None and not isinstance(o, SCALAR_TYPES)]
    if out is not None:
        arrays.append(out)
    try:
        b = backends.for_arrays(arrays)
    except BackendError:
        raise op_error(BackendError, opdef.name, "operands live on different backends "
                       "(TSOL never copies between devices on its own)",
                       "move every operand to one device first (np.asarray / cupy.asarray)",
                       arrays) from None
    b = b or backends.get(config.get().default_backend)
    if not b.available():
        raise op_error(BackendError, opdef.name, b.why_unavailable(), "install the backend's "
                       "extra or run on the CPU with NumPy arrays", arrays)
    return b


def _to_array(x: Any, dt: np.dtype, b: backends.Backend, opdef: OpDef) -> Any:
    try:
        return b.array_module().asarray(x, dtype=dt)
    except OverflowError:
        raise op_error(DTypeError, opdef.name, f"Python integer {x} does not fit {dt}",
                       f"cast the array to a wider dtype first, or pass a value in {dt}'s range",
                       [x]) from None


def _check_out(opdef: OpDef, out: Any, expect: Meta, b: backends.Backend,
               operands: Sequence[Any]) -> None:
    if backends.owner(out) is not b:
        raise op_error(ArgumentError, opdef.name, f"out= is a {type(out).__name__}, not a "
                       f"{b.name} array", "pass an array of the operands' type", [out])
    got = meta_of(out)
    if got.shape != expect.shape or got.dtype != expect.dtype:
        raise op_error(ShapeError if got.shape != expect.shape else DTypeError, opdef.name,
                       f"out= is {got} but the result is {expect}",
                       f"allocate out with shape {expect.shape} and dtype {expect.dtype}",
                       list(operands))
    flags = getattr(out, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):
        raise op_error(ArgumentError, opdef.name, "out= is read-only", "pass a writeable array",
                       [out])


def _poison(a: Any) -> None:
    kind = a.dtype.kind
    if a.dtype == dtypes.bfloat16:
        a.view(np.uint16).fill(0x7FC0)                    # bfloat16 NaN bits
    elif kind == "f":
        a.fill(np.nan)
    elif kind in "iu":
        a.fill(np.iinfo(a.dtype).max)
    elif kind == "b":
        a.fill(True)


def _needs_private_out(out: Any, arrays: Sequence[Any], alias_ok: bool,
                       b: backends.Backend) -> bool:
    if not out.flags.c_contiguous:
        return True
    may_share = b.array_module().may_share_memory
    for a in arrays:
        if a is not None and a.size and may_share(out, a):
            same = (b.data_ptr(a) == b.data_ptr(out) and a.shape == out.shape
                    and a.strides == out.strides and a.dtype == out.dtype)
            if not (same and alias_ok):
                return True
    return False


class _Plan:
    """What a call's signature decided, reused by later calls with the same signature: where
    each operand comes from, the scalar dtypes, the normalized attrs, result meta and kernel;
    ``replay``: the backend's recorder of the kernel's launches (``Kernel.replays``), or None."""

    __slots__ = ("sources", "scalar_dtypes", "attrs", "shape", "dtype", "kern", "cfg", "b",
                 "replay")

    def __init__(self, **fields: Any) -> None:
        for k, v in fields.items():
            setattr(self, k, v)


class _PlanTable:
    """Eager-call plans by signature key, one table per (settings, selector) in force: the
    settings name the default backend and a plan keeps its kernel choice. The pair is hashed
    only when it changes, not per call."""

    def __init__(self) -> None:
        self.tables: dict[Any, dict[Any, _Plan]] = {}
        self.now: tuple[Any, Any, dict[Any, _Plan]] = (None, None, {})

    def current(self) -> dict[Any, _Plan]:
        settings, now = config.get(), self.now
        if now[0] is settings and now[1] is selector:
            return now[2]
        if len(self.tables) > 64:
            self.tables.clear()
        table = self.tables.setdefault((settings, selector), {})
        self.now = (settings, selector, table)
        return table

    def get(self, key: Any) -> _Plan | None:
        return self.current().get(key)

    def __setitem__(self, key: Any, plan: _Plan) -> None:
        table = self.current()
        if len(table) > 4096:
            table.clear()
        table[key] = plan

    def values(self) -> list[_Plan]:
        """Every stored plan, under any settings (for inspection)."""
        return [p for table in self.tables.values() for p in table.values()]

    def clear(self) -> None:
        self.tables.clear()
        self.now = (None, None, {})


_plans = _PlanTable()
_ARRAY_TYPES: dict[type, bool] = {}


def _signature_key(opdef: OpDef, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """A key of everything a plan depends on, or None when the call is not plannable (foreign
    array types, out=, capture); the caller treats an unhashable key (attrs) as no plan."""
    if capture_hook is not None:
        return None
    parts: list[Any] = [id(opdef)]
    for a in args:
        t = type(a)
        native = _ARRAY_TYPES.get(t)
        if native is None:
            native = _native(a)
        if native:
            parts.append((t, a.shape, a.dtype, a.strides))
        elif t in (int, float, bool):
            parts.append((t, a))              # a positional attr (axis) matters by value
        else:
            return None
    for k, v in kwargs.items():
        if k == "out" or isinstance(v, (list, dict)):
            return None
        if hasattr(v, "shape"):               # an operand by keyword (bias=, positions=)
            t = type(v)
            native = _ARRAY_TYPES.get(t)
            if not (native if native is not None else _native(v)):
                return None
            parts.append((k, t, v.shape, v.dtype, v.strides))
        else:
            parts.append((k, v))
    return tuple(parts)


def _native(a: Any) -> bool:
    """Whether arrays of ``a``'s type are a backend's own (no conversion on the way in)."""
    b = backends.owner(a) if hasattr(a, "shape") else None
    native = _ARRAY_TYPES[type(a)] = (b is not None and b.adopt(a) is a
                                      and hasattr(a, "strides") and hasattr(a, "flags"))
    return native


def call(opdef: OpDef, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run ``opdef`` eagerly (or record it while capturing); the body of every public op."""
    # Sequence inputs (lists) never key a plan; ``prepare`` only rewrites dict attrs, which
    # never do either.
    key = _signature_key(opdef, args, kwargs) if "sequence_inputs" not in opdef.extra else None
    if key is not None:
        try:
            plan = _plans.get(key)
        except TypeError:                     # an unhashable attribute: no plan
            key = plan = None
        if plan is not None:
            return _run_plan(plan, args, kwargs)
    operands, attrs, out = bind(opdef, args, kwargs)
    if capture_hook is not None:
        recorded = capture_hook(opdef, operands, dict(attrs, out=out))
        if recorded is not NotImplemented:
            return recorded
    # An optional input left out stays None; its meta is None for the meta rule and kernels.
    sequences = opdef.extra.get("sequence_inputs", ())
    operands = [x if x is None and _optional(opdef, n) else
                _check_sequence(opdef, x, operands) if n in sequences else
                _check_operand(opdef, x, operands)
                for n, x in zip(opdef.inputs, operands, strict=True)]
    b = _backend_for(opdef, _flatten(operands), out)
    if b.name == "cuda":
        return _foreign_call(opdef, b, operands, attrs, out,
                             None if key is None else (key, args, kwargs))
    if key is not None:
        return _run(opdef, b, operands, attrs, out, (key, args, kwargs))
    return _run(opdef, b, operands, attrs, out)


def _run_plan(plan: _Plan, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The eager call by a plan: operands gathered, scalars converted, output allocated."""
    arrays = []
    for src, dt in zip(plan.sources, plan.scalar_dtypes):
        x = args[src] if isinstance(src, int) else kwargs.get(src) if src else None
        arrays.append(x if dt is None else plan.b.array_module().asarray(x, dtype=dt)
                      if plan.kern.allocates else plan.b.scalar_array(x, dt))
    # (A scalar that does not fit its dtype never gets here: its key differs by value and the
    # first call with that value raised a DTypeError without storing a plan.)
    if plan.kern.allocates:
        return plan.kern.impl(*arrays, config=plan.cfg, **plan.attrs)
    target = plan.b.empty(plan.shape, plan.dtype)
    if config.get().poison_outputs:
        _poison(target)
    if plan.replay is not None:
        present = [a for a in arrays if a is not None]       # absent optional inputs
        present.append(target)
        plan.replay(present, lambda: plan.kern.impl(*arrays, out=target, config=plan.cfg,
                                                    **plan.attrs))
    else:
        plan.kern.impl(*arrays, out=target, config=plan.cfg, **plan.attrs)
    return target


def _remember(opdef: OpDef, site: tuple[Any, Sequence[Any], dict[str, Any]], b: Any,
              operands: Sequence[Any], arrays: Sequence[Any], attrs: dict[str, Any],
              result_meta: Any, kern: Any, cfg: Any) -> None:
    """Store the plan of a call that ran a kernel: each operand's position in args/kwargs."""
    key, args, kwargs = site
    sources: list[Any] = []
    params = list(opdef.signature.parameters)
    for name, x in zip(opdef.inputs, operands):
        pos: Any = params.index(name)
        if pos >= len(args):
            pos = name if name in kwargs else None
        given = args[pos] if isinstance(pos, int) else kwargs.get(pos) if pos else None
        if given is not x and not isinstance(given, SCALAR_TYPES):
            return                            # converted on the way in: no plan
        sources.append(pos)
    scalar_dtypes = [np.dtype(a.dtype) if isinstance(x, SCALAR_TYPES) else None
                     for x, a in zip(operands, arrays)]
    if isinstance(result_meta, (list, tuple)):
        if not kern.allocates:
            return
        shape = dtype = None
    else:
        shape, dtype = result_meta.shape, result_meta.dtype

    # A replay relocates the pointers of arrays: no operand may be a sequence of them.
    replays = kern.replays and not kern.allocates and not any(
        isinstance(x, tuple) for x in operands)
    _plans[key] = _Plan(sources=sources, scalar_dtypes=scalar_dtypes, attrs=dict(attrs),
                        shape=shape, dtype=dtype, kern=kern, cfg=cfg, b=b,
                        replay=b.replayer() if replays else None)


def _foreign_call(opdef: OpDef, b: backends.Backend, operands: list[Any],
                  attrs: dict[str, Any], out: Any, site: Any = None) -> Any:
    """Adopt operands of another array type (a torch CUDA tensor) zero-copy, run, and give the
    result back in the first such operand's type."""
    like = next((x for x in _flatten(operands) + [out]
                 if x is not None and not isinstance(x, SCALAR_TYPES)
                 and b.adopt(x) is not x), None)
    if like is None:
        return _run(opdef, b, operands, attrs, out, site)
    operands = [tuple(b.adopt(e) for e in x) if isinstance(x, tuple) else
                None if x is None or isinstance(x, SCALAR_TYPES) else b.adopt(x)
                for x in operands]
    result = _run(opdef, b, operands, attrs, None if out is None else b.adopt(out))
    if out is not None:
        return out
    if isinstance(result, (list, tuple)):
        return type(result)(b.export(r, like) for r in result)
    return b.export(result, like)


def _run(opdef: OpDef, b: backends.Backend, operands: list[Any], attrs: dict[str, Any],
         out: Any, site: Any = None) -> Any:
    """The eager call once operands are checked and their backend is known; ``site`` (plan
    key, args, kwargs) asks to remember the decisions for later calls of this signature."""
    metas = [None if x is None else tuple(meta_of(e) for e in x) if isinstance(x, tuple)
             else meta_of(x) for x in operands]
    if opdef.normalize is not None:
        attrs = opdef.normalize(metas, **attrs)
    result_meta = opdef.meta(*metas, **attrs)
    if out is not None:
        _check_out(opdef, out, result_meta, b, operands)

    strong = [m for m in _flatten(metas) if m is not None and not m.weak]
    arrays = [x if m is None or isinstance(m, tuple) or not m.weak else
              _to_array(x, dtypes.result_type(*[s.dtype for s in strong], x)
                        if strong else np.result_type(x), b, opdef)
              for x, m in zip(operands, metas)]
    chosen = select(opdef, b.name, [None if a is None else meta_of(a) for a in _flatten(arrays)],
                    attrs)
    if chosen is None:
        if opdef.decomposition is None:
            raise TSOLNotImplementedError(opdef.name, b.name, [m.dtype for m in strong])
        value = opdef.decomposition(*arrays, **attrs)
        if out is None:
            return value
        out[...] = value
        return out

    kern, cfg = chosen
    if site is not None and out is None:
        _remember(opdef, site, b, operands, arrays, attrs, result_meta, kern, cfg)
    if kern.allocates:
        value = kern.impl(*arrays, config=cfg, **attrs)
        if out is None:
            return value
        out[...] = value
        return out
    target = out
    if target is None or _needs_private_out(target, _flatten(arrays), kern.alias_ok, b):
        target = b.empty(result_meta.shape, result_meta.dtype)
        if config.get().poison_outputs:
            _poison(target)
    kern.impl(*arrays, out=target, config=cfg, **attrs)
    if out is not None and target is not out:
        out[...] = target
        return out
    return target


selector: Callable[[OpDef, str, list[Meta], dict[str, Any]], Any] | None = None
"""Set by the schedule layer to choose (kernel, config) by tuning; None uses the heuristic."""


def select(opdef: OpDef, backend: str, metas: list[Meta], attrs: dict[str, Any]) -> Any:
    """(kernel, config) for this call, or None when no registered kernel is legal."""
    if selector is not None:
        chosen = selector(opdef, backend, metas, attrs)
        if chosen is not None:
            return chosen
    for k in kernels(opdef.name, backend):
        if k.vendor is None and k.legal(metas, attrs):
            return k, k.default_config(metas, attrs)
    return None


def op_named(name: str) -> Callable[..., Any]:
    """The public function of a registered op."""
    opdef = get_op(name)
    return lambda *a, **k: call(opdef, a, k)
