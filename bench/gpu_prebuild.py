"""Build the sm_90 cubins of CUDA benchmark cases and GPU tests on a machine without a GPU.

Runs ``tsol-bench run --backend cuda`` (and, with ``--tests``, ``pytest -m gpu`` on the given
test files at their GPU sizes) in compile-only mode with ``TSOL_CUDA_COMPILE_ONLY=cubin``: every
kernel signature those runs launch is compiled and linked for sm_90 into ``<cache>/cuda/sm90/``
under the key a GPU run looks up. Carry the cache folder to the GPU machine and point
``TSOL_CACHE_DIR`` at it (``.ci/gpu`` copies ``.gpu-cache/`` into its cache): the kernels load
there without compiling. Only launches that depend on shapes and dtypes are covered; kernels a
run picks by measuring (autotuning) or by the device's properties compile there as before.

    python bench/gpu_prebuild.py --cache .gpu-cache --suite linalg --suite attention
    python bench/gpu_prebuild.py --cache .gpu-cache --no-bench --tests tests/cuda/test_softmax.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default=str(ROOT / ".gpu-cache"), help="cache folder to fill")
    p.add_argument("--tests", nargs="*", default=None, metavar="FILE",
                   help="also compile what these GPU test files launch (no value: tests/cuda)")
    p.add_argument("--no-bench", action="store_true", help="skip the benchmark cases")
    args, bench_args = p.parse_known_args(argv)
    cache = Path(args.cache).resolve()
    env = dict(os.environ, TSOL_CUDA_COMPILE_ONLY="cubin", TSOL_CACHE_DIR=str(cache))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    folder = cache / "cuda" / "sm90"
    before = len(list(folder.glob("*.cubin"))) if folder.exists() else 0
    start, rc = time.perf_counter(), 0
    if not args.no_bench:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "tsol.bench.cli", "run", "--backend", "cuda",
                   *bench_args, "--out", str(Path(tmp) / "prebuild.json")]
            # Rows fail here (nothing runs): the output is of no use, the launches are.
            rc |= subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL).returncode
    if args.tests is not None:
        files = args.tests or ["tests/cuda"]
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               "-p", "no:xdist", *files]
        subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    after = len(list(folder.glob("*.cubin"))) if folder.exists() else 0
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.exists() else 0
    print(f"{after - before} new cubins ({after} in {folder}, {size / 2**20:.1f} MiB in the "
          f"cache) in {time.perf_counter() - start:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
