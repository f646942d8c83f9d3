"""Helpers of the op tests that more than one op family uses."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tsol.errors import TSOLError


def fails(fn: Callable[[], Any], cls: type[TSOLError], *fragments: str) -> None:
    """``fn()`` raises ``cls`` (a TSOLError) whose message holds every one of ``fragments``."""
    with pytest.raises(cls) as info:
        fn()
    assert isinstance(info.value, TSOLError)
    for f in fragments:
        assert f in str(info.value), str(info.value)
