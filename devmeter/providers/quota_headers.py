"""Quota windows from a response's headers, or from Codex's rate-limits event (pure).

Three families:

- Anthropic subscriptions: `anthropic-ratelimit-unified-*`. Parsed as a family, since
  its names have changed before: any `…-<window>-utilization` / `-reset` / `-status`
  names a window (`5h`, `7d`, `7d_opus`, `overage`, whatever comes next), and the bare
  `-status`, `-reset`, `-representative-claim`, `-overage-status` say how the call
  stands overall.
- Codex with a ChatGPT login: `x-codex-primary-*` / `x-codex-secondary-*` (percent used,
  window minutes, reset time or seconds), `x-codex-plan-type`; the same figures come as
  a `codex.rate_limits` event on its WebSocket and SSE streams.
- API keys: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI and most
  compatibles) and `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*`.

A value that is not what the family promises is ignored and named in `notes`; nothing
here raises on what a server sends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

UNIFIED = "anthropic-ratelimit-unified-"
_UNIFIED_FIELDS = ("utilization", "reset", "status", "surpassed-threshold")
_CODEX = re.compile(r"^x-codex-(primary|secondary)-(used-percent|window-minutes|reset-at|"
                    r"reset-after-seconds)$")  # fmt: skip
_STANDARD = re.compile(r"^x-ratelimit-(limit|remaining|reset)-(requests|tokens)$")
_ANTHROPIC_API = re.compile(
    r"^anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)$"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
STATUSES = ("allowed", "allowed_warning", "rejected")
_MAX_UTILIZATION = 10.0  # a fraction far above 1 is not a utilization


@dataclass(frozen=True)
class Window:
    """One quota window as the provider reported it on one answer."""

    window: str  # 5h, 7d, overage, requests, tokens, ...
    utilization: float | None  # 0..1 (may pass 1 when over)
    resets_at: float | None  # unix seconds
    status: str | None  # allowed / allowed_warning / rejected, when said


@dataclass(frozen=True)
class QuotaReading:
    """What one answer said about its account's quota."""

    windows: tuple[Window, ...] = ()
    status: str | None = None  # the overall status (unified `-status`)
    claim: str | None = None  # the window that binds now (unified representative claim)
    overage: bool = False  # the call was billed as extra usage
    plan: str | None = None  # Codex's plan type
    notes: tuple[str, ...] = field(default_factory=tuple)  # values ignored, and why


def window_name(minutes: float) -> str:
    """300 -> "5h", 10080 -> "7d", 90 -> "90m"."""
    whole = int(minutes)
    if whole > 0 and whole % 1440 == 0:
        return f"{whole // 1440}d"
    if whole > 0 and whole % 60 == 0:
        return f"{whole // 60}h"
    return f"{whole}m"


def may_hold_quota(headers: Mapping[str, str]) -> bool:
    """Whether any header name is of a family `from_headers` reads (lower-case names): an
    answer with none needs no reading built (~5 us a call on the proxy's loop)."""
    return any("ratelimit" in name or name.startswith("x-codex-") for name in headers)


def from_headers(headers: Mapping[str, str], now: float) -> QuotaReading:
    """Every quota window in a response's headers (names lower-case)."""
    notes: list[str] = []
    unified: dict[str, dict[str, str]] = {}
    codex: dict[str, dict[str, str]] = {}
    standard: dict[str, dict[str, str]] = {}
    for name, value in headers.items():
        if name.startswith(UNIFIED):
            rest = name[len(UNIFIED) :]
            for suffix in _UNIFIED_FIELDS:
                if rest == suffix:
                    unified.setdefault("", {})[suffix] = value
                    break
                if rest.endswith("-" + suffix):
                    unified.setdefault(rest[: -len(suffix) - 1], {})[suffix] = value
                    break
            else:
                unified.setdefault("", {})[rest] = value
        elif name.startswith("x-codex-"):
            if m := _CODEX.match(name):
                codex.setdefault(m.group(1), {})[m.group(2)] = value
        elif "ratelimit" not in name:
            continue  # most headers: one substring test, no regex (this runs on every call)
        elif m := _STANDARD.match(name):
            standard.setdefault(m.group(2), {})[m.group(1)] = value
        elif m := _ANTHROPIC_API.match(name):
            standard.setdefault(m.group(1), {})[m.group(2)] = value
    windows: list[Window] = []
    overall = unified.pop("", {})
    status = _status(overall.get("status"), "unified status", notes)
    for name, fields in sorted(unified.items()):
        utilization = _fraction(fields.get("utilization"), f"{name} utilization", notes)
        resets_at = _epoch(fields.get("reset"), f"{name} reset", notes)
        if utilization is None and resets_at is None:
            continue  # e.g. overage-status alone: a state, not a window
        window_status = _status(fields.get("status"), f"{name} status", notes)
        windows.append(Window(name, utilization, resets_at, window_status or status))
    overage_status = _status(unified.get("overage", {}).get("status"), "overage status", notes)
    in_use = overall.get("overage-in-use", "").strip().lower() == "true"
    overage = in_use or (status == "rejected" and overage_status in ("allowed", "allowed_warning"))
    for slot in ("primary", "secondary"):
        if slot in codex:
            found = _codex_window(codex[slot], now, slot, notes)
            if found is not None:
                windows.append(found)
    for kind, fields in sorted(standard.items()):
        found = _standard_window(kind, fields, now, notes)
        if found is not None:
            windows.append(found)
    claim = overall.get("representative-claim")
    plan = headers.get("x-codex-plan-type")
    return QuotaReading(tuple(windows), status, claim, overage, plan, tuple(notes))


def from_codex_event(event: Mapping[str, Any], now: float) -> QuotaReading | None:
    """Codex's rate-limits event (`{"type": "codex.rate_limits", "plan_type": …,
    "rate_limits": {"primary": {"used_percent", "window_minutes", "reset_at" |
    "reset_after_seconds"}, "secondary": …}}`); None for any other event."""
    if not isinstance(event, Mapping) or event.get("type") != "codex.rate_limits":
        return None
    notes: list[str] = []
    limits = event.get("rate_limits")
    if not isinstance(limits, Mapping):
        limits = event  # some versions put the windows at the top level
    windows: list[Window] = []
    for slot in ("primary", "secondary"):
        raw = limits.get(slot)
        if not isinstance(raw, Mapping):
            continue
        fields = {
            "used-percent": raw.get("used_percent"),
            "window-minutes": raw.get("window_minutes"),
            "reset-at": raw.get("reset_at", raw.get("resets_at")),
            "reset-after-seconds": raw.get("reset_after_seconds", raw.get("resets_in_seconds")),
        }
        found = _codex_window(
            {k: str(v) for k, v in fields.items() if v is not None}, now, slot, notes
        )
        if found is not None:
            windows.append(found)
    plan = event.get("plan_type")
    return QuotaReading(
        tuple(windows), plan=plan if isinstance(plan, str) else None, notes=tuple(notes)
    )


def _codex_window(
    fields: Mapping[str, str], now: float, slot: str, notes: list[str]
) -> Window | None:
    percent = _number(fields.get("used-percent"), f"codex {slot} used percent", notes)
    minutes = _number(fields.get("window-minutes"), f"codex {slot} window minutes", notes)
    resets_at = _epoch(fields.get("reset-at"), f"codex {slot} reset", notes)
    if resets_at is None:
        after = _number(fields.get("reset-after-seconds"), f"codex {slot} reset after", notes)
        resets_at = now + after if after is not None and after >= 0 else None
    if percent is None and resets_at is None:
        return None
    if percent is not None and not 0 <= percent <= _MAX_UTILIZATION * 100:
        notes.append(f"codex {slot} used percent {percent!r} out of range: ignored")
        percent = None
    name = window_name(minutes) if minutes is not None and minutes > 0 else slot
    utilization = None if percent is None else percent / 100
    status = None if utilization is None else ("rejected" if utilization >= 1 else "allowed")
    return Window(name, utilization, resets_at, status)


def _standard_window(
    kind: str, fields: Mapping[str, str], now: float, notes: list[str]
) -> Window | None:
    limit = _number(fields.get("limit"), f"{kind} limit", notes)
    remaining = _number(fields.get("remaining"), f"{kind} remaining", notes)
    utilization = None
    if limit is not None and remaining is not None and limit > 0:
        utilization = min(max(1 - remaining / limit, 0.0), 1.0)
    resets_at = _reset_time(fields.get("reset"), now, f"{kind} reset", notes)
    if utilization is None and resets_at is None:
        return None
    status = None
    if remaining is not None:
        status = "rejected" if remaining <= 0 else "allowed"
    return Window(kind, utilization, resets_at, status)


def _number(value: str | None, what: str, notes: list[str]) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        notes.append(f"{what} {value[:40]!r} is not a number: ignored")
        return None
    if not math.isfinite(number):
        notes.append(f"{what} {value[:40]!r} is not a number: ignored")
        return None
    return number


def _fraction(value: str | None, what: str, notes: list[str]) -> float | None:
    number = _number(value, what, notes)
    if number is not None and not 0 <= number <= _MAX_UTILIZATION:
        notes.append(f"{what} {number!r} out of range: ignored")
        return None
    return number


def _epoch(value: str | None, what: str, notes: list[str]) -> float | None:
    """Unix seconds, or an ISO 8601 time (Anthropic's API-key headers use RFC 3339)."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            notes.append(f"{what} {text[:40]!r} is not a time: ignored")
            return None
    if not math.isfinite(number) or number <= 0 or number > 1e11:
        notes.append(f"{what} {text[:40]!r} is not a time: ignored")
        return None
    return number


def _reset_time(value: str | None, now: float, what: str, notes: list[str]) -> float | None:
    """OpenAI's durations (`6m0s`, `1s`, `20ms`) or a time (`_epoch`)."""
    if value is None:
        return None
    text = value.strip()
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
        return now + sum(float(n) * scale[u] for n, u in parts)
    return _epoch(text, what, notes)


def _status(value: str | None, what: str, notes: list[str]) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if text in STATUSES:
        return text
    notes.append(f"{what} {value[:40]!r} unknown: ignored")
    return None


_EVENT_MARK = b"codex.rate_limits"
_CARRY_LIMIT = 64 * 1024  # an event line longer than this is not a rate-limits event


class RateLimitEvents:
    """Finds Codex's rate-limits events in a stream as it goes by: SSE `data:` lines fed
    chunk by chunk (`feed`), or whole WebSocket messages (`feed_message`). Only lines
    naming the event are decoded, so the rest of the stream costs one byte search."""

    def __init__(self, now: float) -> None:
        self._now = now
        self._carry = b""
        self.readings: list[QuotaReading] = []

    def feed(self, data: bytes) -> None:
        text = self._carry + data if self._carry else data
        end = text.rfind(b"\n") + 1
        if text.find(_EVENT_MARK, 0, end) >= 0:
            for line in text[:end].split(b"\n"):
                if _EVENT_MARK in line and line.startswith(b"data:"):
                    self._take(line[5:])
        carry = text[end:]
        self._carry = carry if len(carry) <= _CARRY_LIMIT else b""

    def feed_message(self, message: bytes | str) -> None:
        raw = message.encode() if isinstance(message, str) else message
        if _EVENT_MARK in raw:
            self._take(raw)

    def _take(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            self.readings.append(QuotaReading(notes=("codex rate-limits event unreadable",)))
            return
        found = from_codex_event(event, self._now) if isinstance(event, dict) else None
        if found is not None:
            self.readings.append(found)
