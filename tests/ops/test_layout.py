"""Layout ops against NumPy: bitwise-equal results, views where NumPy gives views, errors, VJPs.

Each op runs over every dtype x the shared shape table x the non-contiguous views of
``tests.support.views``; float inputs carry a NaN and a -0.0 so that any conversion shows.
"""

from __future__ import annotations

import numpy as np
import pytest

import tsol
from tests.support import (
    FLOAT_DTYPES,
    SHAPES,
    assert_close,
    check_vjp,
    dtype_id,
    rand,
    reference,
    to64,
    views,
)
from tsol import dtypes
from tsol.ops.base import meta_of
from tsol.registry import OPS, get_op, kernels

DTYPES = FLOAT_DTYPES + [dtypes.int8, dtypes.int32, dtypes.bool_]
"""Every item size and storage kind; other ints share these kernels (they move bits)."""
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
CASES = [pytest.param(dt, shape, id=f"{dtype_id(dt)}-{'x'.join(map(str, shape)) or 'scalar'}")
         for dt in DTYPES for shape in SHAPES]


def _have(*names: str) -> bool:
    return all(n in OPS and kernels(n, "cpu") for n in names)


def _input(shape, dt, rng) -> np.ndarray:
    x = np.asarray(rand(shape, dt, rng))
    if dt in dtypes.FLOATS and x.size >= 2:
        x.reshape(-1)[0], x.reshape(-1)[-1] = np.nan, -0.0
    return x


def assert_bitwise(got, want, what: str = "") -> None:
    assert isinstance(got, np.ndarray), f"{what}: got a {type(got).__name__}"
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    u = UINT[want.dtype.itemsize]
    np.testing.assert_array_equal(np.ascontiguousarray(got).view(u),
                                  np.ascontiguousarray(want).view(u), err_msg=what)


def check(op: str, got, want, dt, *operands, **attrs) -> None:
    """Bitwise equal to NumPy's own function, and close to the op's float64 reference."""
    assert_bitwise(got, want, op)
    assert_close(got, reference(op, *operands, **attrs), dt, what=f"{op} vs reference")


def assert_view(got, base) -> None:
    if got.size and base.size:
        assert np.shares_memory(got, base), "NumPy gives a view here; TSOL copied"


# --- each op x dtype x shape x view --------------------------------------------------------------

@pytest.mark.parametrize("dt, shape", CASES)
def test_transpose(dt, shape, rng):
    for _, v in views(_input(shape, dt, rng)):
        perms = [None, tuple(range(1, v.ndim)) + (0,)[:v.ndim], tuple(range(-1, -v.ndim - 1, -1))]
        for axes in perms:
            got = tsol.transpose(v, axes)
            check("transpose", got, np.transpose(v, axes), dt, v, axes=axes)
            assert_view(got, v)


@pytest.mark.parametrize("dt, shape", CASES)
def test_reshape(dt, shape, rng):
    for name, v in views(_input(shape, dt, rng)):
        for target in [(-1,), shape[::-1], (1,) + shape + (1,)]:
            got = tsol.reshape(v, target)
            check("reshape", got, np.reshape(v, target), dt, v, shape=target)
            try:
                np.reshape(v, target, copy=False)
                assert_view(got, v)
            except ValueError:      # NumPy copies: so must we, into C order
                assert got.flags.c_contiguous and not np.shares_memory(got, v), name


@pytest.mark.parametrize("dt, shape", [c for c in CASES if c.values[1]])
def test_concat(dt, shape, rng):
    x = _input(shape, dt, rng)
    for name, v in views(x):
        extra = _input(shape[:-1] + (3,), dt, rng)[..., 1:]
        pieces = [v, extra, np.ascontiguousarray(x)[..., ::-1], v[..., :1]]
        for axis in (-1, 0, None):
            parts = pieces if axis == -1 else [v, x, v]
            got = tsol.concat(parts, axis=axis)
            assert got.flags.c_contiguous
            want = np.concatenate(parts, axis=axis)
            assert_bitwise(got, want, f"concat {name} axis={axis}")
            assert_close(got, reference("concat", [to64(p) for p in parts], axis=axis), dt)
    out = np.empty(np.concatenate([x, x]).shape, dt)
    out.view(UINT[out.itemsize]).fill(np.iinfo(UINT[out.itemsize]).max)     # NaN / all bits set
    assert tsol.concat((x, x), out=out) is out
    assert_bitwise(out, np.concatenate([x, x]), "concat out=")


@pytest.mark.parametrize("dt, shape", [c for c in CASES if c.values[1]])
def test_split(dt, shape, rng):
    for name, v in views(_input(shape, dt, rng)):
        for ios, axis in [(3, -1), (2, 0), ([1, -2, 50], -1), ([3, 1], 0), ([], 0)]:
            got = tsol.split(v, ios, axis=axis)
            want = (np.array_split(v, ios, axis=axis) if isinstance(ios, int)
                    else np.split(v, ios, axis=axis))
            ref = reference("split", v, ios, axis=axis)
            assert isinstance(got, list) and len(got) == len(want) == len(ref)
            for g, w, r in zip(got, want, ref, strict=True):
                assert_bitwise(g, w, f"split {name} {ios}")
                assert_close(g, r, dt)
                assert_view(g, v)


def _pad_widths(shape, mode):
    """Uneven widths, some wider than their axis; empty axes stay unpadded unless constant."""
    widths = [((k % 3) + 1, (2 * k) % 5) for k in range(len(shape))]
    if not shape:
        return ((1, 2),)        # broadcasts to no axes, as in NumPy
    return [w if n or mode == "constant" else (0, 0) for w, n in zip(widths, shape, strict=True)]


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
@pytest.mark.parametrize("dt, shape", CASES)
def test_pad(dt, shape, mode, rng):
    value = {"constant_values": True if dt == dtypes.bool_ else 2} if mode == "constant" else {}
    for _, v in views(_input(shape, dt, rng)):
        for widths in [_pad_widths(shape, mode), 1 if all(shape) or mode == "constant" else 0]:
            got = tsol.pad(v, widths, mode=mode, **value)
            check("pad", got, np.pad(v, widths, mode=mode, **value), dt, v, widths, mode=mode,
                  **value)


def test_pad_writes_into_a_poisoned_out(rng):
    x = _input((5, 7), np.float32, rng)[:, ::-2]
    out = np.full((9, 8), np.nan, np.float32)
    assert tsol.pad(x, 2, mode="reflect", out=out) is out
    assert_bitwise(out, np.pad(x, 2, mode="reflect"))


@pytest.mark.parametrize("dt", [dtypes.float16, dtypes.int32, dtypes.uint8])
def test_pad_converts_the_constant_as_numpy(dt, rng):
    x = _input((4, 3), dt, rng)
    for c in [7, 1.75, 0]:
        assert_bitwise(tsol.pad(x, 1, constant_values=c), np.pad(x, 1, constant_values=c))


def _slice_keys(shape):
    if not shape:
        return [(), (None,), (Ellipsis,), (Ellipsis, None)]
    keys = [(Ellipsis, slice(None, None, -2)), tuple(slice(None, None, 3) for _ in shape) + (None,),
            (slice(5, None, 2), None, Ellipsis), slice(-2, -30, -1)]
    if shape[0]:
        keys.append((-1,))
    if shape[0] and len(shape) >= 2:
        keys.append((0, Ellipsis, None, slice(1, -1)))
    return keys


@pytest.mark.parametrize("dt, shape", CASES)
def test_slice(dt, shape, rng):
    for _, v in views(_input(shape, dt, rng)):
        for key in _slice_keys(shape):
            got = tsol.slice(v, key)
            check("slice", got, np.asarray(v[key]), dt, v, key)
            assert_view(got, v)


def test_reshape_of_a_transposed_matrix_copies_correctly(rng):
    x = _input((257, 129), np.float32, rng).T
    got = tsol.reshape(x, (-1,))
    assert not np.shares_memory(got, x)
    assert_bitwise(got, x.reshape(-1))
    y = _input((3, 64, 33), dtypes.bfloat16, rng).transpose(2, 0, 1)[::-1, :, 5:]
    assert_bitwise(tsol.reshape(y, (33, -1)), y.reshape(33, -1))


def test_every_copy_config_is_correct(rng):
    x = _input((70, 45, 3), np.float32, rng).transpose(2, 1, 0)[:, ::-1]
    for k in kernels("reshape", "cpu") + kernels("concat", "cpu"):
        for cfg in k.configs:
            if k.op == "reshape":
                got = k.impl(x, config=cfg, shape=(3, 45 * 70))
            else:
                got = np.empty((6, 45, 70), np.float32)
                k.impl((x, x), out=got, config=cfg, axis=0)
            want = x.reshape(3, -1) if k.op == "reshape" else np.concatenate([x, x])
            assert_bitwise(got, want, f"{k.name} {cfg}")


def test_zero_strides_and_readonly_sources(rng):
    x = np.broadcast_to(_input((1, 5), np.int16, rng), (4, 5))
    assert_bitwise(tsol.reshape(x, (20,)), x.reshape(20))
    assert_bitwise(tsol.concat([x, x], axis=1), np.concatenate([x, x], axis=1))
    assert_bitwise(tsol.pad(x, 2, mode="reflect"), np.pad(x, 2, mode="reflect"))


@pytest.mark.skipif(not _have("astype"), reason="needs tsol.astype (elementwise family)")
def test_concat_promotes_mixed_dtypes(rng):
    a, b = _input((3, 2), np.float32, rng), _input((3, 4), np.float64, rng)
    assert_bitwise(tsol.concat([a, b], axis=1), np.concatenate([a, b], axis=1))


# --- errors --------------------------------------------------------------------------------------

A = np.zeros((3, 4), np.float32)

ERRORS = [
    ("transpose", lambda: tsol.transpose(A, (0, 0)), tsol.AxisError),
    ("transpose", lambda: tsol.transpose(A, (0,)), tsol.AxisError),
    ("transpose", lambda: tsol.transpose(A, (0, 2)), tsol.AxisError),
    ("transpose", lambda: tsol.transpose([[1.0]]), tsol.ArgumentError),
    ("transpose", lambda: tsol.transpose(A.astype(np.complex64)), tsol.DTypeError),
    ("reshape", lambda: tsol.reshape(A, (5, 3)), tsol.ShapeError),
    ("reshape", lambda: tsol.reshape(A, (-1, -1)), tsol.ShapeError),
    ("reshape", lambda: tsol.reshape(A, (-1, 5)), tsol.ShapeError),
    ("reshape", lambda: tsol.reshape(np.zeros((0, 3)), (-1, 0)), tsol.ShapeError),
    ("reshape", lambda: tsol.reshape(A, (2.0, 6)), tsol.ArgumentError),
    ("reshape", lambda: tsol.reshape(A, "12"), tsol.ArgumentError),
    ("concat", lambda: tsol.concat([]), tsol.ShapeError),
    ("concat", lambda: tsol.concat([A, A.T]), tsol.ShapeError),
    ("concat", lambda: tsol.concat([A, A[0]]), tsol.ShapeError),
    ("concat", lambda: tsol.concat([np.float32(1), np.float32(2)]), tsol.ShapeError),
    ("concat", lambda: tsol.concat([A, A], axis=2), tsol.AxisError),
    ("concat", lambda: tsol.concat(A), tsol.ArgumentError),
    ("concat", lambda: tsol.concat([A, [[1.0] * 4]]), tsol.ArgumentError),
    ("concat", lambda: tsol.concat([A, 1.0]), tsol.ArgumentError),
    ("concat", lambda: tsol.concat([A, A], out=np.zeros((6, 5), np.float32)), tsol.ShapeError),
    ("concat", lambda: tsol.concat([A, A], out=np.zeros((6, 4), np.float64)), tsol.DTypeError),
    ("split", lambda: tsol.split(A, 0), tsol.ShapeError),
    ("split", lambda: tsol.split(A, 2, axis=-3), tsol.AxisError),
    ("split", lambda: tsol.split(np.float32(1), 1), tsol.AxisError),
    ("split", lambda: tsol.split(A, 1.5), tsol.ArgumentError),
    ("split", lambda: tsol.split(A, [1, "2"]), tsol.ArgumentError),
    ("pad", lambda: tsol.pad(A, -1), tsol.ShapeError),
    ("pad", lambda: tsol.pad(A, ((1, 2, 3),)), tsol.ShapeError),
    ("pad", lambda: tsol.pad(A, ((1, 2), (1, 2), (1, 2))), tsol.ShapeError),
    ("pad", lambda: tsol.pad(A, 1.5), tsol.ArgumentError),
    ("pad", lambda: tsol.pad(A, 1, mode="wrap"), tsol.ArgumentError),
    ("pad", lambda: tsol.pad(A, 1, constant_values=(1, 2)), tsol.ArgumentError),
    ("pad", lambda: tsol.pad(np.zeros((0, 2)), 1, mode="edge"), tsol.ShapeError),
    ("pad", lambda: tsol.pad(np.zeros(3, np.uint8), 1, constant_values=300), tsol.DTypeError),
    ("pad", lambda: tsol.pad(np.zeros(3, np.int32), 1, constant_values=np.nan), tsol.DTypeError),
    ("pad", lambda: tsol.pad(A, 1, out=np.zeros((3, 4), np.float32)), tsol.ShapeError),
    ("slice", lambda: tsol.slice(A, [0, 1]), tsol.ArgumentError),
    ("slice", lambda: tsol.slice(A, (np.array([0]),)), tsol.ArgumentError),
    ("slice", lambda: tsol.slice(A, True), tsol.ArgumentError),
    ("slice", lambda: tsol.slice(A, 1.0), tsol.ArgumentError),
    ("slice", lambda: tsol.slice(A, (0, 0, 0)), tsol.AxisError),
    ("slice", lambda: tsol.slice(A, (0, 4)), tsol.AxisError),
    ("slice", lambda: tsol.slice(A, (Ellipsis, Ellipsis)), tsol.ArgumentError),
    ("slice", lambda: tsol.slice(A, slice(None, None, 0)), tsol.ArgumentError),
]


@pytest.mark.parametrize("op, fn, error", [pytest.param(*e, id=f"{e[0]}-{k}")
                                           for k, e in enumerate(ERRORS)])
def test_errors_name_the_op(op, fn, error):
    with pytest.raises(error, match=rf"tsol\.{op}"):
        fn()


def test_error_messages_say_what_and_how():
    with pytest.raises(tsol.ShapeError, match=r"\(3, 4\) into \(5, 3\)"):
        tsol.reshape(A, (5, 3))
    with pytest.raises(tsol.ArgumentError, match="tsol.take is not implemented yet"):
        tsol.slice(A, [0, 1])


# --- VJPs ----------------------------------------------------------------------------------------

def _vjp(name, **attrs):
    """The op's VJP rule on normalized attributes, as the autodiff layer calls it."""
    opdef = get_op(name)

    def vjp(g, *primals):
        operand = list(primals) if name == "concat" else primals[0]
        metas = [tuple(meta_of(p) for p in primals)] if name == "concat" else [meta_of(operand)]
        grads = opdef.vjp(g, operand, out=None, **opdef.normalize(metas, **attrs))
        return tuple(grads[0]) if name == "concat" else grads
    return vjp


def test_vjp_transpose_reshape_slice(rng):
    x = rng.standard_normal((3, 4, 5))
    check_vjp(lambda a: tsol.transpose(a, (1, 2, 0)), [x], _vjp("transpose", axes=(1, 2, 0)))
    check_vjp(lambda a: tsol.reshape(a.transpose(2, 0, 1), (5, -1)), [x],
              lambda g, a: (_vjp("reshape", shape=(5, -1))(g, a.transpose(2, 0, 1))[0]
                            .transpose(1, 2, 0),))
    for key in [(Ellipsis, slice(None, None, -2)), (1, None, slice(1, None, 3)),
                (slice(5, 0, -2), 0, Ellipsis), (None, slice(0, 0))]:
        check_vjp(lambda a, key=key: tsol.slice(a, key), [x], _vjp("slice", key=key))


def test_vjp_concat(rng):
    xs = [rng.standard_normal((2, n, 3)) for n in (1, 4, 2)]
    for axis in (1, None):
        check_vjp(lambda *ps, axis=axis: tsol.concat(list(ps), axis=axis), xs,
                  _vjp("concat", axis=axis))


def test_vjp_split(rng):
    """Cotangents of some pieces are None (zeros); unsorted points overlap and add."""
    x = rng.standard_normal((7, 2))
    cases = [(3, ()), (3, (1,)), ([2, 2, 9], (0,))]
    cases += [([5, 2], ()), ([5, 2], (2,))] if _have("add") else []
    for ios, dropped in cases:
        shapes = [p.shape for p in tsol.split(x, ios)]
        sizes = [0 if k in dropped else int(np.prod(s)) for k, s in enumerate(shapes)]

        def fn(a, ios=ios, dropped=dropped):
            return np.concatenate([p.ravel() for k, p in enumerate(tsol.split(a, ios))
                                   if k not in dropped])

        def vjp(g, a, ios=ios, dropped=dropped, shapes=shapes, sizes=sizes):
            parts = np.split(g, np.cumsum(sizes)[:-1])
            gs = [None if k in dropped else p.reshape(s)
                  for k, (p, s) in enumerate(zip(parts, shapes, strict=True))]
            return _vjp("split", indices_or_sections=ios, axis=0)(gs, a)

        check_vjp(fn, [x], vjp)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_vjp_pad(mode, rng):
    if mode != "constant" and not _have("add", "sum"):
        pytest.skip("the edge/reflect VJP scatter-adds with tsol.add and tsol.sum")
    x = rng.standard_normal((3, 2, 4))
    for widths in [((1, 2), (0, 0), (3, 1)), ((5, 4), (3, 0), (0, 7))]:
        check_vjp(lambda a, w=widths: tsol.pad(a, w, mode=mode), [x],
                  _vjp("pad", pad_width=widths, mode=mode, constant_values=0))
