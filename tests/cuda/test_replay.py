"""Recorded launch sequences: a second call of a layout replays the first call's launches with
its own addresses (scratch buffers included), and the paths that must not be replayed
(temporary copies, in-place calls) keep planning."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.support import rand, reference
from tsol.kernels.cuda import reduction, replay, softmax
from tsol.registry import Config

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


@pytest.fixture
def fresh(monkeypatch):
    """Empty replay caches for the reduction and softmax kernels."""
    monkeypatch.setattr(reduction, "_replays", replay.Replays())
    monkeypatch.setattr(softmax, "_replays", replay.Replays())


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
