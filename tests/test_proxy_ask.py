"""Asks through a real proxy and the real anthropic SDK: held, answered, or refused in time.

No desktop here (no D-Bus session), so the notification falls through desktop-notifier to
a stand-in `notify-send` on the proxy's PATH, which records what it was asked to show.
The end-to-end run with a real notification daemon is tests/test_e2e_ask_desktop.py.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from devmeter import control
from devmeter.ask import read_pending
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy
from tests.test_proxy_guard import USAGE, ask, client, devmeter, notifications, shown

pytestmark = pytest.mark.proxy
__all__ = ["notifications"]  # a fixture, used by name

# $0.0117 a call: the second call passes $0.02, so the third request is held.
CONFIG = """
[budgets]
ask_timeout_seconds = {timeout}

[budgets.session]
notify_usd = []
ask_usd = [0.02, 0.04]

[budgets.day]
notify_usd = []
ask_usd = []
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


def proxy_with(upstream: FakeUpstream, home: Path, timeout: int) -> RunningProxy:
    home.mkdir()
    (home / "config.toml").write_text(CONFIG.format(timeout=timeout))
    return start_proxy(home, upstream.url)


@pytest.fixture()
def proxy(upstream: FakeUpstream, notifications: Path, tmp_path: Path) -> Iterator[RunningProxy]:
    """Asks wait 30 s: long enough for the test to answer on a busy machine."""
    running = proxy_with(upstream, tmp_path / "home", 30)
    yield running
    running.stop()


@pytest.fixture()
def impatient_proxy(
    upstream: FakeUpstream, notifications: Path, tmp_path: Path
) -> Iterator[RunningProxy]:
    """Asks wait 3 s."""
    running = proxy_with(upstream, tmp_path / "home", 3)
    yield running
    running.stop()


def open_asks(proxy: RunningProxy, timeout: float = 10) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pending := read_pending(proxy.home / "asks.json"):
            return pending
        time.sleep(0.05)
    raise AssertionError(f"no open ask:\n{proxy.log.read_text()[-3000:]}")


def in_thread(action: object) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())  # type: ignore[operator]
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_held_until_continue_while_other_sessions_go_on(
    proxy: RunningProxy, upstream: FakeUpstream, notifications: Path
) -> None:
    c = client(proxy, "runaway-ask")
    ask(c)
    ask(c)  # $0.0234: past the $0.02 ask level
    sent = len(upstream.find("anthropic.messages"))
    thread, outcome = in_thread(lambda: ask(c))
    (pending,) = open_asks(proxy)
    assert pending["session"] == "runaway-ask" and pending["until_usd"] == 0.04
    (note,) = shown(notifications)
    assert "--urgency=critical" in note and "--expire-time=0" in note
    assert "devmeter: Continue spending?" in note
    assert any("runaway-ask" in part and "$0.02" in part for part in note)

    # Held: the provider has not seen it, and another session is not held meanwhile.
    time.sleep(1)
    assert thread.is_alive() and len(upstream.find("anthropic.messages")) == sent
    ask(client(proxy, "someone-else"))
    assert thread.is_alive()

    devmeter(proxy, "allow", "runaway-ask")  # the CLI's answer; the menu and buttons write too
    thread.join(5)
    assert outcome == [None]
    assert len(upstream.find("anthropic.messages")) == sent + 2
    assert read_pending(proxy.home / "asks.json") == []
    rows = proxy.new_calls(4)
    assert all(r["status"] == 200 for r in rows)
    alerts = json.loads(devmeter(proxy, "alerts", "--json").stdout)
    assert [(a["kind"], a["key"], a["figure_usd"]) for a in alerts] == [
        ("ask", "runaway-ask", 0.02)
    ]


def test_no_answer_refuses_the_held_request_and_the_next_at_once(
    impatient_proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    proxy = impatient_proxy
    c = client(proxy, "unattended")
    ask(c)
    ask(c)
    sent = len(upstream.find("anthropic.messages"))
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(c)
    waited = time.monotonic() - started
    assert 2.5 < waited < 8, waited  # ask_timeout_seconds = 3, then refused
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("devmeter: Session unattended")
    assert "nobody answered devmeter's ask within 3 s" in message
    assert "devmeter allow unattended" in message
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError):
        ask(c)  # nobody is there: refused at once, not held again
    assert time.monotonic() - started < 2
    assert len(upstream.find("anthropic.messages")) == sent  # nothing reached the provider
    rows = proxy.new_calls(4)
    assert [r["status"] for r in rows] == [200, 200, 402, 402]  # billing_error: not retried
    assert all(r["error"].startswith("devmeter:") and r["cost_usd"] == 0 for r in rows[2:])

    # Answering later still works: the session goes on to its next level.
    devmeter(proxy, "allow", "unattended")
    time.sleep(0.6)
    ask(c)
    assert len(upstream.find("anthropic.messages")) == sent + 1
    assert Decimal(0) < sum(r["cost_usd"] for r in proxy.rows("session = 'unattended'"))


def test_an_answer_after_the_timeout_closes_the_ask_without_waiting_for_a_request(
    impatient_proxy: RunningProxy,
) -> None:
    """Timed out, an ask holds nothing: its answer must still take the tray's entry (and
    the popup, from the same list) down at once, not at the session's next request."""
    proxy = impatient_proxy
    c = client(proxy, "answered-late")
    ask(c)
    ask(c)
    with pytest.raises(anthropic.APIStatusError):
        ask(c)  # held, then refused after 3 s
    (pending,) = open_asks(proxy)
    assert pending["expired"] is True
    out = devmeter(proxy, "allow", "answered-late").stdout
    assert "held request goes on" not in out
    assert "its next request goes through" in out
    deadline = time.monotonic() + 5
    while read_pending(proxy.home / "asks.json") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_pending(proxy.home / "asks.json") == []


def test_a_turn_on_codexs_open_websocket_waits_for_the_answer_too(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Codex keeps one WebSocket for a session: the ask must hold a turn on it as well."""

    turn = json.dumps({"type": "response.create", "model": "gpt-5", "input": "hi", "stream": True})
    with proxy.responses_socket("codex-ask") as socket:

        def one_turn() -> str:
            socket.send(turn)
            while True:
                event = json.loads(socket.recv(timeout=20))
                if event["type"] in ("response.completed", "error"):
                    return str(event["type"])

        # gpt-5: $0.00495 a turn; the fifth passes the $0.02 ask level.
        assert [one_turn() for _ in range(5)] == ["response.completed"] * 5
        thread, outcome = in_thread(one_turn)
        (pending,) = open_asks(proxy)
        assert pending["session"] == "codex-ask"
        time.sleep(1)
        assert thread.is_alive(), outcome
        sent = [r for r in upstream.find() if r.method == "WS" and b"response.create" in r.body]
        assert len(sent) == 5  # the held turn has not reached the provider
        devmeter(proxy, "allow", "codex-ask")
        thread.join(10)
        assert outcome == ["response.completed"]


SWITCH_CONFIG = (
    CONFIG.format(timeout=30)
    + """
[routing]
mode = "shadow"

[[routing.rules]]
name = "opus-to-haiku"
provider = "anthropic"
model = "claude-opus-*"
to = "claude-haiku-5-5"
"""
)


def test_switch_routes_the_held_request_and_the_sessions_next_ones_to_the_cheaper_model(
    upstream: FakeUpstream, notifications: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(SWITCH_CONFIG)
    proxy = start_proxy(home, upstream.url)
    try:
        c = client(proxy, "switch-me")
        ask(c)
        ask(c)
        thread, outcome = in_thread(lambda: ask(c))
        (pending,) = open_asks(proxy)
        assert pending["switch_to"] == "claude-haiku-5-5"  # a rule allows it (shadow mode)
        (note,) = shown(notifications)
        assert any("Switch moves it to claude-haiku-5-5" in part for part in note)
        # What the notification's Switch button and the tray menu write:
        control.answer(proxy.home / "control.json", str(pending["id"]), "switch")
        thread.join(10)
        assert outcome == [None]
        ask(c)
        ask(client(proxy, "someone-else"))
        models = [json.loads(r.body)["model"] for r in upstream.find("anthropic.messages")][-4:]
        assert models == ["claude-opus-5-5", "claude-haiku-5-5", "claude-haiku-5-5",
                          "claude-opus-5-5"]  # fmt: skip
        rows = proxy.new_calls(5)
        assert [r["routing"] for r in rows[2:4]] == ["routed", "routed"]
        assert rows[4]["routing"] == "shadow"  # other sessions keep the configured mode
    finally:
        proxy.stop()


def test_cursors_streamed_request_waits_before_its_body_streams(tmp_path: Path) -> None:
    """Cursor streams its request body while the answer streams back: the ask holds it
    in the request-headers hook, before any of the body has gone upstream."""
    import http.server

    import httpx2

    from devmeter.providers import cursor
    from tests.test_proxy_cursor import PATH, REQUEST, RESPONSE, ConnectServer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ConnectServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[budgets.session]\nnotify_usd = []\nask_usd = [0.000001]\n"
        "[budgets.day]\nnotify_usd = []\nask_usd = []\n"
    )
    proxy = start_proxy(home, f"http://127.0.0.1:{server.server_address[1]}", hosts=(cursor.HOST,))
    ConnectServer.received.clear()

    def post() -> int:
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(REQUEST), 1000):
                yield REQUEST[i : i + 1000]

        with httpx2.Client(
            proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle)), timeout=30
        ) as client:
            answer = client.post(
                f"https://{cursor.HOST}{PATH}",
                content=chunks(),
                headers={"content-type": "application/connect+proto",
                         "connect-protocol-version": "1", "X-Devmeter-Session": "cursor-s"},
            )  # fmt: skip
            assert answer.content == RESPONSE
            return answer.status_code

    try:
        assert post() == 200  # its estimated cost passes the level
        thread, outcome = in_thread(post)
        (pending,) = open_asks(proxy)
        time.sleep(1)
        assert thread.is_alive() and ConnectServer.received == [REQUEST]
        control.answer(proxy.home / "control.json", str(pending["id"]), "continue")
        thread.join(10)
        assert outcome == [200] and ConnectServer.received == [REQUEST, REQUEST]
    finally:
        proxy.stop()
        server.shutdown()


def test_a_killed_proxys_held_requests_leave_no_ask_in_the_tray(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "asks.json").write_text('[{"id": "session:gone:25", "scope": "session"}]')
    proxy = start_proxy(home, upstream.url)
    try:
        assert read_pending(home / "asks.json") == []
    finally:
        proxy.stop()
