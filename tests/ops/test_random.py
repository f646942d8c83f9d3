"""Random ops: Philox4x32-10 known answers, the stream rule, statistics, sharding, dropout."""

import sys

import numba
import numpy as np
import pytest
from scipy import stats

import tsol
from tests.support import (
    FLOAT_DTYPES,
    SHAPES,
    assert_close,
    check_vjp,
    dtype_id,
    rand,
    reference,
    views,
)
from tsol.ops.random import philox4x32_10 as philox_numpy
from tsol.registry import Config, get_op, kernels

GENERATORS = ["rng_uniform", "rng_normal"]
SEED = 0x1234_5678_9ABC_DEF0

# Random123's kat_vectors for philox4x32_10: (counter, key, expected words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox_kernel_path():
    """The Numba Philox helper of the module that registers the CPU rng_uniform kernel."""
    return sys.modules[kernels("rng_uniform", "cpu")[0].impl.__module__].philox4x32_10


def generate(name, shape, dt, **kw):
    return getattr(tsol, name)(shape, seed=kw.pop("seed", SEED), dtype=dt, **kw)


# -- the generator itself -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["numpy", "kernel"])
@pytest.mark.parametrize("counter,key,want", KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(path, counter, key, want):
    fn = philox_numpy if path == "numpy" else philox_kernel_path()
    assert [int(w) for w in fn(counter, key)] == list(want)


def test_philox_numpy_and_kernel_agree_on_random_blocks(rng):
    ctr = rng.integers(0, 2 ** 32, size=(257, 4), dtype=np.uint64)
    key = rng.integers(0, 2 ** 32, size=(257, 2), dtype=np.uint64)
    np.testing.assert_array_equal(philox_numpy(ctr, key), philox_kernel_path()(ctr, key))


@pytest.mark.parametrize("offset", [0, 5, 2 ** 40 + 3])
def test_stream_rule_by_hand(offset):
    """float32: word (offset+i) % 4 of counter (offset+i) // 4, top 24 bits; float64: 53 bits."""
    seed = 2 ** 63 + 12345
    got = tsol.rng_uniform(11, seed=seed, offset=offset)
    for i in range(11):
        j = offset + i
        c = j // 4
        w = philox_numpy([c & 0xFFFFFFFF, c >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32])[j % 4]
        assert got[i] == np.float32((int(w) >> 8) * 2.0 ** -24)
    u = tsol.rng_uniform(11, seed=seed, offset=offset, dtype=tsol.float64)
    for i in range(11):
        j = offset + i
        c = j // 2
        w = philox_numpy([c & 0xFFFFFFFF, c >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32])
        hi, lo = int(w[2 * (j % 2)]), int(w[2 * (j % 2) + 1])
        assert u[i] == ((hi << 21) | (lo >> 11)) * 2.0 ** -53


# -- values against the reference ---------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", GENERATORS)
def test_generator_matches_reference(name, dt, shape):
    offset = 7 if len(shape) % 2 else 0
    got = generate(name, shape, dt, offset=offset)
    assert got.dtype == dt and got.shape == shape
    want = reference(name, shape=shape, seed=SEED, offset=offset, dtype=dt)
    assert_close(got, want, dt, what=f"{name} {dt} {shape}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", GENERATORS)
def test_generator_parameters_and_nan_filled_out(name, dt):
    params = dict(low=-2.5, high=4.0) if name == "rng_uniform" else dict(mean=3.0, std=0.5)
    out = np.full((33, 65), np.nan, dt)
    got = generate(name, (33, 65), dt, offset=3, out=out, **params)
    assert got is out
    want = reference(name, shape=(33, 65), seed=SEED, offset=3, dtype=dt, **params)
    assert_close(out, want, dt, scale=4.0, what=f"{name} {dt} {params}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_uniform_stays_in_unit_interval(dt):
    u = tsol.rng_uniform(200_003, seed=99, dtype=dt).astype(np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert u.max() > 1.0 - 2.0 ** -7 and u.min() < 2.0 ** -7


# -- statistics (fixed seeds: these are deterministic) ------------------------------------------

@pytest.mark.parametrize("dt", [tsol.float64, tsol.float32], ids=dtype_id)
def test_uniform_passes_kolmogorov_smirnov(dt):
    u = tsol.rng_uniform(100_000, seed=2024, dtype=dt)
    assert stats.kstest(u.astype(np.float64), "uniform").pvalue > 1e-3
    v = tsol.rng_uniform(100_000, seed=2024, dtype=dt, low=-3.0, high=5.0)
    assert stats.kstest(v.astype(np.float64), "uniform", args=(-3.0, 8.0)).pvalue > 1e-3


@pytest.mark.parametrize("dt", [tsol.float64, tsol.float32], ids=dtype_id)
def test_normal_moments(dt):
    n = 100_000
    z = tsol.rng_normal(n, seed=77, dtype=dt).astype(np.float64)
    # Bounds are about 5 standard errors of each sample statistic at n = 1e5.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.std() - 1.0) < 5 * np.sqrt(0.5 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    w = tsol.rng_normal(n, seed=77, dtype=dt, mean=-2.0, std=3.0).astype(np.float64)
    assert abs(w.mean() + 2.0) < 15 / np.sqrt(n) and abs(w.std() - 3.0) < 15 * np.sqrt(0.5 / n)


def test_different_seeds_and_seed_high_bits_give_different_streams():
    a = tsol.rng_uniform(1000, seed=1)
    assert not np.array_equal(a, tsol.rng_uniform(1000, seed=2))
    assert not np.array_equal(a, tsol.rng_uniform(1000, seed=1 + 2 ** 32))
    assert np.isfinite(tsol.rng_normal(10, seed=2 ** 64 - 1)).all()
    np.testing.assert_array_equal(a, tsol.rng_uniform(1000, seed=np.uint64(1)))


# -- the stream contract: offsets, shapes, tiles, threads ---------------------------------------

@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("k,m", [(1, 1), (3, 5), (7, 1001), (101, 2049), (9, 0)])
def test_shard_with_offset_is_a_slice_bitwise(name, dt, k, m):
    whole = generate(name, k + m + 3, dt, seed=31)
    shard = generate(name, m, dt, seed=31, offset=k)
    np.testing.assert_array_equal(shard.view(np.uint8), whole[k:k + m].view(np.uint8))


def test_values_follow_the_flat_index_not_the_shape():
    flat = tsol.rng_normal(5 * 7 * 3, seed=4, offset=9)
    np.testing.assert_array_equal(tsol.rng_normal((5, 7, 3), seed=4, offset=9).reshape(-1), flat)


@pytest.mark.parametrize("name", GENERATORS + ["dropout"])
def test_tile_size_does_not_change_bits(name):
    k = kernels(name, "cpu")[0]
    results = []
    for counters in (1, 3, 64, 4096):
        out = np.empty(10_007, np.float32)
        if name == "dropout":
            x = np.linspace(-1, 1, 10_007, dtype=np.float32)
            k.impl(x, out=out, config=Config(counters=counters), p=0.4, seed=8, offset=5,
                   training=True)
        else:
            extra = dict(low=0.0, high=1.0) if name == "rng_uniform" else dict(mean=0.0, std=1.0)
            k.impl(out=out, config=Config(counters=counters), shape=out.shape, seed=8,
                   offset=5, dtype=out.dtype, **extra)
        results.append(out)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_thread_count_does_not_change_bits():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least two Numba threads")
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            x = np.linspace(-2, 2, 300_001, dtype=np.float32)
            runs.append((tsol.rng_uniform(300_001, seed=5, offset=3),
                         tsol.rng_normal(300_001, seed=5, offset=3),
                         tsol.dropout(x, 0.25, seed=5, offset=3)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


# -- dropout ------------------------------------------------------------------------------------

def _compute(dt):
    return np.float64 if dt == tsol.float64 else np.float32


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (4099,), (7, 129), (3, 0, 5), (33, 65, 3)],
                         ids=str)
def test_dropout_matches_reference_on_views(dt, shape, rng):
    x = rand(shape, dt, rng)
    for label, v in views(x):
        got = tsol.dropout(v, 0.3, seed=SEED, offset=11)
        assert_close(got, reference("dropout", v, p=0.3, seed=SEED, offset=11), dt,
                     what=f"dropout {dt} {shape} {label}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_scale_and_fraction(dt, p, rng):
    n = 40_000
    x = rand((200, 200), dt, rng, low=0.5, high=2.0)       # no zeros: the mask is y != 0
    out = np.full(x.shape, np.nan, dt)
    y = tsol.dropout(x, p, seed=123, offset=1, out=out)
    assert y is out
    keep = y != 0
    np.testing.assert_array_equal(keep, tsol.rng_uniform(x.shape, seed=123, offset=1) >= p)
    ct = _compute(dt)
    scaled = (x.astype(ct) * ct(1.0 / (1.0 - p))).astype(dt)
    np.testing.assert_array_equal(y[keep].view(np.uint8), scaled[keep].view(np.uint8))
    # Kept count is Binomial(n, 1 - p): allow 5 standard deviations.
    assert abs(keep.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))


def test_dropout_mask_is_the_same_for_every_dtype():
    masks = [tsol.dropout(np.ones((9, 11), dt), 0.5, seed=6, offset=2) != 0 for dt in FLOAT_DTYPES]
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])


def test_dropout_zeroes_nan_and_inf_and_keeps_them_when_kept():
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 50, np.float32)
    y = tsol.dropout(x, 0.5, seed=1)
    keep = tsol.rng_uniform(x.shape, seed=1) >= 0.5
    assert (y[~keep] == 0).all()
    np.testing.assert_array_equal(y[keep], x[keep] * np.float32(2.0))


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_dropout_identity_when_not_training_or_p_zero(dt, rng):
    x = rand((13, 7), dt, rng)
    x[0, 0] = np.nan
    for kwargs in (dict(p=0.5, training=False), dict(p=0.0)):
        out = np.full(x.shape, 7, dt)
        y = tsol.dropout(x, seed=9, out=out, **kwargs)
        np.testing.assert_array_equal(y.view(np.uint8), x.view(np.uint8))
        t = tsol.dropout(x.T, seed=9, **kwargs)
        np.testing.assert_array_equal(t.view(np.uint8), np.ascontiguousarray(x.T).view(np.uint8))


def test_dropout_shard_with_offset_is_a_slice():
    x = np.linspace(-1, 1, 3001)
    whole = tsol.dropout(x, 0.2, seed=42)
    np.testing.assert_array_equal(tsol.dropout(x[17:2018], 0.2, seed=42, offset=17),
                                  whole[17:2018])


@pytest.mark.parametrize("training", [True, False])
def test_dropout_vjp(training, rng):
    x = rng.standard_normal((4, 6))
    attrs = dict(p=0.4, seed=1234, offset=3, training=training)
    vjp = get_op("dropout").vjp
    check_vjp(lambda v: tsol.dropout(v, **attrs), [x],
              lambda g, v: vjp(g, v, out=None, **attrs))
    g = rng.standard_normal((4, 6))
    mask = tsol.dropout(np.ones((4, 6)), **attrs)
    np.testing.assert_array_equal(vjp(g, x, out=None, **attrs)[0], g * mask)


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("kwargs,err,match", [
    (dict(seed=-1), tsol.ArgumentError, "seed must be an int"),
    (dict(seed=2 ** 64), tsol.ArgumentError, "seed must be an int"),
    (dict(seed=1.5), tsol.ArgumentError, "seed must be an int"),
    (dict(seed=True), tsol.ArgumentError, "seed must be an int"),
    (dict(seed=1, offset=-3), tsol.ArgumentError, "offset must be a non-negative"),
    (dict(seed=1, offset=2 ** 62), tsol.ArgumentError, "passes 2\\*\\*62"),
    (dict(seed=1, dtype=np.int32), tsol.DTypeError, "not a floating dtype"),
    (dict(seed=1, dtype="nonsense"), tsol.DTypeError, "not a floating dtype"),
    (dict(seed=1, shape=(3, -1)), tsol.ShapeError, "negative dimension"),
    (dict(seed=1, shape=(3, 1.5)), tsol.ArgumentError, "shape must be an int"),
    (dict(seed=1, shape="3"), tsol.ArgumentError, "shape must be an int"),
    (dict(seed=1, out=np.empty((4, 4), np.float32)), tsol.ShapeError, "out= is"),
    (dict(seed=1, out=np.empty((2, 3), np.float64)), tsol.DTypeError, "out= is"),
    (dict(seed=1, out=[0.0] * 6), tsol.ArgumentError, "out= is a list"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_generator_errors(name, kwargs, err, match):
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (2, 3))
    with pytest.raises(err, match=rf"tsol\.{name}: .*{match}"):
        getattr(tsol, name)(shape, **kwargs)


def test_generator_parameter_errors():
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.rng_uniform: high must be a finite"):
        tsol.rng_uniform(3, seed=1, high=np.inf)
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.rng_normal: std must be >= 0"):
        tsol.rng_normal(3, seed=1, std=-1.0)
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.rng_normal: mean must be a finite"):
        tsol.rng_normal(3, seed=1, mean="0")
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.rng_uniform: .*Fix: call it as"):
        tsol.rng_uniform(3)


@pytest.mark.parametrize("p,match", [(1.0, "p=1 drops every element"), (1, "p=1 drops"),
                                     (-0.1, "0 <= p < 1"), (1.5, "0 <= p < 1"),
                                     ("0.5", "0 <= p < 1"), (True, "0 <= p < 1"),
                                     (np.nan, "0 <= p < 1")])
def test_dropout_rejects_bad_p(p, match):
    with pytest.raises(tsol.ArgumentError, match=rf"tsol\.dropout: p must be .*Fix: .*{match}"):
        tsol.dropout(np.ones(3, np.float32), p, seed=0)


def test_dropout_errors():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(tsol.DTypeError, match=r"tsol\.dropout: dtype int32 is not supported"):
        tsol.dropout(np.ones(3, np.int32), 0.5, seed=0)
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.dropout: operand of type list"):
        tsol.dropout([1.0, 2.0], 0.5, seed=0)
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.dropout: seed must be an int"):
        tsol.dropout(x, 0.5, seed=-2)
    with pytest.raises(tsol.ArgumentError, match=r"tsol\.dropout: offset must be"):
        tsol.dropout(x, 0.5, seed=0, offset=-1)
    with pytest.raises(tsol.ShapeError, match=r"tsol\.dropout: out= is float32\[3, 2\]"):
        tsol.dropout(x, 0.5, seed=0, out=np.empty((3, 2), np.float32))
    with pytest.raises(tsol.DTypeError, match=r"tsol\.dropout: out= is float16\[2, 3\]"):
        tsol.dropout(x, 0.5, seed=0, out=np.empty((2, 3), np.float16))


def test_cost_rules():
    op = get_op("dropout")
    m = tsol.ops.base.Meta((10, 10), np.dtype(np.float32))
    assert op.cost(m, out=m, p=0.5, seed=0, offset=0, training=True) == (100.0, 800.0)
    assert get_op("rng_uniform").cost(out=m, shape=(10, 10), seed=0, offset=0,
                                      dtype=m.dtype, low=0.0, high=1.0)[1] == 400.0
