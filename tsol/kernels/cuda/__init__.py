"""CUDA kernels (numba-cuda through the ``gpu`` facade), one module per op family; importing this
registers them."""

import importlib

FAMILIES = ("elementwise", "reduction", "softmax", "normalization", "layout", "random", "linalg",
            "attention", "loss", "fused", "fused_reduction")

for _family in FAMILIES:
    importlib.import_module(f"tsol.kernels.cuda.{_family}")
