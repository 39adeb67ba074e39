"""Routing rules: the `[routing]` config table, validated into `Rule`s and a `RoutingConfig`.

A rule is a set of conditions on a request (all must hold) and a target model; the
built-in rules are written as config so they are validated exactly like the user's.
Every target is checked against genai-prices (through model_limits) when the config
is read, so a typo fails at load time with the dotted key at fault, not mid-session.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, Literal

from devmeter import model_limits, pricing
from devmeter.config_error import ConfigError
from devmeter.config_values import config_bool, reject_unknown
from devmeter.providers import registry

if TYPE_CHECKING:
    from devmeter.routing.decision import RouteContext

MODES = ("off", "shadow", "on")
Mode = Literal["off", "shadow", "on"]
Applied = Literal["routed", "shadow"]

# Wire formats whose model is a field of the JSON body: those with a rewrite adapter in
# the registry. Gemini, Bedrock and Vertex name the model in the URL path, which a body
# rewrite cannot change.
REWRITABLE_ENDPOINTS = tuple(wire.name for wire in registry.formats() if wire.rewrite is not None)

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
            # The prompt's size is worked out only here, after every cheaper test, and only
            # as far as the threshold needs (`RouteContext.prompt_at_most`).
            and (
                self.max_prompt_tokens is None or ctx.prompt_at_most(self.max_prompt_tokens) is True
            )
            and (
                self.min_prompt_tokens is None
                or ctx.prompt_at_most(self.min_prompt_tokens - 1) is False
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
    reject_unknown("routing", table, _SECTION_KEYS)
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
    reject_unknown(key, raw, _RULE_KEYS)
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
    if not any(is_api_id(value, c) for c in canonical):
        raise ConfigError(
            key, f"{value!r} is a name for {canonical[0]}; write its API id: to = {canonical[0]!r}"
        )
    bad = next((c for c in canonical if not is_api_id(value, c)), None)
    if providers and bad is not None:
        raise ConfigError(key, f"{value!r} is a name for {bad}; write its API id: to = {bad!r}")
    return value


def is_api_id(value: str, canonical: str) -> bool:
    # The id itself or a dated snapshot of it (claude-haiku-4-5-20251001, model@20251001).
    value = value.lower()
    return value == canonical or value.startswith((canonical + "-", canonical + "@"))


def _suggest(model: str, provider: str | None) -> str:
    ids = [m.id for p in _provider_list() if provider is None or p.id == provider for m in p.models]
    close = get_close_matches(model.lower(), list(dict.fromkeys(ids)), n=3, cutoff=0.6)
    return f"; did you mean {_quoted(close, ' or ')}?" if close else ""


def _provider_id(name: str, key: str) -> str:
    """genai-prices' id for a provider name, the id `RouteContext.provider` carries."""
    provider = pricing.find_provider(name)
    if provider is None:
        raise ConfigError(
            key,
            f"unknown provider {name!r}; genai-prices providers are "
            f"{_quoted(p.id for p in _provider_list())}",
        )
    return provider.id


def _provider_list() -> list[Any]:
    return pricing.genai_providers()


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
    if value is not None:
        config_bool(f"{key}.{name}", value)
    return value


def _quoted(values: Iterable[str], last: str = ", ") -> str:
    items = [f'"{v}"' for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + last + items[-1]


def _glob_any(value: str | None, globs: tuple[str, ...], fold: bool = False) -> bool:
    if value is None:
        return False
    if fold:
        value = value.lower()
    return any(fnmatch.fnmatchcase(value, glob) for glob in globs)
