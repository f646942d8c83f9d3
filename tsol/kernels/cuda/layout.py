"""CUDA kernels for the layout ops: views where CuPy gives views, bit-moving copies otherwise.

A layout op never converts a value, so kernels see every dtype as the unsigned integer of its
item size (bool as uint8, bfloat16 as uint16), and a copy whose rows are contiguous and aligned
moves wider words (up to uint64). A source of any strides is read through a 1-D window over its
memory (lowest to highest address touched) with element offsets, the destination the same way,
so one kernel of each shape serves every dtype of one width; the kernels are generated per
(unit width, number of collapsed dims). Dims are collapsed first (size-1 dims dropped,
neighbours that are one run in both source and destination merged); then one of:

- ``rows``: the last dim is the fast one of both sides (or the source's fast dim is the last
  anyway): each warp copies chunks of ``32 * U`` consecutive units of one row, every lane
  issuing its ``U`` loads before its stores; the warp's chunk index gives the row and the lead
  dims once per chunk. This is the coalesced copy (contiguous runs, concat slabs).
- ``tile``: the source's fast dim is not the destination's last (a transpose): 32 x 32 tiles
  pass through shared memory (33-unit rows, so the transposed reads hit distinct banks), read
  coalesced along the source's fast dim and written coalesced along the destination's; blocks
  of 32 x 8 threads, grid x along the destination's last dim, grid y over the other tiles.
- ``elems``: short rows (fewer than 32 units): one element per thread, indices by division.

pad is a gather of the same rows shape: output rows whose lead indices fall in the padding
are the constant, other rows read their source row, with edge and reflect columns mapped by
the mode's index rule (a row of the source read once per output row that maps to it).

Every call with a layout seen before (shapes, strides, dtypes, attrs, pointer alignment)
replays the launches its first call recorded, with new data pointers only (``replay``).
"""

from __future__ import annotations

from builtins import slice as py_slice
from typing import Any, Callable, Sequence

import numpy as np

from tsol import config as settings
from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
from tsol.kernels.cuda import reduction as red
from tsol.kernels.cuda.layout_util import StridedArg
from tsol.kernels.strides import c_strides, collapse
from tsol.registry import Config, kernel

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
BLOCK = 256
MIN_ROW = 32
"""Rows shorter than this many units go to the per-element kernel (a warp chunk would idle)."""


def _chunk_units(unit: int) -> int:
    """Units a lane moves per chunk: 32 bytes, at least 4 loads in flight."""
    return max(4, 32 // unit)


def nocopy_strides(shape: Sequence[int], strides: Sequence[int], itemsize: int,
                   new: Sequence[int]) -> tuple[int, ...] | None:
    """Byte strides of a view of (``shape``, ``strides``) reshaped to ``new`` in C order, or
    None when none exists: NumPy's no-copy reshape rule (``_attempt_nocopy_reshape``)."""
    if int(np.prod(shape)) == 0:
        return tuple(s * itemsize for s in c_strides(new))
    old = [(n, s) for n, s in zip(shape, strides) if n != 1]
    od, os_ = [n for n, _ in old], [s for _, s in old]
    out = [0] * len(new)
    oi, oj, ni, nj = 0, 1, 0, 1
    while ni < len(new) and oi < len(od):
        np_, op = new[ni], od[oi]
        while np_ != op:
            if np_ < op:
                np_ *= new[nj]
                nj += 1
            else:
                op *= od[oj]
                oj += 1
        if any(os_[k] != od[k + 1] * os_[k + 1] for k in range(oi, oj - 1)):
            return None
        out[nj - 1] = os_[oj - 1]
        for k in range(nj - 1, ni, -1):
            out[k - 1] = out[k] * new[k]
        ni, nj, oi, oj = nj, nj + 1, oj, oj + 1
    last = out[ni - 1] if ni >= 1 else itemsize
    for k in range(ni, len(new)):
        out[k] = last
    return tuple(out)


# --- windows: what a kernel sees of an operand ---------------------------------------------------

class Operand:
    """An operand seen as a 1-D window of unsigned ``unit``-byte words from its lowest address.

    ``origin`` (in units) is where element 0 sits in the window, ``strides`` are in elements of
    the operand (``scale`` elements a unit once widened).
    """

    def __init__(self, a: Any) -> None:
        self.array = a
        self.itemsize = a.dtype.itemsize
        st = [s // self.itemsize for s in a.strides]
        if any(s % self.itemsize for s in a.strides):
            raise ValueError("strides that split items")
        self.strides = tuple(0 if n == 1 else s for n, s in zip(a.shape, st))
        self.low = sum(s * (n - 1) for s, n in zip(self.strides, a.shape) if s < 0)
        self.span = 1 + sum(abs(s) * (n - 1) for s, n in zip(self.strides, a.shape))
        self.start = replay.data_ptr(a) + self.low * self.itemsize

    def window(self, unit: int) -> Any:
        """The window as a kernel argument, in words of ``unit`` bytes (span must divide)."""
        words = self.span * self.itemsize // unit
        dt = np.dtype(_UINT[unit])
        if not gpu.HOST_ARRAYS:
            return StridedArg(dt, self.start, (words,), (unit,))
        u = self.array.view(_UINT[self.itemsize])
        lowest = u[tuple(py_slice(None, None, -1) if s < 0 else py_slice(None)
                         for s in self.strides)]
        flat = np.lib.stride_tricks.as_strided(lowest, (self.span,), (self.itemsize,))
        return flat.view(dt)


_replays = replay.Replays()
"""Recorded launches per call layout: later calls of a layout pass new pointers only."""


def _run(name: str, arrays: Sequence[Any], attrs: Any, planned: Callable[[], None]) -> None:
    """``planned()`` launches the copies of one call; later calls of the same layout (shapes,
    strides, dtypes, attrs, pointer alignment) replay its launches (``replay``)."""
    key = (name, attrs, *[(a.shape, a.strides, a.dtype.str, replay.data_ptr(a) % 16)
                          for a in arrays])
    _replays.run(key, arrays, planned)


# --- generated kernels ---------------------------------------------------------------------------

_ROWS = '''
def {name}(src, dst, s0, d0, n, ss, ds, cpr, chunks{lead}):
    tid = gpu.blockIdx.x * {block} + gpu.threadIdx.x
    lane = tid & 31
    c = tid >> 5
    nw = (gpu.gridDim.x * {block}) >> 5
    while c < chunks:
{split}
{decompose}
        if j + {last} < n:
{full}
        else:
{tail}
        c += nw
'''

_TILE = '''
def {name}(src, dst, s0, d0, m, n, sm, sn, dm, dn, tm, ys{lead}):
    tile = gpu.shared_array((32, 33), np.{unit})
    tx = gpu.threadIdx.x & 31
    ty = gpu.threadIdx.x >> 5
    j0 = gpu.blockIdx.x * 32
    y = gpu.blockIdx.y
    while y < ys:
{split}
{decompose}
        for k in range(4):
            i = i0 + tx
            j = j0 + ty + 8 * k
            if i < m and j < n:
                tile[ty + 8 * k, tx] = src[so + i * sm + j * sn]
        gpu.syncthreads()
        for k in range(4):
            i = i0 + ty + 8 * k
            j = j0 + tx
            if i < m and j < n:
                dst[do + i * dm + j * dn] = tile[tx, ty + 8 * k]
        gpu.syncthreads()
        y += gpu.gridDim.y
'''

_ELEMS = '''
def {name}(src, dst, s0, d0, total, ss, ds{lead}):
    i = gpu.grid(1)
    step = gpu.gridsize(1)
    while i < total:
        row = i // n_last
        j = i - row * n_last
{decompose}
        dst[do + j * ds] = src[so + j * ss]
        i += step
'''

_PAD = '''
def {name}(src, dst, s0, fill, n_out, lo, n, s, cpr, chunks{lead}):
    tid = gpu.blockIdx.x * {block} + gpu.threadIdx.x
    lane = tid & 31
    c = tid >> 5
    nw = (gpu.gridDim.x * {block}) >> 5
    f = np.{unit}(fill)
    while c < chunks:
        row = c // cpr
        j = (c - row * cpr) * {chunk} + lane
        do = row * n_out
        so = s0
        inside = True
{decompose}
{gather}
{scatter}
        c += nw
'''

_MODES = {
    "constant": "    return -1",
    "edge": "    return 0 if x < 0 else n - 1",
    "reflect": ("    if n == 1:\n        return 0\n    p = 2 * (n - 1)\n    m = x % p\n"
                "    if m < 0:\n        m += p\n    return m if m < n else p - m"),
}
"""Source index of padded position ``x`` (outside [0, n)) along an axis of ``n``; -1: the
constant."""


def _lead_params(count: int, tables: Sequence[str]) -> str:
    """', n1, ..., a0, ..., b0, ...': the sizes (all but the first) and strides of lead dims."""
    names = [f"n{k}" for k in range(1, count)]
    for t in tables:
        names += [f"{t}{k}" for k in range(count)]
    return "".join(f", {x}" for x in names)


def _decompose(count: int, pairs: Sequence[tuple[str, str, str]], var: str = "row",
               indent: int = 8) -> str:
    """Lines splitting ``var`` into ``count`` lead indices (last fastest) and adding
    ``index * table_k`` to each (target, start, table) of ``pairs``."""
    pad = " " * indent
    lines = [f"{pad}{t} = {s}" for t, s, _ in pairs]
    if count:
        lines.append(f"{pad}q = {var}")
    for k in range(count - 1, 0, -1):
        lines.append(f"{pad}ik = q % n{k}")
        lines.append(f"{pad}q = q // n{k}")
        lines += [f"{pad}{t} += ik * {tab}{k}" for t, _, tab in pairs]
    if count:
        lines += [f"{pad}{t} += q * {tab}0" for t, _, tab in pairs]
    return "\n".join(lines)


_kernels: dict[tuple[Any, ...], gpu.Kernel] = {}


def _build(key: tuple[Any, ...], name: str, source: str, extra: dict[str, Any] | None = None
           ) -> gpu.Kernel:
    k = _kernels.get(key)
    if k is None:
        ns = {"gpu": gpu, "np": np, **(extra or {})}
        k = _kernels[key] = red.build(name, source, ns, __name__)
    return k


def rows_kernel(unit: int, lead: int) -> gpu.Kernel:
    """Warp chunks of rows: ``lead`` lead dims (sizes n1.., source strides a.., dest b..)."""
    U = _chunk_units(unit)
    name = f"copy_rows_u{8 * unit}_l{lead}"
    full = [f"            v{u} = src[so + (j + {32 * u}) * ss]" for u in range(U)]
    full += [f"            dst[do + (j + {32 * u}) * ds] = v{u}" for u in range(U)]
    tail = [f"            if j + {32 * u} < n:\n"
            f"                dst[do + (j + {32 * u}) * ds] = src[so + (j + {32 * u}) * ss]"
            for u in range(U)]
    split = (f"        row = c // cpr\n        j = (c - row * cpr) * {32 * U} + lane" if lead
             else f"        j = c * {32 * U} + lane")    # one row: no division
    source = _ROWS.format(name=name, block=BLOCK, split=split, last=32 * (U - 1),
                          lead=_lead_params(lead, "ab"), full="\n".join(full),
                          tail="\n".join(tail),
                          decompose=_decompose(lead, [("so", "s0", "a"), ("do", "d0", "b")]))
    return _build(("rows", unit, lead), name, source)


def tile_kernel(unit: int, lead: int) -> gpu.Kernel:
    name = f"copy_tile_u{8 * unit}_l{lead}"
    split = ("        row = y // tm\n        i0 = (y - row * tm) * 32" if lead
             else "        i0 = y * 32")
    source = _TILE.format(name=name, unit=_UINT[unit].__name__, lead=_lead_params(lead, "ab"),
                          split=split,
                          decompose=_decompose(lead, [("so", "s0", "a"), ("do", "d0", "b")]))
    return _build(("tile", unit, lead), name, source)


def elems_kernel(unit: int, lead: int) -> gpu.Kernel:
    name = f"copy_elems_u{8 * unit}_l{lead}"
    source = _ELEMS.format(name=name, lead=_lead_params(lead, "ab") + ", n_last",
                           decompose=_decompose(lead, [("so", "s0", "a"), ("do", "d0", "b")]))
    return _build(("elems", unit, lead), name, source)


def pad_kernel(unit: int, lead: int, mode: str) -> gpu.Kernel:
    """Rows of the padded output; lead dims carry (output size N, before b, size n, stride a)."""
    U = _chunk_units(unit)
    name = f"pad_{mode}_u{8 * unit}_l{lead}"
    names = [f"N{k}" for k in range(1, lead)]
    names += [f"{t}{k}" for t in "bma" for k in range(lead)]
    lines = []
    if lead:
        lines.append("        q = row")
    for k in range(lead - 1, -1, -1):
        if k:
            lines += [f"        ik = q % N{k}", f"        q = q // N{k}"]
        else:
            lines.append("        ik = q")
        lines += [f"        x = ik - b{k}", f"        if x < 0 or x >= m{k}:",
                  f"            x = source_index(x, m{k})", "        if x < 0:",
                  "            inside = False", f"        so += x * a{k}"]
    # Every lane gathers its U values before it stores any (the stores could alias the
    # loads as far as the compiler knows), so U loads are in flight.
    gather = []
    for u in range(U):
        gather += [f"        v{u} = f", f"        x = j + {32 * u} - lo",
                   "        if x < 0 or x >= n:", "            x = source_index(x, n)",
                   f"        if inside and x >= 0 and j + {32 * u} < n_out:",
                   f"            v{u} = src[so + x * s]"]
    scatter = [f"        if j + {32 * u} < n_out:\n            dst[do + j + {32 * u}] = v{u}"
               for u in range(U)]
    source = _PAD.format(name=name, block=BLOCK, unit=_UINT[unit].__name__, chunk=32 * U,
                         lead="".join(f", {x}" for x in names), decompose="\n".join(lines),
                         gather="\n".join(gather), scatter="\n".join(scatter))
    helper = f"@gpu.device\ndef source_index(x, n):\n{_MODES[mode]}\n"
    return _build(("pad", unit, lead, mode), name, helper + "\n" + source)


# --- copies --------------------------------------------------------------------------------------

def _sms() -> int:
    return red.sms()


def _grid(threads: int) -> int:
    return max(1, min(gpu.cdiv(threads, BLOCK), _sms() * 16))


def _widest(src: Operand, dst: Operand, s_origin: int, d_origin: int, shape: Sequence[int],
            ss: Sequence[int], ds: Sequence[int]) -> int:
    """The widest word (bytes) that moves whole rows: contiguous last dims, aligned bases."""
    item = src.itemsize
    if not shape or ss[-1] != 1 or ds[-1] != 1:
        return item
    for unit in (8, 4, 2):
        if unit <= item:
            break
        scale = unit // item
        offsets = [shape[-1], s_origin, d_origin, *ss[:-1], *ds[:-1]]
        if all(v % scale == 0 for v in offsets) and src.start % unit == 0 \
                and dst.start % unit == 0 and src.span % scale == 0 and dst.span % scale == 0:
            return unit
    return item


def copy_into(src: Operand, dst: Operand, d_origin: int, d_strides: Sequence[int]) -> None:
    """Launch copies of ``src`` to ``dst`` elements ``d_origin + sum(i_k * d_strides_k)``."""
    a = src.array
    if a.size == 0:
        return
    shape, (ss, ds) = collapse(a.shape, src.strides, d_strides)
    if not shape:
        shape, ss, ds = (1,), (1,), (1,)
    s_origin = -src.low
    k = min(range(len(shape)), key=lambda d: abs(ss[d]))
    if k != len(shape) - 1 and abs(ss[k]) < abs(ss[-1]):
        # The source's fast dim is not the last: a transpose through shared memory, with the
        # other dims as lead dims.
        order = [d for d in range(len(shape) - 1) if d != k] + [k, len(shape) - 1]
        shape, ss, ds = (tuple(x[d] for d in order) for x in (shape, ss, ds))
        m, n = shape[-2], shape[-1]
        lead = len(shape) - 2
        tm, tn = gpu.cdiv(m, 32), gpu.cdiv(n, 32)
        ys = int(np.prod(shape[:-2], dtype=np.int64)) * tm
        unit = src.itemsize
        args = [src.window(unit), dst.window(unit), s_origin, d_origin, m, n, ss[-2], ss[-1],
                ds[-2], ds[-1], tm, ys, *shape[1:lead], *ss[:lead], *ds[:lead]]
        # Blocks: x along the destination's rows of tiles, y (looping past 65535) the rest.
        gpu.launch(tile_kernel(unit, lead), (tn, min(ys, 65535 if not gpu.HOST_ARRAYS else 4)),
                   BLOCK, args)
        return
    unit = _widest(src, dst, s_origin, d_origin, shape, ss, ds)
    scale = unit // src.itemsize
    n = shape[-1] // scale
    lead = len(shape) - 1
    a_st = [s // scale for s in ss[:-1]]
    b_st = [s // scale for s in ds[:-1]]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    head = [src.window(unit), dst.window(unit), s_origin // scale, d_origin // scale]
    if n >= MIN_ROW:
        cpr = gpu.cdiv(n, 32 * _chunk_units(unit))
        args = head + [n, ss[-1], ds[-1], cpr, rows * cpr, *shape[1:lead], *a_st, *b_st]
        gpu.launch(rows_kernel(unit, lead), _grid(32 * rows * cpr), BLOCK, args)
    else:
        args = head + [rows * n, ss[-1], ds[-1], *shape[1:lead], *a_st, *b_st, n]
        gpu.launch(elems_kernel(unit, lead), _grid(rows * n), BLOCK, args)


def _fresh(shape: tuple[int, ...], dt: np.dtype) -> Any:
    """A new result array, poisoned (all bits set) when the setting asks, as the call path does."""
    out = gpu.array_module().empty(shape, dt)
    if settings.get().poison_outputs and out.size:
        out.view(_UINT[dt.itemsize]).fill(np.iinfo(_UINT[dt.itemsize]).max)
    return out


# --- views ---------------------------------------------------------------------------------------

def _as_strided(a: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    if gpu.HOST_ARRAYS:
        return np.lib.stride_tricks.as_strided(a, shape, strides)
    from cupy.lib.stride_tricks import as_strided
    return as_strided(a, shape, strides)


@kernel("transpose", backend="cuda", dtypes=dtypes.ALL, allocates=True)
def transpose_view(a: Any, *, config: Config, axes: tuple[int, ...]) -> Any:
    return a.transpose(axes)


@kernel("slice", backend="cuda", dtypes=dtypes.ALL, allocates=True)
def slice_view(a: Any, *, config: Config, key: tuple[Any, ...]) -> Any:
    return a[key + (Ellipsis,)]     # the Ellipsis keeps a 0-d result a view, not a scalar copy


@kernel("split", backend="cuda", dtypes=dtypes.ALL, allocates=True)
def split_views(a: Any, *, config: Config, indices_or_sections: tuple[int, ...],
                axis: int) -> list[Any]:
    points = [0, *indices_or_sections, a.shape[axis]]
    lead = (py_slice(None),) * axis
    return [a[lead + (py_slice(s, max(s, e)),)] for s, e in zip(points, points[1:], strict=False)]


@kernel("reshape", backend="cuda", dtypes=dtypes.ALL, allocates=True)
def reshape_view_or_copy(a: Any, *, config: Config, shape: tuple[int, ...]) -> Any:
    """A view when NumPy's no-copy rule allows one, else a gather into a new C-order array."""
    strides = nocopy_strides(a.shape, a.strides, a.dtype.itemsize, shape)
    if strides is not None:
        return _as_strided(a, shape, strides)
    out = _fresh(shape, a.dtype)
    _run("reshape", [a, out], shape,
         lambda: copy_into(Operand(a), Operand(out), 0, c_strides(a.shape)))
    return out


# --- copies --------------------------------------------------------------------------------------

def _one_dtype(metas: Sequence[Any], attrs: dict[str, Any]) -> bool:
    return len({m.dtype for m in metas}) == 1


@kernel("concat", backend="cuda", dtypes=dtypes.ALL, supports=_one_dtype)
def concat_copy(arrays: tuple[Any, ...], *, out: Any, config: Config, axis: int | None) -> None:
    """Each array is copied into its slab of ``out``, one launch an array."""
    def planned() -> None:
        dst = Operand(out)
        offset = 0
        for a in arrays:
            if axis is None:
                copy_into(Operand(a), dst, offset, c_strides(a.shape))
                offset += a.size
            else:
                strides = c_strides(out.shape)
                copy_into(Operand(a), dst, offset * strides[axis], strides)
                offset += a.shape[axis]
    _run("concat", [*arrays, out], axis, planned)


@kernel("pad", backend="cuda", dtypes=dtypes.ALL)
def pad_gather(a: Any, *, out: Any, config: Config, pad_width: tuple[tuple[int, int], ...],
               mode: str, constant_values: Any) -> None:
    """Rows of the padded result gather from the source through per-axis index rules."""
    if out.size == 0:
        return
    value = np.empty((), a.dtype)
    value[()] = constant_values                   # converted as NumPy assignment converts
    fill = int(value.view(_UINT[a.dtype.itemsize]))

    def planned() -> None:
        src = Operand(a)
        # Unpadded size-1 dims drop out and unpadded neighbours that are one source run merge.
        dims: list[list[int]] = []
        for n, s, (b, e) in zip(a.shape, src.strides, pad_width, strict=True):
            if n == 1 and b == e == 0:
                continue
            if dims and b == e == 0 and dims[-1][2] == dims[-1][3] == 0 \
                    and dims[-1][1] == s * n:
                dims[-1][0:2] = [dims[-1][0] * n, s]
            else:
                dims.append([n, s, b, e])
        if not dims:
            dims = [[1, 1, 0, 0]]
        unit = a.dtype.itemsize
        n, s, lo, hi = dims[-1]
        n_out = n + lo + hi
        lead = dims[:-1]
        rows = int(np.prod([d[0] + d[2] + d[3] for d in lead], dtype=np.int64))
        cpr = gpu.cdiv(n_out, 32 * _chunk_units(unit))
        params = [d[0] + d[2] + d[3] for d in lead[1:]]
        params += [d[2] for d in lead] + [d[0] for d in lead] + [d[1] for d in lead]
        args = [src.window(unit), gpu.kernel_view(out).view(_UINT[unit]).reshape(-1),
                -src.low, np.uint64(fill), n_out, lo, n if a.size else 0, s, cpr, rows * cpr,
                *params]
        gpu.launch(pad_kernel(unit, len(lead), mode), _grid(32 * rows * cpr), BLOCK, args)
    if a.size == 0:                               # only constants: no source to read
        gpu.kernel_view(out).view(_UINT[a.dtype.itemsize]).fill(fill)
        return
    _run("pad", [a, out], (pad_width, mode, fill), planned)


__all__ = ["collapse", "c_strides", "nocopy_strides", "copy_into", "Operand"]
