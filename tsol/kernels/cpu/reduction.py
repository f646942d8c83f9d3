"""CPU kernels for the reduction ops (being written)."""
