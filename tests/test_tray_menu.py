"""The tray menu: what a developer sees for a given ledger snapshot, and what a click does."""

from __future__ import annotations

import os
import sys
from decimal import Decimal

import pytest

from devmeter.tray.menu import (
    CapRow,
    MenuItem,
    SessionRow,
    TraySnapshot,
    build_menu,
    to_pystray,
)

D = Decimal

BUSY = TraySnapshot(
    today_usd=D("42.17"),
    month_usd=D("310.55"),
    sessions=(
        SessionRow("01a20804-def5-7ef0", "codex", "/home/dev/src/web", D("2.10")),
        SessionRow("c94186ab-2b3f-417d", "claude-code", "/home/dev/src/acme-api", D("31.40")),
        SessionRow("s-anon", "python-sdk", None, D("0.05")),
    ),
    today_by_repo=(
        ("/home/dev/src/web", D("8.60")),
        ("/home/dev/src/acme-api", D("33.52")),
        (None, D("0.05")),
    ),
    routing="shadow",
)


def texts(items: list[MenuItem] | tuple[MenuItem, ...]) -> list[str]:
    return ["---" if i.separator else i.text for i in items]


def find(items, text: str) -> MenuItem:
    return next(i for i in items if i.text == text)


def test_a_busy_day_reads_top_to_bottom():
    menu = build_menu(BUSY)
    assert texts(menu) == [
        "Today $42.17 · month $310.55",
        "Live sessions",
        "Today by repo",
        "Routing",
        "Pause all metered traffic",
        "---",
        "Open dashboard",
        "Open config",
        "---",
        "Quit devmeter",
    ]
    assert menu[0].enabled is False  # a heading, not a button
    sessions = find(menu, "Live sessions").submenu
    assert texts(sessions) == [  # most expensive first
        "$31.40  claude-code · acme-api · c94186ab",
        "$2.10  codex · web · 01a20804",
        "$0.05  python-sdk · (unattributed) · s-anon",
    ]
    assert (sessions[0].action, sessions[0].args) == ("open_dashboard", ("c94186ab-2b3f-417d",))
    assert texts(find(menu, "Today by repo").submenu) == [
        "$33.52  acme-api",
        "$8.60  web",
        "$0.05  (unattributed)",
    ]


def test_routing_is_a_radio_group_with_the_current_mode_checked():
    routing = find(build_menu(BUSY), "Routing").submenu
    assert [(i.text, i.checked, i.radio, i.args) for i in routing] == [
        ("Off", False, True, ("off",)),
        ("Shadow", True, True, ("shadow",)),
        ("On", False, True, ("on",)),
    ]
    assert {i.action for i in routing} == {"set_routing"}


def test_paused_says_so_and_offers_resume():
    snapshot = TraySnapshot(paused=True, blocked=(CapRow("session", "abc", D(50)),))
    menu = build_menu(snapshot)
    assert snapshot.state == "paused"
    assert menu[1] == MenuItem("Paused: metered requests are refused", enabled=False)
    resume = find(menu, "Resume metered traffic")
    assert resume.action == "resume"
    assert "Pause all metered traffic" not in texts(menu)


def test_caps_that_are_blocking_can_be_lifted_from_the_menu():
    snapshot = TraySnapshot(
        blocked=(
            CapRow("session", "c94186ab-2b3f-417d", D(50)),
            CapRow("day", "2026-11-23", D(200)),
            CapRow("repo", "/home/dev/src/acme-api", D(100)),
        )
    )
    assert snapshot.state == "blocked"
    caps = find(build_menu(snapshot), "Blocked by 3 caps").submenu
    assert [(i.text, i.action, i.args) for i in caps] == [
        ("Lift the $50.00 cap on session c94186ab", "allow", ("session", "c94186ab-2b3f-417d")),
        ("Lift the $200.00 cap on 2026-11-23", "allow", ("day", "2026-11-23")),
        ("Lift the $100.00 cap on repo acme-api", "allow", ("repo", "/home/dev/src/acme-api")),
    ]


def test_icon_state_follows_the_snapshot():
    assert TraySnapshot().state == "normal"
    assert TraySnapshot(warning=True).state == "warning"


def test_a_quiet_day_has_placeholders_not_empty_submenus():
    menu = build_menu(TraySnapshot())
    assert texts(find(menu, "Live sessions").submenu) == ["No live sessions"]
    assert texts(find(menu, "Today by repo").submenu) == ["Nothing spent today"]
    assert not find(menu, "Live sessions").submenu[0].enabled


def test_a_swarm_of_sessions_is_summed_after_ten_rows():
    swarm = tuple(SessionRow(f"s{i:02}", "sdk", "/r", D(i)) for i in range(25))
    rows = find(build_menu(TraySnapshot(sessions=swarm)), "Live sessions").submenu
    assert len(rows) == 11
    assert rows[0].text.startswith("$24.00")
    assert rows[-1].text == "$105.00  15 more sessions"  # 0 + 1 + ... + 14
    assert rows[-1].action is None


# --- pystray ---------------------------------------------------------------------------------


@pytest.fixture
def pystray_module(monkeypatch):
    # Headless: pystray's X backend cannot open a display; its dummy backend can.
    if "pystray" not in sys.modules:
        monkeypatch.setitem(os.environ, "PYSTRAY_BACKEND", "dummy")
    import pystray

    return pystray


def test_to_pystray_wires_every_click_to_its_handler(pystray_module):
    calls: list[tuple] = []

    def record(name):
        return lambda *args: calls.append((name, *args))

    handlers = {
        name: record(name)
        for name in (
            "open_dashboard",
            "set_routing",
            "pause",
            "resume",
            "allow",
            "open_config",
            "quit",
        )
    }
    snapshot = TraySnapshot(
        sessions=BUSY.sessions, routing="on", blocked=(CapRow("session", "abc", D(5)),)
    )
    menu = to_pystray(build_menu(snapshot), handlers)
    assert isinstance(menu, pystray_module.Menu)
    items = {item.text: item for item in menu.items}
    assert items["Today $0.00 · month $0.00"].enabled is False

    items["Quit devmeter"](None)
    items["Pause all metered traffic"](None)
    sessions = {i.text: i for i in items["Live sessions"].submenu.items}
    sessions["$31.40  claude-code · acme-api · c94186ab"](None)
    routing = {i.text: i for i in items["Routing"].submenu.items}
    assert [(i.checked, i.radio) for i in routing.values()] == [
        (False, True),
        (False, True),
        (True, True),
    ]
    routing["Shadow"](None)
    caps = items["Blocked by 1 cap"].submenu.items
    caps[0](None)
    assert calls == [
        ("quit",),
        ("pause",),
        ("open_dashboard", "c94186ab-2b3f-417d"),
        ("set_routing", "shadow"),
        ("allow", "session", "abc"),
    ]
    separators = [i for i in menu.items if i is pystray_module.Menu.SEPARATOR]
    assert len(separators) == 2


def test_a_left_click_on_the_icon_opens_the_dashboard(pystray_module):
    # pystray's GTK backend calls the menu's default item on a left click (`activate`):
    # without one, a left click did nothing; the X backend's click opens the dashboard.
    opened: list[tuple] = []
    handlers = {"open_dashboard": lambda *a: opened.append(a), "quit": lambda: None}
    menu = to_pystray(build_menu(TraySnapshot()), handlers)
    defaults = [item.text for item in menu.items if item.default]
    assert defaults == ["Open dashboard"]
    menu(None)  # what pystray's Icon.__call__ does on activate
    assert opened == [()]


def test_an_action_without_a_handler_is_disabled_not_a_crash(pystray_module, caplog):
    menu = to_pystray(build_menu(TraySnapshot()), {"quit": lambda: None})
    items = {item.text: item for item in menu.items}
    assert items["Quit devmeter"].enabled is True
    assert items["Open dashboard"].enabled is False
    items["Open dashboard"](None)  # nothing happens
    assert "no handler for action 'open_dashboard'" in caplog.text
