"""The one facade between TSOL's GPU kernels and the GPU compiler (numba-cuda today).

Every CUDA kernel module imports this module as ``gpu`` and uses only its names, inside kernels
(``gpu.threadIdx.x``, ``gpu.shared_array``, ``gpu.syncthreads``, ``gpu.shfl_down``...) and outside
(``@gpu.kernel``, ``@gpu.device``, ``gpu.launch``). Swapping in numba-hip (``numba.hip`` is
API-compatible) or a numba-cuda successor means editing this file alone.

Launching: ``gpu.launch(k, grid, block, args, shared=0)`` compiles ``k`` once per argument
signature, links it to a cubin and launches that through the CUDA driver on CuPy's current stream,
packing the arguments into Numba's kernel ABI by hand (no dispatcher, no re-typing per call).
Cubins are cached on disk under ``<cache_dir>/cuda/<device>/`` keyed by a hash of the kernel
sources, the signature, the compute capability and the toolchain versions, so a new process
loads a compiled kernel without importing Numba's compiler (float16/bfloat16 kernels included,
which Numba's own cache does not store).

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) kernels run through the simulator's
dispatcher on NumPy arrays; warp shuffles and libdevice do not exist there, so the helpers below
that need them have a simulator twin with the same contract.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numba import cuda, types
from numba.np.numpy_support import from_dtype

from tsol import config, dtypes

SIMULATOR = bool(int(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") or 0))
"""True under Numba's CUDA simulator: kernels run as Python on NumPy arrays."""
COMPILE_ONLY = not SIMULATOR and os.environ.get("TSOL_CUDA_COMPILE_ONLY", "0") not in ("", "0")
"""True in compile-only mode (``TSOL_CUDA_COMPILE_ONLY=1``, no GPU needed): ``launch`` compiles
each new signature to PTX for sm_90 and runs nothing; arrays are NumPy arrays. CI uses it to check
that every kernel signature the tests reach compiles for the H100."""
PREBUILD = COMPILE_ONLY and os.environ.get("TSOL_CUDA_COMPILE_ONLY") == "cubin"
"""``TSOL_CUDA_COMPILE_ONLY=cubin``: compile-only mode that also links each new signature to an
sm_90 cubin in the cache directory, under the key a GPU run looks up, so a cache built on a
machine without a GPU (``bench/gpu_prebuild.py``) spares the GPU machine its compiling."""
HOST_ARRAYS = SIMULATOR or COMPILE_ONLY
PTX_CC = (9, 0)

KERNEL_DIR = Path(__file__).resolve().parent
WARP = 32

# --- names used inside kernels ------------------------------------------------------------------
_KERNEL_NAMES = {
    "threadIdx": "threadIdx", "blockIdx": "blockIdx", "blockDim": "blockDim",
    "gridDim": "gridDim", "grid": "grid", "gridsize": "gridsize", "syncthreads": "syncthreads",
    "shared_array": "shared.array", "local_array": "local.array", "atomic_add": "atomic.add",
    "atomic_max": "atomic.max", "atomic_cas": "atomic.compare_and_swap",
}
"""Facade name -> numba.cuda attribute. ``gpu.shared_array(shape, dtype)``: shape 0 is the
dynamic shared memory given at launch."""


def _resolve(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


if SIMULATOR:
    def __getattr__(name: str) -> Any:
        # The simulator builds a fake ``cuda`` module per launch and only swaps it into globals
        # that name numba.cuda itself; kernels reach it through this module-level hook instead.
        if name in _KERNEL_NAMES:
            from numba.cuda.simulator.kernel import _get_kernel_context
            ctx = _get_kernel_context()
            if ctx is None:
                raise AttributeError(f"gpu.{name} exists only inside a running kernel")
            return _resolve(ctx, _KERNEL_NAMES[name])
        raise AttributeError(name)
else:
    for _name, _path in _KERNEL_NAMES.items():
        globals()[_name] = _resolve(cuda, _path)
    atomic_cas = cuda.atomic.cas
    shfl_down = cuda.shfl_down_sync
    shfl_xor = cuda.shfl_xor_sync
    syncwarp = cuda.syncwarp
    libdevice = cuda.libdevice
declare_device = cuda.declare_device


def device(fn: Callable[..., Any]) -> Any:
    """A device function, inlined into the kernels that call it."""
    if SIMULATOR:
        return cuda.jit(device=True)(fn)
    return cuda.jit(device=True, inline="always")(fn)


# --- bit casts and half-precision storage ---------------------------------------------------------
if SIMULATOR:
    @cuda.jit(device=True)
    def f32_from_bits(i):
        """The float32 whose bit pattern is the int32 ``i``."""
        return np.array(int(i) & 0xFFFFFFFF, np.uint32).view(np.float32)[()]

    @cuda.jit(device=True)
    def f32_to_bits(x):
        """The bit pattern of float32 ``x`` as an int32."""
        return np.int32(np.array(x, np.float32).view(np.int32)[()])
else:
    @device
    def f32_from_bits(i):
        return cuda.libdevice.int_as_float(np.int32(i))

    @device
    def f32_to_bits(x):
        return cuda.libdevice.float_as_int(np.float32(x))


@device
def load_bf16(u):
    """float32 value of the bfloat16 bits ``u`` (uint16 storage)."""
    return f32_from_bits(np.int32(u) << np.int32(16))


@device
def store_bf16(x):
    """bfloat16 bits (uint16) of float32 ``x``, rounded to nearest even; NaN stays NaN."""
    if x != x:
        return np.uint16(0x7FC0)
    b = f32_to_bits(np.float32(x))
    b = b + np.int32(0x7FFF) + ((b >> np.int32(16)) & np.int32(1))
    return np.uint16((b >> np.int32(16)) & np.int32(0xFFFF))


@device
def load_f16(h):
    return np.float32(h)


@device
def store_f16(x):
    return np.float16(x)


def storage(dt: Any) -> tuple[np.dtype, Any, Any]:
    """(array dtype the kernel sees, load, store) for a TSOL dtype: bfloat16 travels as uint16."""
    dt = np.dtype(dt)
    if dt == dtypes.bfloat16:
        return np.dtype(np.uint16), load_bf16, store_bf16
    if dt == np.float16:
        return dt, load_f16, store_f16
    return dt, None, None


def kernel_view(a: Any) -> Any:
    """``a`` as the kernel sees it: bfloat16 arrays reinterpreted as uint16."""
    if a is not None and getattr(a, "dtype", None) == dtypes.bfloat16:
        return a.view(np.uint16)
    return a


# --- math of one value ----------------------------------------------------------------------
def _math(name: str) -> Any:
    """Device ``math.<name>`` (libdevice once compiled); NumPy's ufunc under the simulator,
    where ``math`` would turn a float32 argument into a Python float."""
    if SIMULATOR:
        ufunc = getattr(np, name)
        return cuda.jit(device=True)(lambda x: ufunc(x))
    fn = getattr(math, name)
    return device(lambda x: fn(x))


exp, log, sqrt, cos, sin = (_math(name) for name in ("exp", "log", "sqrt", "cos", "sin"))
"""``gpu.exp(x)`` ...: libdevice's function of x's float type, for hand-written and generated
kernels alike."""


# --- warp and block reductions --------------------------------------------------------------
if SIMULATOR:
    def _sim(name: str) -> Any:
        return __getattr__(name)

    def _warp_reduce(op: Callable[[Any, Any], Any]) -> Any:
        @cuda.jit(device=True)
        def reduce(v, scratch):
            # Shared-memory twin of the shuffle tree: lanes publish, then fold pairwise.
            tid = _sim("threadIdx").x
            lane = tid % WARP
            base = tid - lane
            scratch[tid] = v
            _sim("syncthreads")()
            off = WARP // 2
            while off > 0:
                if lane < off:
                    scratch[base + lane] = op(scratch[base + lane], scratch[base + lane + off])
                _sim("syncthreads")()
                off //= 2
            r = scratch[base]
            _sim("syncthreads")()
            return r
        return reduce
else:
    def _warp_reduce(op: Callable[[Any, Any], Any]) -> Any:
        op_dev = device(op)

        @device
        def reduce(v, scratch):
            off = WARP // 2
            while off > 0:
                v = op_dev(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, off))
                off //= 2
            return v
        return reduce

warp_sum = _warp_reduce(lambda a, b: a + b)
"""``warp_sum(v, scratch)``: the sum over the 32 lanes, in every lane, in a fixed order.
``scratch`` is a shared array of blockDim.x values (used only under the simulator); every thread
of the block must call it."""
warp_max = _warp_reduce(lambda a, b: a if a > b or b != b else b)
"""``warp_max(v, scratch)``: like warp_sum; NaN wins."""


# --- kernels and launching ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _toolchain_stamp() -> str:
    """TSOL's version, numba's (major.minor: its patch releases generate the same CUDA code),
    numba-cuda's, and every linked CUDA source."""
    import numba

    from tsol import __version__
    try:
        from importlib.metadata import version
        ncuda = version("numba-cuda")
    except Exception:  # noqa: BLE001 - an uninstalled distribution only weakens the key
        ncuda = "?"
    numba_minor = ".".join(numba.__version__.split(".")[:2])
    h = hashlib.sha256(f"{__version__}|{numba_minor}|{ncuda}".encode())
    for path in sorted(KERNEL_DIR.rglob("*")):
        if path.suffix in (".cu", ".cuh"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


_PACKAGE = __name__.rsplit(".", 1)[0]


def _code_sources(fn: Callable[..., Any]) -> tuple[frozenset[str], tuple[str, ...]]:
    """What the code of ``fn`` depends on besides its own text: the kernel-package modules of
    the globals its code names (modules such as ``gpu``, and those defining the device functions
    it calls, followed through their code) and the values of the plain constants it names."""
    import types as pytypes

    modules: set[str] = set()
    values: list[str] = []
    seen: set[int] = set()
    stack: list[Any] = [fn]
    while stack:
        f = stack.pop()
        f = getattr(f, "py_func", f)                    # a Numba device function
        if id(f) in seen or not hasattr(f, "__code__"):
            continue
        seen.add(id(f))
        if f is not fn and str(f.__module__).startswith(_PACKAGE + "."):
            modules.add(f.__module__)
        codes, names = [f.__code__], set()
        while codes:
            code = codes.pop()
            names.update(code.co_names)
            codes += [c for c in code.co_consts if hasattr(c, "co_code")]
        for name in sorted(names):
            v = f.__globals__.get(name)
            if isinstance(v, pytypes.ModuleType):
                if v.__name__.startswith(_PACKAGE + "."):
                    modules.add(v.__name__)
            elif isinstance(v, (int, float, bool, str, tuple)):
                values.append(f"{name}={v!r}")
            elif callable(v):
                stack.append(v)
    return frozenset(modules), tuple(values)


@functools.lru_cache(maxsize=None)
def _modules_stamp(modules: frozenset[str]) -> str:
    import sys
    h = hashlib.sha256(_toolchain_stamp().encode())
    for name in sorted(modules):
        h.update(name.encode())
        h.update(Path(sys.modules[name].__file__).read_bytes())
    return h.hexdigest()


def sources_stamp(kern: Kernel) -> str:
    """Hash of what ``kern``'s code comes from: its generated source text (else its module's
    file), the sources of the kernel-package modules its code calls into, the constants it
    names, the linked CUDA sources and the toolchain versions. Editing host code, or a kernel
    generator in a way that leaves a kernel's text alone, keeps its cached cubin valid."""
    if kern._stamp is None:
        import sys
        modules, values = _code_sources(kern.fn)
        text = kern.source
        if text is None:
            text = Path(sys.modules[kern.fn.__module__].__file__).read_text()
        kern._stamp = hashlib.sha256(
            f"{_modules_stamp(modules)}|{values}|{text}".encode()).hexdigest()[:16]
    return kern._stamp


class Kernel:
    """A GPU kernel: the Python function, linked CUDA sources and compile options.

    Compiled lazily per argument signature by ``launch``; ``compile_ptx(argtypes)`` gives PTX
    without a GPU (the CI check that every signature compiles for sm_90).
    """

    def __init__(self, fn: Callable[..., Any], link: Sequence[str] = (),
                 fastmath: bool = False, max_registers: int | None = None,
                 source: str | None = None) -> None:
        self.fn = fn
        self.source = source
        self._stamp: str | None = None
        self.name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        self.link = [str(KERNEL_DIR / p) for p in link]
        self.fastmath = fastmath
        self.max_registers = max_registers
        self._dispatcher: Any = None
        self._launchers: dict[tuple[Any, ...], Callable[..., None]] = {}
        functools.update_wrapper(self, fn)

    def constants(self) -> tuple[str, ...]:
        """What a kernel made by a factory closes over (tile sizes...): part of its cache key."""
        cells = self.fn.__closure__ or ()
        return tuple(repr(c.cell_contents) for c in cells
                     if isinstance(c.cell_contents, (int, float, bool, str, tuple)))

    def dispatcher(self) -> Any:
        if self._dispatcher is None:
            opts: dict[str, Any] = {}
            if not SIMULATOR:
                opts = dict(fastmath=self.fastmath, link=self.link, lineinfo=False)
                if self.max_registers:
                    opts["max_registers"] = self.max_registers
            self._dispatcher = cuda.jit(**opts)(self.fn)
        return self._dispatcher

    def compile_ptx(self, argtypes: Sequence[Any], cc: tuple[int, int] = (9, 0)) -> str:
        """PTX of this kernel for ``argtypes`` (Numba types) at compute capability ``cc``."""
        ptx, _ = cuda.compile_ptx(self.fn, tuple(argtypes), cc=cc, fastmath=self.fastmath)
        return ptx

    def __call__(self, *args: Any) -> Any:
        raise TypeError(f"{self.name} is a GPU kernel: run it with gpu.launch(...)")


def kernel(fn: Callable[..., Any] | None = None, *, link: Sequence[str] = (),
           fastmath: bool = False, max_registers: int | None = None,
           source: str | None = None) -> Any:
    """Decorator: a GPU kernel (``@gpu.kernel`` or ``@gpu.kernel(link=["mma.cu"])``);
    ``source``: the text a generated kernel was compiled from (it keys the cubin cache)."""
    if fn is None:
        return lambda f: Kernel(f, link, fastmath, max_registers, source)
    return Kernel(fn, link, fastmath, max_registers, source)


_SCALARS = {bool: types.boolean, int: types.int64, float: types.float64,
            np.float32: types.float32, np.float64: types.float64, np.int32: types.int32,
            np.int64: types.int64, np.uint32: types.uint32, np.uint64: types.uint64,
            np.bool_: types.boolean}


def arg_key(a: Any) -> Any:
    """A hashable description of one kernel argument: its Numba type's ingredients."""
    t = type(a)
    if t in _SCALARS:
        return t
    flags = a.flags
    return (a.dtype.str, a.ndim, "C" if flags.c_contiguous else "A")


def numba_type(key: Any) -> Any:
    if not isinstance(key, tuple):
        return _SCALARS[key]
    dt, ndim, layout = key
    return types.Array(from_dtype(np.dtype(dt)), ndim, layout)


def _cache_dir(cc: tuple[int, int]) -> Path:
    return Path(config.get().cache_dir) / "cuda" / f"sm{cc[0]}{cc[1]}"


def cached_cubin(kern: Kernel, key: tuple[Any, ...], cc: tuple[int, int],
                 rebuild: bool = False) -> tuple[str, bytes]:
    """The entry name and cubin of ``kern`` for the signature ``key`` at ``cc``: from the disk
    cache (keyed by ``sources_stamp``, the kernel's constants, the signature, ``cc`` and the
    compile options), else compiled, linked and stored there (atomically)."""
    digest = hashlib.sha256(repr((sources_stamp(kern), kern.name, kern.constants(), key, cc,
                                  kern.fastmath, kern.max_registers)).encode()).hexdigest()
    folder = _cache_dir(cc)
    stem = f"{kern.name.replace('.', '_')}-{digest[:20]}"
    meta_path, cubin_path = folder / f"{stem}.json", folder / f"{stem}.cubin"
    if not rebuild and meta_path.exists() and cubin_path.exists():
        return json.loads(meta_path.read_text())["entry"], cubin_path.read_bytes()
    entry, cubin = _link(kern, key, cc)
    folder.mkdir(parents=True, exist_ok=True)
    for path, data in ((cubin_path, cubin), (meta_path, json.dumps({"entry": entry}).encode())):
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return entry, cubin


_TARGET_LOCK = threading.Lock()


def _link(kern: Kernel, key: tuple[Any, ...], cc: tuple[int, int]) -> tuple[str, bytes]:
    """Compile ``kern`` for ``key`` as Numba's dispatcher would (its options, its linked files)
    and link it to a cubin for ``cc``, without loading it. Without a GPU (``PREBUILD``) Numba is
    told the target ``cc`` in place of the current device's."""
    from numba.cuda import codegen as ncodegen
    from numba.cuda import dispatcher as ndispatcher

    disp = kern.dispatcher()
    argtypes = tuple(numba_type(k) for k in key)
    with _TARGET_LOCK:
        saved = ndispatcher.get_current_device, ncodegen.CUDACodeLibrary._ensure_cc
        if PREBUILD:
            ndispatcher.get_current_device = lambda: type("Target", (), {"compute_capability": cc})
            ncodegen.CUDACodeLibrary._ensure_cc = lambda self, c: cc if c is None else c
        try:
            compiled = ndispatcher._Kernel(disp.py_func, argtypes, **disp.targetoptions)
            cubin = compiled._codelibrary.get_cubin(cc=cc)
        finally:
            ndispatcher.get_current_device, ncodegen.CUDACodeLibrary._ensure_cc = saved
    if not isinstance(cubin, (bytes, bytearray)):     # cuda.core ObjectCode
        cubin = cubin.code
    return compiled.entry_name, bytes(cubin)


class _Launcher:
    """One compiled signature: a CUfunction and the packing of arguments into Numba's ABI."""

    def __init__(self, kern: Kernel, key: tuple[Any, ...]) -> None:
        import cupy
        self.cupy = cupy
        self.driver = cupy.cuda.driver
        dev = cupy.cuda.Device()
        cc = tuple(int(c) for c in dev.compute_capability)
        cc = (cc[0], cc[1]) if len(cc) == 2 else (int(dev.compute_capability[:-1]),
                                                    int(dev.compute_capability[-1]))
        entry, cubin = cached_cubin(kern, key, cc)
        try:
            self.module = self.driver.moduleLoadData(cubin)
        except self.driver.CUDADriverError:
            # A cached cubin this driver refuses (one built by a newer linker elsewhere).
            entry, cubin = cached_cubin(kern, key, cc, rebuild=True)
            self.module = self.driver.moduleLoadData(cubin)
        self.func = self.driver.moduleGetFunction(self.module, entry)
        self.shared_limit = 48 * 1024
        # Argument slots: 8 bytes each (Numba passes every array field and scalar as one slot).
        self.packers = [self._packer(k) for k in key]
        nslots = sum(n for n, _ in self.packers)
        self.local = threading.local()
        self.nslots = nslots

    @staticmethod
    def _packer(key: Any) -> tuple[int, Callable[[Any, list[Any]], None]]:
        if not isinstance(key, tuple):
            if key in (float, np.float64):
                return 1, lambda a, out: out.append(np.float64(a).view(np.uint64))
            if key is np.float32:
                return 1, lambda a, out: out.append(np.uint64(np.float32(a).view(np.uint32)))
            return 1, lambda a, out: out.append(int(a) & 0xFFFFFFFFFFFFFFFF)
        _, ndim, _ = key

        def pack(a: Any, out: list[Any]) -> None:
            out += (0, 0, a.size, a.itemsize, a.data.ptr)
            out += a.shape
            out += a.strides
        return 5 + 2 * ndim, pack

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        bufs = getattr(self.local, "bufs", None)
        if bufs is None:
            values = np.zeros(max(self.nslots, 1), np.uint64)
            ptrs = values.ctypes.data + 8 * np.arange(len(values), dtype=np.uint64)
            bufs = self.local.bufs = (values, ptrs)
        return bufs

    def slots(self, args: Sequence[Any]) -> tuple[np.ndarray, list[int]]:
        """The packed argument values and the slots holding array data pointers."""
        flat: list[Any] = []
        pointer_slots = []
        for (n, pack), a in zip(self.packers, args):
            if n > 1:
                pointer_slots.append(len(flat) + 4)
            pack(a, flat)
        return np.array([int(v) & 0xFFFFFFFFFFFFFFFF for v in flat], np.uint64), pointer_slots

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int,
                 args: Sequence[Any]) -> None:
        packed, _ = self.slots(args)
        self.run(grid, block, shared, packed)

    def run(self, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int,
            packed: np.ndarray) -> None:
        values, ptrs = self.buffers()
        values[:len(packed)] = packed
        if shared > self.shared_limit:
            self.driver.funcSetAttribute(self.func, 8, shared)  # MAX_DYNAMIC_SHARED_SIZE_BYTES
            self.shared_limit = shared
        stream = self.cupy.cuda.get_current_stream().ptr
        self.driver.launchKernel(self.func, grid[0], grid[1], grid[2], block[0], block[1],
                                 block[2], shared, stream, ptrs.ctypes.data, 0)


class Prepared:
    """A launch with its argument layout fixed: per call only the arrays' data pointers change.

    ``prepare(k, grid, block, args)`` builds one from example arguments; calling it with the
    new data pointers (``[a.data.ptr, ...]`` in the order of the array arguments) launches.
    The caller keys prepared launches by everything but the pointers (shapes, strides, dtypes,
    scalar values).
    """

    __slots__ = ("launcher", "grid", "block", "shared", "packed", "pointer_slots")

    def __init__(self, launcher: _Launcher, grid: tuple[int, int, int],
                 block: tuple[int, int, int], shared: int, args: Sequence[Any]) -> None:
        self.launcher, self.grid, self.block, self.shared = launcher, grid, block, shared
        self.packed, self.pointer_slots = launcher.slots(args)

    def __call__(self, pointers: Sequence[int]) -> None:
        rec = getattr(recording, "rec", None)
        if rec is not None:
            rec.note_prepared(self, pointers)
        packed = self.packed
        for slot, ptr in zip(self.pointer_slots, pointers):
            packed[slot] = ptr
        self.launcher.run(self.grid, self.block, self.shared, packed)


    def relocated(self, relocs: Sequence[tuple[int, int]], align: Sequence[int] = (),
                  fixed: dict[int, int] | None = None, modulus: int = 16
                  ) -> Callable[[Sequence[Any]], bool]:
        """This launch as one flat function of arrays: pointer slot k gets the data pointer of
        ``arrays[relocs[k][0]]`` plus byte offset ``relocs[k][1]``, or ``fixed[i]`` plus the
        offset for a source ``i`` that is a constant. Each thread packs into its own argument
        buffer, written whole once; a call rewrites the pointer slots alone. It returns False,
        launching nothing, when ``arrays[i]``'s pointer modulo ``modulus`` is not
        ``align[i]``."""
        launcher, grid, block, shared = self.launcher, self.grid, self.block, self.shared
        fixed = fixed or {}
        packed, local = self.packed.copy(), threading.local()
        spec = []
        for slot, (i, off) in zip(self.pointer_slots, relocs):
            if i in fixed:
                packed[slot] = fixed[i] + off
            else:
                spec.append((slot, i, off, align[i] if i < len(align) else None))
        launch_kernel, func = launcher.driver.launchKernel, launcher.func
        current_stream = launcher.cupy.cuda.get_current_stream

        def run(arrays: Sequence[Any]) -> bool:
            bufs = getattr(local, "bufs", None)
            if bufs is None:
                values = packed.copy()
                ptrs = values.ctypes.data + 8 * np.arange(len(values), dtype=np.uint64)
                bufs = local.bufs = (values, ptrs, ptrs.ctypes.data)   # ptrs kept alive
            values, _, params = bufs
            for slot, i, off, residue in spec:
                p = arrays[i].data.ptr
                if residue is not None and p % modulus != residue:
                    return False
                values[slot] = p + off
            launch_kernel(func, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared,
                          current_stream().ptr, params, 0)
            return True
        return run


def prepare(kern: Kernel, grid: Any, block: Any, args: Sequence[Any],
            shared: int = 0) -> Prepared | None:
    """A ``Prepared`` launch of ``kern`` for arguments laid out like ``args``; None under the
    simulator and in compile-only mode (use ``launch`` there)."""
    if HOST_ARRAYS:
        return None
    key = tuple(arg_key(a) for a in args)
    launcher = kern._launchers.get(key)
    if launcher is None:
        launcher = kern._launchers[key] = _Launcher(kern, key)
    return Prepared(launcher, _dim3(grid), _dim3(block), shared, args)


def _dim3(d: Any) -> tuple[int, int, int]:
    if isinstance(d, int):
        return (d, 1, 1)
    d = tuple(int(x) for x in d)
    return d + (1,) * (3 - len(d))


def _code_text(code: Any) -> str:
    """A function's bytecode, names and constants, independent of where its file lives."""
    consts = [_code_text(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return repr((code.co_code, code.co_names, consts))


def _compile_checked(kern: Kernel, key: tuple[Any, ...]) -> None:
    """Compile-only mode: compile ``kern`` for ``key`` to PTX, once per kernel code, signature
    and toolchain. A marker file under the cache directory records each success, so a later
    run (CI on an unchanged tree) skips what compiled before; edits change the key."""
    if PREBUILD:
        cached_cubin(kern, key, PTX_CC)
        return
    digest = hashlib.sha256(repr((sources_stamp(kern), kern.name, kern.constants(), key, PTX_CC,
                                  kern.fastmath, _code_text(kern.fn.__code__))).encode())
    marker = _cache_dir(PTX_CC).parent / "ptx-checked" / digest.hexdigest()[:32]
    if marker.exists():
        return
    kern.compile_ptx([numba_type(k) for k in key], PTX_CC)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def launch(kern: Kernel, grid: Any, block: Any, args: Sequence[Any], shared: int = 0) -> None:
    """Run ``kern`` on ``grid`` x ``block`` threads with ``args`` (arrays and scalars).

    Arrays must be CuPy arrays (NumPy arrays under the simulator); bfloat16 arrays go in as their
    ``kernel_view``. ``shared`` is the dynamic shared memory in bytes.
    """
    grid, block = _dim3(grid), _dim3(block)
    if min(grid) <= 0:
        return
    rec = getattr(recording, "rec", None)
    if rec is not None:
        rec.note(kern, grid, block, args, shared)
    if COMPILE_ONLY:
        key = tuple(arg_key(a) for a in args)
        if key not in kern._launchers:
            _compile_checked(kern, key)
            kern._launchers[key] = lambda *a: None
            COMPILED.append((kern.name, key))
        return
    if SIMULATOR:
        # Hand the simulator our NumPy memory as its device arrays: no copies, any strides.
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        args = [FakeCUDAArray(a) if isinstance(a, np.ndarray) else a for a in args]
        kern.dispatcher()[grid, block, 0, shared](*args)
        return
    key = tuple(arg_key(a) for a in args)
    launcher = kern._launchers.get(key)
    if launcher is None:
        launcher = kern._launchers[key] = _Launcher(kern, key)
    launcher(grid, block, shared, args)


# --- register usage (no GPU needed) --------------------------------------------------------------
REGISTERS_PER_BLOCK = 64 * 1024
"""32-bit registers a block may use on sm_70 to sm_90: a launch whose threads x registers a thread
exceed this fails (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)."""


def register_cap(threads: int) -> int:
    """``max_registers`` that lets ``threads`` threads a block launch (multiples of 8, <= 255)."""
    return min(255, REGISTERS_PER_BLOCK // max(1, threads) // 8 * 8)


def resource_usage(kern: Kernel, argtypes: Sequence[Any], cc: tuple[int, int] = PTX_CC
                   ) -> dict[str, int]:
    """Registers a thread and spill bytes (stores, loads) of ``kern`` for ``argtypes`` (Numba
    types) at ``cc``, honouring its ``max_registers``: its PTX assembled by nvJitLink, as
    launches link it (no GPU needed)."""
    import re

    from cuda.bindings import nvjitlink

    ptx = kern.compile_ptx(argtypes, cc).encode()
    opts = [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"]
    if kern.max_registers:
        opts.append(f"-maxrregcount={kern.max_registers}")
    handle = nvjitlink.create(len(opts), opts)
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, ptx, len(ptx), "kernel.ptx")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    text = bytes(log)
    found = re.search(rb"[Uu]sed (\d+) registers", text)
    if found is None:
        raise RuntimeError(f"no register count in the link log of {kern.name}")
    spills = re.search(rb"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stores, loads = (int(spills.group(1)), int(spills.group(2))) if spills else (0, 0)
    return {"registers": int(found.group(1)), "spill_stores": stores, "spill_loads": loads}


def registers(kern: Kernel, argtypes: Sequence[Any], cc: tuple[int, int] = PTX_CC) -> int:
    """Registers a thread of ``kern`` uses for ``argtypes`` at ``cc`` (``resource_usage``)."""
    return resource_usage(kern, argtypes, cc)["registers"]


recording = threading.local()
"""``recording.rec``: the ``replay`` recorder of the call being recorded on this thread."""

COMPILED: list[tuple[str, tuple[Any, ...]]] = []
"""(kernel, signature) pairs compiled to PTX in compile-only mode, in order."""


def array_module() -> Any:
    """NumPy under the simulator and in compile-only mode, else CuPy."""
    if HOST_ARRAYS:
        return np
    import cupy
    return cupy


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["SIMULATOR", "COMPILE_ONLY", "HOST_ARRAYS", "WARP", "declare_device", "device",
           "f32_from_bits", "f32_to_bits", "load_bf16", "store_bf16", "load_f16", "store_f16",
           "storage", "kernel_view", "exp", "log", "sqrt", "cos", "sin", "warp_sum", "warp_max",
           "kernel", "Kernel", "launch", "arg_key", "numba_type", "array_module", "cdiv",
           "prepare", "Prepared", "REGISTERS_PER_BLOCK", "register_cap", "registers"]
