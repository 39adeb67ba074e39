"""Asks: a scope past its ask level waits for an answer; Continue, Stop, allow and silence."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import control
from devmeter.alerts import Block
from devmeter.ask import (
    Ask,
    AskBook,
    ask_id,
    level_reached,
    levels_after,
    parse_ask_id,
    read_pending,
    write_pending,
)
from devmeter.budget import Budgets, BudgetTracker, ScopeBudget, parse_budgets
from devmeter.config_error import ConfigError
from devmeter.usage import Attribution, Call, Usage

D = Decimal
T0 = 1_795_000_000.0
ME = Attribution(
    session="0bcf16ce-1111-2222-3333-444455556666", tool="claude-code", repo="/src/acme"
)
OTHER = Attribution(session="ffff0000-1111-2222-3333-444455556666", tool="codex", repo="/src/acme")


def budgets(**session: object) -> Budgets:
    return parse_budgets({"session": {"ask_usd": [25, 50], **session}, "day": {"ask_usd": []}})


class Ledger:
    """The real BudgetTracker fed real Call records: the spend the proxy's guard keeps."""

    def __init__(self, limits: Budgets) -> None:
        self.tracker = BudgetTracker(limits)

    def spend(self, scope: str, attribution: Attribution, now: float) -> tuple[str | None, D]:
        key = self.tracker.key(scope, attribution, now)
        return key, self.tracker.spent(scope, key, now) if key else D(0)

    def add(self, usd: str, who: Attribution = ME, ts: float = T0) -> None:
        call = Call(ts=ts, provider="anthropic", endpoint="anthropic.messages", host="h",
                    requested_model="m", model="m", attribution=who, usage=Usage(),
                    cost_usd=D(usd), price_source="test", status=200)  # fmt: skip
        self.tracker.observe(call)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(budgets())


@pytest.fixture
def book(ledger: Ledger) -> AskBook:
    return AskBook(ledger.tracker.budgets, ledger.spend)


def held(verdict: object) -> tuple[Ask, bool]:
    assert isinstance(verdict, tuple), verdict
    return verdict


def test_levels_go_on_past_the_last_one_by_its_step() -> None:
    levels = (D(25), D(50))
    assert [levels_after(levels, D(s)) for s in ("0", "24.99", "25", "49", "50", "74.9", "130")] \
        == [D(25), D(25), D(50), D(50), D(75), D(75), D(150)]  # fmt: skip
    assert [level_reached(levels, D(s)) for s in ("25", "49", "50", "75.5", "130")] == [
        D(25), D(25), D(50), D(75), D(125)]  # fmt: skip
    assert levels_after((D(100),), D(250)) == D(300)


def test_below_the_level_nothing_waits_and_past_it_the_next_request_is_held(
    ledger: Ledger, book: AskBook
) -> None:
    ledger.add("24.90")
    assert book.check(ME, T0) is None
    ledger.add("0.30")  # $25.20: past $25
    ask, new = held(book.check(ME, T0 + 1))
    assert new and (ask.scope, ask.level, ask.until, ask.spent) == ("session", 25, 50, D("25.20"))
    assert ask.deadline == T0 + 1 + 60  # the default ask_timeout_seconds
    alert = ask.alert()
    assert alert.kind == "ask" and alert.figure_usd == 25
    assert "0bcf16ce" in alert.message and "$25.00" in alert.message and "$50.00" in alert.message
    assert f"devmeter allow {ME.session[:8]}`" in alert.message
    assert len(alert.message) < 255  # whole on every desktop, the command included
    # The next request waits for the same ask (no second alert); other sessions never wait.
    again, new = held(book.check(ME, T0 + 2))
    assert again == ask and not new
    assert book.check(OTHER, T0 + 2) is None


def test_continue_from_a_button_or_the_menu_lets_it_run_to_the_next_level(
    ledger: Ledger, book: AskBook, tmp_path: Path
) -> None:
    ledger.add("26")
    ask, _ = held(book.check(ME, T0))
    path = tmp_path / "control.json"
    book.apply(control.answer(path, ask.id, "continue", T0 + 5))
    assert book.answered(ask) and book.check(ME, T0 + 6) is None
    ledger.add("23")  # $49: still under $50
    assert book.check(ME, T0 + 7) is None
    ledger.add("2")  # $51
    nxt, new = held(book.check(ME, T0 + 8))
    assert new and (nxt.level, nxt.until) == (50, 75)
    # An old answer in control.json (re-read on every change) never answers a later ask.
    book.apply(control.load(path))
    assert not book.answered(nxt)


def test_devmeter_allow_continues_an_open_ask(ledger: Ledger, book: AskBook) -> None:
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    book.apply(control.Control(allowed=(("session", ME.session, T0 - 10),)))  # older: no
    assert not book.answered(ask)
    book.apply(control.Control(allowed=(("session", ME.session, T0 + 3),)))
    assert book.answered(ask) and book.check(ME, T0 + 4) is None


def test_stop_refuses_this_scope_until_allowed(ledger: Ledger, book: AskBook) -> None:
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    book.apply(control.Control(answers=((ask.id, "stop", T0 + 2),)))
    block = book.check(ME, T0 + 3)
    assert isinstance(block, Block) and block.message.startswith("devmeter: you chose Stop")
    assert f"devmeter allow {ME.session[:8]}`" in block.message
    assert book.check(OTHER, T0 + 3) is None
    lifted = control.Control(
        answers=((ask.id, "stop", T0 + 2),), allowed=(("session", ME.session, T0 + 9),)
    )
    book.apply(lifted)
    book.apply(lifted)  # re-reading the same file changes nothing
    assert book.check(ME, T0 + 10) is None


def test_devmeter_stop_answers_an_open_ask_as_its_stop_button_does(
    ledger: Ledger, book: AskBook
) -> None:
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    book.apply(control.Control(stopped=((ME.session, T0 - 10),)))  # older: no
    assert not book.answered(ask)
    stopped = control.Control(stopped=((ME.session, T0 + 2),))
    book.apply(stopped)
    assert book.answered(ask) and book.pending() == []  # off the tray menu and popup
    assert isinstance(book.check(ME, T0 + 3), Block)
    # `devmeter allow` lifts it up to the ask's next level, as after the Stop button.
    lifted = control.Control(stopped=stopped.stopped, allowed=(("session", ME.session, T0 + 9),))
    book.apply(lifted)
    assert book.check(ME, T0 + 10) is None
    ledger.add("21")  # $51: past $50, asked again
    nxt, new = held(book.check(ME, T0 + 11))
    assert new and nxt.level == 50


def test_no_answer_refuses_now_and_later_until_someone_answers(
    ledger: Ledger, book: AskBook
) -> None:
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    book.expire(ask)
    block = book.check(ME, T0 + 61)
    assert isinstance(block, Block)
    assert "nobody answered devmeter's ask within 60 s" in block.message
    assert "up to $50.00" in block.message and f"devmeter allow {ME.session[:8]}`" in block.message
    assert book.open_asks == [ask]  # still answerable from the menu or the command
    book.answer(ask, "continue", T0 + 300)
    assert book.check(ME, T0 + 301) is None


def test_answers_survive_a_restart(ledger: Ledger, tmp_path: Path) -> None:
    """A new proxy reads control.json again: Continue already given is not asked twice."""
    ledger.add("30")
    path = tmp_path / "control.json"
    control.answer(path, ask_id("session", ME.session or "", D(25)), "continue", T0)
    fresh = AskBook(ledger.tracker.budgets, ledger.spend)
    fresh.apply(control.load(path))
    assert fresh.check(ME, T0 + 1) is None
    ledger.add("25")  # $55
    assert held(fresh.check(ME, T0 + 2))[0].level == 50


def test_an_empty_list_turns_asks_off_and_other_scopes_ask_for_all(ledger: Ledger) -> None:
    off = Ledger(parse_budgets({"session": {"ask_usd": []}, "day": {"ask_usd": []}}))
    off.add("500")
    assert AskBook(off.tracker.budgets, off.spend).check(ME, T0) is None
    day = Ledger(parse_budgets({"session": {"ask_usd": []}, "day": {"ask_usd": [10]}}))
    day.add("6")
    day.add("6", OTHER)
    book = AskBook(day.tracker.budgets, day.spend)
    ask, _ = held(book.check(OTHER, T0))
    assert ask.scope == "day" and ask.stop_label == "Stop for today"
    assert held(book.check(ME, T0))[0] == ask


def test_ids_name_scope_key_and_level_even_with_colons_in_the_key() -> None:
    the_id = ask_id("repo", "C:\\src\\acme", D("25.50"))
    assert parse_ask_id(the_id) == ("repo", "C:\\src\\acme", D("25.5"))
    assert parse_ask_id("nonsense") is None


def test_config_defaults_and_errors() -> None:
    defaults = Budgets()
    assert defaults.session.ask_usd == (D(25), D(50)) and defaults.day.ask_usd == (D(100),)
    assert defaults.repo.ask_usd == defaults.month.ask_usd == ()
    assert defaults.ask_timeout_seconds == 60
    assert parse_budgets({"ask_timeout_seconds": 90}).ask_timeout_seconds == 90
    # Kept with a cap, like thresholds: those above it work once `devmeter allow` raises it.
    assert parse_budgets({"session": {"block_usd": 30}}).session == ScopeBudget(
        notify_usd=(D(5), D(20), D(100)), block_usd=D(30), ask_usd=(D(25), D(50))
    )
    with pytest.raises(ConfigError, match="ascending") as caught:
        parse_budgets({"session": {"ask_usd": [50, 25]}})
    assert caught.value.key == "budgets.session.ask_usd"
    with pytest.raises(ConfigError, match="at most 300") as caught:
        parse_budgets({"ask_timeout_seconds": 900})
    assert caught.value.key == "budgets.ask_timeout_seconds"


def test_the_tray_reads_what_the_proxy_writes(
    ledger: Ledger, book: AskBook, tmp_path: Path
) -> None:
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    path = tmp_path / "asks.json"
    write_pending(path, book.pending())
    (row,) = read_pending(path)
    assert row["id"] == ask.id and row["until_usd"] == 50 and row["session"] == ME.session
    assert row["expired"] is False
    book.expire(ask)
    write_pending(path, book.pending())
    assert read_pending(path)[0]["expired"] is True
    path.write_text("{half")
    assert read_pending(path) == []


def test_switch_continues_and_names_the_session_for_the_router(
    ledger: Ledger, book: AskBook
) -> None:
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    offered = book.offer_switch(ask, "claude-sonnet-5-5")
    assert "Switch moves it to claude-sonnet-5-5" in offered.alert().message
    assert offered.alert().switch_to == "claude-sonnet-5-5"  # what the buttons offer
    assert book.pending()[0]["switch_to"] == "claude-sonnet-5-5"
    book.apply(control.Control(answers=((offered.id, "switch", T0 + 1),)))
    assert book.take_switched() == [ME.session] and book.take_switched() == []
    assert book.answered(offered) and book.check(ME, T0 + 2) is None
    assert book.offer_switch(offered, None) == offered  # nothing to offer: unchanged


def test_a_new_period_closes_the_asks_of_the_last_one() -> None:
    day = Ledger(parse_budgets({"session": {"ask_usd": []}, "day": {"ask_usd": [10]}}))
    day.add("12")
    book = AskBook(day.tracker.budgets, day.spend)
    ask, _ = held(book.check(ME, T0))
    book.expire(ask)
    assert isinstance(book.check(ME, T0 + 60), Block)  # refused for the rest of the day
    tomorrow = T0 + 86400
    assert book.check(ME, tomorrow) is None and book.open_asks == []
    repo = Ledger(parse_budgets({"session": {"ask_usd": []}, "day": {"ask_usd": []},
                                 "repo": {"ask_usd": [10]}}))  # fmt: skip
    repo.add("12")
    book = AskBook(repo.tracker.budgets, repo.spend)
    ask, _ = held(book.check(ME, T0))
    book.expire(ask)
    assert book.check(ME, tomorrow) is None and book.open_asks == []  # the repo's day is new


def test_messages_name_the_shortest_id_that_resolves_and_the_menu_only_with_one(
    ledger: Ledger,
) -> None:
    from devmeter.budget import Advice

    twin = "0bcf16ce-1111-9999-0000-000000000000"  # shares 14 characters with ME's id
    advice = Advice(menu=True)
    advice.know(ME.session)
    advice.know(twin)
    book = AskBook(ledger.tracker.budgets, ledger.spend, advice)
    ledger.add("30")
    ask, _ = held(book.check(ME, T0))
    assert "`devmeter allow 0bcf16ce-1111-2`" in ask.alert(advice).message
    book.expire(ask)
    block = book.check(ME, T0 + 61)
    assert isinstance(block, Block) and "Continue in the devmeter tray menu" in block.message
    headless = AskBook(ledger.tracker.budgets, ledger.spend)
    headless.expire(held(headless.check(ME, T0))[0])
    refused = headless.check(ME, T0 + 61)
    assert isinstance(refused, Block) and "menu" not in refused.message
