"""tsol.grad, value_and_grad and vjp against float64 finite differences."""

import numpy as np
import pytest

import tsol
from tests.support import assert_close, reference
from tsol import op


def numeric_grad(f, args, i, eps=1e-6):
    a = [np.array(x, dtype=np.float64) for x in args]
    out = np.zeros_like(a[i])
    flat = a[i].reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        plus = float(f(*a))
        flat[j] = old - eps
        minus = float(f(*a))
        flat[j] = old
        out.reshape(-1)[j] = (plus - minus) / (2 * eps)
    return out


def mlp_loss(w1, b1, w2, gamma, beta, x):
    h = op.layernorm(tsol.gelu(x @ w1 + b1), gamma, beta)
    return tsol.mean((h @ w2) ** 2)


def test_mlp_with_layernorm_and_gelu(rng):
    shapes = [(6, 10), (10,), (10, 3), (10,), (10,), (5, 6)]
    args = [rng.standard_normal(s) for s in shapes]
    grads = tsol.grad(mlp_loss, argnums=(0, 1, 2, 3, 4))(*args)
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, numeric_grad(mlp_loss, args, i), rtol=1e-5, atol=1e-7,
                                   err_msg=f"argument {i}")


def attention_loss(x, wq, wk, wv):
    b, s, d = 1, x.shape[0], wq.shape[1]
    q = tsol.reshape(x @ wq, (b, 1, s, d))
    k = tsol.reshape(x @ wk, (b, 1, s, d))
    v = tsol.reshape(x @ wv, (b, 1, s, d))
    att = op.matmul(op.softmax(op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * 0.5), v)
    return tsol.sum(tsol.tanh(att))


def test_attention_block(rng):
    args = [rng.standard_normal((7, 4)), *(rng.standard_normal((4, 4)) for _ in range(3))]
    df = tsol.grad(attention_loss, argnums=(0, 1, 2, 3))
    grads = df(*args)
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, numeric_grad(attention_loss, args, i), rtol=1e-5,
                                   atol=1e-7, err_msg=f"argument {i}")
    # The forward runs flash attention (rewritten before differentiating); the backward, by
    # flash_attention's VJP rule, recomputes the probabilities (one softmax) from q and k.
    schedule = df.explain().split("== Schedule IR ==")[1]
    assert schedule.count("kernel flash_attention") == 1
    assert schedule.count("softmax") == 1


def masked_attention_loss(x, wq, wk, bias, pad):
    # Learned ALiBi-like biases [1, 1, S, S] plus a constant key-padding mask (-inf).
    s, d = x.shape[0], wq.shape[1]
    q = tsol.reshape(x @ wq, (1, 1, s, d))
    k = tsol.reshape(x @ wk, (1, 1, s, d))
    v = tsol.reshape(x, (1, 1, s, x.shape[1]))
    scores = op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * 0.5 + (bias + pad)
    return tsol.sum(tsol.tanh(op.matmul(op.softmax(scores), v)))


def test_masked_attention_block_and_the_mask_gradient(rng):
    s = 6
    pad = np.zeros((1, 1, 1, s))
    pad[..., -2:] = -np.inf
    args = [rng.standard_normal((s, 4)), rng.standard_normal((4, 4)), rng.standard_normal((4, 4)),
            rng.standard_normal((1, 1, s, s)), pad]
    df = tsol.grad(masked_attention_loss, argnums=(0, 1, 2, 3))
    grads = df(*args)
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, numeric_grad(masked_attention_loss, args, i), rtol=1e-5,
                                   atol=1e-7, err_msg=f"argument {i}")
    np.testing.assert_array_equal(grads[3][..., -2:], 0.0)     # padded keys: no gradient
    schedule = df.explain().split("== Schedule IR ==")[1]
    assert schedule.count("kernel flash_attention") == 1


def attention_block_loss(x, w_qkv, gamma, beta):
    # One projection split into q, k and v, attention, a residual and a layernorm.
    s, d = x.shape
    q, k, v = (tsol.reshape(p, (1, 1, s, d)) for p in tsol.split(x @ w_qkv, 3, axis=-1))
    att = op.matmul(op.softmax(op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * d ** -0.5), v)
    h = op.layernorm(tsol.reshape(att, (s, d)) + x, gamma, beta)
    return tsol.sum(h * tsol.tanh(h))


def test_attention_block_with_split_projection(rng):
    args = [rng.standard_normal((5, 4)), rng.standard_normal((4, 12)) / 2,
            rng.standard_normal(4), rng.standard_normal(4)]
    vg = tsol.value_and_grad(attention_block_loss, argnums=(0, 1, 2, 3))
    v, grads = vg(*args)
    np.testing.assert_allclose(v, attention_block_loss(*args), rtol=1e-12)
    assert vg.explain().count("kernel flash_attention") == 1
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, numeric_grad(attention_block_loss, args, i), rtol=1e-5,
                                   atol=1e-7, err_msg=f"argument {i}")
    # float32 against float64 on the same rounded inputs.
    f32 = [a.astype(np.float32) for a in args]
    dw = tsol.grad(attention_block_loss, argnums=1)
    assert_close(dw(*f32), dw(*[a.astype(np.float64) for a in f32]), np.float32, scale=4)


def test_grad_through_split_with_an_unused_piece(rng):
    x = rng.standard_normal((3, 7))
    f = tsol.grad(lambda x: tsol.sum(tsol.sin(tsol.split(x, [2, 5], axis=1)[0]))
                  + tsol.sum(tsol.split(x, [2, 5], axis=1)[2] ** 2))
    want = np.zeros_like(x)
    want[:, :2] = np.cos(x[:, :2])
    want[:, 5:] = 2 * x[:, 5:]
    np.testing.assert_allclose(f(x), want, rtol=1e-12, atol=1e-14)
    with pytest.raises(tsol.ArgumentError, match="must return one array"):
        tsol.grad(lambda x: tsol.split(x, 3))(x)


def test_value_and_grad_and_vjp(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    v, g = tsol.value_and_grad(lambda x: tsol.sum(tsol.sin(x) * x))(x)
    np.testing.assert_allclose(v, np.sum(np.sin(x) * x), rtol=1e-5)
    np.testing.assert_allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-5, atol=1e-6)
    y, back = tsol.vjp(lambda a, b: tsol.exp(a) * b, x, x + 1)
    ct = rng.standard_normal((3, 4)).astype(np.float32)
    ga, gb = back(ct)
    np.testing.assert_allclose(y, np.exp(x) * (x + 1), rtol=1e-5)
    np.testing.assert_allclose(ga, ct * np.exp(x) * (x + 1), rtol=1e-5)
    np.testing.assert_allclose(gb, ct * np.exp(x), rtol=1e-5)


def classifier(w, b, x, targets, **kwargs):
    # Linear logits x @ w + b: [N, C] from x [N, F], or [N, C, d] (PyTorch's per-position
    # layout) from x [N, d, F].
    logits = x @ w + b
    if x.ndim == 3:
        logits = tsol.transpose(logits, (0, 2, 1))
    return tsol.cross_entropy(logits, targets, **kwargs)


CE_CASES = {    # id: (x shape, targets dtype, reduction, ignore_index)
    "mean": ((6, 5), np.int64, "mean", None),
    "sum": ((6, 5), np.int32, "sum", None),
    "mean-ignore": ((6, 5), np.int64, "mean", -100),
    "sum-ignore": ((6, 5), np.int64, "sum", -100),
    "mean-ignore-a-class": ((7, 5), np.uint8, "mean", 2),
    "per-position-mean-ignore": ((3, 4, 5), np.int64, "mean", -100),
}


@pytest.mark.parametrize("case", CE_CASES.values(), ids=CE_CASES.keys())
def test_classifier_cross_entropy(case, rng):
    xshape, tdt, red, ignore = case
    c = 4
    x = rng.standard_normal(xshape)
    targets = rng.integers(0, c, xshape[:-1]).astype(tdt)
    if ignore is not None:
        targets.reshape(-1)[::3] = ignore
    w, b = rng.standard_normal((xshape[-1], c)), rng.standard_normal(c)

    def loss(w, b):
        return classifier(w, b, x, targets, reduction=red, ignore_index=ignore)
    value, grads = tsol.value_and_grad(loss, argnums=(0, 1))(w, b)
    logits = x @ w + b
    want = reference("cross_entropy", logits if x.ndim == 2 else logits.transpose(0, 2, 1),
                     targets, reduction=red, ignore_index=ignore)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, numeric_grad(loss, [w, b], i), rtol=1e-5, atol=1e-7,
                                   err_msg=f"argument {i}")
    # In float32 (the mean's count of non-ignored samples is summed in float32 then).
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    dw32 = tsol.grad(lambda w, b: classifier(w, b, x32, targets, reduction=red,
                                             ignore_index=ignore))(w32, b32)
    assert_close(dw32, grads[0], np.float32, scale=4)


def test_cross_entropy_probabilities_and_per_sample_losses(rng):
    x, w, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    p = rng.random((5, 4))
    p /= p.sum(axis=1, keepdims=True)

    def soft(w, b, p):
        return classifier(w, b, x, p, reduction="sum")
    for i, g in enumerate(tsol.grad(soft, argnums=(0, 1, 2))(w, b, p)):
        np.testing.assert_allclose(g, numeric_grad(soft, [w, b, p], i), rtol=1e-5, atol=1e-7,
                                   err_msg=f"argument {i}")
    t = np.array([1, -100, 3, 0, 2])
    _, back = tsol.vjp(lambda w: classifier(w, b, x, t, reduction="none", ignore_index=-100), w)
    ct = rng.standard_normal(5)
    (gw,) = back(ct)
    np.testing.assert_allclose(gw, numeric_grad(lambda w: np.dot(ct, classifier(
        w, b, x, t, reduction="none", ignore_index=-100)), [w], 0), rtol=1e-5, atol=1e-7)
    # Every target ignored: the mean is NaN, and so is its gradient.
    dw = tsol.grad(lambda w: classifier(w, b, x, np.full(5, -100), ignore_index=-100))(w)
    assert np.isnan(dw).all()


def test_unused_argument_gets_zeros_and_errors(rng):
    x = rng.standard_normal(3)
    _, gy = tsol.grad(lambda x, y: tsol.sum(x * x), argnums=(0, 1))(x, x)
    np.testing.assert_array_equal(gy, np.zeros(3))
    with pytest.raises(tsol.ArgumentError, match="scalar"):
        tsol.grad(lambda x: x * 2)(x)
    with pytest.raises(tsol.ArgumentError, match="argnums"):
        tsol.grad(lambda x: tsol.sum(x), argnums=-1)
    with pytest.raises(tsol.ArgumentError, match="cotangent"):
        tsol.vjp(tsol.exp, x)[1](np.ones(4))
