"""The dashboard in a real browser (Debian's headless `chromium`) over a real proxy.

What this proves: the page Chromium renders (not just the HTML the server sends) shows,
row by row, the exact figures of `devmeter report --json`, to the cent on screen; and
a call made through a real `devmeter proxy` while the page is open shows up in it with
no reload: a marker set on the page's `window` survives, so the polling script changed
the DOM in place; and its Pause button, a real form POST, gets through the Origin and
token checks. DEVMETER_SCREENSHOTS=DIR also saves the today view and a session page.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from devmeter import control
from devmeter.paths import paths
from devmeter.reports import format_usd
from tests.fake_upstream import FakeUpstream
from tests.headless_chromium import Chromium, chromium_path
from tests.proxy_harness import start_proxy
from tests.test_dashboard import SESSION, seed

pytestmark = [
    pytest.mark.proxy,
    pytest.mark.skipif(
        chromium_path() is None, reason="needs chromium (scripts/test.sh installs it)"
    ),
]

ROWS_JS = """JSON.stringify(Array.from(document.querySelectorAll('table.by-repo tr[data-key]'))
  .map(tr => [tr.dataset.key, tr.querySelector('[data-usd]').dataset.usd,
              tr.querySelector('.usd').textContent]))"""
TOTAL_JS = "document.querySelector('[data-figure=today-total]').dataset.usd"


def report_json(*argv: str) -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "devmeter", "report", "--json", *argv],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return list(json.loads(out.stdout))


@pytest.fixture
def dashboard_url(devmeter_home: Path) -> Iterator[str]:
    seed(devmeter_home, time.time())
    proc = subprocess.Popen([sys.executable, "-m", "devmeter", "dashboard", "--no-open"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    yield proc.stdout.readline().strip()
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def browser() -> Iterator[Chromium]:
    chromium = Chromium()
    yield chromium
    chromium.close()


def test_rendered_page_matches_report_and_updates_live(
    devmeter_home: Path, dashboard_url: str, browser: Chromium, upstream: FakeUpstream
) -> None:
    browser.open(dashboard_url, "document.querySelector('[data-figure=today-total]')")
    rows = json.loads(browser.eval(ROWS_JS))
    expected = {r["key"]: r for r in report_json("--by", "repo", "--since", "today")}
    assert {key for key, _, _ in rows} == set(expected) and len(rows) == 3
    for key, exact, shown in rows:
        report = expected[key]
        assert float(exact) == pytest.approx(report["cost_usd"], abs=1e-12)
        # On screen: the cents `devmeter report` prints, or "unpriced" as it does.
        priced = report["unpriced"] < report["requests"]  # type: ignore[operator]
        assert shown == format_usd(Decimal(str(report["cost_usd"])) if priced else None)
    assert "unpriced" in [shown for _, _, shown in rows]  # the curl call's local model
    shots = os.environ.get("DEVMETER_SCREENSHOTS")
    if shots:
        browser.screenshot(Path(shots) / "dashboard-today.png")

    before = Decimal(browser.eval(TOTAL_JS))
    browser.eval("window.devmeterMarker = 'same page'")
    upstream.reset()
    proxy = start_proxy(devmeter_home, upstream.url)  # the same ledger as the page's
    proxy.skip_existing()
    try:
        http = anthropic.DefaultHttpxClient(
            proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
        )
        client = anthropic.Anthropic(api_key="sk-ant-test", http_client=http)
        client.messages.create(model="claude-opus-4-1", max_tokens=16,
                               messages=[{"role": "user", "content": "hi"}])  # fmt: skip
        (row,) = proxy.new_calls(1)
    finally:
        proxy.stop()
    assert row["cost_usd"] > 0
    after = before + row["cost_usd"]
    browser.wait_for(f"{TOTAL_JS} === '{after}' || Number({TOTAL_JS}) === {float(after)}")
    assert browser.eval("window.devmeterMarker") == "same page"  # no reload happened
    total = report_json("--by", "day", "--since", "today")
    assert Decimal(browser.eval(TOTAL_JS)) == pytest.approx(Decimal(str(total[0]["cost_usd"])))

    # The page's own Pause button: a real browser's POST passes the Origin and token checks.
    browser.eval("document.querySelector('form[action=\"/api/pause\"] button').click()")
    browser.wait_for("document.querySelector('form[action=\"/api/resume\"]')")
    assert control.load(control.control_path(paths().data_dir)).paused

    if shots:
        browser.open(
            dashboard_url.replace("/?", f"/session?id={SESSION}&"),
            "document.querySelector('[data-figure=session-total]')",
        )
        browser.screenshot(Path(shots) / "dashboard-session.png")


def test_period_and_session_pages_update_live(
    devmeter_home: Path, dashboard_url: str, browser: Chromium, upstream: FakeUpstream
) -> None:
    """A call through a real proxy shows up, with no reload, on a period page and on its
    session's page open side by side (two tabs, each polling its own fragment)."""
    week = dashboard_url.replace("/?", "/period?p=7d&by=model&")
    browser.open(week, "document.querySelector('[data-figure=period-total]')")
    week_tab = browser.session
    period_js = "document.querySelector('[data-figure=period-total]').dataset.usd"
    week_before = Decimal(browser.eval(period_js))
    browser.eval("window.devmeterMarker = 'week'")
    browser.open(dashboard_url.replace("/?", f"/session?id={SESSION}&"),
                 "document.querySelector('[data-figure=session-total]')")  # fmt: skip
    session_js = "document.querySelector('[data-figure=session-total]').dataset.usd"
    session_before = Decimal(browser.eval(session_js))
    assert browser.eval("document.querySelectorAll('table.calls tr[data-n]').length") == 2
    browser.eval("window.devmeterMarker = 'session'")

    upstream.reset()
    proxy = start_proxy(devmeter_home, upstream.url)
    proxy.skip_existing()
    try:
        http = anthropic.DefaultHttpxClient(
            proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
        )
        client = anthropic.Anthropic(api_key="sk-ant-test", http_client=http)
        client.messages.create(model="claude-opus-4-1", max_tokens=16,
                               messages=[{"role": "user", "content": "hi"}],
                               extra_headers={"X-Devmeter-Session": SESSION})  # fmt: skip
        (row,) = proxy.new_calls(1)
    finally:
        proxy.stop()
    assert row["session"] == SESSION and row["cost_usd"] > 0
    cost = Decimal(str(row["cost_usd"]))

    browser.wait_for("document.querySelectorAll('table.calls tr[data-n]').length === 3")
    assert Decimal(browser.eval(session_js)) == pytest.approx(session_before + cost)
    assert browser.eval("window.devmeterMarker") == "session"  # no reload happened
    browser.session = week_tab
    browser.wait_for(f"Number({period_js}) > {float(week_before)}")
    assert Decimal(browser.eval(period_js)) == pytest.approx(week_before + cost)
    assert browser.eval("window.devmeterMarker") == "week"
    since = (date.today() - timedelta(days=6)).isoformat()
    total = sum(Decimal(str(r["cost_usd"])) for r in report_json("--by", "day", "--since", since))
    assert Decimal(browser.eval(period_js)) == pytest.approx(total)
