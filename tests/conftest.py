"""Shared fixtures: every test gets its own DEVMETER_HOME, so nothing touches the user's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def devmeter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "devmeter-home"
    monkeypatch.setenv("DEVMETER_HOME", str(home))
    yield home
