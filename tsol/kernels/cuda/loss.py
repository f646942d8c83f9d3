"""CUDA kernels for the loss ops (in progress)."""
