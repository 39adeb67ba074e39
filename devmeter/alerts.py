"""The records alerts and refusals travel as: an `Alert` (something to hear about now,
also a ledger row), a `Block` (why a request is refused) and the `Refusal` the proxy
answers with; and `fit`, which keeps a message within a notification's size.

Base layer: imports nothing of the project. Raised by budget.py, runaway.py,
quota_watch.py and secrets/inspector.py; written by ledger.py; shown by the tray and
alert_delivery.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

AlertKind = Literal[
    "threshold", "projection", "loop", "long_running", "blocked", "ask",
    # devmeter/quota_watch.py
    "billing_switch", "quota", "quota_pace", "quota_rejected", "overage",
    "secret",  # devmeter/secrets/inspector.py
]  # fmt: skip

# A desktop notification shows at most this much (Windows balloons cut at 256 characters).
MESSAGE_MAX = 255


def fit(text: str, action: str, limit: int = MESSAGE_MAX) -> str:
    """`text`, then `action`, in at most `limit` characters: `text` is shortened (with an
    ellipsis) so that the action, the part the user must be able to copy, is never cut."""
    joined = f"{text} {action}" if action else text
    if len(joined) <= limit:
        return joined
    room = max(limit - len(action) - 2, 0)
    return f"{text[:room].rstrip()}\u2026 {action}"


@dataclass(frozen=True)
class Alert:
    """Something a developer should hear about now. Also a ledger row.

    `figure_usd` is the level the alert is about (the threshold crossed, the cap hit,
    the hourly burn level passed; for loops and unattended sessions, what they cost),
    so `(kind, scope, key, figure_usd)` identifies one alert for de-duplication.
    """

    ts: float
    kind: AlertKind
    scope: str
    key: str
    figure_usd: Decimal
    message: str
    tool: str | None = None
    repo: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Block:
    """Why a request is refused before it reaches the provider."""

    scope: str  # a Scope, "pause", "stop" (`devmeter stop`) or "secret"
    key: str
    cap_usd: Decimal | None  # None for a pause
    spent_usd: Decimal | None
    message: str  # starts with "devmeter:", names the cap and how to lift it
    # "cap" (a block_usd cap), "ask" (Stop chosen, or no answer, at an ask level: cap_usd
    # is that level), or "other" (a pause, a stop, a secret).
    reason: str = "cap"

    def ledger_fields(self) -> dict[str, Any]:
        """What the refused call's ledger row keeps of this block, as data (`Call`'s
        refused_* fields): its scope and key, and the cap when a hard cap refused."""
        cap = self.cap_usd if self.reason == "cap" else None
        return {"refused_scope": self.scope, "refused_key": self.key, "refused_cap_usd": cap}

    def error_response(self, endpoint: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body shaped like the provider's own errors for `endpoint`.

        403, not 429: clients retry a 429 (Claude Code does, for minutes), and a cap
        will not lift by itself; a 403 shows the message at once and is not retried.
        (What the proxy answers is `refusal`, per client.)
        """
        status = 403
        if endpoint.startswith("anthropic"):
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "permission_error", "message": self.message},
            }
        elif endpoint.startswith("gemini") or endpoint.startswith("google"):
            body = {
                "error": {"code": status, "message": self.message, "status": "PERMISSION_DENIED"}
            }
        else:  # OpenAI chat / responses and every OpenAI-compatible API
            body = {
                "error": {
                    "message": self.message,
                    "type": "devmeter_budget_exceeded",
                    "param": None,
                    "code": "devmeter_blocked",
                }
            }
        return status, body

    def refusal(self, endpoint: str, tool: str | None) -> Refusal:
        """What the proxy answers instead of the provider, chosen per client so that each
        shows the message as it is and does not retry (found by trying the real clients,
        see tests/test_e2e_refusals.py):

        - Anthropic (Claude Code, the SDKs): 402 `billing_error`. Claude Code prints "API
          Error: 402 devmeter: ..." and stops; on a 403 it prints "Failed to authenticate".
        - Codex CLI: 400 with the message as plain text. Codex retries any other status
          (11 attempts for a 403) and prints a 400's body verbatim; on its WebSocket, an
          `error` event with status 400 (it prints that event's JSON, and does not retry).
        - Gemini CLI (API key and Google login) and the Gemini SDKs: 403
          `PERMISSION_DENIED` in Google's shape. The CLI prints the body as it is and
          retries none of 400, 402 and 403 (a 429 it retries, 5 times over ~70 s); a
          refused router call makes it fall back to its default model, whose turn is
          refused once too.
        - OpenAI-compatible SDKs: 403 in the provider's shape (not retried).
        """
        headers = {"content-type": "application/json", "x-should-retry": "false"}
        if endpoint.startswith("anthropic"):
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "billing_error", "message": self.message},
            }
            return Refusal(402, headers, json.dumps(body).encode(), body)
        status, body = self.error_response(endpoint)
        if tool == "codex" and endpoint.startswith("openai"):
            # Codex prints this event's text as it is: the message first, then the rest.
            event = {
                "type": "error",
                "status": 400,
                "error": {
                    "message": self.message,
                    "type": "invalid_request_error",
                    "code": "devmeter_blocked",
                },
            }
            plain = {"content-type": "text/plain; charset=utf-8", "x-should-retry": "false"}
            return Refusal(400, plain, self.message.encode(), event)
        event = {"type": "error", "status": status, **body}
        return Refusal(status, headers, json.dumps(body).encode(), event)


@dataclass(frozen=True)
class Refusal:
    """A refused request's answer: HTTP status, headers and body, and the event that
    refuses one turn on an open WebSocket (Codex's Responses socket)."""

    status: int
    headers: dict[str, str]
    body: bytes
    websocket_event: dict[str, Any]
