"""Recorded launch sequences: a second call of a layout replays the first call's launches with
its own addresses (scratch buffers included), and the paths that must not be replayed
(temporary copies, in-place calls) keep planning."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.support import rand, reference
from tsol.kernels.cuda import layout, random, reduction, replay, softmax
from tsol.ops import base
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


@pytest.fixture
def fresh(monkeypatch):
    """Empty replay caches for the reduction and softmax kernels, and no eager-call plans
    (whose own replays would skip the kernels' caches)."""
    monkeypatch.setattr(reduction, "_replays", replay.Replays())
    monkeypatch.setattr(softmax, "_replays", replay.Replays())
    monkeypatch.setattr(base, "_plans", base._PlanTable())


def _no_planning(monkeypatch, module, name):
    def fail(*a, **k):
        raise AssertionError(f"{module.__name__}.{name} planned a call that should replay")
    monkeypatch.setattr(module, name, fail)


def _close(got, op, x, **attrs):
    if not COMPILE_ONLY:
        np.testing.assert_allclose(to_host(got), reference(op, x, **attrs), rtol=2e-5,
                                   atol=2e-5 * np.sqrt(x.size))


@pytest.mark.parametrize("config", [None, Config(block=32, work=4, split=3)],
                         ids=["one-launch", "split-with-scratch"])
def test_second_call_replays_with_new_addresses(config, fresh, forced, monkeypatch, rng):
    if config is not None:
        forced(config)
    shape = (size(6, 300), size(37, 4099))
    xs = [rand(shape, np.float32, rng) for _ in range(3)]
    with on_cuda():
        first = tsol.sum(to_device(xs[0]), axis=None)
        assert [v for v in reduction._replays.cache.values() if v is not None], \
            "the first call recorded no replayable sequence"
        _no_planning(monkeypatch, reduction, "_reduce_planned")
        later = [tsol.sum(to_device(x), axis=None) for x in xs[1:]]
    for x, got in zip(xs, [first] + later):
        _close(got, "sum", x, axis=None)


def test_softmax_replays_and_in_place_plans(fresh, monkeypatch, rng):
    shape = (size(5, 64), size(33, 2049))
    x0, x1 = rand(shape, np.float32, rng), rand(shape, np.float32, rng)
    with on_cuda():
        tsol.softmax(to_device(x0))
        _no_planning(monkeypatch, softmax, "_run_planned")
        got = tsol.softmax(to_device(x1))
    _close(got, "softmax", x1, axis=-1)
    monkeypatch.undo()
    with on_cuda():
        d = to_device(x0.copy())
        assert tsol.softmax(d, out=d) is d
        d2 = to_device(x1.copy())
        tsol.softmax(d2, out=d2)                       # same layout, in place again
    _close(d, "softmax", x0, axis=-1)
    _close(d2, "softmax", x1, axis=-1)


def test_copies_on_the_way_are_never_replayed(fresh, rng):
    x = rand((size(7, 300), size(9, 301), 3), np.float32, rng)
    view = x[:, ::2].transpose(1, 0, 2)                 # strided: the kernels read a copy
    with on_cuda():
        for _ in range(2):
            got = tsol.sum(to_device(x)[:, ::2].transpose(1, 0, 2), axis=(0, 2))
    assert all(v is None for v in reduction._replays.cache.values())
    _close(got, "sum", view, axis=(0, 2))


def _layout_calls(xs):
    """A transposing reshape copy, a concat of two arrays and a reflect pad of each of ``xs``."""
    return [(tsol.reshape(x.T, (-1,)), tsol.concat([x, x[::-1] * 1]),
             tsol.pad(x, ((1, 2), (3, 0)), mode="reflect")) for x in xs]


def test_layout_copies_replay_with_new_addresses(monkeypatch, rng):
    monkeypatch.setattr(layout, "_replays", replay.Replays())
    xs = [rand((size(5, 300), size(37, 4099)), np.float32, rng) for _ in range(3)]
    with on_cuda():
        first = _layout_calls([to_device(xs[0])])
        assert len([v for v in layout._replays.cache.values() if v is not None]) >= 3
        _no_planning(monkeypatch, layout, "copy_into")
        _no_planning(monkeypatch, layout, "pad_kernel")
        later = _layout_calls([to_device(x) for x in xs[1:]])
    if COMPILE_ONLY:
        return
    for x, got in zip(xs, first + later):
        want = (x.T.reshape(-1), np.concatenate([x, x[::-1]]),
                np.pad(x, ((1, 2), (3, 0)), mode="reflect"))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(to_host(g), w)


def test_random_fills_replay_per_seed_and_offset(monkeypatch, rng):
    monkeypatch.setattr(random, "_replays", replay.Replays())
    xs = [rand((size(5, 300), size(37, 4099)), np.float32, rng) for _ in range(3)]
    with on_cuda():
        firsts = [tsol.dropout(to_device(xs[0]), 0.3, seed=7, offset=11),
                  tsol.rng_normal(xs[0].shape, seed=7, offset=11, dtype=np.float32)]
        assert len([v for v in random._replays.cache.values() if v is not None]) == 2
        _no_planning(monkeypatch, random, "_fill_planned")
        later = [tsol.dropout(to_device(x), 0.3, seed=7, offset=11) for x in xs[1:]]
        normal = tsol.rng_normal(xs[0].shape, seed=7, offset=11, dtype=np.float32)
        monkeypatch.undo()
        other = tsol.rng_normal(xs[0].shape, seed=8, offset=11, dtype=np.float32)  # plans
    if COMPILE_ONLY:
        return
    for x, got in zip(xs, firsts[:1] + later):
        kept = to_host(got) != 0
        np.testing.assert_array_equal(to_host(got)[kept], (x * np.float32(1 / 0.7))[kept])
        np.testing.assert_array_equal(kept, to_host(firsts[0]) != 0)     # the same mask
    np.testing.assert_array_equal(to_host(normal), to_host(firsts[1]))
    assert not np.array_equal(to_host(other), to_host(firsts[1]))
