"""Keeps one `devmeter proxy` running for the tray app (or the headless status line).

`Supervisor.start()` watches from a thread of its own: when no proxy is running it
starts `sys.executable -m devmeter proxy` as a child; when the child dies it starts it
again after a back-off (1 s, 2 s, 4 s ... 30 s; back to 1 s once a child has stayed up a
minute) and says so through `on_event(kind, message)`. A proxy that is already running
(proxy.json names a live pid) is used instead of starting another, and left alone on
`stop()`; if it goes away, the supervisor starts its own.

A port someone else holds is not retried: before each start the supervisor checks
that the proxy's address can be bound (and a child that exits with
`ports.EXIT_PORT_TAKEN` counts the same). While it is taken the status says who holds it
and what to do, once, and the port is looked at again every few seconds, quietly; the
proxy starts as soon as it is free.

The child runs in a session of its own, so Ctrl-C in the terminal reaches only the
parent, which then stops the child cleanly (SIGTERM: the proxy flushes the ledger and
removes proxy.json). Its output is read line by line and handed to `on_output`.

Every change of state is also written to `supervisor.json` in the data directory (see
`status_path`), for `devmeter doctor` and scripts; it is removed on `stop()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import psutil

from devmeter import ports
from devmeter.diagnostics import say
from devmeter.paths import Paths

log = logging.getLogger(__name__)

State = Literal["starting", "running", "external", "restarting", "port_taken", "stopped"]
EventKind = Literal["external", "gone", "died", "killed", "error", "port_taken", "port_free"]
EVENTS: tuple[EventKind, ...] = (
    "external",
    "gone",
    "died",
    "killed",
    "error",
    "port_taken",
    "port_free",
)
BACKOFF: tuple[float, ...] = (1, 2, 4, 8, 16, 30)
STABLE_AFTER = 60.0  # seconds a child must stay up before the back-off starts over
STOP_TIMEOUT = 10.0
PORT_RECHECK = 5.0  # seconds between quiet looks at a taken port


@dataclass(frozen=True)
class ProxyStatus:
    state: State
    pid: int | None = None
    address: str | None = None  # "127.0.0.1:8788" once it listens
    detail: str = ""  # one line for a tooltip or the status line
    restarts: int = 0


def proxy_command(listen: str | None = None) -> list[str]:
    """`devmeter proxy`, with `--listen` when the tray was given one."""
    return [sys.executable, "-m", "devmeter", "proxy", *(["--listen", listen] if listen else [])]


def status_path(paths: Paths) -> Path:
    """Where the tray (or the headless line) says how its proxy is doing, as JSON:
    `pid` (the tray's), `mode`, `state`, `detail`, `listen`, `proxy_pid`, `address`,
    `restarts`, `port_holder` ({pid, name} or null), `updated`, plus what the tray adds
    (`tray`: whether the icon is docked). Present only while a tray or headless runs."""
    return paths.data_dir / "supervisor.json"


def read_status(paths: Paths) -> dict[str, Any] | None:
    """supervisor.json's contents if the process that wrote it is still alive; else None."""
    try:
        status = json.loads(status_path(paths).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return None
    return status


def read_proxy_state(paths: Paths) -> dict[str, object] | None:
    try:
        state = json.loads(paths.proxy_state.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def live_proxy(paths: Paths) -> dict[str, object] | None:
    """proxy.json's contents if the pid it names is alive (and older than the file's
    `started`, so a recycled pid does not count); else None."""
    state = read_proxy_state(paths)
    if state is None:
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return None
    started = state.get("started")
    if isinstance(started, int | float):
        try:
            if psutil.Process(pid).create_time() > started + 2:
                return None  # the pid was reused by a newer process
        except psutil.Error:
            return None
    return state


def _address(state: dict[str, object]) -> str:
    return f"{state.get('host')}:{state.get('port')}"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Supervisor:
    def __init__(
        self,
        paths: Paths,
        command: Sequence[str] | None = None,
        *,
        on_event: Callable[[EventKind, str], None] | None = None,
        on_output: Callable[[str], None] | None = None,
        backoff: Sequence[float] = BACKOFF,
        stable_after: float = STABLE_AFTER,
        poll_interval: float = 0.1,
        env: dict[str, str] | None = None,
        listen: tuple[str, int] | None = None,
        port_recheck: float = PORT_RECHECK,
        mode: str = "tray",
        write_status: bool = True,
    ) -> None:
        self.paths = paths
        self.command = list(command) if command is not None else proxy_command()
        # The address the proxy will bind: checked before each start, so a port someone
        # else holds is waited for instead of retried. None: not checked.
        self.listen = listen
        self.port_recheck = port_recheck
        self.mode = mode
        self.write_status = write_status
        self._notes: dict[str, object] = {}
        self._write_lock = threading.Lock()
        self._holder: ports.Holder | None = None
        self.on_event = on_event or _print_event
        self.on_output = on_output or _print_stderr
        self.backoff = tuple(backoff) or BACKOFF
        self.stable_after = stable_after
        self.poll_interval = poll_interval
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._started_at = 0.0
        self._next_start = 0.0
        self._failures = 0
        self._restarts = 0
        self._status = ProxyStatus("starting", detail="proxy starting")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- public --------------------------------------------------------------------------

    @property
    def status(self) -> ProxyStatus:
        with self._lock:
            return self._status

    @property
    def child(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="devmeter-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop watching, and stop our child (never a proxy someone else started)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.on_event(
                    "killed", f"devmeter: the proxy (pid {proc.pid}) did not stop; killed it"
                )
                proc.kill()
                proc.wait(5)
        for reader in self._readers:
            reader.join(2)
        self._set(ProxyStatus("stopped", detail="proxy stopped", restarts=self._restarts))
        if self.write_status:
            status_path(self.paths).unlink(missing_ok=True)

    def note(self, key: str, value: object) -> None:
        """Add a field to supervisor.json (the tray's docking state, say)."""
        with self._lock:
            self._notes[key] = value
            status = self._status
        self._write_status(status)

    def wait_running(self, timeout: float) -> ProxyStatus:
        """Block until a proxy listens (ours or another), or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status
            if status.state in ("running", "external"):
                return status
            time.sleep(0.02)
        return self.status

    # --- the watch loop -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick(time.monotonic())
            except Exception as exc:  # keep watching whatever one look ran into
                self.on_event("error", f"devmeter: proxy supervisor: {exc!r}")
            self._stopping.wait(self.poll_interval)

    def _tick(self, now: float) -> None:
        proc = self._proc
        if proc is None:
            self._maybe_start(now)
            return
        code = proc.poll()
        if code is None:
            if self._status.state != "running":
                state = read_proxy_state(self.paths)
                if state is not None and state.get("pid") == proc.pid:
                    self._set(
                        ProxyStatus(
                            "running",
                            proc.pid,
                            _address(state),
                            f"proxy on {_address(state)}",
                            self._restarts,
                        )
                    )
            return
        self._died(proc, code, now)

    def _maybe_start(self, now: float) -> None:
        other = live_proxy(self.paths)
        if other is not None:
            if self._status.state != "external" or self._status.pid != other.get("pid"):
                pid = other.get("pid")
                self._set(
                    ProxyStatus(
                        "external",
                        pid if isinstance(pid, int) else None,
                        _address(other),
                        f"using the proxy already running on {_address(other)} (pid {pid})",
                        self._restarts,
                    )
                )
                self.on_event("external", f"devmeter: {self._status.detail}")
            return
        if self._status.state == "external":
            self.on_event(
                "gone", f"devmeter: the proxy (pid {self._status.pid}) stopped; starting one"
            )
            self._next_start = 0.0
        if now < self._next_start:
            return
        if self._port_taken(now):
            return
        self._spawn(now)

    def _port_taken(self, now: float) -> bool:
        """Whether the proxy's port is held by someone else (said once, looked at again
        every `port_recheck` seconds); also announces when it comes free."""
        if self.listen is None or self.listen[1] == 0:
            return False
        host, port = self.listen
        problem = ports.bind_error(host, port)
        if problem is None or not ports.is_in_use(problem):
            if self._status.state == "port_taken":
                self.on_event("port_free", f"devmeter: port {port} is free now; starting the proxy")
            return False
        self._next_start = now + self.port_recheck
        holder = ports.holder(port)
        # Said again only for a new holder: a holder psutil cannot see for a moment (the
        # socket closing) is no news.
        news = holder is not None and holder != self._holder
        if self._status.state != "port_taken" or news:
            self._holder = holder
            message = ports.taken_message(
                host, port, holder, command="devmeter", config=str(self.paths.config_file)
            )
            by = holder.describe() if holder is not None else "another process"
            self._set(
                ProxyStatus(
                    "port_taken",
                    None,
                    None,
                    f"port {port} taken by {by}",
                    self._restarts,
                )
            )
            self.on_event(
                "port_taken",
                f"{message}. Waiting for the port: the proxy starts once it is free.",
            )
        return True

    def _spawn(self, now: float) -> None:
        # A stale proxy.json (a proxy killed hard) would otherwise look like ours.
        self.paths.proxy_state.unlink(missing_ok=True)
        kwargs: dict[str, object] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            kwargs["start_new_session"] = True
            if _PRCTL is not None:
                kwargs["preexec_fn"] = _die_with_parent
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            **kwargs,  # type: ignore[call-overload]
        )
        self._proc = proc
        self._started_at = now
        self._readers = [
            self._reader(proc.stdout, proc.pid),
            self._reader(proc.stderr, proc.pid),
        ]
        self._set(ProxyStatus("starting", proc.pid, None, "proxy starting", self._restarts))

    def _reader(self, stream: IO[bytes] | None, pid: int) -> threading.Thread:
        def pump() -> None:
            if stream is None:
                return
            with stream:
                for raw in iter(stream.readline, b""):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    # A display problem must not block the pipe.
                    with contextlib.suppress(Exception):
                        if line:
                            self.on_output(line)

        thread = threading.Thread(target=pump, name=f"devmeter-proxy-{pid}-out", daemon=True)
        thread.start()
        return thread

    def _died(self, proc: subprocess.Popen[bytes], code: int, now: float) -> None:
        for reader in self._readers:
            reader.join(1)  # its last words come before our comment on them
        self._proc = None
        uptime = now - self._started_at
        if code == ports.EXIT_PORT_TAKEN and self._port_taken(now):
            return  # it said why on its way out; wait for the port rather than restart
        if uptime >= self.stable_after:
            self._failures = 0
        delay = self.backoff[min(self._failures, len(self.backoff) - 1)]
        self._failures += 1
        self._restarts += 1
        self._next_start = now + delay
        why = _describe_exit(code)
        self._set(
            ProxyStatus(
                "restarting",
                None,
                None,
                f"proxy {why}; restarting in {delay:g}s",
                self._restarts,
            )
        )
        self.on_event(
            "died",
            f"devmeter: the proxy (pid {proc.pid}) {why} after {_duration(uptime)}; "
            f"restarting it in {delay:g}s (restart {self._restarts})",
        )

    def _set(self, status: ProxyStatus) -> None:
        with self._lock:
            changed = status != self._status
            self._status = status
        if changed and status.state != "stopped":
            self._write_status(status)

    def _write_status(self, status: ProxyStatus) -> None:
        if not self.write_status:
            return
        holder = self._holder if status.state == "port_taken" else None
        with self._lock:
            notes = dict(self._notes)
        fields: dict[str, object] = {
            "pid": os.getpid(),
            "mode": self.mode,
            "state": status.state,
            "detail": status.detail,
            "listen": f"{self.listen[0]}:{self.listen[1]}" if self.listen else None,
            "proxy_pid": status.pid,
            "address": status.address,
            "restarts": status.restarts,
            "port_holder": {"pid": holder.pid, "name": holder.name} if holder else None,
            "updated": time.time(),
            **notes,
        }
        path = status_path(self.paths)
        with self._write_lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(fields, out)
                tmp.replace(path)
            except OSError:
                pass  # a status file is a courtesy; the tray and the proxy go on without it


def _load_prctl() -> Callable[..., int] | None:
    """Linux's prctl, looked up now: a preexec_fn must not import or allocate much."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervising thread's process dies.

    The tray can die without running any Python clean-up (GTK exits on a lost X
    connection at logout); the proxy then stops too instead of lingering. Elsewhere a
    lingering proxy is found through proxy.json and reused by the next tray."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _print_event(_kind: EventKind, message: str) -> None:
    log.warning("%s", message)


def _print_stderr(line: str) -> None:
    say(line)  # the proxy's own lines, relayed as they are
