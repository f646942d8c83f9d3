"""CUDA kernels for the normalization ops (in progress)."""
