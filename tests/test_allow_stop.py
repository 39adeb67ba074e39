"""`devmeter allow` and `devmeter stop` against a real ledger and control file.

The ids are shaped like Claude Code's session UUIDs, two of them sharing the 8-character
prefix every message shows, so the shortest prefix that resolves has to be longer.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import control
from devmeter.budget import Advice, BudgetTracker
from devmeter.cli import main
from devmeter.config import load
from devmeter.guard import apply_control
from devmeter.ledger import write_calls
from devmeter.paths import paths
from devmeter.usage import Attribution, Call, Usage

TWIN_A = "0bcf16ce-1111-4aaa-8bbb-000000000001"
TWIN_B = "0bcf16ce-2222-4aaa-8bbb-000000000002"
LONER = "7f3e9a2b-3333-4ccc-8ddd-000000000003"


def call(session: str, cost: str, ago: float = 60) -> Call:
    return Call(
        ts=time.time() - ago,
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-4-8",
        model="claude-opus-4-8",
        attribution=Attribution(tool="claude-code", session=session, repo="/src/acme"),
        usage=Usage(input_tokens=100, output_tokens=10),
        cost_usd=Decimal(cost),
        price_source="genai-prices",
        status=200,
    )


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEVMETER_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text("[budgets.session]\nblock_usd = 10\n")
    write_calls(
        tmp_path / "ledger.sqlite",
        [call(TWIN_A, "10.42", 120), call(TWIN_B, "1.00", 90), call(LONER, "3.00", 30)],
    )
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def tracker_now(home: Path) -> BudgetTracker:
    """The cap state the proxy would apply from this control file."""
    where = paths({"DEVMETER_HOME": str(home)})
    tracker = BudgetTracker(load(where.config_file).section("budgets"))
    apply_control(tracker, control.load(control.control_path(where.data_dir)), time.time())
    return tracker


def test_an_ambiguous_prefix_is_refused_listing_the_candidates(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "allow", "0bcf16ce")
    assert code == 2 and out == ""
    assert "'0bcf16ce' matches 2 sessions; give more of the id" in err
    assert TWIN_A in err and TWIN_B in err
    assert not (home / "control.json").exists()  # nothing written


def test_an_unknown_id_is_refused_listing_recent_sessions(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "allow", "deadbeef")
    assert code == 2
    assert "no session id starts with 'deadbeef'" in err
    assert "7f3e9a2b (claude-code in acme" in err  # the shortest prefix that resolves
    assert "0bcf16ce-1" in err  # the twins need one more character
    assert not (home / "control.json").exists()


def test_allow_with_a_prefix_raises_the_cap_a_step_and_keeps_it_a_cap(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "allow", "0bcf16ce-1")
    assert code == 0
    # $10 cap, $10.42 spent: the next default level is the $20 threshold.
    assert "raised the session cap for session 0bcf16ce-1 from $10.00 to $20.00" in out
    assert "$10.42 spent so far" in out
    tracker = tracker_now(home)
    assert tracker.cap("session", TWIN_A, time.time()) == Decimal(20)
    assert tracker.cap("session", TWIN_B, time.time()) == Decimal(10)  # only that session

    code, out, _ = run(capsys, "allow", "0bcf16ce-1", "--by", "7.5")
    assert code == 0 and "from $20.00 to $27.50" in out
    assert tracker_now(home).cap("session", TWIN_A, time.time()) == Decimal("27.5")


def test_a_raised_cap_still_blocks_and_thresholds_above_it_still_warn(home: Path) -> None:
    """What the popup's advice does, end to end through the proxy's own state."""
    main(["allow", LONER[:8]])  # $10 -> $20
    tracker = tracker_now(home)
    tracker.seed({("session", LONER): Decimal(3)}, time.time())
    who = Attribution(tool="claude-code", session=LONER, repo="/src/acme")
    assert tracker.check(who, time.time()) is None
    alerts = tracker.observe(call(LONER, "18.00", 0))  # $21: past the raised cap
    assert [(a.kind, a.figure_usd) for a in alerts] == [("blocked", Decimal(20))]
    assert tracker.check(who, time.time()) is not None


def test_stop_refuses_a_session_until_allow_lets_it_continue(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "stop", "7f3e")
    assert code == 0 and "stopped session 7f3e9a2b" in out
    assert "`devmeter allow 7f3e9a2b` lets it continue" in out
    tracker = tracker_now(home)
    tracker.advice = Advice()
    block = tracker.check(Attribution(tool="claude-code", session=LONER), time.time())
    assert block is not None and block.scope == "stop"
    assert block.message.startswith("devmeter: Session 7f3e9a2b (claude-code) was stopped")
    assert "`devmeter allow 7f3e9a2b`" in block.message
    # Other sessions go on.
    assert tracker.check(Attribution(tool="claude-code", session=TWIN_B), time.time()) is None

    run(capsys, "allow", "7f3e9a2b")  # also raises its cap a step; it was not capped yet
    assert tracker_now(home).check(Attribution(session=LONER), time.time()) is None


def test_a_stop_from_an_asks_button_is_not_called_devmeter_stop_in_the_refusal(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stop this session in a notification or the tray menu writes the same stop as the
    CLI; the refusal must not tell the user they ran a command they never ran."""
    path = control.control_path(home)
    control.answer(path, f"session:{LONER}:25", "stop", time.time() - 5)
    who = Attribution(tool="claude-code", session=LONER)
    block = tracker_now(home).check(who, time.time())
    assert block is not None and block.scope == "stop"
    assert "was stopped when devmeter asked before spending more (you chose Stop)" in (
        block.message
    )
    assert "devmeter stop" not in block.message and "`devmeter allow 7f3e9a2b`" in block.message
    run(capsys, "stop", "7f3e")  # stopped again, from the CLI: the latest stop is named
    again = tracker_now(home).check(who, time.time())
    assert again is not None and "was stopped with `devmeter stop`" in again.message


def test_allow_where_there_is_no_cap_and_no_stop_says_so(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "allow", "--day")
    assert code == 1
    assert "has no cap to raise (budgets.day.block_usd is not set" in err


def test_allow_on_a_session_with_no_cap_points_at_the_other_caps(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "config.toml").write_text("[budgets.day]\nblock_usd = 1\n")
    code, _, err = run(capsys, "allow", "7f3e")
    assert code == 1
    assert "session 7f3e9a2b has no cap to raise" in err
    assert "`devmeter allow --day`" in err


def test_stop_without_a_session_says_how_to_stop_devmeter_itself(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A new user types `devmeter stop` to stop devmeter: it stops sessions, so say both.
    code, out, err = run(capsys, "stop")
    assert code == 2 and out == ""
    assert "`devmeter stop ID`" in err and "devmeter is not running" in err
    import json
    import os

    status = {"pid": os.getpid(), "mode": "tray", "state": "running"}
    (home / "supervisor.json").write_text(json.dumps(status))
    code, _, err = run(capsys, "stop")
    assert code == 2 and f"`kill {os.getpid()}`" in err and "Ctrl-C" in err
    assert "Quit in its tray menu" in err
    # Headless, started by hand: no tray menu to quit from, and no systemd unit.
    (home / "supervisor.json").write_text(json.dumps({**status, "mode": "headless"}))
    code, _, err = run(capsys, "stop")
    assert code == 2 and f"`kill {os.getpid()}`" in err and "Ctrl-C" in err
    assert "tray menu" not in err
    if "INVOCATION_ID" not in os.environ:
        assert "systemctl" not in err
    # Started by systemd (which sets INVOCATION_ID): its unit is named too.
    import subprocess

    unit = subprocess.Popen(["sleep", "30"], env={**os.environ, "INVOCATION_ID": "0123abcd"})
    try:
        (home / "supervisor.json").write_text(
            json.dumps({**status, "pid": unit.pid, "mode": "headless"})
        )
        code, _, err = run(capsys, "stop")
        assert f"`kill {unit.pid}`" in err and "`systemctl --user stop devmeter-headless`" in err
    finally:
        unit.kill()
        unit.wait()
    (home / "supervisor.json").unlink()
    (home / "proxy.json").write_text(
        json.dumps({"host": "127.0.0.1", "port": 1, "pid": os.getpid(), "started": 0})
    )
    code, _, err = run(capsys, "stop")
    assert code == 2 and f"`kill {os.getpid()}` (devmeter proxy)" in err
    # With a session it still stops that session.
    code, out, _ = run(capsys, "stop", LONER[:8])
    assert code == 0 and "stopped session 7f3e9a2b" in out
