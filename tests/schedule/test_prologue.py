"""fuse_prologues: elementwise prologues into reductions, softmax and norms, by kernel count and
against the float64 reference; what must not fuse still runs correctly."""

import numpy as np
import pytest
from scipy.special import log_softmax, softmax
from tsol.schedule import passes
from tsol.schedule.capture import trace
from tsol.schedule.prologue import fuse_prologues

import tsol
from tests.support import assert_close, rand
from tsol import dtypes
from tsol.ops.base import meta_of
from tsol.registry import get_op


def optimized_ops(fn, *arrays):
    g, _ = trace(fn, [meta_of(a) for a in arrays])
    return [n.op for n in passes.run_passes(g).live() if n.is_op]


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def test_weighted_exp_sum_is_one_kernel(rng):
    f = tsol.jit(lambda x, w: tsol.sum(tsol.exp(x) * w, axis=-1))
    x, w = rand((7, 129), np.float32, rng), rand((129,), np.float32, rng)
    got = f(x, w)
    assert f.kernel_count() == 1
    assert "fused_reduction" in f.explain()
    x64, w64 = f64(x, w)
    terms = np.exp(x64) * w64
    assert_close(got, terms.sum(-1), np.float32, scale=np.abs(terms).sum(-1).max())


def test_shifted_exp_sum_is_one_kernel(rng):
    f = tsol.jit(lambda x, m, w: tsol.sum(tsol.exp(x - m) * w, axis=-1))
    x, w = rand((5, 33), np.float32, rng), rand((33,), np.float32, rng)
    m = x.max(-1, keepdims=True)
    got = f(x, m, w)
    assert f.kernel_count() == 1
    x64, m64, w64 = f64(x, m, w)
    assert_close(got, (np.exp(x64 - m64) * w64).sum(-1), np.float32, scale=33 * 3)


def test_mean_of_squares_single_elementwise_prologue(rng):
    f = tsol.jit(lambda x: tsol.mean(x * x, axis=-1))
    x = rand((9, 4099), np.float16, rng)
    got = f(x)
    assert f.kernel_count() == 1 and got.dtype == np.float16
    assert_close(got, (x.astype(np.float64) ** 2).mean(-1), np.float16, scale=9)


@pytest.mark.parametrize("op,ref", [("softmax", softmax), ("log_softmax", log_softmax)],
                         ids=["softmax", "log_softmax"])
def test_scaled_masked_softmax_is_one_kernel(op, ref, rng):
    f = tsol.jit(lambda x, mask: getattr(tsol, op)(x * 0.5 + mask, axis=-1))
    x = rand((2, 3, 17, 17), np.float32, rng)
    mask = np.triu(np.full((17, 17), -1e9, np.float32), 1)
    got = f(x, mask)
    assert f.kernel_count() == 1
    x64, mask64 = f64(x, mask)
    assert_close(got, ref(x64 * 0.5 + mask64, axis=-1), np.float32)


def test_layernorm_of_an_affine_prologue_is_one_kernel(rng):
    # x * a + b fused into the norm's loop; the weight and bias applied as it stores.
    f = tsol.jit(lambda x, a, w, bias: tsol.layernorm(x * a + 0.5, w, bias))
    x, a = rand((5, 37), np.float32, rng), rand((37,), np.float32, rng)
    w, bias = rand((37,), np.float32, rng), rand((37,), np.float32, rng)
    got = f(x, a, w, bias)
    assert f.kernel_count() == 1 and got.dtype == np.float32
    x64, a64, w64, b64 = f64(x, a, w, bias)
    ln = get_op("layernorm").reference
    assert_close(got, ln(x64 * a64 + 0.5, w64, b64, eps=1e-5), np.float32, scale=3)
    assert_close(got, tsol.layernorm(x * a + 0.5, w, bias), np.float32, scale=3, rtol_mult=2)


def test_norm_prologue_with_a_residual_and_weights_of_another_dtype(rng):
    # rewrite turns rmsnorm(x * 2 + r) into rmsnorm(x * 2, residual=r); the residual add joins
    # the prologue, the float32 weight the epilogue (cast back to bfloat16 as it stores).
    f = tsol.jit(lambda x, r, w: tsol.rmsnorm(x * 2.0 + r, w))
    x, r = (rand((3, 33), dtypes.bfloat16, rng) for _ in range(2))
    w = rand((33,), np.float32, rng)
    got = f(x, r, w)
    assert f.kernel_count() == 1 and got.dtype == dtypes.bfloat16
    x64, r64, w64 = f64(x, r, w)
    want = get_op("rmsnorm").reference(x64 * 2.0 + r64, w64, eps=1e-6)
    assert_close(got, want, dtypes.bfloat16, scale=3)


def test_mean_over_all_axes_and_keepdims(rng):
    x = rand((6, 5, 7), np.float32, rng)
    x64 = x.astype(np.float64)
    f = tsol.jit(lambda x: tsol.mean(tsol.exp(x) * 0.5))
    got = f(x)
    assert f.kernel_count() == 1 and got.shape == ()
    assert_close(got, (np.exp(x64) * 0.5).mean(), np.float32, scale=10)
    g = tsol.jit(lambda x: tsol.max(tsol.abs(x) - 1.0, axis=(1, 2), keepdims=True))
    got = g(x)
    assert g.kernel_count() == 1 and got.shape == (6, 1, 1)
    assert_close(got, (np.abs(x64) - 1.0).max(axis=(1, 2), keepdims=True), np.float32)


def test_prologue_value_used_elsewhere_is_not_fused(rng):
    f = tsol.jit(lambda x: (tsol.exp(x) * 2, tsol.sum(tsol.exp(x), axis=-1)))
    x = rand((4, 9), np.float32, rng)
    a, s = f(x)
    assert f.kernel_count() == 3                     # exp, its double, the sum
    x64 = x.astype(np.float64)
    assert_close(a, 2 * np.exp(x64), np.float32)
    assert_close(s, np.exp(x64).sum(-1), np.float32, scale=9 * 20)
    g = tsol.jit(lambda x: (x * x, tsol.min(x * x, axis=-1)))     # returned: stored anyway
    sq, lo = g(x)
    assert g.kernel_count() == 2
    assert_close(lo, (x64 * x64).min(-1), np.float32, scale=9)
    assert optimized_ops(lambda x: (x * 2.0, tsol.rmsnorm(x * 2.0)), x) == ["multiply", "rmsnorm"]


def test_what_does_not_fuse_still_runs(rng):
    x = rand((6, 8), np.float32, rng)
    x64 = x.astype(np.float64)
    # a leading axis, an integer value, a softmax along another axis, an empty reduction
    assert optimized_ops(lambda x: tsol.sum(tsol.exp(x), axis=0), x) == ["exp", "sum"]
    f = tsol.jit(lambda x: tsol.softmax(x * 2.0, axis=0))
    assert_close(f(x), softmax(x64 * 2.0, axis=0), np.float32)
    assert f.kernel_count() == 2
    i = rng.integers(-5, 5, size=(6, 8)).astype(np.int32)
    g = tsol.jit(lambda i: tsol.sum(i * i, axis=-1))
    np.testing.assert_array_equal(g(i), (i.astype(np.int64) ** 2).sum(-1))
    assert g.kernel_count() == 2
    e = np.empty((3, 0), np.float32)
    h = tsol.jit(lambda e: tsol.sum(tsol.exp(e), axis=-1))
    np.testing.assert_array_equal(h(e), np.zeros(3, np.float32))
    assert "fused_reduction" not in optimized_ops(lambda e: tsol.sum(tsol.exp(e), axis=-1), e)


def test_the_pass_alone_and_twice():
    x = np.ones((3, 4), np.float32)
    g, _ = trace(lambda x: tsol.mean(tsol.sqrt(x + 1.0), axis=-1), [meta_of(x)])
    once = fuse_prologues(passes.fuse(g))
    assert [n.op for n in once.live() if n.is_op] == ["fused_reduction"]
    assert fuse_prologues(once).key() == once.key()
