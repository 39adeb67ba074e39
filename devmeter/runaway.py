"""Runaway sessions, told apart from busy ones before the bill says so.

Three signals, each pure over the calls of one session:

- **burn rate**: dollars spent in a sliding window (default 10 minutes) per hour of the
  time it covers: the window, or the session's age when it is younger (`burn_rate`,
  which `devmeter sessions` shows too). When it passes a level (`projection_usd`,
  default $50/h and $200/h) the session is on course to pass that figure within the
  hour, which is said while its spend is still a fraction of it, once there is evidence
  (`_evident`: 20 s of age, and the level passed without the largest call). Once per
  level; a level re-arms only after the rate has fallen below `rearm_ratio` of it, so a
  rate hovering around a level does not flap.
- **loops**: the same request (by `request_fingerprint`) `loop_count` times within
  `loop_window_minutes`: an agent retrying a failing tool call for ever. One alert per
  session while it loops, however many requests the loop cycles over.
- **no human in the loop**: a session that has run `long_running_minutes` or
  `long_running_calls` since its last plain user text turn (`is_human_turn`).

Memory is bounded: windows are deques trimmed by time and length, and each session's
state is a part of its entry in the session table (`session_table.SessionTable`, shared
with the budgets and routing), which forgets idle sessions and holds at most
`max_sessions`. `seed` rebuilds the burn windows and
what was already announced from the ledger after a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from devmeter import fastjson
from devmeter.alerts import Alert, AlertKind, fit
from devmeter.budget import Advice
from devmeter.config_error import ConfigError
from devmeter.config_values import config_table, config_usd, reject_unknown
from devmeter.money import ZERO, format_usd
from devmeter.providers.registry import any_conversation
from devmeter.session_table import RUNAWAY_PART, SessionTable, session_key
from devmeter.usage import Call

HOUR = Decimal(3600)
# The shortest span a rate is taken over, and the youngest a session can be for its rate to
# alert: its first seconds, scaled to an hour, would make two quick calls look like a
# fortune. 20 s still sees a runaway at ~$370/hour (a $0.11 call a second) by its
# twentieth call, and the rate it prints is then the real one.
MIN_RATE_SECONDS = 20.0
# A bound on `burn_rate(usd, ...) / usd`: an hour over the shortest span, plus a margin far
# above Decimal's rounding (28 digits), so `usd * _RATE_BOUND` is never below the rate.
_RATE_BOUND = Decimal(3600 / MIN_RATE_SECONDS) * Decimal("1.001")


def burn_rate(window_usd: Decimal, first_ts: float, now: float, window_seconds: float) -> Decimal:
    """Spend per hour: `window_usd` (spent in the last `window_seconds` up to `now`) over the
    time it really took: the window, or the session's age when it is younger (a session
    first seen at `first_ts`), but never less than `MIN_RATE_SECONDS`.

    The one formula for the burn-rate alerts and `devmeter sessions`, so both print the
    same figure.
    """
    span = min(window_seconds, max(now - first_ts, MIN_RATE_SECONDS))
    # Decimal(int) is cheap, and the common case: a session older than its window.
    seconds = Decimal(int(span)) if span == int(span) else Decimal(repr(round(span, 3)))
    return window_usd * HOUR / seconds


# --- config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunawayConfig:
    # 10 minutes smooths one expensive call into a rate yet sees a runaway start well
    # inside the hour it would take to cost real money.
    window_minutes: float = 10
    # $50/h is a fast interactive Opus session; an agent burning it unattended all
    # night is the $4,000 morning. $200/h says it got worse.
    projection_usd: tuple[Decimal, ...] = (Decimal(50), Decimal(200))
    rearm_ratio: Decimal = Decimal("0.5")
    # Fewer calls than this in the window are not a rate, just one big call.
    min_calls: int = 3
    # 8 near-identical requests in 5 minutes: a retry loop, not an agent at work.
    loop_count: int = 8
    loop_window_minutes: float = 5
    # A human answers more often than hourly; an hour or 300 calls (an agent makes
    # 3-10 a minute) with nobody typing is worth a look. 0 turns a limit off.
    long_running_minutes: float = 60
    long_running_calls: int = 300
    # Sessions silent this long are forgotten (their windows are empty anyway).
    idle_evict_minutes: float = 120
    max_sessions: int = 2048


_RUNAWAY_KEYS = (
    "window_minutes",
    "projection_usd",
    "rearm_ratio",
    "min_calls",
    "loop_count",
    "loop_window_minutes",
    "long_running_minutes",
    "long_running_calls",
    "idle_evict_minutes",
)


def parse_runaway(table: Mapping[str, object] | None) -> RunawayConfig:
    """The `[runaway]` table (already parsed from TOML) -> RunawayConfig.

    `projection_usd = []`, `loop_count = 0`, `long_running_minutes = 0` and
    `long_running_calls = 0` each turn one detector (or limit) off.
    """
    table = config_table("runaway", table if table is not None else {})
    reject_unknown("runaway", table, _RUNAWAY_KEYS)
    values: dict[str, Any] = {}

    for name in ("window_minutes", "loop_window_minutes", "idle_evict_minutes"):
        if name in table:
            values[name] = _number(f"runaway.{name}", table[name], allow_zero=False)
    for name in ("long_running_minutes",):
        if name in table:
            values[name] = _number(f"runaway.{name}", table[name], allow_zero=True)
    for name in ("min_calls", "loop_count", "long_running_calls"):
        if name in table:
            values[name] = _count(f"runaway.{name}", table[name], allow_zero=name != "min_calls")

    if "projection_usd" in table:
        key, raw = "runaway.projection_usd", table["projection_usd"]
        if not isinstance(raw, list):
            raise ConfigError(key, f"expected a list of $/hour levels like [50, 200], got {raw!r}")
        levels = tuple(config_usd(key, v) for v in raw)
        for lower, higher in zip(levels, levels[1:], strict=False):
            if higher <= lower:
                raise ConfigError(
                    key, f"levels must be in ascending order: {higher} follows {lower}"
                )
        values["projection_usd"] = levels
    if "rearm_ratio" in table:
        key, raw = "runaway.rearm_ratio", table["rearm_ratio"]
        ratio = Decimal(str(_number(key, raw, allow_zero=False)))
        if ratio >= 1:
            raise ConfigError(key, f"must be between 0 and 1 (a fraction of a level), got {raw!r}")
        values["rearm_ratio"] = ratio

    config = replace(RunawayConfig(), **values)
    widest = max(("window_minutes", "loop_window_minutes"), key=lambda n: getattr(config, n))
    if config.idle_evict_minutes < getattr(config, widest):
        # Blame the key the user wrote: an idle_evict_minutes left out is the default.
        evict = f"idle_evict_minutes ({config.idle_evict_minutes:g})"
        if "idle_evict_minutes" in table:
            raise ConfigError(
                "runaway.idle_evict_minutes",
                f"must be at least {widest} ({getattr(config, widest):g}); raise it",
            )
        raise ConfigError(
            f"runaway.{widest}",
            f"{getattr(config, widest):g} is above {evict}, after which a quiet session is "
            f"forgotten; lower it, or set idle_evict_minutes at least as high",
        )
    return config


def _number(key: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigError(key, f"expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise ConfigError(
            key, f"must be above 0{' (or 0 for off)' if allow_zero else ''}, got {value!r}"
        )
    return float(value)


def _count(key: str, value: object, *, allow_zero: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            key, f"must be above 0{' (or 0 for off)' if allow_zero else ''}, got {value!r}"
        )
    return value


# --- request shape: fingerprints and human turns -------------------------------------------

# Keys whose values change on every request without changing what is asked.
_VOLATILE_KEYS = frozenset(
    {
        "id",
        "tool_use_id",
        "tool_call_id",
        "call_id",
        "cache_control",
        "signature",
        "encrypted_content",
        "created",
        "created_at",
        "timestamp",
        "thoughtSignature",
        "create_time",
        # Codex's per-item metadata (turn ids, creation times): bookkeeping, not content.
        "internal_chat_message_metadata_passthrough",
    }
)
# Tool call inputs: Anthropic `input`, OpenAI `arguments`, Gemini `args`.
_TOOL_INPUT_KEYS = frozenset({"input", "arguments", "args"})
# Items that are the model's private reasoning: never the same twice, never the point.
_SKIPPED_TYPES = frozenset({"thinking", "redacted_thinking", "reasoning"})
# Messages a client adds on its own between turns (Claude Code appends a `system` reminder
# every few calls): instructions, not the model's call or the tool's result.
_CLIENT_ROLES = frozenset({"system", "developer"})

_IDS = (
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # UUIDs
    r"|\b(?:toolu|call|msg|resp|fc|rs|req|run|chatcmpl|srvtoolu)_[A-Za-z0-9_-]+"  # provider ids
    r"|\b[0-9a-f]{12,}\b"  # hashes, commit ids
    r"|\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"  # ISO times
)
# Every alternative starts with a digit, a hex letter or a provider id's first letter: the
# lookahead rejects most positions at once (the regex runs on every metered request).
_STARTS = r"(?=[\da-ftcmrs])"
_IDS_ONLY = re.compile(f"{_STARTS}(?:{_IDS})", re.IGNORECASE)
# In free text (tool output, prompts) what changes between two runs of the same command is
# noise, at any length: every word holding a digit (short ids such as Codex's `Chunk ID:
# 3fa9c1`, counters, durations such as 1.2s, times, pids), a labelled id's value and
# Codex's `Wall time:` line, temporary paths (`mktemp` names may hold no digit), and the
# ids above. Only the rare alternatives sit behind a lookahead: this runs on every request.
_DIGIT_WORDS = r"\b[A-Za-z_]*\d[\w.:,+-]*"
_TEMP_PATHS = r"/(?:private/)?(?:tmp|var/folders|var/tmp)/\S*|\b[A-Za-z]:\\\S*\\Temp\\\S*"
_LABELLED = (
    r"\b(?:Chunk ID|Wall time|Session ID|Request ID|Trace ID|session_id|request_id|trace_id)"
    r"\s*[:=][^\n]*"
)
_FREE_IDS = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|\b(?:toolu|call|msg|resp|fc|rs|req|run|chatcmpl|srvtoolu)_[A-Za-z0-9_-]+"
    r"|\b[0-9a-fA-F]{12,}\b"
)
_IDS_AND_NUMBERS = re.compile(
    f"{_DIGIT_WORDS}|{_TEMP_PATHS}|(?=[0-9a-fA-FtcmrsCSRTW])(?:{_LABELLED}|{_FREE_IDS})"
)
# Long texts are fingerprinted by their two ends: enough to tell them apart, bounded work
# (2 KB a side keeps a 100 KB file read to well under a millisecond).
_TEXT_EDGE = 2048
# Deeper than any real message; a hostile body cannot exhaust the stack.
_MAX_DEPTH = 32
# A per-process key, for callers without the data folder's (paths.read_loop_key): a
# fingerprint of a short prompt cannot be looked up in a table.
PROCESS_KEY = os.urandom(16)


# Short strings recur in every request (roles, block types, tool names, short prompts):
# their normal form is remembered, per pattern, instead of running two regexes again.
_SHORT_TEXT = 64
_TEXT_CACHE_SIZE = 4096
_text_caches: dict[int, dict[str, str]] = {id(_IDS_ONLY): {}, id(_IDS_AND_NUMBERS): {}}


def _text(value: str, pattern: re.Pattern[str]) -> str:
    cache = _text_caches.get(id(pattern)) if len(value) <= _SHORT_TEXT else None
    if cache is not None:
        hit = cache.get(value)
        if hit is not None:
            return hit
    if len(value) > 2 * _TEXT_EDGE:
        value = value[:_TEXT_EDGE] + "\u2026" + value[-_TEXT_EDGE:]
    # `re.sub(r"\s+", " ", text).strip()`, faster on long text: str.split() splits on
    # the same whitespace as \s (str.isspace), and drops it at both ends as strip() does.
    normal = " ".join(pattern.sub("#", value).split())
    if cache is not None:
        if len(cache) >= _TEXT_CACHE_SIZE:
            cache.clear()  # ids churn through it; the common strings come back at once
        cache[value] = normal
    return normal


def _normal(value: Any, *, free_text: bool, depth: int = 0) -> Any:
    """`value` without what changes between identical requests.

    Strings in tool inputs keep their numbers (reading page 2 is not reading page 1);
    everything else is free text, where numbers are timestamps, durations and counters.
    """
    return _normal_with(value, _IDS_AND_NUMBERS if free_text else _IDS_ONLY, depth)


def _normal_with(value: Any, pattern: re.Pattern[str], depth: int) -> Any:
    # `_normal` with the pattern picked: this recursion runs over every metered request.
    if depth > _MAX_DEPTH:
        return "\u2026"
    if isinstance(value, str):
        return _text(value, pattern)
    if (
        pattern is _IDS_AND_NUMBERS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        return "#"  # a number outside a tool's input: a time, a count, a duration
    if isinstance(value, list):
        return [
            _normal_with(v, pattern, depth + 1)
            for v in value
            if not (isinstance(v, dict) and v.get("type") in _SKIPPED_TYPES)
        ]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in _VOLATILE_KEYS:
                continue
            if k in _TOOL_INPUT_KEYS:
                if isinstance(v, str):  # OpenAI sends arguments as a JSON string
                    with contextlib.suppress(ValueError, RecursionError):
                        v = json.loads(v)
                out[k] = _normal_with(v, _IDS_ONLY, depth + 1)
            elif type(v) is str and depth < _MAX_DEPTH:
                out[k] = _text(v, pattern)  # a leaf, the most common value: no call
            else:
                out[k] = _normal_with(v, pattern, depth + 1)
        return out
    return value


def _is_call_side(item: Any) -> bool:
    """An item the model produced: an assistant message or a tool call."""
    if not isinstance(item, dict):
        return False
    return item.get("role") in ("assistant", "model") or str(item.get("type", "")).endswith("_call")


def _last_turn(items: Sequence[Any], limit: int = 8) -> list[Any]:
    """The trailing items up to and including the last one the model produced.

    A tool loop is (the call the model made, the result it got); a message list grows on
    every turn, so only this tail can repeat.
    """
    tail: list[Any] = []
    for item in reversed(items[-limit:]):
        if isinstance(item, dict) and (
            item.get("type") in _SKIPPED_TYPES or item.get("role") in _CLIENT_ROLES
        ):
            continue  # reasoning, or what the client slipped in (Claude Code's reminders)
        tail.append(item)
        if _is_call_side(item) and len(tail) > 1:
            break
    return tail[::-1]


def conversation(body: Mapping[str, Any]) -> Sequence[Any] | None:
    """The message list of a body of any wire format with a conversation (Anthropic, OpenAI
    chat, Responses, Gemini, ...): its view in the providers' registry."""
    return any_conversation(body)  # a LazyDoc as it is: only the last turn is decoded


def request_fingerprint(
    body_json: Mapping[str, Any], *, model: str | None = None, key: bytes = PROCESS_KEY
) -> str:
    """A short hash that is equal for near-identical requests.

    Built from the model and the last turn (the last tool call and its result, or the
    last message), without ids, cache markers, reasoning, timestamps or numbers in
    free text. No text is kept; the hash is keyed per process, so a fingerprint of a
    short prompt cannot be reversed by hashing guesses. `model` overrides the body's
    (Gemini puts it in the URL).
    """
    if type(body_json) is not dict and not isinstance(body_json, Mapping):  # ABC check last
        body_json = {}
    return fingerprint_of(body_json, conversation(body_json), model, key)


def fingerprint_of(
    body_json: Mapping[str, Any], items: Sequence[Any] | None, model: str | None, key: bytes
) -> str:
    """`request_fingerprint` of a body whose conversation (`conversation`) is at hand."""
    turn = _normal(_last_turn(items or []), free_text=True)
    digest = _keyed_hash(key)
    shape = [str(model or body_json.get("model") or ""), turn]
    digest.update(fastjson.dumps_sorted(shape))
    return digest.hexdigest()


_hashers: dict[bytes, Any] = {}


def _keyed_hash(key: bytes) -> Any:
    """A fresh blake2b keyed with `key`: a copy of one made once per key (a keyed init
    costs 5x a copy, on every request). Keys are few: the process's and the data folder's."""
    base = _hashers.get(key)
    if base is None:
        if len(_hashers) >= 8:
            _hashers.clear()
        base = _hashers[key] = hashlib.blake2b(digest_size=16, key=key)
    return base.copy()


_HUMAN_PARTS = frozenset(
    {
        "text",
        "input_text",
        "image",
        "image_url",
        "input_image",
        "document",
        "file",
        "input_file",
        "input_audio",
    }
)


def is_human_turn(body_json: Mapping[str, Any]) -> bool:
    """Whether the request's last message is a person typing (or pasting) to the model.

    True for a user message of text or images; False for tool results, function
    outputs, an assistant prefill, or a body this cannot read. Anthropic Messages,
    OpenAI Chat Completions, Responses (string or item list) and Gemini.
    """
    if type(body_json) is not dict and not isinstance(body_json, Mapping):
        return False
    return human_turn_of(conversation(body_json))


def human_turn_of(items: Sequence[Any] | None) -> bool:
    """`is_human_turn` of a body whose conversation (`conversation`) is at hand."""
    last = None
    for item in reversed(items or ()):  # the last item that is not reasoning
        if not (isinstance(item, dict) and item.get("type") in _SKIPPED_TYPES):
            last = item
            break
    if not isinstance(last, dict):
        return False
    if last.get("role") != "user" or last.get("type", "message") != "message":
        return False
    content = last.get("content", last.get("parts"))
    if isinstance(content, str):
        return bool(content.strip())
    if not isinstance(content, list) or not content:
        return False
    human = False
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind is None:  # Gemini parts: {"text": ...}, {"functionResponse": ...}
            if "functionResponse" in part or "functionCall" in part:
                return False
            human = human or "text" in part or "inlineData" in part or "fileData" in part
        elif kind in _HUMAN_PARTS:
            human = True
        else:  # tool_result, function_call_output, ...
            return False
    return human


# --- detection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Burn:
    """A session's spend rate over the window and where it leads."""

    rate_usd_per_hour: Decimal
    window_usd: Decimal
    spent_usd: Decimal

    @property
    def projected_hour_usd(self) -> Decimal:
        """What the session will have cost an hour from now at this rate."""
        return self.spent_usd + self.rate_usd_per_hour


@dataclass
class _Session:
    last_ts: float
    first_ts: float = 0.0  # the first call's start: the session's age for its rate
    spent: Decimal = ZERO
    # burn rate: (ts, cost) in the window and their sum
    costs: deque[tuple[float, Decimal]] = field(default_factory=lambda: deque(maxlen=4096))
    window_usd: Decimal = ZERO
    fired_levels: set[Decimal] = field(default_factory=set)
    # loops: (ts, fingerprint, cost) in the loop window, with the count per print. A print's
    # cost is summed from `prints` only when it alerts (rare): a running sum per print cost
    # two Decimal operations and a dict write on every call.
    prints: deque[tuple[float, str, Decimal]] = field(default_factory=deque)
    print_count: dict[str, int] = field(default_factory=dict)
    looping: set[str] = field(default_factory=set)
    # A loop alert stands for the session until every looping print has left the window:
    # a loop cycling over several requests (A, B, A, B) is one loop, not one per print.
    loop_quiet_until: float = 0.0
    # unattended stretch since the last human turn
    stretch_start: float = 0.0
    stretch_calls: int = 0
    stretch_usd: Decimal = ZERO
    stretch_alerted: bool = False


class RunawayDetector:
    """Burn rate, loops and unattended sessions over a stream of calls. One thread."""

    def __init__(
        self,
        config: RunawayConfig | None = None,
        advice: Advice | None = None,
        sessions: SessionTable | None = None,
    ) -> None:
        """`sessions`: the table shared with the budgets and routing (one of its own if
        None), which holds each session's state here as its RUNAWAY_PART."""
        config = config or RunawayConfig()
        self._table = (
            sessions if sessions is not None else SessionTable(max_sessions=config.max_sessions)
        )
        self.config = config
        self.advice = advice or Advice()

    @property
    def config(self) -> RunawayConfig:
        return self._config

    @config.setter
    def config(self, config: RunawayConfig) -> None:
        # The table forgets idle sessions for all its owners, after runaway's idle time.
        self._config = config
        self._table.idle_seconds = config.idle_evict_minutes * 60
        # Per config, not per call (a reload sets a new one here).
        self._lowest_level = min(config.projection_usd) if config.projection_usd else None
        # The most loop prints a session keeps: a loop needs only `loop_count` of them.
        self._prints_cap = 4 * config.loop_count + 64

    def _session(self, key: str) -> _Session | None:
        part: _Session | None = self._table.part(key, RUNAWAY_PART)
        return part

    def _new_session(self, key: str, now: float, first_ts: float, stretch_start: float) -> _Session:
        """The session's part, made most recent in the table (and created if absent)."""
        return self._table.own(
            key, RUNAWAY_PART, lambda: _Session(now, first_ts, stretch_start=stretch_start), now
        )

    def observe(
        self,
        call: Call,
        *,
        fingerprint: str | None = None,
        human_turn: bool | None = None,
        key: str | None = None,
    ) -> list[Alert]:
        """Take one finished call; return the alerts it raises.

        `fingerprint` is `request_fingerprint(body)` and `human_turn` is
        `is_human_turn(body)` of its request; leave either out when unknown and that
        detector skips the call. `key`: the call's `session_key`, when the caller has it.
        """
        now = call.ts + call.duration_ms / 1000  # the cost lands when the call ends
        if key is None:
            key = session_key(call.attribution)
        session = self._new_session(key, now, call.ts, call.ts)
        session.last_ts = max(session.last_ts, now)
        cost = call.cost_usd if call.cost_usd is not None and call.cost_usd > 0 else ZERO
        session.spent += cost

        projection = self._projection(session, key, call, now, cost)
        loop = self._loop(session, key, call, now, cost, fingerprint)
        unattended = self._unattended(session, key, call, now, cost, human_turn)
        if projection is None and loop is None and unattended is None:
            return []  # nearly every call
        return [a for a in (projection, loop, unattended) if a is not None]

    def seed(
        self,
        calls: list[tuple[str, float, float, Decimal]],
        alerts: list[tuple[str, str, Decimal, float]],
        now: float,
        prints: Sequence[tuple[str, float, str, Decimal]] = (),
    ) -> None:
        """Go on from the ledger after a restart. `calls`: (session key, start, end, cost),
        oldest first; `alerts`: recent (kind, session key, figure, ts) of burn-rate and loop
        alerts; `prints`: (session key, end, loop fingerprint, cost) of recent calls, oldest
        first. Burn windows, session ages and loop counts are rebuilt from them; a burn
        level or loop already announced is not announced again."""
        window_start = now - self.config.window_minutes * 60
        for key, start, end, cost in calls:
            # No human-turn history in the ledger: the unattended stretch starts now.
            session = self._new_session(key, end, start, now)
            session.last_ts = max(session.last_ts, end)
            cost = max(cost, ZERO)
            session.spent += cost
            if end > window_start:
                session.costs.append((end, cost))
                session.window_usd += cost
        loop_start = now - self.config.loop_window_minutes * 60
        for key, end, fingerprint, cost in prints:
            session = self._session(key)
            if session is None or end <= loop_start:
                continue
            cost = max(cost, ZERO)
            session.prints.append((end, fingerprint, cost))
            count = session.print_count[fingerprint] = session.print_count.get(fingerprint, 0) + 1
            if count >= self.config.loop_count > 0:
                session.looping.add(fingerprint)  # announced before, or within the restart
        for kind, key, figure, ts in alerts:
            session = self._session(key)
            if session is None:
                continue
            if kind == "projection" and ts > window_start:
                # An alert names the highest level it passed; the lower ones fired with it.
                session.fired_levels.update(
                    level for level in self.config.projection_usd if level <= figure
                )
            elif kind == "loop":
                quiet = ts + self.config.loop_window_minutes * 60
                session.loop_quiet_until = max(session.loop_quiet_until, quiet)

    def burn(self, session: str, now: float) -> Burn | None:
        """The session's current burn rate, or None for a session not (or no longer) seen."""
        state = self._session(session)
        if state is None:
            return None
        self._trim_costs(state, now)
        return Burn(self._rate(state, now), state.window_usd, state.spent)

    def __len__(self) -> int:
        """Sessions tracked here (a walk over the table: for tests and diagnostics)."""
        return sum(1 for key in self._table.by_recency() if self._session(key) is not None)

    # burn rate

    def _rate(self, session: _Session, now: float) -> Decimal:
        return burn_rate(session.window_usd, session.first_ts, now, self.config.window_minutes * 60)

    def _evident(self, session: _Session, now: float, level: Decimal) -> bool:
        """The minimum evidence for a rate: a session at least `MIN_RATE_SECONDS` old, whose
        rate passes `level` without the window's largest call too, so a first quick call
        or one expensive call (a big prompt, a long answer) never pages."""
        if now - session.first_ts < MIN_RATE_SECONDS:
            return False
        largest = max(cost for _, cost in session.costs)
        rest = burn_rate(
            session.window_usd - largest, session.first_ts, now, self.config.window_minutes * 60
        )
        return rest >= level

    def _trim_costs(self, session: _Session, now: float) -> None:
        cutoff = now - self.config.window_minutes * 60
        while session.costs and session.costs[0][0] <= cutoff:
            session.window_usd -= session.costs.popleft()[1]

    def _projection(
        self, session: _Session, key: str, call: Call, now: float, cost: Decimal
    ) -> Alert | None:
        cfg = self.config
        self._trim_costs(session, now)
        if session.fired_levels:  # nothing to re-arm otherwise: skip the Decimal work
            rate = self._rate(session, now)
            # Hysteresis: a level fired before re-arms once the rate has fallen well below it.
            session.fired_levels = {
                lvl for lvl in session.fired_levels if rate >= lvl * cfg.rearm_ratio
            }
        if len(session.costs) == session.costs.maxlen:
            session.window_usd -= session.costs[0][1]
        session.costs.append((now, cost))
        session.window_usd += cost
        lowest = self._lowest_level
        if len(session.costs) < cfg.min_calls or lowest is None:
            return None
        # The rate is at most the window's spend over MIN_RATE_SECONDS: below the lowest
        # level by more than Decimal's rounding, no level can fire, and the division (the
        # dearest step here, on every call) is skipped.
        if session.window_usd * _RATE_BOUND < lowest:
            return None
        rate = self._rate(session, now)
        fired = session.fired_levels
        levels = [lvl for lvl in cfg.projection_usd if lvl <= rate and lvl not in fired]
        if not levels:
            return None
        levels = [lvl for lvl in levels if self._evident(session, now, lvl)]
        if not levels:
            return None
        session.fired_levels.update(levels)
        burn = Burn(rate, session.window_usd, session.spent)
        span = min(cfg.window_minutes * 60, max(now - session.first_ts, MIN_RATE_SECONDS))
        message = (
            f"{self.advice.who(call.attribution)} is burning {format_usd(rate)}/hour "
            f"({format_usd(burn.window_usd)} in the last {_span(span)}, "
            f"{format_usd(burn.spent_usd)} so far): at this rate it passes "
            f"{format_usd(burn.projected_hour_usd)} within the hour."
        )
        message = fit(message, self.advice.stop_action(call.attribution))
        return _alert(call, "projection", key, levels[-1], message)

    # loops

    def _loop(
        self,
        session: _Session,
        key: str,
        call: Call,
        now: float,
        cost: Decimal,
        fingerprint: str | None,
    ) -> Alert | None:
        cfg = self.config
        if fingerprint is None or cfg.loop_count == 0:
            return None
        prints, counts = session.prints, session.print_count
        cutoff = now - cfg.loop_window_minutes * 60
        cap = self._prints_cap
        while prints and (prints[0][0] <= cutoff or len(prints) >= cap):
            # The oldest print leaves the window (once full, one on nearly every call).
            old = prints.popleft()[1]
            left = counts[old] - 1
            if left:
                counts[old] = left
            else:
                # Gone from the window: the loop is over; the same print may alert again.
                del counts[old]
                session.looping.discard(old)
        prints.append((now, fingerprint, cost))
        count = counts[fingerprint] = counts.get(fingerprint, 0) + 1
        if count < cfg.loop_count or fingerprint in session.looping:
            return None
        session.looping.add(fingerprint)
        if session.loop_quiet_until > now or len(session.looping) > 1:
            return None  # the same loop, cycling over another request: already said
        usd = sum((c for _, fp, c in prints if fp == fingerprint), ZERO)
        message = (
            f"{self.advice.who(call.attribution)} sent {count} near-identical "
            f"requests in {_minutes(cfg.loop_window_minutes)} min ({format_usd(usd)}): it may "
            "be stuck in a loop."
        )
        message = fit(message, self.advice.stop_action(call.attribution))
        return _alert(call, "loop", key, usd, message)

    # unattended sessions

    def _unattended(
        self,
        session: _Session,
        key: str,
        call: Call,
        now: float,
        cost: Decimal,
        human_turn: bool | None,
    ) -> Alert | None:
        cfg = self.config
        if human_turn is None:
            return None
        if human_turn:
            session.stretch_start, session.stretch_calls = call.ts, 0
            session.stretch_usd, session.stretch_alerted = ZERO, False
        session.stretch_calls += 1
        session.stretch_usd += cost
        if session.stretch_alerted:
            return None
        minutes = (now - session.stretch_start) / 60
        too_long = cfg.long_running_minutes > 0 and minutes >= cfg.long_running_minutes
        too_many = cfg.long_running_calls > 0 and session.stretch_calls >= cfg.long_running_calls
        if not (too_long or too_many):
            return None
        session.stretch_alerted = True
        message = (
            f"{self.advice.who(call.attribution)} has run {minutes:.0f} min and "
            f"{session.stretch_calls} calls ({format_usd(session.stretch_usd)}) with no human "
            "turn. Check it is doing what you meant."
        )
        message = fit(message, self.advice.stop_action(call.attribution))
        return _alert(call, "long_running", key, session.stretch_usd, message)


def _minutes(value: float) -> str:
    return f"{value:g}"


def _span(seconds: float) -> str:
    """`10 min`, `90 s`: the span a rate was taken over."""
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _alert(call: Call, kind: AlertKind, key: str, figure: Decimal, message: str) -> Alert:
    a = call.attribution
    return Alert(
        call.ts,
        kind,
        "session",
        key,
        figure,
        message,
        a.tool,
        a.repo,
        a.session,
    )
