"""CUDA layout ops against NumPy, bit for bit: views where NumPy gives views (transpose, slice,
split, reshape when the strides allow), and the copy kernels (rows with wide words, tiled
transposes of any rank, short rows, pad gathers in every mode) on every dtype class, odd
shapes, non-contiguous and negative-stride sources, empty and 0-d arrays, out= and errors."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    assert_equal,
    on_cuda,
    size,
    to_device,
    to_host,
)
from tests.support import dtype_id, rand
from tsol import dtypes
from tsol.errors import ArgumentError, AxisError, ShapeError

pytestmark = CUDA_TESTS

ALL_DTYPES = [dtypes.float64, dtypes.float32, dtypes.float16, dtypes.bfloat16, dtypes.int8,
              dtypes.int16, dtypes.int32, dtypes.int64, dtypes.uint8, dtypes.bool_]
WIDTHS = [dtypes.float64, dtypes.float32, dtypes.bfloat16, dtypes.bool_]
"""One dtype of each item size (bool and bfloat16 travel as uint8 and uint16)."""


def bits_equal(got, want):
    """Exact comparison, NaN payloads included (skipped in compile-only mode)."""
    if COMPILE_ONLY:
        return
    got, want = np.asarray(to_host(got)), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                  np.ascontiguousarray(want).view(np.uint8))


def shares(a, b):
    xp = __import__("cupy") if type(a).__module__.startswith("cupy") else np
    return bool(xp.shares_memory(a, b))


VIEWS = {
    "contig": lambda a: a,
    "transposed": lambda a: a.T.copy().T,
    "strided": lambda a: a.repeat(2, axis=-1)[..., ::2],
    "reversed": lambda a: a[::-1, ::-1],
}
"""Views made the same way of a host array and of its device copy (so they keep strides)."""


def call(op, *args, **attrs):
    """``tsol.<op>`` on cuda; ``args`` are host arrays, lists of them, or (array, view) pairs,
    moved to the device first (views are taken there)."""
    def dev(a):
        if isinstance(a, list):
            return [dev(e) for e in a]
        if isinstance(a, tuple) and len(a) == 2 and callable(a[1]):
            return a[1](to_device(a[0]))
        return to_device(a) if isinstance(a, np.ndarray) else a
    with on_cuda():
        return to_host(getattr(tsol, op)(*[dev(a) for a in args], **attrs))


# --- copies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", ALL_DTYPES, ids=dtype_id)
def test_reshape_copy_and_concat_every_dtype(dt, rng):
    x = rand((size(5, 300), size(37, 1027)), dt, rng)
    y = rand((size(3, 97), x.shape[1]), dt, rng)
    t = lambda a: a.T                                      # noqa: E731
    bits_equal(call("reshape", (x, t), (-1,)), x.T.reshape(-1))
    bits_equal(call("concat", [x, y]), np.concatenate([x, y]))
    bits_equal(call("concat", [(x, t), (y, t)], axis=1), np.concatenate([x.T, y.T], axis=1))


@pytest.mark.parametrize("dt", WIDTHS, ids=dtype_id)
def test_copies_of_views(dt, rng):
    x = rand((size(6, 513), size(40, 2050)), dt, rng)
    for view in VIEWS.values():
        v = view(x)
        head = lambda a, view=view: view(a)[:1]            # noqa: E731
        tail = lambda a, view=view: view(a)[:, 3:]         # noqa: E731
        bits_equal(call("reshape", (x, view), (v.shape[0] * 2, -1)),
                   v.reshape(v.shape[0] * 2, -1))
        bits_equal(call("concat", [(x, view), (x, head)]),
                   np.concatenate([v, v[:1]]))
        bits_equal(call("concat", [(x, view), (x, tail)], axis=1),
                   np.concatenate([v, v[:, 3:]], axis=1))
    # Odd element offsets and odd row lengths: narrower words than the aligned case.
    bits_equal(call("concat", [(x, lambda a: a[1:, 1:]), (x, lambda a: a[:2, :-1])]),
               np.concatenate([x[1:, 1:], x[:2, :-1]]))


@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 2, 0), (2, 1, 0), (0, 2, 1)], ids=str)
def test_transposes_of_any_rank(perm, rng):
    x = rand((size(3, 33), size(19, 257), size(5, 129)), np.float32, rng)
    bits_equal(call("reshape", (x, lambda a: a.transpose(perm)), (-1,)),
               x.transpose(perm).reshape(-1))
    big = rand((2, 3, 2, 3, size(5, 40)), dtypes.int16, rng)
    order = (4, 2, 0, 1, 3)                    # three lead dims around the tiled pair
    t = big.transpose(order)
    bits_equal(call("reshape", (big, lambda a: a.transpose(order)), (t.shape[0], -1)),
               t.reshape(t.shape[0], -1))


def test_short_rows_and_mixed_dtypes(rng):
    x = rand((size(13, 4001), 3), np.int32, rng)
    bits_equal(call("concat", [x, (x, lambda a: a[:, :1])], axis=1),
               np.concatenate([x, x[:, :1]], axis=1))
    bits_equal(call("concat", [(x, lambda a: a[::-1]), x], axis=None),
               np.concatenate([x[::-1], x], axis=None))
    bits_equal(call("reshape", (x, lambda a: a[:, ::2]), (-1,)), x[:, ::2].reshape(-1))
    f = rand((2, 3), np.float32, rng)
    bits_equal(call("concat", [f, f.astype(np.float64)]),
               np.concatenate([f, f]).astype(np.float64))


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
@pytest.mark.parametrize("dt", WIDTHS, ids=dtype_id)
def test_pad_modes(mode, dt, rng):
    x = rand((size(4, 200), size(9, 1001)), dt, rng)
    kw = {"constant_values": 1} if mode == "constant" else {}
    widths = ((2, 3), (11, 4))                 # reflect wider than the axis reflects again
    for name in ("contig", "strided", "reversed"):
        bits_equal(call("pad", (x, VIEWS[name]), widths, mode=mode, **kw),
                   np.pad(VIEWS[name](x), widths, mode=mode, **kw))
    cube = rand((3, size(4, 50), 5), dt, rng)
    for widths in [((1, 0), (0, 0), (0, 2)), ((0, 0), (2, 2), (0, 0)), 1]:
        bits_equal(call("pad", cube, widths, mode=mode, **kw),
                   np.pad(cube, widths, mode=mode, **kw))


def test_pad_edges(rng):
    x = rand((5,), np.float32, rng)
    bits_equal(call("pad", x, 0), x)
    e = np.zeros((0, 3), np.int8)
    bits_equal(call("pad", e, ((1, 1), (0, 1)), constant_values=5),
               np.pad(e, ((1, 1), (0, 1)), constant_values=5))
    s = np.array(2.5, np.float32)
    bits_equal(call("pad", s, 0), s)
    one = rand((1, 4), np.float64, rng)
    bits_equal(call("pad", one, 3, mode="reflect"), np.pad(one, 3, mode="reflect"))
    bits_equal(call("pad", x, (2, 1), constant_values=1.7), np.pad(x, (2, 1),
                                                                   constant_values=1.7))
    b = rand((3, 4), dtypes.bool_, rng)
    bits_equal(call("pad", b, 1, constant_values=True), np.pad(b, 1, constant_values=True))


def test_empty_and_zero_d(rng):
    e = np.zeros((3, 0, 5), np.float32)
    bits_equal(call("concat", [e, e], axis=1), np.concatenate([e, e], axis=1))
    bits_equal(call("reshape", (e, lambda a: a.transpose(2, 0, 1)), (0, 3)),
               np.zeros((0, 3), np.float32))
    s = np.array(3.0, np.float32)
    bits_equal(call("reshape", s, (1, 1)), s.reshape(1, 1))
    x = rand((4, 6), np.float32, rng)
    bits_equal(call("concat", [x[:0], x, x[:0]]), x)


def test_out_and_errors(rng):
    x = rand((size(5, 64), 7), np.float32, rng)
    with on_cuda():
        d = to_device(x)
        out = to_device(np.full((2 * x.shape[0], 7), np.nan, np.float32))
        assert tsol.concat([d, d], out=out) is out
        padded = to_device(np.zeros((x.shape[0] + 3, 9), np.float32))
        assert tsol.pad(d, ((1, 2), (1, 1)), mode="edge", out=padded) is padded
        with pytest.raises(ShapeError, match="concat"):
            tsol.concat([d, d[:, :3]])
        with pytest.raises(AxisError, match="transpose"):
            tsol.transpose(d, (0, 0))
        with pytest.raises(ShapeError, match="reshape"):
            tsol.reshape(d, (4, -1, 3))
        with pytest.raises(ArgumentError, match="pad"):
            tsol.pad(d, 1, mode="wrap")
        with pytest.raises(AxisError, match="slice"):
            tsol.slice(d, (0, 99))
    assert_equal(out, np.concatenate([x, x]))
    assert_equal(padded, np.pad(x, ((1, 2), (1, 1)), mode="edge"))


# --- views ---------------------------------------------------------------------------------------

def test_views_where_numpy_gives_views(rng):
    x = rand((4, 6, 5), dtypes.bfloat16, rng)
    key = (slice(None, None, -2), None, 3)
    with on_cuda():
        d = to_device(x)
        t = tsol.transpose(d, (2, 0, 1))
        s = tsol.slice(d, key)
        parts = tsol.split(d, [1, 3, 3], axis=1)
        r = tsol.reshape(d, (2, 2, 30))
        assert all(shares(v, d) for v in [t, s, r, *parts] if v.size)
        t, s, r, parts = to_host(t), to_host(s), to_host(r), to_host(parts)
    bits_equal(t, x.transpose(2, 0, 1))
    bits_equal(s, x[key])
    for got, want in zip(parts, np.split(x, [1, 3, 3], axis=1), strict=True):
        bits_equal(got, want)
    bits_equal(r, x.reshape(2, 2, 30))


RESHAPES = [(lambda a: a.transpose(1, 0, 2), (6, 2, 2, 10)), (lambda a: a[:, ::2], (8, 3, 5)),
            (lambda a: a[:, :, ::-1], (24, 10)), (lambda a: a.T, (10, 24)),
            (lambda a: a[:, 1:2], (2, 2, 10, 1)), (lambda a: a[::2, :, 3:7], (2, 3, 2, 4)),
            (lambda a: a[::2, :, 3:7], (2, 3, 8))]


@pytest.mark.parametrize("case", range(len(RESHAPES)))
def test_reshape_views_follow_numpy_rule(case, rng):
    view, shape = RESHAPES[case]
    x = rand((4, 6, 10), np.int32, rng)
    try:
        view(x).reshape(shape, copy=False)
        numpy_view = True
    except ValueError:
        numpy_view = False
    with on_cuda():
        d = to_device(x)
        got = tsol.reshape(view(d), shape)
        assert shares(got, d) == numpy_view
        got = to_host(got)
    bits_equal(got, view(x).reshape(shape))
