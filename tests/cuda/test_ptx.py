"""Every CUDA kernel signature the tests reach compiles to PTX for sm_90 (the H100).

Re-runs each CUDA test file in a child process in compile-only mode (``TSOL_CUDA_COMPILE_ONLY=1``):
there ``gpu.launch`` compiles each new (kernel, signature) with ``cuda.compile_ptx(...,
cc=(9, 0))`` through NVVM instead of running it. Needs numba-cuda's NVVM (the ``cu13`` extra),
no GPU. One test per file, so that parallel test workers share the compiling.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cuda.support import COMPILE_ONLY, SIMULATOR

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(p.name for p in (ROOT / "tests" / "cuda").glob("test_*.py")
               if p.name != Path(__file__).name)


@functools.lru_cache(maxsize=None)
def _nvvm_available() -> bool:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = ("from numba import cuda, float32\n"
             "def k(x):\n    x[0] = 1\n"
             "cuda.compile_ptx(k, (float32[:],), cc=(9, 0))\n")
    return subprocess.run([sys.executable, "-c", probe], env=env,
                          capture_output=True).returncode == 0


@pytest.mark.skipif(COMPILE_ONLY or not SIMULATOR, reason="runs from the simulator session")
@pytest.mark.parametrize("name", FILES)
def test_every_kernel_signature_compiles_for_sm90(name):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["TSOL_CUDA_COMPILE_ONLY"] = "1"
    if not _nvvm_available():
        pytest.skip("numba-cuda's NVVM is not installed (pip install 'numba-cuda[cu13]')")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(ROOT / "tests" / "cuda" / name)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
