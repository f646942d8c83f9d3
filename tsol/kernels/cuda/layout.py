"""CUDA kernels for the layout ops (in progress)."""
