"""CPU kernels (Numba ``@njit``), one module per op family; importing this registers them."""

from tsol.kernels.cpu import (  # noqa: F401
                              attention,
                              elementwise,
                              fused,
                              fused_reduction,
                              layout,
                              linalg,
                              loss,
                              normalization,
                              random,
                              reduction,
                              softmax,
)
