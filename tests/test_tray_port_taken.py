"""A taken port: one line naming the port, who holds it and the fix; no traceback; exit 75.

`devmeter proxy` is run for real (marked `proxy`, so it also runs under mitmproxy 12), once
caught by devmeter's own check before mitmproxy starts and once past it, when mitmproxy's
own bind fails (the port taken between the two). The headless command is run for real too:
it does not retry a port it cannot have, says so once, shows it in its live line and its
status file, and starts the proxy by itself once the port is free.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from devmeter.paths import paths
from devmeter.ports import EXIT_PORT_TAKEN, Holder, bind_error, holder, is_in_use, taken_message
from devmeter.tray.supervisor import read_status
from tests.proxy_harness import RunningProxy

# The race: devmeter's own check passes, then mitmproxy's bind finds the port taken.
PAST_THE_CHECK = """
import sys
from devmeter import ports
real = ports.bind_error
checks = []
def passes_the_first_time(host, port):
    checks.append(port)
    return None if len(checks) == 1 else real(host, port)
ports.bind_error = passes_the_first_time
from devmeter.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port this test process listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_clean_line(result: subprocess.CompletedProcess[str], port: int, by: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(f"devmeter: port {port} on 127.0.0.1 is taken by {by}"), line
    assert "devmeter proxy --listen 127.0.0.1:PORT" in line, line
    # The other way out names the config file where it is, not a bare "config.toml".
    assert line.endswith(f"(or `listen` under [proxy] in {paths().config_file})"), line
    assert result.stdout == ""
    assert result.returncode == EXIT_PORT_TAKEN, (result.returncode, result.stderr)


@pytest.mark.proxy
def test_devmeter_proxy_on_a_taken_port_names_the_holder_and_exits_75(taken):
    port = taken.getsockname()[1]
    result = run(["-m", "devmeter", "proxy", "--listen", f"127.0.0.1:{port}"])
    me = psutil.Process().name()
    assert_one_clean_line(result, port, f"{me} (pid {os.getpid()}); stop {me}")


@pytest.mark.proxy
def test_a_port_taken_after_the_check_is_reported_the_same_way(taken):
    """mitmproxy's errorcheck would sys.exit from inside the event loop and leave a
    `RuntimeError: Event loop is closed` traceback: not any more."""
    port = taken.getsockname()[1]
    result = run(["-c", PAST_THE_CHECK, "proxy", "--listen", f"127.0.0.1:{port}"])
    assert "Error logged during startup" not in result.stderr
    assert "Event loop is closed" not in result.stderr
    assert_one_clean_line(result, port, f"{psutil.Process().name()} (pid {os.getpid()})")


@pytest.mark.proxy
def test_a_port_held_by_another_devmeter_proxy_says_so(proxy: RunningProxy, tmp_path):
    result = run(["-m", "devmeter", "proxy", "--listen", f"127.0.0.1:{proxy.port}"])
    assert_one_clean_line(
        result, proxy.port, f"another devmeter proxy (pid {proxy.proc.pid}); stop it"
    )


@pytest.mark.proxy
def test_a_port_held_by_the_running_devmeters_proxy_names_devmeter(devmeter_home):
    """Found as a new user: with `devmeter` running, `devmeter proxy` said "stop it (kill
    PROXY)", and the running devmeter restarted the proxy it was told to kill."""
    home = devmeter_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[proxy]\nlisten = "127.0.0.1:0"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["DEVMETER_HOME"] = str(home)
    tray = subprocess.Popen(
        [sys.executable, "-m", "devmeter", "--headless"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        state = home / "proxy.json"
        wait_for(state.exists, 60, "the headless devmeter's proxy", home / "config.toml")
        port = json.loads(state.read_text())["port"]
        result = subprocess.run(
            [sys.executable, "-m", "devmeter", "proxy", "--listen", f"127.0.0.1:{port}"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        tray.terminate()
        tray.wait(30)
    assert_one_clean_line(result, port, f"the proxy of devmeter, already running (pid {tray.pid})")
    assert f"`kill {tray.pid}`" in result.stderr and "nothing to start" in result.stderr


def test_an_address_that_cannot_be_bound_for_another_reason_is_one_line_too(monkeypatch):
    from devmeter.proxy import server

    denied = OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(server.ports, "bind_error", lambda host, port: denied)
    with pytest.raises(server.ListenError) as caught:
        server._check_listen("127.0.0.1", 80, Path("/home/me/.config/devmeter/config.toml"))
    assert caught.value.exit_code == 1
    assert str(caught.value) == (
        "devmeter: cannot listen on 127.0.0.1:80: Permission denied; use another address: "
        "`devmeter proxy --listen 127.0.0.1:PORT` "
        "(or `listen` under [proxy] in /home/me/.config/devmeter/config.toml)"
    )


def test_bind_error_and_holder_see_a_listening_socket(taken):
    port = taken.getsockname()[1]
    problem = bind_error("127.0.0.1", port)
    assert problem is not None and is_in_use(problem)
    assert holder(port) == Holder(os.getpid(), psutil.Process().name(), is_devmeter=False)
    taken.close()
    assert bind_error("127.0.0.1", port) is None
    assert bind_error("127.0.0.1", 0) is None


def test_the_message_names_the_fix_for_each_kind_of_holder():
    devmeter = Holder(41, "python3", is_devmeter=True)
    other = Holder(42, "nginx", is_devmeter=False)
    assert "another devmeter proxy (pid 41); stop it (kill 41)" in taken_message(
        "127.0.0.1", 8788, devmeter
    )
    supervised = taken_message("127.0.0.1", 8788, Holder(41, "python3", True, supervisor=40))
    assert "the proxy of devmeter, already running (pid 40)" in supervised
    assert "`kill 40`" in supervised and "kill 41" not in supervised
    assert "nginx (pid 42); stop nginx" in taken_message("127.0.0.1", 8788, other)
    unknown = taken_message("127.0.0.1", 8788, None, command="devmeter")
    assert "taken by another process; stop it" in unknown
    assert "`devmeter --listen 127.0.0.1:PORT`" in unknown


def wait_for(condition: Callable[[], object], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}\n{log.read_text()}")


def test_headless_waits_for_a_taken_port_instead_of_retrying_it(taken, tmp_path):
    where = paths()
    port = taken.getsockname()[1]
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    with out.open("w") as stdout, err.open("w") as stderr:
        app = subprocess.Popen(
            [sys.executable, "-m", "devmeter", "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        wait_for(lambda: f"port {port} taken by" in out.read_text(), 30, "the live line", err)
        status = read_status(where)
        assert status is not None, err.read_text()
        assert status["state"] == "port_taken" and status["mode"] == "headless"
        assert status["port_holder"] == {"pid": os.getpid(), "name": psutil.Process().name()}
        # No proxy is started for a port it cannot have, and nothing is said again.
        time.sleep(1.5)
        assert psutil.Process(app.pid).children() == []
        assert err.read_text().count(f"port {port} on 127.0.0.1 is taken by") == 1
        assert f"under [proxy] in {where.config_file})" in err.read_text()
        # Once the port is free, the proxy starts on it by itself.
        taken.close()
        wait_for(where.proxy_state.exists, 30, "the proxy to start", err)
        wait_for(lambda: (read_status(where) or {}).get("state") == "running", 10, "running", err)
    finally:
        app.send_signal(signal.SIGTERM)
        code = app.wait(20)
    errors = err.read_text()
    assert code == 0, errors
    assert "Traceback" not in errors + out.read_text()
    assert f"port {port} is free now; starting the proxy" in errors
    assert "`devmeter --listen 127.0.0.1:PORT`" in errors
    assert read_status(where) is None and not where.proxy_state.exists()


def test_the_tray_shows_off_says_why_and_notifies_once():
    where = paths()
    from devmeter.config import Config
    from devmeter.tray.app import TrayApp
    from devmeter.tray.icon import render_badge
    from devmeter.tray.supervisor import ProxyStatus
    from tests.test_tray_app import FakeIcon, FakeSupervisor, menu_as_items

    taken = ProxyStatus("port_taken", detail="port 8788 taken by nginx (pid 42)")
    shown: list[tuple[str, str]] = []
    app = TrayApp(
        where,
        Config(),
        supervisor=FakeSupervisor(taken),
        make_menu=menu_as_items,
        notify=lambda title, message: shown.append((title, message)),
        icon_size=24,
    )
    icon = FakeIcon()
    app.attach(icon)
    app.refresh(force=True)
    assert icon.title.startswith("devmeter · port 8788 taken by nginx (pid 42) · ")
    assert icon.menu[0][1].text == "Proxy: port 8788 taken by nginx (pid 42)"
    assert icon.icon.tobytes() == render_badge("off", "paused", 24).tobytes()
    app._proxy_event("port_taken", "devmeter: port 8788 on 127.0.0.1 is taken by nginx …")
    assert shown == [("metering is off", "port 8788 on 127.0.0.1 is taken by nginx …")]
    app.shutdown()
