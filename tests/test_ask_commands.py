"""`devmeter allow` answers an open ask (by prefix, --by), and Stop is `devmeter stop`."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import control
from devmeter.ask import AskBook, asks_path, write_pending
from devmeter.budget import BudgetTracker, parse_budgets
from devmeter.cli import main
from devmeter.ledger import write_calls
from tests.test_allow_stop import LONER, call

D = Decimal


@pytest.fixture()
def waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, AskBook]:
    """A proxy's open ask for LONER at $25 (no cap anywhere), as asks.json lists it."""
    monkeypatch.setenv("DEVMETER_HOME", str(tmp_path))
    spent = call(LONER, "26")
    write_calls(tmp_path / "ledger.sqlite", [spent])
    tracker = BudgetTracker(parse_budgets({}))
    tracker.observe(spent)

    def spend(scope, who, at):  # type: ignore[no-untyped-def]
        key = tracker.key(scope, who, at)
        return key, tracker.spent(scope, key, at) if key else D(0)

    book = AskBook(tracker.budgets, spend)
    assert isinstance(book.check(spent.attribution, spent.ts), tuple)
    write_pending(asks_path(tmp_path), book.pending())
    return tmp_path, book


def test_allow_with_a_prefix_continues_the_held_request(waiting, capsys) -> None:
    home, book = waiting
    assert main(["allow", LONER[:8]]) == 0
    out = capsys.readouterr().out
    assert "may spend up to $50.00 (devmeter asked at $25.00)" in out
    book.apply(control.load(control.control_path(home)))
    assert book.open_asks == []


def test_allow_by_continues_up_to_that_much_more(waiting, capsys) -> None:
    home, book = waiting
    assert main(["allow", LONER, "--by", "100"]) == 0
    assert "may spend up to $126.00" in capsys.readouterr().out
    book.apply(control.load(control.control_path(home)))
    assert book.open_asks == []
    assert book.check(call(LONER, "0").attribution, 0) is None


def test_stop_from_a_button_is_the_same_stop_as_devmeter_stop(waiting, capsys) -> None:
    home, book = waiting
    (ask,) = book.open_asks
    path = control.control_path(home)
    control.answer(path, ask.id, "stop")
    assert [s for s, _ in control.load(path).stopped] == [LONER]
    assert main(["allow", LONER[:8]]) == 0
    assert "may continue" in capsys.readouterr().out
