"""Notifications: every fallback path really taken, and a flood of alerts kept to a trickle."""

from __future__ import annotations

import json
import logging
import stat
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter.alert_delivery import (
    Backend,
    Notice,
    Notifier,
    default_backends,
    desktop_notifier_backend,
    notify_send_backend,
    osascript_backend,
    plyer_backend,
    powershell_backend,
    read_status,
    summary,
)
from devmeter.alerts import Alert
from devmeter.tray.icon_notify import icon_backend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fake binaries are sh scripts")

T0 = 1_795_000_000.0


def alert(kind: str = "threshold", key: str = "s1", figure: str = "20", msg: str = "") -> Alert:
    text = msg or f"{kind} {key} {figure}"
    return Alert(T0, kind, "session", key, Decimal(figure), text, "claude-code", "/src/acme", key)


def fake_binary(directory: Path, name: str, exit_code: int = 0) -> Path:
    """A stand-in for notify-send / osascript / powershell that records how it was called."""
    log = directory / f"{name}.calls"
    script = directory / name
    script.write_text(
        "#!/bin/sh\n"
        f'python3 -c \'import json, os, sys; print(json.dumps({{"argv": sys.argv[1:], '
        f'"title": os.environ.get("DEVMETER_NOTIFY_TITLE"), '
        f'"message": os.environ.get("DEVMETER_NOTIFY_MESSAGE")}}))\' "$@" >> "{log}"\n'
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class FakeIcon:
    HAS_NOTIFICATION = True

    def __init__(self) -> None:
        self.shown: list[tuple[str, str | None]] = []

    def notify(self, message: str, title: str | None = None) -> None:
        self.shown.append((message, title))


def plyer_that_raises(exc: Exception, attempts: list[int] | None = None):
    def notify(**kwargs):
        if attempts is not None:
            attempts.append(1)
        raise exc

    return plyer_backend(notify)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    """PATH is this directory (and python3's), so only the fakes put here exist."""
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "python3").symlink_to(sys.executable)  # the fakes are written in Python
    monkeypatch.setenv("PATH", str(directory))
    return directory


# --- fallbacks -------------------------------------------------------------------------------


def test_plyer_shows_it_when_it_can():
    shown = []
    notifier = Notifier([plyer_backend(lambda **kw: shown.append(kw))])
    assert notifier.notify(alert(msg="Session c94186ab passed $20.00"), T0) == "sent"
    assert shown == [
        {
            "title": "devmeter: Spend threshold passed",
            "message": "Session c94186ab passed $20.00",
            "app_name": "devmeter",
            "timeout": 10,
        }
    ]


def test_linux_without_plyer_support_falls_back_to_notify_send(bin_dir):
    log = fake_binary(bin_dir, "notify-send")
    notifier = Notifier([plyer_that_raises(NotImplementedError()), notify_send_backend()])
    assert notifier.notify(alert(msg='it said "$20" -- stop'), T0) == "sent"
    assert calls(log)[0]["argv"] == [
        "--app-name=devmeter",
        "--",
        "devmeter: Spend threshold passed",
        'it said "$20" -- stop',
    ]


def test_a_missing_notify_send_falls_through_to_the_tray_icon(bin_dir):
    icon = FakeIcon()
    notifier = Notifier(
        [plyer_that_raises(NotImplementedError()), notify_send_backend(), icon_backend(icon)]
    )
    assert notifier.notify(alert(msg="hello"), T0) == "sent"
    assert icon.shown == [("hello", "devmeter: Spend threshold passed")]


def test_a_failing_notify_send_falls_through_too(bin_dir):
    log = fake_binary(bin_dir, "notify-send", exit_code=1)  # e.g. no notification daemon
    icon = FakeIcon()
    notifier = Notifier([notify_send_backend(), icon_backend(icon)])
    assert notifier.notify(alert(), T0) == "sent"
    assert len(calls(log)) == 1 and len(icon.shown) == 1
    # A failure that may be passing is tried again next time.
    notifier.notify(alert(figure="100"), T0 + 1)
    assert len(calls(log)) == 2


def test_osascript_gets_title_and_text_as_arguments_never_as_script(bin_dir):
    log = fake_binary(bin_dir, "osascript")
    nasty = 'done" & do shell script "rm -rf ~" & "'
    assert Notifier([osascript_backend()]).notify(alert(msg=nasty), T0) == "sent"
    argv = calls(log)[0]["argv"]
    assert argv[-2:] == ["devmeter: Spend threshold passed", nasty]
    assert all(nasty not in part for part in argv[:-1])


def test_powershell_toast_gets_title_and_text_through_the_environment(bin_dir):
    log = fake_binary(bin_dir, "powershell")
    assert Notifier([powershell_backend()]).notify(alert(msg="it's $20; `whoami`"), T0) == "sent"
    (call,) = calls(log)
    assert (call["title"], call["message"]) == (
        "devmeter: Spend threshold passed",
        "it's $20; `whoami`",
    )
    assert "it's $20" not in " ".join(call["argv"])


def test_when_nothing_works_it_logs_and_carries_on(bin_dir, caplog):
    class NoBalloons(FakeIcon):
        HAS_NOTIFICATION = False

    notifier = Notifier(
        [
            plyer_that_raises(RuntimeError("dbus exploded")),
            notify_send_backend(),
            icon_backend(NoBalloons()),
        ]
    )
    # Each backend's failure is a debug line (stderr shows the one warning below).
    with caplog.at_level(logging.DEBUG, logger="devmeter.alert_delivery"):
        assert notifier.notify(alert(msg="the message"), T0) == "failed"
    assert "plyer failed: dbus exploded" in caplog.text
    assert "notify-send unavailable here (notify-send not found on PATH)" in caplog.text
    assert "no way to show 'devmeter: Spend threshold passed': the message" in caplog.text


def test_a_backend_that_cannot_work_here_is_not_retried():
    attempts: list[int] = []
    shown = []
    notifier = Notifier(
        [
            plyer_that_raises(NotImplementedError(), attempts),
            Backend("fake", lambda t, m: shown.append(m)),
        ]
    )
    for figure in ("5", "20", "100"):
        notifier.notify(alert(figure=figure), T0)
        notifier.flush(T0 + 60)
    assert len(attempts) == 1
    assert len(shown) == 3


def test_the_default_chain_per_platform():
    icon = FakeIcon()
    platforms = ("darwin", "linux", "win32")
    names = {p: [b.name for b in default_backends([icon_backend(icon)], p)] for p in platforms}
    # plyer is not used on Linux: it runs notify-send there and ignores its exit status.
    assert names == {
        "darwin": ["desktop-notifier", "osascript", "plyer", "tray icon"],
        "linux": ["desktop-notifier", "notify-send", "tray icon"],
        "win32": ["desktop-notifier", "powershell", "plyer", "tray icon"],
    }
    assert [b.name for b in default_backends((), "freebsd14")] == [
        "desktop-notifier",
        "notify-send",
    ]


def test_long_texts_are_clipped_to_what_windows_shows():
    shown = []
    notifier = Notifier([Backend("fake", lambda t, m: shown.append((t, m)))])
    notifier.notify(alert(msg="x" * 1000), T0)
    title, message = shown[0]
    assert len(title) <= 63 and len(message) == 255 and message.endswith("…")


# --- rate limits -----------------------------------------------------------------------------


@pytest.fixture
def shown() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def notifier(shown) -> Notifier:
    return Notifier([Backend("fake", lambda t, m: shown.append((t, m)))])


def test_the_same_alert_is_shown_once(notifier, shown):
    assert notifier.notify(alert(), T0) == "sent"
    assert notifier.notify(alert(), T0 + 5) == "duplicate"
    assert notifier.notify(alert(figure="100"), T0 + 6) == "sent"  # a new threshold
    assert notifier.notify(alert(key="s2"), T0 + 120) == "sent"  # another session
    assert len(shown) == 3
    # after an hour the same alert (say a re-armed burn rate) is news again
    assert notifier.notify(alert(), T0 + 3601) == "sent"


def test_a_flood_collapses_into_one_summary(notifier, shown):
    flood = [alert("loop", key=f"s{i}") for i in range(15)] + [
        alert("projection", key="s1", figure="50", msg="Session s1 is burning $120.00/hour")
    ]
    results = [notifier.notify(a, T0 + i * 0.1) for i, a in enumerate(flood)]
    assert results == ["sent", "sent"] + ["held"] * 14
    assert notifier.flush(T0 + 5) is None  # still gathering
    assert notifier.flush(T0 + 12) == "sent"
    assert len(shown) == 3
    title, message = shown[-1]
    assert title == "devmeter: 14 alerts"
    assert message.startswith(
        "13 possible loops; 1 session burning fast. Most urgent: Session s1 is burning $120.00/hour"
    )
    assert notifier.held == 0
    # The minute's three are spent: the next alerts wait for the next summary.
    assert notifier.notify(alert(key="late"), T0 + 20) == "held"
    assert notifier.flush(T0 + 40) is None
    assert notifier.flush(T0 + 61) == "sent"
    assert shown[-1] == ("devmeter: Spend threshold passed", "threshold late 20")


def test_a_block_is_never_held(notifier, shown):
    for i in range(5):
        notifier.notify(alert(key=f"s{i}"), T0)
    assert notifier.notify(alert("blocked", figure="50", msg="blocked!"), T0 + 1) == "sent"
    assert shown[-1] == ("devmeter: Requests blocked", "blocked!")


def test_summary_leads_with_the_most_severe():
    title, message = summary([alert("threshold"), alert("loop", msg="looping"), alert("threshold")])
    assert title == "3 alerts"
    assert message == "2 spend thresholds passed; 1 possible loop. Most urgent: looping"


# --- urgency, buttons, delivery checked, status --------------------------------------------


def test_urgent_alerts_ask_notify_send_to_stay_until_dismissed(bin_dir):
    log = fake_binary(bin_dir, "notify-send")
    notifier = Notifier([notify_send_backend()])
    notifier.notify(alert("threshold"), T0)
    notifier.notify(alert("blocked", key="s2"), T0)
    notifier.notify(alert("ask", key="s3"), T0)
    flags = [[a for a in c["argv"] if a.startswith("--urgency") or a.startswith("--expire")]
             for c in calls(log)]  # fmt: skip
    assert flags == [[], ["--urgency=critical", "--expire-time=0"]] + [
        ["--urgency=critical", "--expire-time=0"]
    ]


def test_an_asks_buttons_answer_it_by_id():
    notices: list[Notice] = []
    answers: list[tuple[str, str]] = []
    backend = Backend("fake", lambda t, m: None, notices.append)
    notifier = Notifier([backend], on_answer=lambda i, c: answers.append((i, c)))
    ask = Alert(T0, "ask", "session", "abc-123", Decimal("25"), "passed $25", "codex", None, "abc")
    assert notifier.notify(ask, T0) == "sent"
    (notice,) = notices
    assert notice.urgency == "critical" and notice.title == "devmeter: Continue spending?"
    assert [(a.id, a.label) for a in notice.actions] == [
        ("continue", "Continue"),
        ("stop", "Stop this session"),
    ]
    notice.on_action("continue")
    assert answers == [("session:abc-123:25", "continue")]


def test_an_answered_asks_popup_is_withdrawn_once_and_an_open_one_stays():
    withdrawn: list[str] = []
    backend = Backend("fake", lambda t, m: None, lambda n: None, withdraw=withdrawn.append)
    notifier = Notifier([backend], on_answer=lambda i, c: None)
    for key in ("a", "b"):
        ask = Alert(T0, "ask", "session", key, Decimal("25"), "passed $25", "codex", None, "r")
        notifier.notify(ask, T0)
    notifier.notify(alert("threshold", key="c"), T0)  # not an ask: nothing to withdraw
    notifier.withdraw_except({"session:b:25"})
    assert withdrawn == ["session:a:25"]
    notifier.withdraw_except({"session:b:25"})  # already gone: not again
    notifier.withdraw_except(set())
    assert withdrawn == ["session:a:25", "session:b:25"]


def test_an_ask_with_a_cheaper_model_offers_switch():
    from devmeter.ask import AskAlert

    notices: list[Notice] = []
    notifier = Notifier([Backend("fake", lambda t, m: None, notices.append)], on_answer=print)
    ask = AskAlert(T0, "ask", "session", "s", Decimal(25), "m", switch_to="claude-haiku-5-5")
    notifier.notify(ask, T0)
    assert [a.label for a in notices[0].actions] == [
        "Continue",
        "Switch to claude-haiku-5-5",
        "Stop this session",
    ]


def test_an_ask_is_never_held_behind_a_flood(notifier, shown):
    for i in range(5):
        notifier.notify(alert("threshold", key=f"s{i}"), T0)
    assert len(shown) == 2 and notifier.held
    notifier.notify(alert("ask", key="runaway"), T0 + 1)
    assert shown[-1][0] == "devmeter: Continue spending?"


def test_no_notification_service_falls_through_and_the_status_says_which_worked(
    bin_dir, tmp_path, monkeypatch
):
    """desktop-notifier for real, on a D-Bus address where nothing listens: notify-send next."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    log = fake_binary(bin_dir, "notify-send")
    status = tmp_path / "notify-status.json"
    notifier = Notifier([desktop_notifier_backend(), notify_send_backend()], status_file=status)
    assert notifier.notify(alert("ask"), T0) == "sent"
    assert len(calls(log)) == 1
    written = json.loads(status.read_text())
    assert written["ok"] is True and written["backend"] == "notify-send"
    assert "did not take the notification" in written["problems"]["desktop-notifier"]


def test_a_desktop_with_no_working_backend_is_reported_once(bin_dir, tmp_path, caplog):
    fake_binary(bin_dir, "notify-send", exit_code=1)  # no daemon: libnotify exits 1
    status = tmp_path / "notify-status.json"
    notifier = Notifier([notify_send_backend()], status_file=status)
    with caplog.at_level(logging.WARNING, logger="devmeter.alert_delivery"):
        assert notifier.notify(alert(key="a"), T0) == "failed"
        assert notifier.notify(alert(key="b"), T0 + 1) == "failed"
    assert caplog.text.count("none could be shown") == 1
    assert "notify-send: exit status 1" in caplog.text
    assert read_status(tmp_path) == {
        "ok": False, "backend": None, "problems": {"notify-send": "exit status 1"}, "ts": T0
    }  # fmt: skip
    fake_binary(bin_dir, "notify-send")  # a daemon came up
    assert notifier.notify(alert(key="c"), T0 + 2) == "sent"
    assert read_status(tmp_path)["ok"] is True
