"""`devmeter` started a second time (by hand, or by both an autostart entry and a systemd
unit) says which one runs and exits 0, instead of adding a second icon and taking over the
first's supervisor.json (which it would then remove on quitting, hiding the first from
`devmeter doctor`).

Both are real `python -m devmeter --headless` processes. The first waits on a port this
test holds, so it starts no proxy and the test stays fast; the lock is the same for the
tray and the headless line (`tray/app.py` main takes it before choosing).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from devmeter.paths import paths
from devmeter.tray import single_instance
from devmeter.tray.supervisor import read_status
from tests.test_tray_port_taken import wait_for


def headless_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def test_a_second_devmeter_names_the_running_one_and_leaves_it_alone(tmp_path: Path) -> None:
    where = paths()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    err = tmp_path / "first.err"
    with err.open("w") as stderr:
        first = subprocess.Popen(
            [sys.executable, "-m", "devmeter", "--headless", "--listen", f"127.0.0.1:{port}"],
            env=headless_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: read_status(where) is not None, 30, "the first's status", err)
        second = subprocess.run(
            [sys.executable, "-m", "devmeter", "--headless", "--listen", "127.0.0.1:0"],
            env=headless_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 0, second.stderr
        assert second.stderr.startswith(f"devmeter: already running (pid {first.pid}, ")
        assert f"`kill {first.pid}`, then run `devmeter` again" in second.stderr
        assert "Traceback" not in second.stderr
        # The first keeps its status file: the second neither took it over nor removed it.
        status = read_status(where)
        assert status is not None and status["pid"] == first.pid
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(20)
        taken.close()
    # Once the first has gone, the lock is free again (the OS released it on exit).
    ok, handle = single_instance.hold(where.data_dir)
    assert ok and handle is not None
    handle.close()


def test_the_message_names_the_tray_and_how_to_quit_it() -> None:
    status = {"pid": 4242, "mode": "tray", "detail": "proxy on 127.0.0.1:8788"}
    assert single_instance.already_running_message(status) == (
        "devmeter: already running (pid 4242, the tray icon, proxy on 127.0.0.1:8788); "
        "nothing to do. To restart it: Quit in its menu, or `kill 4242`, then run "
        "`devmeter` again."
    )


def test_a_second_lock_in_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    ok, handle = single_instance.hold(tmp_path)
    assert ok and handle is not None
    # flock locks belong to the open file, so a second open in this process is refused too.
    assert single_instance.hold(tmp_path) == (False, None)
    handle.close()
    again, handle = single_instance.hold(tmp_path)
    assert again and handle is not None
    handle.close()
