"""Every CUDA kernel signature the tests reach compiles to PTX for sm_90 (the H100).

Re-runs the CUDA tests in a child process in compile-only mode (``TSOL_CUDA_COMPILE_ONLY=1``):
there ``gpu.launch`` compiles each new (kernel, signature) with ``cuda.compile_ptx(...,
cc=(9, 0))`` through NVVM instead of running it. Needs numba-cuda's NVVM (the ``cu13`` extra),
no GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cuda.support import COMPILE_ONLY, SIMULATOR

ROOT = Path(__file__).resolve().parents[2]


def _nvvm_available(env: dict) -> bool:
    probe = ("from numba import cuda, float32\n"
             "def k(x):\n    x[0] = 1\n"
             "cuda.compile_ptx(k, (float32[:],), cc=(9, 0))\n")
    return subprocess.run([sys.executable, "-c", probe], env=env,
                          capture_output=True).returncode == 0


@pytest.mark.skipif(COMPILE_ONLY or not SIMULATOR, reason="runs from the simulator session")
def test_every_kernel_signature_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["TSOL_CUDA_COMPILE_ONLY"] = "1"
    if not _nvvm_available(env):
        pytest.skip("numba-cuda's NVVM is not installed (pip install 'numba-cuda[cu13]')")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "cuda"), "--deselect",
                           "tests/cuda/test_ptx.py::test_every_kernel_signature_compiles_for_sm90"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
