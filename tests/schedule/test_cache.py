"""A second process reuses the compiled fused kernels; a changed TSOL version misses."""

import json
import os
import subprocess
import sys

SCRIPT = """
import json, sys
import numpy as np
import tsol
if len(sys.argv) > 1:
    tsol.__version__ = sys.argv[1]
from tsol import op
from tsol.kernels.cpu.jit import compile_stats
p = op.pipeline([op.relu, lambda x: x * 2 + 1, op.tanh])
x = np.linspace(-2, 2, 37, dtype=np.float32)
y = p(x)
assert np.allclose(y, np.tanh(np.maximum(x, 0) * 2 + 1), atol=1e-6)
assert p.kernel_count() == 1
print(json.dumps(compile_stats()))
"""


def _run(tmp_path, *args):
    env = dict(os.environ, TSOL_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def test_second_process_hits_the_compile_cache_and_a_new_version_misses(tmp_path):
    first = _run(tmp_path)
    assert first["cache_misses"] > 0
    second = _run(tmp_path)
    assert second["cache_misses"] == 0 and second["cache_hits"] > 0
    assert _run(tmp_path, "0.0.0-changed")["cache_misses"] > 0
