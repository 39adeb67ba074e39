"""The proxy's eye on quota and billing: turns each call's billing and quota reading into
snapshots for the ledger and into alerts (same pipeline as the budget alerts).

Alerts, each once:
- `quota`: a window passes a threshold (default 80% and 95%, `[quota] thresholds`), or
  its pace projects it full before it resets (`quota_pace`), or the provider rejects
  (`quota_rejected`); once per window and reset.
- `billing_switch`: the first `api`-billed call from a tool and repo that was on a
  subscription in the last `[quota] billing_switch_days` (default 7). Its text shows the
  key's last four characters, which never reach the ledger otherwise.
- `overage`: the first `overage` call of a window.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from devmeter.alerts import Alert, AlertKind
from devmeter.billing import API, OVERAGE, SUBSCRIPTION, Billing
from devmeter.config_error import ConfigError
from devmeter.config_values import reject_unknown
from devmeter.providers.quota_headers import QuotaReading
from devmeter.quota import DEFAULT_THRESHOLDS, Snapshot, iso, pace, same_window
from devmeter.usage import Call

DAY = 86400.0
_READINGS_KEPT = 64  # per window, in memory, for pace


@dataclass(frozen=True)
class QuotaConfig:
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    billing_switch_days: float = 7.0


def parse_quota(table: Mapping[str, object] | None) -> QuotaConfig:
    table = table or {}
    reject_unknown("quota", table, ("thresholds", "billing_switch_days"))
    thresholds = table.get("thresholds", list(DEFAULT_THRESHOLDS))
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1 for t in thresholds
    ):
        raise ConfigError(
            "quota.thresholds", "must be a list of fractions from 0 to 1, e.g. [0.8, 0.95]"
        )
    days = table.get("billing_switch_days", 7)
    if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
        raise ConfigError("quota.billing_switch_days", "must be a number of days, e.g. 7")
    return QuotaConfig(tuple(sorted(float(t) for t in thresholds)), float(days))


_TOOL_NAMES = {"claude-code": "Claude Code", "codex-cli": "Codex CLI", "gemini-cli": "Gemini CLI"}
_KEY_VARIABLES = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "google": "GEMINI_API_KEY",
}


class QuotaWatch:
    def __init__(self, config: QuotaConfig | None = None) -> None:
        self._config = config or QuotaConfig()
        self._latest: dict[tuple[str, str, str], Snapshot] = {}
        self._readings: dict[tuple[str, str, str], list[Snapshot]] = {}
        self._fired: set[tuple[Any, ...]] = set()
        # (tool, repo) -> when it last made a subscription call.
        self._on_subscription: dict[tuple[str, str | None], float] = {}

    def reconfigure(self, config: QuotaConfig) -> None:
        """A reloaded `[quota]`: its thresholds apply from the next snapshot on. Alerts
        already raised stay raised (each is keyed by its own threshold), so a new level
        below the current use alerts once, with the next answer."""
        self._config = config

    def seed_from_ledger(self, conn: sqlite3.Connection, now: float) -> None:
        """Subscription use in the last days, and the latest windows, from the ledger."""
        since = now - self._config.billing_switch_days * DAY
        for tool, repo, ts in conn.execute(
            "SELECT tool, repo, max(ts) FROM calls WHERE billing IN (?, ?) AND ts >= ? "
            "GROUP BY tool, repo",
            (SUBSCRIPTION, OVERAGE, since),
        ):
            self._on_subscription[(tool, repo)] = ts
        for row in conn.execute(
            "SELECT ts, provider, account, window, utilization, resets_at, status FROM quota"
        ):
            snap = Snapshot(*row)
            self._latest[snap.key] = snap

    def observe(
        self, call: Call, billing: Billing, reading: QuotaReading | None
    ) -> tuple[list[tuple[Snapshot, bool]], list[Alert]]:
        """The snapshots to keep (each with whether it moved) and the alerts to raise."""
        alerts: list[Alert] = []
        key = (call.attribution.tool, call.attribution.repo)
        if call.billing == API and billing.key_tail is not None:
            last = self._on_subscription.pop(key, None)
            if last is not None and call.ts - last <= self._config.billing_switch_days * DAY:
                alerts.append(self._switch_alert(call, billing.key_tail))
        elif call.billing in (SUBSCRIPTION, OVERAGE):
            self._on_subscription[key] = call.ts
        snaps: list[tuple[Snapshot, bool]] = []
        if reading is None or not call.account:
            return snaps, alerts
        for window in reading.windows:
            snap = Snapshot(
                ts=call.ts,
                provider=call.provider,
                account=call.account,
                window=window.window,
                utilization=window.utilization,
                resets_at=window.resets_at,
                status=window.status,
                session=call.attribution.session,
                repo=call.attribution.repo,
            )
            before = self._latest.get(snap.key)
            moved = before is None or (
                before.utilization != snap.utilization or not same_window(before, snap)
            )
            self._latest[snap.key] = snap
            if moved:
                kept = self._readings.setdefault(snap.key, [])
                kept.append(snap)
                del kept[:-_READINGS_KEPT]
            snaps.append((snap, moved))
            alerts.extend(self._window_alerts(call, snap, before))
        if call.billing == OVERAGE:
            resets = next((w.resets_at for w in reading.windows if w.window == "overage"), None)
            alerts.extend(self._once(call, "overage", f"{call.account}:{resets}", (
                f"{_tool(call)} is now billed as extra usage (overage) on {call.provider}: "
                "the subscription window is spent and these calls are charged at API rates"
            )))  # fmt: skip
        return snaps, alerts

    def _switch_alert(self, call: Call, tail: str) -> Alert:
        variable = _KEY_VARIABLES.get(call.provider, "the API key variable")
        where = f" in {_repo_name(call.attribution.repo)}" if call.attribution.repo else ""
        return Alert(
            ts=call.ts,
            kind="billing_switch",
            scope="repo" if call.attribution.repo else "tool",
            key=call.attribution.repo or call.attribution.tool,
            figure_usd=Decimal(0),
            message=(
                f"{_tool(call)}{where} is now billed to an API key: {tail} — unset {variable} "
                "to go back to your subscription"
            ),
            tool=call.attribution.tool,
            repo=call.attribution.repo,
            session=call.attribution.session,
        )

    def _window_alerts(self, call: Call, snap: Snapshot, before: Snapshot | None) -> list[Alert]:
        alerts: list[Alert] = []
        period = f"{snap.account}:{snap.window}:{round(snap.resets_at or 0, -2)}"
        label = f"{snap.provider} {snap.window} window"
        resets = f", resets {iso(snap.resets_at)}" if snap.resets_at else ""
        if snap.status == "rejected":
            alerts += self._once(call, "quota_rejected", period, (
                f"{label} is exhausted: the provider rejects calls{resets}"
            ))  # fmt: skip
        util = snap.utilization
        if util is not None:
            for threshold in self._config.thresholds:
                if util >= threshold:
                    alerts += self._once(call, "quota", f"{period}:{threshold}", (
                        f"{label} passed {threshold:.0%} (at {util:.0%}){resets}"
                    ))  # fmt: skip
            found = pace(self._readings.get(snap.key, []))
            if found is not None and found.before_reset and found.full_at is not None:
                minutes = int(((snap.resets_at or found.full_at) - found.full_at) / 60)
                full = datetime.fromtimestamp(found.full_at).strftime("%H:%M")
                alerts += self._once(call, "quota_pace", period, (
                    f"{label} full at {full} at this pace, {minutes} min before it resets"
                ))  # fmt: skip
        return alerts

    def _once(self, call: Call, kind: AlertKind, key: str, message: str) -> list[Alert]:
        if (kind, key) in self._fired:
            return []
        self._fired.add((kind, key))
        return [
            Alert(
                ts=call.ts,
                kind=kind,
                scope="account",
                key=key,
                figure_usd=Decimal(0),
                message=message,
                tool=call.attribution.tool,
                repo=call.attribution.repo,
                session=call.attribution.session,
            )
        ]

    def latest(self) -> Sequence[Snapshot]:
        return list(self._latest.values())


def _tool(call: Call) -> str:
    return _TOOL_NAMES.get(call.attribution.tool, call.attribution.tool)


def _repo_name(repo: str) -> str:
    return repo.rstrip("/").rsplit("/", 1)[-1] or repo
