"""CPU kernels for the softmax ops (being written)."""
