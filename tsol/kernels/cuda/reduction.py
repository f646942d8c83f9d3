"""CUDA kernels for the reduction ops (in progress)."""
