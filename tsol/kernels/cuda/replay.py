"""Launch sequences recorded once per call layout and replayed with relocated data pointers.

A kernel family's host code (layout planning, schedules, kernel lookup, argument packing)
depends on its operands' layout alone: shapes, strides, dtypes and attributes. ``Replays``
caches, per such layout key, the launches that one planned call made; a later call with the
same key replays them with its own arrays' addresses and skips the planning. Each pointer a
recorded launch passed is relocated by the array whose bytes it lay in: an operand, the
output, or a scratch buffer taken from ``scratch``. A launch argument pointing anywhere else
(a temporary copy made on the way) makes the sequence unreplayable, and so do overlapping
operands (in-place calls) and a call that launched nothing (its work, if any, was not ours):
such calls keep taking the planning path. Device work that is not a ``gpu.launch`` must only
happen on paths whose launches read a temporary, so that they are never replayed.

Under the simulator and in compile-only mode the replay rebuilds NumPy views at the relocated
addresses and launches through ``gpu.launch``, so the relocation is tested without a GPU.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from tsol.kernels.cuda import gpu

_state = gpu.recording


def data_ptr(a: Any) -> int:
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    return int(a.data.ptr)


def _extent(a: Any) -> tuple[int, int]:
    """[lo, hi) byte addresses that ``a``'s elements occupy (lo == hi when empty)."""
    p = data_ptr(a)
    if a.size == 0:
        return p, p
    lo = sum(s * (n - 1) for n, s in zip(a.shape, a.strides) if s < 0)
    hi = sum(s * (n - 1) for n, s in zip(a.shape, a.strides) if s > 0)
    return p + lo, p + hi + a.itemsize


def scratch(n: int, dt: Any) -> Any:
    """A fresh device array of ``n`` elements; a replay allocates its own in its place."""
    a = gpu.array_module().empty(n, dt)
    rec = getattr(_state, "rec", None)
    if rec is not None:
        rec.add_source(a, scratch=True)
    return a


class _HostArray:
    """An array interface at a raw address: how a host-mode replay rebuilds an argument."""

    def __init__(self, ptr: int, dt: np.dtype, shape: tuple[int, ...],
                 strides: tuple[int, ...]) -> None:
        self.__array_interface__ = {"shape": shape, "typestr": dt.str, "data": (ptr, False),
                                    "strides": strides, "version": 3}


class _Arg(NamedTuple):
    """An array argument of a host-mode step: its source, byte offset and view."""
    source: int
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]


ALIGN = 16
"""A replay runs only on arrays whose data pointers have the recorded call's residues modulo
this (kernels may pick 16-byte vector or cp.async paths by alignment)."""


class _Recorder:
    def __init__(self, arrays: Sequence[Any]) -> None:
        self.extents: list[tuple[int, int, int]] = []        # (lo, hi, base ptr) per source
        self.scratch: list[tuple[int, np.dtype]] = []
        self.constants: dict[int, Any] = {}                  # source index -> array kept
        self.steps: list[Any] = []
        self.ok = True
        for a in arrays:
            self.add_source(a)
        self.align = [base % ALIGN for _, _, base in self.extents]

    def add_source(self, a: Any, scratch: bool = False, constant: bool = False) -> None:
        lo, hi = _extent(a)
        if not constant and any(lo < h and l2 < hi for l2, h, _ in self.extents if lo < hi):
            self.ok = False                                    # overlapping operands
        self.extents.append((lo, hi, data_ptr(a)))
        if scratch:
            self.scratch.append((len(self.extents) - 1, a.size, np.dtype(a.dtype)))
        if constant:
            self.constants[len(self.extents) - 1] = a

    def locate(self, p: int) -> tuple[int, int] | None:
        for i, (lo, hi, base) in enumerate(self.extents):
            if lo <= p < hi:
                return i, p - base
        return None

    def note(self, kern: Any, grid: Any, block: Any, args: Sequence[Any], shared: int) -> None:
        if not self.ok:
            return
        if gpu.HOST_ARRAYS:
            spec = []
            for a in args:
                if hasattr(a, "strides") and not isinstance(a, np.generic):   # an array
                    where = self.locate(data_ptr(a)) if a.size else None
                    if where is None:
                        self.ok = False
                        return
                    spec.append(_Arg(*where, np.dtype(a.dtype), tuple(a.shape),
                                     tuple(a.strides)))
                else:
                    spec.append(a)
            self.steps.append((kern, grid, block, shared, spec))
            return
        prepared = gpu.prepare(kern, grid, block, args, shared)
        self.note_prepared(prepared, [int(prepared.packed[slot])
                                      for slot in prepared.pointer_slots])

    def note_prepared(self, prepared: Any, pointers: Sequence[int]) -> None:
        """A prepared launch (``gpu.Prepared``) run with ``pointers``."""
        if not self.ok:
            return
        relocs = []
        for p in pointers:
            where = self.locate(int(p))
            if where is None:
                self.ok = False
                return
            relocs.append(where)
        self.steps.append((prepared, relocs))


class _Replay:
    """The recorded launches of one layout; called with the operands (same order). Returns
    False, launching nothing, when an operand's alignment differs from the recorded call's."""

    __slots__ = ("steps", "scratch", "nsources", "align", "constants", "nextra")

    def __init__(self, rec: _Recorder, nsources: int) -> None:
        self.steps, self.scratch, self.nsources = rec.steps, rec.scratch, nsources
        self.align, self.constants = rec.align, rec.constants
        self.nextra = len(rec.extents) - nsources

    def __call__(self, arrays: Sequence[Any]) -> bool:
        bases = [data_ptr(a) for a in arrays]
        if any(b % ALIGN != r for b, r in zip(bases, self.align)):
            return False
        keep = []
        if self.nextra:
            bases += [0] * self.nextra
            for index, a in self.constants.items():
                bases[index] = data_ptr(a)
            for index, n, dt in self.scratch:
                s = scratch(n, dt)            # reported to a recording around this call
                keep.append(s)
                bases[index] = data_ptr(s)
        if gpu.HOST_ARRAYS:
            for kern, grid, block, shared, spec in self.steps:
                args = [np.asarray(_HostArray(bases[a.source] + a.offset, a.dtype, a.shape,
                                              a.strides)) if isinstance(a, _Arg) else a
                        for a in spec]
                gpu.launch(kern, grid, block, args, shared)
            return True
        for prepared, relocs in self.steps:
            prepared([bases[i] + off for i, off in relocs])
        return True

    def fast(self) -> Callable[[Sequence[Any]], bool] | None:
        """The replay as one flat launch function (``gpu.Prepared.relocated``) when it is a
        single launch without scratch on a GPU; else None."""
        if gpu.HOST_ARRAYS or self.scratch or len(self.steps) != 1:
            return None
        prepared, relocs = self.steps[0]
        fixed = {i: data_ptr(a) for i, a in self.constants.items()}
        return prepared.relocated(relocs, self.align, fixed, ALIGN)


class PlanReplay:
    """The launches of one eager-call signature (``Backend.replayer``): the first call records
    them, later calls replay them, through the flat launch function where there is one."""

    __slots__ = ("replays", "flat")

    def __init__(self) -> None:
        self.replays = Replays(limit=1)
        self.flat: Callable[[Sequence[Any]], bool] | None = None

    def __call__(self, arrays: Sequence[Any], run: Callable[[], Any]) -> None:
        # Inside another call's recording the launches must reach its recorder: no flat path.
        recording = getattr(_state, "rec", None) is not None
        if self.flat is not None and not recording and self.flat(arrays):
            return
        self.replays.run(None, arrays, run)
        found = self.replays.cache.get(None)
        if found and not recording and self.flat is None:
            self.flat = found.fast()


class Replays:
    """Per-layout replays of one kernel family: ``run(key, arrays, planned)``.

    ``planned()`` does the call the slow way (planning and launching); ``arrays`` are the
    call's operands and output, whose addresses the launches may use. The first call of a key
    records ``planned``; later calls replay it when it was replayable.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.cache: dict[Any, _Replay | None] = {}
        self.limit = limit

    def run(self, key: Any, arrays: Sequence[Any], planned: Callable[[], Any]) -> None:
        found = self.cache.get(key, False)
        if found is not None and found is not False:
            if not found(arrays):     # (a recording around this call sees replayed launches)
                planned()             # other alignments than the recorded call's
            return
        if found is None or getattr(_state, "rec", None) is not None:
            planned()                 # unreplayable, or inside another call's recording
            return
        rec = _Recorder(arrays)
        _state.rec = rec
        try:
            planned()
        finally:
            _state.rec = None
        if len(self.cache) > self.limit:
            self.cache.clear()
        self.cache[key] = _Replay(rec, len(arrays)) if rec.ok and rec.steps else None


def constant(a: Any) -> Any:
    """Declare ``a`` (a device array kept across calls, such as a cached table) a constant of
    the call being recorded, if any: launches may read it and a replay passes it unchanged.
    Returns ``a``."""
    rec = getattr(_state, "rec", None)
    if rec is not None:
        rec.add_source(a, constant=True)
    return a


def unreplayable() -> None:
    """Mark the call being recorded, if any, as not to be replayed: its host code checks the
    operands' values (a replay would skip the check)."""
    rec = getattr(_state, "rec", None)
    if rec is not None:
        rec.ok = False


def recorder() -> _Recorder | None:
    """The recorder of the call being recorded on this thread (``gpu.launch`` reports to it)."""
    return getattr(_state, "rec", None)


__all__ = ["ALIGN", "PlanReplay", "Replays", "constant", "scratch", "recorder", "unreplayable",
           "data_ptr"]
