"""The tray's side of asks: the proxy's open asks in the menu, answered with a click that
the proxy's AskBook then reads from control.json; a desktop that shows no notifications."""

from __future__ import annotations

import json
from decimal import Decimal

from devmeter import control
from devmeter.alert_delivery import status_path
from devmeter.ask import AskBook, asks_path, write_pending
from devmeter.budget import BudgetTracker, parse_budgets
from devmeter.tray.menu import AskRow, TraySnapshot, build_menu
from devmeter.usage import Attribution, Call, Usage
from tests.test_tray_app import FakeIcon, app_for, click, where  # noqa: F401 - fixtures

D = Decimal
ME = Attribution(tool="claude-code", session="0bcf16ce-9999", repo="/src/acme-api")


def book_with_an_open_ask(now: float) -> AskBook:
    tracker = BudgetTracker(parse_budgets({"session": {"ask_usd": [25, 50]}}))
    tracker.observe(
        Call(ts=now, provider="anthropic", endpoint="anthropic.messages", host="h",
             requested_model="m", model="m", attribution=ME, usage=Usage(),
             cost_usd=D("25.40"), price_source="t", status=200)
    )  # fmt: skip

    def spend(scope: str, who: Attribution, at: float) -> tuple[str | None, Decimal]:
        key = tracker.key(scope, who, at)
        return key, tracker.spent(scope, key, at) if key else D(0)

    book = AskBook(tracker.budgets, spend)
    assert isinstance(book.check(ME, now), tuple)
    return book


def test_the_menu_asks_with_continue_and_stop() -> None:
    row = AskRow("session:0bcf16ce-9999:25", "session", "0bcf16ce-9999", D(25), D(50), D("25.4"),
                 "claude-code", "/src/acme-api")  # fmt: skip
    snap = TraySnapshot(asks=(row,))
    assert snap.state == "blocked"  # a request is waiting: the icon says so
    item = build_menu(snap)[1]
    assert item.text == "Waiting for you: session 0bcf16ce passed $25.00 (claude-code · acme-api)"
    assert [(i.text, i.action, i.args) for i in item.submenu] == [
        ("Continue up to $50.00", "answer_ask", (row.id, "continue")),
        ("Stop this session", "answer_ask", (row.id, "stop")),
    ]
    switch = build_menu(TraySnapshot(asks=(AskRow(**{**row.__dict__, "switch_to": "x-mini"}),)))
    assert [i.text for i in switch[1].submenu][1] == "Switch to x-mini"
    assert switch[1].submenu[1].args == (row.id, "switch")
    expired = build_menu(TraySnapshot(asks=(AskRow(**{**row.__dict__, "expired": True}),)))[1]
    assert expired.text.startswith("Refused until you answer: session 0bcf16ce")


def test_a_click_answers_the_proxys_ask(app_for, where) -> None:  # noqa: F811
    app, icon, _ = app_for()
    book = book_with_an_open_ask(app.clock())
    write_pending(asks_path(where.data_dir), book.pending())
    app.refresh()
    assert icon.title  # drawn
    click(icon, "Continue up to $50.00")
    answers = control.load(control.control_path(where.data_dir))
    (ask,) = book.open_asks
    assert [(a, c) for a, c, _ in answers.answers] == [(ask.id, "continue")]
    book.apply(answers)  # what the proxy does when control.json changes
    assert book.answered(ask) and book.check(ME, app.clock()) is None


def test_notifications_that_cannot_be_shown_are_said_in_the_menu(app_for, where) -> None:  # noqa: F811
    app, icon, _ = app_for()
    app.refresh(force=True)
    problems = {"desktop-notifier": "no D-Bus session", "notify-send": "exit status 1"}
    status = {"ok": False, "backend": None, "problems": problems}
    status_path(where.data_dir).write_text(json.dumps(status))
    assert app.refresh()  # the status file changed: redrawn
    texts = [i.text for i in icon.menu[0]]
    expected = "desktop-notifier: no D-Bus session; notify-send: exit status 1"
    assert f"Notifications are not shown: {expected}" in texts
