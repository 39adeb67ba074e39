"""A broken file or directory gives one line, `devmeter: <problem> — <fix>`, never a traceback.

Each case runs the real `devmeter` command as a subprocess against its own DEVMETER_HOME.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devmeter import control


def devmeter(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEVMETER_DEBUG"}
    env["DEVMETER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "devmeter", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_clean_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("devmeter: "), done.stderr
    assert " \u2014 " in lines[0] or ": " in lines[0][10:]  # the problem, then what to do
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_a_corrupt_ledger(home: Path) -> None:
    ledger = home / "ledger.sqlite"
    ledger.write_bytes(b"this is not SQLite\n" * 100)
    for command in (["report"], ["report", "--by", "session", "--json"], ["sessions"], ["alerts"]):
        line = one_clean_line(devmeter(home, *command), 1)
        assert str(ledger) in line and "move it aside" in line, command


def test_broken_control_json(home: Path) -> None:
    path = home / "control.json"
    path.write_text('{"paused": ')
    for command in (["pause"], ["resume"], ["routing"], ["allow", "--day"]):
        line = one_clean_line(devmeter(home, *command), 2)
        assert str(path) in line and "not valid JSON" in line and "delete it" in line, command


def test_a_string_false_does_not_pause(home: Path) -> None:
    path = home / "control.json"
    path.write_text('{"paused": "false"}')
    line = one_clean_line(devmeter(home, "routing"), 2)
    assert f"{path} [paused]: must be true or false" in line
    # The proxy's watcher keeps its last good state (not paused) for a broken file.
    with pytest.raises(control.ControlError, match=r"\[paused\]"):
        control.load(path)
    assert control.ControlWatcher(path).poll(now=10.0) is None
    for bad, key in (
        ('{"routing_mode": "fast"}', "routing_mode"),
        ('{"allowed": [["day", "2026-11-02"]]}', "allowed[0]"),
        ('{"allowed": "all"}', "allowed"),
        ('{"allowed": [["day", "2026-11-02", 1e999]]}', "allowed[0]"),
        ('{"allowed": [["day", "2026-11-02", 1' + "0" * 400 + "]]}", "allowed[0]"),
        ("[]", ""),
    ):
        path.write_text(bad)
        with pytest.raises(
            control.ControlError, match=re.escape(f"[{key}]") if key else "JSON object"
        ):
            control.load(path)


def test_a_read_only_data_dir(home: Path) -> None:
    if os.geteuid() == 0:
        # root writes through file modes: /proc refuses new files even to root.
        target = Path("/proc")
    else:
        home.chmod(0o500)
        target = home
    try:
        line = one_clean_line(devmeter(target, "pause"), 2)
    finally:
        home.chmod(0o700)
    assert f"cannot write {target / 'control.json'}" in line
    assert "DEVMETER_HOME" in line


def test_toml_nested_thousands_deep(home: Path) -> None:
    config = home / "config.toml"
    config.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    line = one_clean_line(devmeter(home, "report"), 2)
    assert f"bad config: {config}" in line and "nested too deeply" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_not_a_number_in_prices(home: Path, value: str) -> None:
    config = home / "config.toml"
    config.write_text(f'[[prices]]\nmodel = "x"\ninput_mtok = {value}\n')
    line = one_clean_line(devmeter(home, "report"), 2)
    assert f"{config}, line 3 [prices[0].input_mtok]: must be a finite number" in line


def test_a_bad_since(home: Path) -> None:
    line = one_clean_line(devmeter(home, "report", "--since", "\x1b[2Jlast week"), 2)
    assert "--since '\\x1b[2Jlast week' is not a time" in line and "yesterday, 1w" in line


def test_a_bad_until_names_until(home: Path) -> None:
    line = one_clean_line(devmeter(home, "report", "--until", "next week"), 2)
    assert "--until 'next week' is not a time" in line and "2026-11-01" in line


def test_a_data_dir_that_is_a_file(home: Path) -> None:
    not_a_dir = home / "devmeter-home"
    not_a_dir.write_text("a file where the directory should be\n")
    line = one_clean_line(devmeter(not_a_dir, "config", "--init"), 1)
    assert f"cannot use {not_a_dir}" in line and "DEVMETER_HOME" in line
    line = one_clean_line(devmeter(not_a_dir, "pause"), 2)
    assert f"{not_a_dir / 'control.json'}" in line


def test_start_status_and_help_as_a_new_user_types_them(home: Path) -> None:
    # `devmeter stop` exists, so `devmeter start` is tried first; argparse answered with a
    # list of twenty commands and no word on how devmeter starts.
    line = one_clean_line(devmeter(home, "start"), 2)
    assert "no `start` command" in line and "`devmeter` with no command starts it" in line
    line = one_clean_line(devmeter(home, "status"), 2)
    assert "no `status` command" in line and "`devmeter doctor`" in line
    done = devmeter(home, "help")
    assert done.returncode == 0 and done.stdout.startswith("usage: devmeter")
    assert "doctor" in done.stdout and done.stderr == ""


def test_env_with_nothing_running_says_to_start_devmeter_itself(tmp_path: Path) -> None:
    """`devmeter proxy` alone meters with no tray, no alerts shown and nothing to restart
    it: the advice is the command the README starts devmeter with."""
    done = devmeter(tmp_path / "home", "env")
    assert done.returncode == 0, done
    assert "export HTTPS_PROXY=" in done.stdout
    notes = done.stderr
    assert "no proxy is running; start devmeter with `devmeter`" in notes, notes
    assert "`devmeter proxy`" not in notes, notes
