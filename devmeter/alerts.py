"""The records alerts and refusals travel as: an `Alert` (something to hear about now,
also a ledger row), a `Block` (why a request is refused) and the `Refusal` the proxy
answers with; and `fit`, which keeps a message within a notification's size.

Base layer: imports nothing of the project. Raised by budget.py, runaway.py,
quota_watch.py and secrets/inspector.py; written by ledger.py; shown by the tray and
alert_delivery.py.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Refusal:
    """A refused request's answer: HTTP status, headers and body, and the event that
    refuses one turn on an open WebSocket (Codex's Responses socket). Built in the
    call's wire format by `providers.refusal.refusal`."""

    status: int
    headers: dict[str, str]
    body: bytes
    websocket_event: dict[str, Any]
