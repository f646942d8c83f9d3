"""CUDA flash_attention and rope against their float64 references.

flash_attention: the SIMT kernel for every float dtype and the tensor-core kernel for float16 and
bfloat16 (each forced through its config), causal and not, grouped-query attention, odd sequence
lengths with S != Skv both ways (queries that see no key give zeros), explicit tiles and scale,
views, out=, empty operands and NaN rows; additive masks (both kernels, broadcast over batch,
heads or queries, -inf entries, queries that see no key, NaN entries, another dtype than q's,
strided views). rope: every float dtype, default and explicit
positions (a [S] vector, per-sequence [B, S] offsets, large and negative values), odd pair
counts, 1-d input, views and empty input.
"""

import math

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    HOST,
    check,
    on_cuda,
    run,
    size,
    to_device,
    to_host,
)
from tests.support import FLOAT_DTYPES, assert_close, dtype_id, rand, reference, views
from tsol import dtypes
from tsol.errors import ShapeError, TSOLError
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

TC = Config(path="tc", warps=4, rows=16, keys=64)
SIMT = Config(path="simt", warps=1, rows=4, keys=32) if HOST else \
    Config(path="simt", warps=4, rows=8, keys=32)


def qkv(b, h, hkv, s, skv, d, dv, dt, rng):
    return (rand((b, h, s, d), dt, rng), rand((b, hkv, skv, d), dt, rng),
            rand((b, hkv, skv, dv), dt, rng))


def check_attention(q, k, v, dt, **attrs):
    scale = attrs.get("scale")
    ref = dict(attrs, scale=1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    ref.pop("block_q", None)
    ref.pop("block_k", None)
    mult = max(1.0, math.sqrt(q.shape[3] + k.shape[2]) / 4)
    return check("flash_attention", [q, k, v], attrs, dt, ref_attrs=ref, rtol_mult=mult)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_simt_every_dtype_gqa_odd_sizes(dt, forced, rng):
    forced(SIMT, only="flash_attention")
    shape = (1, 2, 1, 19, 23, 8, 6) if HOST else (2, 8, 2, 300, 333, 64, 48)
    q, k, v = qkv(*shape, dt, rng)
    for causal in (False, True):
        check_attention(q, k, v, dt, causal=causal)


@pytest.mark.parametrize("dt", [dtypes.float16, dtypes.bfloat16], ids=dtype_id)
def test_tensor_cores_gqa_odd_sizes(dt, forced, rng):
    forced(TC, only="flash_attention")
    shapes = [(1, 2, 1, 19, 70, 16, 16)] if HOST else \
        [(2, 4, 2, 257, 300, 128, 128), (1, 8, 1, 300, 129, 64, 64), (1, 2, 2, 77, 77, 32, 48)]
    for shape in shapes:
        q, k, v = qkv(*shape, dt, rng)
        for causal in (False, True):
            check_attention(q, k, v, dt, causal=causal)


def test_tiles_scale_and_queries_without_keys(forced, rng):
    forced(SIMT, only="flash_attention")
    q, k, v = qkv(1, 2, 2, size(9, 200), size(4, 90), 8, 8, np.float32, rng)
    got = check_attention(q, k, v, np.float32, causal=True, scale=0.3, block_q=5, block_k=40)
    if not COMPILE_ONLY:           # S > Skv, causal: the first S - Skv queries see no key
        np.testing.assert_array_equal(got[:, :, :q.shape[2] - k.shape[2]], 0.0)
    check_attention(q, k, v, np.float32, causal=False, block_q=3, block_k=64)


@pytest.mark.parametrize("config", [SIMT, TC], ids=["simt", "tc"])
def test_views_out_empty_and_nan(config, forced, rng):
    forced(config, only="flash_attention")
    dt = dtypes.float32 if config is SIMT else dtypes.float16
    q, k, v = qkv(1, 2, 2, size(7, 100), size(9, 130), 16, 16, dt, rng)
    wide = np.concatenate([q, rand(q.shape, dt, rng)], axis=-1)
    q = wide[..., ::2]
    with on_cuda():
        # Views made on the device: a strided q, head-major k and v (not C-contiguous).
        dq = to_device(wide)[..., ::2]
        dk, dv = (to_device(np.ascontiguousarray(a.swapaxes(1, 2))).swapaxes(1, 2)
                  for a in (k, v))
        viewed = tsol.flash_attention(dq, dk, dv, causal=True)
        out = to_device(np.full(q.shape, np.nan, dt))
        assert tsol.flash_attention(dq, dk, dv, out=out) is out
        empty_k = to_device(np.zeros((1, 2, 0, 16), dt))
        zeros = tsol.flash_attention(dq, empty_k, empty_k)
        no_q = tsol.flash_attention(to_device(np.zeros((1, 2, 0, 16), dt)), dk, dv)
    assert no_q.shape == (1, 2, 0, 16)
    if COMPILE_ONLY:
        return
    mult = math.sqrt(16 + k.shape[2]) / 4
    assert_close(to_host(viewed), reference("flash_attention", q, k, v, causal=True,
                                            scale=0.25), dt, rtol_mult=mult)
    assert_close(to_host(out), reference("flash_attention", q, k, v, causal=False, scale=0.25),
                 dt, rtol_mult=mult)
    np.testing.assert_array_equal(to_host(zeros).astype(np.float64), 0.0)
    bad = q.copy()
    bad[0, 1, 2, 3] = np.nan
    got = run("flash_attention", [bad, k, v])
    assert np.isnan(got[0, 1, 2].astype(np.float32)).all()
    assert not np.isnan(np.delete(got[0, 1], 2, 0).astype(np.float32)).any()


MASKS = ["S,Skv", "B,1,S,Skv", "B,H,S,Skv", "B,1,1,Skv"]
"""Mask shapes by the [B, H, S, Skv] axes they keep (the others 1 or absent)."""


def random_mask(spec, b, h, s, skv, dt, rng):
    """Biases in [-2, 2), a fifth of them -inf, and query row 1 (where there is a query axis)
    all -inf: that query sees no key and gives zeros."""
    sizes = {"B": b, "H": h, "S": s, "Skv": skv, "1": 1}
    shape = tuple(sizes[a] for a in spec.split(","))
    m = rng.uniform(-2.0, 2.0, shape)
    m[rng.random(shape) < 0.2] = -np.inf
    if "S" in spec.split(","):
        m[..., 1, :] = -np.inf
    return m.astype(dt)


def run_masked(q, k, v, mask, dt, causal):
    """flash_attention with ``mask`` on cuda against the float64 reference."""
    got = run("flash_attention", [q, k, v, mask], {"causal": causal})
    if not COMPILE_ONLY:
        want = reference("flash_attention", q, k, v, mask, causal=causal,
                         scale=1 / math.sqrt(q.shape[-1]))
        mult = max(1.0, math.sqrt(q.shape[3] + k.shape[2]) / 4)
        assert_close(got, want, dt, rtol_mult=mult, what=f"mask {mask.shape} causal={causal}")
    return got


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_simt_mask_every_dtype_broadcasts_and_gqa(dt, forced, rng):
    forced(SIMT, only="flash_attention")
    shape = (2, 2, 1, 7, 37, 8, 6) if HOST else (2, 8, 2, 300, 333, 64, 48)
    q, k, v = qkv(*shape, dt, rng)
    b, h, _, s, skv = shape[:5]
    # Under the simulator one broadcast a dtype (each call is slow); every one on a GPU.
    picks = [(MASKS[FLOAT_DTYPES.index(dt)], True)] if HOST else \
        [(spec, causal) for spec in MASKS for causal in (False, True)]
    for spec, causal in picks:
        run_masked(q, k, v, random_mask(spec, b, h, s, skv, dt, rng), dt, causal)


@pytest.mark.parametrize("dt", [dtypes.float16, dtypes.bfloat16], ids=dtype_id)
def test_tensor_cores_mask_broadcasts_and_dtypes(dt, forced, rng):
    forced(TC, only="flash_attention")
    shape = (1, 2, 1, 19, 70, 16, 16) if HOST else (2, 4, 2, 257, 300, 128, 128)
    q, k, v = qkv(*shape, dt, rng)
    b, h, _, s, skv = shape[:5]
    # The mask's own dtype need not be q's: a float32 mask, and one of q's dtype.
    run_masked(q, k, v, random_mask("B,1,S,Skv", b, h, s, skv, np.float32, rng), dt, True)
    run_masked(q, k, v, random_mask("B,H,S,Skv" if HOST else "B,1,1,Skv", b, h, s, skv, dt,
                                    rng), dt, False)


@pytest.mark.parametrize("config", [SIMT, TC], ids=["simt", "tc"])
def test_mask_rows_without_keys_nan_and_views(config, forced, rng):
    forced(config, only="flash_attention")
    dt = dtypes.float32 if config is SIMT else dtypes.float16
    q, k, v = qkv(1, 2, 2, size(5, 100), size(40, 130), 16, 16, dt, rng)
    mask = np.zeros((q.shape[2], k.shape[2]), np.float64)
    mask[1] = -np.inf                      # query 1 sees no key: zeros
    mask[3, k.shape[2] - 2] = np.nan       # query 3 becomes NaN, its neighbours do not
    mask[:, 0] = -np.inf
    got = run("flash_attention", [q, k, v, mask])
    with on_cuda():                        # a strided mask view made on the device
        wide = to_device(np.repeat(mask, 2, axis=-1))[:, ::2]
        viewed = tsol.flash_attention(*(to_device(a) for a in (q, k, v)), wide)
    if COMPILE_ONLY:
        return
    got = got.astype(np.float32)
    np.testing.assert_array_equal(got[:, :, 1], 0.0)
    assert np.isnan(got[:, :, 3]).all()
    assert not np.isnan(np.delete(got, 3, axis=2)).any()
    want = reference("flash_attention", q, k, v, mask, causal=False, scale=0.25)
    assert_close(got, want, dt, rtol_mult=math.sqrt(16 + k.shape[2]) / 4)
    assert_close(to_host(viewed), want, dt, rtol_mult=math.sqrt(16 + k.shape[2]) / 4)


def test_scaled_dot_product_attention_and_errors(rng):
    q, k, v = qkv(1, 4, 2, size(6, 65), size(9, 80), 8, 8, np.float32, rng)
    # A plain function over flash_attention (no op of its own): no kernel to register.
    got = run("scaled_dot_product_attention", [q, k, v], {"scale": 0.2, "enable_gqa": True})
    if not COMPILE_ONLY:
        want = reference("flash_attention", q, k, v, causal=False, scale=0.2)
        assert_close(got, want, np.float32, rtol_mult=2)
    # is_causal is PyTorch's top-left mask: for L <= S it is flash_attention on the first L keys.
    got = run("scaled_dot_product_attention", [q, k, v], {"is_causal": True, "enable_gqa": True})
    if not COMPILE_ONLY:
        lq = q.shape[2]
        want = reference("flash_attention", q, k[:, :, :lq], v[:, :, :lq], causal=True,
                         scale=1 / math.sqrt(8))
        assert_close(got, want, np.float32, rtol_mult=2)
    with on_cuda(), pytest.raises(ShapeError) as info:
        tsol.flash_attention(*(to_device(a) for a in (q, k[:, :1].repeat(3, 1), v)))
    assert isinstance(info.value, TSOLError) and "tsol.flash_attention" in str(info.value)


# --- rope ---------------------------------------------------------------------------------

def check_rope(x, dt, positions=None, theta=10000.0):
    attrs = {"theta": theta}
    if positions is not None:
        attrs["positions"] = to_device(positions)
    got = run("rope", [x], attrs)
    if not COMPILE_ONLY:
        assert_close(got, reference("rope", x, positions, theta=theta), dt)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_rope_dtypes_default_and_explicit_positions(dt, rng):
    b, h, s, d = (2, 2, size(5, 333), size(6, 128))
    x = rand((b, h, s, d), dt, rng)
    check_rope(x, dt)
    check_rope(x, dt, rng.integers(-9000, 90000, size=s), theta=500000.0)
    check_rope(x, dt, rng.integers(0, 4096, size=(b, 1, s)).astype(np.int32))  # over H


@pytest.mark.parametrize("given", [False, True], ids=["default", "positions"])
def test_rope_replays_from_its_third_call(given, rng, monkeypatch):
    """Eager rope calls replay their recorded launches (the table of kept default positions
    passed as a constant, a table of given positions allocated afresh), skip the kernel's host
    code, and stay right on fresh inputs."""
    from tsol.kernels.cuda import attention
    s, d = size(7, 2048), size(8, 128)
    pos = rng.integers(0, 5000, size=s) if given else None
    with on_cuda():
        for call in range(4):
            if call == 2:
                def fail(*a, **k):
                    raise AssertionError("rope's host code ran on a replayed call")
                monkeypatch.setattr(attention, "_rope_table", fail)
                monkeypatch.setattr(attention, "_rope_direct_kernel", fail)
            x = rand((2, size(3, 4), s, d), np.float32, rng)
            got = tsol.rope(to_device(x), positions=None if pos is None else to_device(pos))
            if not COMPILE_ONLY:
                assert_close(to_host(got), reference("rope", x, pos, theta=10000.0), np.float32)


def test_rope_odd_pairs_1d_views_and_empty(rng):
    x = rand((size(3, 1000), 10), np.float32, rng)       # 5 pairs a row
    for _, view in views(x):
        check_rope(view, np.float32)
    with on_cuda():                   # views made on the device: strided rows, strided pairs
        rows = tsol.rope(to_device(np.concatenate([x, x], axis=0))[::2])
        cols = tsol.rope(to_device(np.concatenate([x, x], axis=-1))[:, ::2])
    if not COMPILE_ONLY:
        want = reference("rope", np.concatenate([x, x], axis=0)[::2], None, theta=10000.0)
        assert_close(to_host(rows), want, np.float32)
        want = reference("rope", np.concatenate([x, x], axis=-1)[:, ::2], None, theta=10000.0)
        assert_close(to_host(cols), want, np.float32)
    check_rope(x[0], np.float32, np.array(7))
    check_rope(rand((4, 3, 2), dtypes.bfloat16, rng), dtypes.bfloat16, np.arange(3))
    check_rope(np.zeros((0, 4), np.float32), np.float32)
    with on_cuda(), pytest.raises(ShapeError):
        tsol.rope(to_device(np.zeros((2, 3), np.float32)))
