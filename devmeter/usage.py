"""The records every other module speaks: what a call used, and the call itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal
from typing import Any

# The largest count one call may record in any token field. The largest context window
# on sale is 10M tokens, so no real call comes within 10x of this; what lies beyond it
# (1e30, 2**63 - 1, a hostile upstream) is not a count at all. Kept well inside SQLite's
# 64-bit integers, so even millions of such rows still sum without overflowing.
MAX_TOKENS = 100_000_000
# The most one call may cost. The dearest call today (a full context window at the
# dearest list price) costs well under $100; a cost past this is a price typo
# (`input_mtok = 1e12`) or a hostile `usage.cost`. In pico-dollars it is 1e16, a
# thousandth of SQLite's largest integer, so sums over a ledger of them stay exact.
MAX_COST_USD = Decimal(10_000)
# What `providers.base.as_int` gives for NaN and infinities, so the check below can say
# what the wire sent instead of quietly reading it as 0.
NOT_A_NUMBER = -(2**64)

_COUNT_FIELDS = (
    "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "output_tokens", "reasoning_tokens", "web_search_requests",
)  # fmt: skip


@dataclass(frozen=True)
class Usage:
    """Token counts for one call, as the ledger records them.

    `input_tokens` excludes cache reads and writes (Anthropic's meaning);
    `output_tokens` includes reasoning; `reasoning_tokens` is a breakdown of it.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # The part of cache_write_tokens written with a 1 hour TTL (the rest is 5 minutes).
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    # Billing tier the provider reports it served ("priority", "flex", "batch", ...).
    service_tier: str | None = None
    # A cost the provider reports itself (OpenRouter's usage.cost), in USD.
    reported_cost_usd: Decimal | None = None
    # True when some counts were estimated with tiktoken rather than reported.
    estimated: bool = False
    # The parts of input and output in other modalities, as genai-prices usage keys
    # (input_audio_tokens, output_audio_tokens, input_image_tokens, ...): counted in
    # input_tokens / output_tokens above, and priced at their own rates.
    modality_tokens: tuple[tuple[str, int], ...] = ()

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def with_estimate(self, **counts: int) -> Usage:
        return replace(self, estimated=True, **counts)


def checked_usage(usage: Usage) -> tuple[Usage, list[str]]:
    """`usage` with every impossible number taken out, and what was wrong with each.

    A count that is negative, not a number or above MAX_TOKENS is recorded as 0: a
    negative count would lower day and month totals (and so loosen caps), a huge one
    would overflow the ledger, and neither says anything true about the call. A reported
    cost (OpenRouter's `usage.cost`) that is negative, not finite or above MAX_COST_USD
    is dropped, so the call is priced from list prices instead.
    """
    problems: list[str] = []
    changes: dict[str, object] = {}
    for name in _COUNT_FIELDS:
        value = getattr(usage, name)
        if type(value) is int and 0 <= value <= MAX_TOKENS:
            continue
        if value == NOT_A_NUMBER:
            problems.append(f"usage.{name} is not a number (NaN or infinite): recorded as 0")
        else:
            problems.append(f"usage.{name}={value} out of range: recorded as 0")
        changes[name] = 0
    cost = usage.reported_cost_usd
    if cost is not None and not sane_cost(cost):
        problems.append(f"usage.cost={cost} out of range: priced from list prices")
        changes["reported_cost_usd"] = None
    if not changes:
        return usage, problems
    return replace(usage, **changes), problems  # type: ignore[arg-type]


def sane_cost(cost: Decimal) -> bool:
    """A cost one call can really have: finite, not negative, at most MAX_COST_USD."""
    return cost.is_finite() and 0 <= cost <= MAX_COST_USD


@dataclass(frozen=True)
class RequestInfo:
    """What the client asked for, read from the request without keeping its text."""

    model: str | None = None
    stream: bool = False
    # Estimated prompt tokens, used when the response reports no usage: read it with
    # prompt_tokens(), which works it out on first use.
    prompt_tokens_estimate: int | None = None
    # Free-form facts a parser found (e.g. Claude Code's working directory).
    facts: dict[str, str] = field(default_factory=dict)
    # Works the estimate out when first asked: nearly every response reports its usage,
    # and estimating a large prompt (tiktoken over 200k characters) takes milliseconds.
    prompt_estimator: Callable[[], int | None] | None = field(
        default=None, repr=False, compare=False
    )

    def prompt_tokens(self) -> int | None:
        """The estimated prompt tokens, or None when the request could not be read."""
        estimator = self.prompt_estimator
        if self.prompt_tokens_estimate is None and estimator is not None:
            # Filled in once, from the body this record was built from.
            object.__setattr__(self, "prompt_estimator", None)
            object.__setattr__(self, "prompt_tokens_estimate", estimator())
        return self.prompt_tokens_estimate


@dataclass(frozen=True)
class ResponseResult:
    """What a response parser concluded once the response ended."""

    usage: Usage | None
    model: str | None = None
    # False when the stream ended before its terminal event (client or upstream hung up).
    complete: bool = True
    # Output text length seen so far, in characters, for estimating when usage is missing.
    output_chars: int = 0
    # The text itself, only kept to estimate tokens; never written to disk.
    output_text: str = ""
    error: str | None = None
    # The provider's id for this response (Anthropic `msg_…`, Responses `resp_…`): what a
    # tool's own transcript names it by, so an import can tell it was metered live.
    response_id: str | None = None


@dataclass(frozen=True)
class Attribution:
    """Who made a call: the tool, its session, and the git repo it worked in."""

    tool: str = "unknown"
    session: str | None = None
    repo: str | None = None  # git top level, absolute path
    branch: str | None = None
    # How repo was found: "claude-env", "process", "explicit", or None when unattributed.
    repo_source: str | None = None
    pid: int | None = None
    # False when a repo lookup had not answered in time (a slow filesystem, a loaded
    # machine): repo and branch may be missing or only the working directory, so the
    # proxy asks again when the call ends. Not part of what the attribution is.
    settled: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class Call:
    """One metered call: one ledger row."""

    ts: float  # unix seconds when the request arrived
    provider: str  # genai-prices provider id: anthropic, openai, google, openrouter, ...
    endpoint: str  # wire format: anthropic.messages, openai.chat, openai.responses, ...
    host: str
    requested_model: str | None
    model: str | None
    attribution: Attribution
    usage: Usage
    cost_usd: Decimal | None  # None when the model has no known price
    price_source: str | None  # which price data priced it, e.g. "genai-prices 0.2.3"
    status: int | None  # HTTP status, or None when the upstream never answered
    duration_ms: int = 0
    complete: bool = True
    error: str | None = None
    # Model routing: "routed" (sent to route_target), "shadow" (would have been),
    # "fallback" (routed, refused, re-sent as requested), or None.
    routing: str | None = None
    route_rule: str | None = None
    route_target: str | None = None
    # The other side of the trade: routed/fallback, the cost at the requested model;
    # shadow, the cost at the target model.
    alt_cost_usd: Decimal | None = None
    route_note: str | None = None  # what the rewrite changed, or why a rule did not apply
    # The provider's response id (see ResponseResult.response_id), live or imported.
    response_id: str | None = None
    # None for a call the proxy metered; "import" for one read from a tool's own records.
    source: str | None = None
    # An imported row's identity across imports (devmeter/importers/): unique in the ledger.
    import_key: str | None = None
    # Who pays (devmeter/billing.py): subscription, api, overage or unknown; the account is
    # a salted fingerprint of the credential, never the credential.
    billing: str = "unknown"
    account: str | None = None
    # The request's loop fingerprint (runaway.request_fingerprint, a keyed hash, no text):
    # kept so a restarted proxy goes on counting a loop where it was.
    loop_fingerprint: str | None = None
    # A request devmeter refused: the cap's scope ("session", "repo", "day", "month") or
    # "pause" / "stop" / "ask" / "secret", its key, and the cap, as data for the tray and
    # reports (no reading them back out of the message).
    refused_scope: str | None = None
    refused_key: str | None = None
    refused_cap_usd: Decimal | None = None

    @property
    def estimated(self) -> bool:
        return self.usage.estimated


_CALL_FIELDS = frozenset(f.name for f in fields(Call))
_CALL_DEFAULTS = {f.name: f.default for f in fields(Call) if f.default is not MISSING}


def new_call(**values: Any) -> Call:
    """`Call(**values)` for the proxy's hot path: the row's defaults with `values` over
    them, ~1.4 us where the frozen dataclass's 30-field __init__ (an object.__setattr__
    a field) costs ~3 us, on every call. Exact for Call (no __post_init__, no
    default_factory). A call that names a field Call lacks, or leaves out one without a
    default, gets __init__'s TypeError."""
    call = object.__new__(Call)
    state = call.__dict__
    state.update(_CALL_DEFAULTS)
    state.update(values)
    # Only known names (~0.1 us, as `amended` checks) and then every field present.
    if len(state) != len(_CALL_FIELDS) or not _CALL_FIELDS.issuperset(values):
        return Call(**values)  # raises the TypeError __init__ would
    return call


def amended(call: Call, changes: Mapping[str, Any]) -> Call:
    """`dataclasses.replace(call, **changes)` for the proxy's hot path: a copy of the
    row's fields with `changes` over them, ~1 us where replace re-runs the 30-field
    __init__ (~12 us), on every call. Exact for Call, which derives nothing at __init__
    (no __post_init__, no defaults computed from other fields)."""
    if not _CALL_FIELDS.issuperset(changes):  # ~0.1 us; the set difference built ~0.4 us
        unknown = changes.keys() - _CALL_FIELDS
        raise TypeError(f"Call has no field {', '.join(sorted(unknown))}")
    copy = object.__new__(Call)
    copy.__dict__.update(call.__dict__)
    copy.__dict__.update(changes)
    return copy
