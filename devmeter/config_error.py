"""The one error type a bad config file raises, so every message names file, key and line."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A config value that devmeter cannot use.

    Section parsers raise it with the dotted `key` and what is wrong; the loader
    fills in `path` and `line` so the user sees exactly where to fix it.
    """

    def __init__(
        self, key: str, message: str, path: Path | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.path = path
        self.line = line

    def located(self, path: Path, line: int | None) -> ConfigError:
        return ConfigError(self.key, self.message, path, line)

    def __str__(self) -> str:
        where = str(self.path) if self.path else "config"
        if self.line:
            where += f", line {self.line}"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}{key}: {self.message}"
