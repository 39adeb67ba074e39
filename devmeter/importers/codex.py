"""`devmeter import codex`: Codex CLI's rollout files, one ledger row per model response.

Codex writes each session to `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl`
(`CODEX_HOME` defaults to `~/.codex`). Each line is `{timestamp, type, payload}`:

- `session_meta`: the session `id`, its `cwd` and `git.branch`;
- `turn_context`: the `model` (and `cwd`) of the turns that follow;
- `event_msg` with `payload.type == "token_count"`: `info.total_token_usage`, the
  session's cumulative `input_tokens` (cache reads included), `cached_input_tokens`,
  `output_tokens` (reasoning included) and `reasoning_output_tokens`; `info` is null
  before the first response, and an event may repeat the same totals.

A row is the difference between one cumulative total and the one before it (kept in
the file's import state, so an incremental read continues from it); a repeat adds
nothing. Rollouts carry no response id: the `import_key` is the session and the
cumulative total it reached, and a response the proxy metered live is recognised by
its tool, token counts and time, the same session first, whichever of the two reached the
ledger first (devmeter/importers/history.py, ledger migration v9).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from devmeter import fastjson
from devmeter.importers.history import SOURCE, ImportResult, Row, call_rows
from devmeter.importers.scan import history_files, history_root
from devmeter.importers.transcript_fields import import_line_files, repo_of, timestamp
from devmeter.pricing import PriceOverride, price
from devmeter.usage import Attribution, Call, Usage, checked_usage

IMPORTER = "codex"
TOOL = "codex"
ENDPOINT = "codex.import"
HOST = "api.openai.com"
PROVIDER = "openai"
_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens")


def default_root() -> Path:
    return history_root(IMPORTER)


def rollout_files(root: Path) -> list[Path]:
    (files,) = history_files(IMPORTER, root)
    return files


def parse_lines(
    lines: list[bytes], state: dict[str, Any], path: Path, overrides: tuple[PriceOverride, ...] = ()
) -> list[Call]:
    """Rows for new lines; `state` carries the session, model, cwd and the last totals."""
    calls = []
    for line in lines:
        if not any(marker in line for marker in (b"session_meta", b"turn_context", b"token_count")):
            continue
        try:
            obj = fastjson.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("payload"), dict):
            continue
        payload, kind = obj["payload"], obj.get("type")
        if kind == "session_meta":
            state["session"] = _str(payload.get("id")) or state.get("session")
            state["cwd"] = _str(payload.get("cwd")) or state.get("cwd")
            git = payload.get("git") if isinstance(payload.get("git"), dict) else {}
            state["branch"] = _str(git.get("branch")) or state.get("branch")
        elif kind == "turn_context":
            state["model"] = _str(payload.get("model")) or state.get("model")
            state["cwd"] = _str(payload.get("cwd")) or state.get("cwd")
        elif kind == "event_msg" and payload.get("type") == "token_count":
            call = _token_count(obj, payload, state, overrides)
            if call is not None:
                calls.append(call)
    return calls


def _token_count(
    obj: dict[str, Any],
    payload: dict[str, Any],
    state: dict[str, Any],
    overrides: tuple[PriceOverride, ...],
) -> Call | None:
    info = payload.get("info")
    total = info.get("total_token_usage") if isinstance(info, dict) else None
    if not isinstance(total, dict):
        return None
    now = [_int(total.get(name)) for name in _FIELDS]
    before = state.get("totals") or [0] * len(_FIELDS)
    if now == before:
        return None  # Codex repeats an event with the same totals
    if any(n < b for n, b in zip(now, before, strict=True)):
        before = [0] * len(_FIELDS)  # totals went back (a new conversation): start over
    state["totals"] = now
    prompt, cached, output, reasoning = (n - b for n, b in zip(now, before, strict=True))
    ts = timestamp(obj.get("timestamp"))
    if ts is None:
        return None
    usage = Usage(
        input_tokens=max(0, prompt - cached),
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )
    usage, _ = checked_usage(usage)  # as a live row: a count no call can have is 0
    model = state.get("model")
    session = state.get("session")
    cwd = state.get("cwd")
    repo, repo_branch = repo_of(cwd) if cwd else (None, None)
    priced = price(PROVIDER, model, usage, overrides, datetime.fromtimestamp(ts, UTC))
    return Call(
        ts=ts,
        provider=PROVIDER,
        endpoint=ENDPOINT,
        host=HOST,
        requested_model=model,
        model=model,
        attribution=Attribution(
            tool=TOOL,
            session=session,
            repo=repo,
            branch=state.get("branch") or repo_branch,
            repo_source="transcript" if repo else None,
        ),
        usage=usage,
        cost_usd=priced.cost_usd,
        price_source=priced.source,
        status=None,
        source=SOURCE,
        import_key=f"{IMPORTER}:{session}:{':'.join(map(str, now))}",
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_rows(
    lines: list[bytes], state: dict[str, Any], path: Path, overrides: tuple[PriceOverride, ...] = ()
) -> list[Row]:
    """`parse_lines` as the ledger rows an import stores."""
    return call_rows(parse_lines(lines, state, path, overrides))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def import_codex(
    ledger_path: Path,
    root: Path | None = None,
    overrides: tuple[PriceOverride, ...] = (),
    progress: TextIO | None = None,
    two_processes: bool = False,
) -> ImportResult:
    """Import what is new in Codex's rollouts under `root` (its sessions folder)."""
    where = history_root(IMPORTER, root)  # given CODEX_HOME or its sessions
    files = rollout_files(where)
    return import_line_files(
        ledger_path, IMPORTER, files, parse_rows, overrides, progress,
        f"no Codex rollouts under {where}", two_processes,
    )  # fmt: skip
