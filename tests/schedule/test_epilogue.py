"""fuse_epilogues: elementwise epilogues into reductions, softmax and norms, by kernel count and
against the float64 reference and the unfused ops; what must not fuse still runs correctly."""

import numpy as np
from scipy.special import softmax
from tsol.schedule import passes
from tsol.schedule.capture import trace
from tsol.schedule.epilogue import fuse_epilogues

import tsol
from tests.support import assert_close, rand
from tsol import dtypes
from tsol.ops.base import meta_of
from tsol.registry import get_op


def optimized(fn, *arrays):
    g, _ = trace(fn, [meta_of(a) for a in arrays])
    return passes.run_passes(g)


def optimized_ops(fn, *arrays):
    return [n.op for n in optimized(fn, *arrays).live() if n.is_op]


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def gelu(v):
    from scipy.special import erf
    return 0.5 * v * (1 + erf(v / np.sqrt(2)))


def test_softmax_times_a_weight_is_one_kernel(rng):
    fn = lambda x, w: tsol.softmax(x) * w        # noqa: E731
    f = tsol.jit(fn)
    x, w = rand((7, 129), np.float32, rng), rand((129,), np.float32, rng)
    got = f(x, w)
    assert f.kernel_count() == 1
    x64, w64 = f64(x, w)
    assert_close(got, softmax(x64, axis=-1) * w64, np.float32)
    assert_close(got, fn(x, w), np.float32, rtol_mult=2)


def test_exp_of_a_scaled_sum_of_squares_is_one_kernel(rng):
    fn = lambda x: tsol.exp(tsol.sum(x * x, axis=-1) * 0.5)        # noqa: E731
    f = tsol.jit(fn)
    x = rand((9, 33), np.float32, rng, low=-0.5, high=0.5)
    got = f(x)
    assert f.kernel_count() == 1
    assert optimized_ops(fn, x) == ["fused_reduction"]
    x64 = x.astype(np.float64)
    assert_close(got, np.exp((x64 * x64).sum(-1) * 0.5), np.float32, scale=10)
    assert_close(got, fn(x), np.float32, scale=10, rtol_mult=2)


def test_gelu_of_rmsnorm_is_one_kernel(rng):
    fn = lambda x, w: tsol.gelu(tsol.rmsnorm(x, w))        # noqa: E731
    f = tsol.jit(fn)
    x, w = rand((5, 65), np.float32, rng), rand((65,), np.float32, rng)
    got = f(x, w)
    assert f.kernel_count() == 1
    x64, w64 = f64(x, w)
    assert_close(got, gelu(get_op("rmsnorm").reference(x64, w64, eps=1e-6)), np.float32,
                 scale=3)
    assert_close(got, fn(x, w), np.float32, scale=3, rtol_mult=2)


def test_prologue_residual_norm_and_epilogue_in_one_kernel(rng):
    # (x * 2 + r) is the prologue (the residual add joins it), w and b then silu(.) * s the
    # epilogue; bfloat16 activations with float32 weights give a float32 result.
    fn = lambda x, r, w, b, s: tsol.silu(tsol.layernorm(x * 2.0 + r, w, b)) * s   # noqa: E731
    f = tsol.jit(fn)
    x, r = (rand((4, 33), dtypes.bfloat16, rng) for _ in range(2))
    w, b, s = (rand((33,), np.float32, rng, low=-1.0, high=1.0) for _ in range(3))
    got = f(x, r, w, b, s)
    assert f.kernel_count() == 1 and got.dtype == np.float32
    x64, r64, w64, b64, s64 = f64(x, r, w, b, s)
    y = get_op("layernorm").reference(x64 * 2.0 + r64, w64, b64, eps=1e-5)
    assert_close(got, y / (1 + np.exp(-y)) * s64, dtypes.bfloat16)


def test_keepdims_fold_and_a_result_of_another_dtype(rng):
    f = tsol.jit(lambda x: tsol.rsqrt(tsol.mean(x * x, axis=-1, keepdims=True) + 1e-5))
    x = rand((6, 40), np.float32, rng)
    got = f(x)
    assert f.kernel_count() == 1 and got.shape == (6, 1)
    x64 = x.astype(np.float64)
    assert_close(got, 1 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-5), np.float32)
    g = tsol.jit(lambda x: tsol.max(tsol.abs(x), axis=-1) > 2.0)
    got = g(x)
    assert g.kernel_count() == 1 and got.dtype == np.bool_
    np.testing.assert_array_equal(got, np.abs(x).max(-1) > 2.0)


def test_a_result_used_elsewhere_is_not_fused(rng):
    x, w = rand((4, 9), np.float32, rng), rand((9,), np.float32, rng)
    x64, w64 = f64(x, w)
    f = tsol.jit(lambda x, w: (tsol.softmax(x) * w, tsol.softmax(x)))    # returned: stored
    a, s = f(x, w)
    assert f.kernel_count() == 2
    assert_close(a, softmax(x64, axis=-1) * w64, np.float32)
    g = tsol.jit(lambda x: (tsol.exp(tsol.sum(x, axis=-1)), tsol.sum(x, axis=-1) + 1.0))
    e, p = g(x)
    assert g.kernel_count() == 3                        # the sum, then each of its users
    assert_close(e, np.exp(x64.sum(-1)), np.float32, scale=9 * 20)
    assert_close(p, x64.sum(-1) + 1.0, np.float32, scale=9)


def test_what_does_not_fuse_still_runs(rng):
    x, y = rand((5, 8), np.float32, rng), rand((5, 8), np.float32, rng)
    x64, y64 = f64(x, y)
    # larger than the result: x - max(x) is a prologue of what follows, not an epilogue
    f = tsol.jit(lambda x: tsol.exp(x - tsol.max(x, axis=-1, keepdims=True)))
    assert_close(f(x), np.exp(x64 - x64.max(-1, keepdims=True)), np.float32)
    assert f.kernel_count() == 2
    # two results in one consumer: one is the host, the other an extra of its epilogue
    g = tsol.jit(lambda x, y: tsol.sum(x, axis=-1) * tsol.max(y, axis=-1))
    assert_close(g(x, y), x64.sum(-1) * y64.max(-1), np.float32, scale=8 * 3)
    assert g.kernel_count() == 2
    # a reduction over a leading axis has no fused form
    assert optimized_ops(lambda x: tsol.exp(tsol.sum(x, axis=0)), x) == ["sum", "exp"]


def test_the_pass_alone_and_twice():
    x = np.ones((3, 4), np.float32)
    g, _ = trace(lambda x: tsol.sqrt(tsol.softmax(x) + 1.0), [meta_of(x)])
    once = fuse_epilogues(passes.fuse(g))
    nodes = [n for n in once.live() if n.is_op]
    assert [n.op for n in nodes] == ["fused_reduction"]
    assert [s.op for s in nodes[0].attr["epilogue"].steps] == ["add", "sqrt"]
    assert fuse_epilogues(once).key() == once.key()
    assert [name for name, _ in passes.PASSES][-2:] == ["fuse_prologues", "fuse_epilogues"]
