"""Alerts away from the desk: `[notify]` pushes alerts and asks to a phone or a chat.

Targets: ntfy (a public or self-hosted server and a topic), Slack, Discord and Teams
incoming webhooks, and a generic JSON webhook. Secrets never go in config.toml: each
webhook URL, ntfy topic or token is read from the environment variable the config names
(`webhook_url_env = "DEVMETER_SLACK_WEBHOOK"`), so the file can be shared or committed.

`Pusher` delivers off the request path: `send` only puts the alert on a bounded queue
(when it is full the oldest alert is dropped, and the log says so); one thread posts
each alert to each target, retrying a network error, a 429 or a 5xx with exponential
back-off, and giving up (logged) on any other 4xx, which a retry would not fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from devmeter.alerts import Alert
from devmeter.config_error import ConfigError
from devmeter.config_values import config_table, reject_unknown, url_problem

log = logging.getLogger(__name__)

TargetKind = Literal["ntfy", "slack", "discord", "teams", "webhook"]
TARGET_KINDS: tuple[TargetKind, ...] = ("ntfy", "slack", "discord", "teams", "webhook")
# "secret": a key that left (or nearly left) the machine is what a phone should hear
# about; its message holds only the masked preview (devmeter/secrets/inspector.py).
ALERT_KINDS = ("ask", "blocked", "threshold", "projection", "loop", "long_running", "secret")
DEFAULT_NTFY_SERVER = "https://ntfy.sh"
QUEUE_SIZE = 100
ATTEMPTS = 5
FIRST_BACKOFF = 1.0  # seconds; doubled after each failed attempt
HTTP_TIMEOUT = 10.0

TITLES = {
    "ask": "devmeter asks: continue spending?",
    "blocked": "devmeter: requests blocked",
    "threshold": "devmeter: spend threshold passed",
    "projection": "devmeter: session burning fast",
    "loop": "devmeter: possible agent loop",
    "long_running": "devmeter: long unattended session",
    "secret": "devmeter: a secret in what an agent sent",
}
# ntfy priority: asks and refusals wait for an answer; a secret is worth a look now.
_NTFY_PRIORITY = {"ask": "urgent", "blocked": "urgent", "secret": "high"}
_NTFY_TAGS = {"urgent": "money_with_wings", "high": "key"}


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    url_env: str | None = None  # the webhook's URL (Slack, Discord, Teams, webhook)
    url: str | None = None  # the generic webhook's URL when it holds no secret
    server: str = DEFAULT_NTFY_SERVER  # ntfy
    topic_env: str | None = None  # ntfy
    topic: str | None = None  # ntfy, when the topic is no secret (a self-hosted server)
    token_env: str | None = None  # ntfy or webhook: sent as `Authorization: Bearer …`


@dataclass(frozen=True)
class NotifyConfig:
    targets: tuple[Target, ...] = ()
    kinds: tuple[str, ...] = ALERT_KINDS


# --- config --------------------------------------------------------------------------------

_TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "ntfy": ("server", "topic", "topic_env", "token_env"),
    "slack": ("webhook_url_env",),
    "discord": ("webhook_url_env",),
    "teams": ("webhook_url_env",),
    "webhook": ("url", "url_env", "token_env"),
}


def parse_notify(table: Mapping[str, object] | None) -> NotifyConfig:
    """The `[notify]` table -> NotifyConfig; ConfigError names the key to fix."""
    table = table or {}
    reject_unknown("notify", table, ("kinds", *TARGET_KINDS))
    kinds = ALERT_KINDS
    if "kinds" in table:
        raw = table["kinds"]
        if not isinstance(raw, list) or any(k not in ALERT_KINDS for k in raw):
            raise ConfigError(
                "notify.kinds", f"expected a list of alert kinds from {list(ALERT_KINDS)}"
            )
        kinds = tuple(str(k) for k in raw)
    targets = []
    for kind in TARGET_KINDS:
        if kind in table:
            targets.append(_target(kind, table[kind]))
    return NotifyConfig(tuple(targets), kinds)


def _target(kind: TargetKind, value: object) -> Target:
    prefix = f"notify.{kind}"
    value = config_table(prefix, value)
    reject_unknown(prefix, value, _TARGET_KEYS[kind])
    text = {name: _text(f"{prefix}.{name}", v) for name, v in value.items()}
    for name in ("webhook_url_env", "url_env", "topic_env", "token_env"):
        if name in text and not text[name].replace("_", "").isalnum():
            raise ConfigError(
                f"{prefix}.{name}",
                f"names an environment variable (like DEVMETER_SLACK_WEBHOOK), got "
                f"{text[name]!r}; put the secret itself in the environment, not here",
            )
    if kind == "ntfy":
        if ("topic" in text) == ("topic_env" in text):
            raise ConfigError(
                f"{prefix}.topic_env",
                "set one of topic_env (the environment variable holding the topic: on a "
                "public server the topic is the secret) or topic",
            )
        server = text.get("server", DEFAULT_NTFY_SERVER).rstrip("/")
        _url(f"{prefix}.server", server)
        return Target(
            kind,
            server=server,
            topic=text.get("topic"),
            topic_env=text.get("topic_env"),
            token_env=text.get("token_env"),
        )
    if kind == "webhook":
        if ("url" in text) == ("url_env" in text):
            raise ConfigError(
                f"{prefix}.url_env", "set one of url_env (an environment variable) or url"
            )
        if "url" in text:
            _url(f"{prefix}.url", text["url"])
        return Target(
            kind, url=text.get("url"), url_env=text.get("url_env"), token_env=text.get("token_env")
        )
    if "webhook_url_env" not in text:
        raise ConfigError(
            f"{prefix}.webhook_url_env",
            f"name the environment variable that holds the {kind} webhook URL, e.g. "
            f'webhook_url_env = "DEVMETER_{kind.upper()}_WEBHOOK"',
        )
    return Target(kind, url_env=text["webhook_url_env"])


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _url(key: str, value: str) -> None:
    problem = url_problem(value)
    if problem is not None:
        raise ConfigError(key, f"expected an http:// or https:// URL; {value!r} {problem}")


# --- what each target is sent --------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    url: str
    body: bytes
    headers: Mapping[str, str]


def build_post(target: Target, alert: Alert, environ: Mapping[str, str]) -> Post:
    """The HTTP POST for one alert to one target. Raises LookupError when the environment
    variable the config names is not set."""
    title = TITLES.get(alert.kind, "devmeter alert")
    token = _env(environ, target.token_env) if target.token_env else None
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    if target.kind == "ntfy":
        topic = target.topic or _env(environ, target.topic_env)
        priority = _NTFY_PRIORITY.get(alert.kind, "default")
        tags = _NTFY_TAGS.get(priority, "chart_with_upwards_trend")
        return Post(
            f"{target.server}/{topic}",
            alert.message.encode(),
            {
                "Title": title,
                "Priority": priority,
                "Tags": tags,
                **auth,
            },
        )
    if target.kind == "webhook":
        url = target.url or _env(environ, target.url_env)
        return _json(url, {"title": title, **alert_json(alert)}, auth)
    url = _env(environ, target.url_env)
    if target.kind == "slack":
        return _json(url, {"text": f"*{title}*\n{alert.message}"})
    if target.kind == "discord":
        return _json(url, {"content": f"**{title}**\n{alert.message}"[:2000]})
    # Teams: a Workflows webhook takes a message with an Adaptive Card attached.
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": title, "weight": "Bolder", "wrap": True},
            {"type": "TextBlock", "text": alert.message, "wrap": True},
        ],
    }
    attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
    return _json(url, {"type": "message", "attachments": [attachment]})


def alert_json(alert: Alert) -> dict[str, Any]:
    """An alert as `devmeter alerts --json` names its fields."""
    return {
        "ts": alert.ts,
        "kind": alert.kind,
        "scope": alert.scope,
        "key": alert.key,
        "figure_usd": float(alert.figure_usd),
        "message": alert.message,
        "tool": alert.tool,
        "repo": alert.repo,
        "session": alert.session,
    }


def _json(url: str, payload: object, headers: Mapping[str, str] | None = None) -> Post:
    return Post(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def _env(environ: Mapping[str, str], name: str | None) -> str:
    value = environ.get(name or "", "")
    if not value:
        raise LookupError(f"the environment variable {name} is not set")
    return value


# --- delivery ------------------------------------------------------------------------------


class Retry(Exception):
    """A failure worth another attempt (network, 429, 5xx)."""


def post(request: Post) -> None:
    """POST it; raises Retry for what a later attempt may fix, other errors for the rest."""
    req = urllib.request.Request(
        request.url, data=request.body, headers=dict(request.headers), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as answer:  # noqa: S310
            answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise Retry(f"HTTP {exc.code}") from exc
        raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Retry(str(getattr(exc, "reason", exc))) from exc


class Pusher:
    """One thread, a bounded queue, retries with back-off. `send` never blocks."""

    def __init__(
        self,
        config: NotifyConfig,
        *,
        environ: Mapping[str, str] | None = None,
        deliver: Callable[[Post], None] = post,
        sleep: Callable[[float], object] = time.sleep,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        first_backoff: float = FIRST_BACKOFF,
    ) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        self._deliver = deliver
        self._sleep = sleep
        self.attempts = attempts
        self.first_backoff = first_backoff
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._warned: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="devmeter-push", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        if alert.kind not in self.config.kinds:
            return
        while True:
            try:
                self._queue.put_nowait(alert)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # the oldest goes: the newest says more
                    self.dropped += 1
                    log.warning(
                        "devmeter: push queue full; dropped the oldest alert (%d)", self.dropped
                    )
                except queue.Empty:
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            for target in self.config.targets:
                self._push(target, alert)

    def _push(self, target: Target, alert: Alert) -> None:
        try:
            request = build_post(target, alert, self.environ)
        except LookupError as exc:
            if target.kind not in self._warned:  # once per target, not per alert
                self._warned.add(target.kind)
                log.warning("devmeter: [notify.%s] is off: %s", target.kind, exc)
            return
        backoff = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            try:
                self._deliver(request)
                self.delivered += 1
                return
            except Retry as exc:
                if attempt == self.attempts or self._stop.is_set():
                    self.failed += 1
                    log.warning("devmeter: could not push to %s (%s); gave up", target.kind, exc)
                    return
                self._sleep(backoff)
                backoff *= 2
            except Exception as exc:  # a 4xx: the URL or token is wrong; retrying won't help
                self.failed += 1
                where = f"[notify.{target.kind}]"
                log.warning(
                    "devmeter: %s refused the alert (%s); check %s", target.kind, exc, where
                )
                return
