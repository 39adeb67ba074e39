"""The proxy supervisor: one proxy running, restarted when it dies, stopped on quit.

Tiny Python children stand in for `devmeter proxy`, so each test takes a second or less.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from devmeter.paths import paths
from devmeter.tray.supervisor import Supervisor, live_proxy, read_status

# A child that says hello, writes proxy.json the way the real proxy does, then lives on.
PROXY_LIKE = """
import json, os, sys, time
print("devmeter proxy listening on 127.0.0.1:9999", flush=True)
print("an alert on stderr", file=sys.stderr, flush=True)
state = {"host": "127.0.0.1", "port": 9999, "pid": os.getpid(), "started": time.time()}
with open(sys.argv[1], "w") as f:
    json.dump(state, f)
time.sleep(60)
"""
# A child that dies at once.
DIES = "import sys; sys.exit(3)"


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.output: list[str] = []
        self.lock = threading.Lock()

    def event(self, kind: str, message: str) -> None:
        with self.lock:
            self.events.append((kind, message))

    def line(self, text: str) -> None:
        with self.lock:
            self.output.append(text)

    def kinds(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.events]


@pytest.fixture
def where(devmeter_home: Path):
    devmeter_home.mkdir(parents=True, exist_ok=True)
    return paths()


@pytest.fixture
def make(where) -> Iterator[Callable[..., tuple[Supervisor, Recorder]]]:
    made: list[Supervisor] = []

    def factory(code: str, **kwargs: object) -> tuple[Supervisor, Recorder]:
        rec = Recorder()
        sup = Supervisor(
            where,
            [sys.executable, "-c", code, str(where.proxy_state)],
            on_event=rec.event,
            on_output=rec.line,
            poll_interval=0.01,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(sup)
        return sup, rec

    yield factory
    for sup in made:
        sup.stop(timeout=5)


def test_the_child_is_started_and_reported_running_once_it_listens(make):
    sup, rec = make(PROXY_LIKE)
    sup.start()
    status = sup.wait_running(5)
    assert status.state == "running"
    assert status.address == "127.0.0.1:9999"
    assert status.pid == sup.child.pid
    wait_for(lambda: len(rec.output) == 2)
    assert sorted(rec.output) == [
        "an alert on stderr",
        "devmeter proxy listening on 127.0.0.1:9999",
    ]


def test_a_child_that_dies_is_restarted_with_backoff_and_says_so(make):
    sup, rec = make(DIES, backoff=(0.05, 0.1, 0.2))
    sup.start()
    wait_for(lambda: rec.kinds().count("died") >= 4)
    messages = [m for k, m in rec.events if k == "died"]
    assert "exited with code 3" in messages[0]
    assert "restarting it in 0.05s (restart 1)" in messages[0]
    assert "restarting it in 0.1s (restart 2)" in messages[1]
    assert "restarting it in 0.2s" in messages[2]
    assert "restarting it in 0.2s" in messages[3]  # the back-off tops out
    status = sup.status
    assert status.restarts >= 4
    assert status.state in ("restarting", "starting")
    if status.state == "restarting":
        assert "exited with code 3; restarting in 0.2s" in status.detail


def test_a_killed_child_comes_back_with_a_new_pid(make):
    sup, rec = make(PROXY_LIKE, backoff=(0.05,))
    sup.start()
    first = sup.wait_running(5).pid
    assert first is not None
    sup.child.kill()
    wait_for(lambda: "died" in rec.kinds())
    assert "was killed by SIGKILL" in rec.events[-1][1] or sys.platform == "win32"
    wait_for(lambda: sup.status.state == "running" and sup.status.pid != first)
    assert sup.status.restarts == 1


def test_stop_ends_the_child_and_no_restart_follows(make, where):
    sup, rec = make(PROXY_LIKE)
    sup.start()
    sup.wait_running(5)
    child = sup.child
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 5
    assert child.poll() is not None
    time.sleep(0.1)
    assert "died" not in rec.kinds()
    assert sup.status.state == "stopped"


def test_a_proxy_already_running_is_used_and_left_alone(make, where):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)
        state = {"host": "127.0.0.1", "port": 8788, "pid": other.pid, "started": time.time()}
        where.proxy_state.write_text(json.dumps(state))
        sup, rec = make(PROXY_LIKE, backoff=(0.05,))
        sup.start()
        status = sup.wait_running(5)
        assert status.state == "external"
        assert status.pid == other.pid
        assert "using the proxy already running on 127.0.0.1:8788" in status.detail
        time.sleep(0.2)
        assert sup.child is None  # none of our own
        sup.stop()
        assert other.poll() is None  # and we did not stop theirs
        assert rec.kinds() == ["external"]
    finally:
        other.kill()
        other.wait()


def test_when_the_other_proxy_goes_away_we_start_our_own(make, where):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.05)
    state = {"host": "127.0.0.1", "port": 8788, "pid": other.pid, "started": time.time()}
    where.proxy_state.write_text(json.dumps(state))
    sup, rec = make(PROXY_LIKE)
    sup.start()
    assert sup.wait_running(5).state == "external"
    other.kill()
    other.wait()
    wait_for(lambda: sup.status.state == "running")
    assert sup.status.pid == sup.child.pid
    assert rec.kinds()[:2] == ["external", "gone"]


def test_a_stale_proxy_json_is_not_a_running_proxy(make, where):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = {"host": "127.0.0.1", "port": 8788, "pid": dead.pid, "started": time.time()}
    where.proxy_state.write_text(json.dumps(state))
    assert live_proxy(where) is None
    sup, _rec = make(PROXY_LIKE)
    sup.start()
    assert sup.wait_running(5).state == "running"


def test_a_recycled_pid_is_not_a_running_proxy(where):
    # proxy.json from long ago naming a pid that now belongs to a newer process.
    state = {"host": "127.0.0.1", "port": 8788, "pid": __import__("os").getpid(), "started": 1.0}
    where.proxy_state.write_text(json.dumps(state))
    assert live_proxy(where) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_a_parent_that_dies_without_cleaning_up(where, tmp_path):
    """GTK exits at once on a lost X connection (logout): the proxy must not linger."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from devmeter.paths import paths\n"
            "from devmeter.tray.supervisor import Supervisor\n"
            "sup = Supervisor(paths(), [sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
            "sup.start()\n"
            "time.sleep(60)\n",
            PROXY_LIKE,
            str(where.proxy_state),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(where.proxy_state.exists, timeout=10)
        child = json.loads(where.proxy_state.read_text())["pid"]
        parent.kill()  # no clean-up runs
        parent.wait()
        wait_for(lambda: live_proxy(where) is None, timeout=5)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    finally:
        parent.kill()


# --- a port someone else holds -----------------------------------------------------------------

# Stands in for a proxy that found its port taken the moment it started: a grandchild takes
# the port (and keeps it), then the child exits as `devmeter proxy` does, with 75.
TAKES_THE_PORT_AND_EXITS_75 = """
import socket, subprocess, sys, time
port = int(sys.argv[2])
holder = subprocess.Popen([sys.executable, "-c",
    "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen();"
    "print('bound', flush=True); time.sleep(60)" % port], stdout=subprocess.PIPE)
holder.stdout.readline()
print(holder.pid, flush=True)
sys.exit(75)
"""


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_a_taken_port_is_waited_for_not_retried_and_said_once(where, held_port, tmp_path):
    port = held_port.getsockname()[1]
    started = tmp_path / "started"
    rec = Recorder()
    sup = Supervisor(
        where,
        [
            sys.executable,
            "-c",
            f"open({str(started)!r}, 'w'); {PROXY_LIKE}",
            str(where.proxy_state),
        ],
        on_event=rec.event,
        on_output=rec.line,
        poll_interval=0.01,
        listen=("127.0.0.1", port),
        port_recheck=0.05,
    )
    sup.start()
    try:
        wait_for(lambda: sup.status.state == "port_taken")
        time.sleep(0.5)  # ten rechecks
        assert not started.exists(), "a proxy was started on a port it cannot have"
        assert rec.kinds() == ["port_taken"]
        assert f"port {port} on 127.0.0.1 is taken by" in rec.events[0][1]
        assert sup.status.detail.startswith(f"port {port} taken by ")
        status = read_status(where)
        assert status is not None and status["state"] == "port_taken"
        assert status["port_holder"]["pid"] == os.getpid()
        held_port.close()
        wait_for(lambda: sup.status.state == "running")
        assert started.exists()
        assert rec.kinds() == ["port_taken", "port_free"]
    finally:
        sup.stop(timeout=5)
    assert read_status(where) is None, "supervisor.json outlived the supervisor"


def test_a_child_that_exits_75_is_not_restarted_while_the_port_is_held(where, tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    rec = Recorder()
    sup = Supervisor(
        where,
        [sys.executable, "-c", TAKES_THE_PORT_AND_EXITS_75, str(where.proxy_state), str(port)],
        on_event=rec.event,
        on_output=rec.line,
        poll_interval=0.01,
        listen=("127.0.0.1", port),
        port_recheck=0.05,
        backoff=(0.01,),
    )
    sup.start()
    try:
        wait_for(lambda: sup.status.state == "port_taken")
        holder = int(rec.output[0])
        time.sleep(0.5)
        assert rec.kinds() == ["port_taken"], rec.events  # no "died", no restart
        assert (read_status(where) or {}).get("port_holder", {}).get("pid") == holder
    finally:
        sup.stop(timeout=5)
        psutil.Process(holder).kill()
