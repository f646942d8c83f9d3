"""Passes and kernel counts: canonicalize, rewrite and fuse, each checked against the unfused
path and the float64 reference."""

import numpy as np
import pytest
from tsol.schedule import passes
from tsol.schedule.capture import trace

import tsol
from tests.support import assert_close
from tsol import op
from tsol.ops.base import meta_of


def optimized_ops(fn, *arrays):
    g, _ = trace(fn, [meta_of(a) for a in arrays])
    return [n.op for n in passes.run_passes(g).live() if n.is_op]


def test_elementwise_chain_runs_as_one_kernel(rng):
    p = op.pipeline([op.relu, lambda x: x * 2 + 1, op.tanh])
    x = rng.standard_normal((33, 65)).astype(np.float32)
    got = p(x)
    assert p.kernel_count() == 1
    assert_close(got, np.tanh(np.maximum(x.astype(np.float64), 0) * 2 + 1), np.float32)
    unfused = tsol.tanh(tsol.add(tsol.multiply(tsol.relu(x), 2), 1))
    assert_close(got, unfused, np.float32)
    text = p.explain()
    assert "fused_elementwise[relu -> multiply -> add -> tanh]" in text
    assert "launch 1 tiles of 4096 elements" in text        # 33 * 65 elements, one tile


def test_broadcast_chain_and_reused_values_fuse(rng):
    f = tsol.jit(lambda x, b: x * tsol.sigmoid(x + b) - b)
    x = rng.standard_normal((7, 129)).astype(np.float32)
    b = rng.standard_normal((1, 129)).astype(np.float32)
    got = f(x, b)
    assert f.kernel_count() == 1
    x64, b64 = x.astype(np.float64), b.astype(np.float64)
    assert_close(got, x64 / (1 + np.exp(-(x64 + b64))) - b64, np.float32)


def test_value_used_outside_the_group_is_materialized(rng):
    f = tsol.jit(lambda x: (tsol.exp(x) * 2, tsol.sum(tsol.exp(x), axis=-1)))
    x = rng.standard_normal((4, 9)).astype(np.float32)
    a, s = f(x)
    assert_close(a, 2 * np.exp(x.astype(np.float64)), np.float32)
    assert_close(s, np.exp(x.astype(np.float64)).sum(-1), np.float32, scale=9)
    assert f.kernel_count() == 3                     # exp, its double, the sum


def test_residual_add_then_layernorm_is_one_kernel(rng):
    g = rng.standard_normal(129).astype(np.float32)
    b = rng.standard_normal(129).astype(np.float32)
    f = tsol.jit(lambda x, r: op.layernorm(x + r, g, b))
    x = rng.standard_normal((5, 129)).astype(np.float32)
    r = rng.standard_normal((5, 129)).astype(np.float32)
    got = f(x, r)
    assert f.kernel_count() == 1
    want = tsol.registry.get_op("layernorm").reference(
        x.astype(np.float64) + r, g.astype(np.float64), b.astype(np.float64), eps=1e-5)
    assert_close(got, want, np.float32)
    assert optimized_ops(lambda x, r: op.rmsnorm(x + r), x, r) == ["rmsnorm"]


def test_seed_pipeline(rng):
    X = rng.standard_normal((40, 24)).astype(np.float32)
    Y = op.pipeline([op.matmul(X, X.T), op.relu, op.layernorm])       # first stage applied
    p = op.pipeline([lambda X: op.matmul(X, X.T), op.relu, op.layernorm])
    got = p(X)
    assert p.kernel_count() <= 2                     # gemm with a relu epilogue, layernorm
    want = tsol.registry.get_op("layernorm").reference(
        np.maximum(X.astype(np.float64) @ X.T, 0), None, None, eps=1e-5)
    assert_close(got, want, np.float32, scale=24)
    assert_close(Y, want, np.float32, scale=24)
    text = p.explain()
    for part in ("Graph IR (captured)", "Schedule IR", "gemm", "epilogue='relu'",
                 "trans_b=True", "MFLOP"):
        assert part in text, part


def test_bias_activation_residual_into_the_matmul_epilogue(rng):
    x = rng.standard_normal((9, 16)).astype(np.float32)
    w = rng.standard_normal((16, 12)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    r = rng.standard_normal((9, 12)).astype(np.float32)
    f = tsol.jit(lambda x, w, b, r: tsol.gelu(x @ w + b) + r)
    got = f(x, w, b, r)
    assert f.kernel_count() == 1
    want = tsol.registry.get_op("matmul").reference(
        x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
        r.astype(np.float64), epilogue="gelu")
    assert_close(got, want, np.float32, scale=16)


@pytest.mark.parametrize("causal_scale", [0.125, 2.0])
def test_attention_module_is_one_flash_attention_kernel(rng, causal_scale):
    @tsol.graph.module("attention")
    def attention(q, k, v):
        return op.matmul(op.softmax(op.matmul(q, op.transpose(k, (0, 1, 3, 2)))
                                    * causal_scale), v)
    q, k, v = (rng.standard_normal((2, 3, 17, 8)).astype(np.float32) for _ in range(3))
    got = attention(q, k, v)
    assert attention.kernel_count() == 1
    assert "flash_attention" in attention.explain()
    want = tsol.registry.get_op("flash_attention").reference(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), causal=False,
        scale=causal_scale, block_q=None, block_k=None)
    assert_close(got, want, np.float32, scale=8)


def _fa_nodes(f, *args):
    """The flash_attention nodes of compiled ``f``'s optimized graph at ``args``."""
    return [n for n in f.executable(*args).optimized.live() if n.op == "flash_attention"]


@pytest.mark.parametrize("s, skv", [(17, 17), (5, 12), (9, 4)])
def test_causal_mask_constant_rewrites_to_causal_flash_attention(rng, s, skv):
    """``softmax(q k^T * scale + mask) v`` with a constant causal mask (bottom-right aligned,
    -inf above) is one causal flash_attention kernel without a mask operand; any other mask
    is one flash_attention kernel with the mask."""
    keep = np.arange(skv)[None, :] <= np.arange(s)[:, None] + (skv - s)
    causal = np.where(keep, 0.0, -np.inf).astype(np.float32)
    q = rng.standard_normal((2, 3, s, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 3, skv, 8)).astype(np.float32) for _ in range(2))
    ref = tsol.registry.get_op("flash_attention").reference
    other = causal.T.copy() if s == skv else causal[:, ::-1].copy()
    # A finite "causal" mask (-30: float32 keeps the scores' digits beside it) is no causal one.
    for mask, is_causal in ((causal, True), (np.where(keep, 0.0, -30.0).astype(np.float32), False),
                            (other, False)):
        f = tsol.jit(lambda q, k, v, mask=mask: op.matmul(
            op.softmax(op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * 0.3 + mask), v))
        got = f(q, k, v)
        assert f.kernel_count() == 1
        (node,) = _fa_nodes(f, q, k, v)
        assert node.attr["causal"] is is_causal and (node.inputs[3] is None) is is_causal
        want = ref(*(a.astype(np.float64) for a in (q, k, v, mask)), causal=False, scale=0.3)
        assert_close(got, want, np.float32, scale=8)


@pytest.mark.parametrize("mask_shape", [(2, 1, 9, 12), (9, 12), (2, 1, 1, 12), (3, 9, 12)],
                         ids=lambda s: "x".join(map(str, s)))
def test_attention_module_with_a_mask_is_one_flash_attention_kernel(rng, mask_shape):
    """A mask passed in (key padding, ALiBi-like biases, per-head masks; -inf entries and a
    query that sees no key) fuses into the one flash_attention kernel, in either operand
    order of the add."""
    @tsol.graph.module("masked_attention")
    def attention(q, k, v, mask):
        scores = op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * 0.35
        return op.matmul(op.softmax(mask + scores), v)
    q = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, 3, 12, 8)).astype(np.float32) for _ in range(2))
    mask = rng.uniform(-2, 2, mask_shape).astype(np.float32)
    mask[rng.random(mask_shape) < 0.2] = -np.inf
    if mask_shape[-2] > 1:
        mask[..., 1, :] = -np.inf
    got = attention(q, k, v, mask)
    assert attention.kernel_count() == 1
    assert "flash_attention" in attention.explain()
    want = tsol.registry.get_op("flash_attention").reference(
        *(a.astype(np.float64) for a in (q, k, v, mask)), causal=False, scale=0.35)
    assert_close(got, want, np.float32, scale=8)
    if mask_shape[-2] > 1:              # the query that sees no key: zeros (unfused: NaN)
        np.testing.assert_array_equal(got[:, :, 1], 0.0)


def test_mask_that_is_no_float_array_stays_unfused(rng):
    q, k, v = (rng.standard_normal((1, 2, 5, 4)).astype(np.float32) for _ in range(3))
    scores = lambda q, k: op.matmul(q, op.transpose(k, (0, 1, 3, 2)))  # noqa: E731
    ops = optimized_ops(lambda q, k, v: op.matmul(op.softmax(scores(q, k) + scores(q, k)), v),
                        q, k, v)
    assert "flash_attention" not in ops
    bigger = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)   # broadcasts the scores up
    ops = optimized_ops(lambda q, k, v, m: op.matmul(op.softmax(scores(q, k) + m), v), q, k, v,
                        bigger)
    assert "flash_attention" not in ops


def test_canonicalize_drops_noops_and_folds_scalars(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert optimized_ops(lambda x: tsol.astype(x * 1, np.float32) + 0, x) == []
    assert optimized_ops(lambda x: tsol.reshape(tsol.transpose(x, (0, 1)), (3, 4)), x) == []
    g, _ = trace(lambda x: (x * 2.0) * 3.0, [meta_of(x)])
    opt = passes.canonicalize(g)
    mults = [n for n in opt.live() if n.op == "multiply"]
    assert len(mults) == 1 and any(getattr(i, "value", None) == 6.0 for i in mults[0].inputs)
    assert optimized_ops(lambda x: op.matmul(op.transpose(x), x), x) == ["gemm"]


def test_buffers_of_dead_intermediates_are_reused(rng):
    def chain(x):
        for _ in range(6):
            x = tsol.max(tsol.sin(x), axis=-1, keepdims=True) + x   # unfusable boundaries
        return x
    f = tsol.jit(chain)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    got = f(x)
    want = x.astype(np.float64)
    for _ in range(6):
        want = np.sin(want).max(-1, keepdims=True) + want
    assert_close(got, want, np.float32, scale=8)
    s = f.executable(x).schedule
    assert len(s.buffers) <= 3 < len(s.launches)
