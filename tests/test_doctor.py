"""`devmeter doctor`: each check green, amber or red, with the fix, against real things."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmeter import doctor
from devmeter.integration import steps
from devmeter.paths import Paths, paths
from tests.desktop_bus import launch_session_bus
from tests.proxy_harness import RunningProxy


def where(home: Path) -> Paths:
    return paths({"DEVMETER_HOME": str(home)})


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def bare_env(**extra: str) -> dict[str, str]:
    """No proxy or CA variables: a shell devmeter was never set up in."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **extra}


@pytest.fixture
def listener() -> Iterator[int]:
    """Another program listening on a loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_nothing_running_is_red_and_says_how_to_start(devmeter_home: Path) -> None:
    # A port nothing listens on: the default 8788 may be the developer's own devmeter.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    devmeter_home.mkdir(parents=True)
    (devmeter_home / "config.toml").write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"\n')
    checks = doctor.run_checks(where(devmeter_home), bare_env())
    found = by_name(checks)
    assert found["proxy"].status == "red" and "`devmeter`" in found["proxy"].fix
    assert found["ca"].status == "red" and "creates the CA" in found["ca"].fix
    assert found["shell"].status == "amber" and "devmeter env" in found["shell"].fix
    assert found["ledger"].status == "green"
    assert doctor.exit_status(checks) == 1
    for check in json.loads(doctor.to_json(checks)):
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("green", "amber", "red")


def hooked_bash(
    tmp_path: Path, listen: tuple[str, int]
) -> tuple[Paths, dict[str, str], steps.Environment]:
    """`devmeter setup` run for a bash user (HOME and DEVMETER_HOME under `tmp_path`) with
    the proxy at `listen`: its data folder, the shell's environment, the machine setup saw."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "SHELL": "/bin/bash", "PATH": os.environ.get("PATH", "")}
    where_ = paths({"DEVMETER_HOME": str(tmp_path / "dm")})
    machine = steps.Environment(home=home, environ=env, which={"bash": "/bin/bash"}.get,
                                systemd_user=False)  # fmt: skip
    steps.setup(where_, listen, env=machine, devmeter=None, say=lambda _l: None,
                with_autostart=False)  # fmt: skip
    return where_, env, machine


def test_with_the_shell_hook_installed_doctor_never_advises_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found trying it as a new user: after install.sh set the hook up, with devmeter not
    # started yet, doctor said `eval "$(devmeter env)"`, the dead-shell the hook avoids.
    (tmp_path / "dm").mkdir()
    (tmp_path / "dm" / "config.toml").write_text('[proxy]\nlisten = "127.0.0.1:9"\n')
    where_, env, _ = hooked_bash(tmp_path, ("127.0.0.1", 9))
    checks = doctor.run_checks(where_, env)
    found = by_name(checks)
    assert found["shell_integration"].status == "green"
    assert found["shell"].status == "amber"
    assert "eval" not in found["shell"].fix
    assert "the shell hook routes this shell from its next prompt" in found["shell"].fix
    # Nor do the trust lines, which said `eval "$(devmeter env)"` below that fix.
    assert [c.name for c in checks if "eval" in c.fix] == []
    assert "shell hook sets it" in found["trust_node"].fix


def test_a_hook_written_for_another_port_says_to_run_setup_again(tmp_path: Path) -> None:
    # Found as a new user: `[proxy] listen` moved after install.sh ran setup; a new shell
    # then said "no proxy answers (expected at 127.0.0.1:8788)", the address setup baked in.
    where_, env, machine = hooked_bash(tmp_path, ("127.0.0.1", 8788))
    (tmp_path / "dm" / "config.toml").write_text('[proxy]\nlisten = "127.0.0.1:18788"\n')
    found = by_name(doctor.run_checks(where_, env))
    check = found["shell_integration"]
    assert check.status == "amber"
    assert "127.0.0.1:8788" in check.detail and "127.0.0.1:18788" in check.detail
    assert "`devmeter setup`" in check.fix
    assert "eval" not in found["shell"].fix  # still hooked: no dead-shell advice

    # The fix works: setup again (as the CLI runs it, with the config's address).
    steps.setup(where_, ("127.0.0.1", 18788), env=machine, devmeter=None, say=lambda _l: None,
                with_autostart=False)  # fmt: skip
    assert by_name(doctor.run_checks(where_, env))["shell_integration"].status == "green"
    hook = (tmp_path / "dm" / "shell" / "hook.bash").read_text()
    assert "expected at 127.0.0.1:18788" in hook and "8788'" not in hook.replace("18788'", "")
    said: list[str] = []
    assert steps.uninstall(where_, env=machine, say=said.append) == 0
    assert not (tmp_path / "dm" / "shell" / "hook.bash").exists(), said


def test_a_taken_port_names_the_process_holding_it(devmeter_home: Path, listener: int) -> None:
    devmeter_home.mkdir(parents=True, exist_ok=True)
    (devmeter_home / "config.toml").write_text(f'[proxy]\nlisten = "127.0.0.1:{listener}"\n')
    proxy = by_name(doctor.run_checks(where(devmeter_home), bare_env()))["proxy"]
    assert proxy.status == "red"
    assert f"127.0.0.1:{listener} is taken by pid {os.getpid()}" in proxy.detail
    assert "listen" in proxy.fix and str(devmeter_home / "config.toml") in proxy.fix


def test_a_port_devmeter_just_let_go_of_is_not_called_taken(devmeter_home: Path) -> None:
    # Right after `kill PID` the proxy's side of each connection lingers in TIME_WAIT for a
    # minute; the proxy (asyncio, SO_REUSEADDR) binds there again at once, so doctor must
    # not tell the user to stop "another process" that does not exist.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first: its side goes to TIME_WAIT
            client.recv(1)
    devmeter_home.mkdir(parents=True, exist_ok=True)
    (devmeter_home / "config.toml").write_text(f'[proxy]\nlisten = "127.0.0.1:{port}"\n')
    proxy = by_name(doctor.run_checks(where(devmeter_home), bare_env()))["proxy"]
    assert proxy.status == "red"
    assert "taken" not in proxy.detail, proxy.detail
    assert "`devmeter`" in proxy.fix


def test_a_ca_others_can_read_is_amber_with_the_chmod(devmeter_home: Path) -> None:
    ca = where(devmeter_home).ca_dir
    ca.mkdir(parents=True)
    (ca / "mitmproxy-ca-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END")
    (ca / "mitmproxy-ca.pem").write_text("private")
    ca.chmod(0o755)
    (ca / "mitmproxy-ca.pem").chmod(0o644)
    check = doctor.check_ca(where(devmeter_home))
    assert check.status == "amber" and "mitmproxy-ca.pem is 0o644" in check.detail
    assert check.fix.startswith(f"chmod 700 {ca}")
    subprocess.run(check.fix, shell=True, check=True)  # the fix, as printed, fixes it
    assert doctor.check_ca(where(devmeter_home)).status == "green"


def test_a_shell_pointing_at_a_dead_proxy_is_red(devmeter_home: Path, listener: int) -> None:
    env = bare_env(HTTPS_PROXY="http://127.0.0.1:8788")
    found = by_name(doctor.run_checks(where(devmeter_home), env))
    assert found["shell"].status == "red" and "HTTPS from this shell fails" in found["shell"].detail
    assert 'eval "$(devmeter env --unset)"' in found["shell"].fix  # tests/test_env_unset.py


def test_a_routed_shell_with_a_running_proxy_is_green(proxy: RunningProxy) -> None:
    env = proxy.env(bare_env())
    found = by_name(doctor.run_checks(where(proxy.home), env))
    assert found["proxy"].status == "green" and f":{proxy.port} (pid " in found["proxy"].detail
    assert found["shell"].status == "green"
    for name in ("trust_node", "trust_codex", "trust_python", "ca", "ledger", "config"):
        assert found[name].status == "green", found[name]

    # Routed, but Node given another CA file: Claude Code's calls would fail TLS.
    env["NODE_EXTRA_CA_CERTS"] = str(Path(__file__))
    found = by_name(doctor.run_checks(where(proxy.home), env))
    assert found["trust_node"].status == "red"
    assert "does not hold devmeter's current CA" in found["trust_node"].detail


def test_doctor_runs_and_says_so_with_a_broken_config(devmeter_home: Path) -> None:
    devmeter_home.mkdir(parents=True, exist_ok=True)
    (devmeter_home / "config.toml").write_text('[proxy]\nlisten = "example.com:80"\n')
    # What a running proxy writes when it refuses a live edit (and a tray whose port is
    # taken): doctor shows both.
    (devmeter_home / "config_status.json").write_text(
        json.dumps({"pid": os.getpid(), "config_error": "line 3 [budgets.day]: not a number"})
    )
    (devmeter_home / "supervisor.json").write_text(
        json.dumps(
            {"pid": os.getpid(), "state": "port_taken", "listen": "127.0.0.1:8788",
             "detail": "port 8788 is taken", "port_holder": {"pid": 1, "name": "nginx"}}
        )
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "doctor", "--json"],
        env={**os.environ, "DEVMETER_HOME": str(devmeter_home)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    found = {c["name"]: c for c in json.loads(done.stdout)}
    assert found["config"]["status"] == "red" and "line 2" in found["config"]["detail"]
    assert "not a loopback address" in found["config"]["detail"]
    assert found["config_reload"]["status"] == "amber"
    assert "line 3 [budgets.day]" in found["config_reload"]["detail"]
    assert found["tray_proxy"]["status"] == "red" and "pid 1 (nginx)" in found["tray_proxy"]["fix"]


@pytest.mark.parametrize(
    ("noted", "status", "said"),
    [
        # What devmeter/tray/app.py notes in supervisor.json, as it writes it.
        ({"tray_backend": "xorg", "tray": "docked"}, "green", "the icon is in the tray "
         "(pystray's xorg backend)"),
        ({"tray_backend": "gtk", "tray": "waiting for a system tray"}, "amber",
         "its icon is not in the tray yet: no tray host (pystray's gtk backend)"),
        ({"tray_backend": "darwin"}, "green", "the tray shows its icon (pystray's darwin backend)"),
        ({"mode": "headless"}, "green", "devmeter runs headless: a status line, no icon"),
    ],
)  # fmt: skip
def test_a_running_tray_says_whether_its_icon_is_up_and_through_which_backend(
    devmeter_home: Path, noted: dict[str, object], status: str, said: str
) -> None:
    devmeter_home.mkdir(parents=True, exist_ok=True)
    running = {"pid": os.getpid(), "mode": "tray", "state": "running", "detail": "proxy on :1"}
    (devmeter_home / "supervisor.json").write_text(json.dumps(running | noted))
    found = {c.name: c for c in doctor.status_file_checks(where(devmeter_home))}
    assert found["tray_icon"].status == status and said in found["tray_icon"].detail
    if status == "amber":
        assert "start your panel's tray" in found["tray_icon"].fix


def test_a_tray_still_making_its_icon_says_nothing_of_it(devmeter_home: Path) -> None:
    devmeter_home.mkdir(parents=True, exist_ok=True)
    (devmeter_home / "supervisor.json").write_text(
        json.dumps({"pid": os.getpid(), "mode": "tray", "state": "starting"})
    )
    assert "tray_icon" not in {c.name for c in doctor.status_file_checks(where(devmeter_home))}


def test_status_files_from_a_process_that_is_gone_say_nothing(devmeter_home: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    devmeter_home.mkdir(parents=True, exist_ok=True)
    (devmeter_home / "config_status.json").write_text(
        json.dumps({"pid": gone.pid, "config_error": "old news"})
    )
    (devmeter_home / "supervisor.json").write_text("not json")
    names = {c.name for c in doctor.run_checks(where(devmeter_home), bare_env())}
    assert not names & {"config_reload", "tray_proxy"}


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dbus-launch", "dbus-monitor", "dunst", "Xvfb")),
    reason="needs dbus-launch, dbus-monitor, dunst and Xvfb (Debian: dbus-x11 dunst xvfb)",
)
def test_notify_shows_a_real_test_notification(devmeter_home: Path, tmp_path: Path) -> None:
    """`doctor --notify` on a desktop: a session bus, a notification daemon (dunst) on a
    virtual display, and dbus-monitor recording what reaches the daemon."""
    address, bus_pid = launch_session_bus("dbus-launch", dict(os.environ), tmp_path)
    started: list[subprocess.Popen[bytes]] = []
    try:
        read_fd, write_fd = os.pipe()
        started.append(subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x200x24", "-noreset",
             "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            display = f":{pipe.readline().strip()}"
        env = {**os.environ, "DISPLAY": display, "DEVMETER_HOME": str(devmeter_home),
               "DBUS_SESSION_BUS_ADDRESS": address}  # fmt: skip
        monitor_log = tmp_path / "monitor.log"
        with monitor_log.open("wb") as out:
            started.append(subprocess.Popen(
                ["dbus-monitor", "interface='org.freedesktop.Notifications',member='Notify'"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        started.append(subprocess.Popen(
            ["dunst"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ))  # fmt: skip
        deadline = time.monotonic() + 10
        while b"NameAcquired" not in monitor_log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)  # dbus-monitor is listening once it has its name
        while subprocess.run(["dunstctl", "is-paused"], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline, "dunst did not come up on the session bus"
            time.sleep(0.05)  # nothing is activatable on this bus: this waits for our dunst
        done = subprocess.run(
            [sys.executable, "-m", "devmeter", "doctor", "--notify", "--json"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        check = {c["name"]: c for c in json.loads(done.stdout)}["notifications"]
        assert check["status"] == "green" and "test notification sent" in check["detail"]
        while "devmeter: test notification" not in monitor_log.read_text(errors="replace"):
            assert time.monotonic() < deadline + 10, monitor_log.read_text(errors="replace")
            time.sleep(0.05)
    finally:
        for proc in reversed(started):
            proc.terminate()
            proc.wait(10)
        os.kill(bus_pid, signal.SIGTERM)


def test_text_output_is_one_line_per_check_with_fixes() -> None:
    checks = [
        doctor.Check("proxy", "red", "not running", "start it: `devmeter`"),
        doctor.Check("ca", "green", "/x/ca.pem"),
    ]
    text = doctor.to_text(checks)
    assert text.splitlines()[:3] == [
        "XX proxy  not running",
        "          fix: start it: `devmeter`",
        "ok ca     /x/ca.pem",
    ]
    assert text.endswith("\n1 problem stops metering (XX above).\n")
    two = doctor.to_text([checks[0], doctor.Check("ca", "red", "none", "start it")])
    assert "\n2 problems stop metering (XX above)." in two


@pytest.mark.skipif(not shutil.which("Xvfb"), reason="Xvfb is not installed (Debian: xvfb)")
def test_tray_host_absent_then_present_on_a_real_display() -> None:
    """A tray host is whoever owns the display's _NET_SYSTEM_TRAY_S0 selection (tint2 and
    every XEmbed panel take it): the test takes it itself, as a panel starting would."""
    from Xlib import X
    from Xlib import display as xdisplay

    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(
        # -noreset: else the server resets when doctor's connection closes, and the next
        # connection can find it closing (seen once under load: ConnectionClosedError)
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x200x24", "-noreset",
         "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            display = f":{pipe.readline().strip()}"
        before = doctor.check_tray({"DISPLAY": display}, "linux")
        assert before.status == "amber" and "no tray host" in before.detail
        panel = xdisplay.Display(display)
        window = panel.screen().root.create_window(0, 0, 1, 1, 0, X.CopyFromParent)
        window.set_selection_owner(panel.intern_atom("_NET_SYSTEM_TRAY_S0"), X.CurrentTime)
        panel.sync()
        after = doctor.check_tray({"DISPLAY": display}, "linux")
        assert after.status == "green" and display in after.detail
        panel.close()
    finally:
        server.terminate()
        server.wait(10)


def test_the_readme_names_every_check(devmeter_home: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    sentence = readme.split("the names are", 1)[1].split(".\n", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", sentence))
    produced = {c.name for c in doctor.run_checks(where(devmeter_home), bare_env())}
    assert produced <= documented
    assert {"config_reload", "tray_proxy", "tray_icon", "notifications_delivery"} <= documented


def test_devmeter_off_path_names_the_folder_it_runs_from_and_the_fix_works(
    tmp_path: Path,
) -> None:
    # `sh scripts/install.sh --no-setup` leaves ~/.local/bin off PATH: "open a new shell"
    # would not help (no hook puts it there), so the fix names the folder.
    venv_bin, bin_dir = tmp_path / "venv" / "bin", tmp_path / "my bin"
    venv_bin.mkdir(parents=True)
    bin_dir.mkdir()
    (venv_bin / "devmeter").write_text("#!/bin/sh\necho devmeter-here\n")
    (venv_bin / "devmeter").chmod(0o755)
    command = bin_dir / "devmeter"
    command.symlink_to(venv_bin / "devmeter")  # as uv tool install links it
    check = doctor.check_on_path(lambda _: None, str(command))
    assert check.status == "amber" and str(bin_dir) in check.fix
    assert str(venv_bin) not in check.fix  # the venv's python must not go on PATH
    export = re.search(r"`(export PATH=[^`]+)`", check.fix)
    assert export is not None
    out = subprocess.run(
        ["bash", "--norc", "-c", f"{export.group(1)}; devmeter"],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "devmeter-here\n"
    # Run as `python -m devmeter` there is no folder to name: the install advice stays.
    assert "scripts/install.sh" in doctor.check_on_path(lambda _: None, "-m").fix


def test_trust_fixes_before_any_ca_say_to_start_devmeter_first(devmeter_home: Path) -> None:
    # `eval "$(devmeter env)"` before the first start would point SSL_CERT_FILE and the
    # other bundles at files that do not exist yet, breaking HTTPS in that shell.
    found = by_name(doctor.run_checks(where(devmeter_home), bare_env()))
    for name in ("trust_node", "trust_codex", "trust_python"):
        assert found[name].fix.startswith("start devmeter once (it creates the CA), then ")
    proxyless_ca = where(devmeter_home).ca_cert
    proxyless_ca.parent.mkdir(parents=True, exist_ok=True)
    proxyless_ca.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    found = by_name(doctor.run_checks(where(devmeter_home), bare_env()))
    assert found["trust_python"].fix == '`eval "$(devmeter env)"` sets it, with HTTPS_PROXY'
