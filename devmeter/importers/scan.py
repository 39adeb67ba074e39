"""Where each tool keeps its history, and whether any of it is new: the standard library only.

A history re-scan with nothing new is what the tray runs every few minutes and what a
user runs most: it must cost a look at each file's size and time, no more. This module
finds the files (the same lists the importers read) and compares them with the marks the
ledger keeps (`import_files`: inode, size, mtime), reading the ledger read-only, without
importing the ledger, pricing or parser modules. Anything it cannot tell for sure (no
ledger yet, a file it has no mark for, an error) counts as new: the importer decides.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# importer -> (environment variable naming its home, the default home, the folder under
# the home that holds the history, glob patterns of the files there).
SOURCES: dict[str, tuple[str | None, str, str, tuple[str, ...]]] = {
    "claude-code": ("CLAUDE_CONFIG_DIR", "~/.claude", "projects", ("**/*.jsonl",)),
    "codex": ("CODEX_HOME", "~/.codex", "sessions", ("**/rollout-*.jsonl",)),
    # Gemini CLI 0.61's JSONL chats (sessions and subagents), then older versions' whole
    # JSON documents: importers/gemini_cli.py reads the two differently.
    "gemini-cli": (None, "~/.gemini", "", ("tmp/*/chats/**/*.jsonl",
                                           "tmp/*/chats/**/session-*.json")),
}  # fmt: skip


def home_dir(env_var: str | None, default: str) -> Path:
    value = os.environ.get(env_var) if env_var else None
    return Path(value).expanduser() if value else Path(default).expanduser()


def history_root(importer: str, given: Path | None = None) -> Path:
    """The folder an importer reads: `given` (a home, or the history folder itself), else
    its home's history folder."""
    env_var, default, below, _ = SOURCES[importer]
    if given is None:
        return home_dir(env_var, default) / below if below else home_dir(env_var, default)
    if below and (given / below).is_dir():
        return given / below  # given the home itself
    return given


def jsonl_files(root: Path, pattern: str) -> list[Path]:
    """The files under `root` matching `pattern`, oldest first (a resumed session's copy
    of earlier lines then meets the original already imported)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.glob(pattern):
        try:
            found.append((path.stat().st_mtime_ns, str(path), path))
        except OSError:
            continue
    return [p for _, _, p in sorted(found)]


def history_files(importer: str, root: Path) -> list[list[Path]]:
    """The importer's files under `root`, one list per pattern."""
    return [jsonl_files(root, pattern) for pattern in SOURCES[importer][3]]


def nothing_new(ledger_path: Path, importer: str, files: list[Path]) -> bool:
    """True when the ledger has a mark for every one of `files` with its current inode,
    size and mtime: an import would open none of them. False when unsure."""
    if not files or not ledger_path.exists():
        return False
    text = str(ledger_path.absolute()).replace("%", "%25").replace("?", "%3f")
    try:
        conn = sqlite3.connect(f"file:{text.replace('#', '%23')}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return False
    try:
        marks = {
            path: (inode, size, mtime_ns)
            for path, inode, size, mtime_ns in conn.execute(
                "SELECT path, inode, size, mtime_ns FROM import_files WHERE importer = ?",
                (importer,),
            )
        }
    except sqlite3.Error:  # no table yet (an older ledger), locked, broken
        return False
    finally:
        conn.close()
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if marks.get(str(path)) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return False
    return True


def summary(importer: str, files: int, seconds: float) -> dict[str, object]:
    """An import's `--json` summary when nothing was new (history.ImportResult.as_dict's
    fields, which tests/test_import_history.py holds this to)."""
    return {
        "importer": importer,
        "files": files,
        "files_read": 0,
        "lines": 0,
        "imported": 0,
        "updated": 0,
        "duplicates": 0,
        "live": 0,
        "unpriced": 0,
        "cost_usd": 0.0,
        "errors": [],
        "seconds": round(seconds, 3),
    }
