"""What the user told a running proxy: pause, lifted caps, routing mode.

The tray and the CLI write `control.json` beside the ledger; the proxy reads it
again whenever its modification time changes (checked at most twice a second), so
no socket or signal is needed and a restarted proxy starts from the same wishes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devmeter.paths import make_private_dir, write_private


@dataclass(frozen=True)
class Control:
    paused: bool = False
    routing_mode: str | None = None  # None: the config file's mode
    # Caps lifted with `devmeter allow` or the tray: (scope, key, unix time it was lifted).
    # Each raises the cap by a step, or to the limit `limits` holds for the same entry.
    allowed: tuple[tuple[str, str, float], ...] = field(default_factory=tuple)
    # The cap `devmeter allow` raised an entry of `allowed` to: (scope, key, USD, time),
    # the time being that entry's, so the proxy and the CLI agree on the new limit.
    limits: tuple[tuple[str, str, float, float], ...] = field(default_factory=tuple)
    # Sessions stopped with `devmeter stop`: (session id, unix time); a later `allowed`
    # entry for the session lets it continue.
    stopped: tuple[tuple[str, float], ...] = field(default_factory=tuple)


def control_path(data_dir: Path) -> Path:
    return data_dir / "control.json"


def load(path: Path) -> Control:
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Control()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid control state ({exc}); delete it to reset") from exc
    return Control(
        paused=bool(raw.get("paused", False)),
        routing_mode=raw.get("routing_mode"),
        allowed=tuple((str(s), str(k), float(t)) for s, k, t in raw.get("allowed", [])),
        limits=tuple((str(s), str(k), float(v), float(t)) for s, k, v, t in raw.get("limits", [])),
        stopped=tuple((str(k), float(t)) for k, t in raw.get("stopped", [])),
    )


def save(path: Path, control: Control) -> None:
    make_private_dir(path.parent)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    write_private(tmp, json.dumps(asdict(control), indent=1))  # 0600, as all state
    tmp.replace(path)


def update(path: Path, **changes: Any) -> Control:
    """Read, change and write the control state."""
    current = load(path)
    values = asdict(current) | changes
    for name in ("allowed", "limits", "stopped"):
        values[name] = tuple(tuple(a) for a in values[name])
    new = Control(**values)
    save(path, new)
    return new


class ControlWatcher:
    """Hands out the control state when the file changed since the last look."""

    def __init__(self, path: Path, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self._checked = 0.0
        self._mtime: float | None = None

    def poll(self, now: float | None = None) -> Control | None:
        now = time.monotonic() if now is None else now
        if now - self._checked < self.interval:
            return None
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            return load(self.path)
        except ValueError:
            return None  # half-written or broken: keep the last good state
