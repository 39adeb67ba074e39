"""The `devmeter` command: one thin function per subcommand over the library."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from devmeter import __version__, control, reports, shellenv
from devmeter.config import Config, ConfigError, load, parse_listen, parse_upstream_arg
from devmeter.diagnostics import log_to_stderr
from devmeter.ledger import connect_readonly
from devmeter.paths import Paths, paths, read_proxy_state
from devmeter.safe_text import safe_text
from devmeter.sessions import LIVE_SECONDS

# Words a new user types for a command devmeter does not have, with what does it instead
# (`devmeter stop ID` exists, so `devmeter start` is the first thing tried).
_NOT_COMMANDS = {
    "start": "`devmeter` with no command starts it (the tray, or headless without a desktop)",
    "status": "`devmeter doctor` says whether it runs and what to fix; `devmeter sessions` "
    "shows what it meters",
}


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr()  # diagnostics of the modules a command runs, one line each
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in _NOT_COMMANDS:
        print(
            f"devmeter: there is no `{words[0]}` command: {_NOT_COMMANDS[words[0]]}.",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(words)
    where = paths()
    try:
        # doctor, setup and uninstall read the config themselves, and say what is wrong.
        needs_config = getattr(args, "needs_config", True)
        config = load_or_default(where, args.func) if needs_config else None
        return int(args.func(args, config, where) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return report_user_error(exc, where)


def report_user_error(exc: Exception, where: Paths) -> int:
    """Say an error a user can fix in one line and give its exit status; a bug (or any
    error under DEVMETER_DEBUG) is raised again with its traceback."""
    problem, status = user_error(exc, where)
    if problem is None or os.environ.get("DEVMETER_DEBUG"):
        raise exc
    print(f"devmeter: {problem}", file=sys.stderr)
    return status


def user_error(exc: BaseException, where: Paths) -> tuple[str | None, int]:
    """One line for an error a user can fix (what is wrong, where, and what to do), with
    the exit status; (None, 1) for a bug, which keeps its traceback."""
    if isinstance(exc, ConfigError):
        return safe_text(f"bad config: {exc}", 2000), 2
    from devmeter.guard_control import TargetError

    if isinstance(exc, reports.ReportError | control.ControlError | TargetError):
        return safe_text(str(exc).removeprefix("devmeter: "), 2000), 2
    if isinstance(exc, sqlite3.OperationalError):
        # "no such column" and the like are devmeter's bugs: they keep their traceback.
        reason = str(exc)
        if "locked" in reason or "busy" in reason:
            fix = "another program holds it; try again in a moment"
        elif "unable to open" in reason or "readonly" in reason or "I/O" in reason:
            fix = f"check that {where.data_dir} exists, is yours and its disk is not full"
        else:
            return None, 1
        return safe_text(f"cannot read the ledger {where.ledger} ({reason}) — {fix}", 2000), 1
    if isinstance(exc, sqlite3.DatabaseError):
        return (
            safe_text(
                f"cannot read the ledger {where.ledger} ({exc}) — it is damaged or not a "
                f"devmeter ledger; move it aside (mv {where.ledger} {where.ledger}.bad) and "
                "devmeter starts a new one",
                2000,
            ),
            1,
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        # A file or directory devmeter could not use (a socket error names none: it is
        # not this kind of problem, and keeps its own handling).
        return (
            safe_text(
                f"cannot use {exc.filename} ({exc.strerror or exc}) — check that it exists "
                "and is writable, or set DEVMETER_HOME to a directory that is",
                2000,
            ),
            1,
        )
    if isinstance(exc, RecursionError):
        return "input nested too deeply to read — check the file devmeter was reading", 2
    return None, 1


SINCE_HELP = "today, yesterday, 1w, 7d, 2h, 30m, or a date such as 2026-11-01"


def load_or_default(where: Paths, command: Callable[..., object]) -> Config:
    """The config file's settings. Commands that read none of them still run when the
    file has a mistake (a running proxy keeps its last good config meanwhile): finding
    the file, pausing, stopping a session must not wait for the fix. (`allow` reads the
    caps it raises, so it waits.)"""
    try:
        return load(where.config_file)
    except ConfigError as exc:
        if command not in (cmd_config, cmd_pause, cmd_stop, cmd_alerts, cmd_sessions):
            raise
        print(f"devmeter: bad config (ignored by this command): {exc}", file=sys.stderr)
        return Config(path=where.config_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devmeter",
        description="Meter every LLM API call your dev tools make. With no command: the tray app.",
    )
    parser.add_argument("--version", action="version", version=f"devmeter {__version__}")
    parser.add_argument(
        "--headless",
        action="store_true",
        help="with no command: no tray icon, the proxy and a live line of spend in the terminal",
    )
    parser.add_argument(
        "--listen",
        dest="tray_listen",
        metavar="HOST:PORT",
        help="with no command: where the proxy the tray starts listens (default 127.0.0.1:8788)",
    )
    parser.set_defaults(func=cmd_tray)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("proxy", help="run the metering proxy in the foreground")
    p.add_argument("--listen", help="HOST:PORT on loopback (default 127.0.0.1:8788)")
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="send a provider host's traffic to another base URL (repeatable)",
    )
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("env", help="print the exports that route your tools through devmeter")
    p.add_argument("--shell", choices=shellenv.SHELLS, default=_default_shell())
    p.add_argument(
        "--unset",
        action="store_true",
        help='print what removes those variables again: eval "$(devmeter env --unset)"',
    )
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("run", help="run one command through devmeter: devmeter run -- CMD ARGS")
    p.add_argument("--session", help="name this command's session explicitly")
    p.add_argument("--project", help="attribute this command's calls to this project/repo")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="tokens and cost from the ledger")
    p.add_argument("--by", choices=reports.GROUPINGS, default="day")
    p.add_argument("--since", help=SINCE_HELP)
    p.add_argument(
        "--until", help="calls before this time only (same forms as --since; a date: its start)"
    )
    p.add_argument(
        "--limit", type=int, help="the last N calls (--by request), else the N costliest rows"
    )
    p.add_argument(
        "--savings", action="store_true", help="what model routing saved, and shadow mode would"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON rows, costs as numbers in USD")
    fmt.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sessions", help="live and recent sessions, with their burn rate")
    p.add_argument("--since", help=f"{SINCE_HELP} (default: the last 24 hours)")
    p.add_argument(
        "--live",
        action="store_true",
        help=f"only sessions with a call in the last {int(LIVE_SECONDS // 60)} min",
    )
    p.add_argument("--json", action="store_true", help="JSON rows, costs as numbers in USD")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("import", help="import usage a tool reports itself")
    sources = p.add_subparsers(title="sources", metavar="SOURCE", required=True)
    q = sources.add_parser(
        "cursor-csv", help="Cursor's usage export (cursor.com: Dashboard, Usage, Export CSV)"
    )
    q.add_argument("file", type=Path, metavar="FILE")
    q.add_argument(
        "--dry-run", action="store_true", help="say what would be imported; write nothing"
    )
    q.add_argument("--json", action="store_true", help="the summary as JSON")
    q.set_defaults(func=cmd_import_cursor_csv)
    for name, home, helptext in (
        ("claude-code", "CLAUDE_CONFIG_DIR or ~/.claude", "Claude Code's transcripts"),
        ("codex", "CODEX_HOME or ~/.codex", "Codex CLI's session rollouts"),
        ("gemini-cli", "~/.gemini", "Gemini CLI's recorded chats"),
    ):
        q = sources.add_parser(name, help=f"{helptext}; only what is new since the last import")
        q.add_argument(
            "--path", type=Path, metavar="DIR", help=f"another folder to read (default: {home})"
        )
        q.add_argument("--json", action="store_true", help="the summary as JSON")
        q.set_defaults(func=cmd_import_history, importer=name)

    p = sub.add_parser(
        "statusline",
        help="one line of spend for Claude Code's statusLine hook (reads its JSON on stdin)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--install", action="store_true", help="add it to Claude Code's settings.json"
    )
    group.add_argument(
        "--uninstall", action="store_true", help="remove it from Claude Code's settings.json"
    )
    p.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="the settings file (default: $CLAUDE_CONFIG_DIR or ~/.claude, settings.json)",
    )
    p.set_defaults(func=cmd_statusline)

    p = sub.add_parser("dashboard", help="the ledger as a local web page with charts")
    p.add_argument(
        "--no-open",
        action="store_true",
        help="print the page's URL (token included) as the first line, do not open a browser",
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser(
        "quota", help="subscription quota windows and rate limits: use, reset, pace, share"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quota)

    p = sub.add_parser("alerts", help="budget, burn-rate and loop alerts the proxy raised")
    p.add_argument("--since", help=SINCE_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("findings", help="secrets found in what agents sent (masked)")
    p.add_argument("--since", help=SINCE_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_findings)

    p = sub.add_parser(
        "allow",
        help="raise a hard cap a step (a session's, a repo's, today's or this month's), "
        "or let a stopped session continue",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "session", nargs="?", help="the session id, or a prefix of it (8 characters usually do)"
    )
    target.add_argument("--repo", help="raise the repo cap for this repo (its path)")
    target.add_argument("--day", action="store_true", help="raise today's cap")
    target.add_argument("--month", action="store_true", help="raise this month's cap")
    p.add_argument(
        "--by",
        metavar="USD",
        help="raise the cap by this many dollars (default: to the scope's next notify_usd "
        "level above it, else by $20)",
    )
    p.set_defaults(func=cmd_allow)

    p = sub.add_parser(
        "stop", help="refuse a session's requests until `devmeter allow` lets it continue"
    )
    p.add_argument(
        "session",
        nargs="?",
        help="the session id, or a prefix of it (without one: how to stop devmeter itself)",
    )
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("pause", help="refuse all metered traffic until `devmeter resume`")
    p.set_defaults(func=cmd_pause, paused=True)
    p = sub.add_parser("resume", help="let metered traffic through again")
    p.set_defaults(func=cmd_pause, paused=False)

    p = sub.add_parser("routing", help="show or set model routing: off, shadow or on")
    p.add_argument("mode", nargs="?", choices=("off", "shadow", "on", "config"))
    p.set_defaults(func=cmd_routing)

    p = sub.add_parser("config", help="show the config file's path, or create it")
    p.add_argument("--init", action="store_true", help="write a commented template if missing")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("doctor", help="check that metering works here, and say what to fix")
    p.add_argument("--json", action="store_true", help="a list of {name, status, detail, fix}")
    p.add_argument("--notify", action="store_true", help="also send a test notification")
    p.set_defaults(func=cmd_doctor, needs_config=False)

    p = sub.add_parser(
        "setup", help="route new shells through devmeter and start it at login (undo: uninstall)"
    )
    p.add_argument(
        "--shell",
        action="append",
        choices=shellenv.SHELLS,
        dest="shells",
        help="hook this shell (repeatable; default: your login shell and any with a startup file)",
    )
    p.add_argument("--no-autostart", action="store_true", help="do not start devmeter at login")
    p.set_defaults(func=cmd_setup, needs_config=False)

    p = sub.add_parser("uninstall", help="undo everything `devmeter setup` changed")
    p.set_defaults(func=cmd_uninstall, needs_config=False)

    p = sub.add_parser("help", help="this list of commands (`devmeter COMMAND --help`: one)")
    p.set_defaults(func=cmd_help, needs_config=False)
    return parser


def cmd_help(args: argparse.Namespace, config: Config | None, where: Paths) -> int:
    build_parser().print_help()
    return 0


def _default_shell() -> str:
    if os.name == "nt":
        return "powershell"
    shell = Path(os.environ.get("SHELL", "bash")).name
    return shell if shell in shellenv.SHELLS else "bash"


def cmd_proxy(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from dataclasses import replace

    from devmeter.proxy.server import run

    listen = parse_listen(args.listen, "--listen") if args.listen else None
    if listen is not None:
        config = replace(config, listen=listen)
    pinned = dict(parse_upstream_arg(arg) for arg in args.upstream or ())
    if pinned:
        config = replace(config, upstreams={**config.upstreams, **pinned})
    return run(config, where, pinned, listen)


def proxy_address(config: Config, where: Paths) -> tuple[str, int, bool]:
    """The running proxy's address, else the configured one; and whether one is running."""
    state = read_proxy_state(where)
    if state and _pid_alive(state.get("pid")):
        return str(state["host"]), int(state["port"]), True  # type: ignore[call-overload]
    host, port = config.listen
    return host, port, False


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_env(args: argparse.Namespace, config: Config, where: Paths) -> int:
    host, port, running = proxy_address(config, where)
    if args.unset:
        names = list(shellenv.proxy_environment(where, host, port))
        sys.stdout.write(shellenv.render_unset(names, args.shell))
        return 0
    if not running:
        print(
            f"# devmeter: no proxy is running; start devmeter with `devmeter` (the tray, or a "
            f"status line without a desktop; its proxy will listen on {host}:{port}).",
            file=sys.stderr,
        )
    if not where.ca_cert.exists():
        print(
            f"# devmeter: no CA yet at {where.ca_cert}; devmeter's proxy creates it when it "
            "first starts.",
            file=sys.stderr,
        )
    sys.stdout.write(shellenv.render(shellenv.proxy_environment(where, host, port), args.shell))
    return 0


def cmd_run(args: argparse.Namespace, config: Config, where: Paths) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("devmeter: nothing to run; use `devmeter run -- CMD ARGS...`", file=sys.stderr)
        return 2
    host, port, running = proxy_address(config, where)
    child_proxy = None
    if not running:
        child_proxy, host, port = _start_proxy_for_run(where)
    env = dict(os.environ)
    env.update(shellenv.proxy_environment(where, host, port))
    if args.session:
        env["DEVMETER_SESSION"] = args.session
    if args.project:
        env["DEVMETER_PROJECT"] = args.project
    try:
        return subprocess.call(command, env=env)
    except FileNotFoundError:
        print(f"devmeter: command not found: {command[0]}", file=sys.stderr)
        return 127
    finally:
        if child_proxy is not None:
            child_proxy.terminate()
            child_proxy.wait(10)


def _start_proxy_for_run(where: Paths) -> tuple[subprocess.Popen[bytes], str, int]:
    """No proxy is running: start one for the length of this command."""
    where.proxy_state.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "devmeter", "proxy"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = read_proxy_state(where)
        if state and state.get("pid") == proc.pid:
            return proc, str(state["host"]), int(state["port"])  # type: ignore[call-overload]
        if proc.poll() is not None:
            raise SystemExit("devmeter: the proxy failed to start (see above)")
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit("devmeter: the proxy did not start within 20 seconds")


def _nothing_metered_yet(config: Config, where: Paths) -> str:
    """An empty report's next step: start devmeter only when it is not running (a new user
    who just started it was told to start a proxy, which then found its port taken)."""
    host, port, running = proxy_address(config, where)
    route = (
        "route your tools through it: a new shell (once `devmeter setup` hooked it), "
        '`eval "$(devmeter env)"` in this one, or `devmeter run -- CMD`'
    )
    if running:
        return (
            f"No calls metered yet (ledger: {where.ledger}). devmeter's proxy runs on "
            f"{host}:{port}; {route}. `devmeter doctor` checks this shell."
        )
    return (
        f"No calls metered yet (ledger: {where.ledger}). Start devmeter: `devmeter` (the tray, "
        f"or headless without a desktop) or `devmeter proxy`; then {route}."
    )


def cmd_report(args: argparse.Namespace, config: Config, where: Paths) -> int:
    since = reports.parse_since(args.since) if args.since else None
    until = reports.parse_since(args.until, flag="--until") if args.until else None
    if args.limit is not None and args.limit < 1:
        raise reports.ReportError(
            f"--limit {args.limit} shows nothing — give a number of rows, 1 or more"
        )
    fields = (
        reports.SAVINGS_FIELDS
        if args.savings
        else reports.REQUEST_FIELDS
        if args.by == "request"
        else reports.GROUP_FIELDS
    )
    conn = connect_readonly(where.ledger)
    if conn is None or not reports.has_calls(conn):
        # Machine-readable output stays parseable: the explanation goes to stderr.
        print(
            _nothing_metered_yet(config, where),
            file=sys.stderr if args.json or args.csv else sys.stdout,
        )
        if args.json:
            sys.stdout.write("[]\n")
        elif args.csv:
            sys.stdout.write(reports.to_csv([], fields))
        return 0
    if args.savings:
        saved = reports.savings(conn, since, until)[: args.limit]
        if args.json:
            sys.stdout.write(reports.to_json(saved))
        elif args.csv:
            sys.stdout.write(reports.to_csv(saved, fields))
        else:
            sys.stdout.write(reports.savings_table(saved, _terminal_width()))
        return 0
    rows = reports.query(conn, args.by, since, args.limit, until)
    if args.json:
        sys.stdout.write(reports.to_json(rows))
    elif args.csv:
        sys.stdout.write(reports.to_csv(rows, fields))
    elif not rows:
        print(f"No calls since {safe_text(args.since, 60)}.")
    else:
        sys.stdout.write(reports.to_table(rows, args.by, args.limit, _terminal_width()))
    return 0


def cmd_sessions(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter import sessions

    since = reports.parse_since(args.since) if args.since else None
    conn = connect_readonly(where.ledger)
    found = sessions.query_sessions(conn, since=since, live_only=args.live) if conn else []
    if args.json:
        sys.stdout.write(sessions.to_json(found))
    else:
        sys.stdout.write(sessions.to_table(found, width=_terminal_width()))
    return 0


def _terminal_width() -> int | None:
    """A terminal's width, to fit tables to it; None for a pipe or a file (plain text)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def cmd_import_cursor_csv(args: argparse.Namespace, config: Config, where: Paths) -> int:
    import json

    from devmeter.importers import CursorCSVError, import_cursor_csv

    try:
        summary = import_cursor_csv(where.ledger, args.file, config.prices, dry_run=args.dry_run)
    except CursorCSVError as exc:
        print(f"devmeter: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(summary.as_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(summary.describe())
    return 1 if summary.bad else 0  # bad lines were skipped: the exit status says so too


def cmd_import_history(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter.importers import history

    return history.run_command(args.importer, where.ledger, args.path, config.prices, args.json)


def cmd_statusline(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter import statusline

    if args.install or args.uninstall:
        settings = args.settings or statusline.settings_path()
        try:
            message = (
                statusline.install(settings) if args.install else statusline.uninstall(settings)
            )
        except statusline.SettingsError as exc:
            print(f"devmeter: {exc}", file=sys.stderr)
            return 2
        print(message)
        return 0
    hook = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()  # no waiting
    sys.stdout.write(statusline.render(hook, where.ledger) + "\n")
    return 0


def _can_open_browser(environ: Mapping[str, str], platform: str) -> bool:
    """Whether to open a browser here. Without a display (SSH, a container) Python's
    webbrowser runs a console browser such as lynx in the foreground, which takes the
    terminal and cannot draw the dashboard's charts; a BROWSER the user set is theirs."""
    if environ.get("BROWSER") or platform == "darwin" or platform.startswith(("win", "cyg")):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def cmd_dashboard(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter.dashboard.server import Dashboard

    try:
        server = Dashboard(where, config, args.port)
    except OSError as exc:
        print(
            f"devmeter: cannot serve the dashboard on 127.0.0.1:{args.port} ({exc.strerror}) — "
            "choose another --port, or leave it out for any free one",
            file=sys.stderr,
        )
        return 75
    print(server.url, flush=True)
    if not args.no_open and not _can_open_browser(os.environ, sys.platform):
        port = server.server_address[1]
        print(
            "devmeter: no display here, so no browser was opened: open the URL above in a "
            f"browser on this machine, or from yours over SSH with `ssh -L {port}:127.0.0.1:"
            f"{port} THIS-HOST`; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
    elif not args.no_open:
        import webbrowser

        webbrowser.open(server.url)
        print("devmeter: dashboard open in your browser; Ctrl-C stops it", file=sys.stderr)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_alerts(args: argparse.Namespace, config: Config, where: Paths) -> int:
    return _ledger_list(args, where, reports.alerts, reports.alerts_table, "No alerts.")


def cmd_quota(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter import quota_report

    conn = connect_readonly(where.ledger)
    rows = quota_report.quota_rows(conn, config.section("accounts"), time.time()) if conn else []
    if args.json:
        out = quota_report.to_json(rows)
    else:
        out = quota_report.to_table(rows, _terminal_width())
    sys.stdout.write(out)
    return 0


def cmd_findings(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter.secrets import report

    return _ledger_list(args, where, report.findings, report.findings_table, "No secrets found.")


def _ledger_list(
    args: argparse.Namespace,
    where: Paths,
    query: Callable[[sqlite3.Connection, float | None], list[dict[str, Any]]],
    table: Callable[[Sequence[dict[str, Any]], int | None], str],
    nothing: str,
) -> int:
    """`devmeter alerts` and `devmeter findings`: the ledger's rows since `--since`, as
    JSON (`--json`) or a table; `nothing` when there are none."""
    since = reports.parse_since(args.since) if args.since else None
    conn = connect_readonly(where.ledger)
    rows = query(conn, since) if conn is not None else []
    if args.json:
        sys.stdout.write(reports.to_json(rows))
    elif not rows:
        print(nothing if conn is not None else f"No ledger yet at {where.ledger}.")
    else:
        sys.stdout.write(table(rows, _terminal_width()))
    return 0


def cmd_allow(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter import guard_control

    try:
        by = guard_control.parse_usd_arg(args.by) if args.by is not None else None
        if args.session:
            scope, key = "session", guard_control.resolve_session(where, args.session)
        elif args.repo:
            scope, key = "repo", str(Path(args.repo).expanduser().resolve())
        else:
            scope = "day" if args.day else "month"
            key = time.strftime("%Y-%m-%d" if args.day else "%Y-%m")
    except guard_control.TargetError as exc:
        print(f"devmeter: {exc}", file=sys.stderr)
        return 2
    code, message = guard_control.allow(where, config, scope, key, by, time.time())
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_stop(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter import guard_control

    if args.session is None:
        print(
            "devmeter: `devmeter stop ID` refuses one session's requests (`devmeter sessions` "
            f"lists them); it does not stop devmeter. {_how_to_stop_devmeter(where)}",
            file=sys.stderr,
        )
        return 2
    try:
        session = guard_control.resolve_session(where, args.session)
    except guard_control.TargetError as exc:
        print(f"devmeter: {exc}", file=sys.stderr)
        return 2
    print(guard_control.stop(where, session, time.time()))
    return 0


def _how_to_stop_devmeter(where: Paths) -> str:
    return _stop_running_devmeter(where) or "devmeter is not running."


def _stop_running_devmeter(where: Paths) -> str | None:
    """What stops the running devmeter: the tray or headless line (its proxy stops with
    it), else a bare proxy; named by the pid its state file records. None: none runs."""
    from devmeter.tray.supervisor import read_status

    supervisor = read_status(where)  # None unless the process that wrote it is alive
    if supervisor is not None:
        pid = supervisor["pid"]
        tray = supervisor.get("mode") == "tray"
        # Only the ways this one has: a headless line has no menu to quit from.
        ways = "Quit in its tray menu, Ctrl-C in its terminal" if tray else "Ctrl-C in its terminal"
        unit = "devmeter" if tray else "devmeter-headless"
        systemd = (
            f"; systemd started it: `systemctl --user stop {unit}`" if _by_systemd(pid) else ""
        )
        return f"To stop devmeter: {ways}, or `kill {pid}` (its proxy stops with it{systemd})."
    state = read_proxy_state(where)
    pid = state.get("pid") if state else None
    if _pid_alive(pid):
        return f"To stop devmeter: Ctrl-C in its terminal, or `kill {pid}` (devmeter proxy)."
    return None


def _by_systemd(pid: int) -> bool:
    """Whether systemd started `pid` (it sets INVOCATION_ID for each unit it runs)."""
    import psutil

    try:
        return "INVOCATION_ID" in psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return False


def cmd_pause(args: argparse.Namespace, config: Config, where: Paths) -> int:
    control.update(control.control_path(where.data_dir), paused=args.paused)
    if args.paused:
        print("devmeter: metered traffic is paused; `devmeter resume` lets it through again.")
    else:
        print("devmeter: metered traffic resumed.")
    return 0


def cmd_routing(args: argparse.Namespace, config: Config, where: Paths) -> int:
    path = control.control_path(where.data_dir)
    configured = config.section("routing").mode
    if args.mode is not None:
        control.update(path, routing_mode=None if args.mode == "config" else args.mode)
    chosen = control.load(path).routing_mode
    if chosen:
        source = "set with `devmeter routing`"
    elif where.config_file.exists():
        source = f"from {where.config_file}"
    else:
        source = f"the default: {where.config_file} does not exist"
    print(f"routing mode: {chosen or configured} ({source})")
    return 0


def cmd_config(args: argparse.Namespace, config: Config, where: Paths) -> int:
    from devmeter.config import TEMPLATE

    if args.init and not where.config_file.exists():
        where.config_file.parent.mkdir(parents=True, exist_ok=True)
        where.config_file.write_text(TEMPLATE, encoding="utf-8")
        print(f"wrote {where.config_file}")
        return 0
    if args.init:
        # Said, not silent: a bare path read as if the template had been written over it.
        print(
            "devmeter: the config file exists already: left as it is (--init writes the "
            "template only where there is none)",
            file=sys.stderr,
        )
    print(where.config_file)
    return 0


def cmd_doctor(args: argparse.Namespace, config: Config | None, where: Paths) -> int:
    from devmeter import doctor

    checks = doctor.run_checks(where, notify=args.notify)
    if args.json:
        sys.stdout.write(doctor.to_json(checks))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(doctor.to_text(checks, colour=colour))
    return doctor.exit_status(checks)


def cmd_setup(args: argparse.Namespace, config: Config | None, where: Paths) -> int:
    from devmeter.config import DEFAULT_LISTEN
    from devmeter.integration import steps

    try:
        listen = load(where.config_file).listen
    except ConfigError as exc:
        print(f"devmeter: note: bad config ({exc}); the hook assumes the default address")
        listen = DEFAULT_LISTEN
    status = steps.setup(
        where,
        listen,
        shells=args.shells,
        with_autostart=not args.no_autostart,
        devmeter=steps.devmeter_command(),
    )
    import devmeter

    note = _older_devmeter_running(where, Path(devmeter.__file__))
    if note:
        print(note)
    return status


def _older_devmeter_running(where: Paths, installed: Path) -> str | None:
    """A devmeter started before this install's files were written (install.sh run again
    to upgrade, which runs setup): it keeps its old code and would import new modules
    into it, so say to restart it. None when none runs, or it runs these files."""
    import psutil

    from devmeter.tray.supervisor import read_status

    supervisor = read_status(where)
    stop = _stop_running_devmeter(where)
    if supervisor is None or stop is None:
        return None
    try:
        started = psutil.Process(supervisor["pid"]).create_time()
        if started >= installed.stat().st_mtime:
            return None
    except (psutil.Error, OSError):
        return None
    return (
        f"devmeter (pid {supervisor['pid']}) was started before this install: restart it to "
        f"run this version. {stop} Then start `devmeter` again."
    )


def cmd_uninstall(args: argparse.Namespace, config: Config | None, where: Paths) -> int:
    from devmeter.integration import steps

    return steps.uninstall(where, running=_stop_running_devmeter(where))


def cmd_tray(args: argparse.Namespace, config: Config, where: Paths) -> int:
    """No command: the tray app, supervising the proxy; headless without a desktop."""
    from dataclasses import replace

    from devmeter.tray.app import main as tray_main

    listen = getattr(args, "tray_listen", None)
    if listen:
        config = replace(config, listen=parse_listen(listen, "--listen"))
    return tray_main(config, where, headless=args.headless, listen=listen)


if __name__ == "__main__":
    sys.exit(main())
