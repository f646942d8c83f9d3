"""The examples in the schedule layer's public docstrings run and give what they show."""

import doctest

import pytest
from tsol.schedule import autodiff, compiled, pipeline, tune

import tsol.graph


@pytest.mark.parametrize("module", [compiled, pipeline, autodiff, tune, tsol.graph],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module is not tune:
        assert result.attempted > 0
