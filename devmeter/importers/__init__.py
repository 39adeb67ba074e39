"""Importers: usage a tool reports itself (exports, logs) into ledger rows.

Each importer reads one source into `Call` rows marked with its own endpoint
(`cursor.import`, `claude-code.import`, ...), idempotently: importing the same file twice
adds nothing. The history importers (claude_code, codex, gemini_cli) share history.py:
incremental reads and exactly-once writes, with live rows winning over imported ones.
"""

from __future__ import annotations

from devmeter.importers.cursor_csv import (
    BadLine,
    CursorCSVError,
    ImportSummary,
    import_cursor_csv,
    read_cursor_csv,
)

__all__ = ["BadLine", "CursorCSVError", "ImportSummary", "import_cursor_csv", "read_cursor_csv"]
