"""`devmeter import claude-code`: Claude Code's own transcripts, one ledger row per response.

Claude Code writes each session to `<config>/projects/<cwd-slug>/<session>.jsonl`
(`<config>` is `CLAUDE_CONFIG_DIR`, else `~/.claude`; subagents go to files of their own
below it). An assistant line carries `message.id` (Anthropic's `msg_…`), `requestId`,
`message.model`, `message.usage` (the API's usage object), `sessionId`, `cwd`,
`gitBranch`, `isSidechain` and `timestamp`. What this reader copes with:

- a streamed response is written as several lines (one per content block), all with the
  same `message.id`, the later ones with more `output_tokens`: one row, the final counts;
- a resumed or forked session repeats earlier lines in a new file: the `import_key`
  (`message.id` + `requestId`) counts each response once;
- sidechain (subagent) lines are real API calls of the same session: kept;
- lines without usage (user turns, tool results, summaries, `<synthetic>` messages that
  Claude Code makes up itself for errors) are skipped, as are lines that are not JSON.

Prices come from devmeter's own pricing, exactly as for live rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from devmeter import fastjson
from devmeter.importers.history import ImportResult, Row, imported_counts_row, imported_row
from devmeter.importers.scan import history_files, history_root
from devmeter.importers.transcript_fields import import_line_files, repo_of, timestamp
from devmeter.pricing import PriceOverride, cost_pusd, list_cost_pusd, priced_counts, priced_tier
from devmeter.usage import MAX_TOKENS, checked_usage

IMPORTER = "claude-code"
TOOL = "claude-code"
ENDPOINT = "claude-code.import"
HOST = "api.anthropic.com"
PROVIDER = "anthropic"


def default_root() -> Path:
    return history_root(IMPORTER)


def transcript_files(root: Path) -> list[Path]:
    (files,) = history_files(IMPORTER, root)
    return files


def parse_lines(
    lines: list[bytes], state: dict[str, Any], path: Path, overrides: tuple[PriceOverride, ...] = ()
) -> list[Row]:
    # A streamed response's lines collapse to the last (most output) before a row is
    # built and priced: that is most of the work, and only one line per response is kept.
    final: dict[Any, tuple[int, Any]] = {}
    loads = fastjson.loads
    for line in lines:
        if line.rfind(b'"usage"') < 0:
            continue  # cheaper than parsing; from the end, where a response's usage is
        try:
            obj = loads(line)
            message = obj["message"]
            output = message["usage"].get("output_tokens")  # only a dict has .get
        except (ValueError, LookupError, TypeError, AttributeError):
            continue  # not JSON, or no usage object where a response has it
        output = output if type(output) is int else 0
        # The response as its import_key names it (line_row): ids that are strings.
        message_id, request_id = message.get("id"), obj.get("requestId")
        key: Any = (
            message_id if type(message_id) is str else None,
            request_id if type(request_id) is str else None,
        )
        if key == (None, None):
            key = id(obj)  # no id: a line of its own
        held = final.get(key)
        if held is None or output > held[0]:
            message.pop("content", None)  # the text, most of the line: freed at once
            final[key] = (output, obj)
    rows = (line_row(obj, overrides) for _, obj in final.values())
    return [row for row in rows if row is not None]


def line_row(obj: Any, overrides: tuple[PriceOverride, ...] = ()) -> Row | None:
    """The ledger row for one transcript line, or None when it is no API response."""
    row = _quick_row(obj) if not overrides else _NOT_QUICK
    return _general_row(obj, overrides) if row is _NOT_QUICK else row


_NOT_QUICK: Any = object()  # _quick_row's "not sure: ask _general_row"


def _quick_row(obj: Any) -> Row | None:
    """`_general_row(obj, ())` for the line nearly every response is written as (integer
    counts in range, a model with list rates, both ids), read straight from the dicts
    with no Usage, no check pass and no Decimal: a first import builds one per response
    of a whole history. Anything else (a count of another type or out of range, a field
    of the wrong type, a priced tier, a model without flat rates, a line that is no
    response) is _NOT_QUICK, never a guess. Equal to the general path by test, line for
    line, over generated, real and hostile transcripts (tests/test_import_bulk.py)."""
    if type(obj) is not dict or obj.get("type") != "assistant":
        return _NOT_QUICK
    message = obj.get("message")
    if type(message) is not dict:
        return _NOT_QUICK
    u, model = message.get("usage"), message.get("model")
    message_id, request_id = message.get("id"), obj.get("requestId")
    if (
        type(u) is not dict or type(model) is not str or not model or model == "<synthetic>"
        or type(message_id) is not str or type(request_id) is not str
    ):  # fmt: skip
        return _NOT_QUICK
    input_tokens, output = u.get("input_tokens"), u.get("output_tokens")
    read, write = u.get("cache_read_input_tokens", 0), u.get("cache_creation_input_tokens")
    split, tools = u.get("cache_creation"), u.get("server_tool_use")
    details, tier = u.get("output_tokens_details"), u.get("service_tier")
    if split is None:
        write_5m = write_1h = 0
    elif type(split) is dict:
        write_5m = split.get("ephemeral_5m_input_tokens", 0)
        write_1h = split.get("ephemeral_1h_input_tokens", 0)
    else:
        return _NOT_QUICK
    if write is None and type(write_5m) is int and type(write_1h) is int:
        write = write_5m + write_1h  # as message_usage: the split's sum when no total
    searches = _inner(tools, "web_search_requests")
    reasoning = _inner(details, "thinking_tokens")
    for count in (input_tokens, output, read, write, write_1h, searches, reasoning):
        if type(count) is not int or not 0 <= count <= MAX_TOKENS:
            return _NOT_QUICK  # None, a float, a bool, NaN, out of range: the general path
    if tier is not None and (type(tier) is not str or priced_tier(tier or None)):
        return _NOT_QUICK
    if model.startswith("models/"):
        return _NOT_QUICK  # a name pricing normalises: the general path
    ts = timestamp(obj.get("timestamp"))
    if ts is None:
        return _NOT_QUICK
    priced = list_cost_pusd(
        PROVIDER, model, ts, input_tokens + read + write,
        priced_counts(input_tokens, output, read, write, write_1h, searches),
    )  # fmt: skip
    if priced is None:
        return _NOT_QUICK  # no list rates (an unknown model): the general path says so
    cwd = _str(obj.get("cwd"))
    repo, repo_branch = repo_of(cwd) if cwd else (None, None)
    return imported_counts_row(
        ts, TOOL, PROVIDER, ENDPOINT, HOST, model, _str(obj.get("sessionId")), repo,
        _str(obj.get("gitBranch")) or repo_branch, "transcript" if repo else None,
        input_tokens, read, write, write_1h, output, reasoning, searches, tier or None, 0,
        priced[0], priced[1], message_id, f"{IMPORTER}:{message_id}:{request_id}",
    )  # fmt: skip


def _inner(holder: Any, name: str) -> Any:
    """A count inside one of usage's objects: 0 without the object, None (not quick) when
    it is no object."""
    if holder is None:
        return 0
    return holder.get(name, 0) if type(holder) is dict else None


def _general_row(obj: Any, overrides: tuple[PriceOverride, ...]) -> Row | None:
    """line_row for any line: the proxy's reading of `usage` and its checks, general pricing."""
    # Loaded here, when a line needs it: the providers package loads every wire format
    # (a twentieth of a second), which a history of plain responses never asks for.
    from devmeter.providers.anthropic import document_usage

    if not isinstance(obj, dict) or obj.get("type") != "assistant":
        return None
    message = obj.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None
    model, message_id = _str(message.get("model")), _str(message.get("id"))
    if model == "<synthetic>":
        return None  # made up by Claude Code itself, no API call behind it
    request_id = _str(obj.get("requestId"))
    if message_id is None and request_id is None:
        uuid = obj.get("uuid")
        if not isinstance(uuid, str):
            return None
        key = f"{IMPORTER}:uuid:{uuid}"
    else:
        key = f"{IMPORTER}:{message_id or ''}:{request_id or ''}"
    ts = timestamp(obj.get("timestamp"))
    if ts is None:
        return None
    # The same reading of `usage` as the proxy's (5m/1h cache writes, web searches, tier),
    # and the same check: a count no call can have (negative, NaN, huge) is recorded as 0.
    usage = document_usage(message["usage"])
    if usage is None:
        return None
    usage, _ = checked_usage(usage)
    cwd = _str(obj.get("cwd"))
    repo, repo_branch = repo_of(cwd) if cwd else (None, None)
    cost, source = cost_pusd(PROVIDER, model, usage, overrides, ts) if model else (None, None)
    # The branch the transcript names was the one at the time; HEAD now may differ.
    return imported_row(
        ts, TOOL, PROVIDER, ENDPOINT, HOST, model, _str(obj.get("sessionId")), repo,
        _str(obj.get("gitBranch")) or repo_branch, "transcript" if repo else None, usage,
        cost, source, message_id, key,
    )  # fmt: skip


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def import_claude_code(
    ledger_path: Path,
    root: Path | None = None,
    overrides: tuple[PriceOverride, ...] = (),
    progress: TextIO | None = None,
    two_processes: bool = False,
) -> ImportResult:
    """Import what is new in Claude Code's transcripts under `root` (its projects folder)."""
    where = history_root(IMPORTER, root)  # given the config folder or its projects
    files = transcript_files(where)
    return import_line_files(
        ledger_path, IMPORTER, files, parse_lines, overrides, progress,
        f"no Claude Code transcripts under {where}", two_processes,
    )  # fmt: skip
