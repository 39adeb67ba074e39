"""Seed a DEVMETER_HOME with a plausible day of calls, for tray screenshots and tests.

    DEVMETER_HOME=/tmp/dm python scripts/seed_tray_ledger.py [normal|warning|blocked]

Three live sessions in two repos (and one SDK script with no repo), $42.17 today and
$310.55 this month; `warning` adds an alert today, `blocked` a call refused by a cap.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from decimal import Decimal

from devmeter.alerts import Alert
from devmeter.budget import Budgets, BudgetTracker, ScopeBudget
from devmeter.ledger import INSERT_ALERT, alert_row, connect, write_calls
from devmeter.paths import paths
from devmeter.usage import Attribution, Call, Usage

D = Decimal


def call(ts: float, cost: str, session: str, repo: str | None, tool: str, **kw: object) -> Call:
    return Call(
        ts=ts,
        provider="anthropic" if tool == "claude-code" else "openai",
        endpoint="anthropic.messages" if tool == "claude-code" else "openai.responses",
        host="api.anthropic.com" if tool == "claude-code" else "api.openai.com",
        requested_model="claude-sonnet-4-5" if tool == "claude-code" else "gpt-5",
        model="claude-sonnet-4-5" if tool == "claude-code" else "gpt-5",
        attribution=Attribution(tool=tool, session=session, repo=repo),
        usage=Usage(input_tokens=1200, cache_read_tokens=30000, output_tokens=800),
        cost_usd=D(cost),
        price_source="seed",
        status=kw.pop("status", 200),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def seed(state: str = "normal", now: float | None = None) -> None:
    now = time.time() if now is None else now
    where = paths()
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    # Earlier this month: the 1st at 10:00 (on the 1st itself, that is today).
    earlier = midnight.replace(day=1, hour=10).timestamp() if midnight.day > 1 else now - 7200
    today = max(midnight.timestamp() + 1, now - 3 * 3600)
    acme, web = "/home/dev/src/acme-api", "/home/dev/src/web"
    calls = [
        # earlier this month: $268.38
        call(earlier, "268.38", "b7e2c1d0-1111-4a5b", acme, "claude-code"),
        # today: $42.17 over four sessions
        call(today, "4.20", "0d9a55e3-2222-4c6d", web, "codex"),
        call(now - 420, "2.10", "01a20804-def5-7ef0", web, "codex"),
        call(now - 1800, "21.30", "c94186ab-2b3f-417d", acme, "claude-code"),
        call(now - 40, "14.52", "c94186ab-2b3f-417d", acme, "claude-code"),
        call(now - 90, "0.05", "s-script", None, "python-sdk"),
    ]
    if state == "blocked":
        tracker = BudgetTracker(Budgets(session=ScopeBudget(block_usd=D(30))))
        tracker.seed({("session", "c94186ab-2b3f-417d"): D("35.82")}, now)
        block = tracker.check(
            Attribution(tool="claude-code", session="c94186ab-2b3f-417d", repo=acme), now
        )
        assert block is not None
        calls.append(
            call(
                now - 5,
                "0",
                "c94186ab-2b3f-417d",
                acme,
                "claude-code",
                status=403,
                error=block.message,
            )  # fmt: skip
        )
    write_calls(where.ledger, calls)
    if state == "warning":
        conn = connect(where.ledger)
        alert = Alert(
            now - 60, "threshold", "session", "c94186ab-2b3f-417d", D(20),
            "Session c94186ab (claude-code in acme-api) passed $20.00: $35.82 spent.",
        )  # fmt: skip
        conn.execute(INSERT_ALERT, alert_row(alert))
        conn.close()


if __name__ == "__main__":
    seed(sys.argv[1] if len(sys.argv) > 1 else "normal")
