"""Capture into Graph IR: nodes, hash-consing, constants, errors, the compile cache."""

import dataclasses

import numpy as np
import pytest
from tsol.schedule.capture import Tracer, trace
from tsol.schedule.compiled import Compiled

import tsol
from tests.support import assert_close, reference
from tests.test_registry import _FakeGPUArray
from tsol import op
from tsol.ops.base import meta_of


def test_records_nodes_with_metas_and_merges_common_subexpressions(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g, _ = trace(lambda x: tsol.exp(x) + tsol.exp(x), [meta_of(x)])
    ops = [n.op for n in g.live() if n.is_op]
    assert ops == ["exp", "add"]                     # exp(x) recorded once
    assert g.outputs[0].meta.shape == (3, 5) and g.outputs[0].meta.dtype == np.float32
    text = g.text()
    assert "exp(%0)" in text and "float32[3, 5]" in text


def test_graph_key_depends_on_structure_and_metas(rng):
    a = meta_of(np.zeros((2, 3), np.float32))
    b = meta_of(np.zeros((2, 4), np.float32))
    k1 = trace(lambda x: tsol.exp(x), [a])[0].key()
    assert k1 == trace(lambda x: tsol.exp(x), [a])[0].key()
    assert k1 != trace(lambda x: tsol.exp(x), [b])[0].key()
    assert k1 != trace(lambda x: tsol.log(x), [a])[0].key()


def test_operators_of_tracers_record_tsol_ops(rng):
    x = rng.standard_normal((4, 4)).astype(np.float32)
    f = tsol.jit(lambda x: (-(x @ x.T) / 2 + 1) ** 2 - abs(x))
    want = (-(x.astype(np.float64) @ x.T) / 2 + 1) ** 2 - np.abs(x)
    assert_close(f(x), want, np.float32, scale=4)


def test_constants_from_the_enclosing_scope(rng):
    w = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    f = tsol.jit(lambda x: tsol.multiply(x, w) + 0.5)
    assert_close(f(x), x.astype(np.float64) * w + 0.5, np.float32)


def test_eager_ops_without_tracers_run_inside_capture(rng):
    w = rng.standard_normal((3, 3)).astype(np.float32)

    def f(x):
        w2 = tsol.exp(w)                               # no tracer: runs eagerly, a constant
        assert not isinstance(w2, Tracer)
        return x @ w2
    x = rng.standard_normal((2, 3)).astype(np.float32)
    assert_close(tsol.jit(f)(x), x.astype(np.float64) @ np.exp(w.astype(np.float64)),
                 np.float32, scale=3)


def test_compiled_once_per_signature(rng, monkeypatch):
    calls = []

    def f(x, scale):
        calls.append(1)
        return tsol.tanh(x) * scale
    c = Compiled(f)
    x = rng.standard_normal(5).astype(np.float32)
    c(x, 2.0)
    c(x + 1, 2.0)
    assert len(calls) == 1                             # same shapes, dtypes, statics
    c(x, 3.0)
    c(x.astype(np.float64), 2.0)
    c(np.zeros(7, np.float32), 2.0)
    assert len(calls) == 4
    assert_close(c(x, 3.0), np.tanh(x.astype(np.float64)) * 3.0, np.float32)


def test_errors_name_the_problem(rng):
    x = rng.standard_normal(3).astype(np.float32)
    with pytest.raises(tsol.ArgumentError, match="truth value"):
        tsol.jit(lambda x: x if x > 0 else -x)(x)
    with pytest.raises(tsol.ArgumentError, match="NumPy"):
        tsol.jit(lambda x: np.sin(np.asarray(x)))(x)
    with pytest.raises(tsol.ArgumentError, match="out="):
        tsol.jit(lambda x: tsol.exp(x, out=np.empty(3, np.float32)))(x)
    with pytest.raises(tsol.ShapeError):                 # the op's own meta rule, at capture
        tsol.jit(lambda x: op.matmul(x, x))(np.zeros((2, 3), np.float32))
    with pytest.raises(tsol.ArgumentError, match="neither an array nor hashable"):
        tsol.jit(lambda x, d: x)(x, {"a": 1})
    with pytest.raises(tsol.ArgumentError, match="not been called"):
        tsol.jit(lambda x: x).explain()
    with pytest.raises(tsol.TSOLError, match="returned a"):
        tsol.jit(lambda x: "nope")(x)


def test_tuple_outputs_and_passthrough(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    a, b, c = tsol.jit(lambda x: (tsol.exp(x), x, tsol.sum(x, axis=-1)))(x)
    assert_close(a, np.exp(x.astype(np.float64)), np.float32)
    assert b is x
    assert_close(c, x.astype(np.float64).sum(-1), np.float32, scale=3)


def test_captured_array_on_another_device_is_an_error():
    w = _FakeGPUArray()
    with pytest.raises(tsol.BackendError, match=r"tsol\.add: an array captured .* lives on cuda"):
        tsol.jit(lambda x: x + w)(np.ones(3, np.float32))


# --- ops with several results ----------------------------------------------------------------

def test_split_records_one_node_and_a_part_per_result(rng):
    x = rng.standard_normal((3, 7)).astype(np.float32)
    g, _ = trace(lambda x: tsol.split(x, 3, axis=1)[2] + tsol.split(x, 3, axis=1)[0][:, :2],
                 [meta_of(x)])
    ops = [n.op for n in g.live()]
    assert ops.count("split") == 1                   # both calls are one node
    assert ops.count("part") == 2                    # only the results used
    text = g.text()
    assert "(float32[3, 3], float32[3, 2], float32[3, 2])" in text
    assert "part(%1, index=2) : float32[3, 2]" in text


@pytest.mark.parametrize("sections", [3, [2, -1], [5, 1, 6]], ids=["uneven", "neg", "unsorted"])
def test_jitted_split_equals_eager(sections, rng):
    x = rng.standard_normal((4, 9)).astype(np.float32)

    def f(x):
        y = tsol.exp(x)
        pieces = tsol.split(y, sections, axis=1)
        return [tsol.tanh(p) * 2 + 1 for p in pieces], pieces[-1]
    c = tsol.jit(f)
    got, last = c(x)
    pieces = tsol.split(np.exp(x.astype(np.float64)), sections, axis=1)     # eager
    assert len(got) == len(pieces)
    for i, (a, p) in enumerate(zip(got, pieces)):
        assert_close(a, np.tanh(p) * 2 + 1, np.float32, what=f"piece {i}")
    assert_close(last, pieces[-1], np.float32)
    # exp, then one fused chain per piece; split itself is views, no kernel of its own.
    assert c.kernel_count(x) == 1 + len(pieces)
    assert "kernel split_views" in c.explain(x)


def test_split_of_an_intermediate_keeps_its_buffer_alive(rng):
    # The pieces are views of exp(x)'s buffer: w, of its shape and made after the last read
    # of a, must not take that buffer while b is still to be read.
    x = rng.standard_normal((6, 8))

    def f(x):
        a, b = tsol.split(tsol.exp(x), 2)
        s = tsol.sum(a)
        w = tsol.sin(x) @ x.T @ x
        return tsol.sum(b * w[:3]) + s
    c = tsol.jit(f)
    for x_ in (x, x / 2):                        # a second call runs on fresh buffers
        ea, eb = np.split(np.exp(x_), 2)
        want = np.sum(eb * (np.sin(x_) @ x_.T @ x_)[:3]) + ea.sum()
        assert_close(c(x_), want, np.float64, scale=100)


def test_split_as_a_pipeline_stage_and_a_qkv_projection(rng):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    w = rng.standard_normal((4, 6)).astype(np.float32)

    def qkv(x):
        q, k, v = tsol.split(x @ w, 3, axis=-1)
        return op.softmax(q @ k.T) @ v
    got = tsol.jit(qkv)(x)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    q, k, v = np.split(x64 @ w64, 3, axis=-1)
    want = reference("softmax", q @ k.T, axis=-1) @ v
    assert_close(got, want, np.float32, scale=4)
    p = op.pipeline([lambda x: tsol.split(x, 2), lambda parts: parts[0] * parts[1]])
    assert_close(p(x[:4]), x64[:2] * x64[2:4], np.float32)


def test_multi_result_kernel_must_return_its_results(rng, monkeypatch):
    # A multi-result op's kernel returns the list (allocates=True); one that would write a
    # single out= array cannot run a captured function, and says so when it is lowered.
    from tsol.ops import base
    chosen = base.select

    def writes_out(opdef, backend, metas, attrs):
        found = chosen(opdef, backend, metas, attrs)
        if opdef.name == "split":
            return dataclasses.replace(found[0], allocates=False), found[1]
        return found
    monkeypatch.setattr(base, "select", writes_out)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(tsol.TSOLError, match=r"tsol\.split: kernel split_views has 2 results "
                                             r"but writes one out= array"):
        tsol.jit(lambda x: tsol.split(x, 2, axis=1)[0] + 1)(x)
