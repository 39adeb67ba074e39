"""Routing decisions: given a request's context and the rules, route it, shadow it, or leave it.

Pure: `decide` takes a `RouteContext` (built from the request, never its text) and
returns a `RouteDecision` saying which rule matched and, when it was not applied,
why (the rewrite would not be safe, or a warm prompt cache makes it not pay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from devmeter import model_limits, pricing
from devmeter.routing.rules import REWRITABLE_ENDPOINTS, Applied, RoutingConfig, is_api_id
from devmeter.usage import Usage

if TYPE_CHECKING:
    from devmeter.tokens import PromptSize

# Prompt cache lifetimes (Anthropic: 5 minutes by default, 1 hour on request).
TTL_5M = 300
TTL_1H = 3600

# Prices a model's usage in USD; None when the model has no price. Swap in
# devmeter.pricing (with the user's overrides) by passing another function.
Pricer = Callable[[str, str, Usage], "Decimal | None"]


@dataclass(frozen=True)
class CacheState:
    """A session's prompt cache on one model, as its last call left it.

    The proxy keeps one per (session, model), updated with `next_cache_state` from
    every call's usage, and passes a session's states to `RouteContext`.
    """

    read_tokens: int  # read from the cache by the last call
    write_tokens: int  # written to it by the last call
    at: float  # unix seconds of that call
    ttl_seconds: int = TTL_5M

    @property
    def cached_tokens(self) -> int:
        """The prompt prefix the cache holds after that call."""
        return self.read_tokens + self.write_tokens

    def warm(self, now: float) -> bool:
        return now - self.at < self.ttl_seconds


def next_cache_state(prev: CacheState | None, usage: Usage, now: float) -> CacheState | None:
    """The cache state after a call with `usage`; a call that used no cache changes nothing."""
    if not usage.cache_read_tokens and not usage.cache_write_tokens:
        return prev
    if usage.cache_write_1h_tokens:
        ttl = TTL_1H
    elif prev is not None and usage.cache_write_tokens == 0:
        ttl = prev.ttl_seconds  # a read refreshes the entry at its own lifetime
    else:
        ttl = TTL_5M
    return CacheState(usage.cache_read_tokens, usage.cache_write_tokens, now, ttl)


@dataclass(frozen=True, kw_only=True)
class RouteContext:
    """What `decide` knows about one request. Build it from the request, never its text."""

    provider: str  # genai-prices provider id the request goes to
    endpoint: str  # wire format: anthropic.messages, openai.chat, openai.responses, ...
    requested_model: str | None
    tool: str | None = None  # Attribution.tool
    # Claude Code's x-claude-code-request-class, or Codex's request_kind.
    request_class: str | None = None
    repo: str | None = None
    prompt_tokens: int | None = None  # estimate of the whole prompt, when known up front
    # Else the prompt, sized only as far as a rule asks (`prompt_at_most`, `prompt_estimate`).
    prompt_size: PromptSize | None = None
    max_tokens: int | None = None  # the output limit the request asks for
    uses_tools: bool = False
    uses_images: bool = False
    uses_thinking: bool = False  # extended thinking / reasoning asked for
    session_spend_usd: Decimal | None = None
    # This session's prompt caches, by model name as sent.
    cache_states: Mapping[str, CacheState] = field(default_factory=dict)
    now: float  # unix seconds, for cache lifetimes
    # Output the call is expected to produce (e.g. the session's average); 0 prices input only.
    expected_output_tokens: int = 0

    def prompt_estimate(self) -> int | None:
        """The prompt's estimated tokens; None when the request could not be read."""
        if self.prompt_tokens is not None or self.prompt_size is None:
            return self.prompt_tokens
        return self.prompt_size.exact()

    def prompt_at_most(self, limit: int) -> bool | None:
        """Whether the prompt is at most `limit` tokens, worked out only as far as that
        needs; None when it is unknown."""
        if self.prompt_tokens is not None or self.prompt_size is None:
            return None if self.prompt_tokens is None else self.prompt_tokens <= limit
        return self.prompt_size.at_most(limit)


@dataclass(frozen=True)
class CacheChoice:
    """The trade a rewrite makes on one call, priced at list prices.

    saving_usd: what the target model saves over the requested one on identical
    usage (the requested model's cache state). cache_loss_usd: what the target pays
    extra because its own cache is colder (negative when it is warmer). The rewrite
    pays when the saving beats the loss, i.e. switch_cost_usd < stay_cost_usd.
    """

    switch: bool
    saving_usd: Decimal
    cache_loss_usd: Decimal
    stay_cost_usd: Decimal  # the requested model, with the cache it would read
    switch_cost_usd: Decimal  # the target model, re-writing what its cache lacks


@dataclass(frozen=True)
class RouteDecision:
    rule: str | None = None  # the first rule that matched, applied or not
    target: str | None = None  # the model to send (routed) or that would be sent (shadow)
    applied: Applied | None = None
    reason: str | None = None  # why a matching rule was not applied
    cache: CacheChoice | None = None

    @property
    def rewrite(self) -> bool:
        """Whether the proxy should rewrite the request (`adapt_request`) and send it."""
        return self.applied == "routed"


def decide(config: RoutingConfig, ctx: RouteContext, pricer: Pricer | None = None) -> RouteDecision:
    """The first matching rule, and whether its rewrite is safe and pays on this call."""
    if config.mode == "off":
        return RouteDecision()
    rule = next((r for r in config.rules if r.matches(ctx)), None)
    if rule is None:
        return RouteDecision()
    reason = unsafe_reason(ctx, rule.to)
    if reason is not None:
        return RouteDecision(rule=rule.name, reason=reason)
    prompt_tokens = ctx.prompt_estimate()
    assert ctx.requested_model is not None and prompt_tokens is not None
    choice = cache_aware_choice(
        ctx.provider,
        ctx.requested_model,
        rule.to,
        prompt_tokens,
        requested_cache=ctx.cache_states.get(ctx.requested_model),
        target_cache=ctx.cache_states.get(rule.to),
        now=ctx.now,
        expected_output_tokens=ctx.expected_output_tokens,
        pricer=pricer,
    )
    if choice is None:
        return RouteDecision(
            rule=rule.name,
            reason=f"no price for {ctx.requested_model} or {rule.to} at {ctx.provider}, "
            "so no saving to show",
        )
    if not choice.switch:
        return RouteDecision(rule=rule.name, reason=_why_stay(ctx, rule.to, choice), cache=choice)
    applied: Applied = "routed" if config.mode == "on" else "shadow"
    return RouteDecision(rule=rule.name, target=rule.to, applied=applied, cache=choice)


def unsafe_reason(ctx: RouteContext, target: str) -> str | None:
    """Why sending this request to `target` could break it, or None when it is safe."""
    requested = ctx.requested_model
    if requested is None:
        return "the request names no model"
    if _same_model(ctx.provider, requested, target):
        return f"already on {target}"
    if ctx.endpoint not in REWRITABLE_ENDPOINTS:
        return (
            f"{ctx.endpoint} requests are not rewritten (the model is not a body field); "
            f"only {', '.join(REWRITABLE_ENDPOINTS)} are"
        )
    if not model_limits.natively_priced(ctx.provider, target):
        return f"{target} has no price at {ctx.provider}; routing never crosses providers"
    canonical = model_limits.canonical_id(ctx.provider, target) or target
    if not is_api_id(target, canonical):
        return f"{ctx.provider} calls {target} {canonical}; a rule for it must use that id"
    limits = model_limits.model_limits(ctx.provider, target)
    if limits is None:
        return f"devmeter does not know {target}'s context and output limits"
    within_input = ctx.prompt_at_most(limits.max_input_tokens)
    if within_input is None:
        return f"no prompt token estimate to check against {target}'s context window"
    if not within_input:
        return (
            f"the prompt (~{ctx.prompt_estimate()} tokens) is over {target}'s "
            f"{limits.max_input_tokens} input tokens"
        )
    if ctx.max_tokens is not None and ctx.max_tokens > limits.max_output_tokens:
        return (
            f"max_tokens {ctx.max_tokens} is over {target}'s output limit of "
            f"{limits.max_output_tokens}"
        )
    if not ctx.prompt_at_most(limits.context_window - (ctx.max_tokens or 0)):
        return (
            f"the prompt (~{ctx.prompt_estimate()} tokens) plus max_tokens {ctx.max_tokens} "
            f"is over {target}'s context window of {limits.context_window}"
        )
    return None


def cache_aware_choice(
    provider: str,
    requested_model: str,
    target_model: str,
    prompt_tokens: int,
    *,
    requested_cache: CacheState | None = None,
    target_cache: CacheState | None = None,
    now: float,
    expected_output_tokens: int = 0,
    pricer: Pricer | None = None,
) -> CacheChoice | None:
    """Whether switching this call to `target_model` pays, given both models' prompt caches.

    A session with no cache state on either model is priced without caching
    (prompt tokens at the input rate). Otherwise each side reads what its warm cache
    holds and writes the rest, at the cache's lifetime. None when either model is
    unpriced.
    """
    price_of = pricer or genai_price
    caching = requested_cache is not None or target_cache is not None
    ttl = (requested_cache or target_cache or CacheState(0, 0, 0)).ttl_seconds
    stay = _projected(
        prompt_tokens, _warm_tokens(requested_cache, now), expected_output_tokens, ttl, caching
    )
    switch = _projected(
        prompt_tokens, _warm_tokens(target_cache, now), expected_output_tokens, ttl, caching
    )
    stay_cost = price_of(provider, requested_model, stay)
    target_same = price_of(provider, target_model, stay)
    switch_cost = price_of(provider, target_model, switch)
    if stay_cost is None or target_same is None or switch_cost is None:
        return None
    return CacheChoice(
        switch=switch_cost < stay_cost,
        saving_usd=stay_cost - target_same,
        cache_loss_usd=switch_cost - target_same,
        stay_cost_usd=stay_cost,
        switch_cost_usd=switch_cost,
    )


def _projected(prompt: int, cached: int, output: int, ttl: int, caching: bool) -> Usage:
    if not caching:
        return Usage(input_tokens=prompt, output_tokens=output)
    cached = min(cached, prompt)
    written = prompt - cached
    return Usage(
        cache_read_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=written if ttl >= TTL_1H else 0,
        output_tokens=output,
    )


def _warm_tokens(state: CacheState | None, now: float) -> int:
    return state.cached_tokens if state is not None and state.warm(now) else 0


def _why_stay(ctx: RouteContext, target: str, choice: CacheChoice) -> str:
    if choice.cache_loss_usd > 0:
        state = ctx.cache_states.get(ctx.requested_model or "")
        held = f" ({state.cached_tokens} tokens)" if state is not None else ""
        return (
            f"{ctx.requested_model}'s prompt cache is warm{held}: {target} would save "
            f"{_usd(choice.saving_usd)} on this call but re-writing its cache costs "
            f"{_usd(choice.cache_loss_usd)}"
        )
    return (
        f"{target} is not cheaper than {ctx.requested_model} for this call "
        f"({_usd(choice.switch_cost_usd)} vs {_usd(choice.stay_cost_usd)})"
    )


def _same_model(provider: str, a: str, b: str) -> bool:
    if a.lower() == b.lower():
        return True
    ids = model_limits.canonical_id(provider, a), model_limits.canonical_id(provider, b)
    return ids[0] is not None and ids[0] == ids[1]


def _usd(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.000001'))}"


# -------------------------------------------------------------------------- savings


def genai_price(provider: str, model: str, usage: Usage) -> Decimal | None:
    """List price of `usage` on `model` at `provider` from genai-prices; None if unpriced.

    The default Pricer. The proxy passes one with the user's overrides applied.
    """
    return pricing.list_price(provider, model, usage)
