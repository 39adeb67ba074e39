"""Model routing: rules, safe rewrites, parameter adaptation, fallback, cache trade-offs, savings.

Expected costs are worked by hand from genai-prices' published per-million-token
prices (bundled data, November 2026):

    model              input   cache write 5m   cache write 1h   cache read   output
    claude-opus-5-5    4       5                8                0.2          20
    claude-sonnet-5-5  2       2.5              4                0.1          10
    claude-haiku-5-5   0.1     0.125            0.2              0.01         0.5
                       (x5 for every token once a prompt is over 100,000 tokens)
    gpt-6.1-sol        2       2.5              -                0.1          10
    gpt-6-luna         0.1     0.125            -                0.01         0.5
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from devmeter.config_error import ConfigError
from devmeter.routing import (
    BUILTIN_RULES,
    TTL_1H,
    CacheState,
    IncompatibleRequest,
    RouteContext,
    RouteDecision,
    RoutingConfig,
    Rule,
    adapt_request,
    cache_aware_choice,
    decide,
    genai_price,
    next_cache_state,
    parse_routing,
    should_fallback,
)
from devmeter.usage import Usage

NOW = 1_800_000_000.0

# The /v1/messages request Claude Code 2.1.328 sent for `claude -p "say hi"`, as
# captured, text elided.
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "prompt-caching-scope-2026-01-05,per-turn-control-2026-07-01,"
    "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,"
    "advanced-tool-use-2025-11-20,mid-conversation-system-clear-at-2026-08-21,"
    "effort-2025-11-24,thinking-binding-controls-2026-08-01,cache-diagnosis-2026-04-07"
)
CLAUDE_CODE_HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "claude-cli/2.1.328 (external, sdk-cli)",
    "X-Claude-Code-Session-Id": "c94186ab-2b3f-417d-a580-48a4be19ff53",
    "anthropic-beta": CLAUDE_CODE_BETAS,
    "anthropic-version": "2023-06-01",
    "x-api-key": "sk-ant-api03-fake",
    "x-claude-code-request-class": "main",
}
CLAUDE_CODE_BODY: dict[str, Any] = {
    "model": "claude-opus-5-5",
    "metadata": {"user_id": '{"device_id":"337c","account_uuid":"","session_id":"c941"}'},
    "max_tokens": 128000,
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "medium"},
    "diagnostics": {"previous_message_id": None},
    "stream": True,
    "system": [{"type": "text", "text": "You are Claude Code."}],
    "tools": [{"name": "Bash"}, {"name": "Read"}],
    "messages": [{"role": "user", "content": "say hi"}],
}

# Codex CLI 0.169's first response.create frame, as captured, input elided.
CODEX_FRAME: dict[str, Any] = {
    "type": "response.create",
    "model": "gpt-6.1-sol",
    "stream": True,
    "input": [{"role": "user", "content": "say hi"}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low", "context": "all_turns"},
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "01a20804-def5-7ef0-b12b-5c32930f1fa8",
    "text": {"verbosity": "low"},
}


def ctx(**overrides: Any) -> RouteContext:
    """A Claude Code main-loop request on Opus 5.5, unless told otherwise."""
    values: dict[str, Any] = {
        "provider": "anthropic",
        "endpoint": "anthropic.messages",
        "requested_model": "claude-opus-5-5",
        "tool": "claude-code",
        "request_class": "main",
        "repo": "/home/dev/src/acme-api",
        "prompt_tokens": 20_000,
        "max_tokens": 32_000,
        "now": NOW,
    }
    values.update(overrides)
    return RouteContext(**values)


def rule(**conditions: Any) -> Rule:
    conditions.setdefault("to", "claude-haiku-5-5")
    config = parse_routing({"rules": [{"name": "r", **conditions}]})
    return config.rules[0]


def config(
    *rules: dict[str, Any], mode: str = "on", enable: list[str] | None = None
) -> RoutingConfig:
    return parse_routing({"mode": mode, "rules": list(rules), "enable": enable or []})


def usd(text: str) -> Decimal:
    return Decimal(text)


# ------------------------------------------------------------------------ config


def test_an_empty_routing_table_is_shadow_mode_with_no_rules() -> None:
    assert parse_routing({}) == RoutingConfig(mode="shadow", rules=(), enabled=())


def test_user_rules_come_first_then_enabled_builtins_in_the_order_named() -> None:
    parsed = parse_routing(
        {
            "mode": "on",
            "enable": ["small-format-to-mini", "claude-code-background-to-haiku"],
            "rules": [
                {
                    "name": "opus-over-budget",
                    "provider": "anthropic",
                    "model": "claude-opus-*",
                    "session_spend_over_usd": 20,
                    "to": "claude-sonnet-5-5",
                }
            ],
        }
    )
    assert parsed.mode == "on"
    assert [r.name for r in parsed.rules] == [
        "opus-over-budget",
        "small-format-to-mini",
        "claude-code-background-to-haiku",
    ]
    assert parsed.rules[0].session_spend_over_usd == Decimal("20")
    assert parsed.enabled == ("small-format-to-mini", "claude-code-background-to-haiku")


def test_every_builtin_rule_is_valid_config() -> None:
    parsed = parse_routing({"enable": list(BUILTIN_RULES)})
    assert [r.name for r in parsed.rules] == list(BUILTIN_RULES)


def test_a_rule_accepts_a_string_or_a_list_and_a_dated_target() -> None:
    parsed = rule(
        tool=["claude-code", "codex"],
        provider="Anthropic",  # genai-prices' provider matching; stored as its id
        model="CLAUDE-OPUS-*",
        request_class=["auxiliary", "compaction"],
        repo="~/src/*",
        to="claude-haiku-4-5-20251001",
    )
    assert parsed.tools == ("claude-code", "codex")
    assert parsed.providers == ("anthropic",)
    assert parsed.models == ("claude-opus-*",)
    assert parsed.request_classes == ("auxiliary", "compaction")
    assert not parsed.repos[0].startswith("~")


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ({"mode": "auto"}, "routing.mode", '"off", "shadow", "on"'),
        ({"modes": "on"}, "routing.modes", "valid keys in [routing]: mode, enable, rules"),
        ({"enable": "claude-code-background-to-haiku"}, "routing.enable", "list of built-in"),
        (
            {"enable": ["haiku-everything"]},
            "routing.enable[0]",
            '"claude-code-background-to-haiku"',
        ),
        (
            {"enable": ["small-format-to-mini", "small-format-to-mini"]},
            "routing.enable[1]",
            "enabled twice",
        ),
        ({"rules": {"name": "a"}}, "routing.rules", "[[routing.rules]]"),
        ({"rules": [{"to": "claude-haiku-5-5"}]}, "routing.rules[0].name", "needs a name"),
        ({"rules": [{"name": "a"}]}, "routing.rules[0].to", "needs a target model"),
        (
            {"rules": [{"name": "a", "to": "claude-haiku-5-5"}, {"name": "b", "to": "gpt-6-lun"}]},
            "routing.rules[1].to",
            'did you mean "gpt-6-luna"',
        ),
        (
            {"rules": [{"name": "a", "provider": "openai", "to": "claude-haiku-5-5"}]},
            "routing.rules[0].to",
            "never rewrites across providers",
        ),
        (
            {"rules": [{"name": "a", "provider": "anthropic", "to": "claude-haiku-5.5"}]},
            "routing.rules[0].to",
            "to = 'claude-haiku-5-5'",
        ),
        (
            {"rules": [{"name": "a", "provider": "antropic", "to": "claude-haiku-5-5"}]},
            "routing.rules[0].provider",
            '"anthropic"',
        ),
        (
            {"rules": [{"name": "a", "request_class": "auxilary", "to": "claude-haiku-5-5"}]},
            "routing.rules[0].request_class",
            '"main", "subagent", "workflow", "compaction", "auxiliary"',
        ),
        (
            {"rules": [{"name": "a", "modle": "claude-*", "to": "claude-haiku-5-5"}]},
            "routing.rules[0].modle",
            "valid keys in [routing.rules[0]]: name, to, tool, provider, model",
        ),
        (
            {"rules": [{"name": "a", "max_prompt_tokens": -1, "to": "claude-haiku-5-5"}]},
            "routing.rules[0].max_prompt_tokens",
            "whole number",
        ),
        (
            {"rules": [{"name": "a", "min_prompt_tokens": True, "to": "claude-haiku-5-5"}]},
            "routing.rules[0].min_prompt_tokens",
            "whole number",
        ),
        (
            {
                "rules": [
                    {
                        "name": "a",
                        "min_prompt_tokens": 500,
                        "max_prompt_tokens": 100,
                        "to": "claude-haiku-5-5",
                    }
                ]
            },
            "routing.rules[0].min_prompt_tokens",
            "larger than max_prompt_tokens",
        ),
        (
            {"rules": [{"name": "a", "uses_tools": "no", "to": "claude-haiku-5-5"}]},
            "routing.rules[0].uses_tools",
            "true or false",
        ),
        (
            {"rules": [{"name": "a", "session_spend_over_usd": "20", "to": "claude-haiku-5-5"}]},
            "routing.rules[0].session_spend_over_usd",
            "number of US dollars",
        ),
        (
            {"rules": [{"name": "a", "tool": ["claude-code", 3], "to": "claude-haiku-5-5"}]},
            "routing.rules[0].tool",
            "string or a list of strings",
        ),
        (
            {"rules": [{"name": "a", "to": "claude-haiku-5-5"}, {"name": "a", "to": "gpt-6-luna"}]},
            "routing.rules[1].name",
            "names two rules",
        ),
        (
            {
                "enable": ["claude-code-background-to-haiku"],
                "rules": [{"name": "claude-code-background-to-haiku", "to": "claude-haiku-5-5"}],
            },
            "routing.enable[0]",
            "also names a rule of yours",
        ),
    ],
)
def test_config_errors_name_the_key_and_the_valid_values(
    table: dict[str, Any], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_routing(table)
    assert raised.value.key == key
    assert says in raised.value.message


# --------------------------------------------------------------- rule conditions


@pytest.mark.parametrize(
    ("conditions", "matching", "not_matching"),
    [
        ({"tool": "claude-code"}, {}, {"tool": "codex"}),
        ({"tool": ["codex", "claude-code"]}, {}, {"tool": None}),
        ({"provider": "anthropic"}, {}, {"provider": "openai"}),
        (
            {"model": "claude-opus-*"},
            {"requested_model": "Claude-Opus-5-5"},
            {"requested_model": "claude-sonnet-5-5"},
        ),
        ({"model": ["gpt-*", "claude-opus-5*"]}, {}, {"requested_model": None}),
        ({"request_class": "main"}, {}, {"request_class": "auxiliary"}),
        (
            {"request_class": ["auxiliary", "compaction"]},
            {"request_class": "compaction"},
            {"request_class": None},
        ),
        ({"repo": "/home/dev/src/acme-*"}, {}, {"repo": "/home/dev/src/other"}),
        ({"repo": "/home/dev/src/acme-api"}, {}, {"repo": None}),
        ({"max_prompt_tokens": 20_000}, {"prompt_tokens": 20_000}, {"prompt_tokens": 20_001}),
        ({"max_prompt_tokens": 20_000}, {}, {"prompt_tokens": None}),
        ({"min_prompt_tokens": 20_000}, {"prompt_tokens": 20_000}, {"prompt_tokens": 19_999}),
        ({"uses_tools": True}, {"uses_tools": True}, {"uses_tools": False}),
        ({"uses_tools": False}, {"uses_tools": False}, {"uses_tools": True}),
        ({"uses_images": False}, {}, {"uses_images": True}),
        ({"uses_thinking": True}, {"uses_thinking": True}, {}),
        (
            {"session_spend_over_usd": 20},
            {"session_spend_usd": Decimal("20.01")},
            {"session_spend_usd": Decimal("20")},
        ),
        ({"session_spend_over_usd": 0}, {"session_spend_usd": Decimal("0.01")}, {}),
    ],
)
def test_each_condition_matches_or_not(
    conditions: dict[str, Any], matching: dict[str, Any], not_matching: dict[str, Any]
) -> None:
    parsed = rule(**conditions)
    assert parsed.matches(ctx(**matching))
    assert not parsed.matches(ctx(**not_matching))


def test_a_rule_without_conditions_matches_everything() -> None:
    assert rule().matches(ctx(requested_model=None, tool=None, repo=None, prompt_tokens=None))


def test_every_condition_of_a_rule_must_hold() -> None:
    parsed = rule(provider="anthropic", request_class="auxiliary", max_prompt_tokens=8000)
    assert parsed.matches(ctx(request_class="auxiliary", prompt_tokens=3000))
    assert not parsed.matches(ctx(request_class="auxiliary", prompt_tokens=9000))
    assert not parsed.matches(ctx(request_class="main", prompt_tokens=3000))


# ---------------------------------------------------------------------- decide


def test_the_builtin_sends_claude_code_background_requests_to_haiku() -> None:
    routing = parse_routing({"mode": "on", "enable": ["claude-code-background-to-haiku"]})
    decision = decide(routing, ctx(request_class="auxiliary", prompt_tokens=3000))
    assert decision.rule == "claude-code-background-to-haiku"
    assert decision.target == "claude-haiku-5-5"
    assert decision.applied == "routed" and decision.rewrite
    assert decision.reason is None
    # 3,000 prompt tokens, no cache: Opus 3000 x $4/M = $0.012, Haiku 3000 x $0.1/M = $0.0003.
    assert decision.cache is not None
    assert decision.cache.stay_cost_usd == usd("0.012000")
    assert decision.cache.switch_cost_usd == usd("0.000300")
    assert decision.cache.saving_usd == usd("0.011700")
    assert decision.cache.cache_loss_usd == 0
    assert decide(routing, ctx(request_class="main")) == RouteDecision()


def test_shadow_mode_names_the_target_but_does_not_rewrite() -> None:
    decision = decide(config({"name": "bg", "to": "claude-haiku-5-5"}, mode="shadow"), ctx())
    assert (decision.rule, decision.target, decision.applied) == (
        "bg",
        "claude-haiku-5-5",
        "shadow",
    )
    assert not decision.rewrite


def test_mode_off_decides_nothing() -> None:
    assert (
        decide(config({"name": "bg", "to": "claude-haiku-5-5"}, mode="off"), ctx())
        == RouteDecision()
    )


def test_the_first_matching_rule_decides_even_when_it_cannot_apply() -> None:
    routing = config(
        {"name": "to-old-haiku", "to": "claude-3-5-haiku-latest"},  # 8,192 output tokens
        {"name": "to-haiku", "to": "claude-haiku-5-5"},
    )
    decision = decide(routing, ctx(max_tokens=32_000))
    assert decision.rule == "to-old-haiku"
    assert decision.target is None and decision.applied is None
    assert decision.reason == (
        "max_tokens 32000 is over claude-3-5-haiku-latest's output limit of 8192"
    )


def test_the_budget_builtin_moves_opus_to_sonnet_after_20_dollars() -> None:
    routing = parse_routing({"mode": "on", "enable": ["opus-over-20-usd-to-sonnet"]})
    assert decide(routing, ctx(session_spend_usd=Decimal("19.99"))).rule is None
    decision = decide(routing, ctx(session_spend_usd=Decimal("20.50"), max_tokens=128_000))
    assert decision.target == "claude-sonnet-5-5" and decision.rewrite


def test_the_small_format_builtin_sends_short_tool_less_gpt6_requests_to_luna() -> None:
    routing = parse_routing({"mode": "on", "enable": ["small-format-to-mini"]})
    small = ctx(
        provider="openai",
        endpoint="openai.responses",
        requested_model="gpt-6.1-sol",
        tool="codex",
        request_class="turn",
        prompt_tokens=1200,
        max_tokens=None,
    )
    assert decide(routing, small).target == "gpt-6-luna"
    assert decide(routing, ctx(**{**small.__dict__, "uses_tools": True})).rule is None
    assert decide(routing, ctx(**{**small.__dict__, "prompt_tokens": 4001})).rule is None


def test_decide_prices_with_the_pricer_it_is_given() -> None:
    def haiku_dearer(provider: str, model: str, usage: Usage) -> Decimal | None:
        return Decimal(2) if "haiku" in model else Decimal(1)

    routing = config({"name": "bg", "to": "claude-haiku-5-5"})
    decision = decide(routing, ctx(), pricer=haiku_dearer)
    assert decision.reason == (
        "claude-haiku-5-5 is not cheaper than claude-opus-5-5 for this call "
        "($2.000000 vs $1.000000)"
    )


@pytest.mark.parametrize(
    ("rule_to", "overrides", "reason"),
    [
        ("claude-haiku-5-5", {"requested_model": None}, "the request names no model"),
        (
            "claude-haiku-5-5",
            {"requested_model": "claude-haiku-5-5-20261007"},
            "already on claude-haiku-5-5",
        ),
        (
            "claude-haiku-5-5",
            {"endpoint": "anthropic.vertex"},
            "anthropic.vertex requests are not rewritten (the model is not a body field); "
            "only anthropic.messages, openai.chat, openai.responses are",
        ),
        (
            "claude-haiku-5-5",
            {"provider": "openai", "endpoint": "openai.chat", "requested_model": "gpt-6-sol"},
            "claude-haiku-5-5 has no price at openai; routing never crosses providers",
        ),
        (
            "claude-haiku-5.5",
            {},
            "anthropic calls claude-haiku-5.5 claude-haiku-5-5; a rule for it must use that id",
        ),
        (
            "claude-opus-4-8",
            {"requested_model": "claude-fable-5-1"},
            "devmeter does not know claude-opus-4-8's context and output limits",
        ),
        (
            "claude-haiku-5-5",
            {"prompt_tokens": None},
            "no prompt token estimate to check against claude-haiku-5-5's context window",
        ),
        (
            "claude-haiku-4-5",
            {"max_tokens": 128_000},
            "max_tokens 128000 is over claude-haiku-4-5's output limit of 64000",
        ),
        (
            "claude-haiku-4-5",
            {"prompt_tokens": 180_000, "max_tokens": 32_000},
            "the prompt (~180000 tokens) plus max_tokens 32000 is over claude-haiku-4-5's "
            "context window of 200000",
        ),
        (
            "gpt-6-luna",
            {
                "provider": "openai",
                "endpoint": "openai.responses",
                "requested_model": "gpt-6.1-sol",
                "prompt_tokens": 950_000,
                "max_tokens": None,
            },
            "the prompt (~950000 tokens) is over gpt-6-luna's 922000 input tokens",
        ),
        (
            "claude-opus-5-5",
            {"requested_model": "claude-haiku-5-5"},
            "claude-opus-5-5 is not cheaper than claude-haiku-5-5 for this call "
            "($0.080000 vs $0.002000)",  # 20,000 input: $4/M vs $0.1/M
        ),
        (
            "claude-haiku-5-5",
            {"requested_model": "my-finetuned-claude"},
            "no price for my-finetuned-claude or claude-haiku-5-5 at anthropic, "
            "so no saving to show",
        ),
    ],
)
def test_a_matching_rule_is_not_applied_when_unsafe_or_not_cheaper(
    rule_to: str, overrides: dict[str, Any], reason: str
) -> None:
    decision = decide(config({"name": "r", "to": rule_to}), ctx(**overrides))
    assert decision.rule == "r"
    assert decision.target is None and decision.applied is None and not decision.rewrite
    assert decision.reason == reason


# ---------------------------------------------------------------- cache awareness


def test_a_warm_cache_worth_more_than_the_saving_keeps_the_session_on_its_model() -> None:
    # Opus holds 150,000 cached tokens from a minute ago; this call sends 160,000 and
    # is expected to write 1,000.
    #   stay   (Opus, read 150,000, write 10,000):   30,000 + 50,000 + 20,000 = $0.100000/M-units
    #   Sonnet on the same usage:                   15,000 + 25,000 + 10,000 = $0.050000
    #   switch (Sonnet, cold: write 160,000):        400,000 + 10,000         = $0.410000
    opus_cache = CacheState(read_tokens=140_000, write_tokens=10_000, at=NOW - 60)
    choice = cache_aware_choice(
        "anthropic",
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        160_000,
        requested_cache=opus_cache,
        now=NOW,
        expected_output_tokens=1_000,
    )
    assert choice is not None
    assert choice.stay_cost_usd == usd("0.100000")
    assert choice.switch_cost_usd == usd("0.410000")
    assert choice.saving_usd == usd("0.050000")
    assert choice.cache_loss_usd == usd("0.360000")
    assert not choice.switch

    routing = config({"name": "budget", "model": "claude-opus-*", "to": "claude-sonnet-5-5"})
    decision = decide(
        routing,
        ctx(
            prompt_tokens=160_000,
            max_tokens=128_000,
            cache_states={"claude-opus-5-5": opus_cache},
            expected_output_tokens=1_000,
        ),
    )
    assert decision.applied is None and decision.cache == choice
    assert decision.reason == (
        "claude-opus-5-5's prompt cache is warm (150000 tokens): claude-sonnet-5-5 would save "
        "$0.050000 on this call but re-writing its cache costs $0.360000"
    )


def test_a_saving_bigger_than_the_cache_loss_switches() -> None:
    # 10,000 cached of 12,000 sent, 20,000 expected out.
    #   stay   Opus:   10,000 x 0.2 + 2,000 x 5 + 20,000 x 20      = $0.412000
    #   Sonnet same:   10,000 x 0.1 + 2,000 x 2.5 + 20,000 x 10    = $0.206000
    #   switch Sonnet: 12,000 x 2.5 + 20,000 x 10                  = $0.230000
    choice = cache_aware_choice(
        "anthropic",
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        12_000,
        requested_cache=CacheState(10_000, 0, NOW - 200),
        now=NOW,
        expected_output_tokens=20_000,
    )
    assert choice is not None
    assert (choice.stay_cost_usd, choice.switch_cost_usd) == (usd("0.412000"), usd("0.230000"))
    assert (choice.saving_usd, choice.cache_loss_usd) == (usd("0.206000"), usd("0.024000"))
    assert choice.switch


def test_a_one_hour_cache_stays_warm_and_is_rewritten_at_the_one_hour_rate() -> None:
    # 50,000 cached half an hour ago with a 1 h lifetime; 60,000 sent, no output counted.
    #   stay   Opus:   50,000 x 0.2 + 10,000 x 8 (1 h write) = $0.090000
    #   Sonnet same:   50,000 x 0.1 + 10,000 x 4             = $0.045000
    #   switch Sonnet: 60,000 x 4                            = $0.240000
    warm_1h = CacheState(50_000, 0, NOW - 1800, ttl_seconds=TTL_1H)
    choice = cache_aware_choice(
        "anthropic",
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        60_000,
        requested_cache=warm_1h,
        now=NOW,
    )
    assert choice is not None
    assert (choice.stay_cost_usd, choice.switch_cost_usd) == (usd("0.090000"), usd("0.240000"))
    assert (choice.saving_usd, choice.cache_loss_usd) == (usd("0.045000"), usd("0.195000"))
    assert not choice.switch


def test_an_expired_cache_costs_nothing_to_leave() -> None:
    # The same cache with a 5 minute lifetime, half an hour ago: both sides write 60,000.
    #   Opus: 60,000 x 5 = $0.300000; Sonnet: 60,000 x 2.5 = $0.150000
    cold = CacheState(50_000, 0, NOW - 1800)
    choice = cache_aware_choice(
        "anthropic", "claude-opus-5-5", "claude-sonnet-5-5", 60_000, requested_cache=cold, now=NOW
    )
    assert choice is not None
    assert (choice.stay_cost_usd, choice.switch_cost_usd) == (usd("0.300000"), usd("0.150000"))
    assert (choice.saving_usd, choice.cache_loss_usd) == (usd("0.150000"), usd("0"))
    assert choice.switch


def test_a_session_already_routed_reads_the_target_cache() -> None:
    # Sonnet holds 50,000 from 100 s ago; Opus has none warm.
    #   stay   Opus, cold:   60,000 x 5                       = $0.300000
    #   Sonnet same:         60,000 x 2.5                     = $0.150000
    #   switch Sonnet, warm: 50,000 x 0.1 + 10,000 x 2.5      = $0.030000
    choice = cache_aware_choice(
        "anthropic",
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        60_000,
        target_cache=CacheState(50_000, 0, NOW - 100),
        now=NOW,
    )
    assert choice is not None
    assert (choice.stay_cost_usd, choice.switch_cost_usd) == (usd("0.300000"), usd("0.030000"))
    assert (choice.saving_usd, choice.cache_loss_usd) == (usd("0.150000"), usd("-0.120000"))
    assert choice.switch


def test_without_cache_state_the_prompt_is_priced_as_plain_input() -> None:
    # 10,000 in, 2,000 out. Opus: 40,000 + 40,000 = $0.080000; Haiku: 1,000 + 1,000 = $0.002000
    choice = cache_aware_choice(
        "anthropic",
        "claude-opus-5-5",
        "claude-haiku-5-5",
        10_000,
        now=NOW,
        expected_output_tokens=2_000,
    )
    assert choice is not None
    assert (choice.stay_cost_usd, choice.switch_cost_usd) == (usd("0.080000"), usd("0.002000"))
    assert (choice.saving_usd, choice.cache_loss_usd) == (usd("0.078000"), usd("0"))


def test_cache_state_follows_each_calls_usage() -> None:
    first = next_cache_state(None, Usage(input_tokens=10, cache_write_tokens=8_000), NOW)
    assert first == CacheState(0, 8_000, NOW, 300)
    assert first.warm(NOW + 299) and not first.warm(NOW + 300)
    read = next_cache_state(first, Usage(input_tokens=10, cache_read_tokens=8_000), NOW + 60)
    assert read == CacheState(8_000, 0, NOW + 60, 300)
    hour = next_cache_state(
        read,
        Usage(cache_read_tokens=8_000, cache_write_tokens=2_000, cache_write_1h_tokens=2_000),
        NOW + 90,
    )
    assert hour == CacheState(8_000, 2_000, NOW + 90, 3600) and hour.cached_tokens == 10_000
    assert next_cache_state(hour, Usage(input_tokens=500), NOW + 100) is hour


# ---------------------------------------------------------------------- savings
# `genai_price` is decide's default Pricer: both sides of a routing trade go through it.


def price_both(provider: str, requested: str, used: str, usage: Usage) -> tuple[Any, Any]:
    return genai_price(provider, requested, usage), genai_price(provider, used, usage)


def test_price_both_adds_cache_tokens_to_genai_prices_input() -> None:
    # 30,000 uncached + 80,000 read = 110,000 prompt tokens: over Haiku 5.5's 100,000 tier,
    # which it only sees because cache reads count toward genai-prices' input_tokens.
    #   Opus:  30,000 x 4 + 80,000 x 0.2 + 2,000 x 20    = $0.176000
    #   Haiku: 30,000 x 0.5 + 80,000 x 0.05 + 2,000 x 2.5 = $0.024000 (tier prices)
    usage = Usage(input_tokens=30_000, cache_read_tokens=80_000, output_tokens=2_000)
    assert price_both("anthropic", "claude-opus-5-5", "claude-haiku-5-5", usage) == (
        usd("0.176000"),
        usd("0.024000"),
    )


def test_price_both_bills_the_one_hour_part_of_cache_writes_at_its_rate() -> None:
    # 1,000 in, 20,000 read, 5,000 written of which 2,000 for 1 h, 300 out.
    #   Opus:  1,000 x 4 + 20,000 x 0.2 + 3,000 x 5 + 2,000 x 8 + 300 x 20          = $0.045000
    #   Haiku: 1,000 x 0.1 + 20,000 x 0.01 + 3,000 x 0.125 + 2,000 x 0.2 + 300 x 0.5 = $0.001225
    usage = Usage(
        input_tokens=1_000,
        cache_read_tokens=20_000,
        cache_write_tokens=5_000,
        cache_write_1h_tokens=2_000,
        output_tokens=300,
    )
    assert price_both("anthropic", "claude-opus-5-5", "claude-haiku-5-5", usage) == (
        usd("0.045000"),
        usd("0.001225"),
    )


def test_price_both_openai() -> None:
    # gpt-6.1-sol: 10,000 x 2 + 90,000 x 0.1 + 5,000 x 10    = $0.079000
    # gpt-6-luna:  10,000 x 0.1 + 90,000 x 0.01 + 5,000 x 0.5 = $0.004400
    usage = Usage(input_tokens=10_000, cache_read_tokens=90_000, output_tokens=5_000)
    assert price_both("openai", "gpt-6.1-sol", "gpt-6-luna", usage) == (
        usd("0.079000"),
        usd("0.004400"),
    )


def test_an_unknown_model_has_no_price() -> None:
    usage = Usage(input_tokens=1_000)
    assert price_both("anthropic", "my-local-claude", "claude-haiku-5-5", usage) == (
        None,
        usd("0.000100"),
    )


# -------------------------------------------------------------- adapt_request


def test_adapting_claude_codes_request_to_haiku_5_5_only_changes_the_model() -> None:
    body, headers = copy.deepcopy(CLAUDE_CODE_BODY), dict(CLAUDE_CODE_HEADERS)
    new_body, new_headers, changes = adapt_request(
        body, headers, "anthropic.messages", "claude-haiku-5-5"
    )
    assert changes == ["model: claude-opus-5-5 -> claude-haiku-5-5"]
    assert new_body == {**CLAUDE_CODE_BODY, "model": "claude-haiku-5-5"}
    assert new_headers == CLAUDE_CODE_HEADERS
    # Pure: the inputs are untouched.
    assert body == CLAUDE_CODE_BODY and headers == CLAUDE_CODE_HEADERS


def test_adapting_claude_codes_request_to_haiku_4_5_drops_what_it_lacks() -> None:
    body = {**copy.deepcopy(CLAUDE_CODE_BODY), "max_tokens": 32_000}
    new_body, new_headers, changes = adapt_request(
        body, CLAUDE_CODE_HEADERS, "anthropic.messages", "claude-haiku-4-5"
    )
    assert changes == [
        "model: claude-opus-5-5 -> claude-haiku-4-5",
        "anthropic-beta: dropped effort-2025-11-24 (claude-haiku-4-5 has no effort parameter)",
        "thinking: dropped adaptive (claude-haiku-4-5 takes budget_tokens thinking only)",
        "output_config.effort: dropped 'medium' (claude-haiku-4-5 has no effort)",
        "context_management: dropped clear_thinking (no thinking to clear)",
    ]
    expected = {
        k: v
        for k, v in body.items()
        if k not in ("thinking", "output_config", "context_management")
    }
    assert new_body == {**expected, "model": "claude-haiku-4-5"}
    assert new_headers["anthropic-beta"] == CLAUDE_CODE_BETAS.replace("effort-2025-11-24,", "")


def test_adapting_to_a_model_without_thinking_drops_thinking_and_its_betas() -> None:
    body = {**copy.deepcopy(CLAUDE_CODE_BODY), "max_tokens": 4_096}
    new_body, new_headers, changes = adapt_request(
        body, CLAUDE_CODE_HEADERS, "anthropic.messages", "claude-3-5-haiku-latest"
    )
    t = "claude-3-5-haiku-latest"
    assert changes == [
        f"model: claude-opus-5-5 -> {t}",
        "anthropic-beta: dropped interleaved-thinking-2025-05-14 "
        f"({t} has no interleaved thinking)",
        f"anthropic-beta: dropped context-management-2025-06-27 ({t} has no context editing)",
        f"anthropic-beta: dropped thinking-token-count-2026-05-13 ({t} has no extended thinking)",
        f"anthropic-beta: dropped effort-2025-11-24 ({t} has no effort parameter)",
        "anthropic-beta: dropped thinking-binding-controls-2026-08-01 "
        f"({t} has no extended thinking)",
        f"thinking: dropped ({t} has no extended thinking)",
        f"output_config.effort: dropped 'medium' ({t} has no effort)",
        f"context_management: dropped ({t} has no context editing)",
    ]
    assert {"thinking", "output_config", "context_management"}.isdisjoint(new_body)
    assert new_headers["anthropic-beta"].split(",") == [
        "claude-code-20250219",
        "prompt-caching-scope-2026-01-05",
        "per-turn-control-2026-07-01",
        "mid-conversation-tool-changes-2026-07-01",
        "advanced-tool-use-2025-11-20",
        "mid-conversation-system-clear-at-2026-08-21",
        "cache-diagnosis-2026-04-07",
    ]


def test_the_beta_header_is_found_whatever_its_case_and_removed_when_empty() -> None:
    headers = {"Anthropic-Beta": "effort-2025-11-24", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-opus-5-5", "max_tokens": 1000, "messages": []}
    _, new_headers, _ = adapt_request(body, headers, "anthropic.messages", "claude-haiku-4-5")
    assert new_headers == {"anthropic-version": "2023-06-01"}
    headers = {"Anthropic-Beta": "effort-2025-11-24,claude-code-20250219"}
    _, new_headers, _ = adapt_request(body, headers, "anthropic.messages", "claude-haiku-4-5")
    assert new_headers == {"Anthropic-Beta": "claude-code-20250219"}


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("claude-haiku-4-5", False),  # 200K, no 1M beta
        ("claude-sonnet-4-5", True),  # 1M with the beta
        ("claude-haiku-5-5", True),  # 1M natively
    ],
)
def test_the_1m_context_beta_is_kept_only_for_models_with_1m_context(
    target: str, kept: bool
) -> None:
    headers = {"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07"}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 1000, "messages": []}
    _, new_headers, _ = adapt_request(body, headers, "anthropic.messages", target)
    assert ("context-1m-2025-08-07" in new_headers["anthropic-beta"]) is kept


def test_budget_thinking_becomes_adaptive_on_adaptive_only_models() -> None:
    body = {
        "model": "claude-opus-4-5",
        "max_tokens": 16_000,
        "thinking": {"type": "enabled", "budget_tokens": 8_000},
        "messages": [],
    }
    new_body, _, changes = adapt_request(body, {}, "anthropic.messages", "claude-sonnet-5-5")
    assert new_body["thinking"] == {"type": "adaptive"}
    assert changes[1] == (
        "thinking: enabled (budget_tokens 8000) -> adaptive (claude-sonnet-5-5 takes adaptive only)"
    )


@pytest.mark.parametrize(
    ("max_tokens", "betas", "thinking_after", "change"),
    [
        (
            8_000,
            "",
            {"type": "enabled", "budget_tokens": 7_999},
            "thinking.budget_tokens: 10000 -> 7999 (must be below max_tokens without "
            "interleaved thinking)",
        ),
        (
            8_000,
            "interleaved-thinking-2025-05-14",
            {"type": "enabled", "budget_tokens": 10_000},
            None,
        ),
        (1_024, "", None, "thinking: dropped (max_tokens 1024 leaves no budget)"),
    ],
)
def test_a_budget_at_or_over_max_tokens_is_cut_unless_thinking_is_interleaved(
    max_tokens: int, betas: str, thinking_after: dict[str, Any] | None, change: str | None
) -> None:
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": max_tokens,
        "thinking": {"type": "enabled", "budget_tokens": 10_000},
        "messages": [],
    }
    headers = {"anthropic-beta": betas} if betas else {}
    new_body, _, changes = adapt_request(body, headers, "anthropic.messages", "claude-haiku-4-5")
    assert new_body.get("thinking") == thinking_after
    assert changes[1:] == ([change] if change else [])


def test_thinking_off_is_dropped_where_it_cannot_be_turned_off() -> None:
    body = {"model": "claude-opus-5", "max_tokens": 1000, "thinking": {"type": "disabled"}}
    new_body, _, changes = adapt_request(body, {}, "anthropic.messages", "claude-sonnet-5-5")
    assert "thinking" not in new_body
    assert changes[1] == "thinking: dropped disabled (claude-sonnet-5-5 cannot turn thinking off)"
    new_body, _, changes = adapt_request(body, {}, "anthropic.messages", "claude-haiku-5-5")
    assert new_body["thinking"] == {"type": "disabled"} and len(changes) == 1


def test_display_fast_mode_and_sampling_are_dropped_where_unsupported() -> None:
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 1000,
        "speed": "fast",
        "temperature": 0.2,
        "thinking": {"type": "adaptive", "display": "omitted"},
    }
    new_body, _, changes = adapt_request(body, {}, "anthropic.messages", "claude-sonnet-5-5")
    assert "speed" not in new_body and "temperature" not in new_body
    assert changes[1:] == [
        "speed: dropped 'fast' (claude-sonnet-5-5 has no fast mode)",
        "temperature: dropped 0.2 (claude-sonnet-5-5 takes only the default)",
    ]
    # Opus 5 has fast mode (genai-prices prices speed: fast for it).
    new_body, _, _ = adapt_request(body, {}, "anthropic.messages", "claude-opus-5")
    assert new_body["speed"] == "fast"
    # Sonnet 4.6 thinks adaptively but takes no display; it keeps temperature.
    new_body, _, changes = adapt_request(body, {}, "anthropic.messages", "claude-sonnet-4-6")
    assert new_body["thinking"] == {"type": "adaptive"} and new_body["temperature"] == 0.2
    assert "thinking.display: dropped 'omitted' (claude-sonnet-4-6 does not take it)" in changes


@pytest.mark.parametrize(
    ("effort", "target", "adapted"),
    [
        ("max", "claude-opus-4-5", "high"),  # low, medium, high
        ("xhigh", "claude-sonnet-4-6", "max"),  # low, medium, high, max: a tie goes up
        ("medium", "claude-sonnet-4-6", "medium"),
    ],
)
def test_effort_moves_to_the_nearest_level_the_target_takes(
    effort: str, target: str, adapted: str
) -> None:
    body = {"model": "claude-opus-5-5", "max_tokens": 1000, "output_config": {"effort": effort}}
    new_body, _, _ = adapt_request(body, {}, "anthropic.messages", target)
    assert new_body["output_config"] == {"effort": adapted}


def test_forced_tool_use_on_sonnet_5_5_cannot_be_adapted() -> None:
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 1000,
        "tool_choice": {"type": "tool", "name": "emit_title"},
    }
    with pytest.raises(IncompatibleRequest, match="forced tool use"):
        adapt_request(body, {}, "anthropic.messages", "claude-sonnet-5-5")
    new_body, _, _ = adapt_request(body, {}, "anthropic.messages", "claude-haiku-5-5")
    assert new_body["tool_choice"] == body["tool_choice"]


def test_adapting_a_codex_turn_to_luna_only_changes_the_model() -> None:
    new_body, _, changes = adapt_request(CODEX_FRAME, {}, "openai.responses", "gpt-6-luna")
    assert new_body == {**CODEX_FRAME, "model": "gpt-6-luna"}
    assert changes == ["model: gpt-6.1-sol -> gpt-6-luna"]


def test_adapting_a_codex_turn_to_a_model_that_does_not_reason() -> None:
    new_body, _, changes = adapt_request(CODEX_FRAME, {}, "openai.responses", "gpt-4.1-mini")
    assert {"reasoning", "include", "text"}.isdisjoint(new_body)
    assert changes == [
        "model: gpt-6.1-sol -> gpt-4.1-mini",
        "reasoning: dropped (gpt-4.1-mini does not reason)",
        "include: dropped reasoning.encrypted_content",
        "text.verbosity: dropped 'low' (gpt-4.1-mini does not take it)",
    ]
    assert CODEX_FRAME["include"] == ["reasoning.encrypted_content"]


def test_reasoning_effort_the_target_lacks_moves_to_its_nearest_level() -> None:
    frame = {**CODEX_FRAME, "reasoning": {"effort": "minimal"}}
    new_body, _, changes = adapt_request(frame, {}, "openai.responses", "gpt-6-luna")
    assert new_body["reasoning"] == {"effort": "low"}  # none and low are as near; a tie goes up
    assert changes[1] == "reasoning.effort: 'minimal' -> 'low'"


def test_adapting_chat_completions() -> None:
    body = {
        "model": "gpt-6-sol",
        "messages": [],
        "reasoning_effort": "high",
        "verbosity": "low",
    }
    new_body, _, changes = adapt_request(body, {}, "openai.chat", "gpt-4.1-mini")
    assert new_body == {"model": "gpt-4.1-mini", "messages": []}
    assert changes[1:] == [
        "reasoning_effort: dropped 'high' (gpt-4.1-mini does not reason)",
        "verbosity: dropped 'low' (gpt-4.1-mini does not take it)",
    ]
    body = {"model": "gpt-4.1", "messages": [], "max_tokens": 500, "temperature": 0.3}
    new_body, _, changes = adapt_request(body, {}, "openai.chat", "gpt-5-mini")
    assert new_body == {"model": "gpt-5-mini", "messages": [], "max_completion_tokens": 500}
    assert changes[1:] == [
        "max_tokens -> max_completion_tokens (reasoning models take only that)",
        "temperature: dropped 0.3 (gpt-5-mini takes only the default)",
    ]


def test_decide_then_adapt_a_claude_code_background_request() -> None:
    routing = parse_routing({"mode": "on", "enable": ["claude-code-background-to-haiku"]})
    headers = {**CLAUDE_CODE_HEADERS, "x-claude-code-request-class": "auxiliary"}
    body = {**copy.deepcopy(CLAUDE_CODE_BODY), "max_tokens": 8_000}
    decision = decide(
        routing,
        ctx(
            request_class=headers["x-claude-code-request-class"],
            prompt_tokens=2_500,
            max_tokens=body["max_tokens"],
            uses_tools=True,
            uses_thinking=True,
        ),
    )
    assert decision.rewrite and decision.target is not None
    new_body, _, changes = adapt_request(body, headers, "anthropic.messages", decision.target)
    assert new_body["model"] == "claude-haiku-5-5"
    assert changes == ["model: claude-opus-5-5 -> claude-haiku-5-5"]


# --------------------------------------------------------------------- fallback


def error_body(kind: str, message: str = "no", code: str | None = None) -> bytes:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    return json.dumps({"type": "error", "error": error}).encode()


@pytest.mark.parametrize(
    ("status", "body", "retry"),
    [
        (200, b"{}", False),
        (400, error_body("invalid_request_error", "thinking.type.disabled is not supported"), True),
        (404, error_body("not_found_error", "model: claude-haiku-9"), True),
        (422, b"", True),
        (400, b"<html>bad request</html>", True),
        (401, error_body("authentication_error"), False),
        (403, error_body("permission_error"), False),
        (429, error_body("rate_limit_error"), False),
        (413, error_body("request_too_large"), False),
        (400, error_body("billing_error"), False),
        (400, error_body("invalid_request_error", code="insufficient_quota"), False),
        (500, error_body("api_error"), False),
        (529, error_body("overloaded_error"), False),
    ],
)
def test_fallback_retries_only_4xx_the_original_would_not_have_met(
    status: int, body: bytes, retry: bool
) -> None:
    assert should_fallback(status, body) is retry


@pytest.mark.parametrize("mode", ["shadow", "on"])
def test_router_without_rules_plans_nothing(mode: str) -> None:
    """The router's no-rules shortcut answers what `decide` answers without rules."""
    from devmeter.providers import Endpoint
    from devmeter.routing import RouteContext, RoutingConfig, decide
    from devmeter.routing.session_router import Router
    from devmeter.usage import Attribution, RequestInfo

    config = RoutingConfig(mode=mode)  # type: ignore[arg-type]
    ctx = RouteContext(provider="anthropic", endpoint="anthropic.messages",
                       requested_model="claude-opus-4-1", tool="claude-code", prompt_tokens=10,
                       now=0.0)  # fmt: skip
    assert decide(config, ctx).rule is None
    body = json.dumps({"model": "claude-opus-4-1", "messages": []}).encode()
    plan = Router(config).plan(
        Endpoint("anthropic", "anthropic.messages"),
        RequestInfo(model="claude-opus-4-1", prompt_tokens_estimate=10),
        Attribution(tool="claude-code", session="s"),
        {"x-claude-code-request-class": "auxiliary"},
        body,
        0.0,
    )
    assert plan is None


@pytest.mark.parametrize("pass_doc", [True, False])
def test_router_sees_an_image_in_the_conversation(pass_doc: bool) -> None:
    """`uses_images` is worked out only for routing, from the parsed body the proxy passes
    (or the bytes, when it has none): a text-only rule leaves an image request alone."""
    from devmeter.providers import Endpoint, parse_request
    from devmeter.routing.session_router import Router
    from devmeter.usage import Attribution

    endpoint = Endpoint("anthropic", "anthropic.messages")
    router = Router(config({"name": "text", "to": "claude-haiku-5-5", "uses_images": False}))
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    for content, routed in (("hi", True), ([image, {"type": "text", "text": "what?"}], False)):
        doc = {"model": "claude-opus-5-5", "max_tokens": 64,
               "messages": [{"role": "user", "content": content}]}  # fmt: skip
        body = json.dumps(doc).encode()
        plan = router.plan(endpoint, parse_request(endpoint, body),
                           Attribution(tool="claude-code", session="s"), {}, body, NOW,
                           doc if pass_doc else None)  # fmt: skip
        assert (plan is not None and plan.decision.rule == "text") is routed


def test_the_router_remembers_a_bounded_number_of_sessions() -> None:
    """Session spend drives rules; a long-running proxy meets sessions without end, so
    the least recently seen is forgotten (and starts afresh) past `max_sessions`."""
    from devmeter.providers import Endpoint, parse_request
    from devmeter.routing.session_router import Router
    from devmeter.usage import Attribution, Call, Usage

    endpoint = Endpoint("anthropic", "anthropic.messages")
    router = Router(
        config({"name": "spendy", "session_spend_over_usd": 1, "to": "claude-haiku-5-5"}),
        max_sessions=2,
    )
    body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip

    def spent(session: str) -> None:
        router.settle(
            Call(ts=NOW, provider="anthropic", endpoint=endpoint.api, host="api.anthropic.com",
                 requested_model="claude-opus-5-5", model="claude-opus-5-5",
                 attribution=Attribution(session=session), usage=Usage(output_tokens=10),
                 cost_usd=usd("2"), price_source="test", status=200),
            None,
        )  # fmt: skip

    def routed(session: str) -> bool:
        who = Attribution(tool="claude-code", session=session)
        plan = router.plan(endpoint, parse_request(endpoint, body), who, {}, body, NOW)
        return plan is not None and plan.decision.rule == "spendy"

    spent("a")
    spent("b")
    assert routed("a") and routed("b")
    spent("a")  # seen again: now the most recent
    spent("c")  # one too many: "b" goes, "a" stays
    assert routed("a") and routed("c")
    assert not routed("b")
