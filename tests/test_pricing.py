"""Costs worked out by hand from the providers' published list prices."""

from decimal import Decimal

import pytest

from devmeter.config_error import ConfigError
from devmeter.pricing import GENAI_PRICES, parse_overrides, price
from devmeter.usage import Usage

# Anthropic's published prices for Claude Sonnet 4.5, USD per million tokens:
# input 3, output 15, cache read 0.30, 5-minute cache write 3.75, 1-hour cache write 6;
# web search $10 per thousand. Above 200k input tokens: input 6, output 22.50.
SONNET_45 = dict(input=3, output=15, cache_read=Decimal("0.30"), write_5m=Decimal("3.75"),
                 write_1h=6)  # fmt: skip


def test_anthropic_cost_splits_cache_writes_by_ttl() -> None:
    usage = Usage(
        input_tokens=1200,
        cache_read_tokens=3000,
        cache_write_tokens=500,
        cache_write_1h_tokens=200,
        output_tokens=345,
    )
    # 1200*3 + 3000*0.30 + 300*3.75 + 200*6 + 345*15 = 3600 + 900 + 1125 + 1200 + 5175
    expected = Decimal(12000) / 1_000_000
    result = price("anthropic", "claude-sonnet-4-5", usage)
    assert result.cost_usd == expected
    assert result.source == GENAI_PRICES


def test_dated_model_name_and_web_search() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, web_search_requests=2)
    # 1000*3/1M + 100*15/1M + 2 * 10/1000
    expected = Decimal("0.003") + Decimal("0.0015") + Decimal("0.02")
    assert price("anthropic", "claude-sonnet-4-5-20250929", usage).cost_usd == expected


def test_long_context_tier_is_priced_as_anthropic_prices_it() -> None:
    usage = Usage(input_tokens=300_000, output_tokens=1000)
    # Over 200k input tokens the whole call is billed at input 6, output 22.50.
    expected = Decimal(300_000 * 6 + 1000) * 1 / 1_000_000 + Decimal("0.0215")
    assert price("anthropic", "claude-sonnet-4-5", usage).cost_usd == expected


def test_openai_priority_tier_costs_more_than_default() -> None:
    usage = Usage(input_tokens=1_000_000)
    default = price("openai", "gpt-5", usage).cost_usd
    priority = price("openai", "gpt-5", Usage(input_tokens=1_000_000, service_tier="priority"))
    assert default == Decimal("1.25")  # gpt-5: $1.25 per million input tokens
    assert priority.cost_usd == Decimal("2.50")  # priority processing: $2.50


def test_unknown_model_has_no_cost_rather_than_zero() -> None:
    result = price("openai", "my-local-llama", Usage(input_tokens=10, output_tokens=5))
    assert result.cost_usd is None
    assert result.source is None


def test_reported_cost_wins_for_openrouter() -> None:
    usage = Usage(input_tokens=10, output_tokens=5, reported_cost_usd=Decimal("0.000123"))
    assert price("openrouter", "anthropic/claude-sonnet-4.5", usage).cost_usd == Decimal("0.000123")


def test_overrides_discount_free_and_rates() -> None:
    overrides = parse_overrides(
        [
            {"provider": "anthropic", "model": "claude-sonnet-*", "discount": 0.25},
            {"model": "my-local-*", "free": True},
            {"model": "gateway-model", "input_mtok": 1, "output_mtok": 2},
        ]
    )
    small = Usage(input_tokens=100_000, output_tokens=100_000)
    discounted = price("anthropic", "claude-sonnet-4-5", small, overrides)
    assert discounted.cost_usd == (Decimal("0.3") + Decimal("1.5")) * Decimal("0.75")
    assert "override" in (discounted.source or "")
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert price("openai", "my-local-llama", usage, overrides).cost_usd == 0
    assert price("openai", "gateway-model", usage, overrides).cost_usd == 3


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ({"model": "x", "discount": 1.5}, "prices[0].discount", "fraction"),
        ({"model": "x"}, "prices[0]", "exactly one"),
        ({"discount": 0.1}, "prices[0].model", "required"),
        ({"model": "x", "free": True, "colour": 1}, "prices[0].colour", "unknown key"),
        ({"model": "x", "input_mtok": "cheap"}, "prices[0].input_mtok", "number"),
    ],
)
def test_bad_overrides_name_the_key(entry: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_overrides([entry])
    assert caught.value.key == key
    assert words in caught.value.message
