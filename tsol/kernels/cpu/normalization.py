"""CPU kernels for the normalization ops (being written)."""
