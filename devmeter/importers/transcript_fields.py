"""What the history importers (claude_code, codex) read alike out of a tool's own
records: a timestamp in ISO 8601, and the repository a working directory is in; and the
one way each runs its import over line files."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from devmeter.gitinfo import repo_for
from devmeter.importers.history import ImportResult, Row, run_import
from devmeter.pricing import PriceOverride

# (new lines, the file's carried state, its path, price overrides) -> ledger rows
LinesParser = Callable[[list[bytes], dict[str, Any], Path, tuple[PriceOverride, ...]], list[Row]]


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (`Z` or an offset; none: UTC)."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@functools.lru_cache(maxsize=4096)
def repo_of(cwd: str) -> tuple[str | None, str | None]:
    """(repo, branch) of a recorded working directory: its git top level and branch while
    it exists, else the directory itself and no branch."""
    info = repo_for(cwd) if Path(cwd).is_dir() else None
    return (cwd, None) if info is None else (info.root, info.branch)


def import_line_files(
    ledger_path: Path,
    importer: str,
    files: Sequence[Path],
    parse_lines: LinesParser,
    overrides: tuple[PriceOverride, ...],
    progress: TextIO | None,
    none_found: str,
    two_processes: bool = False,
) -> ImportResult:
    """Import what is new in `files`; `none_found` is the error when there are none;
    `two_processes` as `run_import`'s."""

    def parse(lines: list[bytes], state: dict[str, Any], path: Path) -> list[Row]:
        return parse_lines(lines, state, path, overrides)

    result = run_import(ledger_path, importer, files, parse, progress, two_processes=two_processes)
    if not files:
        result.errors.append(none_found)
    return result
