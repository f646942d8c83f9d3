"""Compiled pipelines on the cuda backend: the same kernel counts as on the CPU, fused results
equal to the unfused ops on cuda and to the float64 reference (tiny sizes in the simulator)."""

import numpy as np

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.support import assert_close
from tsol import op
from tsol.registry import get_op

pytestmark = CUDA_TESTS


def compiled_run(f, *arrays):
    with on_cuda():
        out = f(*[to_device(a) for a in arrays])
        ex = f.executable(*[to_device(a) for a in arrays])
    assert ex.schedule.backend.name == "cuda"
    return to_host(out)


def test_elementwise_chain_is_one_kernel(rng):
    p = op.pipeline([op.relu, lambda x: x * 2 + 1, op.tanh])
    x = rng.standard_normal((size(5, 1000), size(33, 1031))).astype(np.float32)
    got = compiled_run(p, x)
    assert p.kernel_count() == 1
    assert "launch grid (" in p.explain()
    if COMPILE_ONLY:
        return
    assert_close(got, np.tanh(np.maximum(x.astype(np.float64), 0) * 2 + 1), np.float32)
    with on_cuda():
        unfused = to_host(tsol.tanh(tsol.add(tsol.multiply(tsol.relu(to_device(x)), 2), 1)))
    assert_close(got, unfused, np.float32)


def test_residual_layernorm_and_matmul_epilogue(rng):
    n = size(33, 1024)
    x, r = (rng.standard_normal((size(4, 512), n)).astype(np.float32) for _ in range(2))
    f = tsol.jit(lambda x, r: op.layernorm(x + r))
    got = compiled_run(f, x, r)
    assert f.kernel_count() == 1
    w = rng.standard_normal((n, size(17, 256))).astype(np.float32)
    b = rng.standard_normal(size(17, 256)).astype(np.float32)
    g = tsol.jit(lambda x, w, b: tsol.gelu(x @ w + b))
    got2 = compiled_run(g, x, w, b)
    assert g.kernel_count() == 1
    if COMPILE_ONLY:
        return
    ln = get_op("layernorm").reference
    assert_close(got, ln(x.astype(np.float64) + r, None, None, eps=1e-5), np.float32)
    want = get_op("matmul").reference(x.astype(np.float64), w.astype(np.float64),
                                      b.astype(np.float64), None, epilogue="gelu")
    # float32 sums of n unit-size products: rounding grows like sqrt(n) times the partial
    # sums' size (a few units), as in bench/gpu_linalg_check.py
    assert_close(got2, want, np.float32, scale=4 * n ** 0.5)


def test_attention_module_is_one_kernel(rng):
    @tsol.graph.module("attention")
    def attention(q, k, v):
        return op.matmul(op.softmax(op.matmul(q, op.transpose(k, (0, 1, 3, 2))) * 0.25), v)
    s = size(9, 512)
    q, k, v = (rng.standard_normal((1, 2, s, 16)).astype(np.float32) for _ in range(3))
    got = compiled_run(attention, q, k, v)
    assert attention.kernel_count() == 1
    if COMPILE_ONLY:
        return
    want = get_op("flash_attention").reference(
        *(a.astype(np.float64) for a in (q, k, v)), causal=False, scale=0.25, block_q=None,
        block_k=None)
    assert_close(got, want, np.float32, scale=4)
