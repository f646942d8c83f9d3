"""CPU kernels for the elementwise ops (being written)."""
