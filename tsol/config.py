"""TSOL's settings, each documented here and read once from a ``TSOL_*`` environment variable.

Change a setting at run time with ``tsol.config.set(name=value)`` or temporarily with
``with tsol.config.override(name=value): ...``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


@dataclass(frozen=True)
class Settings:
    """The settings in force. Each field's environment variable is ``TSOL_<FIELD>`` in capitals."""

    cache_dir: str = ""
    """Where generated kernels, compiled code and tuning results live (``~/.cache/tsol``)."""

    num_threads: int = 0
    """Threads for CPU kernels; 0 means Numba's default (one per core)."""

    deterministic: bool = False
    """Guarantee bitwise-repeatable results; paths that cannot raise NondeterminismError."""

    poison_outputs: bool = False
    """Fill every output TSOL allocates with NaN (or a sentinel) before its kernel runs, so an
    element the kernel fails to write shows up. For tests; costs one extra pass per call."""

    default_backend: str = "cpu"
    """Backend for ops that take no array operands (such as random generators)."""

    autotune: bool = False
    """Choose each eager op's kernel and config by measuring the legal candidates once per
    shape bucket, with results kept under ``<cache_dir>/tune`` (``tsol.schedule.tune``)."""

    check_values: bool = False
    """Run the value checks that need a device-to-host sync: a GPU op waits for its kernels and
    reads a flag back to raise on bad values (today: cuda ``cross_entropy``, class indices out
    of range). Off, such an op does not sync, gives NaN where a value was bad, and its launches
    replay. The CPU backend checks always (it costs nothing there)."""


def _from_environment() -> Settings:
    cache = os.environ.get("TSOL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "tsol")
    return Settings(
        cache_dir=cache,
        num_threads=_env_int("TSOL_NUM_THREADS", 0),
        deterministic=_env_bool("TSOL_DETERMINISTIC", False),
        poison_outputs=_env_bool("TSOL_POISON_OUTPUTS", False),
        default_backend=os.environ.get("TSOL_DEFAULT_BACKEND", "cpu"),
        autotune=_env_bool("TSOL_AUTOTUNE", False),
        check_values=_env_bool("TSOL_CHECK_VALUES", False),
    )


_current: Settings = _from_environment()


def get() -> Settings:
    """Return the settings in force."""
    return _current


def set(**changes: Any) -> Settings:  # noqa: A001 - mirrors the settings vocabulary
    """Change settings for the rest of the process, e.g. ``tsol.config.set(num_threads=4)``."""
    global _current
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set_ for set_ in changes if set_ not in known)
    if unknown:
        from tsol.errors import ArgumentError
        raise ArgumentError(f"tsol.config.set: unknown setting(s) {unknown}. "
                            f"Fix: use one of {sorted(known)}.")
    _current = replace(_current, **changes)
    return _current


@contextlib.contextmanager
def override(**changes: Any) -> Iterator[Settings]:
    """Apply ``changes`` inside a ``with`` block and restore the previous settings after it."""
    global _current
    saved = _current
    try:
        yield set(**changes)
    finally:
        _current = saved
