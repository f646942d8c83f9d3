"""Fixtures of the CUDA kernel tests."""

import pytest

from tsol.ops import base
from tsol.registry import kernels


@pytest.fixture
def forced(monkeypatch):
    """``forced(config, only=None)``: the first cuda kernel of each op (of op ``only`` alone,
    if given) runs with ``config`` instead of the heuristic's choice."""
    def use(config, only=None):
        def pick(opdef, backend, metas, attrs):
            if backend == "cuda" and only in (None, opdef.name):
                return kernels(opdef.name, "cuda")[0], config
            return None
        monkeypatch.setattr(base, "selector", pick)
    return use
