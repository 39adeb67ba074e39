"""Alert delivery: desktop notifications for alerts, several ways to show one, each
checked, and no flood. One module for the proxy (which notifies on its own, tray or not),
the tray and `devmeter doctor`; it imports neither.

`Notifier` tries its backends in order until one shows the notification:

1. desktop-notifier: D-Bus `org.freedesktop.Notifications` on Linux, WinRT toasts on
   Windows, the Notification Center from a macOS app bundle. The only one with action
   buttons (an ask's Continue / Stop), and it reports whether the notification service
   took the notification, so a desktop with no notification daemon falls through.
2. the OS's own command, its exit status checked: `notify-send` (Linux), `osascript`
   (macOS), a PowerShell toast (Windows);
3. plyer, off Linux (on Linux it runs notify-send and ignores the exit status, so it
   would report a failed notification as shown);
4. the tray icon's `notify` (the tray passes `tray/icon_notify.py`'s backend in).

A failure is logged, never raised. A backend that cannot work on this machine at all
(missing module or binary) is skipped from then on. When no backend works, the log says
so once and `notify-status.json` beside the ledger says so for the tray and `devmeter
doctor` (`ok`, the backend that worked, each one's problem).

"blocked" and "ask" are urgent (critical) and stay until dismissed; the others use the
platform's normal timeout. An ask's buttons call `on_answer(ask id, choice)`.

Rate limits: an alert is shown once (by kind, scope, key and figure, for
`dedupe_seconds`); at most `max_per_minute` notifications a minute, the last of which
is kept for a summary: when alerts pile up, they are held for `collapse_seconds` and
shown as one. A "blocked" or "ask" alert is never held: the developer's tool just
stopped, or waits for an answer.

Backends run in the calling thread and may block for seconds (plyer's Windows balloon
sleeps), so call `notify`, `flush` and `show_first` off the tray's main thread (any
thread will do); call `flush` every few seconds so held alerts go out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from devmeter.alerts import MESSAGE_MAX, Alert
from devmeter.paths import write_private

log = logging.getLogger(__name__)

Delivery = Literal["sent", "duplicate", "held", "failed"]
Send = Callable[[str, str], None]  # (title, message); raises when it cannot show it
Urgency = Literal["normal", "critical"]
Answer = Callable[[str, str], object]  # (ask id, choice): an ask's button was pressed

# Windows cuts balloon titles at 64 and texts at 256 characters; others are roomier.
TITLE_MAX = 63
SUBPROCESS_TIMEOUT = 10

TITLES = {
    "threshold": "Spend threshold passed",
    "projection": "Session burning fast",
    "loop": "Possible agent loop",
    "long_running": "Long unattended session",
    "blocked": "Requests blocked",
    "ask": "Continue spending?",
    "secret": "Secret in a request",
}
# How a summary counts them: (one, many).
COUNTED = {
    "threshold": ("spend threshold passed", "spend thresholds passed"),
    "projection": ("session burning fast", "sessions burning fast"),
    "loop": ("possible loop", "possible loops"),
    "long_running": ("unattended session", "unattended sessions"),
    "blocked": ("cap blocking requests", "caps blocking requests"),
    "ask": ("request waiting for you", "requests waiting for you"),
    "secret": ("secret in a request", "secrets in requests"),
}
# Which held alert a summary leads with.
SEVERITY = ("ask", "blocked", "secret", "projection", "loop", "long_running", "threshold")
# Urgent, shown at once and kept on screen until dismissed.
URGENT = ("blocked", "ask")
# How long a backend may take to say whether it showed a notification.
DELIVERY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Action:
    id: str  # what on_answer hears: "continue", "stop"
    label: str


@dataclass(frozen=True)
class Notice:
    """One notification as a backend with buttons and urgency sees it."""

    title: str
    message: str
    urgency: Urgency = "normal"
    actions: tuple[Action, ...] = ()
    on_action: Callable[[str], object] | None = None  # called with Action.id
    # An ask's id: `Notifier.withdraw_except` takes its popup down once it is answered.
    tag: str | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    send: Send
    # A backend that can show urgency and buttons takes the whole Notice instead.
    send_notice: Callable[[Notice], None] | None = field(default=None, compare=False)
    # Takes down the notification it showed for a Notice's `tag` (if it still shows).
    withdraw: Callable[[str], None] | None = field(default=None, compare=False)


class Unavailable(Exception):
    """This backend cannot work on this machine at all: stop trying it."""


# --- backends ------------------------------------------------------------------------------


def plyer_backend(notify: Callable[..., Any] | None = None) -> Backend:
    """plyer's `notification.notify` (or a stand-in with its signature, for tests)."""

    def send(title: str, message: str) -> None:
        target = notify
        if target is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # plyer warns about each missing piece
                    from plyer import notification
            except ImportError as exc:
                raise Unavailable(f"plyer: {exc}") from exc
            target = notification.notify
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target(title=title, message=message, app_name="devmeter", timeout=10)
        except (NotImplementedError, ImportError) as exc:
            # plyer has no implementation here (e.g. Linux without dbus or notify-send,
            # macOS without pyobjus).
            raise Unavailable(f"plyer: {type(exc).__name__} {exc}") from exc

    return Backend("plyer", send)


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    exe = shutil.which(argv[0])
    if exe is None:
        raise Unavailable(f"{argv[0]} not found on PATH")
    subprocess.run(
        [exe, *argv[1:]],
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )


def osascript_backend() -> Backend:
    """macOS: `display notification`. Title and text go in as arguments, never as code."""

    def send(title: str, message: str) -> None:
        _run(
            [
                "osascript",
                "-e",
                "on run argv",
                "-e",
                "display notification (item 2 of argv) with title (item 1 of argv)",
                "-e",
                "end run",
                title,
                message,
            ]
        )

    return Backend("osascript", send)


def notify_send_backend() -> Backend:
    """Linux and BSDs: libnotify's `notify-send`; a non-zero exit (no D-Bus session, no
    notification daemon) is a failure, so the next backend is tried."""

    def send_notice(notice: Notice) -> None:
        urgency = ["--urgency=critical", "--expire-time=0"] if notice.urgency == "critical" else []
        _run(["notify-send", "--app-name=devmeter", *urgency, "--", notice.title, notice.message])

    def send(title: str, message: str) -> None:
        send_notice(Notice(title, message))

    return Backend("notify-send", send, send_notice)


class DesktopNotifierBackend:
    """desktop-notifier in a thread of its own, whose asyncio loop stays up to hear the
    buttons pressed (D-Bus `ActionInvoked` on Linux) for as long as the process lives."""

    name = "desktop-notifier"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notifier: Any = None
        self._lock = threading.Lock()
        self._shown: dict[str, int] = {}  # a tagged notice's D-Bus notification id

    def backend(self) -> Backend:
        return Backend(
            self.name, lambda t, m: self.send(Notice(t, m)), self.send, withdraw=self.withdraw
        )

    def withdraw(self, tag: str) -> None:
        """Close the notification shown for `tag`. Critical ones never time out, and not
        every daemon closes one when a button is pressed (dunst 1.9 keeps it), so an ask
        answered anywhere would otherwise stay on screen asking."""
        nid = self._shown.pop(tag, None)
        if nid is None or self._loop is None:
            return
        interface = getattr(getattr(self._notifier, "_backend", None), "interface", None)
        close = getattr(interface, "call_close_notification", None)
        if close is None:  # not D-Bus (Windows, macOS), or a desktop-notifier without it
            return

        async def close_it() -> None:
            try:
                await close(nid)
            except Exception as exc:  # already closed by the user or the daemon
                log.debug("notifications: closing %s: %s", nid, exc)

        asyncio.run_coroutine_threadsafe(close_it(), self._loop).result(DELIVERY_TIMEOUT)

    def _start(self) -> tuple[asyncio.AbstractEventLoop, Any]:
        with self._lock:
            if self._loop is None:
                try:
                    from desktop_notifier import DesktopNotifier
                    from desktop_notifier.backends.dummy import DummyNotificationCenter
                except ImportError as exc:
                    raise Unavailable(f"desktop-notifier: {exc}") from exc
                # It logs each failure with a traceback; devmeter logs one line instead.
                logging.getLogger("desktop_notifier").setLevel(logging.CRITICAL)
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="devmeter-desktop-notifier", daemon=True
                ).start()

                async def make() -> Any:  # its constructor wants a running loop
                    return DesktopNotifier(app_name="devmeter", app_icon=None)

                try:
                    notifier = asyncio.run_coroutine_threadsafe(make(), loop).result(5)
                except Exception as exc:  # no backend for this platform at all
                    loop.call_soon_threadsafe(loop.stop)
                    raise Unavailable(f"desktop-notifier: {type(exc).__name__}: {exc}") from exc
                if isinstance(getattr(notifier, "_backend", None), DummyNotificationCenter):
                    # macOS outside an app bundle, old Windows: it would "show" nothing.
                    loop.call_soon_threadsafe(loop.stop)
                    raise Unavailable("desktop-notifier has no notification service here")
                self._loop, self._notifier = loop, notifier
            return self._loop, self._notifier

    def send(self, notice: Notice) -> None:
        loop, notifier = self._start()
        from desktop_notifier import Button, Notification, Urgency

        shown = threading.Event()

        def pressed(action_id: str) -> Callable[[], None]:
            def on_pressed() -> None:
                if notice.on_action is not None:
                    try:
                        notice.on_action(action_id)
                    except Exception as exc:  # a button must never take devmeter down
                        log.warning("notifications: answering %s failed: %s", action_id, exc)

            return on_pressed

        critical = notice.urgency == "critical"
        notification = Notification(
            title=notice.title,
            message=notice.message,
            urgency=Urgency.Critical if critical else Urgency.Normal,
            buttons=tuple(Button(a.label, pressed(a.id), identifier=a.id) for a in notice.actions),
            on_dispatched=shown.set,
            timeout=0 if critical else -1,  # 0: until dismissed; -1: the platform's own
        )
        future = asyncio.run_coroutine_threadsafe(notifier.send_notification(notification), loop)
        identifier = future.result(DELIVERY_TIMEOUT)
        if not shown.is_set():
            # desktop-notifier logs and swallows failures; only `on_dispatched` says it
            # was shown (no D-Bus session bus, no notification daemon on it, ...).
            raise RuntimeError("the notification service did not take the notification")
        if notice.tag is not None:
            # Its D-Bus id, from desktop-notifier's own table (it forgets the id once a
            # button is pressed, and a popup dunst keeps must still be closed then).
            ids = getattr(
                getattr(notifier, "_backend", None),
                "_platform_to_interface_notification_identifier",
                None,
            )
            nid = getattr(ids, "inverse", {}).get(identifier)
            if isinstance(nid, int):
                self._shown[notice.tag] = nid


def desktop_notifier_backend() -> Backend:
    return DesktopNotifierBackend().backend()


# Windows PowerShell 5.1 (not pwsh 7) can reach the WinRT toast API. The AppUserModelID is
# PowerShell's own: toasts from an unregistered id are silently dropped. Title and text
# arrive in environment variables, so nothing in them is ever parsed as script.
_TOAST_SCRIPT = """
$ErrorActionPreference = 'Stop'
[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType = WindowsRuntime] > $null
$kind = [Windows.UI.Notifications.ToastTemplateType]::ToastText02
$xml = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent($kind)
$texts = $xml.GetElementsByTagName('text')
$texts.Item(0).AppendChild($xml.CreateTextNode($env:DEVMETER_NOTIFY_TITLE)) > $null
$texts.Item(1).AppendChild($xml.CreateTextNode($env:DEVMETER_NOTIFY_MESSAGE)) > $null
$toast = [Windows.UI.Notifications.ToastNotification]::new($xml)
$app = '{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\\WindowsPowerShell\\v1.0\\powershell.exe'
[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier($app).Show($toast)
"""  # noqa: E501 - a type literal cannot be split


def powershell_backend() -> Backend:
    """Windows: a toast through Windows PowerShell."""

    def send(title: str, message: str) -> None:
        env = {**os.environ, "DEVMETER_NOTIFY_TITLE": title, "DEVMETER_NOTIFY_MESSAGE": message}
        _run(
            ["powershell", "-NoProfile", "-NonInteractive", "-Command", _TOAST_SCRIPT],
            env=env,
        )

    return Backend("powershell", send)


def default_backends(last: Sequence[Backend] = (), platform: str = sys.platform) -> list[Backend]:
    """desktop-notifier, this OS's command, plyer (not on Linux), then `last` (the tray
    passes its icon's)."""
    backends = [desktop_notifier_backend()]
    if platform == "darwin":
        backends += [osascript_backend(), plyer_backend()]
    elif platform.startswith("win"):
        backends += [powershell_backend(), plyer_backend()]
    else:
        backends.append(notify_send_backend())
    backends.extend(last)
    return backends


def status_path(data_dir: Path) -> Path:
    """Where the notifier says whether notifications can be shown (tray, doctor)."""
    return data_dir / "notify-status.json"


def read_status(data_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(status_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def show_first(
    backends: Sequence[Backend], notice: Notice, unavailable: set[str] | None = None
) -> tuple[str | None, dict[str, str]]:
    """Show `notice` through the first backend that can: that backend's name (None when
    none could) and what went wrong with each one tried before it. A backend that cannot
    work here at all joins `unavailable` and is skipped while that set is kept. Never
    raises: a notification must never take devmeter down."""
    unavailable = set() if unavailable is None else unavailable
    problems: dict[str, str] = {}
    for backend in backends:
        if backend.name in unavailable:
            problems[backend.name] = "unavailable here"
            continue
        try:
            if backend.send_notice is not None:
                backend.send_notice(notice)
            else:
                backend.send(notice.title, notice.message)
        except Unavailable as exc:
            log.debug("notifications: %s unavailable here (%s)", backend.name, exc)
            unavailable.add(backend.name)
            problems[backend.name] = f"unavailable here: {exc}"
        except Exception as exc:  # a notification must never take devmeter down
            log.debug("notifications: %s failed: %s", backend.name, exc)
            problems[backend.name] = _describe(exc)
        else:
            return backend.name, problems
    return None, problems


# --- the notifier --------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class Notifier:
    def __init__(
        self,
        backends: Sequence[Backend] | None = None,
        *,
        max_per_minute: int = 3,
        collapse_seconds: float = 10.0,
        dedupe_seconds: float = 3600.0,
        on_answer: Answer | None = None,
        status_file: Path | None = None,
    ) -> None:
        if max_per_minute < 1:
            raise ValueError("max_per_minute must be at least 1")
        self.backends = list(backends) if backends is not None else default_backends()
        self.max_per_minute = max_per_minute
        self.collapse_seconds = collapse_seconds
        self.dedupe_seconds = dedupe_seconds
        self.on_answer = on_answer
        self.status_file = status_file
        # Whether the last notification was shown, by which backend, and each problem.
        self.status: dict[str, Any] = {"ok": None, "backend": None, "problems": {}}
        self._unavailable: set[str] = set()
        self._sent: deque[float] = deque()  # when each notification went out
        self._seen: dict[tuple[str, str, str, Decimal], float] = {}
        self._held: list[Alert] = []
        self._held_since = 0.0
        self._asks_shown: set[str] = set()  # ids of the asks whose popups went out
        # The proxy's alert reader and the tray's tick may both call in.
        self._lock = threading.Lock()

    def notify(self, alert: Alert, now: float | None = None) -> Delivery:
        """Show `alert` now, hold it for a summary, or drop it as a duplicate."""
        with self._lock:
            return self._notify(alert, time.time() if now is None else now)

    def flush(self, now: float | None = None) -> Delivery | None:
        """Show held alerts as one summary once they have gathered and the rate allows."""
        with self._lock:
            return self._flush(time.time() if now is None else now)

    @property
    def held(self) -> int:
        return len(self._held)

    def _notify(self, alert: Alert, now: float) -> Delivery:
        self._forget(now)
        key = (alert.kind, alert.scope, alert.key, alert.figure_usd)
        if key in self._seen:
            return "duplicate"
        self._seen[key] = now
        if alert.kind in URGENT or (
            not self._held and len(self._sent) < max(1, self.max_per_minute - 1)
        ):
            return self._show(TITLES.get(alert.kind, "Alert"), alert.message, now, alert)
        if not self._held:
            self._held_since = now
        self._held.append(alert)
        self._flush(now)
        return "held"

    def _flush(self, now: float) -> Delivery | None:
        self._forget(now)
        if not self._held or now - self._held_since < self.collapse_seconds:
            return None
        if len(self._sent) >= self.max_per_minute:
            return None
        held, self._held = self._held, []
        if len(held) == 1:
            return self._show(TITLES.get(held[0].kind, "Alert"), held[0].message, now)
        return self._show(*summary(held), now)

    def _forget(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - 60:
            self._sent.popleft()
        expired = [k for k, ts in self._seen.items() if ts <= now - self.dedupe_seconds]
        for k in expired:
            del self._seen[k]

    def _show(self, title: str, message: str, now: float, alert: Alert | None = None) -> Delivery:
        notice = self._notice(
            _clip(f"devmeter: {title}", TITLE_MAX), _clip(message, MESSAGE_MAX), alert
        )
        shown_by, problems = show_first(self.backends, notice, self._unavailable)
        if shown_by is not None and notice.tag is not None:
            self._asks_shown.add(notice.tag)
        if shown_by is not None:
            self._sent.append(now)
            self._report(True, shown_by, problems, now)
            return "sent"
        if self.status["ok"] is not False:  # once, not for every alert
            log.warning(
                "notifications: none could be shown (%s); alerts stay in `devmeter alerts` "
                "and this log",
                "; ".join(f"{name}: {why}" for name, why in problems.items()) or "no backends",
            )
        log.debug("notifications: no way to show %r: %s", notice.title, notice.message)
        self._report(False, None, problems, now)
        return "failed"

    def _notice(self, title: str, message: str, alert: Alert | None) -> Notice:
        if alert is None or alert.kind not in URGENT:
            return Notice(title, message)
        if alert.kind != "ask" or self.on_answer is None:
            return Notice(title, message, "critical")
        from devmeter.ask import STOP_LABELS, ask_id

        answer, the_id = self.on_answer, ask_id(alert.scope, alert.key, alert.figure_usd)
        actions = [
            Action("continue", "Continue"),
            Action("stop", STOP_LABELS.get(alert.scope, "Stop")),
        ]
        switch_to = getattr(alert, "switch_to", None)  # an AskAlert's offer
        if switch_to:
            actions.insert(1, Action("switch", f"Switch to {switch_to}"))
        return Notice(
            title,
            message,
            "critical",
            tuple(actions),
            lambda choice: answer(the_id, choice),
            tag=the_id,
        )

    def withdraw_except(self, open_ids: set[str]) -> None:
        """Take down the popups of asks no longer open (answered from a button, the tray
        menu or `devmeter allow|stop`): an ask that still asks after its answer misleads.
        Call off the event loop, like `notify` (a D-Bus round trip)."""
        with self._lock:
            gone = self._asks_shown - open_ids
            self._asks_shown &= open_ids
        for tag in gone:
            for backend in self.backends:
                if backend.withdraw is not None:
                    try:
                        backend.withdraw(tag)
                    except Exception as exc:  # a notification must never take devmeter down
                        log.debug("notifications: %s withdraw failed: %s", backend.name, exc)

    def _report(self, ok: bool, backend: str | None, problems: dict[str, str], now: float) -> None:
        """Keep `status` (and its file) saying whether notifications can be shown."""
        changed = (ok, backend) != (self.status["ok"], self.status["backend"])
        self.status = {"ok": ok, "backend": backend, "problems": problems, "ts": now}
        if changed and self.status_file is not None:
            try:
                tmp = self.status_file.with_suffix(f".{os.getpid()}.tmp")
                write_private(tmp, json.dumps(self.status, indent=1))  # 0600, as all state
                tmp.replace(self.status_file)
            except OSError as exc:
                log.debug("notifications: cannot write %s: %s", self.status_file, exc)


def _describe(exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"exit status {exc.returncode}" + (f": {err[-1]}" if err else "")
    return f"{type(exc).__name__}: {exc}"


def summary(alerts: Sequence[Alert]) -> tuple[str, str]:
    """One notification for many alerts: counts by kind, then the most severe in full."""
    counts = Counter(a.kind for a in alerts)
    parts = [f"{n} {COUNTED.get(kind, (kind, kind))[n > 1]}" for kind, n in counts.most_common()]
    lead = min(alerts, key=lambda a: SEVERITY.index(a.kind) if a.kind in SEVERITY else 99)
    title = f"{len(alerts)} alerts"
    message = f"{'; '.join(parts)}. Most urgent: {lead.message}"
    return title, message
