"""Model routing: rules that send a request to a cheaper model, and what that saves.

Everything here is pure: the proxy builds a `RouteContext` from a request, asks
`decide` what to do, calls `adapt_request` to rewrite the body and headers when
the answer is "routed", and asks `should_fallback` whether a failed rewritten
request deserves one retry with the original model. Nothing here does I/O.

    [routing]
    mode = "shadow"                      # off | shadow | on
    enable = ["claude-code-background-to-haiku"]

    [[routing.rules]]
    name = "opus-over-budget"
    provider = "anthropic"
    model = "claude-opus-*"
    session_spend_over_usd = 20
    to = "claude-sonnet-5-5"

Rules are tried in order (the file's rules, then the enabled built-ins in the
order `enable` names them); the first rule whose conditions all hold decides. A
matching rule still leaves the request alone when the rewrite would not be safe
(another provider or wire format, a prompt that would not fit, a max_tokens the
target cannot produce, unknown limits) or would not pay (a warm prompt cache worth
more than the saving); the decision then says why. In shadow mode nothing is
rewritten, but the decision names the model a rewrite would have used, so the
ledger can show what routing would save.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from difflib import get_close_matches
from typing import Any, Literal

from genai_prices import data_snapshot

from devmeter import model_limits, pricing
from devmeter.config_error import ConfigError
from devmeter.model_limits import EFFORT_ORDER, ModelSpec
from devmeter.usage import Usage

MODES = ("off", "shadow", "on")
Mode = Literal["off", "shadow", "on"]
Applied = Literal["routed", "shadow"]

# Wire formats whose model is a field of the JSON body. Gemini, Bedrock and Vertex
# name the model in the URL path, which a body rewrite cannot change.
REWRITABLE_ENDPOINTS = ("anthropic.messages", "openai.chat", "openai.responses")

# Request classes a rule may name. Claude Code sends x-claude-code-request-class:
# main (a turn of the main conversation), subagent, workflow, compaction (the
# summarising request), auxiliary (side requests: session titles, classifiers,
# summaries). Codex CLI's x-codex-turn-metadata carries request_kind: turn,
# prewarm, compaction, review, memory.
REQUEST_CLASSES = (
    "main",
    "subagent",
    "workflow",
    "compaction",
    "auxiliary",
    "turn",
    "prewarm",
    "review",
    "memory",
)

# Prompt cache lifetimes (Anthropic: 5 minutes by default, 1 hour on request).
TTL_5M = 300
TTL_1H = 3600

# Prices a model's usage in USD; None when the model has no price. Swap in
# devmeter.pricing (with the user's overrides) by passing another function.
Pricer = Callable[[str, str, Usage], "Decimal | None"]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Rule:
    """One `[[routing.rules]]` entry: conditions (all must hold) and a target model."""

    name: str
    to: str
    tools: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # globs on the requested model
    request_classes: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()  # globs on the repo path
    max_prompt_tokens: int | None = None
    min_prompt_tokens: int | None = None
    uses_tools: bool | None = None
    uses_images: bool | None = None
    uses_thinking: bool | None = None
    session_spend_over_usd: Decimal | None = None

    def matches(self, ctx: RouteContext) -> bool:
        # One `and` chain, so the first condition that fails stops the rest (the globs
        # included); every condition is a pure test, so the answer is the same.
        return (
            (not self.tools or ctx.tool in self.tools)
            and (not self.providers or ctx.provider in self.providers)
            and (not self.models or _glob_any(ctx.requested_model, self.models, fold=True))
            and (not self.request_classes or ctx.request_class in self.request_classes)
            and (not self.repos or _glob_any(ctx.repo, self.repos))
            and (
                self.max_prompt_tokens is None
                or (ctx.prompt_tokens is not None and ctx.prompt_tokens <= self.max_prompt_tokens)
            )
            and (
                self.min_prompt_tokens is None
                or (ctx.prompt_tokens is not None and ctx.prompt_tokens >= self.min_prompt_tokens)
            )
            and (self.uses_tools is None or ctx.uses_tools == self.uses_tools)
            and (self.uses_images is None or ctx.uses_images == self.uses_images)
            and (self.uses_thinking is None or ctx.uses_thinking == self.uses_thinking)
            and (
                self.session_spend_over_usd is None
                or (
                    ctx.session_spend_usd is not None
                    and ctx.session_spend_usd > self.session_spend_over_usd
                )
            )
        )


@dataclass(frozen=True)
class RoutingConfig:
    mode: Mode = "shadow"
    rules: tuple[Rule, ...] = ()  # in the order they are tried
    enabled: tuple[str, ...] = ()  # built-in rules switched on, by name


# Built-in rules, off until `enable` names them. Written as config so they are
# validated exactly like the user's rules.
BUILTIN_RULES: dict[str, dict[str, Any]] = {
    # Claude Code's side requests (titles, classifiers, summaries) to the small tier.
    "claude-code-background-to-haiku": {
        "provider": "anthropic",
        "model": "claude-*",
        "request_class": "auxiliary",
        "to": "claude-haiku-5-5",
    },
    # Short one-shot text requests (summarise, format, classify) on a GPT-6 flagship.
    "small-format-to-mini": {
        "provider": "openai",
        "model": ["gpt-6-*", "gpt-6.*"],
        "uses_tools": False,
        "uses_images": False,
        "max_prompt_tokens": 4000,
        "to": "gpt-6-luna",
    },
    # Budget state: once a session has spent $20, Opus turns go to Sonnet.
    "opus-over-20-usd-to-sonnet": {
        "provider": "anthropic",
        "model": "claude-opus-*",
        "session_spend_over_usd": 20,
        "to": "claude-sonnet-5-5",
    },
}

_SECTION_KEYS = ("mode", "enable", "rules")
_RULE_KEYS = (
    "name",
    "to",
    "tool",
    "provider",
    "model",
    "request_class",
    "repo",
    "max_prompt_tokens",
    "min_prompt_tokens",
    "uses_tools",
    "uses_images",
    "uses_thinking",
    "session_spend_over_usd",
)


def parse_routing(table: dict[str, Any]) -> RoutingConfig:
    """Validate the `[routing]` table; a ConfigError names the dotted key at fault."""
    _only_keys("routing", table, _SECTION_KEYS)
    mode = table.get("mode", "shadow")
    if mode not in MODES:
        raise ConfigError("routing.mode", f"must be one of {_quoted(MODES)}, got {mode!r}")
    enable = table.get("enable", [])
    if not isinstance(enable, list) or not all(isinstance(name, str) for name in enable):
        raise ConfigError(
            "routing.enable", f"must be a list of built-in rule names: {_quoted(BUILTIN_RULES)}"
        )
    raw_rules = table.get("rules", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise ConfigError("routing.rules", "must be an array of tables: [[routing.rules]]")

    rules: list[Rule] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _parse_rule(raw, f"routing.rules[{i}]")
        if rule.name in names:
            raise ConfigError(f"routing.rules[{i}].name", f"{rule.name!r} names two rules")
        names.add(rule.name)
        rules.append(rule)
    for i, name in enumerate(enable):
        key = f"routing.enable[{i}]"
        if name not in BUILTIN_RULES:
            raise ConfigError(
                key, f"no built-in rule {name!r}; built-in rules are {_quoted(BUILTIN_RULES)}"
            )
        if name in names:
            raise ConfigError(key, f"{name!r} is enabled twice or also names a rule of yours")
        names.add(name)
        rules.append(_parse_rule({"name": name, **BUILTIN_RULES[name]}, key))
    return RoutingConfig(mode=mode, rules=tuple(rules), enabled=tuple(enable))


def _parse_rule(raw: dict[str, Any], key: str) -> Rule:
    _only_keys(key, raw, _RULE_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}.name", "every rule needs a name (a non-empty string)")
    providers = tuple(_provider_id(p, f"{key}.provider") for p in _strings(raw, "provider", key))
    request_classes = _strings(raw, "request_class", key)
    for value in request_classes:
        if value not in REQUEST_CLASSES:
            raise ConfigError(
                f"{key}.request_class",
                f"unknown request class {value!r}; valid values are {_quoted(REQUEST_CLASSES)}",
            )
    max_prompt = _count(raw, "max_prompt_tokens", key)
    min_prompt = _count(raw, "min_prompt_tokens", key)
    if max_prompt is not None and min_prompt is not None and min_prompt > max_prompt:
        raise ConfigError(f"{key}.min_prompt_tokens", "is larger than max_prompt_tokens")
    spend = raw.get("session_spend_over_usd")
    if spend is not None and (
        isinstance(spend, bool) or not isinstance(spend, int | float) or spend < 0
    ):
        raise ConfigError(
            f"{key}.session_spend_over_usd", "must be a number of US dollars, e.g. 20"
        )
    return Rule(
        name=name,
        to=_target(raw.get("to"), providers, f"{key}.to"),
        tools=_strings(raw, "tool", key),
        providers=providers,
        models=tuple(m.lower() for m in _strings(raw, "model", key)),
        request_classes=request_classes,
        repos=tuple(os.path.expanduser(r) for r in _strings(raw, "repo", key)),
        max_prompt_tokens=max_prompt,
        min_prompt_tokens=min_prompt,
        uses_tools=_flag(raw, "uses_tools", key),
        uses_images=_flag(raw, "uses_images", key),
        uses_thinking=_flag(raw, "uses_thinking", key),
        session_spend_over_usd=None if spend is None else Decimal(str(spend)),
    )


def _target(value: Any, providers: tuple[str, ...], key: str) -> str:
    """The `to` model, which genai-prices must price at every provider the rule names.

    Without `provider` on the rule, some provider must price it; `decide` then only
    rewrites requests going to a provider that does.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, 'every rule needs a target model, e.g. to = "claude-haiku-5-5"')
    for provider in providers:
        if not model_limits.natively_priced(provider, value):
            raise ConfigError(
                key,
                f"genai-prices has no price for {value!r} at {provider}{_suggest(value, provider)}"
                "; routing never rewrites across providers",
            )
    where = providers or tuple(
        p.id for p in _provider_list() if model_limits.natively_priced(p.id, value)
    )
    if not where:
        raise ConfigError(key, f"genai-prices has no price for {value!r}{_suggest(value, None)}")
    # genai-prices also matches loose spellings ("claude-haiku-5.5"); the API takes only its id.
    canonical = [model_limits.canonical_id(provider, value) or value for provider in where]
    if not any(_is_api_id(value, c) for c in canonical):
        raise ConfigError(
            key, f"{value!r} is a name for {canonical[0]}; write its API id: to = {canonical[0]!r}"
        )
    bad = next((c for c in canonical if not _is_api_id(value, c)), None)
    if providers and bad is not None:
        raise ConfigError(key, f"{value!r} is a name for {bad}; write its API id: to = {bad!r}")
    return value


def _is_api_id(value: str, canonical: str) -> bool:
    # The id itself or a dated snapshot of it (claude-haiku-4-5-20251001, model@20251001).
    value = value.lower()
    return value == canonical or value.startswith((canonical + "-", canonical + "@"))


def _suggest(model: str, provider: str | None) -> str:
    ids = [m.id for p in _provider_list() if provider is None or p.id == provider for m in p.models]
    close = get_close_matches(model.lower(), list(dict.fromkeys(ids)), n=3, cutoff=0.6)
    return f"; did you mean {_quoted(close, ' or ')}?" if close else ""


def _provider_id(name: str, key: str) -> str:
    """genai-prices' id for a provider name, the id `RouteContext.provider` carries."""
    provider = data_snapshot.find_provider_by_id(_provider_list(), name)
    if provider is None:
        raise ConfigError(
            key,
            f"unknown provider {name!r}; genai-prices providers are "
            f"{_quoted(p.id for p in _provider_list())}",
        )
    return provider.id


def _provider_list() -> list[Any]:
    return data_snapshot.get_snapshot().providers


def _only_keys(key: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", f"unknown key; valid keys are {', '.join(allowed)}")


def _strings(raw: dict[str, Any], name: str, key: str) -> tuple[str, ...]:
    value = raw.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}.{name}", "must be a string or a list of strings")
    return tuple(value)


def _count(raw: dict[str, Any], name: str, key: str) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}.{name}", "must be a whole number of tokens, e.g. 4000")
    return value


def _flag(raw: dict[str, Any], name: str, key: str) -> bool | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", "must be true or false")
    return value


def _quoted(values: Iterable[str], last: str = ", ") -> str:
    items = [f'"{v}"' for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + last + items[-1]


# ------------------------------------------------------------------------- decision


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
    prompt_tokens: int | None = None  # estimate of the whole prompt
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
    assert ctx.requested_model is not None and ctx.prompt_tokens is not None
    choice = cache_aware_choice(
        ctx.provider,
        ctx.requested_model,
        rule.to,
        ctx.prompt_tokens,
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
    if not _is_api_id(target, canonical):
        return f"{ctx.provider} calls {target} {canonical}; a rule for it must use that id"
    limits = model_limits.model_limits(ctx.provider, target)
    if limits is None:
        return f"devmeter does not know {target}'s context and output limits"
    if ctx.prompt_tokens is None:
        return f"no prompt token estimate to check against {target}'s context window"
    if ctx.prompt_tokens > limits.max_input_tokens:
        return (
            f"the prompt (~{ctx.prompt_tokens} tokens) is over {target}'s "
            f"{limits.max_input_tokens} input tokens"
        )
    if ctx.max_tokens is not None and ctx.max_tokens > limits.max_output_tokens:
        return (
            f"max_tokens {ctx.max_tokens} is over {target}'s output limit of "
            f"{limits.max_output_tokens}"
        )
    if ctx.prompt_tokens + (ctx.max_tokens or 0) > limits.context_window:
        return (
            f"the prompt (~{ctx.prompt_tokens} tokens) plus max_tokens {ctx.max_tokens} is over "
            f"{target}'s context window of {limits.context_window}"
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


def _glob_any(value: str | None, globs: tuple[str, ...], fold: bool = False) -> bool:
    if value is None:
        return False
    if fold:
        value = value.lower()
    return any(fnmatch.fnmatchcase(value, glob) for glob in globs)


def _usd(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.000001'))}"


# -------------------------------------------------------------------------- savings


def genai_price(provider: str, model: str, usage: Usage) -> Decimal | None:
    """List price of `usage` on `model` at `provider` from genai-prices; None if unpriced.

    The default Pricer. The proxy passes one with the user's overrides applied.
    """
    return pricing.list_price(provider, model, usage)


def price_both(
    provider: str,
    requested_model: str,
    used_model: str,
    usage: Usage,
    pricer: Pricer | None = None,
) -> tuple[Decimal | None, Decimal | None]:
    """(cost had the requested model served `usage`, cost on the model that did).

    The ledger's requested_cost_usd and cost_usd for a routed or shadowed call. The
    counts are the serving model's; a model with another tokenizer would have
    counted the same text differently, which list prices cannot correct.
    """
    price_of = pricer or genai_price
    return price_of(provider, requested_model, usage), price_of(provider, used_model, usage)


# ----------------------------------------------------------------------- adaptation


class IncompatibleRequest(ValueError):
    """The request uses something the target model rejects and no rewrite can keep."""


def adapt_request(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    endpoint: str,
    target_model: str,
    *,
    provider: str | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """`body` and `headers` rewritten for `target_model`, and each change as ledger text.

    Sets the model, then drops or adapts what the target does not take: thinking
    it lacks, effort levels, beta headers naming features it lacks, sampling
    parameters it rejects. Inputs are not modified. Raises IncompatibleRequest when
    the request needs something the target refuses (send it unchanged then). A
    target model_limits has no spec for only gets its model set; `decide` never
    routes to one.
    """
    new_body: dict[str, Any] = copy.deepcopy(dict(body))
    new_headers = dict(headers)
    changes: list[str] = []
    old = new_body.get("model")
    if old != target_model:
        new_body["model"] = target_model
        changes.append(f"model: {old} -> {target_model}")
    provider = provider or ("anthropic" if endpoint.startswith("anthropic.") else "openai")
    spec = model_limits.model_spec(provider, target_model)
    if spec is None:
        return new_body, new_headers, changes
    if endpoint == "anthropic.messages":
        _adapt_anthropic(new_body, new_headers, spec, provider, target_model, changes)
    elif endpoint == "openai.chat":
        _adapt_openai_chat(new_body, spec, target_model, changes)
    elif endpoint == "openai.responses":
        _adapt_openai_responses(new_body, spec, target_model, changes)
    return new_body, new_headers, changes


# Beta header prefixes that turn on a model feature, and whether the target has it.
_BETA_FEATURES: tuple[tuple[str, str, Callable[[ModelSpec, int], bool]], ...] = (
    ("interleaved-thinking-", "no interleaved thinking", lambda s, w: s.interleaved_thinking),
    ("effort-", "no effort parameter", lambda s, w: bool(s.effort)),
    ("context-1m-", "no 1M context", lambda s, w: s.context_1m_beta or w >= 1_000_000),
    ("context-management-", "no context editing", lambda s, w: s.context_management),
    ("thinking-token-count-", "no extended thinking", lambda s, w: s.thinking != "none"),
    ("thinking-binding-controls-", "no extended thinking", lambda s, w: s.thinking != "none"),
)


def _adapt_anthropic(
    body: dict[str, Any],
    headers: dict[str, str],
    spec: ModelSpec,
    provider: str,
    target: str,
    changes: list[str],
) -> None:
    tool_choice = body.get("tool_choice")
    forced = isinstance(tool_choice, dict) and tool_choice.get("type") in ("any", "tool")
    if forced and not spec.forced_tool_use:
        raise IncompatibleRequest(f"{target} rejects forced tool use (tool_choice {tool_choice!r})")

    window = model_limits.model_limits(provider, target) or model_limits.ModelLimits(0, 0, 0)
    beta_key = next((k for k in headers if k.lower() == "anthropic-beta"), None)
    if beta_key is not None:
        kept: list[str] = []
        for beta in (b.strip() for b in headers[beta_key].split(",")):
            if not beta:
                continue
            lacking = next(
                (
                    why
                    for prefix, why, has in _BETA_FEATURES
                    if beta.startswith(prefix) and not has(spec, window.context_window)
                ),
                None,
            )
            if lacking is None:
                kept.append(beta)
            else:
                changes.append(f"anthropic-beta: dropped {beta} ({target} has {lacking})")
        if kept:
            headers[beta_key] = ",".join(kept)
        else:
            del headers[beta_key]
    interleaved = beta_key in headers and any(
        b.strip().startswith("interleaved-thinking-") for b in headers[beta_key].split(",")
    )

    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        _adapt_thinking(body, thinking, spec, target, interleaved, changes)
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    will_think = kind in ("enabled", "adaptive") or (
        kind is None and spec.thinking == "adaptive_only"
    )

    output_config = body.get("output_config")
    if isinstance(output_config, dict) and "effort" in output_config:
        effort = output_config["effort"]
        if not spec.effort:
            del output_config["effort"]
            changes.append(f"output_config.effort: dropped {effort!r} ({target} has no effort)")
            if not output_config:
                del body["output_config"]
        elif effort not in spec.effort:
            output_config["effort"] = _nearest_effort(effort, spec.effort)
            changes.append(
                f"output_config.effort: {effort!r} -> {output_config['effort']!r} "
                f"({target} takes {', '.join(spec.effort)})"
            )

    management = body.get("context_management")
    if management is not None and not spec.context_management:
        del body["context_management"]
        changes.append(f"context_management: dropped ({target} has no context editing)")
    elif isinstance(management, dict) and not will_think:
        edits = management.get("edits")
        if isinstance(edits, list):
            kept_edits = [
                e
                for e in edits
                if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))
            ]
            if len(kept_edits) < len(edits):
                changes.append("context_management: dropped clear_thinking (no thinking to clear)")
                if kept_edits:
                    management["edits"] = kept_edits
                else:
                    del body["context_management"]

    if body.get("speed") == "fast" and not model_limits.supports_fast_mode(provider, target):
        del body["speed"]
        changes.append(f"speed: dropped 'fast' ({target} has no fast mode)")
    if not spec.sampling:
        _drop_keys(body, ("temperature", "top_p", "top_k"), target, changes)


def _adapt_thinking(
    body: dict[str, Any],
    thinking: dict[str, Any],
    spec: ModelSpec,
    target: str,
    interleaved: bool,
    changes: list[str],
) -> None:
    kind = thinking.get("type")
    if spec.thinking == "none":
        del body["thinking"]
        changes.append(f"thinking: dropped ({target} has no extended thinking)")
        return
    if kind == "adaptive" and spec.thinking == "manual":
        del body["thinking"]
        changes.append(f"thinking: dropped adaptive ({target} takes budget_tokens thinking only)")
        return
    if kind == "disabled" and not spec.can_disable_thinking:
        del body["thinking"]
        changes.append(f"thinking: dropped disabled ({target} cannot turn thinking off)")
        return
    if kind == "enabled" and spec.thinking == "adaptive_only":
        budget = thinking.get("budget_tokens")
        adapted = {"type": "adaptive"}
        if "display" in thinking:
            adapted["display"] = thinking["display"]
        body["thinking"] = thinking = adapted
        changes.append(
            f"thinking: enabled (budget_tokens {budget}) -> adaptive ({target} takes adaptive only)"
        )
    if "display" in thinking and not spec.thinking_display:
        display = thinking.pop("display")
        changes.append(f"thinking.display: dropped {display!r} ({target} does not take it)")
    budget = thinking.get("budget_tokens")
    max_tokens = body.get("max_tokens")
    if (
        thinking.get("type") == "enabled"
        and isinstance(budget, int)
        and isinstance(max_tokens, int)
        and budget >= max_tokens
        and not interleaved
    ):
        if max_tokens - 1 >= 1024:  # the smallest budget the API takes
            thinking["budget_tokens"] = max_tokens - 1
            changes.append(
                f"thinking.budget_tokens: {budget} -> {max_tokens - 1} (must be below max_tokens "
                f"without interleaved thinking)"
            )
        else:
            del body["thinking"]
            changes.append(f"thinking: dropped (max_tokens {max_tokens} leaves no budget)")


def _adapt_openai_chat(
    body: dict[str, Any], spec: ModelSpec, target: str, changes: list[str]
) -> None:
    if "reasoning_effort" in body:
        effort = body["reasoning_effort"]
        if not spec.effort:
            del body["reasoning_effort"]
            changes.append(f"reasoning_effort: dropped {effort!r} ({target} does not reason)")
        elif effort not in spec.effort:
            body["reasoning_effort"] = _nearest_effort(effort, spec.effort)
            changes.append(f"reasoning_effort: {effort!r} -> {body['reasoning_effort']!r}")
    if "verbosity" in body and not spec.verbosity:
        changes.append(f"verbosity: dropped {body.pop('verbosity')!r} ({target} does not take it)")
    if spec.effort and "max_tokens" in body and "max_completion_tokens" not in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
        changes.append("max_tokens -> max_completion_tokens (reasoning models take only that)")
    if not spec.sampling:
        _drop_keys(body, ("temperature", "top_p"), target, changes)


def _adapt_openai_responses(
    body: dict[str, Any], spec: ModelSpec, target: str, changes: list[str]
) -> None:
    reasoning = body.get("reasoning")
    if reasoning is not None and not spec.effort:
        del body["reasoning"]
        changes.append(f"reasoning: dropped ({target} does not reason)")
        include = body.get("include")
        if isinstance(include, list) and "reasoning.encrypted_content" in include:
            include.remove("reasoning.encrypted_content")
            changes.append("include: dropped reasoning.encrypted_content")
            if not include:
                del body["include"]
    elif isinstance(reasoning, dict) and "effort" in reasoning:
        effort = reasoning["effort"]
        if effort not in spec.effort:
            reasoning["effort"] = _nearest_effort(effort, spec.effort)
            changes.append(f"reasoning.effort: {effort!r} -> {reasoning['effort']!r}")
    text = body.get("text")
    if isinstance(text, dict) and "verbosity" in text and not spec.verbosity:
        changes.append(
            f"text.verbosity: dropped {text.pop('verbosity')!r} ({target} does not take it)"
        )
        if not text:
            del body["text"]
    if not spec.sampling:
        _drop_keys(body, ("temperature", "top_p"), target, changes)


def _drop_keys(
    body: dict[str, Any], keys: tuple[str, ...], target: str, changes: list[str]
) -> None:
    for key in keys:
        if key in body:
            changes.append(f"{key}: dropped {body.pop(key)!r} ({target} takes only the default)")


def _nearest_effort(value: Any, supported: tuple[str, ...]) -> str:
    """The supported level closest to `value`; a tie goes to the higher level."""
    if value not in EFFORT_ORDER:
        return "medium" if "medium" in supported else supported[len(supported) // 2]
    rank = EFFORT_ORDER.index(value)
    return min(supported, key=lambda s: (abs(EFFORT_ORDER.index(s) - rank), -EFFORT_ORDER.index(s)))


# ------------------------------------------------------------------------- fallback

# Statuses the original request would have met as well: the key, the account, the
# rate limit, the bill, the body's size. Retrying with the original model is pointless.
_NOT_THE_MODEL_STATUSES = frozenset({401, 402, 403, 408, 413, 429})
_NOT_THE_MODEL_ERRORS = frozenset(
    {
        "authentication_error",
        "permission_error",
        "rate_limit_error",
        "billing_error",
        "request_too_large",
        "overloaded_error",
        "invalid_api_key",
        "insufficient_quota",
        "rate_limit_exceeded",
    }
)


def should_fallback(rewritten_status: int, body_bytes: bytes) -> bool:
    """Whether a rewritten request's failure calls for one retry with the original model.

    A 4xx the original request would not have met (the target refused a parameter,
    the model id, the prompt length) says yes; auth, quota, rate-limit and size
    errors, which the original would have met too, say no, as do 5xx (not the
    rewrite's fault) and successes.
    """
    if not 400 <= rewritten_status < 500 or rewritten_status in _NOT_THE_MODEL_STATUSES:
        return False
    try:
        payload = json.loads(body_bytes)
    except (ValueError, UnicodeDecodeError):
        return True
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        kinds = {str(error.get("type")), str(error.get("code"))}
        if kinds & _NOT_THE_MODEL_ERRORS:
            return False
    return True
