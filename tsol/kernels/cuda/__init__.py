"""CUDA kernels (numba-cuda through the ``gpu`` facade), one module per op family; importing this
registers them."""

from tsol.kernels.cuda import elementwise  # noqa: F401
