"""Numba plumbing for CPU kernels: the jit decorators, TSOL's compile cache, generated modules.

- ``kernel_jit`` / ``scalar_jit`` are ``numba.njit`` with TSOL's options (``cache=True``).
- Compiled code is cached under ``<cache_dir>/numba``. The cache is stamped with a hash of every
  kernel source file (not only the function's own file), so editing a shared scalar helper
  recompiles the kernels that inline it, which Numba's own file-stamp cache would miss.
- ``generated_module(name, source)`` writes a kernel module produced from a template into the
  cache directory and imports it, so generated kernels are cached like hand-written ones.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numba
from numba.core import caching as _numba_caching
from numba.core.caching import _CacheLocator

from tsol import config

KERNEL_ROOT = Path(__file__).resolve().parent.parent
"""``tsol/kernels``: cache paths of kernel files are named relative to it, so every checkout
of the same sources shares one cache."""
CPU_ROOT = KERNEL_ROOT / "cpu"
"""``tsol/kernels/cpu``: every file below it takes part in the cache stamp (the GPU backends'
kernels never reach CPU code, so their edits leave the CPU cache valid)."""


def cache_root() -> Path:
    return Path(config.get().cache_dir) / "cpu"


@functools.lru_cache(maxsize=None)
def sources_stamp() -> str:
    """Hash of every CPU kernel source file, numba's version and TSOL's version."""
    from tsol import __version__
    h = hashlib.sha256(f"{__version__}|{numba.__version__}".encode())
    for path in sorted(CPU_ROOT.rglob("*.py")):
        h.update(path.relative_to(KERNEL_ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class TSOLCacheLocator(_CacheLocator):
    """Numba cache locator for TSOL's kernel files and generated modules."""

    def __init__(self, py_func, py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        where = Path(py_file).resolve()
        if where.is_relative_to(KERNEL_ROOT):
            where = Path("tsol/kernels") / where.relative_to(KERNEL_ROOT)
        digest = hashlib.sha1(str(where).encode()).hexdigest()[:12]
        self._cache_path = str(cache_root() / "numba" / f"{Path(py_file).stem}_{digest}")

    def ensure_cache_path(self) -> None:
        os.makedirs(self._cache_path, exist_ok=True)
        tempfile.TemporaryFile(dir=self._cache_path).close()

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        own = hashlib.sha1(Path(self._py_file).read_bytes()).hexdigest()[:16]
        return f"{sources_stamp()}-{own}"

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file: str):
        path = Path(py_file).resolve()
        if path.is_relative_to(KERNEL_ROOT) or path.is_relative_to(cache_root().resolve()):
            return cls(py_func, py_file)
        return None


# Numba renamed _CacheImpl to CacheImpl in 0.61; the locator list is the supported extension point.
_cache_impl = getattr(_numba_caching, "CacheImpl", None) or _numba_caching._CacheImpl
if TSOLCacheLocator not in _cache_impl._locator_classes:
    _cache_impl._locator_classes.insert(0, TSOLCacheLocator)

if config.get().num_threads:
    numba.set_num_threads(min(config.get().num_threads, numba.config.NUMBA_NUM_THREADS))

_DISPATCHERS: list = []


def kernel_jit(fn=None, **options):
    """Decorator for a kernel entry point: ``@kernel_jit(parallel=True)`` or ``@kernel_jit``.

    ``numba.njit`` with ``cache=True`` and ``nogil=True``; compiles lazily on first call.
    """
    def wrap(f):
        dispatcher = numba.njit(cache=True, nogil=True, **options)(f)
        _DISPATCHERS.append(dispatcher)
        return dispatcher
    return wrap(fn) if fn is not None else wrap


def compile_stats() -> dict[str, int]:
    """Cache hits and misses of every CPU kernel so far: misses mean fresh compilation."""
    hits = sum(sum(d.stats.cache_hits.values()) for d in _DISPATCHERS)
    misses = sum(sum(d.stats.cache_misses.values()) for d in _DISPATCHERS)
    return {"kernels": len(_DISPATCHERS), "cache_hits": hits, "cache_misses": misses}


scalar_jit = functools.partial(numba.njit, cache=True, inline="always")
"""Decorator for a scalar helper that kernels inline (math functions, dtype conversions)."""


def generated_module(name: str, source: str) -> ModuleType:
    """Import kernel module ``source`` (from a template) under a name unique to its content.

    The file lives at ``<cache_dir>/cpu/gen/<name>_<hash>.py``; the hash covers the source and
    the kernel sources it may call, so a changed template or helper gives a new module.
    """
    digest = hashlib.sha256(f"{sources_stamp()}|{source}".encode()).hexdigest()[:16]
    modname = f"tsol_gen_{name}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    folder = cache_root() / "gen"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{modname}.py"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


TEMPLATE_JIT_OPTIONS = "fastmath={'contract'}, error_model='numpy'"
"""``$JIT_OPTIONS`` of generated kernels: FMA contraction only (it speeds polynomials up and keeps
NaN/inf semantics) and NumPy's error model (1/0 and log(0) give inf and -inf, not an error)."""


def storage_kind(dt: Any) -> str:
    """Generated-module kind of a float dtype: 'f64', 'f32' or 'half' (float16, bfloat16)."""
    from tsol import dtypes
    return "half" if dt in dtypes.HALF else "f64" if dt == dtypes.float64 else "f32"


def render_template(name: str, template: str, **subs: str) -> ModuleType:
    """``generated_module`` of ``template`` with ``$NAME`` fields (and $JIT_OPTIONS) filled."""
    from string import Template
    source = Template(template).substitute(subs, JIT_OPTIONS=TEMPLATE_JIT_OPTIONS)
    return generated_module(name, source)
