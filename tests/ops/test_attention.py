"""flash_attention, scaled_dot_product_attention and rope against their float64 references.

Attention cases cover odd sequence lengths (1, 7, 129), S != Skv both ways (a KV cache and
queries that see no key), grouped-query attention, causal and not, block sizes that do not
divide S, every float dtype and non-contiguous operands; additive masks broadcast over any of
the [B, H, S, Skv] axes, with -inf entries, fully masked queries, NaN and +inf entries, other
float dtypes than q's, and their gradient. Attention sums D products per score
and up to Skv terms per output: ``_rtol_mult`` scales the dtype tolerance by that length.
"""

from __future__ import annotations

import math
import tracemalloc

import ml_dtypes
import numba
import numpy as np
import pytest

import tsol
from tests.ops.support import fails
from tests.support import FLOAT_DTYPES, assert_close, check_vjp, dtype_id, rand, reference, views
from tsol.errors import ArgumentError, DTypeError, ShapeError
from tsol.ops.base import bind, meta_of
from tsol.registry import get_op

# (B, H, Hkv, S, Skv, D, Dv)
ATTN_SHAPES = [(1, 1, 1, 1, 1, 4, 4), (2, 2, 2, 7, 7, 8, 8), (1, 4, 2, 129, 129, 16, 12),
               (1, 4, 1, 7, 33, 8, 8), (2, 2, 1, 40, 9, 8, 5), (1, 2, 2, 1, 65, 32, 32)]
BLOCKS = [(None, None), (5, 3), (16, 64)]


def shape_id(s) -> str:
    return "B{}H{}kv{}S{}x{}D{}v{}".format(*s)


def _qkv(shape, dt, rng, low=-3.0, high=3.0):
    b, h, hkv, s, skv, d, dv = shape
    return (rand((b, h, s, d), dt, rng, low=low, high=high),
            rand((b, hkv, skv, d), dt, rng, low=low, high=high),
            rand((b, hkv, skv, dv), dt, rng, low=low, high=high))


def _rtol_mult(d: int, skv: int) -> float:
    # Float32 rounding in a D-term dot product (amplified by exp) and an Skv-term weighted sum.
    return max(1.0, math.sqrt(d + skv) / 4)


def _ref_attention(q, k, v, causal, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return reference("flash_attention", q, k, v, causal=causal, scale=scale)


def run_vjp(name, g, primals, **kwargs):
    """The op's VJP rule at ``primals`` with its normalized attributes."""
    opdef = get_op(name)
    operands, attrs, _ = bind(opdef, primals, kwargs)
    attrs = opdef.normalize([None if o is None else meta_of(o) for o in operands], **attrs)
    out = getattr(tsol, name)(*primals, **kwargs)
    return opdef.vjp(g, *operands, out=out, **attrs)


# --- flash_attention ----------------------------------------------------------------------

@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=shape_id)
def test_flash_attention(shape, dt, rng):
    q, k, v = _qkv(shape, dt, rng)
    for causal in (False, True):
        want = _ref_attention(q, k, v, causal)
        for bq, bk in BLOCKS:
            got = tsol.flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
            assert got.dtype == dt and got.shape == want.shape
            assert_close(got, want, dt, rtol_mult=_rtol_mult(shape[5], shape[4]),
                         what=f"causal={causal} blocks={bq},{bk}")


@pytest.mark.parametrize("view", ["transposed", "strided", "reversed"])
def test_flash_attention_views(view, rng):
    shape = (2, 4, 2, 19, 23, 8, 6)
    q, k, v = (dict(views(a))[view] for a in _qkv(shape, np.float32, rng))
    for causal in (False, True):
        got = tsol.flash_attention(q, k, v, causal=causal, block_q=8)
        assert_close(got, _ref_attention(q, k, v, causal), np.float32,
                     rtol_mult=_rtol_mult(8, 23), what=view)


def test_flash_attention_scale_out_and_edges(rng):
    q, k, v = _qkv((1, 2, 2, 9, 9, 8, 8), np.float64, rng)
    want = _ref_attention(q, k, v, True, scale=0.3)
    out = np.full(want.shape, np.nan)
    got = tsol.flash_attention(q, k, v, causal=True, scale=0.3, out=out)
    assert got is out
    assert_close(out, want, np.float64)
    # S > Skv causal: the first S - Skv queries see no key and give zeros, as documented.
    q, k, v = _qkv((1, 1, 1, 6, 2, 4, 3), np.float32, rng)
    got = tsol.flash_attention(q, k, v, causal=True)
    np.testing.assert_array_equal(got[0, 0, :4], 0.0)
    assert_close(got, _ref_attention(q, k, v, True), np.float32)
    # No keys at all, and no queries.
    q, k, v = _qkv((1, 2, 1, 3, 0, 4, 5), np.float32, rng)
    np.testing.assert_array_equal(tsol.flash_attention(q, k, v), np.zeros((1, 2, 3, 5)))
    q, k, v = _qkv((1, 2, 1, 0, 4, 4, 5), np.float32, rng)
    assert tsol.flash_attention(q, k, v).shape == (1, 2, 0, 5)


def test_flash_attention_nonfinite(rng):
    q, k, v = _qkv((1, 1, 1, 5, 6, 4, 4), np.float32, rng)
    q[0, 0, 2, 1] = np.nan
    got = tsol.flash_attention(q, k, v)
    assert np.isnan(got[0, 0, 2]).all() and not np.isnan(np.delete(got[0, 0], 2, 0)).any()
    # Large scores do not overflow: the running max is subtracted.
    got = tsol.flash_attention(np.full_like(q, 30), np.full_like(k, 30), v, block_k=2)
    assert_close(got, np.broadcast_to(v.mean(axis=2, keepdims=True), got.shape), np.float32)


def test_flash_attention_thread_count_invariant(rng):
    q, k, v = _qkv((1, 4, 2, 70, 70, 16, 16), np.float32, rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = tsol.flash_attention(q, k, v, causal=True)
        numba.set_num_threads(before)
        many = tsol.flash_attention(q, k, v, causal=True)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one.view(np.uint32), many.view(np.uint32))


def test_flash_attention_memory(rng):
    # No S x Skv buffer: TSOL's Python-side allocations (tracemalloc sees NumPy's) stay far below
    # one score matrix. The kernels' own scratch is a few tiles per task (see the kernel module).
    s, d = 1024, 32
    q, k, v = _qkv((1, 2, 2, s, s, d, d), np.float32, rng)
    tsol.flash_attention(q, k, v)                       # compile outside the measurement
    tracemalloc.start()
    tsol.flash_attention(q, k, v, causal=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * s * s * 4 / 10


def test_flash_attention_errors(rng):
    q, k, v = _qkv((1, 4, 2, 5, 6, 8, 8), np.float32, rng)
    fa, name = tsol.flash_attention, "tsol.flash_attention"
    fails(lambda: fa(q[0], k[0], v[0]), ShapeError, name, "4-d")
    fails(lambda: fa(q, k[:, :1].repeat(3, 1), v[:, :1].repeat(3, 1)), ShapeError, name,
         "multiple")
    fails(lambda: fa(q, k[..., :4], v), ShapeError, name, "head_dim")
    fails(lambda: fa(q, k, v[:, :, :5]), ShapeError, name, "differ")
    fails(lambda: fa(q, k[:, :1], v), ShapeError, name, "differ")
    fails(lambda: fa(np.concatenate([q, q]), k, v), ShapeError, name, "batch")
    fails(lambda: fa(q, k.astype(np.float64), v), DTypeError, name, "one dtype")
    fails(lambda: fa(q.astype(np.int32), k.astype(np.int32), v.astype(np.int32)), DTypeError,
         name)
    fails(lambda: fa(q.tolist(), k, v), ArgumentError, name, "list")
    for bad in (0, -4, 2.5, True):
        fails(lambda bad=bad: fa(q, k, v, block_q=bad), ArgumentError, name, "block_q")
        fails(lambda bad=bad: fa(q, k, v, block_k=bad), ArgumentError, name, "block_k")
    fails(lambda: fa(q, k, v, scale="big"), ArgumentError, name, "scale")
    fails(lambda: fa(q, k, v, causal="yes"), ArgumentError, name, "causal")
    fails(lambda: fa(q, k, v, out=np.empty((1, 4, 5, 7), np.float32)), ShapeError, name, "out=")
    fails(lambda: fa(q, k, v, out=np.empty((1, 4, 5, 8))), DTypeError, name, "out=")


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_vjp(causal, rng):
    # The non-fused backward (TSOL matmul/softmax ops), GQA and S != Skv both ways.
    for shape in [(1, 4, 2, 5, 3, 3, 2), (1, 2, 2, 3, 6, 3, 2)]:
        q, k, v = _qkv(shape, np.float64, rng, low=-1.0, high=1.0)
        check_vjp(lambda q, k, v: tsol.flash_attention(q, k, v, causal=causal), [q, k, v],
                  lambda g, q, k, v: run_vjp("flash_attention", g, (q, k, v),
                                             causal=causal)[:3])


# --- flash_attention with an additive mask --------------------------------------------------

# (B, H, Hkv, S, Skv, D, Dv): S and Skv odd, past the 64-key tile, both ways round.
MASK_SHAPES = [(2, 4, 2, 7, 33, 8, 6), (1, 2, 1, 70, 9, 16, 16), (2, 2, 2, 129, 131, 8, 8)]
MASK_BROADCASTS = ["S,Skv", "B,1,S,Skv", "B,H,S,Skv", "B,1,1,Skv", "H,S,1", "Skv"]
"""Mask shapes by the [B, H, S, Skv] axes they keep (the others 1 or absent)."""


def mask_shape(spec: str, b: int, h: int, s: int, skv: int) -> tuple[int, ...]:
    sizes = {"B": b, "H": h, "S": s, "Skv": skv, "1": 1}
    return tuple(sizes[a] for a in spec.split(","))


def random_mask(shape, dt, rng, *, drop=0.2):
    """Uniform biases in [-2, 2) with about ``drop`` of them -inf and, where the mask has a
    query axis, its second query row all -inf (that query sees no key)."""
    m = rng.uniform(-2.0, 2.0, shape)
    m[rng.random(shape) < drop] = -np.inf
    if len(shape) >= 2 and shape[-2] > 1:
        m[..., 1, :] = -np.inf
    return m.astype(dt)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=shape_id)
def test_flash_attention_mask(shape, dt, rng):
    q, k, v = _qkv(shape, dt, rng)
    b, h, _, s, skv = shape[:5]
    for spec in MASK_BROADCASTS:
        mask = random_mask(mask_shape(spec, b, h, s, skv), dt, rng)
        for causal in (False, True):
            want = reference("flash_attention", q, k, v, mask, causal=causal,
                             scale=1 / math.sqrt(shape[5]))
            for bq, bk in BLOCKS[:2]:
                got = tsol.flash_attention(q, k, v, mask, causal=causal, block_q=bq, block_k=bk)
                assert got.dtype == dt and got.shape == want.shape
                assert_close(got, want, dt, rtol_mult=_rtol_mult(shape[5], skv),
                             what=f"mask {spec} causal={causal} blocks={bq},{bk}")


def test_flash_attention_mask_rows_without_keys_dtypes_and_out(rng):
    q, k, v = _qkv((1, 2, 2, 9, 13, 8, 8), np.float32, rng)
    mask = random_mask((9, 13), np.float32, rng)
    want = _ref_masked(q, k, v, mask)
    # A query whose keys are all -inf gives zeros, as the reference defines.
    got = tsol.flash_attention(q, k, v, mask)
    np.testing.assert_array_equal(got[:, :, 1], 0.0)
    assert_close(got, want, np.float32, rtol_mult=2)
    # Masks of other float dtypes than q's: converted to the compute type.
    for mdt in (np.float64, np.float16, ml_dtypes.bfloat16):
        m = mask.astype(mdt)
        assert_close(tsol.flash_attention(q, k, v, m), _ref_masked(q, k, v, m), np.float32,
                     rtol_mult=2, what=str(np.dtype(mdt)))
    # out= (filled with NaN first), a non-contiguous mask view, and a mask with -inf alone.
    out = np.full(want.shape, np.nan, np.float32)
    assert tsol.flash_attention(q, k, v, mask, out=out) is out
    assert_close(out, want, np.float32, rtol_mult=2, what="out=")
    strided = np.concatenate([mask, mask], axis=-1)[:, ::2]
    assert_close(tsol.flash_attention(q, k, v, strided), _ref_masked(q, k, v, strided),
                 np.float32, rtol_mult=2, what="strided mask")
    zeros = np.zeros((9, 13), np.float32)
    assert_close(tsol.flash_attention(q, k, v, zeros), _ref_attention(q, k, v, False),
                 np.float32, rtol_mult=2, what="zero mask")
    # causal and a mask together may leave a query no key: zeros again.
    m = np.zeros((9, 13), np.float32)
    m[:, :5] = -np.inf                      # causal query 0 sees keys 0..4 alone
    np.testing.assert_array_equal(tsol.flash_attention(q, k, v, m, causal=True)[:, :, 0], 0.0)


def _ref_masked(q, k, v, mask, causal=False):
    return reference("flash_attention", q, k, v, mask, causal=causal,
                     scale=1 / math.sqrt(q.shape[-1]))


def test_flash_attention_mask_nonfinite(rng):
    q, k, v = _qkv((1, 2, 1, 6, 70, 4, 4), np.float32, rng)
    for bad in (np.nan, np.inf):
        mask = np.zeros((6, 70), np.float32)
        mask[2, 66] = bad                      # in the second key tile
        got = tsol.flash_attention(q, k, v, mask)
        want = _ref_masked(q, k, v, mask)
        assert np.isnan(want[0, :, 2]).all(), "the reference's rule"
        assert np.isnan(got[0, :, 2]).all()
        assert not np.isnan(np.delete(got[0], 2, 1)).any()
    # Large finite biases (exp(100) overflows float32) do not overflow: the running max
    # absorbs them.
    big = np.full((6, 70), 100.0, np.float32)
    assert_close(tsol.flash_attention(q, k, v, big), _ref_attention(q, k, v, False), np.float32,
                 rtol_mult=2)


def test_flash_attention_mask_errors(rng):
    q, k, v = _qkv((2, 4, 2, 5, 6, 8, 8), np.float32, rng)
    fa, name = tsol.flash_attention, "tsol.flash_attention"
    fails(lambda: fa(q, k, v, np.zeros((5, 6), bool)), DTypeError, name, "mask", "np.where")
    fails(lambda: fa(q, k, v, np.zeros((5, 6), np.int32)), DTypeError, name, "mask")
    fails(lambda: fa(q, k, v, np.zeros((6, 5), np.float32)), ShapeError, name, "(6, 5)",
          "[2, 4, 5, 6]", "[B, 1, S, Skv]")
    fails(lambda: fa(q, k, v, np.zeros((3, 1, 5, 6), np.float32)), ShapeError, name, "mask")
    fails(lambda: fa(q, k, v, np.zeros((1, 2, 4, 5, 6), np.float32)), ShapeError, name, "mask")
    fails(lambda: fa(q, k, v, 0.5), ArgumentError, name, "Python scalar")
    fails(lambda: fa(q, k, v, mask=[0.0] * 6), ArgumentError, name, "list")


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_mask_vjp(causal, rng):
    # dq, dk, dv and the mask's cotangent (dS summed over its broadcast axes), GQA, S != Skv
    # both ways, masks broadcast over batch and heads or given per head, -inf entries and a
    # query that sees no key.
    for shape, spec in [((2, 4, 2, 5, 3, 3, 2), "S,Skv"), ((1, 4, 2, 3, 6, 3, 2), "H,S,Skv"),
                        ((2, 2, 1, 4, 5, 3, 3), "B,1,1,Skv")]:
        q, k, v = _qkv(shape, np.float64, rng, low=-1.0, high=1.0)
        b, h, _, s, skv = shape[:5]
        mask = random_mask(mask_shape(spec, b, h, s, skv), np.float64, rng, drop=0.15)
        check_vjp(lambda q, k, v, m: tsol.flash_attention(q, k, v, m, causal=causal),
                  [q, k, v, mask],
                  lambda g, q, k, v, m: run_vjp("flash_attention", g, (q, k, v, m),
                                                causal=causal))


# --- scaled_dot_product_attention ---------------------------------------------------------

def _torch_sdpa_ref(q, k, v, is_causal, scale=None):
    """PyTorch's reference: a top-left aligned causal mask (query i sees keys j <= i)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, 1), np.repeat(v, group, 1)
    s = q @ k.swapaxes(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("s, skv", [(6, 6), (4, 9), (9, 4)])
def test_scaled_dot_product_attention(s, skv, rng):
    q, k, v = _qkv((1, 4, 2, s, skv, 8, 8), np.float32, rng)
    sdpa = tsol.scaled_dot_product_attention
    assert "scaled_dot_product_attention" in tsol.ops.attention.__all__
    for causal in (False, True):
        got = sdpa(q, k, v, is_causal=causal, scale=0.2, enable_gqa=True)
        assert_close(got, _torch_sdpa_ref(q, k, v, causal, 0.2), np.float32,
                     rtol_mult=_rtol_mult(8, skv), what=f"is_causal={causal}")
    name = "tsol.scaled_dot_product_attention"
    fails(lambda: sdpa(q, k, v), ShapeError, name, "enable_gqa")
    fails(lambda: sdpa(q, k, v, attn_mask=np.ones((s, skv), bool), enable_gqa=True),
         ArgumentError, name, "attn_mask")
    fails(lambda: sdpa(q, k, v, dropout_p=0.1, enable_gqa=True), ArgumentError, name, "dropout")
    fails(lambda: sdpa(q[0], k[0], v[0]), ShapeError, name, "4-d")


# --- rope ---------------------------------------------------------------------------------

ROPE_SHAPES = [(1, 2), (7, 8), (2, 3, 129, 16), (3, 0, 4)]


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rope(shape, dt, rng):
    x = rand(shape, dt, rng)
    assert_close(tsol.rope(x), reference("rope", x, None, theta=10000.0), dt, what="default")
    s = shape[-2]
    for pos in (rng.integers(-100, 5000, s), rng.integers(0, 50, shape[:-1])):
        for theta in (10000.0, 500.0):
            got = tsol.rope(x, positions=pos, theta=theta)
            assert_close(got, reference("rope", x, pos, theta=theta), dt, what=f"{pos.shape}")
    out = np.full(shape, np.nan, dtype=dt)
    assert tsol.rope(x, out=out) is out
    assert_close(out, reference("rope", x, None, theta=10000.0), dt, what="out=")


def test_rope_views_and_broadcast(rng):
    x = rand((2, 3, 9, 8), np.float32, rng)
    want = reference("rope", x, None, theta=10000.0)
    for name, v in views(x):
        assert_close(tsol.rope(v), reference("rope", v, None, theta=10000.0), np.float32,
                     what=name)
    pos = rng.integers(0, 9, (2, 1, 9)).astype(np.int32)  # per-batch offsets, broadcast on heads
    assert_close(tsol.rope(x, positions=pos), reference("rope", x, pos, theta=10000.0),
                 np.float32)
    one = rand((6,), np.float64, rng)                      # 1-d x with a 0-d position
    assert_close(tsol.rope(one, positions=np.array(3)),
                 reference("rope", one, np.array(3), theta=10000.0), np.float64)
    assert tsol.rope(x, out=x) is x                         # in place
    assert_close(x, want, np.float32, what="in place")


def test_rope_errors(rng):
    x = rand((2, 5, 8), np.float32, rng)
    name = "tsol.rope"
    fails(lambda: tsol.rope(rand((2, 5, 7), np.float32, rng)), ShapeError, name, "even")
    fails(lambda: tsol.rope(rand((8,), np.float32, rng)), ShapeError, name, "[..., S, D]")
    fails(lambda: tsol.rope(np.float32(1.0)), ShapeError, name)
    fails(lambda: tsol.rope(x.astype(np.int32)), DTypeError, name)
    fails(lambda: tsol.rope(x, positions=np.arange(5.0)), DTypeError, name, "integer")
    fails(lambda: tsol.rope(x, positions=np.arange(4)), ShapeError, name, "broadcast")
    fails(lambda: tsol.rope(x, positions=3), ArgumentError, name, "Python scalar")
    fails(lambda: tsol.rope(x, theta=-1.0), ArgumentError, name, "theta")
    fails(lambda: tsol.rope(x.tolist()), ArgumentError, name)
    fails(lambda: tsol.rope(x, out=np.empty((2, 5, 8))), DTypeError, name, "out=")


def test_rope_vjp(rng):
    x = rand((2, 3, 6), np.float64, rng)
    check_vjp(lambda x: tsol.rope(x), [x], lambda g, x: run_vjp("rope", g, (x,))[:1])
    pos = rng.integers(-20, 100, (2, 3))
    check_vjp(lambda x: tsol.rope(x, positions=pos, theta=50.0), [x],
              lambda g, x: run_vjp("rope", g, (x,), positions=pos, theta=50.0)[:1])

