"""Shared fixtures: every test gets its own DEVMETER_HOME, so nothing touches the user's.

`upstream` (a fake provider) and `proxy` (a real `devmeter proxy` with every provider
host mapped to it) are shared by a test module; a module that needs another config
defines its own `proxy`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devmeter.diagnostics import log_to_stderr
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy


@pytest.fixture(autouse=True, scope="session")
def diagnostics_on_stderr() -> None:
    """devmeter's log lines on stderr, as every entry point (CLI, proxy, tray) sets up, so
    tests that call a module directly read the same lines a user sees."""
    log_to_stderr()


@pytest.fixture(autouse=True)
def devmeter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "devmeter-home"
    monkeypatch.setenv("DEVMETER_HOME", str(home))
    yield home


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    running = start_proxy(tmp_path_factory.mktemp("devmeter-home"), upstream.url)
    yield running
    running.stop()
