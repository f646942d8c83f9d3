"""Kernel selection: the legal candidates of a call, the heuristic choice, the kernels' source hash.

A candidate is a ``(Kernel, Config)`` pair. The candidates of a call are every kernel registered
for the op on the backend that is legal for the operands (vendor calls included: they compete,
they never replace ours), each with every config it declares, in a fixed order:

- kernels in ``tsol.registry.kernels`` order (priority, vendors last, then name);
- for each kernel its heuristic config first, then ``Kernel.configs`` in declared order, each
  pair once.

The order never depends on timings or on the process, so deterministic mode (which searches in
this order and breaks timing ties by it) sees the same list in every run. The heuristic choice is
what the eager path makes without a tuner: the first legal non-vendor kernel with its heuristic
config.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

from tsol.ops.base import Meta
from tsol.registry import Config, Kernel, OpDef, kernels

Candidate = tuple[Kernel, Config]
"""One kernel with one of its configs."""

__all__ = ["Candidate", "candidates", "heuristic", "find", "source_hash", "describe"]


def candidates(opdef: OpDef, backend: str, metas: Sequence[Meta | None],
               attrs: dict[str, Any]) -> list[Candidate]:
    """Every legal ``(kernel, config)`` of a call, in the fixed order of the module docstring.

    ``metas`` are the operands' metas as the eager path passes them to ``select`` (None for an
    optional input left out); ``attrs`` the normalized attributes. Returns an empty list when no
    kernel is legal (the op then runs its decomposition or raises). Example::

        >>> from tsol.registry import get_op
        >>> from tsol.ops.base import Meta
        >>> import numpy as np
        >>> cands = candidates(get_op("softmax"), "cpu", [Meta((8, 8), np.dtype("f4"))],
        ...                    {"axis": 1})
        >>> cands[0][0].name
        'softmax_cpu'
    """
    found: list[Candidate] = []
    for k in kernels(opdef.name, backend):
        if not k.legal(metas, attrs):
            continue
        seen: set[Config] = set()
        for cfg in (k.default_config(metas, attrs), *k.configs):
            if cfg not in seen:
                seen.add(cfg)
                found.append((k, cfg))
    return found


def heuristic(opdef: OpDef, backend: str, metas: Sequence[Meta | None],
              attrs: dict[str, Any]) -> Candidate | None:
    """The untuned choice: the first legal non-vendor kernel and its heuristic config, or None.

    The same decision ``tsol.ops.base.select`` makes when no selector is installed.
    """
    for k in kernels(opdef.name, backend):
        if k.vendor is None and k.legal(metas, attrs):
            return k, k.default_config(metas, attrs)
    return None


def find(opdef: OpDef, backend: str, metas: Sequence[Meta | None], attrs: dict[str, Any],
         name: str, cfg: Config) -> Candidate | None:
    """The candidate named ``name`` with ``cfg`` if it is still registered, legal and ``cfg`` fits.

    A config fits when it is one of the kernel's candidate configs for this call, or has the
    same knob names as one of them: a shape bucket holds several shapes, and a heuristic config
    computed for one of them (a width equal to that shape's row length) is valid for the others.
    """
    for k in kernels(opdef.name, backend):
        if k.name != name or not k.legal(metas, attrs):
            continue
        known = (k.default_config(metas, attrs), *k.configs)
        knobs = set(cfg.asdict())
        if cfg in known or any(set(c.asdict()) == knobs for c in known):
            return k, cfg
    return None


_FILE_HASHES: dict[str, tuple[tuple[int, int], str]] = {}


def _file_hash(path: str) -> str:
    """sha256 of one file's bytes, recomputed only when its size or mtime changes."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _FILE_HASHES.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    _FILE_HASHES[path] = (stamp, digest)
    return digest


def source_hash(opdef: OpDef, backend: str) -> str:
    """Hash of the source files of every kernel registered for the op on ``backend``.

    Editing any of them (a new tile loop, a changed config list) invalidates tuning results
    measured with the old code. Files are named by base name so that two checkouts of the same
    sources share results.
    """
    h = hashlib.sha256()
    for path in sorted({k.source_file for k in kernels(opdef.name, backend)}):
        h.update(os.path.basename(path).encode())
        h.update(_file_hash(path).encode() if path else b"-")
    return h.hexdigest()[:16]


def describe(metas: Sequence[Meta | None]) -> str:
    """Operand metas as one short string for progress lines: ``float32[1000, 64]``."""
    return ", ".join("-" if m is None else str(m) for m in metas)
