"""Test session settings: poison every TSOL-allocated output, fresh random inputs per test."""

import os

import numpy as np
import pytest

import tsol


def pytest_configure(config):
    # CUDA kernels run under Numba's simulator unless the real GPU is asked for (-m gpu) or
    # compile-only mode is on; numba.cuda reads this variable when it is first imported.
    if (config.getoption("-m") or "").strip() != "gpu" and \
            os.environ.get("TSOL_CUDA_COMPILE_ONLY", "0") in ("", "0"):
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@pytest.fixture(autouse=True, scope="session")
def _poison_outputs():
    with tsol.config.override(poison_outputs=True):
        yield


@pytest.fixture
def rng(request):
    """A generator seeded freshly per test; the seed is printed on failure to reproduce it."""
    seed = int(os.environ.get("TSOL_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)
