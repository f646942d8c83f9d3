"""CUDA kernels for the softmax ops (in progress)."""
