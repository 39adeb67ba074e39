"""Costs worked out by hand from the providers' published list prices."""

from dataclasses import replace
from decimal import Decimal

import pytest

from devmeter.config_error import ConfigError
from devmeter.pricing import genai_prices_source, parse_overrides, price
from devmeter.usage import Usage
from tests.genai_reference import genai_total

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
    assert result.source == genai_prices_source()


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


def test_flat_rate_fast_path_equals_genai_prices_for_every_model() -> None:
    """devmeter sums flat per-token rates itself (genai-prices' general calculation is slow
    on the proxy's hot path); for every model and many usages it must agree exactly."""
    import random
    from datetime import UTC, datetime

    from genai_prices import data_snapshot

    from devmeter import pricing

    rng = random.Random(7)
    when = datetime(2026, 11, 23, 12, tzinfo=UTC)
    checked = fast = tiered_fast = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for _ in range(3):
                write = rng.choice([0, rng.randint(1, 50_000)])
                usage = Usage(
                    input_tokens=rng.randint(0, 150_000),
                    cache_read_tokens=rng.choice([0, rng.randint(1, 500_000)]),
                    cache_write_tokens=write,
                    cache_write_1h_tokens=rng.choice([0, write // 3]),
                    output_tokens=rng.randint(0, 40_000),
                    web_search_requests=rng.choice([0, 0, 3]),
                )
                ours = pricing.list_price(provider.id, model.id, usage, when)
                try:
                    theirs = genai_total(provider.id, model.id, usage, when)
                except Exception:  # genai-prices refuses some usages for some models
                    continue
                checked += 1
                rates = pricing._flat_rates(provider.id, model.id, when, usage.total_input_tokens)
                took_fast = rates is not None and pricing._cost_at_flat_rates(rates, usage)
                fast += took_fast is not None and took_fast is not False
                tiered_fast += took_fast is not None and took_fast is not False and any(
                    tiers is not None and len(tiers) > 1
                    for tiers in [pricing._flat_rates_for_hour(provider.id, model.id,
                                                               int(when.timestamp()) // 3600)]
                )  # fmt: skip
                assert ours == Decimal(theirs), (provider.id, model.id, usage)
    assert checked > 500
    assert fast > 1000  # the fast path was really exercised, and agreed every time
    assert tiered_fast > 50  # tiered models (long-context prices) too
    # Either side of a tier's start (genai-prices: above it, every token at the tier rate).
    tiers = pricing._flat_rates_for_hour("anthropic", "claude-sonnet-4-5",
                                         int(when.timestamp()) // 3600)  # fmt: skip
    assert tiers is not None and len(tiers) > 1
    start = tiers[0][0]
    for total in (start - 1, start, start + 1, start + 2):
        usage = Usage(input_tokens=total - 1000, cache_read_tokens=600, cache_write_tokens=400,
                      cache_write_1h_tokens=100, output_tokens=777)  # fmt: skip
        theirs = genai_total("anthropic", "claude-sonnet-4-5", usage, when)
        assert pricing.list_price("anthropic", "claude-sonnet-4-5", usage, when) == theirs, total
    # ... and it is what the proxy's everyday calls take.
    typical = Usage(input_tokens=1200, cache_read_tokens=3000, cache_write_tokens=500,
                    cache_write_1h_tokens=200, output_tokens=345)  # fmt: skip
    everyday = (("anthropic", "claude-opus-5-5"), ("anthropic", "claude-haiku-4-5"),
                ("openai", "gpt-5"), ("openai", "gpt-5-mini"),
                ("openai", "gpt-4o-mini"))  # fmt: skip
    for provider, model in everyday:
        rates = pricing._flat_rates(provider, model, when)
        assert rates is not None, model
        usage = (
            typical
            if provider == "anthropic"
            else replace(typical, cache_write_tokens=0, cache_write_1h_tokens=0)
        )  # OpenAI states no writes
        assert pricing._cost_at_flat_rates(rates, usage), model


def test_rates_are_remembered_only_where_an_import_keeps_them() -> None:
    """The proxy prices for months: it must not collect a rate per model and hour. Only
    a process that recalled kept rates (a history import) records the ones it works out."""
    import subprocess
    import sys

    probe = (
        "from datetime import UTC, datetime\n"
        "from devmeter import pricing\n"
        "from devmeter.usage import Usage\n"
        "u = Usage(input_tokens=1000, output_tokens=10)\n"
        "for hour in range(48):\n"
        "    when = datetime.fromtimestamp(1_796_000_000 + hour * 3600, UTC)\n"
        "    assert pricing.price('anthropic', 'claude-haiku-4-5', u, (), when).cost_usd\n"
        "print(len(pricing.remembered_rates()[0]), end=' ')\n"
        "pricing.remember_rates({}, None)\n"
        "pricing.price('anthropic', 'claude-haiku-4-5', u, (), datetime.now(UTC))\n"
        "print(len(pricing.remembered_rates()[0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["0", "1"]
