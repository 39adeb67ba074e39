"""Quota windows from headers and events, pace and share, billing mode and accounts,
and the quota alerts, on scripted inputs."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import billing
from devmeter.billing import Accounts, mode_of
from devmeter.providers import quota_headers
from devmeter.providers.quota_headers import (
    QuotaReading,
    RateLimitEvents,
    Window,
    from_codex_event,
    from_headers,
    window_name,
)
from devmeter.quota import Snapshot, SpentCall, pace, share, tightest, tray_line
from devmeter.quota_watch import QuotaConfig, QuotaWatch
from devmeter.usage import Attribution, Call, Usage

NOW = 1_796_630_000.0
U = "anthropic-ratelimit-unified-"


# -- headers ---------------------------------------------------------------------------------


def test_the_unified_family_is_parsed_as_a_family() -> None:
    reading = from_headers(
        {
            U + "status": "allowed_warning",
            U + "5h-utilization": "0.62",
            U + "5h-reset": "1796646600",
            U + "7d_opus-utilization": "0.9",  # a window name devmeter has never seen
            U + "7d_opus-reset": "1797000000",
            U + "7d_opus-status": "allowed",
            U + "7d-surpassed-threshold": "0.75",
            U + "representative-claim": "five_hour",
            U + "fallback-percentage": "0.5",
            U + "overage-status": "rejected",
        },
        NOW,
    )
    assert reading.windows == (
        Window("5h", 0.62, 1796646600.0, "allowed_warning"),  # the overall status
        Window("7d_opus", 0.9, 1797000000.0, "allowed"),
    )
    assert (reading.status, reading.claim, reading.overage, reading.notes) == (
        "allowed_warning", "five_hour", False, ()
    )  # fmt: skip


def test_overage_when_the_window_is_spent_and_extra_usage_is_allowed() -> None:
    spent = {U + "status": "rejected", U + "overage-status": "allowed"}
    assert from_headers(spent, NOW).overage
    assert from_headers({U + "overage-in-use": "true"}, NOW).overage
    assert not from_headers(
        {U + "status": "rejected", U + "overage-status": "rejected"}, NOW
    ).overage


@pytest.mark.parametrize(
    ("name", "value", "note"),
    [
        (U + "5h-utilization", "lots", "5h utilization 'lots' is not a number"),
        (U + "5h-utilization", "nan", "is not a number"),
        (U + "5h-utilization", "-0.1", "out of range"),
        (U + "5h-reset", "tomorrow", "5h reset 'tomorrow' is not a time"),
        (U + "status", "maybe", "unified status 'maybe' unknown"),
        ("x-codex-primary-used-percent", "12%", "codex primary used percent '12%'"),
        ("x-ratelimit-remaining-requests", "many", "requests remaining 'many'"),
    ],
)
def test_a_malformed_value_is_ignored_with_a_note(name: str, value: str, note: str) -> None:
    reading = from_headers({name: value, U + "7d-utilization": "0.5"}, NOW)
    assert any(note in n for n in reading.notes), reading.notes
    assert Window("7d", 0.5, None, None) in reading.windows  # the rest is still read


def test_codex_headers() -> None:
    reading = from_headers(
        {
            "x-codex-primary-used-percent": "42.5",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": "600",
            "x-codex-secondary-used-percent": "100",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-secondary-reset-at": "1797100000",
            "x-codex-plan-type": "pro",
            "x-codex-credits-balance": "0",
        },
        NOW,
    )
    assert reading.windows == (
        Window("5h", 0.425, NOW + 600, "allowed"),
        Window("7d", 1.0, 1797100000.0, "rejected"),
    )
    assert reading.plan == "pro"


def test_standard_rate_limit_headers() -> None:
    openai = from_headers(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-limit-tokens": "10000",
            "x-ratelimit-remaining-tokens": "7500",
            "x-ratelimit-reset-tokens": "20ms",
        },
        NOW,
    )
    assert openai.windows == (
        Window("requests", 1.0, NOW + 360, "rejected"),
        Window("tokens", 0.25, NOW + 0.02, "allowed"),
    )
    anthropic = from_headers(
        {
            "anthropic-ratelimit-input-tokens-limit": "400",
            "anthropic-ratelimit-input-tokens-remaining": "100",
            "anthropic-ratelimit-input-tokens-reset": "2026-12-07T14:10:00Z",
        },
        NOW,
    )
    assert anthropic.windows == (Window("input-tokens", 0.75, 1796652600.0, "allowed"),)


def test_window_names() -> None:
    assert [window_name(m) for m in (300, 10080, 60, 90, 1440)] == ["5h", "7d", "1h", "90m", "1d"]


def test_the_codex_rate_limits_event_split_across_chunks() -> None:
    event = {"type": "codex.rate_limits", "plan_type": "plus", "rate_limits": {
        "primary": {"used_percent": 50, "window_minutes": 300, "reset_after_seconds": 60},
    }}  # fmt: skip
    stream = (
        b'event: response.created\ndata: {"type":"response.created"}\n\n'
        + b"event: codex.rate_limits\ndata: "
        + json.dumps(event).encode()
        + b"\n\n"
    )
    for size in (1, 7, len(stream)):
        events = RateLimitEvents(NOW)
        for start in range(0, len(stream), size):
            events.feed(stream[start : start + size])
        (reading,) = events.readings
        assert reading.windows == (Window("5h", 0.5, NOW + 60, "allowed"),)
    ws = RateLimitEvents(NOW)
    ws.feed_message(json.dumps(event))
    ws.feed_message('{"type":"response.completed"}')
    assert len(ws.readings) == 1
    assert from_codex_event({"type": "response.created"}, NOW) is None


# -- pace and share --------------------------------------------------------------------------


def snap(minutes: float, util: float | None, resets: float = NOW + 5 * 3600) -> Snapshot:
    return Snapshot(NOW + minutes * 60, "anthropic", "acct-1", "5h", util, resets, "allowed")


def test_pace_projects_when_the_window_fills() -> None:
    # 10% -> 40% in an hour: 30% an hour, so 60% more takes two hours.
    found = pace([snap(0, 0.1), snap(30, 0.25), snap(60, 0.4)])
    assert found is not None
    assert found.rate_per_hour == pytest.approx(0.3)
    assert found.full_at == pytest.approx(NOW + 3 * 3600)
    assert found.before_reset  # the window resets at +5h
    slow = pace([snap(0, 0.1), snap(60, 0.12)])
    assert slow is not None and not slow.before_reset


def test_pace_starts_over_when_the_window_resets() -> None:
    later = NOW + 10 * 3600
    readings = [snap(0, 0.8), snap(60, 0.9), snap(300, 0.05, later), snap(360, 0.1, later)]
    found = pace(readings)
    assert found is not None and found.rate_per_hour == pytest.approx(0.05)
    assert pace([snap(0, 0.5)]) is None
    flat = pace([snap(0, 0.5), snap(60, 0.5)])
    assert flat is not None and (flat.full_at, flat.before_reset) == (None, False)


def test_share_splits_each_rise_among_the_calls_in_between_by_cost() -> None:
    readings = [snap(0, 0.10), snap(10, 0.20), snap(20, 0.50)]
    calls = [
        SpentCall(NOW + 5 * 60, "acct-1", "s1", "/r/a", Decimal(1)),  # rise 1: all of 0.10
        SpentCall(NOW + 12 * 60, "acct-1", "s1", "/r/a", Decimal(1)),  # rise 2: 1/3 of 0.30
        SpentCall(NOW + 15 * 60, "acct-1", "s2", "/r/b", Decimal(2)),  # rise 2: 2/3 of 0.30
        SpentCall(NOW + 16 * 60, "acct-2", "s3", "/r/c", Decimal(50)),  # another account
    ]
    by_session = share(readings, calls, "session")
    assert by_session == pytest.approx({"s1": 0.2, "s2": 0.2})
    assert share(readings, calls, "repo") == pytest.approx({"/r/a": 0.2, "/r/b": 0.2})


def test_share_of_a_rise_with_no_call_and_after_a_reset() -> None:
    readings = [snap(0, 0.5), snap(10, 0.6), snap(20, 0.1, NOW + 9 * 3600)]
    calls = [SpentCall(NOW + 15 * 60, "acct-1", "s1", None, Decimal(0))]
    # 0.1 with no call to pin it on; after the reset, all of 0.1 to s1 (unpriced: evenly).
    assert share(readings, calls) == pytest.approx({None: 0.1, "s1": 0.1})


def test_the_tightest_window_and_its_tray_line() -> None:
    windows = [snap(0, 0.3), Snapshot(NOW, "openai", "a", "7d", 0.62, NOW + 3600, "allowed"),
               Snapshot(NOW, "openai", "a", "old", 0.99, NOW - 1, "allowed")]  # fmt: skip
    found = tightest(windows, NOW)
    assert found is not None and found.window == "7d"
    assert tray_line(found, local=False).startswith("7d 62% · resets ")


# -- billing mode and accounts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "headers", "mode"),
    [
        ("api.anthropic.com", {"authorization": "Bearer sk-ant-oat01-x"}, "subscription"),
        ("api.anthropic.com", {"authorization": "Bearer t", "anthropic-beta": "oauth-2025-04-20"},
         "subscription"),
        ("api.anthropic.com", {"x-api-key": "sk-ant-api03-x"}, "api"),
        ("chatgpt.com", {"authorization": "Bearer eyJhbGciOi.x.y"}, "subscription"),
        ("api.openai.com", {"authorization": "Bearer sk-proj-x"}, "api"),
        ("api.openai.com", {}, "api"),
        ("generativelanguage.googleapis.com", {"x-goog-api-key": "AIzaX"}, "api"),
        ("cloudcode-pa.googleapis.com", {"authorization": "Bearer ya29.x"}, "subscription"),
        ("api.anthropic.com", {}, "unknown"),
        ("api.anthropic.com", {"authorization": "Basic x"}, "unknown"),
    ],
)  # fmt: skip
def test_billing_mode(host: str, headers: dict[str, str], mode: str) -> None:
    assert mode_of(host, headers) == mode


def test_accounts_are_stable_distinct_and_keep_no_credential(tmp_path: Path) -> None:
    first = Accounts(tmp_path)
    key = "sk-ant-api03-SECRETSECRETSECRET-f3a9"
    found = first.billing("api.anthropic.com", {"x-api-key": key}, None)
    assert (found.mode, found.key_tail) == ("api", "sk-…f3a9")
    again = Accounts(tmp_path).billing("api.anthropic.com", {"x-api-key": key}, None)
    assert again.account == found.account  # the salt is kept: stable across restarts
    other = first.billing("api.anthropic.com", {"x-api-key": key + "0"}, None)
    assert other.account != found.account
    assert found.account is not None and "SECRET" not in found.account
    salt = tmp_path / billing.SALT_FILE
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600 or os.name != "posix"
    assert (
        Accounts(tmp_path / "elsewhere")
        .billing("api.anthropic.com", {"x-api-key": key}, None)
        .account
        != found.account
    )  # another salt: not a dictionary lookup
    sub = first.billing("api.anthropic.com", {"authorization": "Bearer sk-ant-oat01-zz"}, None)
    assert sub.key_tail is None  # only API keys are ever shown, and only their tail


def test_a_remembered_billing_changes_with_every_header_it_was_read_from(tmp_path: Path) -> None:
    """Accounts remembers a call's Billing by what it reads: each of those headers, the
    host and a Gemini ?key= change the answer, exactly as read afresh."""
    accounts = Accounts(tmp_path)
    fresh = Accounts(tmp_path)._billing  # the same salt, nothing remembered
    base = {"x-api-key": "sk-ant-api03-one", "user-agent": "claude-cli/2"}
    variants: list[tuple[str, dict[str, str], str | None]] = [
        ("api.anthropic.com", base, None),
        ("api.anthropic.com", {**base, "user-agent": "other"}, None),  # not read: same
        ("api.anthropic.com", {"x-api-key": "sk-ant-api03-two"}, None),
        ("api.anthropic.com", {"authorization": "Bearer sk-ant-oat01-x"}, None),
        ("api.anthropic.com", {"authorization": "Bearer t"}, None),
        ("api.anthropic.com", {"authorization": "Bearer t", "anthropic-beta": "oauth-2025"}, None),
        ("chatgpt.com", {"authorization": "Bearer t"}, None),
        ("generativelanguage.googleapis.com", {"x-goog-api-key": "AIzaX"}, None),
        ("generativelanguage.googleapis.com", {}, "AIzaQueryKey"),
        ("generativelanguage.googleapis.com", {}, None),
    ]
    for _ in range(2):  # the second round from memory
        for host, headers, query_key in variants:
            assert accounts.billing(host, headers, query_key) == fresh(host, headers, query_key)
    assert accounts.billing(*variants[0]) == accounts.billing(*variants[1])
    assert accounts.billing(*variants[4]).mode != accounts.billing(*variants[5]).mode
    for i in range(500):  # many credentials: memory stays bounded, answers stay right
        headers = {"x-api-key": f"sk-ant-api03-{i}"}
        assert accounts.billing("api.anthropic.com", headers, None) == fresh(
            "api.anthropic.com", headers, None
        )
    assert len(accounts._billings) <= billing._CACHE_LIMIT


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json", "content-length": "12"},  # no quota family
        {"content-type": "application/json", "x-request-id": "req_1", "retry-after": "3"},
        {"anthropic-ratelimit-unified-status": "allowed",
         "anthropic-ratelimit-unified-5h-utilization": "0.25",
         "anthropic-ratelimit-unified-5h-reset": "1796646600"},
        {"anthropic-ratelimit-unified-5h-utilization": "lots"},  # a note, no window
        {"x-codex-primary-used-percent": "40", "x-codex-primary-window-minutes": "300",
         "x-codex-primary-reset-after-seconds": "60"},
        {"x-codex-plan-type": "plus"},
        {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
         "x-ratelimit-reset-requests": "120ms"},
        {"anthropic-ratelimit-tokens-limit": "100", "anthropic-ratelimit-tokens-remaining": "9",
         "anthropic-ratelimit-tokens-reset": "2026-12-07T17:00:00Z"},
    ],
)  # fmt: skip
def test_the_proxy_keeps_exactly_the_reading_the_headers_give(headers: dict[str, str]) -> None:
    """read_quota skips from_headers when no header is of a quota family: what it keeps
    is the same as reading them all."""
    from devmeter.providers import Endpoint
    from devmeter.proxy.billing_reading import quota_reading, read_quota
    from devmeter.proxy.flow_state import FlowState
    from devmeter.usage import RequestInfo

    state = FlowState(
        endpoint=Endpoint("anthropic", "anthropic.messages"),
        request=RequestInfo(),
        started=NOW,
        attribution=Attribution(),
        host="api.anthropic.com",
    )
    read_quota(state, headers, NOW)
    expected = quota_headers.from_headers(headers, NOW)
    kept = expected if expected.windows or expected.notes or expected.status else None
    assert quota_reading(state) == kept


# -- alerts ----------------------------------------------------------------------------------


def call(ts: float, mode: str, account: str | None = "acct-1", repo: str = "/src/acme-api") -> Call:
    return Call(
        ts=ts, provider="anthropic", endpoint="anthropic.messages", host="api.anthropic.com",
        requested_model="m", model="m", attribution=Attribution(tool="claude-code", repo=repo),
        usage=Usage(), cost_usd=Decimal(1), price_source=None, status=200, billing=mode,
        account=account,
    )  # fmt: skip


def reading(util: float, status: str = "allowed", resets: float = NOW + 3600) -> QuotaReading:
    return QuotaReading(windows=(Window("5h", util, resets, status),))


def test_threshold_pace_rejected_and_overage_alerts_fire_once() -> None:
    watch = QuotaWatch(QuotaConfig(thresholds=(0.8, 0.95)))
    sub = billing.Billing("subscription", "acct-1")
    kinds = []
    for minute, util in enumerate((0.5, 0.79, 0.81, 0.85, 0.96)):
        _, alerts = watch.observe(call(NOW + minute * 60, "subscription"), sub, reading(util))
        kinds += [(a.kind, a.message) for a in alerts]
    assert [k for k, _ in kinds].count("quota") == 2
    assert any("passed 80%" in m for _, m in kinds) and any("passed 95%" in m for _, m in kinds)
    assert [k for k, _ in kinds].count("quota_pace") == 1
    (paced,) = [m for k, m in kinds if k == "quota_pace"]
    assert paced.startswith("anthropic 5h window full at ") and "min before it resets" in paced
    _, alerts = watch.observe(call(NOW + 600, "overage"), sub, reading(1.0, "rejected"))
    assert sorted(a.kind for a in alerts) == ["overage", "quota_rejected"]
    _, alerts = watch.observe(call(NOW + 660, "overage"), sub, reading(1.0, "rejected"))
    assert alerts == []


def test_headers_on_some_answers_only_keep_the_last_snapshot() -> None:
    watch = QuotaWatch()
    sub = billing.Billing("subscription", "acct-1")
    snaps, _ = watch.observe(call(NOW, "subscription"), sub, reading(0.3))
    assert [(s.utilization, moved) for s, moved in snaps] == [(0.3, True)]
    assert watch.observe(call(NOW + 60, "subscription"), sub, None) == ([], [])
    snaps, _ = watch.observe(call(NOW + 120, "subscription"), sub, reading(0.3))
    assert [moved for _, moved in snaps] == [False]  # unchanged: no new reading for share
    (latest,) = watch.latest()
    assert (latest.ts, latest.utilization) == (NOW + 120, 0.3)


def test_billing_switch_once_and_only_after_a_subscription() -> None:
    watch = QuotaWatch(QuotaConfig(billing_switch_days=7))
    key = billing.Billing("api", "acct-2", "sk-…f3a9")
    # An API-key user from the start: no switch.
    assert watch.observe(call(NOW, "api", repo="/src/other"), key, None)[1] == []
    watch.observe(call(NOW, "subscription"), billing.Billing("subscription", "acct-1"), None)
    (alert,) = watch.observe(call(NOW + 60, "api", "acct-2"), key, None)[1]
    assert alert.kind == "billing_switch"
    assert alert.message == (
        "Claude Code in acme-api is now billed to an API key: sk-…f3a9 — unset "
        "ANTHROPIC_API_KEY to go back to your subscription"
    )
    assert watch.observe(call(NOW + 120, "api", "acct-2"), key, None)[1] == []
    # A subscription call more than N days ago does not count.
    old = QuotaWatch(QuotaConfig(billing_switch_days=7))
    old.observe(call(NOW, "subscription"), billing.Billing("subscription", "acct-1"), None)
    assert old.observe(call(NOW + 8 * 86400, "api", "acct-2"), key, None)[1] == []


# -- budgets count billed dollars unless a scope counts covered ones too -------------------


def test_budgets_count_billed_dollars_and_covered_ones_only_when_asked(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from devmeter.budget import BudgetTracker, parse_budgets
    from devmeter.config_error import ConfigError
    from devmeter.guard import spend_so_far
    from devmeter.ledger import connect, write_calls

    budgets = parse_budgets(
        {"session": {"notify_usd": [5]}, "day": {"notify_usd": [5], "count_covered": True}}
    )
    tracker = BudgetTracker(budgets, tz=UTC)
    expensive = Decimal(6)
    sub = replace_cost(call(NOW, "subscription"), expensive)
    alerts = tracker.observe(sub)
    assert [a.scope for a in alerts] == ["day"]  # the session does not count covered dollars
    alerts = tracker.observe(replace_cost(call(NOW + 1, "api", "acct-2"), expensive))
    assert [a.scope for a in alerts] == ["session"]

    with pytest.raises(ConfigError, match="count_covered"):
        parse_budgets({"day": {"count_covered": "yes"}})

    # A restart seeds each scope from the ledger the same way.
    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [sub, replace_cost(call(NOW + 1, "api", "acct-2"), Decimal(2))])
    conn = connect(ledger)
    totals = spend_so_far(conn, BudgetTracker(budgets, tz=UTC), NOW + 2)
    assert totals[("session", "s")] == Decimal(2)
    day = datetime.fromtimestamp(NOW + 2).strftime("%Y-%m-%d")  # spend_so_far's local day
    assert totals[("day", day)] == Decimal(8)


def test_caps_do_not_count_calls_imported_from_history_before_or_after_a_restart(
    tmp_path: Path,
) -> None:
    # The proxy never sees an imported call (one it metered is not imported), so its caps
    # never counted one; a restart, which seeds the caps from the ledger, must not either,
    # or `devmeter allow` and the budget gauges say a spend the refusal does not.
    from dataclasses import replace
    from datetime import UTC, datetime

    from devmeter.budget import BudgetTracker, parse_budgets
    from devmeter.guard import spend_so_far
    from devmeter.ledger import connect, write_calls

    budgets = parse_budgets({"day": {"block_usd": 100}})
    live = replace_cost(call(NOW, "api", "acct-2"), Decimal(2))
    imported = replace(
        replace_cost(call(NOW + 1, "unknown", None), Decimal(5)),
        source="import",
        endpoint="claude-code.import",
        attribution=Attribution(tool="claude-code", session="t"),
        usage=Usage(input_tokens=7),  # not the live row's twin
    )
    tracker = BudgetTracker(budgets, tz=UTC)
    tracker.observe(live)  # what the running proxy counted
    write_calls(tmp_path / "ledger.sqlite", [live, imported])
    totals = spend_so_far(connect(tmp_path / "ledger.sqlite"), BudgetTracker(budgets), NOW + 2)
    day = datetime.fromtimestamp(NOW + 2).strftime("%Y-%m-%d")  # spend_so_far's local day
    assert totals[("day", day)] == Decimal(2)
    assert tracker.spent("day", tracker.period("day", NOW + 2), NOW + 2) == Decimal(2)
    assert ("session", "t") not in totals


def replace_cost(c: Call, cost: Decimal) -> Call:
    from dataclasses import replace

    return replace(c, cost_usd=cost, attribution=Attribution(tool="claude-code", session="s"))


# -- the tray and the headless line ---------------------------------------------------------


def test_the_tray_shows_billed_covered_and_the_tightest_window(tmp_path: Path) -> None:
    import time as clock

    from devmeter.control import Control
    from devmeter.ledger import UPSERT_QUOTA, connect, connect_readonly, quota_row, write_calls
    from devmeter.tray.headless import status_line
    from devmeter.tray.icon import tooltip
    from devmeter.tray.menu import build_menu
    from devmeter.tray.snapshot import Headline, snapshot

    now = clock.time()
    ledger = tmp_path / "ledger.sqlite"
    api_only = [replace_cost(call(now - 60, "api", "acct-2"), Decimal(3))]
    write_calls(ledger, api_only)
    conn = connect_readonly(ledger)
    assert conn is not None
    plain = snapshot(conn, now, Control())
    assert plain.billing_line is None  # API keys only: nothing to split
    assert not any("billed" in item.text for item in build_menu(plain))

    write_calls(ledger, [replace_cost(call(now - 30, "subscription"), Decimal(2))])
    writer = connect(ledger)
    for util, window in ((0.62, "5h"), (0.31, "7d")):
        resets = now + 3600
        writer.execute(
            UPSERT_QUOTA,
            quota_row(Snapshot(now, "anthropic", "acct-1", window, util, resets, "allowed")),
        )
    snap = snapshot(conn, now, Control())
    when = datetime.fromtimestamp(now + 3600).strftime("%H:%M")
    expected = f"billed $3.00 · covered $2.00 · quota 5h 62% · resets {when}"
    assert snap.billing_line == expected
    assert build_menu(snap)[1].text == f"Today {expected}"
    assert expected in status_line(snap, Headline())
    title = tooltip(None, snap.today_usd, snap.month_usd, "off", billing=snap.billing_line)
    assert title.endswith(f"routing off · {expected}") and len(title) <= 127


def test_the_tray_turns_amber_then_red_at_the_quota_alert_levels(tmp_path: Path) -> None:
    import time as clock

    from devmeter.control import Control
    from devmeter.ledger import UPSERT_QUOTA, connect, connect_readonly, quota_row, write_calls
    from devmeter.quota import quota_level
    from devmeter.tray.icon import tooltip
    from devmeter.tray.snapshot import snapshot

    assert [quota_level(u, (0.8, 0.95)) for u in (None, 0.79, 0.8, 0.949, 0.95, 1.0)] == [
        "ok", "ok", "warning", "warning", "critical", "critical"
    ]  # fmt: skip
    # One level: amber from it, red once the window is full; no levels: never coloured.
    assert [quota_level(u, (0.5,)) for u in (0.4, 0.5, 1.0)] == ["ok", "warning", "critical"]
    assert quota_level(1.0, ()) == "ok"

    now = clock.time()
    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [call(now - 30, "subscription")])
    conn = connect_readonly(ledger)
    assert conn is not None
    writer = connect(ledger)
    resets = now + 3600
    when = datetime.fromtimestamp(resets).strftime("%H:%M")
    seen = []
    for util in (0.62, 0.85, 0.96):
        writer.execute(UPSERT_QUOTA, quota_row(
            Snapshot(now, "anthropic", "acct-1", "5h", util, resets, "allowed")
        ))  # fmt: skip
        writer.commit()
        snap = snapshot(conn, now, Control())
        title = tooltip(None, snap.today_usd, snap.month_usd, "off", billing=snap.billing_line)
        assert f"5h {round(util * 100)}% · resets {when}" in title
        seen.append(snap.state)
    assert seen == ["normal", "warning", "critical"]
    # The configured levels, not the defaults: 96% is only amber under a 99% red.
    assert snapshot(conn, now, Control(), quota_thresholds=(0.6, 0.99)).state == "warning"
    # A paused proxy or a cap refusing calls says more than the quota does.
    assert snapshot(conn, now, Control(paused=True)).state == "paused"


_NAMES = [U + "status", U + "5h-utilization", U + "5h-reset", U + "overage-status",
          U + "x-y-status", "x-codex-primary-used-percent", "x-codex-primary-window-minutes",
          "x-codex-secondary-reset-after-seconds", "x-ratelimit-reset-tokens",
          "x-ratelimit-limit-requests", "anthropic-ratelimit-tokens-reset"]  # fmt: skip


def test_no_header_value_makes_the_parser_raise() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(st.sampled_from(_NAMES), st.text(max_size=30)))
    def check(headers: dict[str, str]) -> None:
        reading = from_headers(headers, NOW)
        for window in reading.windows:
            assert window.utilization is None or 0 <= window.utilization <= 10
        events = RateLimitEvents(NOW)
        events.feed(("data: " + json.dumps(headers) + "codex.rate_limits\n").encode())

    check()


def test_devmeter_quota_json_with_pace_and_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time as clock

    from devmeter.cli import main
    from devmeter.ledger import (
        INSERT_QUOTA_READING,
        UPSERT_QUOTA,
        connect,
        quota_reading_row,
        quota_row,
        write_calls,
    )

    monkeypatch.setenv("DEVMETER_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[accounts]\n"acct-1" = "work"\n')
    now = clock.time()
    resets = now + 4 * 3600
    readings = [
        Snapshot(now - 3600, "anthropic", "acct-1", "5h", 0.2, resets, "allowed", "s1"),
        Snapshot(now - 1800, "anthropic", "acct-1", "5h", 0.5, resets, "allowed", "s2"),
    ]
    calls = [
        SpentCall(now - 2400, "acct-1", "s1", "/r/a", Decimal(1)),
        SpentCall(now - 2000, "acct-1", "s2", "/r/b", Decimal(3)),
    ]
    write_calls(tmp_path / "ledger.sqlite", [
        replace(call(c.ts, "subscription"), cost_usd=c.cost_usd,
                attribution=Attribution(tool="claude-code", session=c.session, repo=c.repo))
        for c in calls
    ])  # fmt: skip
    conn = connect(tmp_path / "ledger.sqlite")
    for reading in readings:
        conn.execute(INSERT_QUOTA_READING, quota_reading_row(reading))
    conn.execute(UPSERT_QUOTA, quota_row(readings[-1]))
    conn.close()

    assert main(["quota", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {k: row[k] for k in ("provider", "account", "window", "utilization", "status")} == {
        "provider": "anthropic", "account": "acct-1", "window": "5h", "utilization": 0.5,
        "status": "allowed",
    }  # fmt: skip
    assert row["resets_at"] == datetime.fromtimestamp(resets, UTC).isoformat().replace(
        "+00:00", "Z"
    )
    assert row["label"] == "work"
    assert row["rate_per_hour"] == pytest.approx(0.6)  # 30 points in half an hour
    assert row["runs_out_before_reset"] is True  # 50% left at 60%/h: 50 min, reset in 4 h
    assert row["share_by_session"] == pytest.approx({"s1": 0.075, "s2": 0.225})
    assert main(["quota"]) == 0
    table = capsys.readouterr().out
    assert "work" in table and "50%" in table and "share (estimate) by session" in table
