"""Importers: usage a tool reports itself (exports, logs) into ledger rows.

Each importer reads one source into `Call` rows marked with its own endpoint
(`cursor.import`, `claude-code.import`, ...), idempotently: importing the same file twice
adds nothing. The history importers (claude_code, codex, gemini_cli) share history.py:
incremental reads and exactly-once writes, with live rows winning over imported ones;
scan.py finds their files and tells, from the standard library alone, whether anything
is new (a re-scan with nothing new starts no more than that).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: a re-scan starts from here
if TYPE_CHECKING:
    from typing import Any

__all__ = ["BadLine", "CursorCSVError", "ImportSummary", "import_cursor_csv", "read_cursor_csv"]


def __getattr__(name: str) -> Any:
    # The Cursor CSV importer loads the provider parsers: only when it is asked for, so
    # `devmeter.importers.scan` (a re-scan's whole work) starts without them.
    if name in __all__:
        from devmeter.importers import cursor_csv

        return getattr(cursor_csv, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
