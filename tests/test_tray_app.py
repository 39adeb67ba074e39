"""The tray app: its view of the ledger, its menu handlers, its update loop, headless mode."""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter import control
from devmeter.alerts import Alert
from devmeter.budget import Budgets, BudgetTracker, ScopeBudget
from devmeter.config import TEMPLATE, Config
from devmeter.ledger import INSERT_ALERT, alert_row, connect, connect_readonly, write_calls
from devmeter.paths import paths
from devmeter.providers.refusal import refusal
from devmeter.sessions import query_sessions
from devmeter.tray.app import TrayApp, display_problem, report_text
from devmeter.tray.headless import LiveLine, run_headless, status_line
from devmeter.tray.menu import CapRow, MenuItem, TraySnapshot
from devmeter.tray.snapshot import Headline, headline, snapshot
from devmeter.tray.supervisor import ProxyStatus
from devmeter.usage import Attribution, Call, Usage

D = Decimal
NOW = datetime(2026, 3, 15, 12, 0).timestamp()
DAY = 86400.0


def call(
    ts: float,
    cost: str | None = "0.50",
    session: str | None = "s-live",
    repo: str | None = "/src/acme-api",
    tool: str = "claude-code",
    status: int = 200,
    error: str | None = None,
) -> Call:
    return Call(
        ts=ts,
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-sonnet-4-5",
        model="claude-sonnet-4-5",
        attribution=Attribution(tool=tool, session=session, repo=repo),
        usage=Usage(input_tokens=100, output_tokens=20),
        cost_usd=None if cost is None else D(cost),
        price_source="test",
        status=status,
        error=error,
    )


def add_alert(ledger: Path, ts: float, kind: str = "threshold", message: str = "passed $5") -> None:
    conn = connect(ledger)
    alert = Alert(ts, kind, "session", "s-live", D(5), message)  # type: ignore[arg-type]
    conn.execute(INSERT_ALERT, alert_row(alert))
    conn.close()


@pytest.fixture
def where(devmeter_home: Path):
    devmeter_home.mkdir(parents=True, exist_ok=True)
    return paths()


def read(where) -> Any:
    return connect_readonly(where.ledger)


# --- snapshot ------------------------------------------------------------------------------


def test_an_empty_home_is_an_empty_snapshot():
    snap = snapshot(None, NOW, control.Control(), configured_routing="shadow")
    assert snap == TraySnapshot(routing="shadow")
    assert snap.state == "normal"


def test_today_month_live_sessions_and_repos_from_the_ledger(where):
    write_calls(
        where.ledger,
        [
            call(NOW - 60, "1.25"),  # live, today
            call(NOW - 3 * DAY, "10.00"),  # same session, earlier this month
            call(NOW - 2 * 3600, "2.00", session="s-old", repo="/src/web", tool="codex"),
            call(NOW - 120, "0.05", session="s-anon", repo=None, tool="python-sdk"),
            call(NOW - 30, None, session=None, repo=None),  # unpriced, no session
            call(NOW - 20 * DAY, "100.00", session="s-lastmonth"),  # February 23
        ],
    )
    snap = snapshot(read(where), NOW, control.Control(), configured_routing="shadow")
    assert snap.today_usd == D("3.30")
    assert snap.month_usd == D("13.30")
    # Most recently active first; a session's spend is all of it, not just today's.
    assert [(s.session, s.tool, s.repo, s.spend_usd) for s in snap.sessions] == [
        ("s-live", "claude-code", "/src/acme-api", D("11.25")),
        ("s-anon", "python-sdk", None, D("0.05")),
    ]
    assert dict(snap.today_by_repo) == {
        "/src/acme-api": D("1.25"),
        "/src/web": D("2.00"),
        None: D("0.05"),
    }
    assert snap.routing == "shadow"
    assert snap.state == "normal"


def test_live_sessions_are_metered_calls_that_ended_in_the_window(where):
    """The tray's live sessions are those `devmeter sessions --live` lists: an imported
    transcript's session is no traffic devmeter can stop, and a call that started before
    the window but ended in it is live."""
    imported = replace(
        call(NOW - 60, session="s-imported"), endpoint="claude-code.import", source="import",
        usage=Usage(input_tokens=7, output_tokens=3),  # no live row's twin: it stays
    )  # fmt: skip
    long_call = replace(call(NOW - 900, session="s-long"), duration_ms=800_000)  # ended NOW-100
    ended_before = replace(call(NOW - 900, session="s-done"), duration_ms=200_000)  # NOW-700
    write_calls(where.ledger, [imported, long_call, ended_before])
    snap = snapshot(read(where), NOW, control.Control())
    assert [s.session for s in snap.sessions] == ["s-long"]
    conn = read(where)
    assert conn.execute("SELECT count(*) FROM calls").fetchone() == (3,)
    assert [s.session for s in query_sessions(conn, NOW, live_only=True)] == ["s-long"]


def test_a_session_keeps_its_last_known_repo(where):
    write_calls(
        where.ledger,
        [call(NOW - 300, repo="/src/acme-api"), call(NOW - 10, repo=None)],
    )
    (row,) = snapshot(read(where), NOW, control.Control()).sessions
    assert row.repo == "/src/acme-api"


def test_an_alert_today_is_a_warning_and_yesterdays_is_not(where):
    write_calls(where.ledger, [call(NOW - 60)])
    add_alert(where.ledger, NOW - DAY)
    assert snapshot(read(where), NOW, control.Control()).state == "normal"
    add_alert(where.ledger, NOW - 10)
    assert snapshot(read(where), NOW, control.Control()).state == "warning"


def cap_refusal(ts: float) -> Call:
    """A call the proxy refused because the session reached its $5 cap, worded by budget.py."""
    tracker = BudgetTracker(Budgets(session=ScopeBudget(block_usd=D(5))))
    tracker.seed({("session", "s-live"): D("5.10")}, ts)
    block = tracker.check(Attribution(tool="claude-code", session="s-live", repo="/src"), ts)
    assert block is not None and block.message.startswith("devmeter:")
    status = refusal("anthropic.messages", "claude-code", block.message).status  # as the proxy
    return replace(call(ts, "0", status=status, error=block.message), **block.ledger_fields())


def test_a_refused_call_makes_it_blocked_until_the_cap_is_lifted(where):
    write_calls(where.ledger, [call(NOW - 100, "5.10"), cap_refusal(NOW - 5)])
    snap = snapshot(read(where), NOW, control.Control())
    assert snap.blocked == (CapRow("session", "s-live", D("5.00")),)
    assert snap.state == "blocked"
    lifted = control.Control(allowed=(("session", "s-live", NOW - 1),))
    assert snapshot(read(where), NOW, lifted).blocked == ()
    # A lift from before the refusal was for an earlier block.
    earlier = control.Control(allowed=(("session", "s-live", NOW - 50),))
    assert snapshot(read(where), NOW, earlier).state == "blocked"


def test_a_call_that_went_through_after_the_refusal_ends_the_block(where):
    write_calls(where.ledger, [cap_refusal(NOW - 30), call(NOW - 5)])
    assert snapshot(read(where), NOW, control.Control()).blocked == ()


def test_an_old_refusal_is_not_blocked_now(where):
    write_calls(where.ledger, [cap_refusal(NOW - 3600)])
    assert snapshot(read(where), NOW, control.Control()).state == "normal"


def test_paused_and_routing_come_from_control_json(where):
    pause_message = "devmeter: metered traffic is paused. Choose Resume in the devmeter tray menu"
    write_calls(where.ledger, [call(NOW - 5, "0", status=403, error=pause_message)])
    snap = snapshot(
        read(where),
        NOW,
        control.Control(paused=True, routing_mode="on"),
        configured_routing="shadow",
    )
    assert snap.paused and snap.state == "paused"
    assert snap.blocked == ()  # a pause is not a cap to lift
    assert snap.routing == "on"


def test_the_headline_counts_todays_calls_and_names_the_last_alert(where):
    write_calls(where.ledger, [call(NOW - DAY), call(NOW - 60), call(NOW - 30)])
    add_alert(where.ledger, NOW - 20, "loop", "Possible loop in session s-live")
    conn = read(where)
    snap = snapshot(conn, NOW, control.Control())
    head = headline(conn, NOW, snap)
    assert head.calls_today == 2
    assert head.session is not None and head.session.session == "s-live"
    assert head.last_alert is not None
    assert head.last_alert.endswith("loop: Possible loop in session s-live")
    line = status_line(snap, head, ProxyStatus("running"))
    assert line == (
        "devmeter · today $1.00 · session $1.50 (acme-api) · month $1.50 · 2 calls · "
        f"last alert {head.last_alert}"
    )


def test_the_status_line_shows_escape_sequences_and_never_sends_them(where):
    write_calls(where.ledger, [call(NOW - 30, repo="/src/\x1b]0;pwned\x07acme")])
    add_alert(where.ledger, NOW - 20, "loop", "Possible loop on model gpt\x1b[2J")
    conn = read(where)
    snap = snapshot(conn, NOW, control.Control())
    line = status_line(snap, headline(conn, NOW, snap), ProxyStatus("running"))
    assert line.isprintable()
    assert "(\\x1b]0;pwned\\x07acme)" in line and line.endswith(
        "loop: Possible loop on model gpt\\x1b[2J"
    )


def test_the_status_line_says_when_the_proxy_is_down():
    line = status_line(
        TraySnapshot(paused=True),
        Headline(),
        ProxyStatus("restarting", detail="proxy exited with code 1; restarting in 4s"),
    )
    assert line.startswith("devmeter · PAUSED · proxy exited with code 1; restarting in 4s · ")


# --- the app, with a fake icon -------------------------------------------------------------


class FakeIcon:
    HAS_MENU = True

    def __init__(self) -> None:
        self.icon: Any = None
        self.title = ""
        self.menu: Any = None
        self.menu_updates = 0
        self.stopped = False

    def update_menu(self) -> None:
        self.menu_updates += 1

    def stop(self) -> None:
        self.stopped = True


class FakeSupervisor:
    def __init__(self, status: ProxyStatus | None = None) -> None:
        self.status = status or ProxyStatus("running", 1234, "127.0.0.1:8788", "proxy on …")
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 10) -> None:
        self.stopped = True

    def note(self, key: str, value: object) -> None:
        self.notes = {**getattr(self, "notes", {}), key: value}


def menu_as_items(items, handlers):
    """Stands in for to_pystray: keeps the menu model and its handlers."""
    return (list(items), handlers)


@pytest.fixture
def app_for(where, tmp_path):
    apps: list[TrayApp] = []

    def make(**kwargs: Any) -> tuple[TrayApp, FakeIcon, list[Path]]:
        opened: list[Path] = []
        options: dict[str, Any] = {
            "supervisor": FakeSupervisor(),
            "make_menu": menu_as_items,
            "opener": opened.append,
            "interval": 0.05,
            "icon_size": 24,
            "report_dir": tmp_path,
        }
        options.update(kwargs)
        app = TrayApp(where, Config(), **options)
        icon = FakeIcon()
        app.attach(icon)
        apps.append(app)
        return app, icon, opened

    yield make
    for app in apps:
        app.shutdown()


def click(icon: FakeIcon, text: str) -> None:
    """Click a menu item by its text, searching submenus, the way to_pystray wires it."""
    items, handlers = icon.menu

    def walk(entries: list[MenuItem]):
        for item in entries:
            yield item
            yield from walk(list(item.submenu))

    item = next(i for i in walk(items) if i.text == text)
    assert item.action is not None and item.enabled
    handlers[item.action](*item.args)


def test_menu_clicks_write_control_json(app_for, where):
    app, icon, _ = app_for()
    app.refresh(force=True)
    path = control.control_path(where.data_dir)

    click(icon, "On")  # Routing > On
    assert control.load(path).routing_mode == "on"
    assert icon.title.endswith("routing on")  # redrawn at once

    click(icon, "Pause all metered traffic")
    assert control.load(path).paused is True
    assert icon.title.startswith("devmeter · PAUSED")
    click(icon, "Resume metered traffic")
    assert control.load(path).paused is False

    click(icon, "Off")
    assert control.load(path) == control.Control(paused=False, routing_mode="off")


def test_allow_lifts_the_cap_the_menu_offers(app_for, where):
    write_calls(where.ledger, [cap_refusal(time.time() - 5)])
    app, icon, _ = app_for()
    app.refresh(force=True)
    assert app.snapshot.state == "blocked"
    click(icon, "Lift the $5.00 cap on session s-live")
    ((scope, key, when),) = control.load(control.control_path(where.data_dir)).allowed
    assert (scope, key) == ("session", "s-live")
    assert abs(when - time.time()) < 5
    assert app.snapshot.state == "normal"


def test_a_stopped_session_the_proxy_refuses_can_continue_from_the_menu(app_for, where):
    """Stop (in an ask, or `devmeter stop`) refuses the session until `devmeter allow`:
    the menu offers that too, and the icon says requests are being refused."""
    message = "devmeter: Session s-live was stopped when devmeter asked (you chose Stop)"
    stop_refusal = replace(
        call(time.time() - 5, "0", status=402, error=message),
        refused_scope="stop",
        refused_key="s-live",
    )
    write_calls(where.ledger, [stop_refusal])
    snap = snapshot(read(where), time.time(), control.Control())
    line = status_line(snap, headline(read(where), time.time(), snap))
    assert "STOPPED session s-live, `devmeter allow s-live` lets it continue" in line
    app, icon, _ = app_for()
    app.refresh(force=True)
    assert app.snapshot.stopped == ("s-live",)
    assert app.snapshot.state == "blocked"
    click(icon, "Stopped: session s-live · let it continue")
    ((scope, key, when),) = control.load(control.control_path(where.data_dir)).allowed
    assert (scope, key) == ("session", "s-live")  # what `devmeter allow s-live` writes
    assert abs(when - time.time()) < 5
    assert app.snapshot.stopped == () and app.snapshot.state == "normal"


def test_open_config_writes_the_template_when_missing_then_opens_it(app_for, where):
    app, icon, opened = app_for()
    app.refresh(force=True)
    click(icon, "Open config")
    assert opened == [where.config_file]
    assert where.config_file.read_text() == TEMPLATE
    where.config_file.write_text("# mine\n")
    click(icon, "Open config")
    assert where.config_file.read_text() == "# mine\n"  # never overwritten


def test_open_dashboard_serves_it_from_the_tray_and_opens_the_browser(app_for, where):
    write_calls(where.ledger, [call(time.time() - 60, "1.25")])
    urls: list[str] = []
    app, icon, _ = app_for(url_opener=urls.append)
    app.refresh(force=True)
    click(icon, "Open dashboard")
    click(icon, "$1.25  claude-code · acme-api · s-live")  # Live sessions > that session
    assert app.dashboard is not None and urls[0] == app.dashboard.url  # one server, kept
    assert urls[1] == app.dashboard.url.replace("/?", "/session?id=s-live&")
    for url, expected in zip(urls, ("Today by repo", "Session s-live"), strict=True):
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
        assert response.status == 303  # the token becomes the cookie
        location = response.getheader("Location")
        conn.request("GET", location, headers={"Cookie": response.getheader("Set-Cookie")})
        page = conn.getresponse().read().decode()
        assert expected in page and "$1.25" in page
        conn.close()


def test_open_report_writes_a_report_and_opens_it(app_for, where):
    write_calls(where.ledger, [call(time.time() - 60, "1.25")])
    app, icon, opened = app_for()
    app.refresh(force=True)
    app.open_report()  # the fallback when the dashboard cannot start
    (path,) = opened
    text = path.read_text()
    assert "Today by repo" in text and "acme-api" in text and "$1.25" in text
    app.open_report("s-live")
    assert "Session s-live" in opened[-1].read_text()


def test_open_report_writes_under_the_data_dir_for_the_user_alone(app_for, where):
    write_calls(where.ledger, [call(time.time() - 60, "1.25")])
    app, icon, opened = app_for(report_dir=None)
    app.refresh(force=True)
    app.open_report()
    (path,) = opened
    assert path.parent == where.data_dir / "reports"  # not the shared /tmp
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    path.chmod(0o644)
    app.open_report()
    assert path.stat().st_mode & 0o777 == 0o600 and "$1.25" in path.read_text()


def test_report_text_with_no_ledger():
    assert "No calls metered yet" in report_text(None, NOW)


def test_quit_stops_the_icon_and_the_proxy(app_for):
    sup = FakeSupervisor()
    app, icon, _ = app_for(supervisor=sup)
    app.refresh(force=True)
    click(icon, "Quit devmeter")
    assert app.stopped.is_set()
    wait_for(lambda: icon.stopped, timeout=2)  # from a thread of its own
    app.shutdown()
    assert sup.stopped


def test_the_icon_tooltip_and_menu_follow_a_new_call_within_a_second(app_for, where):
    write_calls(where.ledger, [call(time.time() - 60, "1.00")])
    app, icon, _ = app_for()
    app.start_updates()
    deadline = time.monotonic() + 2
    while "today $1.00" not in icon.title and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "today $1.00" in icon.title
    first_image, updates = icon.icon, icon.menu_updates

    write_calls(where.ledger, [call(time.time(), "41.50")])
    written = time.monotonic()
    while "today $42.50" not in icon.title and time.monotonic() - written < 2:
        time.sleep(0.01)
    assert time.monotonic() - written < 1.0
    assert icon.title == (
        "devmeter · session $42.50 · today $42.50 · month $42.50 · routing shadow"
    )
    assert icon.icon is not first_image and icon.icon.size == (24, 24)
    items, _handlers = icon.menu
    assert items[0].text == "Today $42.50 · month $42.50"
    assert icon.menu_updates > updates


def test_nothing_is_redrawn_when_nothing_changed(app_for, where):
    write_calls(where.ledger, [call(time.time() - 60)])
    app, icon, _ = app_for()
    assert app.refresh() is True
    assert app.refresh() is False
    write_calls(where.ledger, [call(time.time())])
    assert app.refresh() is True


def test_the_tooltip_and_menu_say_when_the_proxy_is_down(app_for):
    down = ProxyStatus("restarting", detail="proxy exited with code 1; restarting in 2s")
    app, icon, _ = app_for(supervisor=FakeSupervisor(down))
    app.refresh(force=True)
    assert icon.title.startswith("devmeter · proxy exited with code 1; restarting in 2s · ")
    items, _ = icon.menu
    assert items[1].text == "Proxy: proxy exited with code 1; restarting in 2s"


def test_a_proxy_death_is_a_notification_but_not_a_flood(app_for):
    shown: list[tuple[str, str]] = []
    app, _icon, _ = app_for(notify=lambda title, message: shown.append((title, message)))
    app._proxy_event("died", "devmeter: the proxy (pid 7) exited with code 1 after 2s; ...")
    app._proxy_event("died", "devmeter: the proxy (pid 8) exited with code 1 after 1s; ...")
    assert shown == [("proxy restarted", "the proxy (pid 7) exited with code 1 after 2s; ...")]


# --- no display ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "platform", "problem"),
    [
        ({}, "linux", "no display found (DISPLAY unset)"),
        ({"DISPLAY": ":0"}, "linux", None),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", None),
        ({}, "freebsd14", "no display found (DISPLAY unset)"),
        ({}, "darwin", None),
        ({}, "win32", None),
    ],
)
def test_display_problem(environ, platform, problem):
    assert display_problem(environ, platform) == problem


def test_headless_says_why_and_shows_a_live_line_that_follows_the_ledger(where):
    out, err = io.StringIO(), io.StringIO()
    stop = threading.Event()
    live = LiveLine(out, err, tty=False, min_gap=0.0)
    runner = threading.Thread(
        target=run_headless,
        args=(where, Config(), "no display found (DISPLAY unset)"),
        kwargs={
            "out": out,
            "err": err,
            "supervisor": FakeSupervisor(),
            "stop": stop,
            "interval": 0.05,
            "live": live,
        },
    )
    runner.start()
    try:
        wait_for(lambda: "today $0.00" in out.getvalue())
        write_calls(where.ledger, [call(time.time(), "3.21", repo="/src/acme-api")])
        wait_for(lambda: "today $3.21" in out.getvalue(), timeout=1.0)
    finally:
        stop.set()
        runner.join(5)
    assert err.getvalue().startswith(
        "devmeter: no display found (DISPLAY unset): running headless; "
        "the tray needs a desktop session."
    )
    last = out.getvalue().splitlines()[-1]
    assert last == "devmeter · today $3.21 · session $3.21 (acme-api) · month $3.21 · 1 call"


def test_on_a_terminal_the_line_is_rewritten_in_place():
    out, err = io.StringIO(), io.StringIO()
    live = LiveLine(out, err, tty=True, width=lambda: 40)
    live.show("devmeter · today $1.00", 0)
    live.show("devmeter · today $1.00", 0.5)  # unchanged: nothing written
    live.show("devmeter · today $2.00 · " + "x" * 50, 1)
    live.message("devmeter proxy listening on 127.0.0.1:8788")
    live.close()
    assert out.getvalue() == (
        "\r\x1b[Kdevmeter · today $1.00"
        "\r\x1b[Kdevmeter · today $2.00 · xxxxxxxxxxxxx…"
        "\r\x1b[K"  # cleared for the proxy's line on stderr ...
        "devmeter · today $2.00 · xxxxxxxxxxxxx…"  # ... then drawn again
        "\n"
    )
    assert err.getvalue() == "devmeter proxy listening on 127.0.0.1:8788\n"


def test_off_a_terminal_lines_are_printed_on_change_and_as_a_heartbeat():
    out = io.StringIO()
    live = LiveLine(out, io.StringIO(), tty=False, min_gap=2, heartbeat=60)
    live.show("a", 0)
    live.show("a", 1)  # unchanged
    live.show("b", 1.5)  # changed, but too soon
    live.show("b", 2.5)
    live.show("b", 30)
    live.show("b", 63)  # heartbeat
    assert out.getvalue() == "a\nb\nb\n"


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting")


# --- the real command ----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="signals and DISPLAY are POSIX here")
def test_devmeter_with_no_display_runs_the_proxy_headless_and_stops_it(where):
    where.config_file.write_text('[proxy]\nlisten = "127.0.0.1:0"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devmeter"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(where.proxy_state.exists, timeout=30)
        write_calls(where.ledger, [call(time.time(), "2.50")])
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "no display found (DISPLAY unset): running headless" in err
    assert "devmeter proxy listening on 127.0.0.1:" in err
    assert "today $2.50" in out.splitlines()[-1]
    assert not where.proxy_state.exists()  # the child was stopped and cleaned up
    # Its last line says so (run in the background with output to a file, a new user's
    # log just ended, as if it still ran).
    assert err.splitlines()[-1].startswith("devmeter: stopped, and its proxy with it")


@pytest.mark.parametrize(("has_menu", "expected"), [(True, "1"), (False, "0")])
def test_the_proxy_is_told_whether_the_icon_has_a_menu(
    has_menu: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So its alerts point at the menu only when there is one (pystray's plain X backend
    has none), and name the command otherwise."""
    import types

    from devmeter.budget import MENU_ENV
    from devmeter.tray.app import proxy_environment

    backend = types.SimpleNamespace(Icon=type("Icon", (), {"HAS_MENU": has_menu}))
    monkeypatch.setitem(sys.modules, "pystray", backend)
    assert proxy_environment()[MENU_ENV] == expected


def test_the_tray_messages_say_what_happened_to_the_icon(app_for, capsys, caplog):
    """Docked at start, then the panel restarted: that is not "no system tray yet" (as if
    there had never been one), and the first dock after waiting is not "back"."""
    caplog.set_level("INFO", logger="devmeter.tray.app")
    app, _icon, _ = app_for()
    app._docked(True)  # a panel was there: nothing to say
    app._docked(False)  # the panel restarted
    app._docked(True)
    err = capsys.readouterr().err
    assert "the system tray went away; the icon comes back when it does" in err
    assert "no system tray to show the icon in yet" not in err
    assert [r.getMessage() for r in caplog.records] == [
        "devmeter: the icon is back in the system tray"
    ]

    caplog.clear()
    later, _icon, _ = app_for()
    later._docked(False)  # started before the panel
    later._docked(False)  # reported again while waiting: said once
    later._docked(True)
    err = capsys.readouterr().err
    assert err.count("no system tray to show the icon in yet") == 1
    assert [r.getMessage() for r in caplog.records] == [
        "devmeter: the icon is in the system tray now"
    ]
