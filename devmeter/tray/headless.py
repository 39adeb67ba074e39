"""No desktop: the supervised proxy, and one live line of spend in the terminal.

On a terminal the line is rewritten in place (`\\r`) twice a second:

    devmeter · today $12.40 · session $3.21 (acme-api) · month $310.55 · 42 calls · last …

When stdout is a file or a pipe (a service log), a plain line is printed whenever the
figures change (at most every `min_gap` seconds) and every `heartbeat` seconds anyway.
The proxy's own output (its address, alerts) goes to stderr, above the live line.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from devmeter import control as control_state
from devmeter.config import Config
from devmeter.integration import steps
from devmeter.labels import repo_name, short_session
from devmeter.ledger import connect_readonly
from devmeter.paths import Paths
from devmeter.reports import format_usd  # as reports show it: a sub-cent spend is not $0.00
from devmeter.safe_text import safe_text
from devmeter.tray.asks import with_state_files
from devmeter.tray.menu import AskRow, TraySnapshot, short_config_problem
from devmeter.tray.snapshot import Headline, headline, snapshot
from devmeter.tray.supervisor import EventKind, ProxyStatus, Supervisor, proxy_command
from devmeter.warnlog import route_warnings

SEP = " \u00b7 "


def status_line(snap: TraySnapshot, head: Headline, proxy: ProxyStatus | None = None) -> str:
    """`devmeter · today $X · session $Y (repo) · month $Z · N calls · last alert …`"""
    parts = ["devmeter"]
    if snap.paused:
        parts.append("PAUSED")
    elif snap.blocked:
        parts.append(f"BLOCKED by {len(snap.blocked)} cap{'s' if len(snap.blocked) > 1 else ''}")
    if proxy is not None and proxy.state not in ("running", "external"):
        parts.append(proxy.detail)
    if snap.asks:
        parts.append(_waiting(snap.asks))
    for session in snap.stopped:  # refused until allowed: say the command, as for asks
        short = short_session(session)
        parts.append(f"STOPPED session {short}, `devmeter allow {short}` lets it continue")
    if snap.config_problem:
        parts.append(f"config edit not applied: {short_config_problem(snap.config_problem)}")
    parts.append(f"today {format_usd(snap.today_usd)}")
    if head.session is not None:
        where = repo_name(head.session.repo) if head.session.repo else head.session.tool
        parts.append(f"session {format_usd(head.session.spend_usd)} ({where})")
    parts.append(f"month {format_usd(snap.month_usd)}")
    if snap.billing_line is not None:
        parts.append(snap.billing_line)
    parts.append(f"{head.calls_today} call{'' if head.calls_today == 1 else 's'}")
    if head.last_alert:
        parts.append(f"last alert {head.last_alert}")
    # Repo names and alert messages come from the network; this line goes to a terminal.
    return safe_text(SEP.join(parts), limit=None)


def route_hint(paths: Paths) -> str:
    """How to send tools through the proxy that just started. With devmeter's shell hook
    installed, new shells already do (and open ones at their next prompt): `eval` would
    pin a shell to the proxy, and leave its HTTPS dead once the proxy stops."""
    if any(change.get("kind") == "rc" for change in steps.load_manifest(paths)):
        return (
            "devmeter: shells with devmeter's hook (`devmeter setup`) route through it from "
            "their next prompt; `devmeter run -- CMD` routes one command; Ctrl-C stops it."
        )
    return (
        'devmeter: route your tools through it with `eval "$(devmeter env)"`, '
        "or `devmeter run -- CMD` (`devmeter setup` hooks every new shell); Ctrl-C stops it."
    )


def _waiting(asks: Sequence[AskRow]) -> str:
    """The first held request and the command that answers it: nobody clicks a live line."""
    ask = asks[0]
    if ask.scope == "session":
        who = short_session(ask.key)
        what, answer = f"session {who}", f"`devmeter allow {who}` or `devmeter stop {who}`"
    elif ask.scope == "repo":
        what, answer = f"repo {repo_name(ask.key)}", f"`devmeter allow --repo {ask.key}`"
    else:
        what, answer = ask.key, f"`devmeter allow --{ask.scope}`"
    more = f" (+{len(asks) - 1} more)" if len(asks) > 1 else ""
    state = "REFUSED until you answer" if ask.expired else "WAITING for you"
    return f"{state}: {what} passed {format_usd(ask.level_usd)}{more}, answer {answer}"


class LiveLine:
    """Writes the status line: in place on a terminal, as plain lines elsewhere."""

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        tty: bool | None = None,
        min_gap: float = 2.0,
        heartbeat: float = 60.0,
        width: Callable[[], int] | None = None,
    ) -> None:
        self.out = out
        self.err = err
        self.tty = out.isatty() if tty is None else tty
        self.min_gap = min_gap
        self.heartbeat = heartbeat
        self._width = width or (lambda: shutil.get_terminal_size((100, 24)).columns)
        self._shown = ""  # the line on screen (tty) or last printed
        self._printed_at = float("-inf")
        self._pending: str | None = None
        self._lock = threading.Lock()

    def show(self, line: str, now: float) -> None:
        with self._lock:
            if self.tty:
                width = max(20, self._width() - 1)
                if len(line) > width:
                    line = line[: width - 1] + "\u2026"
                if line != self._shown:
                    self._draw(line)
                return
            changed = line != self._shown
            due = now - self._printed_at >= (self.min_gap if changed else self.heartbeat)
            if due:
                self.out.write(line + "\n")
                self.out.flush()
                self._shown = line
                self._printed_at = now

    def message(self, text: str) -> None:
        """A line from the proxy or the supervisor, printed above the live line."""
        with self._lock:
            if self.tty and self._shown:
                self.out.write("\r\x1b[K")
                self.out.flush()
            self.err.write(text + "\n")
            self.err.flush()
            if self.tty and self._shown:
                self.out.write(self._shown)
                self.out.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty and self._shown:
                self.out.write("\n")
                self.out.flush()

    def _draw(self, line: str) -> None:
        self.out.write("\r\x1b[K" + line)
        self.out.flush()
        self._shown = line


def run_headless(
    paths: Paths,
    config: Config,
    reason: str | None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    supervisor: Supervisor | None = None,
    stop: threading.Event | None = None,
    interval: float = 0.5,
    live: LiveLine | None = None,
    clock: Callable[[], float] = time.time,
    listen: str | None = None,
) -> int:
    """Supervise the proxy and show the live line until `stop` is set, Ctrl-C or SIGTERM.

    `reason` says why there is no tray (None: the user asked for --headless)."""
    out = out or sys.stdout
    err = err or sys.stderr
    route_warnings(paths.data_dir)  # a library's warning is not a line for the terminal
    live = live or LiveLine(out, err)
    stop = stop or threading.Event()
    if reason is None:
        err.write("devmeter: running headless (--headless): the proxy and a live line of spend.\n")
    else:
        err.write(f"devmeter: {reason}: running headless; the tray needs a desktop session.\n")
    err.flush()

    def on_event(_kind: EventKind, message: str) -> None:
        live.message(message)

    supervisor = supervisor or Supervisor(
        paths,
        proxy_command(listen),
        on_event=on_event,
        on_output=live.message,
        listen=config.listen,
        mode="headless",
    )
    restore = _stop_on_sigterm(stop)
    supervisor.start()
    conn: sqlite3.Connection | None = None
    configured = config.section("routing").mode
    announced = False
    try:
        while not stop.is_set():
            if not announced and supervisor.status.state in ("running", "external"):
                announced = True
                live.message(route_hint(paths))
            if conn is None:
                conn = connect_readonly(paths.ledger)
            now = clock()
            try:
                ctl = control_state.load(control_state.control_path(paths.data_dir))
            except ValueError:
                ctl = control_state.Control()
            try:
                snap = with_state_files(
                    snapshot(conn, now, ctl, configured_routing=configured), paths.data_dir
                )
                line = status_line(snap, headline(conn, now, snap), supervisor.status)
            except sqlite3.Error as exc:
                line = f"devmeter{SEP}cannot read the ledger {paths.ledger}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            live.show(line, time.monotonic())
            stop.wait(interval)
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        live.close()
        supervisor.stop()
        if conn is not None:
            conn.close()
        # Its last word: run in the background with output to a file, it otherwise just
        # ended, and the file read as if it still ran.
        with contextlib.suppress(OSError, ValueError):
            err.write(
                "devmeter: stopped, and its proxy with it: nothing is metered until `devmeter` "
                "runs again (shells with devmeter's hook go direct meanwhile).\n"
            )
            err.flush()
    return 0


def _stop_on_sigterm(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM (systemd, launchd) ends the loop like Ctrl-C does; only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)

    return restore
