"""Live config reload: an edit to config.toml reaches the running proxy within a second.

The proxy looks at the file's modification time, size and inode twice a second, in a
worker thread, off the request path. A change is read and validated whole, in the worker
thread too, and only a config that passed as a whole is swapped in, on the event loop,
between requests: never half of an edit. A broken edit keeps the last good config and
is reported once: one stderr line naming file, line and key, and `config_error` in
`config_status.json` beside control.json, where the tray and `devmeter doctor` read it.

Caps, thresholds (budget and quota alert levels), runaway settings, routing rules,
prices and upstreams apply to the next request; spend already counted is kept.
`[proxy] listen` needs a restart (the socket is bound), and the proxy says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from devmeter.config import Config, ConfigError, load

log = logging.getLogger(__name__)

STATUS_FILE = "config_status.json"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class FileStamp:
    """What tells one version of a file from the next without reading it."""

    mtime_ns: int
    size: int
    inode: int


def stamp(path: Path) -> FileStamp | None:
    """The file's stamp; None when it does not exist (or cannot be looked at)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


def write_status(data_dir: Path, config_file: Path, error: str | None) -> None:
    """`config_status.json`: whether the running proxy's config loaded, and if not, why.
    Best effort: a status file that cannot be written must not stop the proxy."""
    status = {
        "pid": os.getpid(),
        "config_file": str(config_file),
        "checked_at": time.time(),
        "config_error": error,
    }
    path = status_path(data_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(status, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    except OSError as exc:
        log.warning("devmeter: could not write %s: %s", path, exc)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """What the running proxy last said about its config; None if it said nothing."""
    try:
        raw = json.loads(status_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def live_config_error(data_dir: Path) -> str | None:
    """The edit the running proxy refused, as it worded it (file, line, key, problem);
    None when it took the file, or no live proxy said anything (a status file left by a
    proxy that is gone speaks for nothing: its pid is checked)."""
    status = read_status(data_dir)
    if status is None or not status.get("config_error"):
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return None
    return str(status["config_error"])


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except Exception:
        return False


def clear_status(data_dir: Path) -> None:
    with contextlib.suppress(OSError):
        status_path(data_dir).unlink(missing_ok=True)


def load_with_pins(
    path: Path,
    pinned_upstreams: Mapping[str, str],
    pinned_listen: tuple[str, int] | None = None,
) -> Config:
    """The file's config, whole and validated, with `--upstream` and `--listen` flags
    still winning (a proxy started with `--listen` is restarted with it too, so the
    file's `[proxy] listen` does not concern it)."""
    config = load(path)
    if pinned_upstreams:
        config = replace(config, upstreams={**config.upstreams, **pinned_upstreams})
    if pinned_listen is not None:
        config = replace(config, listen=pinned_listen)
    return config


# Reads the file and returns its config, with whatever else applying it needs read from
# disk, or raises ConfigError. Runs in a worker thread.
Loader = Callable[[], tuple[Config, Any]]
# Applies a whole, validated config on the event loop: (old, new, what the loader read)
# -> notes for the user.
Apply = Callable[[Config, Config, Any], list[str]]


class ConfigReloader:
    """Watches the config file and swaps in each good version of it."""

    def __init__(
        self,
        path: Path,
        data_dir: Path,
        current: Config,
        loader: Loader,
        apply: Apply,
        interval: float = POLL_SECONDS,
    ) -> None:
        self.path = path
        self.data_dir = data_dir
        self.current = current
        self._loader = loader
        self._apply = apply
        self.interval = interval
        self._stamp = stamp(path)
        self._reported: str | None = None

    def start(self) -> None:
        write_status(self.data_dir, self.path, None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check(loop)
            except Exception as exc:  # a reload bug must never stop the proxy
                log.warning("devmeter: config reload failed: %s: %s", type(exc).__name__, exc)

    async def check(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Reload if the file changed; True when a new config was applied."""
        # Even the stat runs off the event loop: a config on a hung network mount must
        # not stall every client.
        seen = await loop.run_in_executor(None, stamp, self.path)
        if seen == self._stamp:
            return False
        try:
            new, extra = await loop.run_in_executor(None, self._loader)
        except ConfigError as exc:
            if await loop.run_in_executor(None, stamp, self.path) != seen:
                return False  # caught mid-write: the next look reads the finished file
            self._stamp = seen
            self._report(str(exc))
            return False
        self._stamp = seen
        notes = self._apply(self.current, new, extra)
        self.current = new
        self._reported = None
        write_status(self.data_dir, self.path, None)
        what = "defaults (the file is gone)" if seen is None else str(self.path)
        log.info("devmeter: config reloaded from %s%s", what, "".join(f"; {n}" for n in notes))
        return True

    def _report(self, error: str) -> None:
        # The line first, the status file after: whoever sees the status can find the line.
        if error != self._reported:
            self._reported = error
            log.warning("devmeter: bad config, keeping the last good one: %s", error)
        write_status(self.data_dir, self.path, error)
