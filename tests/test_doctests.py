"""The doctests of the position conventions: labels, the anchor rule, the profile's position i, verl's shift."""

import doctest

import pytest

import t3s.confidence
import t3s.export
import t3s.masks


@pytest.mark.parametrize("module", [t3s.masks, t3s.confidence, t3s.export], ids=lambda m: m.__name__)
def test_position_conventions(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
