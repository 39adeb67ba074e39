"""The tray app: `devmeter` with no command.

It owns the main thread (pystray must, on macOS), supervises `devmeter proxy` as a child
process, and redraws the icon, tooltip and menu from the ledger within a second of a
call finishing: a background thread asks the ledger for its newest call and alert ids
every half second and rebuilds only when they (or control.json, the proxy's state, the
day) changed. Menu clicks write control.json, which the proxy re-reads within 0.5 s.

Without a display (no DISPLAY / WAYLAND_DISPLAY on Linux and the BSDs, or a pystray
backend that fails to load) it runs headless instead: see `headless.py`. The display is
checked before pystray is imported, because importing it picks a backend and the X one
fails at import time with no X server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmeter import control as control_state
from devmeter import reports
from devmeter.budget import MENU_ENV
from devmeter.clock import local_midnight
from devmeter.config import Config, ConfigError, load
from devmeter.diagnostics import log_to_stderr, say
from devmeter.ledger import connect_readonly
from devmeter.paths import Paths, make_private_dir, write_private
from devmeter.tray import asks as tray_asks
from devmeter.tray.icon import render_badge, render_icon, tooltip
from devmeter.tray.menu import (
    MenuItem,
    TraySnapshot,
    build_menu,
    short_config_problem,
    to_pystray,
)
from devmeter.tray.snapshot import change_marker, snapshot
from devmeter.tray.supervisor import EventKind, Supervisor, proxy_command
from devmeter.warnlog import route_warnings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from devmeter.dashboard.server import Dashboard

MakeMenu = Callable[[Sequence[MenuItem], dict[str, Callable[..., object]]], Any]
Opener = Callable[[Path], None]
UrlOpener = Callable[[str], object]  # webbrowser.open
Notify = Callable[[str, str], None]  # (title, message)

POLL_SECONDS = 0.5
# Live sessions age out of the menu even when nothing is written: redraw this often.
REDRAW_SECONDS = 30.0
# How long Quit waits for the tray's event loop to end before leaving without it.
LOOP_STOP_GRACE = 3.0
# At most one desktop notification about the proxy per this many seconds (stderr hears all).
PROXY_NOTICE_GAP = 300.0


# --- is there a desktop? -------------------------------------------------------------------


def display_problem(
    environ: Mapping[str, str] | None = None, platform: str = sys.platform
) -> str | None:
    """Why there can be no tray here, or None if there may be one. Imports nothing."""
    env = os.environ if environ is None else environ
    if platform in ("darwin", "win32", "cygwin"):
        return None
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        return "no display found (DISPLAY unset)"
    return None


def proxy_environment() -> dict[str, str]:
    """The environment of the proxy this tray starts: its own, plus whether the icon has a
    menu (pystray's plain X backend has none), so the proxy's alerts point at the menu only
    when there is one, and name the command otherwise."""
    pystray = sys.modules.get("pystray")
    has_menu = bool(getattr(getattr(pystray, "Icon", None), "HAS_MENU", False))
    return {**os.environ, MENU_ENV: "1" if has_menu else "0"}


# What gives the tray its menu on Linux (README, "The tray", Linux), for the messages that
# fall back to pystray's X backend.
NO_MENU_FIX = (
    "the icon without a menu (a click opens the dashboard); for the menu, run devmeter "
    "from a Python that has PyGObject with GTK 3 (Debian: python3-gi gir1.2-gtk-3.0, and a "
    "venv with --system-site-packages: README, The tray, Linux)"
)


def choose_backend(
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    gtk_importable: Callable[[], bool] | None = None,
) -> str | None:
    """The pystray backend to ask for on Linux and the BSDs: "gtk" when PyGObject with
    GTK 3 imports (a real menu; GtkStatusIcon docks whenever a tray appears and re-docks
    after a panel restart), else "xorg" (`xorg.DockingIcon`: icon only, a click opens the
    report). None: leave it to pystray (macOS, Windows) or to the user's PYSTRAY_BACKEND.

    pystray's own first choice, AppIndicator, is not taken by itself: with PyGObject but
    without the AyatanaAppIndicator3 typelib it fails the whole import instead of falling
    back, and the tray ran headless."""
    env = os.environ if environ is None else environ
    if platform in ("darwin", "win32", "cygwin") or env.get("PYSTRAY_BACKEND"):
        return None
    return "gtk" if (gtk_importable or _gtk_importable)() else "xorg"


def _gtk_importable() -> bool:
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk  # noqa: F401
    except Exception:  # ImportError, ValueError (no typelib), gi's own errors: no GTK
        return False
    return True


def load_backend() -> str | None:
    """Pick pystray's backend and import pystray; why it failed, or None.

    A PYSTRAY_BACKEND the user set that fails to load is reported and replaced by the
    automatic choice, rather than giving up the tray."""
    chosen = choose_backend()
    if chosen is not None:
        os.environ["PYSTRAY_BACKEND"] = chosen
    problem = _import_pystray()
    if problem is None or chosen is not None:
        return problem
    asked = os.environ.pop("PYSTRAY_BACKEND", "")
    fallback = choose_backend()
    if fallback is None:
        return problem
    # The X backend has no menu: say what brings the one the user asked for, or they are
    # left with an icon that only opens the dashboard and no idea why.
    menu_fix = f": {NO_MENU_FIX}" if fallback == "xorg" else ""
    print(
        f"devmeter: PYSTRAY_BACKEND={asked} did not load ({problem}); using {fallback}{menu_fix}",
        file=sys.stderr,
        flush=True,
    )
    os.environ["PYSTRAY_BACKEND"] = fallback
    return _import_pystray()


def _import_pystray() -> str | None:
    try:
        import pystray  # noqa: F401
    except Exception as exc:  # Xlib raises its own errors, GTK its own: all mean no tray
        for name in [m for m in sys.modules if m == "pystray" or m.startswith("pystray.")]:
            del sys.modules[name]
        return f"the tray backend failed to load ({type(exc).__name__}: {exc})"
    return None


def default_icon_size(
    environ: Mapping[str, str] | None = None, platform: str = sys.platform
) -> int:
    """The size the icon is drawn at: the tray's own pixel size, or close to it.

    Windows' tray is 16 px at 100 % and 32 px at 200 %; macOS' menu bar is 22 pt, 44 px
    on Retina; Linux panels mostly use 22 or 24 px. DEVMETER_TRAY_ICON_SIZE overrides.
    """
    env = os.environ if environ is None else environ
    with contextlib.suppress(ValueError):
        return max(16, int(env.get("DEVMETER_TRAY_ICON_SIZE", "")))
    if platform == "darwin":
        return 44
    if platform == "win32":
        return 32
    return 24


# --- the OS's opener and notifications -----------------------------------------------------


def _open_in_browser(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        raise OSError("no web browser found")


def open_with_os(path: Path) -> None:
    """Open a file with the desktop's default application, without waiting for it."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    exe = shutil.which(opener)
    if exe is None:
        raise OSError(f"{opener} not found on PATH")
    subprocess.Popen(
        [exe, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def desktop_notifier(icon: Any = None) -> Notify:
    """Show a notification off the calling thread, trying each backend in turn."""
    from devmeter.alert_delivery import Notice, default_backends, show_first
    from devmeter.tray.icon_notify import icon_backend

    backends = default_backends([icon_backend(icon)] if icon is not None else [])
    unavailable: set[str] = set()

    def send(title: str, message: str) -> None:
        def run() -> None:
            show_first(backends, Notice(f"devmeter: {title}", message), unavailable)

        threading.Thread(target=run, name="devmeter-tray-notify", daemon=True).start()

    return send


# --- the report a menu click opens ---------------------------------------------------------


def report_text(conn: sqlite3.Connection | None, now: float, session: str | None = None) -> str:
    """What the tray opens when its dashboard cannot start: a session's calls, or today by
    repo, session and model, then the last 30 days by day and today's alerts."""
    stamp = datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M")
    if conn is None or not reports.has_calls(conn):
        return f"devmeter report, {stamp}\n\nNo calls metered yet.\n"
    out = [f"devmeter report, {stamp}", ""]
    if session is not None:
        sql = "SELECT min(ts) FROM calls WHERE session = ?"
        (first,) = conn.execute(sql, (session,)).fetchone()
        rows = [
            r
            for r in reports.query(conn, "request", since=first)
            if first is not None and r["session"] == session
        ]
        out += [f"Session {session}", ""]
        out.append(reports.to_table(rows, "request") if rows else "No calls in this session.\n")
        return "\n".join(out)
    today = local_midnight(now)
    for by in ("repo", "session", "model", "tool"):
        rows = reports.query(conn, by, since=today)
        out += [f"Today by {by}", ""]
        out.append(reports.to_table(rows, by) if rows else "Nothing today.\n")
    rows = reports.query(conn, "day", since=now - 30 * 86400)
    out += ["Last 30 days", "", reports.to_table(rows, "day") if rows else "Nothing.\n"]
    alerts = reports.alerts(conn, today)
    out += ["Alerts today", "", reports.alerts_table(alerts) if alerts else "None.\n"]
    out.append("More: `devmeter report --help`, `devmeter alerts`, `devmeter report --savings`.\n")
    return "\n".join(out)


# --- the app -------------------------------------------------------------------------------


class TrayApp:
    """The icon's state and handlers; `run()` puts it on screen with pystray.

    Everything pystray-specific is injected (`make_menu`) or created in `run()`, so a test
    can `attach` a fake icon and call `refresh()` or `start_updates()`.
    """

    def __init__(
        self,
        paths: Paths,
        config: Config,
        *,
        supervisor: Supervisor | None = None,
        make_menu: MakeMenu = to_pystray,
        opener: Opener = open_with_os,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = POLL_SECONDS,
        icon_size: int | None = None,
        report_dir: Path | None = None,
        listen: str | None = None,
        url_opener: UrlOpener | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.control_file = control_state.control_path(paths.data_dir)
        self.supervisor = supervisor or Supervisor(
            paths,
            proxy_command(listen),
            on_event=self._proxy_event,
            on_output=_print_stderr,
            env=proxy_environment(),
            listen=config.listen,
        )
        self.make_menu = make_menu
        self.opener = opener
        self.notify = notify
        self.clock = clock
        self.interval = interval
        self.icon_size = icon_size or default_icon_size()
        # Reports name sessions, repos and spend: the user's own directory, not shared /tmp.
        self.report_dir = report_dir or paths.data_dir / "reports"
        self.url_opener = url_opener or _open_in_browser
        # Started on the first "Open dashboard", then kept for the tray's life (one URL).
        self.dashboard: Dashboard | None = None
        self._dashboard_lock = threading.Lock()
        self.icon: Any = None
        self.snapshot = TraySnapshot()
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._updating = False
        self._icon_lock = threading.Lock()
        self._waker: XorgWaker | None = None
        self._undocked_once = False  # the X icon has waited for a tray host at least once
        # Whether it ever docked: at a panel restart "no system tray yet" reads as if
        # devmeter had never had a tray, and "back" at the first dock as if it had.
        self._docked_once = False
        self._loop_done: threading.Event | None = None  # set when run()'s loop returned
        self._conn: sqlite3.Connection | None = None
        self._marker: object = None
        self._config_mtime = _mtime(paths.config_file)
        self._proxy_noticed = float("-inf")
        self._updates: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- handlers (menu actions) ------------------------------------------------------------

    @property
    def handlers(self) -> dict[str, Callable[..., object]]:
        return {
            "open_dashboard": self.open_dashboard,
            "open_findings": lambda: self.open_dashboard(page="/findings"),
            "open_report": self.open_report,
            "set_routing": self.set_routing,
            "pause": lambda: self._control(paused=True),
            "resume": lambda: self._control(paused=False),
            "allow": self.allow,
            "answer_ask": self.answer_ask,
            "open_config": self.open_config,
            "quit": self.quit,
        }

    def set_routing(self, mode: str) -> None:
        self._control(routing_mode=mode)

    def allow(self, scope: str, key: str) -> None:
        current = self._load_control()
        self._control(allowed=(*current.allowed, (scope, key, self.clock())))

    def answer_ask(self, ask_id: str, choice: str) -> None:
        """Continue or Stop a request held by an ask (the proxy reads control.json)."""
        try:
            control_state.answer(self.control_file, ask_id, choice, self.clock())
        except (OSError, ValueError) as exc:
            self._problem("Cannot answer devmeter's question", str(exc))
            return
        self._redraw_soon()

    def open_dashboard(self, session: str | None = None, page: str | None = None) -> str | None:
        """Open the dashboard (a session's page, another `page` such as /findings, or
        today) in the browser, serving it from this process on loopback; the text report
        if the server cannot start."""
        try:
            with self._dashboard_lock:
                if self.dashboard is None:
                    from devmeter.dashboard.server import Dashboard

                    server = Dashboard(self.paths, self.config)
                    threading.Thread(
                        target=server.serve_forever, name="devmeter-dashboard", daemon=True
                    ).start()
                    self.dashboard = server
                dashboard = self.dashboard
        except OSError as exc:
            self._problem("Cannot start the dashboard", f"{exc}; opening the text report instead")
            self.open_report(session)
            return None
        url = dashboard.url
        if session:
            url = url.replace("/?", f"/session?id={urllib.parse.quote(session)}&", 1)
        elif page:
            url = url.replace("/?", f"{page}?", 1)
        try:
            self.url_opener(url)
        except Exception as exc:  # a browser that cannot start: say where the page is
            self._problem("Cannot open a browser", f"{exc}; the dashboard is at {url}")
        return url

    def open_report(self, session: str | None = None) -> Path | None:
        name = f"devmeter-report-{session[:16] if session else 'today'}.txt"
        path = self.report_dir / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        try:
            conn = connect_readonly(self.paths.ledger)
            try:
                text = report_text(conn, self.clock(), session)
            finally:
                if conn is not None:
                    conn.close()
            make_private_dir(path.parent)
            write_private(path, text)  # 0600, even over an older, readable report
        except (OSError, sqlite3.Error) as exc:
            self._problem("Cannot write the report", f"{exc}. Run `devmeter report` instead.")
            return None
        self._open(path)
        return path

    def open_config(self) -> Path:
        from devmeter.config import TEMPLATE

        path = self.paths.config_file
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(TEMPLATE, encoding="utf-8")
            except OSError as exc:
                self._problem("Cannot create the config", f"{path}: {exc}")
                return path
        self._open(path)
        return path

    def quit(self) -> threading.Thread:
        """Stop the tray: safe from a menu click, another thread or a signal handler.

        The icon is stopped from a thread of its own, never while a redraw is talking to
        the icon: pystray's X backend runs icon changes on its loop's thread and waits
        for them, so stopping it from that thread (a click, a signal) mid-redraw would
        leave the redraw waiting for ever."""
        self.stopped.set()
        self._wake.set()
        stopper = threading.Thread(target=self._stop_icon, name="devmeter-tray-quit", daemon=True)
        stopper.start()
        return stopper

    def _stop_icon(self) -> None:
        with self._icon_lock:
            pass  # a redraw in flight finishes; none starts now that `stopped` is set
        icon = self.icon
        if icon is None:
            return
        self._nudged(icon.stop)
        loop_done = self._loop_done
        if loop_done is not None and not loop_done.wait(LOOP_STOP_GRACE):
            # Seen with pystray's X backend now and then: the window is gone but its loop
            # never hears so. Quitting must still quit, and stop the proxy first.
            log.warning("devmeter: the tray's event loop did not stop; exiting")
            self.shutdown()
            for stream in (sys.stdout, sys.stderr):  # None under pythonw
                if stream is not None:
                    stream.flush()
            os._exit(0)

    def _control(self, **changes: Any) -> None:
        try:
            control_state.update(self.control_file, **changes)
        except (OSError, ValueError) as exc:
            self._problem("Cannot change the proxy's settings", str(exc))
            return
        self._redraw_soon()

    def _redraw_soon(self) -> None:
        """After a click: the update thread redraws at once (the click's thread, pystray's
        loop, must not wait on a redraw); without one (tests, before `run`), redraw here."""
        if self._updating:
            self._wake.set()
        else:
            self.refresh(force=True)

    def _load_control(self) -> control_state.Control:
        try:
            return control_state.load(self.control_file)
        except ValueError as exc:
            log.warning("devmeter: %s", exc)
            return control_state.Control()

    def _open(self, path: Path) -> None:
        try:
            self.opener(path)
        except OSError as exc:
            self._problem("Cannot open a file", f"{exc}; the file is at {path}")

    def _problem(self, title: str, message: str) -> None:
        log.warning("devmeter: %s: %s", title.lower(), message)
        if self.notify is not None:
            self.notify(title, message)

    def _proxy_event(self, kind: EventKind, message: str) -> None:
        log.warning("%s", message)
        now = time.monotonic()
        if kind in ("died", "killed") and now - self._proxy_noticed >= PROXY_NOTICE_GAP:
            self._proxy_noticed = now
            if self.notify is not None:
                self.notify("proxy restarted", message.removeprefix("devmeter: "))
        if kind == "port_taken" and self.notify is not None:
            self.notify("metering is off", message.removeprefix("devmeter: "))

    # --- updates ------------------------------------------------------------------------------

    def attach(self, icon: Any) -> None:
        self.icon = icon

    def refresh(self, force: bool = False) -> bool:
        """Redraw the icon, tooltip and menu if anything they show changed; True if so."""
        with self._lock:
            now = self.clock()
            try:
                conn = self._connection()
                marker = (
                    change_marker(conn),
                    _mtime(self.control_file),
                    self._configured_routing(),
                    self._quota_thresholds(),
                    self.supervisor.status,
                    local_midnight(now),
                    int(now // REDRAW_SECONDS),
                    *map(_mtime, tray_asks.files(self.paths.data_dir)),
                )
                if not force and marker == self._marker:
                    return False
                snap = snapshot(
                    conn, now, self._load_control(),
                    configured_routing=self._configured_routing(),
                    quota_thresholds=self._quota_thresholds(),
                )  # fmt: skip
                snap = tray_asks.with_state_files(snap, self.paths.data_dir)
            except sqlite3.Error as exc:
                log.warning("devmeter: cannot read the ledger: %s", exc)
                self._drop_connection()
                return False
            self._marker = marker
            self.snapshot = snap
            self._draw(snap)
            return True

    def _draw(self, snap: TraySnapshot) -> None:
        with self._icon_lock:
            icon = self.icon
            if icon is not None and not self.stopped.is_set():
                self._nudged(lambda: self._draw_on(icon, snap))

    def _nudged(self, change: Callable[[], object]) -> None:
        """Make a change to the icon, waking the X backend's loop until it is done.

        pystray's X backend hands each change to its loop's thread and waits for it; the
        request can sit in python-xlib's queue while that thread blocks reading the
        socket (a race in python-xlib), until some X event arrives. An event sent to the
        icon's window over a second connection is such an event."""
        waker = self._waker
        if waker is None:
            change()
            return
        done = threading.Event()

        def nudge() -> None:
            while not done.wait(0.25):
                waker.wake()

        threading.Thread(target=nudge, name="devmeter-tray-nudge", daemon=True).start()
        try:
            change()
        finally:
            done.set()

    def _draw_on(self, icon: Any, snap: TraySnapshot) -> None:
        proxy = self.supervisor.status
        session = snap.sessions[0].spend_usd if snap.sessions else None
        title = tooltip(
            session,
            snap.today_usd,
            snap.month_usd,
            snap.routing,
            paused=snap.paused,
            billing=snap.billing_line,
            config_problem=short_config_problem(snap.config_problem)
            if snap.config_problem
            else None,
            secrets=snap.secrets_today,
        )
        items = build_menu(snap)
        if proxy.state not in ("running", "external"):
            title = (f"devmeter \u00b7 {proxy.detail}" + title.removeprefix("devmeter"))[:127]
            items.insert(1, MenuItem(f"Proxy: {proxy.detail}", enabled=False))
        if proxy.state == "port_taken":  # nothing is metered: no figure that looks live
            icon.icon = render_badge("off", "paused", self.icon_size)
        else:
            icon.icon = render_icon(snap.today_usd, snap.state, self.icon_size)
        icon.title = title
        icon.menu = self.make_menu(items, self.handlers)
        update = getattr(icon, "update_menu", None)
        if update is not None:
            update()

    def start_updates(self) -> threading.Thread:
        """Poll the ledger in a thread until `quit()`; returns the thread."""
        self._updates = threading.Thread(
            target=self.update_loop, name="devmeter-tray-updates", daemon=True
        )
        self._updates.start()
        return self._updates

    def update_loop(self) -> None:
        self._updating = True
        try:
            while not self.stopped.is_set():
                self._wake.clear()
                try:
                    self.refresh()
                except Exception as exc:  # the tray must outlive any one bad redraw
                    log.warning("devmeter: tray update failed: %r", exc)
                self._wake.wait(self.interval)
        finally:
            self._updating = False

    def shutdown(self) -> None:
        """Stop updating and stop the proxy child (if it is ours)."""
        self.stopped.set()
        if self._updates is not None and self._updates is not threading.current_thread():
            self._updates.join(5)
        self.supervisor.stop()
        if self.dashboard is not None:
            self.dashboard.shutdown()
            self.dashboard.server_close()
        self._drop_connection()

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None:
            self._conn = connect_readonly(self.paths.ledger)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None

    def _configured_routing(self) -> str:
        """The config file's routing mode, re-read when the file changes."""
        mtime = _mtime(self.paths.config_file)
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            try:
                self.config = load(self.paths.config_file)
            except ConfigError as exc:
                log.warning("devmeter: bad config, keeping the last good one: %s", exc)
        return str(self.config.section("routing").mode)

    def _quota_thresholds(self) -> tuple[float, ...]:
        """The `[quota]` alert levels the icon turns amber and red at (the file as last
        read by `_configured_routing`, which the marker reads first)."""
        return tuple(self.config.section("quota").thresholds)

    # --- on screen ----------------------------------------------------------------------------

    def run(self) -> int:
        """Show the icon (pystray owns this, the main thread) until Quit or a signal."""
        import pystray

        image = render_icon(self.snapshot.today_usd, "normal", self.icon_size)
        backend = pystray.Icon.__module__
        if backend == "pystray._xorg":
            from devmeter.tray.xorg import DockingIcon

            icon = DockingIcon("devmeter", image, "devmeter", on_dock=self._docked)
        elif backend == "pystray._gtk":
            from devmeter.tray.gtk import StayingIcon

            _survive_x_errors_in_gtk()
            icon = StayingIcon("devmeter", image, "devmeter", on_dock=self._docked)
        else:
            icon = pystray.Icon("devmeter", image, "devmeter")
        self.supervisor.note("tray_backend", backend.removeprefix("pystray._"))
        self.attach(icon)
        self._waker = XorgWaker.for_icon(icon)
        if self.notify is None:
            self.notify = desktop_notifier(icon)
        if not getattr(icon, "HAS_MENU", True):
            # The plain X backend has no menu: a click opens the dashboard instead.
            def click_menu(_items: Sequence[MenuItem], _handlers: object) -> pystray.Menu:
                return pystray.Menu(
                    pystray.MenuItem("Open dashboard", lambda: self.open_dashboard(), default=True)
                )

            self.make_menu = click_menu
        restore = _quit_on_signals(self.quit)
        self.supervisor.start()

        def setup(icon: pystray.Icon) -> None:
            if self.stopped.is_set():  # quit before the loop ran: stop it now it does
                self._stop_icon()
                return
            self._nudged(lambda: setattr(icon, "visible", True))
            self.refresh(force=True)
            self.update_loop()

        self._loop_done = threading.Event()
        try:
            icon.run(setup=setup)
        except Exception as exc:
            if self.stopped.is_set():
                # Quitting: e.g. pystray's GTK backend fails to withdraw a notification
                # when no notification service runs. Nothing is left to do.
                log.warning("devmeter: the tray closed with an error: %r", exc)
                return 0
            self._release_setup(icon)
            raise
        except BaseException:
            self._release_setup(icon)
            raise
        finally:
            self._loop_done.set()
            restore()
            self.shutdown()
        if not self.stopped.is_set():
            # Not Quit, not a signal: exit 0 would read as "the user quit" to the
            # packaging units, which would then leave metering down.
            raise RuntimeError("the tray's event loop ended by itself")
        return 0

    def _docked(self, docked: bool) -> None:
        """From the X backend's loop: the icon docked, or lost its tray host."""
        if docked:
            if self._undocked_once:  # it said the icon was not shown: say it is now
                log.info(
                    "devmeter: the icon is back in the system tray"
                    if self._docked_once
                    else "devmeter: the icon is in the system tray now"
                )
            self._docked_once = True
        elif not self._docked_once:
            if not self._undocked_once:  # once: the backend may report it again
                print(
                    "devmeter: no system tray to show the icon in yet; it appears as soon as "
                    "one starts (the proxy runs meanwhile)",
                    file=sys.stderr,
                    flush=True,
                )
        else:
            print(
                "devmeter: the system tray went away; the icon comes back when it does",
                file=sys.stderr,
                flush=True,
            )
        self._undocked_once = self._undocked_once or not docked
        self.supervisor.note("tray", "docked" if docked else "waiting for a system tray")

    def _release_setup(self, icon: Any) -> None:
        """pystray's setup thread (not a daemon) waits for the loop to become ready; if the
        loop never started it would wait for ever and keep the process alive."""
        self.stopped.set()
        with contextlib.suppress(Exception):
            icon._Icon__queue.put(True)


class XorgWaker:
    """Sends a no-op client message to the X backend's icon window."""

    def __init__(self, window_id: Callable[[], int]) -> None:
        self.window_id = window_id  # asked each time: the window is new after a tray restart
        self._display: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_icon(cls, icon: Any) -> XorgWaker | None:
        xorg = sys.modules.get("pystray._xorg")
        if xorg is None or not isinstance(icon, xorg.Icon):
            return None
        return cls(lambda: int(icon._window.id))

    def wake(self) -> None:
        with self._lock:
            try:
                from Xlib import X
                from Xlib import display as xdisplay
                from Xlib.protocol import event

                if self._display is None:
                    self._display = xdisplay.Display()
                conn = self._display
                window = conn.create_resource_object("window", self.window_id())
                message = event.ClientMessage(
                    window=window,
                    client_type=conn.intern_atom("_DEVMETER_WAKE"),
                    data=(32, [0, 0, 0, 0, 0]),
                )
                window.send_event(message, event_mask=X.NoEventMask, onerror=lambda *_: None)
                conn.flush()
            except Exception:  # a window gone, a display closing: nothing to wake
                self._display = None


def _survive_x_errors_in_gtk() -> None:
    """GDK ends the process on an X error nobody trapped, and a tray host that is killed
    (not stopped) takes the icon's window with it, so GTK's next request on that window
    is one: the tray would die with the panel. A trap left open for the whole run makes
    GDK ignore such errors instead; GtkStatusIcon then docks again in the next tray."""
    try:
        import gi

        gi.require_version("Gdk", "3.0")
        from gi.repository import Gdk

        Gdk.error_trap_push()
    except Exception as exc:  # without it the tray still works, it is only less sturdy
        log.warning("devmeter: cannot trap X errors in GTK: %r", exc)


def _quit_on_signals(quit: Callable[[], None]) -> Callable[[], None]:
    """SIGINT and SIGTERM (Ctrl-C, logout, systemd, launchd) quit like the menu's Quit.

    A Python signal handler runs only when the main thread runs Python, and the main
    thread sits in the tray's event loop, in C or in a blocking read of the X socket,
    which a signal delivered to another thread does not interrupt. So the signal is
    also written to a wake-up pipe (`signal.set_wakeup_fd`, whichever thread receives
    it), and a thread reading the pipe quits at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    wanted = {signal.SIGINT, signal.SIGTERM}
    previous = {sig: signal.getsignal(sig) for sig in wanted}

    def handler(_signum: int, _frame: object) -> None:
        quit()

    for sig in wanted:
        signal.signal(sig, handler)
    restore_wakeup = _wake_on_signals(wanted, quit)

    def restore() -> None:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        with contextlib.suppress(ValueError, OSError):
            restore_wakeup()

    return restore


def _wake_on_signals(wanted: set[int], quit: Callable[[], None]) -> Callable[[], None]:
    """Quit from a thread that reads the signal wake-up pipe; returns the undo."""

    def nothing() -> None:
        pass

    if os.name != "posix":
        return nothing
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        try:
            while data := os.read(read_fd, 64):
                if any(byte in wanted for byte in data):
                    quit()
        except OSError:
            pass
        finally:
            os.close(read_fd)

    threading.Thread(target=watch, name="devmeter-tray-signals", daemon=True).start()

    def restore() -> None:
        signal.set_wakeup_fd(old_fd)
        os.close(write_fd)  # the watcher reads end-of-file and closes its end

    return restore


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _print_stderr(line: str) -> None:
    say(line)  # the proxy's own lines, relayed as they are


def main(config: Config, paths: Paths, *, headless: bool = False, listen: str | None = None) -> int:
    """`devmeter`: the tray if there is a desktop, else the headless status line.

    `listen` is the tray command's `--listen`, handed on to the proxy it starts (`config`
    already carries it)."""
    from devmeter.importers.auto import start_auto_import
    from devmeter.tray import single_instance
    from devmeter.tray.headless import run_headless
    from devmeter.tray.supervisor import read_status

    log_to_stderr()
    # Held until this process exits. A second devmeter would add a second icon and take
    # over the first's supervisor.json, so it says what runs and leaves instead.
    first, _lock = single_instance.hold(paths.data_dir)
    if not first:
        say(single_instance.already_running_message(read_status(paths)))
        return 0
    route_warnings(paths.data_dir)
    # Tools used without the proxy still show up: their own history, in the background.
    start_auto_import(config.section("import"), paths.ledger, config.prices)
    if headless:
        return run_headless(paths, config, None, listen=listen)
    reason = display_problem() or load_backend()
    if reason is not None:
        return run_headless(paths, config, reason, listen=listen)
    try:
        return TrayApp(paths, config, listen=listen).run()
    except Exception as exc:  # e.g. GTK with no D-Bus session: the proxy still matters
        reason = f"the tray failed ({type(exc).__name__}: {exc})"
        return run_headless(paths, config, reason, listen=listen)
