"""Desktop notifications for alerts: several ways to show one, and no flood.

`Notifier` tries its backends in order until one works: plyer first, then the OS's own
command (`osascript` on macOS, `notify-send` on Linux, a PowerShell toast on Windows),
then the tray icon's `notify`. A failure is logged, never raised. A backend that cannot
work on this machine at all (missing module or binary) is skipped from then on.

Rate limits: an alert is shown once (by kind, scope, key and figure, for
`dedupe_seconds`); at most `max_per_minute` notifications a minute, the last of which
is kept for a summary: when alerts pile up, they are held for `collapse_seconds` and
shown as one. A "blocked" alert is never held: the developer's tool just stopped.

Backends run in the calling thread and may block for seconds (plyer's Windows balloon
sleeps), so call `notify` and `flush` off the tray's main thread (any thread will do);
call `flush` every few seconds so held alerts go out.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from devmeter.budget import Alert

log = logging.getLogger(__name__)

Delivery = Literal["sent", "duplicate", "held", "failed"]
Send = Callable[[str, str], None]  # (title, message); raises when it cannot show it

# Windows cuts balloon titles at 64 and texts at 256 characters; others are roomier.
TITLE_MAX = 63
MESSAGE_MAX = 255
SUBPROCESS_TIMEOUT = 10

TITLES = {
    "threshold": "Spend threshold passed",
    "projection": "Session burning fast",
    "loop": "Possible agent loop",
    "long_running": "Long unattended session",
    "blocked": "Requests blocked",
}
# How a summary counts them: (one, many).
COUNTED = {
    "threshold": ("spend threshold passed", "spend thresholds passed"),
    "projection": ("session burning fast", "sessions burning fast"),
    "loop": ("possible loop", "possible loops"),
    "long_running": ("unattended session", "unattended sessions"),
    "blocked": ("cap blocking requests", "caps blocking requests"),
}
# Which held alert a summary leads with.
SEVERITY = ("blocked", "projection", "loop", "long_running", "threshold")


@dataclass(frozen=True)
class Backend:
    name: str
    send: Send


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
    """Linux and BSDs: libnotify's `notify-send`."""

    def send(title: str, message: str) -> None:
        _run(["notify-send", "--app-name=devmeter", "--", title, message])

    return Backend("notify-send", send)


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


def icon_backend(icon: Any) -> Backend:
    """The tray icon's own `notify` (pystray): a balloon on Windows, where it has one."""

    def send(title: str, message: str) -> None:
        if not getattr(icon, "HAS_NOTIFICATION", True):
            raise Unavailable(f"{type(icon).__name__} has no notifications")
        icon.notify(message, title)

    return Backend("tray icon", send)


def default_backends(icon: Any = None, platform: str = sys.platform) -> list[Backend]:
    """plyer, then this OS's command, then the tray icon if there is one."""
    backends = [plyer_backend()]
    if platform == "darwin":
        backends.append(osascript_backend())
    elif platform.startswith("win"):
        backends.append(powershell_backend())
    else:
        backends.append(notify_send_backend())
    if icon is not None:
        backends.append(icon_backend(icon))
    return backends


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
    ) -> None:
        if max_per_minute < 1:
            raise ValueError("max_per_minute must be at least 1")
        self.backends = list(backends) if backends is not None else default_backends()
        self.max_per_minute = max_per_minute
        self.collapse_seconds = collapse_seconds
        self.dedupe_seconds = dedupe_seconds
        self._unavailable: set[str] = set()
        self._sent: deque[float] = deque()  # when each notification went out
        self._seen: dict[tuple[str, str, str, Decimal], float] = {}
        self._held: list[Alert] = []
        self._held_since = 0.0
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
        if alert.kind == "blocked" or (
            not self._held and len(self._sent) < max(1, self.max_per_minute - 1)
        ):
            return self._show(TITLES.get(alert.kind, "Alert"), alert.message, now)
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

    def _show(self, title: str, message: str, now: float) -> Delivery:
        title = _clip(f"devmeter: {title}", TITLE_MAX)
        message = _clip(message, MESSAGE_MAX)
        for backend in self.backends:
            if backend.name in self._unavailable:
                continue
            try:
                backend.send(title, message)
            except Unavailable as exc:
                log.info("notifications: %s unavailable here (%s)", backend.name, exc)
                self._unavailable.add(backend.name)
            except Exception as exc:  # a notification must never take devmeter down
                log.info("notifications: %s failed: %s", backend.name, exc)
            else:
                self._sent.append(now)
                return "sent"
        log.warning("notifications: no way to show %r: %s", title, message)
        return "failed"


def summary(alerts: Sequence[Alert]) -> tuple[str, str]:
    """One notification for many alerts: counts by kind, then the most severe in full."""
    counts = Counter(a.kind for a in alerts)
    parts = [f"{n} {COUNTED.get(kind, (kind, kind))[n > 1]}" for kind, n in counts.most_common()]
    lead = min(alerts, key=lambda a: SEVERITY.index(a.kind) if a.kind in SEVERITY else 99)
    title = f"{len(alerts)} alerts"
    message = f"{'; '.join(parts)}. Most urgent: {lead.message}"
    return title, message
