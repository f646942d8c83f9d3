"""CPU kernels (Numba ``@njit``), one module per op family; importing this registers them."""

from tsol.kernels.cpu import elementwise, normalization, reduction, softmax  # noqa: F401
