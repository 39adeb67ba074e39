"""The `devmeter` command's entry point: the commands that run often start fast.

`devmeter statusline` runs on every refresh of Claude Code's statusline, and `devmeter
import claude-code|codex|gemini-cli` is mostly a re-scan that finds nothing new. Both are
answered here from small modules (statusline.py, importers/scan.py) before the full CLI
(cli.py: argparse, every command's imports) is loaded; an import with something new runs
here too, with the config and the importer alone. Everything else, and any form of these
two this module does not recognise (help, an unknown flag, `--install`, a config file
with a mistake), goes to cli.main unchanged. A re-scan that finds nothing new prices
nothing, so it does not read the config file: a mistake there is reported by the next
command that needs the config (the import that has something to read among them).
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # typing, collections.abc, pathlib: not for the statusline's start
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["statusline"]:
        return _statusline()
    if len(args) >= 2 and args[0] == "import":
        done = _import(args[1], args[2:])
        if done is not None:
            return done
    from devmeter.cli import main as full

    return full(args)


def _statusline() -> int:
    from devmeter import statusline

    hook = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()  # no waiting
    sys.stdout.write(statusline.render(hook) + "\n")  # the ledger in devmeter's data folder
    return 0


def _import(importer: str, options: list[str]) -> int | None:
    """`devmeter import IMPORTER [--path DIR] [--json]` for the history importers: when
    none of its files changed since the last import, the answer; else the import itself,
    with the config it needs and not the rest of the CLI. None: the full CLI decides
    (another importer, a flag this does not know, a config with a mistake to report)."""
    from devmeter.importers import scan

    if importer not in scan.SOURCES:
        return None
    as_json, given = False, None
    rest = iter(options)
    for option in rest:
        if option == "--json":
            as_json = True
        elif option == "--path":
            given = next(rest, None)
            if given is None:
                return None
        elif option.startswith("--path="):
            given = option.removeprefix("--path=")
        else:
            return None  # -h, a flag this does not know: argparse says what it means
    done = _rescan(importer, given, as_json)
    return done if done is not None else _import_new(importer, given, as_json)


def _rescan(importer: str, given: str | None, as_json: bool) -> int | None:
    """The answer when none of the importer's files changed; None when one did."""
    started = time.monotonic()
    from pathlib import Path

    from devmeter.importers import scan
    from devmeter.statusline import data_dir  # platformdirs' rule, without platformdirs

    root = scan.history_root(importer, Path(given) if given is not None else None)
    files = [path for found in scan.history_files(importer, root) for path in found]
    if not scan.nothing_new(data_dir() / "ledger.sqlite", importer, files):
        return None
    seconds = time.monotonic() - started
    if as_json:
        import json

        summary = scan.summary(importer, len(files), seconds)
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        sys.stdout.write(
            f"{importer}: imported 0 calls ($0.00) from 0 of {len(files)} files in {seconds:.1f}s\n"
        )
    return 0


def _import_new(importer: str, given: str | None, as_json: bool) -> int | None:
    """The import, as `devmeter import` runs it, without loading the whole CLI (its
    commands' modules are a tenth of a first import's time); its errors are put as the
    CLI puts them."""
    from pathlib import Path

    from devmeter.config import ConfigError, load
    from devmeter.diagnostics import log_to_stderr
    from devmeter.importers import history
    from devmeter.paths import paths

    log_to_stderr()
    where = paths()
    try:
        config = load(where.config_file)
    except ConfigError:
        return None  # the CLI says what is wrong, as it does for every command
    try:
        return history.run_command(
            importer, where.ledger, Path(given) if given is not None else None, config.prices,
            as_json,
        )  # fmt: skip
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from devmeter.cli import report_user_error

        return report_user_error(exc, where)
