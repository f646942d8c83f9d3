"""Calls CUDA kernels (the memory-bound ones and the matmuls) a few times each, for a hardware-counter profiler.

    ncu --clock-control none --set basic --section MemoryWorkloadAnalysis --csv \\
        --page details python3 bench/gpu_profile.py [OP ...] > ncu.csv

Each case (default: all; ``chain`` is a compiled relu -> *2+1 -> tanh pipeline, the others
are ops, ``*_col`` along axis 0) runs on a 4096x4096 float32 input (layernorm also bfloat16;
rope on [4, 16, 2048, 128]; the matmuls are 4096^3, float32 SIMT and bfloat16 mma), twice: the first call compiles, the second is the one to read. Prints each case's name
before its calls, so a profile's kernels can be matched to cases in order.
"""

from __future__ import annotations

import sys

import numpy as np

import tsol


def calls(cp: object) -> dict[str, object]:
    """op label -> zero-argument callable on fresh device inputs."""
    rng = np.random.default_rng(0)
    n = 4096
    x = cp.asarray(rng.standard_normal((n, n), np.float32))
    y = cp.asarray(rng.standard_normal((n, n), np.float32))
    g = cp.asarray(rng.uniform(0.5, 1.5, n).astype(np.float32))
    xb = cp.asarray(x.get().astype(tsol.dtypes.bfloat16))
    gb = cp.asarray(g.get().astype(tsol.dtypes.bfloat16))
    labels = cp.asarray(rng.integers(0, n, n))
    q = cp.asarray(rng.standard_normal((4, 16, 2048, 128), np.float32))
    pos = cp.arange(2048)
    chain = tsol.op.pipeline([tsol.op.relu, lambda v: v * 2 + 1, tsol.op.tanh])
    return {
        "chain": lambda: chain(x),
        "softmax": lambda: tsol.softmax(x),
        "log_softmax": lambda: tsol.log_softmax(x),
        "layernorm": lambda: tsol.layernorm(x, g, g),
        "layernorm_bf16": lambda: tsol.layernorm(xb, gb, gb),
        "rmsnorm": lambda: tsol.rmsnorm(x, g),
        "cross_entropy": lambda: tsol.cross_entropy(x, labels),
        "exp": lambda: tsol.exp(x),
        "add": lambda: tsol.add(x, y),
        "sum": lambda: tsol.sum(x, axis=-1),
        "rope": lambda: tsol.rope(q, positions=pos),
        "softmax_col": lambda: tsol.softmax(x, axis=0),
        "sum_col": lambda: tsol.sum(x, axis=0),
        "matmul_relu": lambda: tsol.matmul(x, y, epilogue="relu"),      # our SIMT kernel
        "matmul_bf16": lambda: tsol.matmul(xb, xb),
    }


def main(argv: list[str]) -> int:
    import cupy as cp
    table = calls(cp)
    for name in argv or list(table):
        print(f"== {name}", flush=True)
        try:
            for _ in range(2):
                table[name]()
            cp.cuda.Device().synchronize()
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
