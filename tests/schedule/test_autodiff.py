"""tsol.grad, value_and_grad and vjp against float64 finite differences."""

import numpy as np
import pytest

import tsol
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
    # The softmax output feeds the backward pass too, so the forward stays unfused here.
    assert "softmax" in df.explain()


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
