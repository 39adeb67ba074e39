"""pystray's plain X backend, made to stay: an icon that waits for a tray host and follows it.

pystray's own X icon docks only if a system tray owns the `_NET_SYSTEM_TRAY_S<n>` selection
at the moment it is shown: started before the panel (XDG autostart often does that) it logs
"Failed to dock icon" tracebacks and never appears; when the panel restarts it never comes
back; and when the panel dies its event loop ends (the icon's window dies with the panel),
so the app believed it had been quit.

`DockingIcon` changes only that: it listens on the root window for the tray host's
`MANAGER` announcement (the XEmbed system tray protocol's "a tray is here now") and docks
then; when the host goes away it unhides nothing and waits; when its own window was
destroyed with the host it makes a new one. X errors about windows that vanished are
expected on the way and are not printed. Everything runs on pystray's loop thread, like
the rest of the backend.

A change the loop makes to the window (its title, which is the tooltip, and the icon's
pixels) ends with a round trip to the X server: pystray leaves those requests in
python-xlib's buffer, and python-xlib can leave them there for good: when the loop thread
goes back to wait for events while another thread is still sending on the connection
(such as the one that handed it the change, finishing its flush), it waits without
sending, and nothing looks at the buffer again until some event arrives, which on an
idle icon may be never. About one title change in five was lost so (the tooltip never
named a taken port) until the next redraw happened to flush it.

Importing this module imports pystray's X backend, which needs a display.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import Xlib.X
from pystray import _xorg

OnDock = Callable[[bool], None]  # called with True when docked, False when the tray is gone


class DockingIcon(_xorg.Icon):  # type: ignore[misc]
    def __init__(self, *args: Any, on_dock: OnDock | None = None, **kwargs: Any) -> None:
        self._on_dock = on_dock
        self._wants_dock = False  # shown: dock whenever a tray host is there
        self._stopping = False
        self._docked_said: bool | None = None
        super().__init__(*args, **kwargs)
        self._quiet_x_errors()
        self._manager_atom = self._display.intern_atom("MANAGER")
        # A new tray host announces itself with a MANAGER client message to the root window.
        self._display.screen().root.change_attributes(event_mask=Xlib.X.StructureNotifyMask)
        self._display.flush()
        pystray_messages = self._message_handlers[Xlib.X.ClientMessage]

        def on_client_message(event: Any) -> None:
            if event.client_type == self._manager_atom:
                if event.data[1][1] == self._net_system_tray_sx:
                    self._dock()
                return
            pystray_messages(event)

        self._message_handlers[Xlib.X.ClientMessage] = on_client_message

    # --- pystray's implementation methods, run on its loop thread -----------------------

    def _show(self) -> None:
        self._wants_dock = True
        self._dock()

    def _hide(self) -> None:
        self._wants_dock = False
        if self._systray_manager is not None:
            with contextlib.suppress(Exception):
                self._undock_window()

    def _create_window(self) -> Any:
        """pystray's window, listening for clicks too: pystray 0.19.5 handles ButtonPress
        (a left click activates the menu's default item, "Open dashboard") but never asks
        the X server for it, so a click on the icon did nothing."""
        window = super()._create_window()
        window.change_attributes(
            event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask
        )
        return window

    def _update_icon(self) -> None:
        self._icon_data = None  # regenerated from the new image on the next draw
        if self._systray_manager is not None:
            self._draw()
            self._sent()
        self._icon_valid = True

    def _update_title(self) -> None:
        self._window.set_wm_name(self.title)
        self._sent()

    def _stop(self) -> None:
        self._stopping = True
        super()._stop()

    def __del__(self) -> None:
        # pystray's destructor destroys the window and closes the display: with the X
        # server gone (the session ended, the tray fell back to headless) that raises,
        # and Python prints the traceback at collection time.
        with contextlib.suppress(Exception):
            super().__del__()

    def _on_destroy_notify(self, event: Any) -> None:
        manager = self._systray_manager
        if manager is None or event.window.id != manager.id:
            return
        # The tray host is gone. If it kept our window (its save-set), the X server hands
        # the window back to the root, mapped: hide it until a tray takes it again.
        self._systray_manager = None
        with contextlib.suppress(Exception):
            self._window.unmap()
            self._display.flush()
        self._said(False)
        self._dock()  # another host may already own the selection

    def _mainloop(self) -> None:
        """pystray's loop, except that our window dying with the tray host is not the end."""
        for event in self._events():
            if event.type == Xlib.X.DestroyNotify and event.window == self._window:
                if self._stopping:
                    break
                self._new_window()
                continue
            self._message_handlers.get(event.type, _nothing)(event)

    # --- docking --------------------------------------------------------------------------

    def _dock(self) -> None:
        if not self._wants_dock:
            return
        self._systray_manager = None
        self._dock_window()  # sets _systray_manager if a tray host owns the selection
        if self._systray_manager is not None:
            self._icon_data = None
            self._draw()
            self._sent()
        self._said(self._systray_manager is not None)

    def _new_window(self) -> None:
        """Our window was destroyed with the tray that held it: start over with a new one."""
        self._systray_manager = None
        self._said(False)
        self._window = self._create_window()
        self._gc = self._window.create_gc()
        self._quiet_x_errors()  # pystray's window creation put the printing handler back
        self._icon_data = None
        self._dock()

    def _sent(self) -> None:
        """Wait until the X server has the requests made so far (see the module docstring).
        A round trip, not a flush: python-xlib's flush returns at once, sending nothing,
        while another thread is sending, and a reply comes only after all earlier requests
        were sent."""
        self._display.sync()

    def _quiet_x_errors(self) -> None:
        """Asynchronous X errors (a request on a window the dying tray took with it) are
        expected here; python-xlib's default handler would print each one."""
        self._display.set_error_handler(_ignore_x_error)

    def _said(self, docked: bool) -> None:
        if docked != self._docked_said:
            self._docked_said = docked
            if self._on_dock is not None:
                with contextlib.suppress(Exception):  # a report must not stop the loop
                    self._on_dock(docked)


def _ignore_x_error(*_args: object) -> None:
    pass


def _nothing(_event: object) -> None:
    pass
