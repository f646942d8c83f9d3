"""Cubins built without a GPU (``TSOL_CUDA_COMPILE_ONLY=cubin``, ``bench/gpu_prebuild.py``) land
in the cache under the key a GPU run looks up, and that key follows a kernel's own code only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cuda.support import COMPILE_ONLY, SIMULATOR
from tests.cuda.test_ptx import _nvvm_available

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(COMPILE_ONLY or not SIMULATOR,
                                reason="runs from the simulator session")

_PROBE = """
import numpy as np, tsol
from tsol.kernels.cuda import gpu
with tsol.config.override(default_backend="cuda"):
    x = np.random.default_rng(0).random((5, 37), dtype=np.float32)
    tsol.softmax(x)
    tsol.matmul(x, x.T)
print(len(set(repr(c) for c in gpu.COMPILED)))
"""


def test_prebuild_links_sm90_cubins_into_the_cache(tmp_path):
    if not _nvvm_available():
        pytest.skip("numba-cuda's NVVM is not installed (pip install 'numba-cuda[cu13]')")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(TSOL_CUDA_COMPILE_ONLY="cubin", TSOL_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = int(proc.stdout.strip().splitlines()[-1])
    folder = tmp_path / "cuda" / "sm90"
    cubins = sorted(folder.glob("*.cubin"))
    assert len(cubins) == compiled >= 2
    for cubin in cubins:
        data = cubin.read_bytes()
        assert data[:4] == b"\x7fELF"                     # a linked device image, not PTX
        entry = json.loads(cubin.with_suffix(".json").read_text())["entry"]
        assert entry.encode() in data                      # the kernel a launch looks up


def test_cache_key_follows_the_kernel_code_not_other_modules():
    from tsol.kernels.cuda import gpu

    src = "def k_{tag}(x):\n    i = gpu.grid(1)\n    if i < x.size:\n        x[i] = {value}\n"

    def build(tag, value):
        ns = {"gpu": gpu}
        text = src.format(tag=tag, value=value)
        exec(text, ns)                                      # noqa: S102 - a test kernel
        fn = ns[f"k_{tag}"]
        fn.__module__ = "tsol.kernels.cuda.elementwise"
        return gpu.kernel(fn, source=text)

    a, same, other = build("a", 1), build("a", 1), build("a", 2)
    assert gpu.sources_stamp(a) == gpu.sources_stamp(same)
    assert gpu.sources_stamp(a) != gpu.sources_stamp(other)
    modules, _ = gpu._code_sources(a.fn)
    assert modules == {"tsol.kernels.cuda.gpu"}            # not elementwise's host code
