"""[notify] push: each target's real wire shape, posted to a local HTTP receiver, with
retries and back-off, a bounded queue, and secrets only from the environment."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmeter.alerts import Alert
from devmeter.config import parse
from devmeter.config_error import ConfigError
from devmeter.push import NotifyConfig, Pusher, Target, parse_notify

ALERT = Alert(
    1_795_000_000.0, "ask", "session", "0bcf16ce-aaaa", Decimal(25),
    "Session 0bcf16ce (claude-code in acme) passed $25.00. Its next request waits for you.",
    "claude-code", "/src/acme", "0bcf16ce-aaaa",
)  # fmt: skip


class Receiver:
    """A local HTTP server that records each POST and answers from a script of statuses."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answered in order; 200 once exhausted
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.posts.append((self.path, dict(self.headers.items()), body))
                status = received.statuses.pop(0) if received.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, count: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            assert time.monotonic() < deadline, self.posts
            time.sleep(0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def pusher(target: Target, environ: dict[str, str], **kw: object) -> Pusher:
    return Pusher(NotifyConfig((target,)), environ=environ, first_backoff=0.01, **kw)  # type: ignore[arg-type]


def test_ntfy_gets_the_message_with_title_and_urgent_priority(receiver: Receiver) -> None:
    env = {"TOPIC": "devmeter-secret-topic", "NTFY_TOKEN": "tk_123"}
    p = pusher(Target("ntfy", server=receiver.url, topic_env="TOPIC", token_env="NTFY_TOKEN"), env)
    p.send(ALERT)
    receiver.wait(1)
    path, headers, body = receiver.posts[0]
    assert path == "/devmeter-secret-topic"
    assert body.decode() == ALERT.message
    assert headers["Title"] == "devmeter asks: continue spending?"
    assert headers["Priority"] == "urgent" and headers["Authorization"] == "Bearer tk_123"
    p.close()


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("slack", lambda d: d["text"].startswith("*devmeter asks") and ALERT.message in d["text"]),
        ("discord", lambda d: ALERT.message in d["content"]),
        (
            "teams",
            lambda d: (
                d["type"] == "message"
                and d["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
                and d["attachments"][0]["content"]["body"][1]["text"] == ALERT.message
            ),
        ),
    ],
)
def test_chat_webhooks_get_their_own_json_shape(receiver: Receiver, kind: str, check) -> None:
    p = pusher(Target(kind, url_env="HOOK"), {"HOOK": f"{receiver.url}/services/T0/B0/xyz"})  # type: ignore[arg-type]
    p.send(ALERT)
    receiver.wait(1)
    path, headers, body = receiver.posts[0]
    assert path == "/services/T0/B0/xyz" and headers["Content-Type"] == "application/json"
    assert check(json.loads(body))
    p.close()


def test_the_generic_webhook_gets_the_alert_as_devmeter_alerts_json_names_it(
    receiver: Receiver,
) -> None:
    p = pusher(Target("webhook", url=f"{receiver.url}/hook"), {})
    p.send(ALERT)
    receiver.wait(1)
    sent = json.loads(receiver.posts[0][2])
    assert sent["kind"] == "ask" and sent["figure_usd"] == 25 and sent["key"] == "0bcf16ce-aaaa"
    assert sent["message"] == ALERT.message and sent["session"] == "0bcf16ce-aaaa"
    p.close()


def test_a_5xx_or_429_is_retried_with_back_off_and_a_4xx_is_not(receiver: Receiver) -> None:
    waits: list[float] = []
    receiver.statuses = [503, 429, 502]
    p = pusher(Target("webhook", url=receiver.url), {}, sleep=waits.append)
    p.send(ALERT)
    receiver.wait(4)
    assert waits == [0.01, 0.02, 0.04]  # doubled after each failure
    deadline = time.monotonic() + 5
    while p.delivered < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    receiver.statuses = [403]
    p.send(ALERT)
    receiver.wait(5)
    p.close()
    assert len(receiver.posts) == 5 and p.failed == 1  # one attempt: a retry would not help


def test_an_unreachable_target_gives_up_after_its_attempts(capsys) -> None:
    waits: list[float] = []
    p = pusher(Target("webhook", url="http://127.0.0.1:9/x"), {}, sleep=waits.append, attempts=3)
    p.send(ALERT)
    deadline = time.monotonic() + 5
    while not p.failed:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.close()
    assert len(waits) == 2
    assert "could not push to webhook" in capsys.readouterr().err


def test_the_queue_is_bounded_and_drops_the_oldest(receiver: Receiver, capsys) -> None:
    gate = threading.Event()
    delivered: list[str] = []

    def slow(post) -> None:  # the first delivery waits, so the queue fills up behind it
        gate.wait(5)
        delivered.append(json.loads(post.body)["message"])

    p = Pusher(
        NotifyConfig((Target("webhook", url=receiver.url),)), environ={}, deliver=slow, queue_size=3
    )
    for i in range(8):
        p.send(Alert(0, "threshold", "day", "d", Decimal(i), f"alert {i}"))
    time.sleep(0.1)
    gate.set()
    p.close()
    assert p.dropped >= 4 and delivered[-1] == "alert 7"
    assert len(delivered) <= 4
    assert "push queue full" in capsys.readouterr().err


def test_a_missing_secret_turns_that_target_off_once_and_never_logs_a_value(capsys) -> None:
    p = pusher(Target("slack", url_env="DEVMETER_SLACK_WEBHOOK"), {})
    p.send(ALERT)
    p.send(ALERT)
    p.close()
    err = capsys.readouterr().err
    assert err.count("[notify.slack] is off: the environment variable DEVMETER_SLACK_WEBHOOK") == 1


def test_only_the_kinds_asked_for_are_pushed(receiver: Receiver) -> None:
    p = Pusher(NotifyConfig((Target("webhook", url=receiver.url),), kinds=("blocked",)), environ={})
    p.send(ALERT)  # an ask
    p.send(Alert(0, "blocked", "session", "s", Decimal(1), "blocked"))
    receiver.wait(1)
    p.close()
    assert [json.loads(b)["kind"] for _, _, b in receiver.posts] == ["blocked"]


def test_config_names_env_vars_and_refuses_secrets_in_the_file() -> None:
    text = """
[notify]
kinds = ["ask", "blocked"]

[notify.ntfy]
topic_env = "DEVMETER_NTFY_TOPIC"

[notify.slack]
webhook_url_env = "DEVMETER_SLACK_WEBHOOK"
"""
    config = parse(text, Path("config.toml")).section("notify")
    assert [t.kind for t in config.targets] == ["ntfy", "slack"]
    assert config.targets[0].server == "https://ntfy.sh" and config.kinds == ("ask", "blocked")
    with pytest.raises(ConfigError) as caught:
        parse('[notify.slack]\nwebhook_url_env = "https://hooks.slack.com/x"\n', Path("c.toml"))
    assert caught.value.key == "notify.slack.webhook_url_env" and caught.value.line == 2
    assert "environment variable" in caught.value.message
    with pytest.raises(ConfigError, match="unknown key 'webhook_url'"):
        parse_notify({"discord": {"webhook_url": "https://discord.com/api/webhooks/1/x"}})
    with pytest.raises(ConfigError, match="topic_env"):
        parse_notify({"ntfy": {}})
    assert parse_notify({}).targets == ()


def test_secret_alerts_are_pushed_by_default_and_a_kinds_list_can_leave_them_out(
    receiver: Receiver,
) -> None:
    """A key that left the machine is worth a phone's attention: `secret` is among the
    default kinds (high priority on ntfy), and a user's `kinds` list that omits it wins."""
    secret = Alert(
        0, "secret", "session", "s1", Decimal(0),
        "stripe-key (sk_l…Zx9Q) in a tool result (.env) from claude-code (/src/acme, "
        "session s1) was sent", "claude-code", "/src/acme", "s1",
    )  # fmt: skip
    assert "secret" in parse_notify({}).kinds
    p = pusher(Target("ntfy", server=receiver.url, topic="t"), {})
    p.send(secret)
    receiver.wait(1)
    p.close()
    _, headers, body = receiver.posts[0]
    assert headers["Title"] == "devmeter: a secret in what an agent sent"
    assert headers["Priority"] == "high" and body.decode() == secret.message
    filtered = Pusher(
        NotifyConfig((Target("webhook", url=receiver.url),), kinds=("blocked",)), environ={}
    )
    filtered.send(secret)
    filtered.close()
    assert len(receiver.posts) == 1
    assert parse_notify({"kinds": ["secret"]}).kinds == ("secret",)
