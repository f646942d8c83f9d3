"""CUDA kernels for the attention ops (in progress)."""
