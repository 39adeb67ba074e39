"""The tray icon as the last way to show a notification (alert_delivery.py tries the
desktop's own services first): pystray's balloon, on Windows, where it has one."""

from __future__ import annotations

from typing import Any

from devmeter.alert_delivery import Backend, Unavailable


def icon_backend(icon: Any) -> Backend:
    """The tray icon's own `notify` (pystray): a balloon on Windows, where it has one."""

    def send(title: str, message: str) -> None:
        if not getattr(icon, "HAS_NOTIFICATION", True):
            raise Unavailable(f"{type(icon).__name__} has no notifications")
        icon.notify(message, title)

    return Backend("tray icon", send)
