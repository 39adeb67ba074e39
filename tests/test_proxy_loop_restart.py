"""A loop's count survives a proxy restart: fingerprints are kept in the ledger, hashed
with a key kept in the data folder, and read back into the detector at start."""

from __future__ import annotations

import sqlite3
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

SESSION = "5e55a1d0-0000-4000-8000-00000000100f"
# The same failing tool call, sent again and again: what a stuck agent sends.
STUCK = [
    {"role": "user", "content": "run the tests"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_01", "name": "Bash",
                     "input": {"command": "pytest -x"}}],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "is_error": True,
                     "content": "ModuleNotFoundError: No module named 'secretproject'"}],
    },
]  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def send(proxy: RunningProxy, count: int) -> None:
    http = anthropic.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    client = anthropic.Anthropic(
        api_key="sk-ant-test", http_client=http, default_headers={"X-Devmeter-Session": SESSION}
    )
    for _ in range(count):
        client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=STUCK)  # type: ignore[arg-type]
    proxy.new_calls(count)


def loop_alerts(home: Path, wait: float) -> list[dict[str, Any]]:
    """The loop alerts in the ledger, waiting up to `wait` seconds for one to be written."""
    deadline = time.monotonic() + wait
    while True:
        conn = sqlite3.connect(f"{(home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute("SELECT * FROM alerts WHERE kind = 'loop'").fetchall()
        finally:
            conn.close()
        if rows or time.monotonic() >= deadline:
            return [dict(r) for r in rows]
        time.sleep(0.1)


def test_a_loop_half_built_before_a_restart_is_reported_after_it(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = start_proxy(home, upstream.url)
    try:
        send(first, 5)  # 5 of the default loop_count of 8
    finally:
        first.stop()
    assert loop_alerts(home, wait=0) == []
    key = home / "loop.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first_key = key.read_bytes()

    second = start_proxy(home, upstream.url)
    try:
        second.skip_existing()
        send(second, 2)
        assert loop_alerts(home, wait=0.5) == []  # 7 so far: not yet a loop
        send(second, 1)
        (loop,) = loop_alerts(home, wait=10)
    finally:
        second.stop()
    assert loop["key"] == SESSION
    assert "sent 8 near-identical requests" in loop["message"]
    assert key.read_bytes() == first_key  # the same key across runs, not a new one each

    rows = second.rows()
    assert len(rows) == 8
    prints = {r["loop_fingerprint"] for r in rows}
    assert len(prints) == 1 and None not in prints
    # A keyed hash, not the request: no prompt text reaches the ledger through it.
    for stored in home.rglob("ledger.sqlite*"):
        data = stored.read_bytes() if stored.is_file() else b""
        assert b"secretproject" not in data and b"pytest -x" not in data
