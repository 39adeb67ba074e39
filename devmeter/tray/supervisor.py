"""Keeps one `devmeter proxy` running for the tray app (or the headless status line).

`Supervisor.start()` watches from a thread of its own: when no proxy is running it
starts `sys.executable -m devmeter proxy` as a child; when the child dies it starts it
again after a back-off (1 s, 2 s, 4 s ... 30 s; back to 1 s once a child has stayed up a
minute) and says so through `on_event(kind, message)`. A proxy that is already running
(proxy.json names a live pid) is used instead of starting another, and left alone on
`stop()`; if it goes away, the supervisor starts its own.

The child runs in a session of its own, so Ctrl-C in the terminal reaches only the
parent, which then stops the child cleanly (SIGTERM: the proxy flushes the ledger and
removes proxy.json). Its output is read line by line and handed to `on_output`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Literal

import psutil

from devmeter.paths import Paths

State = Literal["starting", "running", "external", "restarting", "stopped"]
EventKind = Literal["external", "gone", "died", "killed", "error"]
EVENTS: tuple[EventKind, ...] = ("external", "gone", "died", "killed", "error")
BACKOFF: tuple[float, ...] = (1, 2, 4, 8, 16, 30)
STABLE_AFTER = 60.0  # seconds a child must stay up before the back-off starts over
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProxyStatus:
    state: State
    pid: int | None = None
    address: str | None = None  # "127.0.0.1:8788" once it listens
    detail: str = ""  # one line for a tooltip or the status line
    restarts: int = 0


def proxy_command() -> list[str]:
    return [sys.executable, "-m", "devmeter", "proxy"]


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
    ) -> None:
        self.paths = paths
        self.command = list(command) if command is not None else proxy_command()
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
        self._spawn(now)

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
            self._status = status


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
    _print_stderr(message)


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
