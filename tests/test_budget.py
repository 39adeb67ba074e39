"""Budgets: recorded call sequences in, the alerts and blocks a developer would see out."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from devmeter.alerts import Alert
from devmeter.budget import Budgets, BudgetTracker, ScopeBudget, parse_budgets
from devmeter.config_error import ConfigError
from devmeter.money import format_usd
from devmeter.providers import error_body
from devmeter.providers.refusal import refusal
from devmeter.usage import Attribution, Call, Usage

D = Decimal
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC).timestamp()
SESSION = "c94186ab-2b3f-417d-a580-48a4be19ff53"
ACME = Attribution(tool="claude-code", session=SESSION, repo="/home/dev/src/acme-api")


def call(ts: float, cost: str | None, who: Attribution = ACME) -> Call:
    return Call(
        ts=ts,
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-5-5",
        model="claude-opus-5-5",
        attribution=who,
        usage=Usage(input_tokens=1000, output_tokens=100),
        cost_usd=None if cost is None else D(cost),
        price_source="genai-prices 0.2.3",
        status=200,
    )


def replay(tracker: BudgetTracker, costs: list[str], who: Attribution = ACME) -> list[Alert]:
    alerts: list[Alert] = []
    for i, cost in enumerate(costs):
        alerts += tracker.observe(call(T0 + 60 * i, cost, who))
    return alerts


def tracker(budgets: Budgets | None = None) -> BudgetTracker:
    return BudgetTracker(budgets, config_path="~/.config/devmeter/config.toml", tz=UTC)


# --- defaults and config -------------------------------------------------------------------


def test_defaults_warn_a_new_user_at_5_20_100_per_session_and_50_200_per_day_never_block():
    budgets = parse_budgets({})
    assert budgets.session.notify_usd == (D(5), D(20), D(100))
    assert budgets.day.notify_usd == (D(50), D(200))
    assert budgets.repo.notify_usd == budgets.month.notify_usd == ()
    assert all(budgets.scope(s).block_usd is None for s in ("session", "repo", "day", "month"))
    assert parse_budgets(None) == budgets == Budgets()


def test_config_overrides_only_what_it_names():
    budgets = parse_budgets(
        {
            "session": {"block_usd": 50},
            "repo": {"notify_usd": [10, 25.5], "period": "month"},
            "month": {"notify_usd": [300], "block_usd": 1000},
        }
    )
    # Default thresholds and asks above the cap are kept: they work once `devmeter allow`
    # raises it.
    assert budgets.session == ScopeBudget(
        notify_usd=(D(5), D(20), D(100)), block_usd=D(50), ask_usd=(D(25), D(50))
    )
    assert budgets.repo.notify_usd == (D(10), D("25.5"))  # exact, not 25.5000000001
    assert budgets.repo.period == "month"
    assert budgets.month == ScopeBudget(notify_usd=(D(300),), block_usd=D(1000))
    assert parse_budgets({"day": {"notify_usd": []}}).day.notify_usd == ()


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ({"weekly": {}}, "budgets.weekly", "valid keys in [budgets]: session, repo, day, month"),
        (
            {"session": {"notfy_usd": [5]}},
            "budgets.session.notfy_usd",
            "valid keys in [budgets.session]: notify_usd, block_usd",
        ),
        ({"day": {"period": "day"}}, "budgets.day.period", "unknown key 'period'"),
        ({"session": {"notify_usd": [20, 5]}}, "budgets.session.notify_usd", "ascending"),
        ({"session": {"notify_usd": [5, 5]}}, "budgets.session.notify_usd", "ascending"),
        ({"session": {"notify_usd": [0, 5]}}, "budgets.session.notify_usd", "above 0"),
        ({"session": {"notify_usd": [-5]}}, "budgets.session.notify_usd", "above 0"),
        ({"session": {"notify_usd": 5}}, "budgets.session.notify_usd", "a list"),
        ({"session": {"notify_usd": ["5"]}}, "budgets.session.notify_usd", "number"),
        ({"session": {"block_usd": 0}}, "budgets.session.block_usd", "above 0"),
        ({"session": {"block_usd": True}}, "budgets.session.block_usd", "number"),
        ({"session": {"block_usd": float("nan")}}, "budgets.session.block_usd", "finite"),
        (
            {"day": {"notify_usd": [50, 200], "block_usd": 100}},
            "budgets.day.notify_usd",
            "at or above block_usd 100",
        ),
        ({"repo": {"period": "week"}}, "budgets.repo.period", '"day" or "month"'),
        ({"session": 5}, "budgets.session", "expected a table"),
    ],
)
def test_bad_config_names_the_key_and_what_is_valid(table, key, says):
    with pytest.raises(ConfigError) as caught:
        parse_budgets(table)
    assert caught.value.key == key
    assert says in caught.value.message


# --- thresholds ----------------------------------------------------------------------------


def test_each_threshold_alerts_exactly_once_as_spend_grows():
    alerts = replay(tracker(), ["1.50", "2.00", "2.00", "1.00", "9.00", "6.00", "3.00"])
    #                     spent: 1.50   3.50   5.50   6.50  15.50  21.50  24.50
    assert [(a.kind, a.scope, a.figure_usd) for a in alerts] == [
        ("threshold", "session", D(5)),
        ("threshold", "session", D(20)),
    ]
    first = alerts[0]
    assert first.ts == T0 + 120  # the call that crossed it
    assert (first.key, first.session, first.tool, first.repo) == (
        SESSION,
        SESSION,
        "claude-code",
        "/home/dev/src/acme-api",
    )
    assert first.message == (
        "Session c94186ab (claude-code in acme-api) passed $5.00: $5.50 spent. To stop it: "
        "`devmeter stop c94186ab`."
    )


def test_a_call_that_jumps_two_thresholds_alerts_once_naming_the_higher():
    alerts = replay(tracker(), ["3.00", "30.00"])
    assert [(a.scope, a.figure_usd) for a in alerts] == [("session", D(20))]
    assert "passed $20.00: $33.00 spent" in alerts[0].message


def test_a_call_landing_exactly_on_a_threshold_crosses_it():
    assert [a.figure_usd for a in replay(tracker(), ["2.50", "2.50", "0.01"])] == [D(5)]


def test_thresholds_count_per_session():
    other = Attribution(tool="codex", session="01a20804-def5", repo="/home/dev/src/web")
    t = tracker()
    assert [a.key for a in replay(t, ["6"])] == [SESSION]
    assert [a.key for a in replay(t, ["6"], other)] == ["01a20804-def5"]
    assert replay(t, ["1"]) == replay(t, ["1"], other) == []


def test_day_alerts_sum_every_session_and_name_the_call_that_crossed():
    t = tracker()
    sessions = [Attribution(tool="claude-code", session=f"s{i}", repo="/r/api") for i in range(12)]
    alerts = [a for who in sessions for a in t.observe(call(T0, "4.50", who))]
    day = [a for a in alerts if a.scope == "day"]
    assert [(a.key, a.figure_usd) for a in day] == [("2026-11-23", D(50))]
    assert day[0].session == "s11"
    assert day[0].message.startswith(
        "Spend for 2026-11-23 passed $50.00: $54.00 spent, last call from session s11 "
        "(claude-code in api)."
    )
    # the next day starts from zero
    assert [a.key for a in t.observe(call(T0 + 86400, "55", sessions[0])) if a.scope == "day"] == [
        "2026-11-24"
    ]


def test_unpriced_and_free_calls_change_nothing():
    t = tracker()
    assert replay(t, [None, "0", "4.99"]) == []
    assert t.spent("session", SESSION, T0) == D("4.99")


def test_calls_without_session_or_repo_still_count_toward_the_day():
    anon = Attribution(tool="python-sdk")
    alerts = replay(tracker(), ["60"], anon)
    assert [(a.scope, a.session, a.repo) for a in alerts] == [("day", None, None)]
    assert "python-sdk (no session id)" in alerts[0].message


def test_restart_seeded_from_the_ledger_does_not_repeat_crossed_thresholds():
    t = tracker()
    t.seed({("session", SESSION): D("21.00"), ("day", "2026-11-23"): D("49.00")}, now=T0)
    alerts = replay(t, ["1.00", "1.00", "80.00"])
    assert [(a.scope, a.figure_usd) for a in alerts] == [
        ("day", D(50)),
        ("session", D(100)),
    ]


def test_seeded_totals_from_an_earlier_period_do_not_count():
    t = tracker(parse_budgets({"repo": {"notify_usd": [10]}}))
    t.seed({("repo", "/home/dev/src/acme-api"): D(9)}, now=T0 - 86400)  # yesterday's
    assert replay(t, ["2"]) == []


# --- caps ----------------------------------------------------------------------------------


def test_a_session_cap_blocks_the_next_request_and_allow_lifts_it():
    t = tracker(parse_budgets({"session": {"block_usd": 50}}))
    alerts = replay(t, ["30", "15", "10"])
    assert [(a.kind, a.scope, a.figure_usd) for a in alerts] == [
        ("threshold", "session", D(20)),
        ("blocked", "session", D(50)),
        ("threshold", "day", D(50)),
    ]
    assert alerts[1].message == (
        "Session c94186ab (claude-code in acme-api) reached its $50.00 cap: $55.00 spent. "
        "Further requests are refused. To raise the cap a step: `devmeter allow c94186ab`."
    )

    block = t.check(ACME, now=T0 + 600)
    assert block is not None
    assert (block.scope, block.key, block.cap_usd, block.spent_usd) == (
        "session",
        SESSION,
        D(50),
        D(55),
    )
    assert block.message.startswith("devmeter: Session c94186ab (claude-code in acme-api)")
    assert "$50.00 cap (budgets.session.block_usd; $55.00 spent)" in block.message
    assert "To raise the cap a step: `devmeter allow c94186ab`." in block.message

    # Other sessions are not affected by this session's cap.
    assert t.check(Attribution(tool="codex", session="other"), now=T0 + 600) is None

    # `allow` raises the cap a step, to the next threshold ($100), and keeps it a cap.
    assert t.allow("session", SESSION, now=T0 + 600) == D(100)
    assert t.check(ACME, now=T0 + 601) is None
    raised = replay(t, ["50"])  # $105: the $100 threshold and the raised cap, as one block
    assert [(a.kind, a.figure_usd) for a in raised] == [("blocked", D(100))]
    assert t.check(ACME, now=T0 + 602) is not None
    assert t.allow("session", SESSION, now=T0 + 603) == D(120)  # no level left: +$20
    assert t.spent("session", SESSION, T0) == D(105)


def test_spend_just_below_a_cap_passes_and_at_the_cap_blocks():
    t = tracker(parse_budgets({"session": {"block_usd": 10}}))
    replay(t, ["9.99"])
    assert t.check(ACME, T0) is None
    replay(t, ["0.01"])
    assert t.check(ACME, T0) is not None


def test_a_day_cap_lifted_today_blocks_again_tomorrow():
    t = tracker(parse_budgets({"day": {"block_usd": 100}}))
    replay(t, ["120"])
    assert t.check(ACME, T0).scope == "day"
    t.allow("day", "2026-11-23", now=T0)
    assert t.check(ACME, T0 + 3600) is None
    tomorrow = T0 + 86400
    assert t.check(ACME, tomorrow) is None  # a new day starts at $0
    t.observe(call(tomorrow, "150"))
    block = t.check(ACME, tomorrow)
    assert block is not None and block.key == "2026-11-24"
    assert "`devmeter allow --day`" in block.message
    assert "so this request from session c94186ab (claude-code in acme-api) was not sent" in (
        block.message
    )


def test_a_repo_cap_blocks_every_session_in_that_repo():
    t = tracker(parse_budgets({"repo": {"block_usd": 40}}))
    first = Attribution(tool="claude-code", session="a", repo="/src/api")
    second = Attribution(tool="codex", session="b", repo="/src/api")
    elsewhere = Attribution(tool="codex", session="c", repo="/src/web")
    alerts = replay(t, ["25"], first) + replay(t, ["20"], second)
    assert [(a.kind, a.key) for a in alerts if a.scope == "repo"] == [("blocked", "/src/api")]
    assert t.check(first, T0).key == "/src/api"
    assert "`devmeter allow --repo /src/api`" in t.check(second, T0).message
    assert t.check(elsewhere, T0) is None


def test_a_seeded_total_over_the_cap_blocks_at_once_after_a_restart():
    t = tracker(parse_budgets({"month": {"block_usd": 500}}))
    t.seed({("month", "2026-11"): D("612.40")}, now=T0)
    block = t.check(ACME, T0)
    assert block is not None and block.scope == "month" and block.spent_usd == D("612.40")


def test_pause_blocks_everything_until_resume():
    t = tracker()
    t.pause()
    block = t.check(Attribution(), T0)
    assert block is not None and block.scope == "pause"
    assert block.message.startswith("devmeter: metered traffic is paused")
    assert "`devmeter resume`" in block.message
    t.resume()
    assert t.check(Attribution(), T0) is None


def test_block_error_bodies_look_like_each_providers_own():
    t = tracker(parse_budgets({"session": {"block_usd": 1}}))
    replay(t, ["2"])
    block = t.check(ACME, T0)
    assert block is not None
    body = error_body("anthropic.messages", 403, block.message)  # 403, not 429: retried
    assert body == {
        "type": "error",
        "error": {"type": "permission_error", "message": block.message},
    }
    body = error_body("openai.responses", 403, block.message)
    assert body["error"]["message"] == block.message
    assert body["error"]["code"] == "devmeter_blocked"
    body = error_body("gemini.generate_content", 403, block.message)
    assert body["error"]["status"] == "PERMISSION_DENIED"


def test_refusals_are_shaped_per_client_so_none_retries():
    """What the real clients were found to show as it is (tests/test_e2e_refusals.py)."""
    import json

    t = tracker(parse_budgets({"session": {"block_usd": 1}}))
    replay(t, ["2"])
    block = t.check(ACME, T0)
    assert block is not None
    claude = refusal("anthropic.messages", "claude-code", block.message)
    assert claude.status == 402 and claude.headers["x-should-retry"] == "false"
    assert json.loads(claude.body)["error"] == {"type": "billing_error", "message": block.message}
    codex = refusal("openai.responses", "codex", block.message)
    assert codex.status == 400 and codex.body == block.message.encode()
    assert codex.headers["content-type"].startswith("text/plain")
    assert codex.websocket_event["status"] == 400
    assert codex.websocket_event["error"]["message"] == block.message
    sdk = refusal("openai.chat", "openai-sdk-python", block.message)
    assert sdk.status == 403 and json.loads(sdk.body)["error"]["code"] == "devmeter_blocked"
    assert sdk.websocket_event["type"] == "error"
    gemini = refusal("gemini.generate_content", "gemini-cli", block.message)
    assert gemini.status == 403


def test_memory_is_bounded_by_max_keys():
    t = BudgetTracker(tz=UTC, max_keys=50)
    for i in range(500):
        t.observe(call(T0, "1", Attribution(tool="x", session=f"s{i}", repo=f"/r{i}")))
    assert len(t._spend) <= 50
    # The day total is used on every call, so it is never the one evicted.
    assert t.spent("day", "2026-11-23", T0) == D(500)


def test_format_usd():
    assert format_usd(D("4000")) == "$4,000.00"
    assert format_usd(D("0.005")) == "$0.01"
    assert format_usd(D("0.0049")) == "$0.00"


def test_periods_turn_over_at_local_midnight_and_month_end() -> None:
    from zoneinfo import ZoneInfo

    t = BudgetTracker(tz=ZoneInfo("America/New_York"))
    # 2026-01-31 23:59:59 in New York, then one second later.
    last_second = datetime(2026, 1, 31, 23, 59, 59, tzinfo=ZoneInfo("America/New_York"))
    ts = last_second.timestamp()
    for _ in range(2):  # asked twice: the answer must not depend on what was asked before
        assert (t.period("day", ts), t.period("month", ts)) == ("2026-01-31", "2026-01")
        assert (t.period("day", ts + 1), t.period("month", ts + 1)) == ("2026-02-01", "2026-02")
    assert t.period("session", ts) == ""


def test_spend_is_counted_in_the_scopes_with_a_cap_or_a_threshold() -> None:
    t = BudgetTracker(Budgets(), tz=UTC)  # defaults: session and day notify; repo, month quiet
    t.observe(call(T0, "3"))
    assert t.spent("session", SESSION, T0) == D(3)
    assert t.spent("day", "2026-11-23", T0) == D(3)
    assert t.spent("repo", ACME.repo or "", T0) == D(0)  # nothing reads it: not counted
    # A tracker given other budgets counts what they watch from then on.
    t.budgets = Budgets(repo=ScopeBudget(notify_usd=(D(5),)))
    alerts = [a for i in range(3) for a in t.observe(call(T0 + i, "2"))]
    assert t.spent("repo", ACME.repo or "", T0) == D(6)
    assert [(a.scope, a.figure_usd) for a in alerts] == [("session", D(5)), ("repo", D(5))]


@pytest.mark.parametrize("repo_period", ["day", "month"])
def test_spend_in_is_the_key_and_its_spend_in_the_current_period(repo_period: str) -> None:
    """What the asks read every request (`spend_in`, one step) is what `key` and `spent`
    say, in every scope, for calls with and without a session or repo, across a day and
    a month rolling over."""
    budgets = parse_budgets({s: {"notify_usd": [1000]} for s in ("repo", "month")})
    tracker = BudgetTracker(
        Budgets(budgets.session, replace_period(budgets.repo, repo_period), budgets.day,
                budgets.month),
        tz=UTC,
    )  # fmt: skip
    bare = Attribution(tool="codex", session=None, repo=None)
    other = Attribution(tool="codex", session="other", repo="/home/dev/src/other")
    times = [T0, T0 + 3600, T0 + 86400, T0 + 86400 * 9, T0 + 86400 * 40]
    for ts in times:
        for who in (ACME, bare, other):
            tracker.observe(call(ts, "1.25", who))
            for probe in (ts, ts + 86400, ts + 86400 * 31):
                for scope in ("session", "repo", "day", "month"):
                    key = tracker.key(scope, who, probe)
                    spent = tracker.spent(scope, key, probe) if key is not None else D(0)
                    assert tracker.spend_in(scope, who, probe) == (key, spent)
    assert tracker.spend_in("session", ACME, T0 + 86400 * 40) == (SESSION, D("6.25"))


def replace_period(budget: ScopeBudget, period: str) -> ScopeBudget:
    from dataclasses import replace

    return replace(budget, period=period)  # type: ignore[arg-type]
