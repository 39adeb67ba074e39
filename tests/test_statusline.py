"""`devmeter statusline`: the line for Claude Code's statusLine hook, and installing it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import platformdirs
import pytest

from devmeter import ledger, statusline
from devmeter.alerts import Alert
from devmeter.usage import Attribution, Call, Usage

# What Claude Code 2.1.197 piped to its statusLine command in a real session (captured
# under tmux against the fake upstream; its paths renamed).
HOOK = json.loads(
    (Path(__file__).parent / "fixtures" / "claude_code_statusline_2.1.197.json").read_text()
)
SESSION = HOOK["session_id"]


def call(ts: float, usd: str, session: str, repo: str | None) -> Call:
    return Call(
        ts=ts, provider="anthropic", endpoint="anthropic.messages", host="api.anthropic.com",
        requested_model="claude-opus-4-8", model="claude-opus-4-8",
        attribution=Attribution(tool="claude-code", session=session, repo=repo),
        usage=Usage(input_tokens=10), cost_usd=Decimal(usd), price_source="x", status=200,
    )  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "acme-api"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "src").mkdir()
    return root


def hook_for(cwd: Path) -> str:
    workspace = {**HOOK["workspace"], "current_dir": str(cwd), "project_dir": str(cwd)}
    return json.dumps({**HOOK, "cwd": str(cwd), "workspace": workspace})


def test_session_today_repo_and_burn_rate(tmp_path: Path, repo: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    now = statusline._day_start(time.time()) + 12 * 3600  # noon: the day has no edge nearby
    ledger.write_calls(
        db,
        [
            call(now - 300, "1.25", SESSION, str(repo)),  # this session, 5 minutes ago
            call(now - 60, "0.50", SESSION, str(repo)),
            call(now - 30, "2.00", "other", str(repo)),  # the repo's, not the session's
            call(now - 20, "4.00", "other", "/elsewhere"),
            call(now - 3 * 86400, "100", SESSION, str(repo)),  # days ago: not today
        ],
    )
    line = statusline.render(hook_for(repo / "src"), db, now)
    # session: every call it made; today: today's; repo: today's in acme-api; $/h: the
    # session's last 10 minutes ($1.75 over 600 s).
    assert line == "devmeter · session $101.75 · today $7.75 · acme-api $3.75 · $10.50/h"
    # A session devmeter did not meter: Claude Code's own figure, named as such.
    other = json.dumps({**json.loads(hook_for(repo)), "session_id": "not-metered"})
    assert statusline.render(other, db, now) == (
        "devmeter · session not metered (Claude Code: $0.02) · today $7.75 · acme-api $3.75"
    )


def test_a_cap_and_a_pause_stand_out_in_red(tmp_path: Path, repo: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    now = time.time()
    writer = ledger.LedgerWriter(db)
    writer.add_call(call(now - 10, "21", SESSION, str(repo)))
    writer.add_alert(
        Alert(
            ts=now - 5,
            kind="blocked",
            scope="session",
            key=SESSION,
            figure_usd=Decimal(20),
            message="devmeter: session cap $20 reached; run devmeter allow cc84",
            session=SESSION,
            repo=str(repo),
            tool="claude-code",
        )  # fmt: skip
    )
    writer.close()
    line = statusline.render(hook_for(repo), db, now)
    assert line.endswith(
        f"{statusline.RED}⛔ session cap $20 reached; run devmeter allow cc84{statusline.RESET}"
    )
    (tmp_path / "control.json").write_text(json.dumps({"paused": True}))
    assert "⏸ paused (devmeter resume)" in statusline.render(hook_for(repo), db, now)


def test_missing_broken_or_locked_ledger_gives_a_short_line(tmp_path: Path) -> None:
    assert statusline.render("", tmp_path / "none.sqlite") == (
        "devmeter · no ledger yet (run devmeter)"
    )
    assert statusline.render("not json {", tmp_path / "none.sqlite").startswith("devmeter · ")
    db = tmp_path / "ledger.sqlite"
    ledger.write_calls(db, [call(time.time(), "1", SESSION, None)])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")  # a writer holding the whole file
    started = time.monotonic()
    assert statusline.render(hook_for(tmp_path), db) == "devmeter · ledger busy"
    assert time.monotonic() - started < 2  # a bounded wait, never a hang
    holder.execute("ROLLBACK")
    holder.close()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    assert statusline.render(hook_for(tmp_path), garbage).startswith("devmeter · ")


def test_data_dir_is_where_devmeter_keeps_its_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVMETER_HOME", raising=False)
    assert statusline.data_dir() == Path(platformdirs.user_data_dir("devmeter"))
    monkeypatch.setenv("XDG_DATA_HOME", "/x/data")
    assert statusline.data_dir() == Path(platformdirs.user_data_dir("devmeter"))


def test_imports_nothing_slow(tmp_path: Path) -> None:
    """It runs on every statusline refresh: no mitmproxy, pricing or platformdirs."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "devmeter.statusline"],
        input=json.dumps(HOOK), capture_output=True, text=True, timeout=30,
        env={**os.environ, "DEVMETER_HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.stdout == "devmeter · no ledger yet (run devmeter)\n"
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert {"devmeter", "sqlite3"} <= modules  # run as __main__, from the package
    for slow in ("mitmproxy", "genai_prices", "platformdirs", "devmeter.ledger", "decimal",
                 "pathlib", "typing"):  # fmt: skip
        assert slow not in modules, slow


def test_the_devmeter_command_answers_it_without_loading_its_cli(tmp_path: Path) -> None:
    """`devmeter statusline` (what a user may put in settings.json by hand) starts as
    lightly as `python -m devmeter.statusline`: the full CLI is not loaded for it."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "devmeter", "statusline"],
        input=json.dumps(HOOK), capture_output=True, text=True, timeout=30,
        env={**os.environ, "DEVMETER_HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.stdout == "devmeter · no ledger yet (run devmeter)\n", done.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert {"devmeter.entry", "devmeter.statusline", "sqlite3"} <= modules
    for slow in ("devmeter.cli", "argparse", "mitmproxy", "genai_prices", "platformdirs",
                 "devmeter.ledger", "decimal", "pathlib", "typing"):  # fmt: skip
        assert slow not in modules, slow


def test_install_keeps_an_existing_statusline_and_uninstall_restores_it(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    theirs = {"type": "command", "command": "echo theirs"}
    original = {"model": "opus", "statusLine": theirs}
    settings.write_text(json.dumps(original))
    message = statusline.install(settings)
    assert "echo theirs" in message and "backup" in message
    assert json.loads((tmp_path / "settings.json.devmeter-backup").read_text()) == original
    installed = json.loads(settings.read_text())
    assert installed["model"] == "opus"
    command = installed["statusLine"]["command"]
    assert statusline.MARK in command and "--chain" in command
    # Chained: their line, then devmeter's, from one run of the installed command.
    done = subprocess.run(
        command, shell=True, input=json.dumps(HOOK), capture_output=True, text=True,
        timeout=30, env={**os.environ, "DEVMETER_HOME": str(tmp_path / "dm")},
    )  # fmt: skip
    assert done.stdout == "theirs │ devmeter · no ledger yet (run devmeter)\n"
    assert "already" in statusline.install(settings)  # twice: no second entry
    said = statusline.uninstall(settings)
    assert json.loads(settings.read_text()) == original  # exactly as it was
    # The backup was the user's copy from before install: never overwritten with one that
    # runs devmeter's command (gone after `uv tool uninstall`); removed once it is moot.
    assert not (tmp_path / "settings.json.devmeter-backup").exists()
    assert "as it was before install" in said
    assert "nothing to remove" in statusline.uninstall(settings)

    fresh = tmp_path / "new" / "settings.json"
    statusline.install(fresh)
    assert json.loads(fresh.read_text())["statusLine"]["command"] == statusline.command()
    statusline.uninstall(fresh)
    assert json.loads(fresh.read_text()) == {}
    assert not (tmp_path / "new" / "settings.json.devmeter-backup").exists()

    # Edited since install: the copy from before install stays, as the user's.
    edited = tmp_path / "edited" / "settings.json"
    edited.parent.mkdir()
    edited.write_text(json.dumps(original))
    statusline.install(edited)
    data = json.loads(edited.read_text())
    edited.write_text(json.dumps({**data, "model": "sonnet"}))
    statusline.uninstall(edited)
    backup = tmp_path / "edited" / "settings.json.devmeter-backup"
    assert json.loads(backup.read_text()) == original
    assert json.loads(edited.read_text()) == {**original, "model": "sonnet"}

    broken = tmp_path / "broken.json"
    broken.write_text("{ nope")
    with pytest.raises(statusline.SettingsError, match="not valid JSON"):
        statusline.install(broken)
    assert broken.read_text() == "{ nope"


def test_the_tightest_quota_window_claude_code_knows(tmp_path: Path) -> None:
    """`rate_limits` as Claude Code 2.1.197 builds it for subscription logins (read from its
    own code: `five_hour`/`seven_day`, each `used_percentage` and `resets_at`)."""
    db = tmp_path / "ledger.sqlite"
    ledger.write_calls(db, [call(time.time(), "1", SESSION, None)])
    resets = statusline._day_start(time.time()) + 14 * 3600 + 30 * 60
    hook = {**HOOK, "rate_limits": {
        "five_hour": {"used_percentage": 62.4, "resets_at": resets},
        "seven_day": {"used_percentage": 35.0, "resets_at": resets + 86400},
    }}  # fmt: skip
    assert statusline.render(json.dumps(hook), db).endswith(" · 5h 62% (resets 14:30)")
    hook["rate_limits"]["seven_day"]["used_percentage"] = 96.0
    assert f"{statusline.RED}7d 96% (resets " in statusline.render(json.dumps(hook), db)
    # An API-key login (the fixture): no window, nothing shown
    assert "%" not in statusline.render(json.dumps(HOOK), db)


def test_cli_install_and_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from devmeter.cli import main

    settings = tmp_path / "claude" / "settings.json"
    assert main(["statusline", "--install", "--settings", str(settings)]) == 0
    assert "added devmeter's statusline" in capsys.readouterr().out
    assert statusline.MARK in json.loads(settings.read_text())["statusLine"]["command"]
    assert main(["statusline", "--uninstall", "--settings", str(settings)]) == 0
    assert json.loads(settings.read_text()) == {}
    settings.write_text("[1, 2]")
    assert main(["statusline", "--install", "--settings", str(settings)]) == 2
    assert "does not hold a JSON object" in capsys.readouterr().err
