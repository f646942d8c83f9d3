"""CUDA kernels for the random ops (in progress)."""
