"""pystray's GTK backend, made to stay when the tray host is killed.

GtkStatusIcon docks by itself whenever a tray host appears, and survives a panel that
stops cleanly. A panel that is killed (it crashed, or was restarted with SIGKILL) takes
the icon's window with it: GDK would end the process on the next X request to that
window (see `app._survive_x_errors_in_gtk`), and the status icon, its window gone, never
docks again. `StayingIcon` watches the status icon's `embedded` property: when it drops
and the icon's window is gone, it replaces the status icon at once with a new one, which
docks in the next tray host; when the window is still there (a tray that stopped
cleanly gives it back) the same status icon docks again by itself, and is replaced only
if a tray host is there and has not taken it within two seconds. It
also sets the tooltip, which pystray's GTK backend leaves empty (it sets only the
accessible title), so a proxy that cannot start is said where a user looks.

Importing this module imports GTK 3 through PyGObject.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

from gi.repository import GLib, Gtk
from pystray import _gtk

OnDock = Callable[[bool], None]  # True when docked, False when there is no tray (any more)
FIRST_DOCK_WAIT_MS = 2000  # a tray that is there docks us well within this
LOOK_MS = 1000  # how often an undocked icon looks for a tray host
REPLACE_AFTER_LOOKS = 2  # looks with a tray host there and the icon not in it


class StayingIcon(_gtk.Icon):  # type: ignore[misc]
    def __init__(self, *args: Any, on_dock: OnDock | None = None, **kwargs: Any) -> None:
        self._on_dock = on_dock
        self._docked_said: bool | None = None
        self._dead: list[Any] = []
        self._looking = False
        self._looks_with_host = 0
        # As the current status icon last said: asking a dead one prints Gtk-CRITICALs.
        self._embedded = False
        self._window_id = 0  # the X window of the docked status icon
        super().__init__(*args, **kwargs)
        self._watch(self._status_icon)
        GLib.timeout_add(FIRST_DOCK_WAIT_MS, self._first_look)

    def _initialize(self) -> None:
        """pystray connects to the desktop's notification service before it is ready, and a
        service that fails to start (a broken daemon, a bus without one) failed the whole
        tray, which then ran headless. devmeter sends its own notifications (notify.py):
        the icon does not need pystray's."""
        try:
            super()._initialize()
        except Exception as exc:
            print(
                f"devmeter: the tray icon cannot show notifications itself ({exc}); "
                "the icon works without",
                file=sys.stderr,
                flush=True,
            )
            self._notifier = _NoNotifier()
            self._mark_ready()

    def _watch(self, status_icon: Any) -> None:
        status_icon.connect("notify::embedded", self._on_embedded)

    def _first_look(self) -> bool:
        if self._docked_said is None:
            self._said(self._embedded)
        return False  # once

    def _on_embedded(self, status_icon: Any, _spec: object) -> None:
        if status_icon is not self._status_icon:
            return
        embedded = bool(status_icon.is_embedded())
        self._embedded = embedded
        self._said(embedded)
        if embedded:
            self._window_id = int(status_icon.get_x11_window_id())
            return
        if not window_exists(_window_of(status_icon)):
            # Killed with the tray: replace it now, before a redraw touches it (GTK can
            # crash drawing into a widget whose window is gone). A tray that stopped
            # cleanly leaves GTK a new window of its own (not the docked one), which
            # docks again by itself: replacing that one too made two icons.
            self._replace_status_icon()
        if not self._looking:
            self._looking = True
            self._looks_with_host = 0
            GLib.timeout_add(LOOK_MS, self._look_for_host)

    def _look_for_host(self) -> bool:
        """Until docked again: replace a status icon that a present tray does not take."""
        if self._embedded:
            self._looking = False
            return False
        if not tray_host_present():
            self._looks_with_host = 0
            return True
        self._looks_with_host += 1
        if self._looks_with_host >= REPLACE_AFTER_LOOKS:
            self._looks_with_host = 0
            self._replace_status_icon()
        return True

    def _replace_status_icon(self) -> None:
        old = self._status_icon
        new = Gtk.StatusIcon.new()
        new.connect("activate", self._on_status_icon_activate)
        new.connect("popup-menu", self._on_status_icon_popup_menu)
        if self._icon_path:
            new.set_from_file(self._icon_path)
        new.set_title(self.title)
        new.set_tooltip_text(self.title)
        self._status_icon = new
        self._watch(new)
        new.set_visible(self.visible)
        if window_exists(_window_of(old)):
            # Alive but not taken (yet) by a slow new tray host, which would dock it late
            # beside the new one.
            old.set_visible(False)
        # The old one's window died with a killed tray: GTK complains (Gtk-CRITICAL) about
        # any call on it, even finalizing it, so it is kept and never touched again.
        self._dead.append(old)

    @_gtk.mainloop  # type: ignore[misc]
    def _update_title(self) -> None:
        self._status_icon.set_title(self.title)
        self._status_icon.set_tooltip_text(self.title)

    def _said(self, docked: bool) -> None:
        if docked != self._docked_said:
            self._docked_said = docked
            if self._on_dock is not None:
                with contextlib.suppress(Exception):  # a report must not stop the loop
                    self._on_dock(docked)


class _NoNotifier:
    def notify(self, *_args: object) -> None:
        raise OSError("no notification service")

    def hide(self) -> None:
        pass


def _window_of(status_icon: Any) -> int:
    """The status icon's X window now (GTK makes a new one when a tray gives it back)."""
    try:
        return int(status_icon.get_x11_window_id())
    except Exception:
        return 0


def window_exists(window_id: int) -> bool:
    """Whether an X window still exists (asked over a connection of our own)."""
    from Xlib import display as xdisplay
    from Xlib import error

    if not window_id:
        return False
    try:
        conn = xdisplay.Display()
    except Exception:
        return False
    try:
        conn.create_resource_object("window", window_id).get_geometry()
        return True
    except error.XError:
        return False
    finally:
        conn.close()


def tray_host_present() -> bool:
    """Whether a system tray owns this screen's tray selection now (python-xlib, which
    pystray needs on Linux anyway; GDK does not tell about other clients' selections)."""
    from Xlib import X
    from Xlib import display as xdisplay

    try:
        conn = xdisplay.Display()
    except Exception:
        return False
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        return bool(conn.get_selection_owner(atom) != X.NONE)
    finally:
        conn.close()
