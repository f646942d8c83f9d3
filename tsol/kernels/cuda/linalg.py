"""CUDA kernels for the linalg ops (in progress)."""
