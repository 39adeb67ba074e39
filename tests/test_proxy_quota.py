"""Quota windows through a real proxy: alert levels follow a config reload, and the latest
snapshot survives a proxy killed right after the answer (it is spooled like a call)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy
from tests.test_proxy_config_reload import edit, wait_for

pytestmark = pytest.mark.proxy

OAUTH_TOKEN = "sk-ant-oat01-PLANTEDquotaReloadQw3Er5Ty7Ui9"
FIVE_H_RESET = 1_796_646_600
SLOW_COMMITS = """
import sys
import devmeter.ledger
devmeter.ledger.COMMIT_INTERVAL = 30.0
from devmeter.cli import main
sys.exit(main(sys.argv[1:]))
"""


def unified(utilization: str) -> dict[str, str]:
    return {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": utilization,
        "anthropic-ratelimit-unified-5h-reset": str(FIVE_H_RESET),
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[quota]\nthresholds = [0.9]\n")
    return home


def ask(proxy: RunningProxy, upstream: FakeUpstream, utilization: str) -> None:
    """One subscription call (an OAuth token) answered with the 5h window at `utilization`."""
    upstream.defaults.update(headers=unified(utilization))
    http = anthropic.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    client = anthropic.Anthropic(auth_token=OAUTH_TOKEN, http_client=http, max_retries=0)
    client.messages.create(
        model="claude-opus-5-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )


def quota_alerts(home: Path) -> list[str]:
    conn = sqlite3.connect(f"{(home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT message FROM alerts WHERE kind = 'quota' ORDER BY id")
        return [message for (message,) in rows]
    finally:
        conn.close()


def quota_json(home: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "quota", "--json"],
        env={**os.environ, "DEVMETER_HOME": str(home)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return list(json.loads(done.stdout))


def test_a_reloaded_quota_level_alerts_on_the_next_snapshot_past_it(
    upstream: FakeUpstream, home: Path
) -> None:
    upstream.reset()
    proxy = start_proxy(home, upstream.url)
    try:
        ask(proxy, upstream, "0.62")
        proxy.new_calls(1)
        ask(proxy, upstream, "0.63")
        proxy.new_calls(1)
        assert quota_alerts(home) == []  # 63% is under the configured 90%

        edit(home / "config.toml", "[quota]\nthresholds = [0.5]\n")
        wait_for(lambda: "config reloaded" in proxy.log.read_text(), "no reload")
        ask(proxy, upstream, "0.64")
        proxy.new_calls(1)
        wait_for(lambda: bool(quota_alerts(home)), "the new level never alerted")
        assert quota_alerts(home) == [
            "anthropic 5h window passed 50% (at 64%), resets 2026-12-07T12:30:00Z"
        ]
    finally:
        proxy.stop()


def test_a_proxy_killed_right_after_the_answer_keeps_the_latest_snapshot(
    upstream: FakeUpstream, home: Path
) -> None:
    upstream.reset()
    # A writer that commits every 30 s (a slow disk): the first answer is committed at
    # once (the writer was idle), the second is then on disk only in the spool.
    proxy = start_proxy(home, upstream.url, launcher=(sys.executable, "-c", SLOW_COMMITS))
    ask(proxy, upstream, "0.41")
    proxy.new_calls(1)
    ask(proxy, upstream, "0.47")
    proxy.stop(signal.SIGKILL)
    assert proxy.proc.returncode == -signal.SIGKILL

    again = start_proxy(home, upstream.url)  # replays what the spool holds
    try:
        wait_for(lambda: len(again.rows()) == 2, "the killed run's calls were not replayed")
        (five,) = [q for q in quota_json(home) if q["window"] == "5h"]
        assert (five["utilization"], five["status"]) == (0.47, "allowed")
        # The restarted proxy knows the replayed window: the same 47% is not a new move.
        ask(again, upstream, "0.47")
        again.new_calls(3)
        conn = sqlite3.connect(f"{(home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
        readings = conn.execute("SELECT utilization FROM quota_readings ORDER BY id").fetchall()
        conn.close()
        assert readings == [(0.41,), (0.47,)]  # each move once: replayed, not doubled
    finally:
        again.stop()
