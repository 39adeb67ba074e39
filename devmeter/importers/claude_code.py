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
from devmeter.importers.history import ImportResult, Row, imported_row
from devmeter.importers.scan import history_files, history_root
from devmeter.importers.transcript_fields import import_line_files, repo_of, timestamp
from devmeter.pricing import PriceOverride, cost_pusd
from devmeter.providers.anthropic import document_usage
from devmeter.usage import checked_usage

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
) -> ImportResult:
    """Import what is new in Claude Code's transcripts under `root` (its projects folder)."""
    where = history_root(IMPORTER, root)  # given the config folder or its projects
    files = transcript_files(where)
    return import_line_files(
        ledger_path, IMPORTER, files, parse_lines, overrides, progress,
        f"no Claude Code transcripts under {where}",
    )  # fmt: skip
