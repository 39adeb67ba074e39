"""Guard rails through a real proxy: a threshold notifies once, a cap blocks, `allow` lifts it.

Notifications are captured with a stand-in `notify-send` on the proxy's PATH, so the
whole chain runs for real: the proxy's notifier, plyer, then the Linux fallback.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from devmeter import control
from devmeter.ledger import connect_readonly
from devmeter.tray.menu import CapRow
from devmeter.tray.snapshot import snapshot
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import SOCKET_SECONDS, RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

M = Decimal(1_000_000)
# One call: 1200 input + 345 output on Claude Opus 5.5 ($4 / $20 per million) = $0.0117.
USAGE = {
    "input_tokens": 1200, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 345, "reasoning_tokens": 0,
}  # fmt: skip
PER_CALL = (1200 * 4 + 345 * 20) / M

CONFIG = """
[budgets.session]
notify_usd = [0.02]
block_usd = 0.03
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


@pytest.fixture()
def notifications(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notify-send that writes what it was asked to show into a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "notifications.jsonl"
    script = bin_dir / "notify-send"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.fixture()
def proxy(upstream: FakeUpstream, notifications: Path, tmp_path: Path) -> Iterator[RunningProxy]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(CONFIG)
    running = start_proxy(home, upstream.url)
    yield running
    running.stop()


def client(proxy: RunningProxy, session: str) -> anthropic.Anthropic:
    http = anthropic.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    return anthropic.Anthropic(
        api_key="sk-ant-test", http_client=http, default_headers={"X-Devmeter-Session": session}
    )


def ask(c: anthropic.Anthropic) -> None:
    c.messages.create(
        model="claude-opus-5-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )


def shown(log: Path, timeout: float = 10) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().strip():
            time.sleep(0.3)  # let a second (unwanted) notification show up if there is one
            return [json.loads(line) for line in log.read_text().splitlines()]
        time.sleep(0.05)
    return []


def devmeter(proxy: RunningProxy, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devmeter", *args],
        env=proxy.env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_threshold_notifies_once_then_the_cap_blocks_without_retries(
    proxy: RunningProxy, upstream: FakeUpstream, notifications: Path
) -> None:
    c = client(proxy, "runaway-1")
    ask(c)  # $0.0117
    assert not notifications.exists()
    ask(c)  # $0.0234: crosses the $0.02 threshold
    (note,) = shown(notifications)
    text = " ".join(note)
    assert "runaway-1" in text and "$0.02" in text

    ask(c)  # $0.0351: reaches the $0.03 cap (the call itself was already allowed)
    sent_before = len(upstream.find("anthropic.messages"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(c)
    assert caught.value.status_code == 402  # billing_error: shown as is, never retried
    message = caught.value.message
    assert "devmeter:" in message
    assert "devmeter allow runaway-1" in message
    # Refused at the proxy: the provider never saw it, and the SDK did not retry.
    assert len(upstream.find("anthropic.messages")) == sent_before
    rows = proxy.new_calls(4)
    blocked = rows[-1]
    assert blocked["status"] == 402 and blocked["cost_usd"] == 0
    assert blocked["error"].startswith("devmeter:")
    # What refused it is data on the row, and the tray shows the cap from that.
    assert (blocked["refused_scope"], blocked["refused_key"]) == ("session", "runaway-1")
    assert blocked["refused_cap_pusd"] == 3 * 10**10  # $0.03
    assert tray_blocked(proxy) == (CapRow("session", "runaway-1", Decimal("0.03")),)
    assert sum(r["cost_usd"] for r in rows) == 3 * PER_CALL
    assert len(proxy.rows("status = 402")) == 1  # one attempt, not ten

    # The alerts are ledger rows too: the threshold once, then the cap.
    alerts = json.loads(devmeter(proxy, "alerts", "--json").stdout)
    kinds = [(a["kind"], a["scope"], a["key"]) for a in alerts]
    assert kinds.count(("threshold", "session", "runaway-1")) == 1
    assert ("blocked", "session", "runaway-1") in kinds

    # Other sessions are not blocked by this session's cap.
    ask(client(proxy, "someone-else"))

    # `devmeter allow` raises the cap for this session a step ($0.03 to $0.05).
    assert "to $0.05" in devmeter(proxy, "allow", "runaway-1", "--by", "0.02").stdout
    time.sleep(0.6)  # the proxy re-reads its control file at most twice a second
    ask(c)


def tray_blocked(proxy: RunningProxy) -> tuple[CapRow, ...]:
    """The caps the tray shows as refusing now, read as the tray reads the ledger."""
    conn = connect_readonly(proxy.home / "ledger.sqlite")
    try:
        return snapshot(conn, time.time(), control.load(proxy.home / "control.json")).blocked
    finally:
        conn.close()


def test_pause_refuses_everything_until_resume(proxy: RunningProxy) -> None:
    devmeter(proxy, "pause")
    time.sleep(0.6)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client(proxy, "p"))
    assert "devmeter: metered traffic is paused" in caught.value.message
    assert "devmeter resume" in caught.value.message
    deadline = time.monotonic() + 10  # the refusal's row is written just after it
    while not (refused := proxy.rows("session = 'p'")):
        assert time.monotonic() < deadline, "the refused call has no ledger row"
        time.sleep(0.05)
    (row,) = refused
    assert (row["refused_scope"], row["refused_key"], row["refused_cap_pusd"]) == (
        "pause", "all", None
    )  # fmt: skip
    assert tray_blocked(proxy) == ()  # a pause is not a cap to lift
    devmeter(proxy, "resume")
    time.sleep(0.6)
    ask(client(proxy, "p"))


def test_cap_reached_on_an_open_websocket_refuses_the_next_turn(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Codex keeps one WebSocket open for a whole session: the cap must hold on it too."""

    turn = {"type": "response.create", "model": "gpt-5", "input": "hi", "stream": True}
    answers: list[dict[str, object]] = []
    with proxy.responses_socket("codex-ws") as socket:
        for _ in range(12):
            socket.send(json.dumps(turn))
            while True:  # read this turn's events up to its end (or the refusal)
                event = json.loads(socket.recv(timeout=SOCKET_SECONDS))
                if event["type"] in ("response.completed", "error"):
                    answers.append(event)
                    break
            if event["type"] == "error":
                break
    refusal = answers[-1]
    assert refusal["type"] == "error" and refusal["status"] == 403
    assert "devmeter allow codex-ws" in json.dumps(refusal)
    turns = len(answers) - 1
    # gpt-5: 1200 input at $1.25/M + 345 output at $10/M = $0.00495 a turn; cap $0.03.
    assert turns == 7
    sent = [r for r in upstream.find() if r.method == "WS" and b"response.create" in r.body]
    assert len(sent) == turns  # the refused turn never reached the provider
    deadline = time.monotonic() + 10  # the refusal's row is written just after the refusal
    while len(rows := proxy.rows("session = 'codex-ws'")) < turns + 1:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert [r["status"] for r in rows] == [101] * turns + [403]
    assert rows[-1]["error"].startswith("devmeter:")


def test_a_cap_set_after_the_spend_is_announced_and_its_advice_works(
    upstream: FakeUpstream, notifications: Path, tmp_path: Path
) -> None:
    """The issue's sequence: spend first, a cap written into the config, the proxy started
    again. The first refusal raises the popup and the alert row, and the command the popup
    names, copied as it is, lets the session go on up to a new limit."""
    home = tmp_path / "restart-home"
    home.mkdir()
    session = "0bcf16ce-9d3e-4f0a-b1c2-d3e4f5a6b7c8"
    first = start_proxy(home, upstream.url)
    try:
        for _ in range(3):
            ask(client(first, session))  # $0.0351, no cap yet
    finally:
        first.stop()
    (home / "config.toml").write_text("[budgets.session]\nblock_usd = 0.03\n")
    second = start_proxy(home, upstream.url)
    try:
        with pytest.raises(anthropic.APIStatusError) as caught:
            ask(client(second, session))
        assert caught.value.status_code == 402
        (note,) = [n for n in shown(notifications) if "Requests blocked" in " ".join(n)]
        text = " ".join(note)
        assert "reached its $0.03 cap" in text
        command = text.split("`")[1]
        assert command == "devmeter allow 0bcf16ce"
        alerts = json.loads(devmeter(second, "alerts", "--json").stdout)
        assert [(a["kind"], a["key"]) for a in alerts] == [("blocked", session)]

        said = devmeter(second, *command.split()[1:], "--by", "0.02").stdout
        assert "from $0.03 to $0.05" in said
        time.sleep(0.6)  # the proxy re-reads its control file at most twice a second
        ask(client(second, session))  # $0.0468: under the raised cap
        ask(client(second, session))  # $0.0585: passes it (the call was already let in)
        with pytest.raises(anthropic.APIStatusError):
            ask(client(second, session))  # still a cap, now at $0.05
    finally:
        second.stop()


def test_the_threshold_popups_stop_command_stops_the_session_until_allowed(
    proxy: RunningProxy, notifications: Path
) -> None:
    session = "7f3e9a2b-3333-4ccc-8ddd-000000000003"
    c = client(proxy, session)
    ask(c)
    ask(c)  # $0.0234: crosses the $0.02 threshold, whose popup says how to stop it
    (note,) = shown(notifications)
    command = " ".join(note).split("`")[1]
    assert command == "devmeter stop 7f3e9a2b"
    assert "stopped session 7f3e9a2b" in devmeter(proxy, *command.split()[1:]).stdout
    time.sleep(0.6)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(c)
    assert caught.value.status_code == 402
    assert "was stopped with `devmeter stop`" in caught.value.message
    assert "`devmeter allow 7f3e9a2b`" in caught.value.message
    ask(client(proxy, "someone-else"))  # only that session is stopped
    devmeter(proxy, "allow", "7f3e9a2b")  # raises its $0.03 cap a step, and un-stops it
    time.sleep(0.6)
    ask(c)
