"""CPU kernels (Numba ``@njit``), one module per op family; importing this registers them."""

from tsol.kernels.cpu import (attention, elementwise, layout, linalg, loss,  # noqa: F401
                              normalization, random, reduction, softmax)
