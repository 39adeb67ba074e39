"""`devmeter dashboard`: its security checks, and that its figures are `report --json`'s.

An in-process `Dashboard` on 127.0.0.1, port 0, over a seeded ledger; requests go over
a real socket with http.client, so every header is what a browser (or an attacker's
page) could send. The CLI test runs the real `devmeter dashboard --no-open`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devmeter import control, guard_control
from devmeter.config import load
from devmeter.dashboard.server import Dashboard
from devmeter.ledger import write_calls
from devmeter.paths import paths
from devmeter.usage import Attribution, Call, Usage

SESSION = "5b1f0c2e-7a44-4d1b-9c3e-0123456789ab"


def make_call(ts: float, cost: str | None, repo: str | None, model: str, tool: str,
              session: str | None = SESSION) -> Call:  # fmt: skip
    return Call(
        ts=ts, provider="anthropic", endpoint="anthropic.messages", host="api.anthropic.com",
        requested_model=model, model=model,
        attribution=Attribution(tool=tool, session=session, repo=repo, branch="main"),
        usage=Usage(input_tokens=1200, cache_read_tokens=3000, cache_write_tokens=500,
                    output_tokens=345),
        cost_usd=None if cost is None else Decimal(cost),
        price_source=None if cost is None else "test", status=200, complete=True,
    )  # fmt: skip


def seed(home: Path, now: float) -> None:
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0).timestamp()
    recent = max(midnight + 1, now - 120)
    write_calls(
        home / "ledger.sqlite",
        [
            make_call(recent, "1.234567", "/src/acme-api", "claude-opus-4-1", "claude-code"),
            make_call(recent + 1, "0.003376", "/src/acme-api", "claude-sonnet-4-5", "claude-code"),
            make_call(recent + 2, "2.5", "/src/web", "gpt-5", "codex", "codex-sess-1"),
            make_call(recent + 3, None, None, "my-llama", "curl", None),
            make_call(midnight - 3 * 86400 + 50, "9.99", "/src/web", "gpt-5", "codex", "old-1"),
        ],
    )


@pytest.fixture
def dashboard(devmeter_home: Path) -> Iterator[Dashboard]:
    seed(devmeter_home, time.time())
    where = paths()
    server = Dashboard(where, load(where.config_file))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def request(server: Dashboard, method: str, path: str, headers: dict[str, str] | None = None,
            body: str | None = None) -> http.client.HTTPResponse:  # fmt: skip
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    sent = {"Host": server.origin.removeprefix("http://"), **(headers or {})}
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    response.read_body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def cookie(server: Dashboard) -> dict[str, str]:
    return {"Cookie": f"{server.cookie_name}={server.token}"}


def post(server: Dashboard, path: str, form: str, origin: str | None) -> int:
    headers = {"Content-Type": "application/x-www-form-urlencoded", **cookie(server)}
    if origin is not None:
        headers["Origin"] = origin
    return request(server, "POST", path, headers, form).status


def test_bound_to_loopback_only(dashboard: Dashboard) -> None:
    assert dashboard.socket.getsockname()[0] == "127.0.0.1"
    assert dashboard.url.startswith(f"http://127.0.0.1:{dashboard.server_address[1]}/?token=")


@pytest.mark.parametrize("host", ["evil.example", "localhost", "127.0.0.1", "evil.example:{port}",
                                  "localhost:{port}", ""])  # fmt: skip
def test_wrong_host_is_refused(dashboard: Dashboard, host: str) -> None:
    """DNS rebinding: a page on another name that resolves to 127.0.0.1 sends its own
    name as Host; only the exact `127.0.0.1:PORT` the URL was opened with is served."""
    host = host.format(port=dashboard.server_address[1])
    for path in (f"/?token={dashboard.token}", "/", "/api/today"):
        response = request(dashboard, "GET", path, {"Host": host, **cookie(dashboard)})
        assert response.status == 421
        assert b"Today" not in response.read_body  # type: ignore[attr-defined]
    headers = {"Host": host, "Origin": dashboard.origin, **cookie(dashboard)}
    assert (
        request(dashboard, "POST", "/api/pause", headers, f"token={dashboard.token}").status == 421
    )


@pytest.mark.parametrize("path", ["/", "/api/today", "/period?p=7d", f"/session?id={SESSION}",
                                  "/dashboard.js"])  # fmt: skip
def test_no_or_wrong_token_is_refused(dashboard: Dashboard, path: str) -> None:
    assert request(dashboard, "GET", path).status == 403
    wrong = {"Cookie": f"{dashboard.cookie_name}={dashboard.token[:-1]}x"}
    assert request(dashboard, "GET", path, wrong).status == 403
    joiner = "&" if "?" in path else "?"
    assert request(dashboard, "GET", f"{path}{joiner}token=nope").status == 403
    assert request(dashboard, "GET", path, cookie(dashboard)).status == 200


def test_url_token_sets_a_strict_httponly_cookie_and_leaves_the_url(dashboard: Dashboard) -> None:
    response = request(dashboard, "GET", f"/period?p=30d&token={dashboard.token}")
    assert response.status == 303
    assert response.getheader("Location") == "/period?p=30d"
    set_cookie = response.getheader("Set-Cookie") or ""
    assert set_cookie.startswith(f"{dashboard.cookie_name}={dashboard.token};")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie


def test_cross_origin_post_is_refused(dashboard: Dashboard) -> None:
    where = paths()
    form = f"token={dashboard.token}"
    for origin in ("http://evil.example", "null", f"http://localhost:{dashboard.server_address[1]}",
                   None):  # fmt: skip
        assert post(dashboard, "/api/pause", form, origin) == 403
    assert post(dashboard, "/api/pause", "token=wrong", dashboard.origin) == 403
    assert post(dashboard, "/api/pause", "", dashboard.origin) == 403
    huge = {"Origin": dashboard.origin, "Content-Length": "99999999", **cookie(dashboard)}
    assert request(dashboard, "POST", "/api/pause", huge).status == 413
    assert not control.load(control.control_path(where.data_dir)).paused
    # A GET never changes anything.
    assert request(dashboard, "GET", "/api/pause", cookie(dashboard)).status == 404
    assert not control.load(control.control_path(where.data_dir)).paused
    # The page's own form: same Origin and the token.
    assert post(dashboard, "/api/pause", form, dashboard.origin) == 303
    assert control.load(control.control_path(where.data_dir)).paused
    assert post(dashboard, "/api/resume", form, dashboard.origin) == 303
    assert not control.load(control.control_path(where.data_dir)).paused


def test_routing_mode_only_by_a_same_origin_post_with_the_token(dashboard: Dashboard) -> None:
    """The routing switch writes control.json as `devmeter routing MODE` does; a page on
    another origin (or one without the token) cannot flip it."""
    path = control.control_path(paths().data_dir)
    form = f"mode=on&token={dashboard.token}"
    for origin in ("http://evil.example", "null", None):
        assert post(dashboard, "/api/routing", form, origin) == 403
    assert post(dashboard, "/api/routing", "mode=on&token=wrong", dashboard.origin) == 403
    assert request(dashboard, "GET", "/api/routing?mode=on", cookie(dashboard)).status == 404
    assert control.load(path).routing_mode is None
    bad = f"mode=turbo&token={dashboard.token}"
    assert post(dashboard, "/api/routing", bad, dashboard.origin) == 400
    assert post(dashboard, "/api/routing", form, dashboard.origin) == 303
    assert control.load(path).routing_mode == "on"
    back = f"mode=config&token={dashboard.token}"
    assert post(dashboard, "/api/routing", back, dashboard.origin) == 303
    assert control.load(path).routing_mode is None


def test_a_pages_poll_is_304_until_the_ledger_changes(dashboard: Dashboard) -> None:
    """Every page polls `?fragment=1`; the ETag holds while no call or alert landed."""
    frozen = time.time()
    dashboard.clock = lambda: frozen  # the ETag's minute holds still too
    for path in ("/?fragment=1", "/period?p=30d&by=tool&fragment=1",
                 f"/session?id={SESSION}&fragment=1"):  # fmt: skip
        first = request(dashboard, "GET", path, cookie(dashboard))
        etag = first.getheader("ETag") or ""
        assert first.status == 200 and etag and b"<html" not in first.read_body  # type: ignore[attr-defined]
        again = request(dashboard, "GET", path, {"If-None-Match": etag, **cookie(dashboard)})
        assert again.status == 304 and again.read_body == b""  # type: ignore[attr-defined]
        write_calls(paths().ledger, [make_call(time.time(), "0.5", "/src/web", "gpt-5", "codex",
                                               SESSION)])  # fmt: skip
        changed = request(dashboard, "GET", path, {"If-None-Match": etag, **cookie(dashboard)})
        assert changed.status == 200 and changed.getheader("ETag") != etag


def test_lift_a_stopped_sessions_cap_like_devmeter_allow(dashboard: Dashboard) -> None:
    where = paths()
    guard_control.stop(where, SESSION, time.time() - 1)
    path = control.control_path(where.data_dir)
    assert not any(a[0] == "session" and a[1] == SESSION for a in control.load(path).allowed)
    assert post(dashboard, "/api/allow", f"session={SESSION[:10]}&token=x", dashboard.origin) == 403
    status = post(dashboard, "/api/allow", f"session={SESSION[:10]}&token={dashboard.token}",
                  dashboard.origin)  # fmt: skip
    assert status == 303
    assert any(a[0] == "session" and a[1] == SESSION for a in control.load(path).allowed)


def report_usd(*argv: str) -> dict[str, Decimal]:
    """`devmeter report --json ARGV` as key → cost, run as a user would."""
    out = subprocess.run(
        [sys.executable, "-m", "devmeter", "report", "--json", *argv],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {r["key"]: Decimal(str(r["cost_usd"])) for r in json.loads(out.stdout)}


def page(server: Dashboard, path: str) -> str:
    response = request(server, "GET", path, cookie(server))
    assert response.status == 200
    return response.read_body.decode()  # type: ignore[attr-defined]


def figures(html: str, table: str) -> dict[str, Decimal]:
    """`data-key` → exact `data-usd` of each row of one table on the page."""
    part = html.split(f'<table class="{table}">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr data-key="([^"]*)">.*?data-usd="([^"]*)"', part)
    return {key: Decimal(usd) for key, usd in rows}


def assert_same(shown: dict[str, Decimal], expected: dict[str, Decimal]) -> None:
    assert shown.keys() == expected.keys()
    for key, usd in shown.items():
        assert abs(usd - expected[key]) < Decimal("0.000000001"), key


def test_today_and_period_figures_are_report_json_to_the_cent(dashboard: Dashboard) -> None:
    today = page(dashboard, "/")
    shown = figures(today, "by-repo")
    assert len(shown) == 3  # acme-api, web and (unattributed); not 3 days ago
    assert_same(shown, report_usd("--by", "repo", "--since", "today"))
    # Cache hit rate: cache reads over all input, 3000 / (1200 + 3000 + 500) a call.
    web = today.split('<tr data-key="/src/web">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="n cache">63.8%</td>' in web
    total = re.search(r'data-figure="today-total" data-usd="([^"]*)"', today)
    assert total is not None and Decimal(total[1]) == Decimal("3.737943")
    polled = json.loads(page(dashboard, "/api/today"))
    assert polled["total_usd"] == pytest.approx(3.737943, abs=1e-12)
    first_day = datetime.fromtimestamp(time.time() - 6 * 86400).strftime("%Y-%m-%d")
    week = figures(page(dashboard, "/period?p=7d&by=model"), "by-model")
    assert week["gpt-5"] == Decimal("12.49")
    assert_same(week, report_usd("--by", "model", "--since", first_day))


def test_session_page_lists_its_calls_and_escapes_names(dashboard: Dashboard) -> None:
    html = page(dashboard, f"/session?id={SESSION}")
    assert html.count("<tr data-n=") == 2  # its two calls, not the other sessions'
    assert 'data-figure="session-total" data-usd="1.237943"' in html
    assert "Lift this session" in html
    assert "<script>x" not in page(dashboard, "/session?id=%3Cscript%3Ex%3C/script%3E")


def test_cli_prints_the_url_first_and_serves(devmeter_home: Path) -> None:
    seed(devmeter_home, time.time())
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmeter", "dashboard", "--no-open"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and re.fullmatch(r"token=[\w-]{40,}", parts.query)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", f"/?{parts.query}")
        response = conn.getresponse()
        response.read()
        assert response.status == 303
        conn.request("GET", "/", headers={"Cookie": response.getheader("Set-Cookie", "")})
        page = conn.getresponse().read().decode()
        assert 'data-figure="today-total"' in page
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(("days", "step", "by"), [(0, "hour", "repo"), (6, "day", "model"),
                                                  (6, "day", "tool")])  # fmt: skip
def test_chart_series_add_up_to_the_report(devmeter_home: Path, days: int, step: str,
                                           by: str) -> None:  # fmt: skip
    """What the charts draw is what the tables (and `report`) say, key by key, exactly."""
    from devmeter import reports
    from devmeter.ledger import connect_readonly

    now = time.time()
    seed(devmeter_home, now)
    conn = connect_readonly(paths().ledger)
    assert conn is not None
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0).timestamp()
    since = datetime.fromtimestamp(midnight - days * 86400).replace(hour=0).timestamp()
    drawn: dict[str, Decimal] = {}
    for name, key, usd in reports.spend_series(conn, since, step, by):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d( \d\d:00)?", name)
        assert (":00" in name) == (step == "hour")
        drawn[key] = drawn.get(key, Decimal(0)) + usd
    assert drawn == {r["key"]: r["cost_usd"] for r in reports.query(conn, by, since)}
    # The table a page draws beside its chart comes from the same pass: `query`'s rows.
    assert reports.grouped_series(conn, since, step, by)[0] == reports.query(conn, by, since)
    assert sum(drawn.values()) > 0


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe"])
def test_series_steps_are_local_hours_and_days_across_clock_changes(
    devmeter_home: Path, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    """SQLite names each call's local hour and day from the zone's offset per stretch
    between clock changes: across New York's fall back, in a +5:45 zone and in one that
    moves its clocks by half an hour, every call lands where `datetime` puts it."""
    from devmeter import reports
    from devmeter.ledger import connect_readonly

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        start = datetime(2026, 10, 31, 20, 7).timestamp()  # NY: clocks go back on Nov 1
        if zone == "Australia/Lord_Howe":
            start = datetime(2026, 4, 4, 20, 7).timestamp()  # back by 30 min on Apr 5
        calls = [
            make_call(start + i * 431.7, str(Decimal(i + 1) / 1000), f"/src/r{i % 3}",
                      "claude-opus-4-1", "claude-code")
            for i in range(400)
        ]  # fmt: skip
        write_calls(devmeter_home / "ledger.sqlite", calls)
        conn = connect_readonly(paths().ledger)
        assert conn is not None
        since, until = start + 1000.5, start + 400 * 431.7 - 5000.25
        for step, form in (("hour", "%Y-%m-%d %H:00"), ("day", "%Y-%m-%d")):
            want: dict[tuple[str, str], Decimal] = {}
            for c in calls:
                if since <= c.ts < until:
                    name = datetime.fromtimestamp(c.ts).strftime(form)
                    key = (name, c.attribution.repo or "")
                    want[key] = want.get(key, Decimal(0)) + (c.cost_usd or Decimal(0))
            rows, series = reports.grouped_series(conn, since, step, "repo", until)
            assert {(name, key): usd for name, key, usd in series} == want
            assert rows == reports.query(conn, "repo", since, until=until)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_period_days_come_from_the_day_rollup_in_the_writers_zone_only(
    devmeter_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole local days are read from the day rollup, which the writer fills in its own
    zone; read in another zone, the days would be wrong, so the quarter-hour rollup
    answers instead. Either way: the days `datetime` gives, and `query`'s rows."""
    from devmeter import reports
    from devmeter.ledger import connect, connect_readonly

    def local_days(zone: str) -> tuple[float, float, dict[tuple[str, str], Decimal]]:
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        since = datetime(2026, 10, 30).timestamp()  # New York falls back on Nov 1
        until = datetime(2026, 11, 3).timestamp()
        want: dict[tuple[str, str], Decimal] = {}
        for c in calls:
            if since <= c.ts < until:
                key = (datetime.fromtimestamp(c.ts).strftime("%Y-%m-%d"), c.model or "")
                want[key] = want.get(key, Decimal(0)) + (c.cost_usd or Decimal(0))
        return since, until, want

    start = datetime(2026, 10, 29, 12).timestamp()
    calls = [
        make_call(start + i * 1931.3, str(Decimal(i + 1) / 100), "/src/a",
                  ("gpt-5", "claude-opus-4-1")[i % 2], "codex")
        for i in range(250)
    ]  # fmt: skip
    try:
        local_days("America/New_York")
        write_calls(devmeter_home / "ledger.sqlite", calls)  # the writer's zone: New York
        conn = connect_readonly(paths().ledger)
        assert conn is not None
        for zone, from_days in (("America/New_York", True), ("Asia/Kathmandu", False)):
            since, until, want = local_days(zone)
            daily = reports._daily_series(conn, since, until, "model")
            assert (daily is not None) == from_days, zone
            rows, series = reports.grouped_series(conn, since, "day", "model", until)
            assert {(name, key): usd for name, key, usd in series} == want, zone
            assert rows == reports.query(conn, "model", since, until=until)
            open_rows, _ = reports.grouped_series(conn, since, "day", "model")
            assert open_rows == reports.query(conn, "model", since)
        # A deleted call (a live row replacing its imported twin) leaves every rollup.
        since, until, _ = local_days("America/New_York")
        writer = connect(paths().ledger)
        writer.execute("DELETE FROM calls WHERE id % 3 = 0")
        writer.close()
        assert reports._daily_series(conn, since, until, "model") is not None
        rows, _ = reports.grouped_series(conn, since, "day", "model", until)
        assert rows == reports.query(conn, "model", since, until=until)
        assert sum(r["requests"] for r in rows) == sum(
            1 for n, c in enumerate(calls, start=1) if n % 3 and since <= c.ts < until
        )
    finally:
        monkeypatch.undo()
        time.tzset()


def test_cli_without_a_display_opens_no_browser_and_says_where_the_page_is(
    devmeter_home: Path, tmp_path: Path
) -> None:
    # Over SSH, Python's webbrowser runs a console browser (lynx, www-browser) in the
    # foreground: it takes the terminal, and cannot draw the page's charts anyway.
    browsers = tmp_path / "browsers"
    browsers.mkdir()
    opened = tmp_path / "opened"
    for name in ("www-browser", "x-www-browser", "sensible-browser", "xdg-open", "lynx",
                 "w3m", "links", "elinks", "firefox", "chromium", "google-chrome"):  # fmt: skip
        script = browsers / name
        script.write_text(f"#!/bin/sh\necho {name} >> {opened}\n")
        script.chmod(0o755)
    graphical = ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")  # BROWSER: the user's own choice
    env = {k: v for k, v in os.environ.items() if k not in graphical}
    env["PATH"] = f"{browsers}:/usr/bin:/bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmeter", "dashboard", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        port = urlsplit(url).port
        said = proc.stderr.readline()
        assert "no display" in said and f"ssh -L {port}:127.0.0.1:{port}" in said
    finally:
        proc.terminate()
        proc.wait(10)
    assert not opened.exists()


def test_the_billed_line_names_what_no_payer_is_known_for(devmeter_home: Path) -> None:
    # As `devmeter report`: billed, covered and the rest (imported history) add up.
    from dataclasses import replace

    now = time.time()
    recent = max(datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0).timestamp() + 1,
                 now - 120)  # fmt: skip
    write_calls(
        devmeter_home / "ledger.sqlite",
        [
            replace(make_call(recent, "1.25", "/src/a", "claude-opus-4-1", "sdk"), billing="api"),
            replace(
                make_call(recent + 1, "2", "/src/a", "claude-opus-4-1", "claude-code"),
                source="import",
            ),  # fmt: skip
        ],
    )
    where = paths()
    server = Dashboard(where, load(where.config_file))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        html = page(server, "/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert 'data-figure="billed" data-usd="1.25"' in html
    unknown = re.search(r'data-figure="unknown" data-usd="([^"]+)"', html)
    assert unknown is not None and Decimal(unknown.group(1)) == 2 and "payer not known" in html
