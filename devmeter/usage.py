"""The records every other module speaks: what a call used, and the call itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal


@dataclass(frozen=True)
class Usage:
    """Token counts for one call, in the ledger's meaning (see DESIGN.md).

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

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def with_estimate(self, **counts: int) -> Usage:
        return replace(self, estimated=True, **counts)


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

    @property
    def saving_usd(self) -> Decimal | None:
        """Saved by routing (routed) or what routing would have saved (shadow)."""
        if self.cost_usd is None or self.alt_cost_usd is None:
            return None
        if self.routing == "routed":
            return self.alt_cost_usd - self.cost_usd
        if self.routing == "shadow":
            return self.cost_usd - self.alt_cost_usd
        return None

    @property
    def estimated(self) -> bool:
        return self.usage.estimated
