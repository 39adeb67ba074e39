"""`devmeter import gemini-cli`: Gemini CLI's recorded chats, one ledger row per answer.

Gemini CLI records every conversation (chat recording is on by default) under
`~/.gemini/tmp/<project-hash>/chats/`. Gemini CLI 0.61 appends JSONL to
`session-<time>-<id8>.jsonl` (a subagent's to `<parent-id>/<id>.jsonl`): a first record
`{sessionId, projectHash, startTime, lastUpdated, kind}`, then each message as it is
recorded, again when its tokens arrive (the same `id`), `{"$set": ...}` metadata updates
and `{"$rewindTo": id}`. Older versions rewrote one JSON document per session,
`session-<time>-<id8>.json`: `{sessionId, projectHash, ..., messages: [...]}`. Either way
a message of `type: "gemini"` has an `id`, `timestamp`, `model` and `tokens`: `input`
(promptTokenCount), `output` (candidates), `cached`, `thoughts`, `tool`
(toolUsePromptTokenCount) and `total`: the usage of the API call that answered. A rewound
conversation still cost what it cost: its answers stay in the ledger.

What these files do not hold: the working directory (only `projectHash`, a SHA-256 of
it that cannot be turned back into a path), so imported rows have no repo or branch;
calls that recorded no message (the model router's choice, retries, a turn cut off
before its answer was saved); cache writes (Gemini's implicit cache bills none) and the
provider's response id. JSONL files are read incrementally, old JSON ones whole when they
changed; the `import_key` (session and message id) keeps each answer once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from devmeter import fastjson
from devmeter.importers.history import SOURCE, ImportResult, Row, call_rows, run_import
from devmeter.importers.scan import history_files, history_root
from devmeter.pricing import PriceOverride, price
from devmeter.usage import Attribution, Call, Usage, checked_usage

IMPORTER = "gemini-cli"
TOOL = "gemini-cli"
ENDPOINT = "gemini-cli.import"
HOST = "generativelanguage.googleapis.com"
PROVIDER = "google"


def default_root() -> Path:
    return history_root(IMPORTER)


def chat_files(root: Path) -> list[Path]:
    """The older whole-document chats."""
    return history_files(IMPORTER, root)[1]


def chat_logs(root: Path) -> list[Path]:
    """Gemini CLI 0.61's JSONL chats (sessions and subagents)."""
    return history_files(IMPORTER, root)[0]


def parse_lines(
    lines: list[bytes], state: dict[str, Any], path: Path, overrides: tuple[PriceOverride, ...] = ()
) -> list[Call]:
    """Rows for new JSONL records; `state` keeps the session id from the first record."""
    calls = []
    for line in lines:
        try:
            record = fastjson.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("sessionId"), str) and "type" not in record:
            state["session"] = record["sessionId"]
            continue
        call = _message_call(record, state.get("session"), overrides)
        if call is not None:
            calls.append(call)
    return calls


def parse_document(
    data: bytes, path: Path, overrides: tuple[PriceOverride, ...] = ()
) -> list[Call]:
    try:
        doc = fastjson.loads(data)
    except ValueError:
        return []  # being rewritten: read again when it changes next
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
        return []
    session = doc.get("sessionId") if isinstance(doc.get("sessionId"), str) else None
    calls = []
    for message in doc["messages"]:
        call = _message_call(message, session, overrides)
        if call is not None:
            calls.append(call)
    return calls


def _count(tokens: dict[str, Any], name: str) -> int:
    value = tokens.get(name)
    return value if isinstance(value, int) and value > 0 else 0


def _message_call(
    message: Any, session: str | None, overrides: tuple[PriceOverride, ...]
) -> Call | None:
    if not isinstance(message, dict) or message.get("type") != "gemini":
        return None
    tokens = message.get("tokens")
    ident = message.get("id")
    if not isinstance(tokens, dict) or not isinstance(ident, str):
        return None
    try:
        ts = datetime.fromisoformat(str(message.get("timestamp")).replace("Z", "+00:00"))
    except ValueError:
        return None
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    model = message.get("model") if isinstance(message.get("model"), str) else None
    cached = _count(tokens, "cached")
    thoughts = _count(tokens, "thoughts")
    # The same meaning as the proxy's rows for Gemini CLI (README: prompt + tool - cached).
    usage = Usage(
        input_tokens=max(0, _count(tokens, "input") + _count(tokens, "tool") - cached),
        cache_read_tokens=cached,
        output_tokens=_count(tokens, "output") + thoughts,
        reasoning_tokens=thoughts,
    )
    usage, _ = checked_usage(usage)  # as a live row: a count no call can have is 0
    priced = price(PROVIDER, model, usage, overrides, ts)
    return Call(
        ts=ts.timestamp(),
        provider=PROVIDER,
        endpoint=ENDPOINT,
        host=HOST,
        requested_model=model,
        model=model,
        attribution=Attribution(tool=TOOL, session=session),
        usage=usage,
        cost_usd=priced.cost_usd,
        price_source=priced.source,
        status=None,
        source=SOURCE,
        import_key=f"{IMPORTER}:{session}:{ident}",
    )


def import_gemini_cli(
    ledger_path: Path,
    root: Path | None = None,
    overrides: tuple[PriceOverride, ...] = (),
    progress: TextIO | None = None,
    two_processes: bool = False,  # accepted for run_command; its files are few and small
) -> ImportResult:
    """Import what is new in Gemini CLI's recorded chats under `root` (~/.gemini)."""
    where = history_root(IMPORTER, root)
    logs, documents = history_files(IMPORTER, where)

    def parse_log(lines: list[bytes], state: dict[str, Any], path: Path) -> list[Row]:
        return call_rows(parse_lines(lines, state, path, overrides))

    def parse_whole(lines: list[bytes], state: dict[str, Any], path: Path) -> list[Row]:
        return call_rows(c for data in lines for c in parse_document(data, path, overrides))

    result = run_import(ledger_path, IMPORTER, logs, parse_log, progress)
    older = run_import(ledger_path, IMPORTER, documents, parse_whole, progress, whole_files=True)
    result.add(older)
    if not logs and not documents:
        result.errors.append(f"no Gemini CLI chats under {where}")
    return result
