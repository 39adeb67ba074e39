"""`devmeter statusline`: one line of spend for Claude Code's `statusLine` command hook.

Claude Code runs the hook on every statusline refresh, piping a JSON object to it
(`session_id`, `cwd`, `workspace.current_dir`, `model.display_name`,
`cost.total_cost_usd`, ...) and showing the first line it prints. So this module does a
small read-only query of the ledger and nothing else: it imports neither mitmproxy nor
the rest of devmeter (not even platformdirs: see `data_dir`), and a missing, locked or
broken ledger gives a short line, never an error or a wait.

    devmeter · session $1.23 · today $4.56 · repo $2.10 · $3.40/h · ⛔ cap: session $20

Installed as `<python> -m devmeter.statusline`; `devmeter statusline` starts as lightly
(devmeter/entry.py answers it before the full CLI loads).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

# Neither typing nor pathlib is imported at run time (a quarter of this command's
# start-up between them): paths here are strings, and type checkers read this name as
# typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

PICO = 10**12
RED, AMBER, DIM, RESET = "\033[1;31m", "\033[33m", "\033[2m", "\033[0m"
BURN_WINDOW = 600.0  # seconds: the burn rate is over the last 10 minutes, as in `sessions`
BURN_MIN_AGE = 20.0
ALERT_RECENT = 3600.0  # an alert younger than this is shown
BUSY_MS = 150  # a ledger locked longer than this gets the short line


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """devmeter's data folder, as devmeter/paths.py finds it, without importing platformdirs
    (it costs more than the whole statusline) where its answer is a plain rule."""
    from pathlib import Path

    return Path(_data_dir_text(environ))


def _data_dir_text(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    home = env.get("DEVMETER_HOME")
    if home:
        return os.path.realpath(os.path.expanduser(home))
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Application Support", "devmeter")
    if sys.platform.startswith("linux"):
        xdg = env.get("XDG_DATA_HOME", "").strip()
        base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(base, "devmeter")
    from devmeter.paths import paths  # Windows and others: ask platformdirs

    return str(paths(dict(env)).data_dir)


def _money(pusd: int | None) -> str:
    usd = (pusd or 0) / PICO
    if usd >= 1000:
        return f"${usd / 1000:.1f}k"
    return f"${usd:.2f}"


def _day_start(now: float) -> float:
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def _repo(cwd: str | None) -> str | None:
    """The git top level of `cwd`, found as devmeter/gitinfo.py finds it (the first parent
    with a `.git`, directory or file); not imported from there, since it loads dataclasses
    and inspect, a third of this command's start-up."""
    if not cwd:
        return None
    path = os.path.abspath(cwd)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _ledger_uri(path: str) -> str:
    """A read-only SQLite URI for `path` (Path.as_uri would import urllib)."""
    text = os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{text}?mode=ro"


def _hook_input(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def render(stdin_text: str, ledger_path: str | Path | None = None, now: float | None = None) -> str:
    """The statusline for Claude Code's hook input; never raises."""
    try:
        return _render(_hook_input(stdin_text), ledger_path, now)
    except Exception as exc:  # never an error in the user's statusline
        return f"devmeter · unavailable ({type(exc).__name__})"


def _render(hook: dict[str, Any], ledger_path: str | Path | None, now: float | None) -> str:
    now = time.time() if now is None else now
    given = os.fspath(ledger_path) if ledger_path is not None else None
    path = given or os.path.join(_data_dir_text(), "ledger.sqlite")
    session = hook.get("session_id") if isinstance(hook.get("session_id"), str) else None
    workspace = hook.get("workspace") if isinstance(hook.get("workspace"), dict) else {}
    cwd = workspace.get("current_dir") or hook.get("cwd")
    cwd = cwd if isinstance(cwd, str) else None
    if not os.path.exists(path):
        return "devmeter · no ledger yet (run devmeter)"
    try:
        conn = sqlite3.connect(_ledger_uri(path), uri=True, timeout=BUSY_MS / 1000)
    except sqlite3.Error:
        return "devmeter · ledger unreadable"
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        line = _line(conn, path, session, _repo(cwd), now, _their_cost(hook))
    except sqlite3.OperationalError as exc:
        busy = "locked" in str(exc) or "busy" in str(exc)
        return "devmeter · ledger busy" if busy else "devmeter · ledger not ready"
    finally:
        conn.close()
    quota = _quota(hook)
    return f"{line} · {quota}" if quota else line


def _quota(hook: dict[str, Any]) -> str | None:
    """The tightest subscription window Claude Code knows (`rate_limits`: `five_hour`,
    `seven_day`, each `used_percentage` and `resets_at`), or None: API-key logins have
    none, and devmeter's ledger holds no quota of its own."""
    limits = hook.get("rate_limits")
    if not isinstance(limits, dict):
        return None
    windows = []
    for name, label in (("five_hour", "5h"), ("seven_day", "7d")):
        window = limits.get(name)
        used = window.get("used_percentage") if isinstance(window, dict) else None
        if isinstance(used, int | float) and not isinstance(used, bool):
            windows.append((float(used), label, window.get("resets_at")))
    if not windows:
        return None
    used, label, resets = max(windows, key=lambda w: w[0])
    text = f"{label} {used:.0f}%"
    if isinstance(resets, int | float) and not isinstance(resets, bool) and resets > 0:
        at = resets / 1000 if resets > 1e11 else resets  # seconds, or milliseconds
        shape = "%a %H:%M" if label == "7d" else "%H:%M"
        text += f" (resets {time.strftime(shape, time.localtime(at))})"
    if used >= 95:
        return f"{RED}{text}{RESET}"
    return f"{AMBER}{text}{RESET}" if used >= 80 else text


def _their_cost(hook: dict[str, Any]) -> float | None:
    """Claude Code's own figure for the session (`cost.total_cost_usd`), if it sent one."""
    cost = hook.get("cost")
    value = cost.get("total_cost_usd") if isinstance(cost, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _line(
    conn: sqlite3.Connection,
    path: str,
    session: str | None,
    repo: str | None,
    now: float,
    their_cost: float | None = None,
) -> str:
    parts = ["devmeter"]
    day = _day_start(now)
    if session:
        (spent, calls, first) = conn.execute(
            "SELECT sum(cost_pusd), count(*), min(ts) FROM calls WHERE session = ?", (session,)
        ).fetchone()
        if calls:
            parts.append(f"session {_money(spent)}")
        elif their_cost is not None:  # not through the proxy (yet): say whose figure it is
            parts.append(f"session not metered (Claude Code: ${their_cost:.2f})")
        else:
            parts.append("session not metered")
        if calls:
            rate = _burn_rate(conn, session, first, now)
            if rate is not None:
                parts.append(f"${rate / PICO:.2f}/h")
    # The rollup's quarter hours: every time zone's day starts on one.
    bucket = int(day // 900)
    (today,) = conn.execute(
        "SELECT sum(cost_pusd) FROM rollup WHERE bucket >= ?", (bucket,)
    ).fetchone()
    parts.insert(2 if session else 1, f"today {_money(today)}")
    if repo:
        (repo_today,) = conn.execute(
            "SELECT sum(cost_pusd) FROM rollup WHERE bucket >= ? AND repo = ?", (bucket, repo)
        ).fetchone()
        parts.insert(3 if session else 2, f"{os.path.basename(repo)} {_money(repo_today)}")
    alert = _alert(conn, path, session, now)
    line = " · ".join(parts)
    return f"{line} · {alert}" if alert else line


def _burn_rate(conn: sqlite3.Connection, session: str, first: float, now: float) -> float | None:
    """pico-USD per hour over the last 10 minutes (or the session's age when younger)."""
    since = max(now - BURN_WINDOW, first)
    span = max(now - since, BURN_MIN_AGE)
    (recent,) = conn.execute(
        "SELECT sum(cost_pusd) FROM calls WHERE session = ? AND ts >= ?", (session, since)
    ).fetchone()
    if not recent:
        return None
    return recent * 3600 / span


def _alert(conn: sqlite3.Connection, path: str, session: str | None, now: float) -> str | None:
    """The alert that matters most now: paused or stopped, then a cap, then any recent one."""
    try:
        with open(os.path.join(os.path.dirname(path), "control.json"), encoding="utf-8") as f:
            control = json.loads(f.read())
    except (OSError, ValueError):
        control = {}
    if isinstance(control, dict):
        if control.get("paused"):
            return f"{RED}⏸ paused (devmeter resume){RESET}"
        stopped = {s[0] for s in control.get("stopped", []) if isinstance(s, list) and s}
        allowed = {a[1] for a in control.get("allowed", []) if isinstance(a, list) and len(a) > 1}
        if session and session in stopped and session not in allowed:
            return f"{RED}⛔ stopped (devmeter allow {session[:8]}){RESET}"
    args: tuple[Any, ...] = (now - ALERT_RECENT,)
    where = "ts >= ?"
    if session:
        where += " AND (session IS NULL OR session = ?)"
        args += (session,)
    row = conn.execute(
        f"SELECT kind, message FROM alerts WHERE {where} "
        "ORDER BY kind = 'blocked' DESC, ts DESC LIMIT 1",
        args,
    ).fetchone()
    if row is None:
        return None
    kind, message = row
    text = str(message).removeprefix("devmeter: ").split("\n")[0]
    if len(text) > 60:
        text = text[:59] + "…"
    colour = RED if kind == "blocked" else AMBER
    return f"{colour}{'⛔' if kind == 'blocked' else '⚠'} {text}{RESET}"


# --- installing into Claude Code's settings ------------------------------------------------


class SettingsError(Exception):
    """Claude Code's settings file cannot be changed safely; the message says why."""


MARK = "devmeter.statusline"  # how an installed command is recognised


def settings_path() -> Path:
    from pathlib import Path

    config = os.environ.get("CLAUDE_CONFIG_DIR")
    base = Path(config).expanduser() if config else Path.home() / ".claude"
    return base / "settings.json"


def command() -> str:
    import shlex

    return f"{shlex.quote(sys.executable)} -m {MARK}"


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except ValueError as exc:
        raise SettingsError(
            f"{path} is not valid JSON ({exc}); fix it, then run devmeter statusline --install "
            "again"
        ) from None
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} does not hold a JSON object; fix it first")
    return data


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".devmeter-backup")


def _write(path: Path, data: dict[str, Any], *, keep_backup: bool = True) -> Path | None:
    """Write `data`, keeping the old file as `settings.json.devmeter-backup` (unless
    told not to: uninstalling must not replace the copy from before install)."""
    import shutil

    backup = None
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_backup and path.exists():
        backup = _backup_path(path)
        shutil.copy2(path, backup)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return backup


def install(path: Path) -> str:
    """Add the statusline to Claude Code's settings. An existing statusline of another
    tool is kept: devmeter's line is printed after its output (chained)."""
    data = _read(path)
    current = data.get("statusLine")
    existing = current.get("command") if isinstance(current, dict) else None
    if isinstance(existing, str) and MARK in existing:
        return f"devmeter's statusline is already in {path}"
    entry: dict[str, Any] = {"type": "command", "command": command(), "padding": 0}
    note = ""
    if isinstance(existing, str) and existing.strip():
        import shlex

        # Chained: the other tool's line, then devmeter's, on one line.
        entry["command"] = f"{command()} --chain {shlex.quote(existing)}"
        entry["devmeterPrevious"] = current
        note = f"; your statusline ({existing}) is kept and shown before devmeter's"
    data["statusLine"] = entry
    backup = _write(path, data)
    saved = f" (backup: {backup})" if backup else ""
    return f"added devmeter's statusline to {path}{saved}{note}"


def uninstall(path: Path) -> str:
    """Remove devmeter's statusline, putting back the one it was chained to."""
    data = _read(path)
    current = data.get("statusLine")
    existing = current.get("command") if isinstance(current, dict) else None
    if not (isinstance(existing, str) and MARK in existing):
        return f"devmeter's statusline is not in {path}: nothing to remove"
    previous = current.get("devmeterPrevious") if isinstance(current, dict) else None
    if isinstance(previous, dict):
        data["statusLine"] = previous
    else:
        del data["statusLine"]
    # No backup of this file: it holds devmeter's command, which `uv tool uninstall` is
    # about to remove, and copying it would overwrite the user's copy from before install.
    _write(path, data, keep_backup=False)
    restored = " and put your previous statusline back" if isinstance(previous, dict) else ""
    backup = _backup_path(path)
    if _same_settings(backup, data):
        backup.unlink()
        restored += " (as it was before install: its backup removed)"
    return f"removed devmeter's statusline from {path}{restored}"


def _same_settings(path: Path, data: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")) == data)
    except (OSError, ValueError):
        return False


def _chained(previous: str, stdin_text: str) -> str:
    """The first line a chained statusline command prints for the same input."""
    import subprocess

    try:
        done = subprocess.run(
            previous, shell=True, input=stdin_text, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.split("\n", 1)[0].rstrip()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = sys.stdin.read() if not sys.stdin.isatty() else ""
    line = render(text)
    if len(args) == 2 and args[0] == "--chain":
        before = _chained(args[1], text)
        line = f"{before} │ {line}" if before else line
    sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
