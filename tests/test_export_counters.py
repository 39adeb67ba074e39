"""The exporters' counters, read from a ledger: labels bounded and never taken back,
statuses as documented, repo labels as configured, and the billing seam."""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from devmeter.export.counters import LedgerCounters, load_salt
from devmeter.export.prometheus import LedgerCollector
from devmeter.export.settings import Labels
from devmeter.ledger import write_calls
from devmeter.usage import Attribution, Call, Usage


def call(repo: str | None, cost: str | None = "0.01", **kw: object) -> Call:
    base = Call(
        ts=time.time(),  # now, not at import: a full run takes minutes to reach a test
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-4-8",
        model="claude-opus-4-8",
        attribution=Attribution(tool="claude-code", session="s1", repo=repo),
        usage=Usage(input_tokens=10, cache_read_tokens=20, cache_write_tokens=30, output_tokens=40),
        cost_usd=None if cost is None else Decimal(cost),
        price_source="test",
        status=200,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def scrape(counters: LedgerCounters) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(counters))
    return generate_latest(registry).decode()


def series(text: str, name: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


def counters(tmp_path: Path, **labels: object) -> LedgerCounters:
    return LedgerCounters(tmp_path / "ledger.sqlite", tmp_path, Labels(**labels), "box")  # type: ignore[arg-type]


def test_the_first_repos_keep_their_labels_and_later_ones_are_other(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [call("/src/alpha"), call("/src/beta"), call("/src/gamma")])
    c = counters(tmp_path, repo_limit=2)
    first = series(scrape(c), "devmeter_cost_usd_total")
    assert {k.split('repo="')[1].split('"')[0] for k in first} == {"alpha", "beta", "other"}
    # A new repo that outspends them all still does not displace a label already given,
    # so no series shrinks; `other` only grows.
    write_calls(ledger, [call("/src/delta", cost="5"), call(None)])
    later = series(scrape(c), "devmeter_cost_usd_total")
    for key, value in first.items():
        assert later[key] >= value
    other = next(k for k in later if 'repo="other"' in k)
    assert later[other] == 5.01
    assert any('repo="unattributed"' in k for k in later)


def test_repo_label_modes(tmp_path: Path) -> None:
    write_calls(tmp_path / "ledger.sqlite", [call("/home/ann/work/payroll")])
    assert 'repo="/home/ann/work/payroll"' in scrape(counters(tmp_path, repo_label="path"))
    named = scrape(counters(tmp_path, repo_label="name"))
    assert 'repo="payroll"' in named and "/home/ann" not in named
    hashed = scrape(counters(tmp_path, repo_label="hash"))
    assert "payroll" not in hashed and 'repo="repo-' in hashed
    # The same salt next time: a repo keeps its hash across restarts.
    again = scrape(counters(tmp_path, repo_label="hash"))
    assert series(again, "devmeter_cost_usd_total") == series(hashed, "devmeter_cost_usd_total")
    assert load_salt(tmp_path) == load_salt(tmp_path)


def test_statuses_errors_blocked_and_savings(tmp_path: Path) -> None:
    write_calls(
        tmp_path / "ledger.sqlite",
        [
            call("/r"),
            call("/r", status=429, cost="0"),
            call("/r", status=200, complete=False),
            call("/r", status=None, cost="0"),
            call("/r", status=402, cost="0", error="devmeter: the day reached its $5.00 cap"),
            call(
                "/r",
                routing="routed",
                route_rule="bg-to-haiku",
                cost="0.01",
                alt_cost_usd=Decimal("0.05"),
            ),
            call("/r", cost=None),
        ],
    )
    text = scrape(counters(tmp_path))
    requests = series(text, "devmeter_requests_total")
    assert {k.split('status="')[1].split('"')[0]: v for k, v in requests.items()} == {
        "ok": 3.0,
        "error": 3.0,
        "blocked": 1.0,
    }
    errors = series(text, "devmeter_errors_total")
    assert {k.split('code="')[1].split('"')[0]: v for k, v in errors.items()} == {
        "429": 1.0,
        "cut": 1.0,
        "none": 1.0,
    }
    assert sum(series(text, "devmeter_blocked_requests_total").values()) == 1
    assert sum(series(text, "devmeter_unpriced_requests_total").values()) == 1
    saved = series(text, "devmeter_routing_savings_usd_total")
    assert list(saved.values()) == [0.04] and 'rule="bg-to-haiku"' in next(iter(saved))
    assert "session=" not in text and '"s1"' not in text  # sessions are never a label


def test_imported_history_rows_count_as_ok_not_as_errors(tmp_path: Path) -> None:
    # A transcript line (devmeter import) is a response the tool got: it has no HTTP
    # status only because no proxy saw it, which must not read as "no answer".
    imported = Usage(input_tokens=7, output_tokens=9)  # no live row's twin (same counts)
    write_calls(
        tmp_path / "ledger.sqlite",
        [
            call("/r"),
            call("/r", status=None, source="import", endpoint="claude-code.import", usage=imported),
            call("/r", status=None, source="import", endpoint="codex.import", usage=imported),
            call("/r", status=None, cost="0"),  # a live call with no answer stays an error
        ],
    )
    text = scrape(counters(tmp_path))
    requests = series(text, "devmeter_requests_total")
    assert {k.split('status="')[1].split('"')[0]: v for k, v in requests.items()} == {
        "ok": 3.0,
        "error": 1.0,
    }
    errors = series(text, "devmeter_errors_total")
    assert {k.split('code="')[1].split('"')[0]: v for k, v in errors.items()} == {"none": 1.0}


def test_cost_carries_the_billing_mode_the_ledger_records(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    write_calls(
        ledger,
        [
            call("/r", billing="api"),
            call("/r", billing="subscription", cost="0.02"),
            call("/r", billing="subscription", cost="0.03"),
        ],
    )
    cost = series(scrape(counters(tmp_path)), "devmeter_cost_usd_total")
    by_billing = {k.split('billing="')[1].split('"')[0]: v for k, v in cost.items()}
    assert by_billing == {"api": 0.01, "subscription": 0.05}


def test_no_ledger_yet_exports_nothing_and_does_not_fail(tmp_path: Path) -> None:
    text = scrape(counters(tmp_path))
    assert "devmeter_cost_usd_total{" not in text


def test_the_grafana_dashboard_reads_only_metrics_devmeter_exports(tmp_path: Path) -> None:
    import json
    import re

    dashboard = json.loads(
        (
            Path(__file__).resolve().parent.parent / "packaging" / "grafana-dashboard.json"
        ).read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bdevmeter_[a-z_]+", e)}
    write_calls(tmp_path / "ledger.sqlite", [call("/r")])
    # Every family, with samples or not yet (no cap set, no routing yet): its HELP line.
    exported = set(re.findall(r"^# HELP (devmeter_[a-z_]+)", scrape(counters(tmp_path)), re.M))
    assert used and used <= exported, used - exported


def test_scrapes_from_different_threads_each_see_the_ledger(tmp_path: Path) -> None:
    # prometheus-client answers each scrape on a new thread; sqlite3 connections are tied
    # to the thread that opened them. Each thread stays alive until the end, so no two
    # share a thread id (a finished thread's id is reused at once).
    import threading

    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [call("/r")])
    c = counters(tmp_path)
    seen: list[float] = []
    finish = threading.Event()

    def scrape_once(scraped: threading.Event) -> None:
        seen.append(sum(series(scrape(c), "devmeter_requests_total").values()))
        scraped.set()
        finish.wait(10)

    workers = []
    for _ in range(3):
        scraped = threading.Event()
        worker = threading.Thread(target=scrape_once, args=(scraped,))
        worker.start()
        workers.append(worker)
        assert scraped.wait(10)
        write_calls(ledger, [call("/r")])
    finish.set()
    for worker in workers:
        worker.join()
    assert seen == [1.0, 2.0, 3.0]


def test_gauges_live_sessions_burn_rate_and_budget_state(tmp_path: Path) -> None:
    from devmeter.budget import parse_budgets

    write_calls(
        tmp_path / "ledger.sqlite",
        [call("/r", cost="0.50"), call("/r", cost="0.25"), call("/r", ts=time.time() - 7200)],
    )
    budgets = parse_budgets(
        {"day": {"notify_usd": [0.5], "block_usd": 2}, "session": {"block_usd": 0.5}}
    )
    c = LedgerCounters(tmp_path / "ledger.sqlite", tmp_path, Labels(), "box", budgets=budgets)
    text = scrape(c)
    assert series(text, "devmeter_live_sessions") == {
        'devmeter_live_sessions{machine="box",tool="claude-code"}': 1.0
    }
    # $0.75 in the last 10 minutes is $4.50 an hour; the call two hours ago is not in it.
    assert series(text, "devmeter_burn_rate_usd_per_hour") == {
        'devmeter_burn_rate_usd_per_hour{machine="box"}': 4.5
    }
    state = {
        k.split('scope="')[1].split('"')[0]: v
        for k, v in series(text, "devmeter_budget_state").items()
    }
    assert state == {"day": 1.0, "session": 2.0, "repo": 0.0, "month": 0.0}
    caps = {
        k.split('scope="')[1].split('"')[0]: v
        for k, v in series(text, "devmeter_budget_cap_usd").items()
    }
    assert caps == {"day": 2.0, "session": 0.5}


def test_quota_gauges_label_accounts_and_leave_out_windows_past_their_reset(
    tmp_path: Path,
) -> None:
    from devmeter.export.otlp import metrics_request
    from devmeter.ledger import UPSERT_QUOTA, connect, quota_row
    from devmeter.quota import Snapshot
    from tests.otlp_receiver import attrs

    now = time.time()
    ledger = tmp_path / "ledger.sqlite"
    write_calls(ledger, [call("/r")])
    conn = connect(ledger)
    for account, window, util, resets in (
        ("acct-aaaa", "5h", 0.62, now + 3600),
        ("acct-aaaa", "7d", 0.31, now + 86400),
        ("acct-bbbb", "5h", 0.97, now - 60),  # reset a minute ago: its 97% is stale
        ("acct-cccc", "requests", 0.25, None),
    ):
        conn.execute(UPSERT_QUOTA, quota_row(Snapshot(now, "anthropic", account, window, util,
                                                      resets, "allowed")))  # fmt: skip
    conn.commit()
    conn.close()
    c = LedgerCounters(ledger, tmp_path, Labels(), "box", accounts={"acct-aaaa": "work"})
    text = scrape(c)
    assert series(text, "devmeter_quota_utilization_ratio") == {
        'devmeter_quota_utilization_ratio{account="acct-cccc",machine="box",provider="anthropic",'
        'window="requests"}': 0.25,
        'devmeter_quota_utilization_ratio{account="work",machine="box",provider="anthropic",'
        'window="5h"}': 0.62,
        'devmeter_quota_utilization_ratio{account="work",machine="box",provider="anthropic",'
        'window="7d"}': 0.31,
    }
    resets = series(text, "devmeter_quota_reset_timestamp_seconds")
    assert sorted(resets.values()) == [now + 3600, now + 86400]  # no reset time: no sample

    # OTLP: the same windows, as gauges.
    sent = metrics_request(c, now).resource_metrics[0].scope_metrics[0].metrics
    found = {m.name: m for m in sent}
    points = {
        (attrs(p.attributes)["devmeter.account"], attrs(p.attributes)["devmeter.quota.window"]):
        p.as_double for p in found["devmeter.quota.utilization"].gauge.data_points
    }  # fmt: skip
    assert points == {("work", "5h"): 0.62, ("work", "7d"): 0.31, ("acct-cccc", "requests"): 0.25}
    assert found["devmeter.quota.utilization"].unit == "1"
    assert len(found["devmeter.quota.reset_time"].gauge.data_points) == 2
