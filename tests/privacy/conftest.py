"""Fixtures for the DP-SGD tests."""

from __future__ import annotations

import pytest
from dp_models import encoded_rows, tiny_lora


@pytest.fixture
def model():
    return tiny_lora()


@pytest.fixture
def rows():
    return encoded_rows(6)
