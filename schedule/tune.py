"""Autotuning: measure a call's candidates once, keep the winner on disk, reuse it everywhere.

``Tuner.tune`` times every candidate of ``tsol.schedule.select.candidates`` (warm-up runs, then
the median of ``repeats`` timings with the backend's timer: device events on GPUs) and keeps
the fastest. A candidate that raises scores infinity; its error stays in the result for
``TuneResult.explain()``. Results live in an in-process map in front of one JSON file per key
under ``<cache_dir>/tune/``, written to a temporary file in that folder and ``os.replace``d, so
a reader never sees half a file and a second process reuses the result without measuring.

The key (``cache_key``) holds the op name, a stable repr of the normalized attributes, each
operand's dtype and *shape bucket* (every dim rounded up to a power of two: sizes 1000 and 1024
share a result, 1025 does not), the deterministic flag, the backend's ``device_key()``, the hash
of the op's kernel sources and the TSOL version. A stored winner that is no longer registered
or legal for the call is a miss and is measured again.

Deterministic mode tunes too: candidates are tried in the fixed order of ``select.candidates``
and a timing tie goes to the earlier one. Tuning never changes a reduction's combine order:
every TSOL reduction combines fixed blocks in a fixed tree, and the tuned knobs only change how
that work is split over threads and tiles.

Switching it on: ``with autotune(): ...`` (or ``@autotune()``) for a block, or the setting
``autotune`` (``TSOL_AUTOTUNE=1``) once ``install_from_config()`` has run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tsol import backends, config, dtypes
from tsol.errors import ArgumentError
from tsol.ops import base
from tsol.ops.base import Meta
from tsol.registry import Config, Kernel, OpDef

from . import select
from .select import Candidate

__all__ = ["Tuner", "TuneResult", "Trial", "autotune", "cache_key", "bucket", "synthetic_run",
           "install_from_config", "config_selector", "stats", "reset_stats", "clear_memory"]

FORMAT = 1
"""Version of the key and record layout; a change makes every stored result a miss."""

Run = Callable[[Kernel, Config], Any]
"""``run(kernel, config)``: one complete execution of the call with that candidate."""


# --- counters ---------------------------------------------------------------------------------

_STATS_LOCK = threading.Lock()
_STATS = dict.fromkeys(("tunings", "measurements", "failures", "memory_hits", "disk_hits",
                        "stale"), 0)


def _count(name: str, n: int = 1) -> None:
    with _STATS_LOCK:
        _STATS[name] += n


def stats() -> dict[str, int]:
    """Counters since the last ``reset_stats()``.

    ``tunings`` (keys measured), ``measurements`` (candidates timed), ``failures`` (candidates
    that raised), ``memory_hits`` and ``disk_hits`` (results reused), ``cache_hits`` (their sum)
    and ``stale`` (stored winners no longer registered or legal).
    """
    with _STATS_LOCK:
        out = dict(_STATS)
    out["cache_hits"] = out["memory_hits"] + out["disk_hits"]
    return out


def reset_stats() -> None:
    """Set every counter of ``stats()`` to zero."""
    with _STATS_LOCK:
        for name in _STATS:
            _STATS[name] = 0


# --- keys ---------------------------------------------------------------------------------------

def bucket(n: int) -> int:
    """``n`` rounded up to a power of two (0 and 1 stay): 1000 -> 1024, 1024 -> 1024."""
    return n if n <= 1 else 1 << (n - 1).bit_length()


class _Unstable(Exception):
    """An attribute with no process-independent repr (a callable, an array)."""


def _stable_repr(v: Any) -> str:
    """A repr of an attribute value that is the same in every process."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return repr(v)
    if isinstance(v, (tuple, list)):
        inner = ", ".join(_stable_repr(e) for e in v)
        return f"({inner},)" if isinstance(v, tuple) else f"[{inner}]"
    if isinstance(v, dict):
        items = sorted((_stable_repr(k), _stable_repr(e)) for k, e in v.items())
        return "{" + ", ".join(f"{k}: {e}" for k, e in items) + "}"
    if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
        return f"dtype({np.dtype(v)})"
    if isinstance(v, np.generic):
        return f"{np.dtype(v.dtype)}({v.item()!r})"
    text = repr(v)
    if hasattr(v, "shape") or callable(v) or " at 0x" in text:
        raise _Unstable(text)
    return f"{type(v).__qualname__}:{text}"


@functools.lru_cache(maxsize=None)
def _device_key(backend: str) -> str | None:
    try:
        return backends.get(backend).device_key()
    except Exception:  # a backend that cannot name its device is not persisted
        return None


def _key(opdef: OpDef, backend: str, metas: Sequence[Meta | None], attrs: dict[str, Any]
         ) -> tuple[dict[str, Any], bool]:
    """(key, persistent): the key of module docstring; not persistent without a device key."""
    import tsol  # read at call time: the version is part of the key

    device = _device_key(backend)
    key = {
        "format": FORMAT,
        "op": opdef.name,
        "backend": backend,
        "attrs": _stable_repr(dict(attrs)),
        "operands": [None if m is None else [str(m.dtype), [bucket(d) for d in m.shape]]
                     for m in metas],
        "deterministic": bool(config.get().deterministic),
        "device": device,
        "source": select.source_hash(opdef, backend),
        "tsol": str(tsol.__version__),
    }
    return key, device is not None


def cache_key(opdef: OpDef, backend: str, metas: Sequence[Meta | None],
              attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The tuning key of a call as a JSON-ready dict, or None when its attributes cannot be keyed.

    Equal keys share one tuning result. Example::

        >>> from tsol.registry import get_op
        >>> k = cache_key(get_op("exp"), "cpu", [Meta((1000, 3), np.dtype("f4"))], {})
        >>> k["operands"]
        [['float32', [1024, 4]]]
    """
    try:
        return _key(opdef, backend, metas, attrs)[0]
    except _Unstable:
        return None


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# --- configs as JSON --------------------------------------------------------------------------

def _to_json(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_to_json(e) for e in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def _from_json(v: Any) -> Any:
    return tuple(_from_json(e) for e in v) if isinstance(v, list) else v


def _config_json(cfg: Config) -> dict[str, Any]:
    return {k: _to_json(v) for k, v in cfg.asdict().items()}


def _config_from(d: dict[str, Any]) -> Config:
    return Config(**{k: _from_json(v) for k, v in d.items()})


# --- results ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One candidate's measurement: median seconds, or ``inf`` with the error it raised."""

    kernel: str
    config: Config
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class TuneResult:
    """The chosen candidate of a key, how it was obtained and every candidate's measurement.

    ``source`` is ``"measured"``, ``"memory"``, ``"disk"`` or ``"only"`` (one candidate, so
    nothing was measured or stored).
    """

    kernel: Kernel
    config: Config
    trials: tuple[Trial, ...]
    source: str
    key: dict[str, Any]

    def explain(self) -> str:
        """A table of the candidates' times (or errors), the chosen one marked with ``*``."""
        lines = [f"{self.key['op']} on {self.key['backend']} ({self.source}): "
                 f"{self.kernel.name} {self.config}"]
        for t in self.trials:
            mark = "*" if (t.kernel, t.config) == (self.kernel.name, self.config) else " "
            cost = f"{t.seconds * 1e6:10.1f} us" if math.isfinite(t.seconds) else \
                f"failed: {t.error}"
            lines.append(f" {mark} {t.kernel} {t.config}  {cost}")
        return "\n".join(lines)


def _record(key: dict[str, Any], winner: Candidate, trials: Sequence[Trial],
            label: str) -> dict[str, Any]:
    return {
        "key": key,
        "kernel": winner[0].name,
        "config": _config_json(winner[1]),
        "measured": label,
        "trials": [{"kernel": t.kernel, "config": _config_json(t.config),
                    "seconds": t.seconds if math.isfinite(t.seconds) else None,
                    "error": t.error} for t in trials],
    }


def _trials_from(record: dict[str, Any]) -> tuple[Trial, ...]:
    return tuple(Trial(t["kernel"], _config_from(t["config"]),
                       math.inf if t["seconds"] is None else float(t["seconds"]), t["error"])
                 for t in record.get("trials", ()))


# --- storage ------------------------------------------------------------------------------------

_MEMORY: dict[tuple[str, str], dict[str, Any]] = {}
"""Records by (tune folder or "" when not persisted, key digest): the disk, fronted in-process."""


def clear_memory() -> None:
    """Forget the in-process results, so the next lookups read the disk again."""
    _MEMORY.clear()


def _read(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record at ``path`` if it is readable and for exactly ``key``; else None (a miss)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    ok = (isinstance(record, dict) and record.get("key") == key
          and isinstance(record.get("kernel"), str) and isinstance(record.get("config"), dict))
    return record if ok else None


def _write(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically: a temporary file in the same folder, replaced."""
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- measuring --------------------------------------------------------------------------------

def _sample(m: Meta, rng: np.random.Generator) -> np.ndarray:
    # Floats in [0.5, 1.5): inside every elementwise domain (log, sqrt, divide), no overflow,
    # and clear of range-triggered slow paths. Integers are 0: a valid index or class target.
    if dtypes.is_float(m.dtype):
        return rng.uniform(0.5, 1.5, size=m.shape).astype(m.dtype)
    return np.zeros(m.shape, dtype=m.dtype)


def synthetic_run(opdef: OpDef, backend: str, metas: Sequence[Meta | None],
                  attrs: dict[str, Any], seed: int = 0) -> Run:
    """A ``run(kernel, config)`` on fresh operands of ``metas`` and one reused output.

    This is how the eager selector measures: it sees metas, not the caller's arrays, and the
    caller's data is never written. Raises what the op's meta rule raises for ``metas``.
    """
    b = backends.get(backend)
    xp = b.array_module()
    rng = np.random.default_rng(seed)
    arrays = [None if m is None else xp.asarray(_sample(m, rng)) for m in metas]
    result = opdef.meta(*metas, **attrs)
    out = None if isinstance(result, (list, tuple)) else b.empty(result.shape, result.dtype)

    def run(k: Kernel, cfg: Config) -> Any:
        if k.allocates:
            return k.impl(*arrays, config=cfg, **attrs)
        if out is None:
            raise ArgumentError(f"tsol.{opdef.name}: kernel {k.name} writes one output but "
                                "the op has several")
        k.impl(*arrays, out=out, config=cfg, **attrs)
        return out

    return run


def _progress(line: str, width: list[int]) -> None:
    sys.stderr.write("\r" + line.ljust(width[0]))
    sys.stderr.flush()
    width[0] = max(width[0], len(line))


def _measure(cands: Sequence[Candidate], run: Run, b: backends.Backend, *, repeats: int,
             warmup: int, progress_after: float | None, label: str) -> list[Trial]:
    """Every candidate timed in order; all state is local, so tuning is re-entrant."""
    timer = b.timer()
    trials: list[Trial] = []
    start = time.perf_counter()
    width = [0]
    for i, (k, cfg) in enumerate(cands):
        if progress_after is not None and time.perf_counter() - start >= progress_after:
            _progress(f"tsol autotune {label}: candidate {i + 1}/{len(cands)} "
                      f"({k.name} {cfg})", width)
        once = functools.partial(run, k, cfg)
        try:
            for _ in range(warmup):   # the first call compiles; it is never timed
                once()
            b.synchronize()
            seconds = statistics.median(timer(once) for _ in range(repeats))
            trials.append(Trial(k.name, cfg, float(seconds)))
        except Exception as exc:  # a failing candidate scores infinity
            _count("failures")
            trials.append(Trial(k.name, cfg, math.inf, f"{type(exc).__name__}: {exc}"))
        _count("measurements")
    if width[0]:
        _progress(f"tsol autotune {label}: {len(cands)} candidates in "
                  f"{time.perf_counter() - start:.1f} s", width)
        sys.stderr.write("\n")
    return trials


class Tuner:
    """Measures candidates and keeps results; holds only its settings, so calls may nest.

    - ``repeats``: timings per candidate (the median counts); ``warmup``: untimed runs first
      (at least 1 keeps compilation out of the timings).
    - ``persist``: store and read results under ``<cache_dir>/tune`` (``cache_dir`` defaults to
      the setting in force at each call).
    - ``progress_after``: seconds of tuning after which a progress line goes to stderr
      (None: never).
    """

    def __init__(self, *, repeats: int = 5, warmup: int = 1, persist: bool = True,
                 cache_dir: str | os.PathLike[str] | None = None,
                 progress_after: float | None = 1.0) -> None:
        if repeats < 1 or warmup < 0:
            raise ArgumentError(f"tsol.autotune: repeats={repeats}, warmup={warmup}. "
                                "Fix: repeats >= 1 and warmup >= 0.")
        self.repeats, self.warmup, self.persist = int(repeats), int(warmup), persist
        self.cache_dir, self.progress_after = cache_dir, progress_after

    def folder(self) -> Path | None:
        """Where results are stored now, or None when not persisted."""
        if not self.persist:
            return None
        return Path(self.cache_dir or config.get().cache_dir) / "tune"

    def _where(self, key: dict[str, Any], persistent: bool) -> tuple[tuple[str, str], Path | None]:
        folder = self.folder() if persistent else None
        digest = _digest(key)
        path = None if folder is None else folder / f"{key['op']}-{digest}.json"
        return (str(folder or ""), digest), path

    def lookup(self, opdef: OpDef, backend: str, metas: Sequence[Meta | None],
               attrs: dict[str, Any]) -> TuneResult | None:
        """The stored result of a call (in-process first, then the disk), never measuring."""
        try:
            key, persistent = _key(opdef, backend, metas, attrs)
        except _Unstable:
            return None
        return self._stored(opdef, backend, metas, attrs, key, persistent)

    def _stored(self, opdef: OpDef, backend: str, metas: Sequence[Meta | None],
                attrs: dict[str, Any], key: dict[str, Any], persistent: bool
                ) -> TuneResult | None:
        slot, path = self._where(key, persistent)
        for source in ("memory", "disk"):
            record = _MEMORY.get(slot) if source == "memory" else \
                None if path is None else _read(path, key)
            if record is None:
                continue
            try:
                found = select.find(opdef, backend, metas, attrs, record["kernel"],
                                    _config_from(record["config"]))
            except TypeError:          # a config dict that no longer builds
                found = None
            if found is None:
                _count("stale")
                _MEMORY.pop(slot, None)
                continue
            _MEMORY[slot] = record
            _count(f"{source}_hits")
            return TuneResult(found[0], found[1], _trials_from(record), source, key)
        return None

    def tune(self, opdef: OpDef, backend: str, metas: Sequence[Meta | None],
             attrs: dict[str, Any], run: Run | None = None) -> TuneResult | None:
        """The best candidate of a call: stored, else measured and stored.

        ``run(kernel, config)`` executes the call with one candidate (default:
        ``synthetic_run``). Returns None when there is nothing to choose from or nothing can
        be measured: no legal kernel, attributes with no stable key, operands the meta rule
        rejects, or every candidate failing.
        """
        cands = select.candidates(opdef, backend, metas, attrs)
        if not cands:
            return None
        try:
            key, persistent = _key(opdef, backend, metas, attrs)
        except _Unstable:
            return None
        if len(cands) == 1:
            return TuneResult(cands[0][0], cands[0][1], (), "only", key)
        found = self._stored(opdef, backend, metas, attrs, key, persistent)
        if found is not None:
            return found
        if run is None:
            try:
                run = synthetic_run(opdef, backend, metas, attrs)
            except Exception:  # no measurement: the heuristic decides
                return None
        label = f"{opdef.name} {select.describe(metas)}"
        _count("tunings")
        trials = _measure(cands, run, backends.get(backend), repeats=self.repeats,
                          warmup=self.warmup, progress_after=self.progress_after, label=label)
        # min() keeps the first of equal times: ties go to the earlier candidate.
        best = min(range(len(trials)), key=lambda i: trials[i].seconds)
        if not math.isfinite(trials[best].seconds):
            return None
        winner = cands[best]
        record = _record(key, winner, trials, label)
        slot, path = self._where(key, persistent)
        if _config_from(record["config"]) != winner[1]:
            path = None                # a config JSON cannot carry: this process only
        _MEMORY[slot] = record
        if path is not None:
            try:
                _write(path, record)
            except (OSError, ValueError) as exc:
                warnings.warn(f"tsol.autotune: could not store a result in {path.parent} "
                              f"({exc}); it is kept for this process only.", stacklevel=2)
        return TuneResult(winner[0], winner[1], tuple(trials), "measured", key)

    def best(self, opdef: OpDef, backend: str, metas: Sequence[Meta | None],
             attrs: dict[str, Any], run: Run | None = None) -> Candidate | None:
        """``(kernel, config)`` of ``tune``, or the heuristic choice where tuning returns None."""
        result = self.tune(opdef, backend, metas, attrs, run)
        if result is not None:
            return result.kernel, result.config
        return select.heuristic(opdef, backend, metas, attrs)

    def selector(self) -> Callable[[OpDef, str, list[Meta], dict[str, Any]], Candidate | None]:
        """A ``tsol.ops.base.selector`` that tunes every eager call with this tuner."""

        def tuned(opdef: OpDef, backend: str, metas: list[Meta],
                  attrs: dict[str, Any]) -> Candidate | None:
            # List operands (concat) reach the selector flattened: no operands to rebuild.
            if opdef.extra.get("sequence_inputs"):
                return None
            return self.best(opdef, backend, metas, attrs)

        return tuned


# --- switching it on ----------------------------------------------------------------------

class autotune(contextlib.ContextDecorator):  # used like contextlib's managers
    """Tune the kernel of every eager op called inside the block (or the decorated function).

    ``with autotune(repeats=5, warmup=1) as tuner:`` installs a selector on
    ``tsol.ops.base.selector`` and restores the previous one on exit, also on an exception.
    ``autotune(False)`` switches tuning off inside the block, even under the ``autotune``
    setting. Each call signature is tuned on its first call and reuses the result afterwards,
    as does every later process with the same cache directory. Example::

        >>> import numpy as np, tsol
        >>> with autotune(repeats=3):
        ...     y = tsol.softmax(np.ones((4, 8), np.float32))
    """

    def __init__(self, enabled: bool = True, *, repeats: int = 5, warmup: int = 1,
                 persist: bool = True) -> None:
        self.tuner = Tuner(repeats=repeats, warmup=warmup, persist=persist)
        self._selector = self.tuner.selector() if enabled else None
        self._saved: list[Any] = []

    def __enter__(self) -> Tuner:
        self._saved.append(base.selector)
        base.selector = self._selector
        return self.tuner

    def __exit__(self, *exc: Any) -> bool:
        base.selector = self._saved.pop()
        return False


_SETTING_TUNER = Tuner()


def config_selector(opdef: OpDef, backend: str, metas: list[Meta],
                    attrs: dict[str, Any]) -> Candidate | None:
    """The selector of the ``autotune`` setting: tunes while it is on, else returns None."""
    if not config.get().autotune or opdef.extra.get("sequence_inputs"):
        return None
    return _SETTING_TUNER.best(opdef, backend, metas, attrs)


def install_from_config() -> bool:
    """Make the ``autotune`` setting (``TSOL_AUTOTUNE=1``) take effect; call once at import.

    Installs ``config_selector`` when no selector is installed. It reads the setting on every
    decision, so ``tsol.config.set(autotune=True)`` later in the process works too (plans are
    keyed by the settings, so earlier decisions are not reused). Returns True when
    ``config_selector`` is the selector in force.
    """
    if base.selector is None:
        base.selector = config_selector
    return base.selector is config_selector
