"""Kernel selection and the persistent autotuner: candidates, measuring, keys, the JSON cache.

Most cases use a test-only op whose kernels are plain NumPy (no compiles): one sleeps, one is
fast, one raises, one is a vendor call, one is never legal. Softmax covers the eager path end to
end, in this process and in a second one sharing the cache directory.
"""

import inspect
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from tsol.schedule import select, tune

import tsol
from tests.support import assert_close, rand, reference
from tsol import registry
from tsol.ops import base
from tsol.ops.base import Meta
from tsol.registry import NON_DIFFERENTIABLE, Config, Kernel, OpDef, get_op, kernels

F32 = np.dtype(np.float32)
FAKE = "tune_test_double"
SOFTMAX_SHAPE = (37, 50)


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled_cache_dir():
    """The compiled-kernel cache in use before any test changes cache_dir; softmax float32 is
    loaded (or compiled) there first, so later cache_dir changes never recompile it."""
    tsol.softmax(np.ones(SOFTMAX_SHAPE, np.float32), axis=-1)
    return tsol.config.get().cache_dir


@pytest.fixture
def cache(tmp_path):
    """A fresh, empty tuning cache directory and zeroed counters."""
    tune.clear_memory()
    tune.reset_stats()
    with tsol.config.override(cache_dir=str(tmp_path)):
        yield tmp_path
    tune.clear_memory()


def _double(x, *, out, config):
    np.multiply(x, 2, out=out)


def _tiled_double(x, *, out, config):
    if config.tile != (4, 4):      # only the heuristic tile is fast: the winner is known
        time.sleep(0.003)
    np.multiply(x, 2, out=out)


def _slow_double(x, *, out, config):
    time.sleep(0.003)
    np.multiply(x, 2, out=out)


def _broken(x, *, out, config):
    raise RuntimeError("tile does not fit")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A test-only op (y = 2 x) with five kernels, registered only for this test; the fastest
    candidate is b_fast with its heuristic tile. The kernels' source file is a temporary file,
    so a test can edit it."""
    source = tmp_path / "fake_kernels.py"
    source.write_text("# version 1\n")
    opdef = OpDef(name=FAKE, family="test", signature=inspect.signature(lambda x, *, out=None: 0),
                  inputs=("x",), meta=lambda x: Meta(x.shape, x.dtype),
                  reference=lambda x: 2 * x, vjp=NON_DIFFERENTIABLE)
    common = dict(op=FAKE, backend="cpu", source_file=str(source))
    ks = [
        Kernel(name="a_slow", impl=_slow_double, configs=(Config(tile=(2, 4)),), **common),
        Kernel(name="b_fast", impl=_tiled_double,
               configs=(Config(tile=(8, 8)), Config(tile=(2, 4))),
               heuristic=lambda metas, attrs: Config(tile=(4, 4)), **common),
        Kernel(name="broken", impl=_broken, priority=5, **common),
        Kernel(name="never", impl=_double, supports=lambda metas, attrs: False, **common),
        Kernel(name="vendor_double", impl=_slow_double, vendor="numpy", **common),
    ]
    monkeypatch.setitem(registry.KERNELS, (FAKE, "cpu"), ks)
    return opdef


def _metas(*shape):
    return [Meta(tuple(shape), F32)]


def _json_files(root):
    return sorted((root / "tune").glob("*.json"))


# --- candidates and the heuristic ----------------------------------------------------------

def test_candidates_are_every_legal_kernel_and_config_in_a_fixed_order(fake):
    got = [(k.name, c) for k, c in select.candidates(fake, "cpu", _metas(16), {})]
    assert got == [("broken", Config()),
                   ("a_slow", Config(tile=(2, 4))),
                   ("b_fast", Config(tile=(4, 4))),       # heuristic config first
                   ("b_fast", Config(tile=(8, 8))),
                   ("b_fast", Config(tile=(2, 4))),
                   ("vendor_double", Config())]           # vendors compete, last
    assert select.candidates(fake, "cpu", _metas(16), {}) == \
        select.candidates(fake, "cpu", _metas(16), {})


def test_softmax_candidates_and_heuristic_match_the_eager_path(monkeypatch):
    monkeypatch.setattr(base, "selector", None)
    opdef, metas, attrs = get_op("softmax"), _metas(*SOFTMAX_SHAPE), {"axis": 1}
    cands = select.candidates(opdef, "cpu", metas, attrs)
    assert cands[0] == base.select(opdef, "cpu", metas, attrs)
    assert select.heuristic(opdef, "cpu", metas, attrs) == cands[0]
    (k,) = kernels("softmax", "cpu")
    assert {c for _, c in cands} == {k.default_config(metas, attrs), *k.configs}
    assert len(set(cands)) == len(cands)


def test_heuristic_skips_vendors_and_illegal_kernels(fake):
    k, cfg = select.heuristic(fake, "cpu", _metas(16), {})
    assert (k.name, cfg) == ("broken", Config())   # first legal non-vendor kernel by priority


# --- measuring ---------------------------------------------------------------------------------

def test_failing_candidate_scores_infinity_and_the_fastest_wins(fake, cache):
    result = tune.Tuner(repeats=3, warmup=1).tune(fake, "cpu", _metas(16), {})
    assert result.source == "measured"
    assert result.kernel.name == "b_fast"
    by_name = {(t.kernel, t.config): t for t in result.trials}
    failed = by_name[("broken", Config())]
    assert failed.seconds == math.inf and "tile does not fit" in failed.error
    assert by_name[("a_slow", Config(tile=(2, 4)))].seconds >= 0.003
    assert [(t.kernel, t.config) for t in result.trials] == \
        [(k.name, c) for k, c in select.candidates(fake, "cpu", _metas(16), {})]
    s = tune.stats()
    assert (s["tunings"], s["measurements"], s["failures"]) == (1, 6, 1)
    assert "failed: RuntimeError: tile does not fit" in result.explain()


def test_caller_run_is_what_gets_timed(fake, cache, rng):
    x = rand((5, 3), F32, rng)
    seen = []

    def run(k, cfg):
        seen.append(k.name)
        out = np.empty_like(x)
        k.impl(x, out=out, config=cfg)
        return out

    k, cfg = tune.Tuner(repeats=2, warmup=1).best(fake, "cpu", [Meta(x.shape, F32)], {}, run)
    assert k.name == "b_fast" and seen.count("a_slow") == 3
    out = np.empty_like(x)
    k.impl(x, out=out, config=cfg)
    assert_close(out, 2 * x.astype(np.float64), F32)


def test_all_candidates_failing_falls_back_to_the_heuristic(fake, cache):
    def run(k, cfg):
        raise ValueError("no")

    tuner = tune.Tuner(repeats=1, warmup=1)
    assert tuner.tune(fake, "cpu", _metas(16), {}, run) is None
    assert tuner.best(fake, "cpu", _metas(16), {}, run) == \
        select.heuristic(fake, "cpu", _metas(16), {})
    assert not _json_files(cache)


def test_progress_line_goes_to_stderr(fake, cache, capsys):
    tune.Tuner(repeats=1, warmup=1, progress_after=0.0).tune(fake, "cpu", _metas(16), {})
    err = capsys.readouterr().err
    assert f"\rtsol autotune {FAKE} float32[16]: candidate 1/6" in err
    assert "candidate 6/6" in err and err.endswith("\n")


# --- the cache ---------------------------------------------------------------------------------

def test_result_is_written_atomically_as_readable_json(fake, cache, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        assert not os.path.exists(dst)            # the final name appears only by the replace
        replaced.append((os.path.dirname(src), os.path.dirname(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(tune.os, "replace", spy)
    tune.Tuner(repeats=1, warmup=1).tune(fake, "cpu", _metas(16), {})
    (path,) = _json_files(cache)
    assert replaced == [(str(path.parent), str(path.parent))]
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temporary left
    record = json.loads(path.read_text())
    assert record["kernel"] == "b_fast" and record["config"] == {"tile": [4, 4]}
    assert record["key"] == tune.cache_key(fake, "cpu", _metas(16), {})
    assert record["key"]["operands"] == [["float32", [16]]]
    assert len(record["trials"]) == 6 and record["trials"][0]["seconds"] is None


def test_stored_result_is_reused_from_memory_and_disk(fake, cache):
    tuner = tune.Tuner(repeats=1, warmup=1)
    first = tuner.tune(fake, "cpu", _metas(16), {})
    again = tuner.tune(fake, "cpu", _metas(16), {})
    assert again.source == "memory" and (again.kernel, again.config) == \
        (first.kernel, first.config)
    tune.clear_memory()
    from_disk = tune.Tuner().tune(fake, "cpu", _metas(16), {})
    assert from_disk.source == "disk" and from_disk.config == Config(tile=(4, 4))
    assert from_disk.trials == first.trials
    s = tune.stats()
    assert (s["tunings"], s["memory_hits"], s["disk_hits"]) == (1, 1, 1)


def test_shape_buckets_are_powers_of_two(fake, cache):
    assert [tune.bucket(n) for n in (0, 1, 2, 3, 1000, 1024, 1025)] == \
        [0, 1, 2, 4, 1024, 1024, 2048]
    key = lambda *shape: tune.cache_key(fake, "cpu", _metas(*shape), {})  # noqa: E731
    assert key(1000) == key(1024) != key(1025)
    assert key(1000, 3) == key(1024, 4) != key(1000, 5)
    tuner = tune.Tuner(repeats=1, warmup=1)
    tuner.tune(fake, "cpu", _metas(1000), {})
    assert tuner.tune(fake, "cpu", _metas(1024), {}).source == "memory"
    assert tuner.tune(fake, "cpu", _metas(1025), {}).source == "measured"
    assert tune.stats()["tunings"] == 2


def test_key_holds_dtypes_attrs_policy_and_device(fake, cache):
    key = tune.cache_key(fake, "cpu", _metas(16), {"axis": (0, 1)})
    assert key["attrs"] == "{'axis': (0, 1,)}"
    assert key["device"] == tsol.backends.get("cpu").device_key()
    assert key["tsol"] == tsol.__version__ and key["deterministic"] is False
    assert key != tune.cache_key(fake, "cpu", [Meta((16,), np.dtype(np.float64))], {})
    assert key != tune.cache_key(fake, "cpu", _metas(16), {"axis": (1, 0)})
    with tsol.config.override(deterministic=True):
        assert tune.cache_key(fake, "cpu", _metas(16), {"axis": (0, 1)})["deterministic"]
    assert tune.cache_key(fake, "cpu", _metas(16), {"fn": lambda v: v}) is None


def test_new_version_or_edited_kernel_source_is_a_miss(fake, cache, monkeypatch):
    tuner = tune.Tuner(repeats=1, warmup=1)
    tuner.tune(fake, "cpu", _metas(16), {})
    assert tuner.tune(fake, "cpu", _metas(16), {}).source == "memory"
    monkeypatch.setattr(tsol, "__version__", "0.0.0+tune-test")
    assert tuner.tune(fake, "cpu", _metas(16), {}).source == "measured"
    source = registry.KERNELS[(FAKE, "cpu")][0].source_file
    with open(source, "a") as f:
        f.write("# version 2: a new tile loop\n")
    assert tuner.tune(fake, "cpu", _metas(16), {}).source == "measured"
    assert tune.stats()["tunings"] == 3 and len(_json_files(cache)) == 3


def test_stored_winner_that_no_longer_exists_is_a_miss(fake, cache):
    tune.Tuner(repeats=1, warmup=1).tune(fake, "cpu", _metas(16), {})
    (path,) = _json_files(cache)
    record = json.loads(path.read_text())
    record["kernel"] = "removed_kernel"
    path.write_text(json.dumps(record))
    tune.clear_memory()
    result = tune.Tuner(repeats=1, warmup=1).tune(fake, "cpu", _metas(16), {})
    assert result.source == "measured" and result.kernel.name == "b_fast"
    assert tune.stats()["stale"] == 1
    assert json.loads(path.read_text())["kernel"] == "b_fast"
    path.write_text("{not json")                         # a damaged file is a miss too
    tune.clear_memory()
    assert tune.Tuner(repeats=1, warmup=1).tune(fake, "cpu", _metas(16), {}).source == \
        "measured"


def test_deterministic_mode_tries_candidates_in_the_fixed_order(fake, cache):
    with tsol.config.override(deterministic=True):
        result = tune.Tuner(repeats=1, warmup=1).tune(fake, "cpu", _metas(16), {})
    assert [(t.kernel, t.config) for t in result.trials] == \
        [(k.name, c) for k, c in select.candidates(fake, "cpu", _metas(16), {})]
    assert result.key["deterministic"] is True


# --- the eager path ----------------------------------------------------------------------------

def _softmax_case(rng):
    x = rand(SOFTMAX_SHAPE, F32, rng)
    return x, reference("softmax", x, axis=1)


def test_autotuned_softmax_picks_a_candidate_and_is_correct(compiled_cache_dir, cache, rng):
    x, want = _softmax_case(rng)
    opdef, metas = get_op("softmax"), _metas(*SOFTMAX_SHAPE)
    n = len(select.candidates(opdef, "cpu", metas, {"axis": 1}))
    with tune.autotune(repeats=2, warmup=1) as tuner:
        got = tsol.softmax(x, axis=-1)
        again = tsol.softmax(x, axis=-1)                 # the plan: no second decision
    assert_close(got, want, F32)
    assert_close(again, want, F32)
    assert tune.stats()["tunings"] == 1 and tune.stats()["measurements"] == n
    result = tuner.lookup(opdef, "cpu", metas, {"axis": 1})
    assert (result.kernel, result.config) in select.candidates(opdef, "cpu", metas, {"axis": 1})
    assert len(_json_files(cache)) == 1


SECOND_PROCESS = """
import json, sys
import numpy as np
import tsol
from tsol.schedule import tune
x = np.load(sys.argv[1])
assert tune.install_from_config()                  # TSOL_AUTOTUNE=1 is set
y = tsol.softmax(x, axis=-1)
np.save(sys.argv[2], y)
print(json.dumps(tune.stats()))
"""


def test_second_process_reuses_the_result_without_measuring(compiled_cache_dir, cache, rng):
    x, want = _softmax_case(rng)
    with tune.autotune(repeats=2, warmup=1):
        tsol.softmax(x, axis=-1)
    assert tune.stats()["tunings"] == 1
    # Share the compiled kernels, so the second process loads them instead of compiling.
    os.symlink(os.path.join(compiled_cache_dir, "cpu"), cache / "cpu")
    np.save(cache / "x.npy", x)
    env = dict(os.environ, TSOL_CACHE_DIR=str(cache), TSOL_AUTOTUNE="1")
    done = subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(cache / "x.npy"),
                           str(cache / "y.npy")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts["measurements"] == 0 and counts["tunings"] == 0
    assert counts["disk_hits"] == 1
    assert_close(np.load(cache / "y.npy"), want, F32)


def test_autotune_restores_the_previous_selector(monkeypatch):
    def previous(opdef, backend, metas, attrs):
        return None

    monkeypatch.setattr(base, "selector", previous)
    block = tune.autotune(repeats=1)
    with block as tuner:
        assert isinstance(tuner, tune.Tuner)
        assert base.selector is not previous and callable(base.selector)
        inner = base.selector
        with block:                                        # re-entering the same object
            assert base.selector is inner
        assert base.selector is inner
    assert base.selector is previous
    with pytest.raises(ValueError), tune.autotune():
        raise ValueError("inside")
    assert base.selector is previous
    with tune.autotune(enabled=False):
        assert base.selector is None
    assert base.selector is previous

    @tune.autotune(repeats=1)
    def decorated():
        return base.selector

    assert decorated() not in (None, previous) and base.selector is previous


def test_setting_selector_tunes_only_while_the_setting_is_on(fake, cache, monkeypatch):
    monkeypatch.setattr(base, "selector", None)
    assert tune.install_from_config() and base.selector is tune.config_selector
    assert tune.install_from_config()                     # idempotent
    assert tune.config_selector(fake, "cpu", _metas(16), {}) is None
    assert tune.stats()["measurements"] == 0
    with tsol.config.override(autotune=True):
        k, cfg = tune.config_selector(fake, "cpu", _metas(16), {})
    assert (k.name, cfg) == ("b_fast", Config(tile=(4, 4)))
    monkeypatch.setattr(base, "selector", lambda *a: None)
    assert not tune.install_from_config()                 # another selector is left alone
