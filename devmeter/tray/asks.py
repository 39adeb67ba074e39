"""What the tray shows of asks, notifications and config edits, read from the proxy's
small state files.

The proxy lists its open asks in `asks.json` (devmeter/ask.py), says whether desktop
notifications can be shown in `notify-status.json` (devmeter/alert_delivery.py) and whether
it took the last config edit in `config_status.json` (devmeter/config_reload.py); all
sit beside the ledger. Unreadable or missing files read as "nothing to show".
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from devmeter import config_reload
from devmeter.alert_delivery import read_status, status_path
from devmeter.ask import asks_path, read_pending
from devmeter.tray.menu import AskRow, TraySnapshot


def held_asks(data_dir: Path) -> tuple[AskRow, ...]:
    rows = []
    for raw in read_pending(asks_path(data_dir)):
        try:
            rows.append(
                AskRow(
                    id=str(raw["id"]),
                    scope=str(raw["scope"]),
                    key=str(raw["key"]),
                    level_usd=Decimal(str(raw["level_usd"])),
                    until_usd=Decimal(str(raw["until_usd"])),
                    spent_usd=Decimal(str(raw["spent_usd"])),
                    tool=raw.get("tool"),
                    repo=raw.get("repo"),
                    expired=bool(raw.get("expired")),
                    switch_to=raw.get("switch_to") or None,
                )
            )
        except (KeyError, ArithmeticError, TypeError):
            continue  # one odd row must not hide the others
    return tuple(rows)


def notify_problem(data_dir: Path) -> str | None:
    """Why the last notification could not be shown, or None when it was (or none yet)."""
    status = read_status(data_dir)
    if not status or status.get("ok") is not False:
        return None
    problems = status.get("problems") or {}
    if isinstance(problems, dict) and problems:
        return "; ".join(f"{name}: {why}" for name, why in problems.items())[:120]
    return "no notification service"


def with_state_files(snap: TraySnapshot, data_dir: Path) -> TraySnapshot:
    """`snap` with what the state files say: held asks, notification and config problems.
    The tray and the headless line both show these."""
    return replace(
        snap,
        asks=held_asks(data_dir),
        notify_problem=notify_problem(data_dir),
        config_problem=config_reload.live_config_error(data_dir),
    )


def files(data_dir: Path) -> tuple[Path, Path, Path]:
    """The files whose changes the tray must redraw for."""
    return asks_path(data_dir), status_path(data_dir), config_reload.status_path(data_dir)
