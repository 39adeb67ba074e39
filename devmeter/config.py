"""The TOML config file: read once, validated whole, every error naming file, key and line.

Each section belongs to the module that uses it (prices to pricing, budgets to
budget, ...); this module only reads the file, hands each section to its parser
and turns a parser's ConfigError into one that points at the line to fix.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devmeter.config_error import ConfigError
from devmeter.config_values import config_table, did_you_mean, reject_unknown, url_problem
from devmeter.pricing import PriceOverride, parse_overrides

DEFAULT_LISTEN = ("127.0.0.1", 8788)

TEMPLATE = """\
# devmeter configuration. Every key is optional; see the README for all of them.
# A running proxy applies each saved edit within a second (all but [proxy] listen); an
# edit with a mistake is reported, with its line, and changes nothing.

[proxy]
# listen = "127.0.0.1:8788"

# Send a provider host's traffic to another base URL (a gateway, a local server):
# [upstream]
# "api.anthropic.com" = "http://127.0.0.1:9000"

# Negotiated discounts or self-hosted models, first match wins:
# [[prices]]
# model = "claude-*"
# discount = 0.15
#
# [[prices]]
# provider = "openai"
# model = "my-local-llama"
# free = true

# Notices when spend crosses a threshold; block_usd refuses further calls (off by default).
# [budgets.session]
# notify_usd = [5, 20, 100]
# block_usd = 200
#
# [budgets.day]
# notify_usd = [50, 200]
#
# Asks: past each level the next request waits until you answer Continue or Stop (a
# notification, the tray menu, `devmeter allow`); no answer in time refuses it. [] = off.
# [budgets]
# ask_timeout_seconds = 60
# [budgets.session]
# ask_usd = [25, 50]
# [budgets.day]
# ask_usd = [100]

# Alerts and asks pushed to your phone or chat; secrets come from the environment.
# [notify.ntfy]
# topic_env = "DEVMETER_NTFY_TOPIC"   # server = "https://ntfy.sh" by default
# [notify.slack]
# webhook_url_env = "DEVMETER_SLACK_WEBHOOK"

# Burn rate, loops and sessions running with nobody at the keyboard.
# [runaway]
# window_minutes = 10

# The tray imports Claude Code, Codex and Gemini CLI history in the background.
# [import]
# auto = true
# interval_minutes = 5

[routing]
# off: never rewrite; shadow: record what a rule would save; on: rewrite.
mode = "shadow"
# Built-in rules to switch on:
# enable = ["claude-code-background-to-haiku", "small-format-to-mini"]
#
# [[routing.rules]]
# name = "opus-over-budget"
# model = "claude-opus-*"
# session_spend_over_usd = 20
# to = "claude-sonnet-5-5"

# Team monitoring (see the README): Prometheus /metrics and OTLP push, off until written.
# [export.prometheus]
# listen = "127.0.0.1:9464"
#
# [export.otlp]
# endpoint = "http://collector:4318"    # auth: DEVMETER_OTLP_HEADERS="k=v,..." in the env

# Secrets in what agents send (keys, tokens, private keys, passwords): warn, block or
# redact them. See the README.
# [secrets]
# mode = "warn"            # off | warn | block | redact
# allow = []               # regexes of values never to report
# [secrets.repos]
# "/home/me/fixtures" = "off"
"""


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    listen: tuple[str, int] = DEFAULT_LISTEN
    upstreams: Mapping[str, str] = field(default_factory=dict)
    prices: tuple[PriceOverride, ...] = ()
    # Sections other modules parse (budgets, runaway, routing), already validated.
    sections: Mapping[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """A validated section; its defaults when the file leaves it out."""
        if name in self.sections:
            return self.sections[name]
        return _parse_extra(name, {})


# Parsers for sections owned by other modules, registered by those modules' names so
# that this module stays importable on its own: key -> (module, function).
EXTRA_SECTIONS: dict[str, tuple[str, str]] = {
    "routing": ("devmeter.routing", "parse_routing"),
    "budgets": ("devmeter.budget", "parse_budgets"),
    "runaway": ("devmeter.runaway", "parse_runaway"),
    "import": ("devmeter.importers.auto", "parse_import"),
    "notify": ("devmeter.push", "parse_notify"),
    "export": ("devmeter.export.settings", "parse_export"),
    "quota": ("devmeter.quota_watch", "parse_quota"),
    "accounts": ("devmeter.billing", "parse_accounts"),
    "secrets": ("devmeter.secrets.policy", "parse_secrets"),
}

KNOWN_SECTIONS = ("proxy", "upstream", "prices")


def load(path: Path) -> Config:
    """Read and validate `path`; a missing file is the default config."""
    if not path.exists():
        if path.is_symlink():
            # A dotfiles link whose target moved: silently running on defaults would
            # drop every cap the user set.
            raise ConfigError(
                "",
                f"is a link to {os.readlink(path)}, which does not exist; fix the link "
                f"(ln -sf TARGET {path}) or remove it to run on defaults",
                path,
            )
        return Config(path=path)
    if path.is_dir():
        raise ConfigError(
            "",
            f"is a directory, not a file; move it aside (mv {path} {path}.dir); "
            "`devmeter config --init` writes a new file",
            path,
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            "",
            f"cannot read the config file ({exc.strerror or exc}); make it readable by "
            f"you (chmod u+r {path}) or move it aside",
            path,
        ) from exc
    try:
        # utf-8-sig: Windows editors (Notepad) start the file with a byte-order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "",
            f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
            path,
            line,
        ) from None
    return parse(text, path)


def parse(text: str, path: Path) -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(exc, text, path) from exc
    except RecursionError:
        raise ConfigError(
            "", "nested too deeply to read: use at most a few levels of tables and arrays", path
        ) from None
    try:
        return _config_from_table(table, path)
    except ConfigError as exc:
        hint = _unquote_hint(exc, _value_at(table, exc.key))
        error = ConfigError(exc.key, exc.message + hint) if hint else exc
        raise error.located(path, locate(text, exc.key)) from None


def _value_at(table: Mapping[str, Any], key: str) -> Any:
    """The value the file holds at a dotted key such as `prices[1].discount`, or None."""
    value: Any = table
    for match in _PART.finditer(key):
        if not isinstance(value, Mapping) or match.group(1) not in value:
            return None
        value = value[match.group(1)]
        if match.group(2) is not None:
            index = int(match.group(2))
            value = value[index] if isinstance(value, list) and index < len(value) else None
    return value


def _unquote_hint(exc: ConfigError, value: Any) -> str:
    """A number or boolean written in quotes ("5", "$20", "true") is text to TOML: the
    one change that fixes it, when the parser's words only said what it expected."""
    if not isinstance(value, str) or not exc.key or "quotes" in exc.message:
        return ""
    leaf = _PART.findall(exc.key)[-1][0]
    if value.strip().lower() in ("true", "false"):
        if "true or false" not in exc.message:
            return ""
        return f"; write it without quotes: {leaf} = {value.strip().lower()}"
    if "number" not in exc.message:
        return ""  # a text that looks like a number where text goes (to = "5") is not this
    bare = value.strip().removeprefix("$").strip()
    try:
        number = float(bare)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    return f"; write the number without quotes: {leaf} = {bare}"


def _config_from_table(table: dict[str, Any], path: Path) -> Config:
    known = (*KNOWN_SECTIONS, *EXTRA_SECTIONS)
    for name in table:
        if name not in known:
            # A key written above every header (listen = ...) belongs in a section.
            home = "[proxy]" if name == "listen" else "the [section] it belongs to"
            where = (
                f"a setting above every [section] header; put it under {home}"
                if not isinstance(table[name], dict | list)
                else "unknown section"
            )
            raise ConfigError(
                name, f"{where}; {did_you_mean(name, known)}valid sections are {', '.join(known)}"
            )
    proxy = _table(table, "proxy")
    reject_unknown("proxy", proxy, ("listen",))
    sections = {name: _parse_extra(name, table.get(name, {})) for name in EXTRA_SECTIONS}
    return Config(
        path=path,
        listen=parse_listen(proxy["listen"], "proxy.listen")
        if "listen" in proxy
        else DEFAULT_LISTEN,
        upstreams={
            host: parse_upstream_url(url, f"upstream.{host}")
            for host, url in _table(table, "upstream").items()
        },
        prices=parse_overrides(table.get("prices", [])),
        sections=sections,
    )


def _parse_extra(name: str, value: Any) -> Any:
    module_name, function_name = EXTRA_SECTIONS[name]
    module = __import__(module_name, fromlist=[function_name])
    parser: Callable[[Any], Any] = getattr(module, function_name)
    return parser(config_table(name, value))


def parse_listen(value: Any, key: str) -> tuple[str, int]:
    """`HOST:PORT` or `PORT`; devmeter listens on loopback only."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"127.0.0.1:{value}"
    if not isinstance(value, str):
        raise ConfigError(key, 'must be "127.0.0.1:PORT"')
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, f'{value!r} has no valid port; use "127.0.0.1:8788"')
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            key,
            f"{host} is not a loopback address; devmeter sees API keys and only listens on "
            "127.0.0.1, localhost or ::1",
        )
    return host, int(port_text)


def parse_upstream_url(url: Any, key: str) -> str:
    if isinstance(url, dict):
        raise ConfigError(
            key, 'quote the host, which has dots: "api.anthropic.com" = "http://127.0.0.1:9000"'
        )
    problem = url_problem(url) if isinstance(url, str) else "is not a URL"
    if problem is not None:
        raise ConfigError(key, f"must be a base URL like http://127.0.0.1:9000; {url!r} {problem}")
    return url.rstrip("/")


def parse_upstream_arg(arg: str) -> tuple[str, str]:
    """`--upstream HOST=URL` from the command line."""
    host, sep, url = arg.partition("=")
    if not sep or not host:
        raise ConfigError("--upstream", f"expected HOST=URL, got {arg!r}")
    return host.strip(), parse_upstream_url(url.strip(), f"--upstream {host}")


def _table(table: dict[str, Any], name: str) -> Mapping[str, Any]:
    return config_table(name, table.get(name, {}))


# tomllib's words for a syntax error -> what to write instead. The words are the same from
# Python 3.11 to 3.13 (tests/test_config.py checks each case on the Python running them).
_TOML_FIXES: tuple[tuple[str, str], ...] = (
    ("Cannot overwrite a value", "this key is already set above; keep one of the two"),
    ("Cannot declare", "this table is already declared above; put its keys under one header"),
    (
        "Unescaped '\\'",
        "in double quotes a backslash starts an escape: write regexes and Windows paths in "
        "single quotes ('\\d+') or double each backslash (\"\\\\d+\")",
    ),
    ("Illegal character '\\n'", "a string is not closed: end it with its quote on the same line"),
    ("Unterminated string", "a string is not closed: end it with its quotes"),
    ('Expected "\'"', "a string is not closed: end it with ' on the same line"),
    ("Unclosed array", "a list is not closed: end it with ]"),
    ("Unclosed inline table", "an inline table is not closed: end it with } on the same line"),
    ("Expected ']]'", "an [[array]] header is not closed: end it with ]]"),
    ("Expected ']'", "a [section] header is not closed: end it with ]"),
    ("Expected '='", 'write key = value; a key with dots or colons goes in quotes ("a.b" = ...)'),
    (
        "Invalid value",
        'quote text and write true/false in lower case, e.g. listen = "127.0.0.1:8788"',
    ),
    (
        "Expected newline or end of document",
        'one key = value a line; quote text, e.g. listen = "127.0.0.1:8788"',
    ),
)


_GIVEN_UP_AT_THE_END = ("Unclosed", "Unterminated", "end of document)")


def _toml_error(exc: tomllib.TOMLDecodeError, text: str, path: Path) -> ConfigError:
    """The syntax error with its line, the key written there and what to do about it."""
    said = str(exc)
    line = _toml_error_line(exc)
    if line is None or any(words in said for words in _GIVEN_UP_AT_THE_END):
        # Reported where tomllib gave up (the next header, the end): the start is the fix.
        start = _unclosed_from(text)
        if start is not None:
            line, said = start, re.sub(r" \(at [^)]*\)$", "", said)
    fix = next((fix for words, fix in _TOML_FIXES if words in said), None)
    key = _key_at(text, line) if line else ""
    message = f"not valid TOML: {said}"
    return ConfigError(key, f"{message}; {fix}" if fix else message, path, line)


def _unclosed_from(text: str) -> int | None:
    """The line an error found only "at end of document" starts on (an unclosed list or
    string): the line after the longest start of the file that still parses. From the
    end: a start cut inside an earlier, well-closed list fails too. Files are short."""
    lines = text.splitlines(keepends=True)
    if len(lines) > 2000:
        return None
    for count in range(len(lines) - 1, -1, -1):
        try:
            tomllib.loads("".join(lines[:count]))
        except (tomllib.TOMLDecodeError, RecursionError):
            continue
        return count + 1
    return None


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]\[]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGNED = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.-]+)\s*=")


def _key_at(text: str, line: int) -> str:
    """The dotted key written on `line` (its section's header, then the key), or ""."""
    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return ""
    header = _HEADER.match(lines[line - 1])
    if header:
        return header.group(1).replace(" ", "")
    assigned = _ASSIGNED.match(lines[line - 1])
    if not assigned:
        return ""
    name = assigned.group(1).strip("\"'")
    for above in reversed(lines[: line - 1]):
        section = _HEADER.match(above)
        if section:
            return f"{section.group(1).replace(' ', '')}.{name}"
    return name


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    lineno = getattr(exc, "lineno", None)  # Python 3.14+
    if isinstance(lineno, int):
        return lineno
    match = re.search(r"line (\d+)", str(exc))
    return int(match.group(1)) if match else None


_PART = re.compile(r"([^.\[\]]+)(?:\[(\d+)\])?")


def locate(text: str, key: str) -> int | None:
    """Best-effort line of a dotted key such as `prices[1].discount` or `budgets.session`.

    Walks the file's table headers for the leading parts and then looks for the
    last part as a key, so a user is sent to the line, not only the section.
    """
    if not key:
        return None
    parts = [(m.group(1), int(m.group(2)) if m.group(2) else None) for m in _PART.finditer(key)]
    lines = text.splitlines()
    start = 0
    found_header = False
    header_path: list[str] = []
    for depth, (name, index) in enumerate(parts):
        header_path.append(name)
        dotted = ".".join(header_path)
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(dotted)}\s*\]\]?\s*(#.*)?$")
        hits = [i for i in range(start, len(lines)) if header.match(lines[i])]
        if hits:
            start = hits[index] if index is not None and index < len(hits) else hits[0]
            found_header = True
            if depth == len(parts) - 1:
                return start + 1
            continue
        deeper = re.compile(rf"^\s*\[\[?\s*{re.escape(dotted)}\.")
        if depth < len(parts) - 1 and any(deeper.match(line) for line in lines[start:]):
            continue  # only sub-tables are written out, e.g. [budgets.day] for budgets
        # `name = ...`, or a dotted key `name.more = ...`
        assignment = re.compile(rf'^\s*"?{re.escape(name)}"?\s*[=.]')
        for i in range(start, len(lines)):
            if assignment.match(lines[i]):
                return i + 1
        return start + 1 if found_header else None
    return None
