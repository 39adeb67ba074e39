"""The dashboard's period and session pages as Chromium renders them, against the CLI.

One seeded ledger, one in-process `Dashboard` and one headless Chromium for the module
(each test reads a different page); every figure read from the rendered page is
compared with what `devmeter report ... --json` prints over the same ledger: a custom
period (picked with the page's own date form), billed vs covered, routing's savings and
would-have-saved per rule, a session's tokens by kind per call and whether each call was
routed, a live session's sparkline, and the routing switch (a real form POST).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import control
from devmeter.config import load
from devmeter.dashboard.server import Dashboard
from devmeter.ledger import write_calls
from devmeter.paths import Paths, paths
from devmeter.reports import format_usd
from devmeter.usage import Attribution, Call, Usage
from tests.headless_chromium import Chromium, chromium_path

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="needs chromium (scripts/test.sh installs it)"
)

SESSION = "9d3c1a77-0b5e-4c55-8f0e-aa55cc77ee11"
LIVE = "live-sess-42"
# The live session's calls: mid-way through 5-minute steps of the last hour, so the page
# (rendered a few seconds later) puts each in the step this test expects.
LIVE_STEPS = {2: "0.25", 7: "0.5", 11: "1.125"}


def call(ts: float, cost: str | None, repo: str, model: str, session: str | None,
         billing: str = "unknown", **extra: object) -> Call:  # fmt: skip
    usage = Usage(
        input_tokens=int(extra.pop("input_tokens", 1000)),  # type: ignore[call-overload]
        cache_read_tokens=int(extra.pop("cache_read_tokens", 4000)),  # type: ignore[call-overload]
        cache_write_tokens=int(extra.pop("cache_write_tokens", 0)),  # type: ignore[call-overload]
        cache_write_1h_tokens=int(extra.pop("cache_write_1h_tokens", 0)),  # type: ignore[call-overload]
        output_tokens=int(extra.pop("output_tokens", 200)),  # type: ignore[call-overload]
        reasoning_tokens=int(extra.pop("reasoning_tokens", 0)),  # type: ignore[call-overload]
    )
    return Call(
        ts=ts, provider="anthropic", endpoint="anthropic.messages", host="api.anthropic.com",
        requested_model=str(extra.pop("requested_model", model)), model=model,
        attribution=Attribution(tool="claude-code", session=session, repo=repo, branch="main"),
        usage=usage, cost_usd=None if cost is None else Decimal(cost), price_source="test",
        status=200, billing=billing, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def seed(home: Path, now: float) -> None:
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0).timestamp()
    day = 86400
    calls = [
        # Five and two days ago: the custom period's first and last days.
        call(midnight - 5 * day + 3600, "1.5", "/src/api", "claude-opus-4-1", "old-a", "api"),
        call(
            midnight - 5 * day + 7200,
            "0.75",
            "/src/web",
            "claude-sonnet-4-5",
            "old-a",
            "subscription",
        ),  # fmt: skip
        call(midnight - 2 * day + 60, "2.25", "/src/web", "claude-sonnet-4-5", "old-b", "api"),
        call(
            midnight - 2 * day + 86399,
            "0.125",
            "/src/api",
            "claude-opus-4-1",
            "old-b",
            "subscription",
        ),  # fmt: skip
        call(midnight - 1 * day + 10, "9.0", "/src/api", "claude-opus-4-1", "old-c", "api"),
        # Routing: one routed call (saved 0.5 - 0.1), two shadowed (would save 0.8 each).
        call(
            midnight - 1 * day + 600,
            "0.1",
            "/src/api",
            "claude-haiku-4-5",
            SESSION,
            "overage",
            requested_model="claude-opus-4-1",
            routing="routed",
            route_rule="cheap-haiku",
            route_target="claude-haiku-4-5",
            alt_cost_usd=Decimal("0.5"),
            cache_write_tokens=700,
            cache_write_1h_tokens=300,
            reasoning_tokens=50,
        ),  # fmt: skip
        call(
            midnight - 1 * day + 900,
            "1.0",
            "/src/api",
            "claude-opus-4-1",
            SESSION,
            "subscription",
            routing="shadow",
            route_rule="try-sonnet",
            route_target="claude-sonnet-4-5",
            alt_cost_usd=Decimal("0.2"),
            output_tokens=900,
        ),  # fmt: skip
        call(
            midnight - 1 * day + 1200,
            "1.0",
            "/src/api",
            "claude-opus-4-1",
            "old-d",
            routing="shadow",
            route_rule="try-sonnet",
            route_target="claude-sonnet-4-5",
            alt_cost_usd=Decimal("0.2"),
        ),  # fmt: skip
    ]
    start = now - 3600
    calls += [
        call(start + 300 * step + 150, cost, "/src/live", "claude-sonnet-4-5", LIVE)
        for step, cost in LIVE_STEPS.items()
    ]
    write_calls(home / "ledger.sqlite", calls)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, Paths]]:
    home = tmp_path_factory.mktemp("devmeter-home")
    seed(home, time.time())
    where = paths({"DEVMETER_HOME": str(home)})
    server = Dashboard(where, load(where.config_file))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server, where
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser(site: tuple[Dashboard, Paths]) -> Iterator[Chromium]:
    chromium = Chromium()
    chromium.open(site[0].url, "document.querySelector('[data-figure=today-total]')")
    yield chromium
    chromium.close()


def report(where: Paths, *argv: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "devmeter", "report", "--json", *argv],
        capture_output=True, text=True, check=True,
        env={**os.environ, "DEVMETER_HOME": str(where.ledger.parent)},
    )  # fmt: skip
    return list(json.loads(out.stdout))


def usd(value: object) -> Decimal:
    return Decimal(str(value))


def shown(browser: Chromium, figure: str) -> tuple[Decimal, str]:
    """A figure's exact `data-usd` and the text on screen."""
    got = browser.eval(
        f"(function (e) {{ return [e.dataset.usd, e.textContent]; }})"
        f"(document.querySelector('[data-figure={figure}]'))"
    )
    return Decimal(got[0]), got[1]


def test_custom_period_from_the_date_form_is_report_since_until(
    site: tuple[Dashboard, Paths], browser: Chromium
) -> None:
    server, where = site
    today = datetime.now().date()
    first, last = today - timedelta(days=5), today - timedelta(days=2)
    browser.open(f"{server.origin}/period?p=7d", "document.querySelector('form.custom')")
    browser.eval(
        f"document.querySelector('form.custom [name=from]').value = '{first}';"
        f"document.querySelector('form.custom [name=to]').value = '{last}';"
        "document.querySelector('form.custom button').click()"
    )
    browser.wait_for(f"document.body.textContent.includes('{first} to {last}')")
    rows = json.loads(browser.eval(
        "JSON.stringify(Array.from(document.querySelectorAll('table.by-repo tr[data-key]'))"
        ".map(tr => [tr.dataset.key, tr.querySelector('[data-usd]').dataset.usd]))"
    ))  # fmt: skip
    until = (last + timedelta(days=1)).isoformat()
    expected = report(where, "--by", "repo", "--since", first.isoformat(), "--until", until)
    assert {k: Decimal(v) for k, v in rows} == {r["key"]: usd(r["cost_usd"]) for r in expected}
    # 1.5 + 0.75 five days ago, 2.25 + 0.125 two days ago; not yesterday's 9.0 nor today's.
    total, text = shown(browser, "period-total")
    assert total == Decimal("4.625") and text == "$4.63"
    assert browser.eval("document.querySelectorAll('svg.chart rect').length") >= 3
    # One bar per day of the period, labelled with its date.
    assert browser.eval(f"document.querySelector('svg.chart').textContent.includes('{last}')")


def test_bad_custom_period_says_what_to_send(site: tuple[Dashboard, Paths]) -> None:
    import http.client

    server, _ = site
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    headers = {"Host": server.origin.removeprefix("http://"),
               "Cookie": f"{server.cookie_name}={server.token}"}  # fmt: skip
    for query, says in (("from=2026-11-05&to=2026-11-01", "swap"),
                        ("from=yesterday&to=2026-11-01", "YYYY-MM-DD"),
                        ("from=2020-01-01&to=2026-01-01", "366 days")):  # fmt: skip
        conn.request("GET", f"/period?p=custom&{query}", headers=headers)
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 400 and says in body and "Traceback" not in body


def test_billed_and_covered_are_the_reports(
    site: tuple[Dashboard, Paths], browser: Chromium
) -> None:
    server, where = site
    browser.open(f"{server.origin}/period?p=30d&by=repo", "document.querySelector('.total')")
    since = (datetime.now().date() - timedelta(days=29)).isoformat()
    rows = report(where, "--by", "repo", "--since", since)
    billed, billed_text = shown(browser, "billed")
    covered, covered_text = shown(browser, "covered")
    assert billed == sum(usd(r["billed_usd"]) for r in rows) == Decimal("12.85")
    assert covered == sum(usd(r["covered_usd"]) for r in rows) == Decimal("1.875")
    assert (billed_text, covered_text) == (format_usd(billed), format_usd(covered))
    # Per repo too, in the table's billed and covered columns.
    per_repo = json.loads(browser.eval(
        "JSON.stringify(Array.from(document.querySelectorAll('table.by-repo tr[data-key]'))"
        ".map(tr => [tr.dataset.key, tr.querySelector('.billed [data-usd]').dataset.usd,"
        " tr.querySelector('.covered [data-usd]').dataset.usd]))"
    ))  # fmt: skip
    assert {k: (Decimal(b), Decimal(c)) for k, b, c in per_repo} == {
        r["key"]: (usd(r["billed_usd"]), usd(r["covered_usd"])) for r in rows
    }


def test_routing_savings_per_rule_are_report_savings(
    site: tuple[Dashboard, Paths], browser: Chromium
) -> None:
    server, where = site
    browser.open(f"{server.origin}/period?p=7d", "document.querySelector('table.savings')")
    since = (datetime.now().date() - timedelta(days=6)).isoformat()
    expected = report(where, "--savings", "--since", since)
    rows = json.loads(browser.eval(
        "JSON.stringify(Array.from(document.querySelectorAll('table.savings tr[data-mode]'))"
        ".map(tr => [tr.dataset.mode, tr.dataset.rule, tr.cells[4].textContent,"
        " tr.cells[7].querySelector('[data-usd]').dataset.usd]))"
    ))  # fmt: skip
    assert rows == [
        [r["routing"], r["rule"], f"{r['requests']:,}", str(usd(r["saving_usd"]))] for r in expected
    ]
    assert shown(browser, "routing-saved")[0] == Decimal("0.4")  # 0.5 asked, 0.1 paid
    assert shown(browser, "routing-would-save")[0] == Decimal("1.6")  # twice 1.0 - 0.2


def test_session_page_tokens_by_kind_and_routing_per_call(
    site: tuple[Dashboard, Paths], browser: Chromium
) -> None:
    server, where = site
    browser.open(f"{server.origin}/session?id={SESSION}",
                 "document.querySelector('[data-figure=session-total]')")  # fmt: skip
    titles = browser.eval(
        "Array.from(document.querySelectorAll('svg.chart')[0].querySelectorAll('rect title'))"
        ".map(t => t.textContent)"
    )
    drawn: dict[tuple[str, str], int] = {}
    for title in titles:
        step, kind, tokens = title.split(" · ")
        drawn[(step.split()[0], kind)] = int(tokens.removesuffix(" tokens").replace(",", ""))
    calls = [r for r in report(where, "--by", "request") if r["session"] == SESSION]
    assert len(calls) == 2
    for n, c in enumerate(calls, start=1):
        one_hour = int(c["cache_write_1h_tokens"])  # type: ignore[call-overload]
        kinds = {
            "input": c["input_tokens"], "cache read": c["cache_read_tokens"],
            "cache write 5m": int(c["cache_write_tokens"]) - one_hour,  # type: ignore[call-overload]
            "cache write 1h": one_hour, "output": c["output_tokens"],
            "reasoning": c["reasoning_tokens"],
        }  # fmt: skip
        assert {k: v for (s, k), v in drawn.items() if s == f"#{n}"} == {
            k: v for k, v in kinds.items() if v
        }
    assert drawn[("#1", "cache write 1h")] == 300 and drawn[("#1", "reasoning")] == 50
    routing = browser.eval(
        "Array.from(document.querySelectorAll('table.calls td.routing')).map(t => t.textContent)"
    )
    assert routing == [
        "routed → claude-haiku-4-5 · cheap-haiku",
        "shadow → claude-sonnet-4-5 · try-sonnet",
    ]
    total, _ = shown(browser, "session-total")
    assert total == sum(usd(c["cost_usd"]) for c in calls) == Decimal("1.1")


def test_live_session_sparkline_is_its_spend_per_5_minutes(
    site: tuple[Dashboard, Paths], browser: Chromium
) -> None:
    server, _ = site
    browser.open(f"{server.origin}/", f"document.querySelector('tr[data-key=\"{LIVE}\"]')")
    values = browser.eval(
        f"document.querySelector('tr[data-key=\"{LIVE}\"] svg.spark').dataset.values"
    ).split()
    assert len(values) == 12
    expected = [Decimal(LIVE_STEPS.get(n, "0")) for n in range(12)]
    assert [Decimal(v) for v in values] == expected
    # The spend column is the session's whole spend, which the line adds up to here.
    spend = browser.eval(
        f"document.querySelector('tr[data-key=\"{LIVE}\"] [data-usd]').dataset.usd"
    )
    assert Decimal(spend) == sum(expected)


def test_routing_switch_is_a_form_post_like_devmeter_routing(
    site: tuple[Dashboard, Paths], browser: Chromium
) -> None:
    server, where = site
    path = control.control_path(where.data_dir)
    browser.open(f"{server.origin}/period?p=7d", "document.querySelector('form.routing')")
    assert browser.eval("document.querySelector('[data-figure=routing-mode]').textContent") in (
        "off",
        "shadow",
    )
    browser.eval("document.querySelector('form.routing button[value=on]').click()")
    browser.wait_for("document.querySelector('[data-figure=routing-mode]')"
                     "?.textContent === 'on'")  # fmt: skip
    assert control.load(path).routing_mode == "on"
    assert browser.eval("location.pathname + location.search") == "/period?p=7d"  # stayed
    out = subprocess.run(
        [sys.executable, "-m", "devmeter", "routing"], capture_output=True, text=True,
        check=True, env={**os.environ, "DEVMETER_HOME": str(where.ledger.parent)},
    )  # fmt: skip
    assert out.stdout.startswith("routing mode: on (set with `devmeter routing`)")
    browser.eval("document.querySelector('form.routing button[value=config]').click()")
    browser.wait_for("!document.querySelector('form.routing button[value=config]')")
    assert control.load(path).routing_mode is None


def test_days_are_local_dates(site: tuple[Dashboard, Paths]) -> None:
    """The period's days are the local calendar's (the picker's dates)."""
    from devmeter.dashboard import pages

    chosen = pages.period("custom", time.time(), "2026-03-01", "2026-03-31")
    assert chosen.days[0] == date(2026, 3, 1) and len(chosen.days) == 31
    assert chosen.until == datetime(2026, 4, 1).timestamp()
