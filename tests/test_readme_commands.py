"""Every `devmeter …` command README.md shows exists: its subcommand and every flag, with
the values it shows. A renamed or dropped flag (CLI names are a contract) fails here.

Commands are taken from code blocks (comments left out), inline code anywhere (the
Commands table's synopses among them) and `$(devmeter …)` inside inline code. A synopsis
is expanded: `[…]` optional parts both left out and put in, `a|b|c` one run each, and
placeholders (ID, FILE, PORT, …) given a sample value. Each expansion is parsed by the
real argparse parser; each flag must be one the parser spells exactly (argparse would
also accept an abbreviation). Those that only read, or write to a throwaway
DEVMETER_HOME, are then run.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from devmeter import cli

README = Path(__file__).resolve().parent.parent / "README.md"

PLACEHOLDERS = {
    "ID": "0bcf16ce",
    "PREFIX": "0bcf16ce",
    "ID|PREFIX": "0bcf16ce",
    "FILE": "usage.csv",
    "DIR": "/nonexistent-dir",
    "N": "4",
    "NAME": "acme",
    "SHELL": "bash",
    "USD": "20",
    "PATH": "/src/acme",
    "CMD": "true",
    "ARGS": "",
    "HOST=URL": "api.anthropic.com=http://127.0.0.1:9",
    "127.0.0.1:PORT": "127.0.0.1:8789",
    "PORT": "8789",
}
# Run for real against an empty DEVMETER_HOME: they read it, or write only inside it.
HARMLESS = {"report", "sessions", "alerts", "config", "env", "routing", "pause", "resume"}


def readme_commands(text: str) -> set[str]:
    found: set[str] = set()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            match = re.search(r"(?:^|\$\()(devmeter(?= |$)[^)\n]*)", line)
            if match:
                found.add(match.group(1).strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())  # inline code broken over two lines
        match = re.match(r"(?:eval \"\$\()?(devmeter(?= |$)[^)\"]*)", span)
        if match:
            found.add(match.group(1).strip())
    return found


def expansions(synopsis: str) -> list[list[str]]:
    """The concrete argument lists a synopsis stands for (without `devmeter`)."""
    text = synopsis.replace("\\|", "|").replace("…", "")
    # [--since 1d] -> ("", "--since 1d"); each optional group is tried out and in.
    groups = re.findall(r"\[([^\]]*)\]", text)
    skeleton = re.sub(r"\[[^\]]*\]", "\0", text)
    runs: list[list[str]] = []
    for chosen in itertools.product(*[("", g) for g in groups]):
        filled = skeleton
        for part in chosen:
            filled = filled.replace("\0", f" {part} ", 1)
        for words in _alternatives(filled.split()[1:]):
            runs.append([PLACEHOLDERS.get(w, w) for w in words if PLACEHOLDERS.get(w, w)])
    return runs


def _alternatives(words: list[str]) -> list[list[str]]:
    """`a|b` in a word: one list per alternative (PLACEHOLDERS first: ID|PREFIX is one)."""
    options = [[w] if w in PLACEHOLDERS or "|" not in w else w.split("|") for w in words]
    seen: list[list[str]] = []
    for combo in itertools.product(*options):
        if list(combo) not in seen:
            seen.append(list(combo))
    return seen


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def spelled_flags(args: list[str]) -> list[str]:
    flags = []
    for word in args:
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            flags.append(word.split("=", 1)[0])
    return flags


def check_parses(args: list[str]) -> argparse.Namespace:
    parser = cli.build_parser()
    try:
        namespace = parser.parse_args(args)
    except (SystemExit, argparse.ArgumentError) as exc:
        pytest.fail(f"README's `devmeter {shlex.join(args)}` does not parse: {exc}")
    # Every flag exactly as some parser on the way spells it (no abbreviations).
    known = set(parser._option_string_actions)
    words = [w for w in args if not w.startswith("-")]
    current: argparse.ArgumentParser | None = parser
    for word in words:
        current = subparser(current, word) if current is not None else None
        if current is None:
            break
        known |= set(current._option_string_actions)
    for flag in spelled_flags(args):
        assert flag in known, f"README's `devmeter {shlex.join(args)}`: no flag {flag}"
    return namespace


COMMANDS = sorted(readme_commands(README.read_text(encoding="utf-8")))


def test_the_readme_shows_commands() -> None:
    # The extraction itself works: these are certainly in the README.
    for expected in ("devmeter doctor", "devmeter uninstall", "devmeter env"):
        assert expected in COMMANDS
    assert any(
        c.startswith("devmeter report [--by request|")
        or c.startswith("devmeter report [--by request\\|")
        for c in COMMANDS
    )


def test_expansion_tries_each_option_and_alternative() -> None:
    assert expansions("devmeter alerts [--since 1d] [--json]") == [
        ["alerts"],
        ["alerts", "--json"],
        ["alerts", "--since", "1d"],
        ["alerts", "--since", "1d", "--json"],
    ]
    assert expansions("devmeter routing|pause") == [["routing"], ["pause"]]
    assert expansions("devmeter stop ID\\|PREFIX") == [["stop", "0bcf16ce"]]


def test_a_renamed_flag_would_fail() -> None:
    with pytest.raises(pytest.fail.Exception):
        check_parses(["report", "--by", "nonsense"])
    with pytest.raises(AssertionError):
        check_parses(["report", "--sinc", "7d"])  # argparse takes it; the contract does not


@pytest.mark.parametrize("command", COMMANDS)
def test_each_readme_command_parses(command: str) -> None:
    for args in expansions(command):
        if len(args) == 1 and not args[0].startswith("-"):
            # Prose naming a command (`devmeter allow` continues it): it must exist; its
            # arguments are shown elsewhere.
            assert subparser(cli.build_parser(), args[0]) is not None, f"no command {args[0]}"
        else:
            check_parses(args)


@pytest.mark.parametrize(
    "command",
    [c for c in COMMANDS if len(c.split()) > 1 and c.split()[1].split("|")[0] in HARMLESS],
)
def test_each_harmless_readme_command_runs(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DEVMETER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for args in expansions(command):
        if args[0] not in HARMLESS:
            continue  # `devmeter routing|pause|resume|allow`: allow needs a target
        status = cli.main(args)
        out, err = capsys.readouterr()
        assert status == 0, f"`devmeter {shlex.join(args)}` exited {status}: {err}"
        assert "Traceback" not in err
