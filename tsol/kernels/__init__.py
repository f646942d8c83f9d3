"""Hand-written tile kernels, one package per backend; each registers itself in tsol.registry.

Nothing imports these modules directly: a backend imports its package on first use.
"""
