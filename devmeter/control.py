"""What the user told a running proxy: pause, lifted caps, routing mode.

The tray and the CLI write `control.json` beside the ledger; the proxy reads it
again whenever its modification time changes (checked at most twice a second), so
no socket or signal is needed and a restarted proxy starts from the same wishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devmeter.paths import make_private_dir, write_private

log = logging.getLogger(__name__)


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
    # Sessions stopped with `devmeter stop` or an ask's Stop (`answer`, which also adds
    # the answer): (session id, unix time); a later `allowed` entry lets it continue.
    stopped: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    # Answers to asks (devmeter/ask.py): (ask id, choice, unix time); the choice is
    # "continue", "continue:<USD>" (`devmeter allow --by`), "switch" or "stop".
    answers: tuple[tuple[str, str, float], ...] = field(default_factory=tuple)


def control_path(data_dir: Path) -> Path:
    return data_dir / "control.json"


ROUTING_MODES = ("off", "shadow", "on")


# What deleting control.json forgets, for the message that suggests it.
_RESETS = "pause, raised caps, stopped sessions and the routing mode"


class ControlError(ValueError):
    """control.json exists but is not control state; the message names the file and key."""


def load(path: Path) -> Control:
    """The control state in `path`; the defaults when there is none.

    Types are checked strictly: `"paused": "false"` (a string) is refused, naming the key,
    rather than read as true."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Control()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _reason(exc)
        raise ControlError(
            f"cannot read {path} ({reason}) — check that {path.parent} is a directory you can "
            "read, or set DEVMETER_HOME to one"
        ) from exc
    try:
        raw: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ControlError(
            f"{path} is not valid JSON ({_reason(exc)}) — delete it to reset {_RESETS}"
        ) from exc
    if not isinstance(raw, dict):
        raise ControlError(f"{path} must hold a JSON object — delete it to reset")
    return Control(
        paused=_paused(path, raw.get("paused", False)),
        routing_mode=_routing_mode(path, raw.get("routing_mode")),
        allowed=_entries(path, raw, "allowed", (str, str, float)),
        limits=_entries(path, raw, "limits", (str, str, float, float)),
        stopped=_entries(path, raw, "stopped", (str, float)),
        answers=_entries(path, raw, "answers", (str, str, float)),
    )


def _bad(path: Path, key: str, what: str) -> ControlError:
    return ControlError(
        f"{path} [{key}]: {what} — fix the value, or delete the file to reset {_RESETS}"
    )


def _paused(path: Path, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "paused", f"must be true or false, not {json.dumps(value)[:40]}")
    return value


def _routing_mode(path: Path, value: object) -> str | None:
    if value is not None and value not in ROUTING_MODES:
        raise _bad(
            path,
            "routing_mode",
            f'must be null, "off", "shadow" or "on", not {json.dumps(value)[:40]}',
        )
    return value  # type: ignore[return-value]


def _entries(path: Path, raw: dict[str, Any], key: str, shape: tuple[type, ...]) -> tuple[Any, ...]:
    """`raw[key]`: a list of entries, each a list with one value of each type in `shape`
    (`float`: any finite JSON number), as tuples."""
    value = raw.get(key, [])
    names = ", ".join("number" if kind is float else "text" for kind in shape)
    if not isinstance(value, list):
        raise _bad(path, key, f"must be a list of [{names}]")
    entries = []
    for n, entry in enumerate(value):
        if not isinstance(entry, list) or len(entry) != len(shape):
            raise _bad(path, f"{key}[{n}]", f"must be [{names}]")
        for item, kind in zip(entry, shape, strict=True):
            if not (_is_number(item) if kind is float else isinstance(item, kind)):
                raise _bad(path, f"{key}[{n}]", f"must be [{names}]")
        entries.append(
            tuple(float(i) if k is float else i for i, k in zip(entry, shape, strict=True))
        )
    return tuple(entries)


def _is_number(value: object) -> bool:
    """A finite JSON number (an integer too big for a float is not: float() would raise)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


# An answer list grows by one per ask: keep the newest, enough for every open ask.
MAX_ANSWERS = 200


def answer(path: Path, ask_id: str, choice: str, now: float | None = None) -> Control:
    """Record the user's answer to an ask (the tray, a notification button, the CLI)."""
    current = load(path)
    when = time.time() if now is None else now
    answers = (*current.answers, (ask_id, choice, when))[-MAX_ANSWERS:]
    session = _asked_session(ask_id)
    if choice == "stop" and session:
        # The same stop as `devmeter stop`: refused until `devmeter allow`, which says so.
        return update(path, answers=answers, stopped=(*current.stopped, (session, when)))
    return update(path, answers=answers)


def _asked_session(ask_id: str) -> str | None:
    """The session a session-scope ask is about (`session:<id>:<level>`), else None."""
    scope, _, rest = ask_id.partition(":")
    session = rest.rpartition(":")[0]
    return session if scope == "session" and session else None


def stopped_by_ask(state: Control) -> frozenset[tuple[str, float]]:
    """The `stopped` entries an ask's Stop wrote (`answer` records the answer and the
    stop with one time), as against `devmeter stop`'s: refused alike, but the refusal
    says which the user did."""
    return frozenset(
        (session, when)
        for ask_id, choice, when in state.answers
        if choice == "stop" and (session := _asked_session(ask_id))
    )


def save(path: Path, control: Control) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        make_private_dir(path.parent)
        write_private(tmp, json.dumps(asdict(control), indent=1))  # 0600, as all state
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ControlError(
            f"cannot write {path} ({exc.strerror or exc}) — make {path.parent} writable, or "
            "set DEVMETER_HOME to a writable directory"
        ) from exc


def update(path: Path, **changes: Any) -> Control:
    """Read, change and write the control state."""
    current = load(path)
    values = asdict(current) | changes
    for name in ("allowed", "limits", "stopped", "answers"):
        values[name] = tuple(tuple(a) for a in values[name])
    new = Control(**values)
    save(path, new)
    return new


class ControlWatcher:
    """Hands out the control state when the file changed since the last look.

    A broken file keeps the last good state, and says so once per change of the file
    (`on_problem`, by default a line on stderr)."""

    def __init__(
        self, path: Path, interval: float = 0.5, on_problem: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.interval = interval
        self.on_problem = on_problem or _print_problem
        self._checked = 0.0
        self._mtime: float | None = None

    def poll(self, now: float | None = None) -> Control | None:
        now = time.monotonic() if now is None else now
        if now - self._checked < self.interval:
            return None
        self._checked = now
        try:
            mtime: float | None = self.path.stat().st_mtime_ns / 1e9
        except OSError:
            mtime = None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            return load(self.path)
        except ValueError as exc:  # broken: keep the last good state
            self.on_problem(f"devmeter: {exc}; until then the proxy keeps its last good state")
            return None


def _print_problem(message: str) -> None:
    # The handler (diagnostics.log_to_stderr) never raises into the proxy's request hook,
    # even when stderr is gone or its disk is full.
    log.warning("%s", message)
