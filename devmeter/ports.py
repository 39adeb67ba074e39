"""Is the proxy's port free, and if not, who holds it: for one clear line instead of a traceback.

Used by `devmeter proxy` before it starts mitmproxy (and when mitmproxy fails to bind
anyway), and by the tray's supervisor to wait for a taken port without starting proxies
that can only fail. Imports neither mitmproxy nor anything slow.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass

import psutil

# `devmeter proxy` exits with this when it cannot listen because the address is in use, so
# the tray, the headless line and service managers can tell it from a crash.
# 75 is sysexits' EX_TEMPFAIL: the same command works once the other process lets go.
EXIT_PORT_TAKEN = 75


@dataclass(frozen=True)
class Holder:
    """The process listening on a port, as far as this user can see it."""

    pid: int
    name: str
    is_devmeter: bool
    # The devmeter (tray or headless) whose child this proxy is: killing the proxy alone
    # only has it restarted, so that is the process to name.
    supervisor: int | None = None

    def describe(self) -> str:
        what = "another devmeter proxy" if self.is_devmeter else self.name
        return f"{what} (pid {self.pid})"


def bind_error(host: str, port: int) -> OSError | None:
    """Why binding host:port fails right now, or None if it would work.

    Binds the way asyncio's servers (and so mitmproxy) do: SO_REUSEADDR on POSIX, so a
    socket lingering in TIME_WAIT does not count as taken; on Windows that option would
    let us share a live port, so it is left off there. Port 0 is always free."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc}")
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def is_in_use(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (
        errno.EADDRINUSE,
        10048,  # WSAEADDRINUSE, as Windows may report it
    )


def holder(port: int) -> Holder | None:
    """The process listening on `port` (any address), if this user may know it."""
    pids: set[int] = set()
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr
            if listening and conn.laddr.port == port and conn.pid:
                pids.add(conn.pid)
    except (psutil.AccessDenied, OSError):
        # macOS: the system-wide list needs root; our own processes we may still look at.
        pids = _own_listeners(port)
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            name = proc.name()
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                cmdline = ""
            is_devmeter = "devmeter" in cmdline and " proxy" in cmdline
            supervisor = _devmeter_parent(proc) if is_devmeter else None
            return Holder(pid, name, is_devmeter, supervisor)
    return None


def _devmeter_parent(proc: psutil.Process) -> int | None:
    """The pid of the `devmeter` (tray or headless line) that started this proxy, if any:
    not `devmeter run`, whose proxy lives only as long as its command."""
    with contextlib.suppress(psutil.Error):
        parent = proc.parent()
        if parent is not None:
            words = parent.cmdline()
            if any("devmeter" in w for w in words) and not {"proxy", "run"} & set(words):
                return parent.pid
    return None


def _own_listeners(port: int) -> set[int]:
    found: set[int] = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    found.add(proc.pid)
    return found


def taken_message(
    host: str,
    port: int,
    who: Holder | None,
    command: str = "devmeter proxy",
    config: str = "config.toml",
) -> str:
    """The one line a user sees: the port, who holds it, and the two ways out (`config`:
    the config file's path, which this base module cannot know)."""
    if who is None:
        by, fix = "another process", "stop it"
    elif who.is_devmeter and who.supervisor is not None:
        # The usual case for a new user: devmeter already runs, and this is its proxy.
        by = f"the proxy of devmeter, already running (pid {who.supervisor})"
        fix = (
            "it meters already, so there is nothing to start (`devmeter doctor` shows it); "
            f"to stop it, `kill {who.supervisor}` (its proxy stops with it; killed alone, "
            "the proxy is restarted)"
        )
    elif who.is_devmeter:
        by, fix = who.describe(), f"stop it (kill {who.pid})"
    else:
        by, fix = who.describe(), f"stop {who.name}"
    return (
        f"devmeter: port {port} on {host} is taken by {by}; {fix}, or use another port: "
        f"`{command} --listen {host}:PORT` (or `listen` under [proxy] in {config})"
    )


def listen_error_message(
    host: str,
    port: int,
    error: OSError,
    command: str = "devmeter proxy",
    config: str = "config.toml",
) -> str:
    """A bind failure other than a taken port (a bad address, a privileged port)."""
    why = error.strerror or str(error)
    return (
        f"devmeter: cannot listen on {host}:{port}: {why}; use another address: "
        f"`{command} --listen 127.0.0.1:PORT` (or `listen` under [proxy] in {config})"
    )
