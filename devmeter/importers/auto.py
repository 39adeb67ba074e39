"""The tray's background import: Claude Code, Codex and Gemini CLI history, every few
minutes, so tools used without the proxy still show up (marked as imported).

Configured by `[import]`:

    [import]
    auto = true              # false: import only with `devmeter import ...`
    interval_minutes = 5

The first run waits a few seconds, so the proxy the tray starts has created the ledger;
each run reads only what is new (devmeter/importers/history.py). A failing run is
printed and retried at the next interval; it never stops the tray.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from devmeter.config_error import ConfigError
from devmeter.config_values import config_bool, config_table, reject_unknown
from devmeter.pricing import PriceOverride

log = logging.getLogger(__name__)

_KEYS = ("auto", "interval_minutes")
FIRST_DELAY = 5.0  # seconds after start
INTERVAL_MAX_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class ImportConfig:
    auto: bool = True
    interval_minutes: float = 5.0


def parse_import(table: Mapping[str, object] | None) -> ImportConfig:
    """The `[import]` table -> ImportConfig."""
    table = config_table("import", table if table is not None else {})
    reject_unknown("import", table, _KEYS)
    auto = config_bool("import.auto", table.get("auto", True))
    minutes = table.get("interval_minutes", 5.0)
    number = isinstance(minutes, int | float) and not isinstance(minutes, bool)
    if not number or not 1 <= minutes <= INTERVAL_MAX_MINUTES:  # type: ignore[operator]
        # The cap: the import thread waits on threading.Event, which raised OverflowError
        # (and so stopped importing for good) past a few hundred years, and at inf.
        raise ConfigError(
            "import.interval_minutes",
            f"expected a number of minutes from 1 to {INTERVAL_MAX_MINUTES} (a week), got "
            f"{minutes!r}; auto = false turns the background import off",
        )
    return ImportConfig(auto=auto, interval_minutes=float(minutes))


def start_auto_import(
    settings: ImportConfig,
    ledger_path: Path,
    overrides: tuple[PriceOverride, ...] = (),
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
    first_delay: float = FIRST_DELAY,
) -> threading.Thread | None:
    """Start the background import (a daemon thread); None when `[import] auto = false`."""
    if not settings.auto:
        return None
    stop = stop or threading.Event()
    say = say or _log_line

    def loop() -> None:
        from devmeter.importers.history import import_all

        delay = first_delay
        while not stop.wait(delay):
            delay = settings.interval_minutes * 60
            try:
                results = import_all(ledger_path, overrides)
            except Exception as exc:  # never take the tray down; try again next time
                say(f"devmeter: background import failed: {exc!r}; retrying in {delay:g}s")
                continue
            for result in results:
                if result.imported or result.updated:
                    say(
                        f"devmeter: imported {result.imported} {result.importer} "
                        f"call{'' if result.imported == 1 else 's'} from its own history"
                    )

    thread = threading.Thread(target=loop, name="devmeter-import", daemon=True)
    thread.start()
    return thread


def _log_line(text: str) -> None:
    log.info("%s", text)
