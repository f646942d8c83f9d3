"""CUDA softmax and log_softmax against SciPy's float64 reference: every float dtype along the
last, first and a middle axis, rows and columns held in registers, the two-pass path for long
lines (split over several blocks), multi-warp rows, edge values, views, in-place out= and
empty inputs; 16-bit rows read a word at a time where every row start is aligned to it."""

import re

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    HOST,
    check,
    on_cuda,
    size,
    to_device,
    to_host,
)
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, reference
from tsol import dtypes
from tsol.kernels.cuda import gpu, replay
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

OPS = ["softmax", "log_softmax"]


def special(x):
    """Rows (and columns) holding +inf, only -inf and NaN."""
    x = x.copy()
    x[0, 1] = np.inf
    x[1, :] = -np.inf
    x[2, 3] = np.nan
    x[:, 2] = -np.inf
    return x


@pytest.mark.parametrize("axis", [-1, 0], ids=["rows", "cols"])
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_dtypes_and_axes(op, dt, axis, rng):
    shape = (size(5, 64), size(37, 4099))
    x = rand(shape if axis == -1 else shape[::-1], dt, rng)
    check(op, [x], {"axis": axis}, dt)


@pytest.mark.parametrize("op", OPS)
def test_middle_axis_large_values_and_edges(op, rng):
    x = rand((2, size(9, 300), 3), np.float32, rng)
    check(op, [x], {"axis": 1}, np.float32)
    big = (rand((4, size(29, 1000)), np.float32, rng) * 10 + 1000).astype(np.float32)
    check(op, [big], {"axis": -1}, np.float32)
    edges = special(rand((5, 7), np.float32, rng))
    check(op, [edges], {"axis": -1}, np.float32)
    check(op, [edges], {"axis": 0}, np.float32)


@pytest.mark.parametrize("axis", [-1, 0], ids=["rows", "cols"])
@pytest.mark.parametrize("dt", [np.float32, "bfloat16"], ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_two_pass_split_lines(op, dt, axis, forced, rng):
    """Lines longer than the registers hold: the online (max, sum) fold split over blocks, then
    a streaming pass."""
    forced(Config(block=32, work=16, kmax=1, split=3))
    shape = (5, size(37, 40000))
    x = special(rand(shape if axis == -1 else shape[::-1], np.float32, rng)).astype(dt)
    check(op, [x], {"axis": axis}, dt)


@pytest.mark.parametrize("op", OPS)
def test_multi_warp_rows_and_column_trees(op, forced, rng):
    forced(Config(block=128, work=1, kmax=32, split=0))
    check(op, [rand((3, size(37, 3000)), np.float32, rng)], {"axis": -1}, np.float32)
    check(op, [rand((size(37, 3000), 5), np.float32, rng)], {"axis": 0}, np.float32)


def test_views_in_place_and_empty(rng):
    x = rand((size(9, 513), 6), np.float32, rng)
    check("softmax", [x.T], {"axis": -1}, np.float32)              # not C-contiguous
    check("log_softmax", [x[::2]], {"axis": 0}, np.float32)
    for shape in [(0, 5), (3, 0)]:
        check("softmax", [np.zeros(shape, np.float32)], {"axis": -1}, np.float32)
    with on_cuda():
        d = to_device(x.copy())
        assert tsol.softmax(d, axis=-1, out=d) is d
    if not COMPILE_ONLY:
        np.testing.assert_allclose(to_host(d), reference("softmax", x, axis=-1), rtol=2e-6,
                                   atol=2e-6)


def placed(x, offset):
    """``x`` on the device, C-contiguous, its data ``offset`` elements past a 16-byte boundary."""
    buf = to_device(np.zeros(x.size + 16, x.dtype))
    start = -replay.data_ptr(buf) % 16 // x.itemsize + offset
    view = buf[start:start + x.size].reshape(x.shape)
    view[...] = to_device(x)
    return view


def launched(monkeypatch):
    """How each kernel that ``gpu.launch`` runs from now on accesses its rows (host arrays:
    every launch): "1" an element at a time, else the ``_w`` suffix of its name, the elements
    an access moves and the parameters also read by words ("4", "2gb")."""
    seen, launch = [], gpu.launch

    def spy(kern, *args, **kw):
        found = re.search(r"_w(\d[a-z]*)$", kern.name)
        seen.append(found.group(1) if found else "1")
        launch(kern, *args, **kw)
    monkeypatch.setattr(gpu, "launch", spy)
    return seen


# (row length, data offset in elements, elements an access moves); block 32, 8 a thread under
# the simulator and compile-only mode: rows of 16 fill a tile exactly, 12 and 10 do not, and 7
# and the offsets 1 take element accesses; offset 2 aligns to 32-bit words alone.
HALF_ROWS = [(16, 0, 4), (12, 0, 4), (12, 2, 2), (10, 0, 2), (6, 0, 2), (16, 1, 1), (12, 1, 1),
             (7, 0, 1), (size(40, 4096), 0, 4), (size(36, 4100), 1, 1)]


@pytest.mark.parametrize("dt", sorted(dtypes.HALF, key=str), ids=dtype_id)
@pytest.mark.parametrize("op", OPS)
def test_half_rows_by_words_and_misaligned(op, dt, monkeypatch, rng):
    """bfloat16/float16 rows whose every start is aligned to 4 (or 2) elements are read and
    written that many an access; odd lengths and misaligned bases take element accesses. The
    same layout at another alignment plans again (its replay declines), edge values too."""
    seen = launched(monkeypatch)
    for n, offset, width in HALF_ROWS:
        x = rand((5, n), np.float32, rng)
        x = (special(x) if n >= 4 else x).astype(dt)     # rows 3 and 4 finite but for -inf
        seen.clear()
        with on_cuda():
            got = to_host(getattr(tsol, op)(placed(x, offset), axis=-1))
        if HOST:
            assert seen == [str(width)], (n, offset)
        if not COMPILE_ONLY:
            assert_close(got, reference(op, x, axis=-1), dt, what=f"cuda {op} n={n}+{offset}")
