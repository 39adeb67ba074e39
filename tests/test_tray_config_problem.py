"""A config edit the running proxy refused, and requests held for an answer, as the tray
and the headless line show them: read from config_status.json and asks.json."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter.ask import asks_path, write_pending
from devmeter.config import Config, ConfigError, load
from devmeter.config_reload import live_config_error, write_status
from devmeter.tray.headless import LiveLine, run_headless, status_line
from devmeter.tray.icon import tooltip
from devmeter.tray.menu import AskRow, CapRow, TraySnapshot, build_menu, short_config_problem
from devmeter.tray.snapshot import Headline
from devmeter.tray.supervisor import ProxyStatus
from tests.test_tray_app import (  # noqa: F401 - fixtures
    FakeIcon,
    FakeSupervisor,
    app_for,
    click,
    wait_for,
    where,
)

D = Decimal
ASK = AskRow("session:0bcf16ce-9999:25", "session", "0bcf16ce-9999", D(25), D(50), D("25.4"),
             "claude-code", "/src/acme-api")  # fmt: skip


def refused_edit(config_file: Path) -> str:
    """What the proxy writes for a broken edit: the loader's own words for it."""
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text("[budgets.session]\nblock_usd = -5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load(config_file)
    return str(refused.value)


def test_the_problem_is_shortened_to_file_line_and_key(tmp_path) -> None:
    error = refused_edit(tmp_path / "deep" / "folder" / "config.toml")
    assert error.startswith(str(tmp_path / "deep" / "folder" / "config.toml") + ", line 2 [")
    short = short_config_problem(error)
    assert short.startswith("config.toml, line 2 [budgets.session.block_usd]: ")
    assert short_config_problem("config: no path here") == "config: no path here"


def test_a_refused_edit_is_an_amber_menu_line_that_opens_the_config() -> None:
    problem = "/home/me/.config/devmeter/config.toml, line 4 [budgets.session.block_usd]: bad"
    snap = TraySnapshot(config_problem=problem)
    assert snap.state == "warning"
    line = build_menu(snap)[1]
    assert line.text == (
        "Config edit not applied: config.toml, line 4 [budgets.session.block_usd]: bad"
    )
    assert (line.action, line.enabled) == ("open_config", True)
    # What the user chose, or a request refused now, still says more than a config edit.
    assert TraySnapshot(config_problem=problem, paused=True).state == "paused"
    cap = CapRow("day", "2026-03-15", D(5))
    assert TraySnapshot(config_problem=problem, blocked=(cap,)).state == "blocked"
    assert all("Config" not in i.text for i in build_menu(TraySnapshot()))


def test_the_tooltip_keeps_its_figures_and_names_the_problem() -> None:
    text = tooltip(None, D(12), D(300), "shadow", config_problem="config.toml, line 4 [a.b]: bad")
    assert text.startswith("devmeter · CONFIG EDIT NOT APPLIED · today $12.00 · month $300.00")
    assert "config.toml, line 4 [a.b]: bad" in text
    long = tooltip(None, D(12), D(300), "shadow", config_problem="config.toml: " + "x" * 300)
    assert len(long) <= 127 and "routing shadow" in long


def test_only_a_live_proxys_refusal_counts(tmp_path) -> None:
    error = refused_edit(tmp_path / "config.toml")
    write_status(tmp_path, tmp_path / "config.toml", error)  # this process: alive
    assert live_config_error(tmp_path) == error
    write_status(tmp_path, tmp_path / "config.toml", None)
    assert live_config_error(tmp_path) is None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (tmp_path / "config_status.json").write_text(
        json.dumps({"pid": int(gone.stdout), "config_error": error}), encoding="utf-8"
    )
    assert live_config_error(tmp_path) is None  # left by a proxy that is gone


def test_the_tray_shows_a_refused_edit_until_it_is_fixed(app_for, where) -> None:  # noqa: F811
    app, icon, opened = app_for()
    error = refused_edit(where.config_file)
    write_status(where.data_dir, where.config_file, error)
    app.refresh()
    assert app.snapshot.state == "warning"
    assert "CONFIG EDIT NOT APPLIED" in icon.title
    text = "Config edit not applied: " + short_config_problem(error)
    click(icon, text)
    assert opened == [where.config_file]
    write_status(where.data_dir, where.config_file, None)  # the proxy took the fix
    app.refresh()
    assert app.snapshot.state == "normal"
    assert "CONFIG" not in icon.title
    assert all(not i.text.startswith("Config edit") for i in icon.menu[0])


def test_the_status_line_names_the_problem_and_the_answering_command() -> None:
    snap = TraySnapshot(asks=(ASK,), config_problem="/x/config.toml, line 4 [a.b]: bad")
    line = status_line(snap, Headline(), ProxyStatus("running"))
    assert (
        "WAITING for you: session 0bcf16ce passed $25.00, answer `devmeter allow 0bcf16ce` "
        "or `devmeter stop 0bcf16ce`"
    ) in line
    assert "config edit not applied: config.toml, line 4 [a.b]: bad" in line
    two = TraySnapshot(asks=(ASK, AskRow(**{**ASK.__dict__, "scope": "day", "key": "2026-03-15"})))
    assert "passed $25.00 (+1 more), answer" in status_line(two, Headline())
    day = TraySnapshot(asks=(AskRow(**{**ASK.__dict__, "scope": "day", "expired": True}),))
    assert (
        "REFUSED until you answer: 0bcf16ce-9999 passed $25.00, answer `devmeter allow --day`"
    ) in status_line(day, Headline())


def test_headless_shows_the_state_files(where) -> None:  # noqa: F811
    where.data_dir.mkdir(parents=True, exist_ok=True)
    write_status(where.data_dir, where.config_file, refused_edit(where.config_file))
    write_pending(asks_path(where.data_dir), [{
        "id": ASK.id, "scope": "session", "key": ASK.key, "level_usd": "25",
        "until_usd": "50", "spent_usd": "25.4", "tool": "claude-code",
    }])  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    stop = threading.Event()
    runner = threading.Thread(
        target=run_headless,
        args=(where, Config(), None),
        kwargs={"out": out, "err": err, "supervisor": FakeSupervisor(), "stop": stop,
                "interval": 0.05, "live": LiveLine(out, err, tty=False, min_gap=0.0)},
    )  # fmt: skip
    runner.start()
    try:
        wait_for(lambda: "config edit not applied" in out.getvalue())
    finally:
        stop.set()
        runner.join(5)
    line = out.getvalue().splitlines()[-1]
    assert "WAITING for you: session 0bcf16ce passed $25.00" in line
    assert "config edit not applied: config.toml, line 2 [budgets.session.block_usd]" in line


def test_headless_advice_follows_the_shell_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devmeter import cli
    from devmeter.paths import paths
    from devmeter.tray.headless import route_hint

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setenv("DEVMETER_HOME", str(tmp_path / "dm"))
    home = paths()
    # No hook: eval routes this shell, and setup is named for the rest.
    assert 'eval "$(devmeter env)"' in route_hint(home)
    assert "`devmeter setup`" in route_hint(home)
    assert cli.main(["setup", "--shell", "bash", "--no-autostart"]) == 0
    capsys.readouterr()
    # Hooked: eval would leave a dead shell once the proxy stops; the hook needs nothing.
    assert "eval" not in route_hint(home)
    assert "from their next prompt" in route_hint(home)


def test_the_status_line_shows_a_sub_cent_spend_as_reports_do() -> None:
    from devmeter.tray.menu import SessionRow

    session = SessionRow("proc-1", "python-urllib", None, D("0.004"))
    snap = TraySnapshot(today_usd=D("0.004"), month_usd=D("12.5"), sessions=(session,))
    line = status_line(snap, Headline(calls_today=1, session=session))
    assert line == (
        "devmeter · today $0.004000 · session $0.004000 (python-urllib) · month $12.50 · 1 call"
    )
