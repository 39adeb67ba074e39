"""The ``fake_upstream`` fixture.

Enable it with ``pytest_plugins = ["tests.fake_upstream.pytest_plugin"]`` in the top-level
conftest, or ``from tests.fake_upstream.pytest_plugin import fake_upstream`` in a test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeUpstream


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A fresh fake upstream on an ephemeral port, stopped after the test."""
    with FakeUpstream() as upstream:
        yield upstream
