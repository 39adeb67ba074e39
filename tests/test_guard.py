"""The guard over a real ledger: what survives a restart, and the advice its messages give."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from devmeter.alerts import MESSAGE_MAX, fit
from devmeter.budget import Advice, BudgetTracker, parse_budgets
from devmeter.control import Control
from devmeter.guard import Guard
from devmeter.ledger import LedgerWriter, connect_readonly, write_calls
from devmeter.runaway import RunawayConfig
from devmeter.sessions import query_sessions
from devmeter.usage import Attribution, Call, Usage

D = Decimal
NOW = 1_796_000_000.0
SESSION = "0bcf16ce-9d3e-4f0a-b1c2-d3e4f5a6b7c8"
AGENT = Attribution(tool="codex", session=SESSION, repo="/home/dev/src/acme")


def call(ts: float, cost: str, who: Attribution = AGENT, duration_ms: int = 900) -> Call:
    return Call(
        ts=ts,
        provider="openai",
        endpoint="openai.responses",
        host="api.openai.com",
        requested_model="gpt-6.1-sol",
        model="gpt-6.1-sol",
        attribution=who,
        usage=Usage(input_tokens=40_000, output_tokens=300),
        cost_usd=D(cost),
        price_source="genai-prices",
        status=200,
        duration_ms=duration_ms,
    )


def guard(budgets: dict[str, object] | None = None, menu: bool = False) -> Guard:
    return Guard(
        parse_budgets(budgets or {}),
        RunawayConfig(),
        config_path="~/.config/devmeter/config.toml",
        advice=Advice(menu=menu),
    )


def test_the_alert_prints_the_same_rate_as_devmeter_sessions(tmp_path: Path) -> None:
    """One function computes both: a young runaway, checked at the moment of its alert."""
    g = guard()
    calls = [call(NOW + i * 1.1, "0.11") for i in range(40)]
    alert = next(a for c in calls for a in g.observe(c, None, None) if a.kind == "projection")
    alerted = next(c for c in calls if c.ts == alert.ts)
    write_calls(tmp_path / "ledger.sqlite", [c for c in calls if c.ts <= alert.ts])
    conn = connect_readonly(tmp_path / "ledger.sqlite")
    assert conn is not None
    (row,) = query_sessions(conn, now=alerted.ts + alerted.duration_ms / 1000)
    shown = f"${row.burn_usd_per_hour.quantize(D('0.01')):,}/hour"
    assert f"is burning {shown}" in alert.message
    assert row.burn_usd_per_hour > 300  # the real rate, not a tenth of it


def test_burn_state_and_alerts_survive_a_restart(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    first = guard()
    writer = LedgerWriter(ledger)
    alerts = []
    for i in range(40):  # 40 s of a runaway: the burn alert fires
        c = call(NOW + i, "0.11")
        writer.add_call(c)
        for a in first.observe(c, "same-print", None):
            writer.add_alert(a)
            alerts.append(a)
    writer.close()
    assert [(a.kind, a.figure_usd) for a in alerts] == [("loop", D("0.88")), ("projection", D(200))]

    # Restarted: the same session goes on at the same rate.
    second = guard()
    conn = connect_readonly(ledger)
    assert conn is not None
    second.seed_from_ledger(conn, NOW + 40)
    burn = second.runaway.burn(SESSION, NOW + 40)
    assert burn is not None and burn.rate_usd_per_hour > 300  # not from $0
    # Fingerprints are keyed per process, so the loop goes on under a new print after a
    # restart; neither it nor the burn level is announced a second time.
    later = [a for i in range(40, 60) for a in second.observe(call(NOW + i, "0.11"), "p2", None)]
    assert [a.kind for a in later] == ["threshold"]  # only the $5 one, first crossed now


def test_a_cap_passed_before_a_restart_is_announced_at_its_first_refusal(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [call(NOW - 60, "12.00")])
    g = guard({"session": {"block_usd": 10}})
    conn = connect_readonly(ledger)
    assert conn is not None
    g.seed_from_ledger(conn, NOW)

    verdict = g.check(AGENT, NOW)
    assert verdict.outcome == "refuse" and verdict.block is not None
    (alert,) = verdict.alerts
    assert (alert.kind, alert.scope, alert.key, alert.figure_usd) == (
        "blocked",
        "session",
        SESSION,
        D(10),
    )
    assert "`devmeter allow 0bcf16ce`" in alert.message
    again = g.check(AGENT, NOW + 1)  # refused again, announced once
    assert again.outcome == "refuse" and again.alerts == ()


def test_advice_names_the_menu_only_where_there_is_one() -> None:
    headless, tray = guard(), guard(menu=True)
    for g in (headless, tray):
        g.apply(Control(paused=True))
    no_menu = headless.check(AGENT, NOW).block
    with_menu = tray.check(AGENT, NOW).block
    assert no_menu is not None and with_menu is not None
    assert "menu" not in no_menu.message and "`devmeter resume`" in no_menu.message
    assert "Resume in the devmeter menu" in with_menu.message
    assert "`devmeter resume`" in with_menu.message


def test_the_shortest_id_that_resolves_is_named() -> None:
    advice = Advice()
    advice.know(SESSION)
    assert advice.short_id(SESSION) == "0bcf16ce"
    advice.know("0bcf16ce-9d00-0000-0000-000000000000")
    assert advice.short_id(SESSION) == "0bcf16ce-9d3"


def test_with_a_cap_set_a_threshold_no_longer_says_to_set_one() -> None:
    tracker = BudgetTracker(parse_budgets({"session": {"block_usd": 50}}))
    (alert,) = tracker.observe(call(NOW, "6.00"))
    assert alert.kind == "threshold"
    assert "block_usd" not in alert.message
    assert "Its $50.00 cap stops it there." in alert.message
    uncapped = BudgetTracker(parse_budgets({"day": {"notify_usd": [5]}}))
    (day,) = [a for a in uncapped.observe(call(NOW, "6.00")) if a.scope == "day"]
    assert "To cap it: set budgets.day.block_usd" in day.message


@pytest.mark.parametrize("repo", ["/home/dev/src/" + "a-very-long-repository-name" * 12, "/r"])
def test_messages_cut_to_fit_never_cut_the_command(repo: str) -> None:
    tracker = BudgetTracker(parse_budgets({"session": {"block_usd": 1}}))
    who = Attribution(tool="claude-code", session=SESSION, repo=repo)
    (alert,) = tracker.observe(call(NOW, "2.00", who))
    assert alert.kind == "blocked"
    assert len(alert.message) <= MESSAGE_MAX
    assert alert.message.endswith("To raise the cap a step: `devmeter allow 0bcf16ce`.")


def test_fit_cuts_the_text_not_the_action() -> None:
    action = "To stop it: `devmeter stop 0bcf16ce`."
    text = fit("x" * 400, action)
    assert len(text) == MESSAGE_MAX and text.endswith("\u2026 " + action)
    assert fit("short.", action) == "short. " + action


def test_a_config_reload_replaces_what_the_guard_worked_out_from_the_old_budgets() -> None:
    """Which scopes are capped, watched and count subscription calls is worked out once
    per Budgets: a reload that adds a cap, a threshold or count_covered takes effect on
    the next call, and one that removes them stops them on the next call."""
    guard = Guard(parse_budgets({}), RunawayConfig())
    assert not guard.has_caps and not guard.counts_covered
    guard.observe(call(NOW, "3"), None, None)
    assert guard.check(AGENT, NOW + 1, D("1")).allowed

    capped = parse_budgets({"repo": {"block_usd": 4, "notify_usd": [1], "count_covered": True}})
    guard.reconfigure(capped, RunawayConfig())
    assert guard.has_caps and guard.counts_covered
    # The repo scope was not watched before the reload: its spend starts now.
    assert guard.check(AGENT, NOW + 2, D("1")).allowed
    alerts = guard.observe(call(NOW + 3, "4.5"), None, None)
    assert [a.kind for a in alerts if a.scope == "repo"] == ["blocked"]
    refused = guard.check(AGENT, NOW + 4, D("1"))
    assert not refused.allowed and refused.block is not None and refused.block.scope == "repo"

    guard.reconfigure(parse_budgets({}), RunawayConfig())
    assert not guard.has_caps and not guard.counts_covered
    assert guard.check(AGENT, NOW + 5, D("1")).allowed
