"""A second `devmeter proxy` on a ledger another proxy writes stops before it touches
anything of the first's: it says so and exits 1, and the first's held requests
(asks.json, which the tray menu reads) stay as they are (proxy/server.py serve builds
the Meter, and so the ledger writer, before it clears a killed proxy's asks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devmeter.ask import asks_path
from devmeter.paths import paths
from tests.proxy_harness import REPO_ROOT, START_SECONDS, start_proxy

pytestmark = pytest.mark.proxy


def test_a_second_proxy_on_the_same_ledger_leaves_the_first_ones_asks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = start_proxy(home, None)
    try:
        pending = asks_path(paths({"DEVMETER_HOME": str(home)}).data_dir)
        held = '[{"id": "a1", "scope": "session"}]'
        pending.write_text(held)  # as the first proxy writes it while an ask holds a call

        second = subprocess.run(
            [sys.executable, "-m", "devmeter", "proxy", "--listen", "127.0.0.1:0"],
            env=dict(os.environ, DEVMETER_HOME=str(home)),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=START_SECONDS,
        )
        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stderr
        assert pending.read_text() == held
        assert first.proc.poll() is None  # the first proxy serves on
    finally:
        first.stop()
