"""CUDA random ops against the CPU kernels, bit for bit (float64 rng_normal within 8 ulp, its
log/cos/sin being libdevice's), and against the float64 reference: every float dtype, odd sizes,
offsets past 2**32 counters, shards, block sizes, dropout in and out of training, p = 0 and
near 1, non-contiguous inputs, out= and errors."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import (
    COMPILE_ONLY,
    CUDA_TESTS,
    check,
    on_cuda,
    run,
    size,
    to_device,
    to_host,
)
from tests.support import FLOAT_DTYPES, dtype_id, rand
from tsol import dtypes
from tsol.errors import ArgumentError, DTypeError
from tsol.registry import Config

pytestmark = CUDA_TESTS

SEED = 0x1234_5678_9ABC_DEF0
PARAMS = {"rng_uniform": {"low": -2.5, "high": 4.0}, "rng_normal": {"mean": 3.0, "std": 0.5}}
NORMAL_F64_ULPS = 8
"""float64 rng_normal: libdevice's log (1 ulp), cos and sin (2 ulp) against the CPU's libm on the
same uniforms; the measured distance is printed (run with -s)."""


def ulps(a, b):
    """Largest distance in units in the last place between float arrays of one dtype."""
    a, b = np.asarray(a), np.asarray(b)
    ints = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]

    def ordered(x):
        i = x.view(ints).astype(np.int64)
        return np.where(i < 0, np.iinfo(ints).min - i, i)
    return int(np.abs(ordered(a) - ordered(b)).max()) if a.size else 0


def same_as_cpu(got, want, name="", dt=None):
    """Bitwise equality with the CPU kernels' result (the ulp bound for float64 normals)."""
    if COMPILE_ONLY:
        return
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype
    if name == "rng_normal" and np.dtype(dt) == dtypes.float64:
        print(f"float64 rng_normal: {ulps(got, want)} ulp from the CPU kernel")
        assert ulps(got, want) <= NORMAL_F64_ULPS
        return
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", ["rng_uniform", "rng_normal"])
def test_generators_match_cpu_and_reference(name, dt):
    shape = (3, size(37, 4099))
    attrs = dict(shape=shape, seed=SEED, offset=7, dtype=dt, **PARAMS[name])
    got = check(name, [], attrs, dt, scale=4.0)
    same_as_cpu(got, getattr(tsol, name)(**attrs), name, dt)


@pytest.mark.parametrize("offset", [0, 5, 2 ** 34 + 3], ids=["0", "5", "2**34+3"])
@pytest.mark.parametrize("name", ["rng_uniform", "rng_normal"])
def test_offsets_and_shards(name, offset):
    """Counters past 2**32 use both counter words; a shard at offset k is the slice [k:]."""
    n = size(29, 100_003)
    for dt in (dtypes.float32, dtypes.float64):
        attrs = dict(shape=n, seed=2 ** 63 + 1, offset=offset, dtype=dt)
        whole = run(name, [], attrs)
        same_as_cpu(whole, getattr(tsol, name)(**attrs), name, dt)
        shard = run(name, [], dict(attrs, shape=n - 6, offset=offset + 6))
        if not COMPILE_ONLY:
            np.testing.assert_array_equal(shard.view(np.uint8), whole[6:].view(np.uint8))


@pytest.mark.parametrize("config", [Config(block=32), Config(block=64)], ids=str)
def test_block_size_does_not_change_bits(config, forced):
    attrs = dict(shape=size(75, 50_001), seed=8, offset=5)
    want = tsol.rng_normal(**attrs)
    forced(config)
    same_as_cpu(run("rng_normal", [], attrs), want)
    x = np.linspace(-1, 1, attrs["shape"], dtype=np.float32)
    same_as_cpu(run("dropout", [x, 0.4], dict(seed=8, offset=5)),
                tsol.dropout(x, 0.4, seed=8, offset=5))


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_dropout_matches_cpu(dt, rng):
    x = rand((size(5, 300), size(23, 1001)), dt, rng)
    for p in (0.5, 0.999):
        attrs = dict(seed=SEED, offset=3)
        got = check("dropout", [x, p], attrs, dt, scale=1 / (1 - p))
        same_as_cpu(got, tsol.dropout(x, p, **attrs))
    for attrs in (dict(seed=1, training=False), dict(seed=1, offset=2)):
        p = 0.3 if attrs.get("training") is False else 0.0
        same_as_cpu(run("dropout", [x, p], attrs), x)


def test_dropout_views_out_and_zeros(rng):
    x = rand((size(6, 257), size(19, 513)), np.float32, rng)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    want = tsol.dropout(np.ascontiguousarray(x.T), 0.25, seed=4)
    with on_cuda():
        d = to_device(x)
        got = tsol.dropout(d.T, 0.25, seed=4)           # not C-contiguous
        out = to_device(np.full(x.shape, np.nan, np.float32))
        assert tsol.dropout(d, 0.25, seed=4, out=out) is out
        gen = to_device(np.full((7, 3), np.nan, dtypes.bfloat16))
        assert tsol.rng_uniform((7, 3), seed=2, dtype=dtypes.bfloat16, out=gen) is gen
    same_as_cpu(np.asarray(run("dropout", [x.T, 0.25], dict(seed=4))), want)
    if not COMPILE_ONLY:
        np.testing.assert_array_equal(to_host(got), want)
        same_as_cpu(to_host(out), tsol.dropout(x, 0.25, seed=4))
        same_as_cpu(to_host(gen), tsol.rng_uniform((7, 3), seed=2, dtype=dtypes.bfloat16))
        kept = to_host(out) != 0
        assert 0.6 < kept.mean() < 0.9
    empty = run("dropout", [np.zeros((0, 4), np.float32), 0.5], dict(seed=1))
    assert empty.shape == (0, 4)
    assert run("rng_normal", [], dict(shape=(2, 0), seed=1)).shape == (2, 0)


def test_errors(rng):
    x = to_device(rand((4, 5), np.float32, rng))
    with on_cuda():
        with pytest.raises(ArgumentError, match="dropout"):
            tsol.dropout(x, 1.0, seed=1)
        with pytest.raises(ArgumentError, match="seed"):
            tsol.rng_uniform(4, seed=-1)
        with pytest.raises(DTypeError, match="dropout"):
            tsol.dropout(to_device(np.ones(4, np.int32)), 0.5, seed=1)
        with pytest.raises(DTypeError, match="rng_normal"):
            tsol.rng_normal(4, seed=1, dtype=np.int32)
