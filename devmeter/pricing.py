"""List-price cost of a call: genai-prices decides prices, the user's overrides adjust them.

Data, not code, decides prices: there is no price table here. An override either
scales the list price (a negotiated discount), replaces the per-million rates, or
makes a model free (a self-hosted model). A model nobody prices costs None, so a
report can flag it instead of pretending it was free.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from devmeter.config_error import ConfigError
from devmeter.config_values import config_bool, did_you_mean, reject_unknown
from devmeter.money import PICO, to_pusd
from devmeter.usage import Usage

if TYPE_CHECKING:
    import genai_prices
    import genai_prices.types


# genai_prices is imported where a price is computed, not here: importing it (pydantic,
# its price data) is slow, and every CLI command imports this module via the config.
# Its version (the price source every row names) is looked up there too: importlib.metadata
# alone is a noticeable part of a `devmeter report`.
@lru_cache(maxsize=1)
def genai_prices_source() -> str:
    if _remembered_source is not None:
        return _remembered_source
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


MILLION = Decimal(1_000_000)

# Rates an override may set, in USD per million tokens (web searches: per thousand).
RATE_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
)


@dataclass(frozen=True)
class PriceOverride:
    """One `[[prices]]` entry of the config file."""

    model: str  # glob on the model name
    provider: str | None = None  # None matches every provider
    discount: Decimal | None = None  # fraction off the list price, 0.2 = 20% off
    rates: Mapping[str, Decimal] | None = None  # replaces list price entirely
    free: bool = False

    def matches(self, provider: str, model: str) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        return fnmatch.fnmatchcase(model, self.model)

    @property
    def source(self) -> str:
        return f"override {self.provider + '/' if self.provider else ''}{self.model}"


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal | None
    source: str | None  # which price data priced it; None when nothing did


def price(
    provider: str,
    model: str | None,
    usage: Usage,
    overrides: Iterable[PriceOverride] = (),
    when: datetime | None = None,
) -> Price:
    """Cost of `usage` on `model` at `provider`, exact to the token."""
    if model is None:
        return Price(None, None)
    model = normalise_model(model)
    for override in overrides:
        if override.matches(provider, model):
            return _price_with_override(override, provider, model, usage, when)
    if usage.reported_cost_usd is not None:
        # OpenRouter bills its own (routed, marked-up) price and says so in usage.cost.
        return Price(usage.reported_cost_usd, f"{provider} reported")
    cost = list_price(provider, model, usage, when)
    return Price(cost, genai_prices_source() if cost is not None else None)


def list_price(
    provider: str, model: str, usage: Usage, when: datetime | None = None
) -> Decimal | None:
    tier = usage.service_tier if _priced_tier(usage.service_tier) else None
    plain = tier is None and not usage.modality_tokens
    when = when or datetime.now(UTC)
    rates = _flat_rates(provider, model, when, usage.total_input_tokens) if plain else None
    if rates is not None:
        fast = _cost_at_flat_rates(rates, usage)
        if fast is not None:
            return fast
    # Batch results: genai-prices states batch rates as a `processing` variant; a model
    # without one is priced at its list price, an upper bound.
    context: dict[str, str] | None = None
    if tier == "batch":
        context = {"processing": "batch"}
    elif tier:
        context = {"service_tier": tier}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = _genai().calc_price(
                _genai_usage(usage),
                model_ref=model,
                provider_id=provider,
                genai_request_timestamp=when,
                price_context=context,
            )
    except (LookupError, ValueError):  # unknown model; usage genai-prices cannot price
        return None
    return Decimal(calc.total_price)


# Rates genai-prices states per million tokens (web searches: per thousand) that devmeter
# can apply itself. genai-prices' own calculation is general (units, tiers, variants) and
# is costly on the proxy's event loop, every call, and for every line of a history import;
# for a model whose price is only these rates, flat or tiered, the same sum is exact and
# far cheaper. Anything else goes to genai-prices.
_FLAT_KEYS = frozenset(
    ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
     "web_searches_kcount")
)  # fmt: skip

# Rates of units a call priced here never uses: devmeter's usage has no count for them,
# so genai-prices' own calculation adds nothing for them either. Every OpenAI model
# states one (vector-store searches), and without this none took the flat path.
_NEVER_COUNTED_KEYS = frozenset(("storage_searches_kcount",))

# A model's rates by tier: (threshold, rates per token) from the highest threshold down,
# the base rates last (threshold -1). As genai-prices applies them (TieredPrices, the
# "cliff" model): a call whose total input (cache reads and writes included) is above a
# tier's start pays that tier's rate for every token of a tiered kind.
RateTiers = tuple[tuple[int, dict[str, Decimal]], ...]


@lru_cache(maxsize=4096)
def _flat_rates_for_hour(provider: str, model: str, hour: int) -> RateTiers | None:
    """The model's rates per token (web searches: per search) by tier, or None."""
    try:
        snapshot = _genai().data_snapshot.get_snapshot()
        _, info = snapshot.find_provider_model(model, None, provider, None)
        if not _same_price_all_hour(info):
            return None  # an off-peak price from half past: genai-prices, at the call's time
        prices = info.get_prices(datetime.fromtimestamp(hour * 3600, UTC))
    except (LookupError, AttributeError):
        return None
    from genai_prices.types import TieredPrices

    rates = {
        k: v
        for k, v in vars(prices).items()
        if v is not None and not k.startswith("_") and k not in _NEVER_COUNTED_KEYS
    }
    if not rates.keys() <= _FLAT_KEYS:
        return None  # other units: genai-prices prices it
    starts = {-1}
    for value in rates.values():
        if isinstance(value, TieredPrices):
            starts |= {tier.start for tier in value.tiers}
        elif not isinstance(value, Decimal):
            return None

    def at(value: Decimal | TieredPrices, total_input: int) -> Decimal:
        if isinstance(value, Decimal):
            return value
        for tier in reversed(value.tiers):  # sorted by start, as genai-prices keeps them
            if total_input > tier.start:
                return tier.price
        return value.base

    # Divided once here, not on every call: a power of ten divides a Decimal exactly.
    return tuple(
        (
            start,
            {
                k: at(v, start + 1) / (1000 if k == "web_searches_kcount" else MILLION)
                for k, v in rates.items()
            },
        )
        for start in sorted(starts, reverse=True)
    )


def _same_price_all_hour(info: Any) -> bool:
    """Whether the model's price can change only on the hour: its rates are looked up
    once an hour. A time-of-day price (DeepSeek's off-peak hours) that starts or ends
    within an hour (00:30) would price part of that hour at the other rate."""
    conditional = info.prices if isinstance(info.prices, list) else ()
    for price in conditional:
        constraint = getattr(price, "constraint", None)
        for name in ("start_time", "end_time"):
            bound = getattr(constraint, name, None)
            if bound is None:
                continue
            if bound.tzinfo is not None:  # as genai-prices compares it: in UTC
                bound = datetime.combine(date(1970, 1, 1), bound).astimezone(UTC).timetz()
            if (bound.minute, bound.second, bound.microsecond) != (0, 0, 0):
                return False
    return True


# Rates worked out before, by (provider, model, hour), asked before genai-prices is loaded.
# An edge that prices the same models over and over in short-lived processes (a history
# import: importers/price_memory.py) keeps them in a file and hands them back here, so
# such a process need not load genai-prices (half a second of CPU) to price what it has
# priced before; the price source named on its rows is remembered with them.
_remembered: dict[tuple[str, str, int], RateTiers] = {}
_remembered_source: str | None = None
_recording = False  # only a process that keeps them records them (not the proxy)
_REMEMBER_AT_MOST = 200_000  # hours x models: a heavy user's years


def remember_rates(rates: Mapping[tuple[str, str, int], RateTiers], source: str | None) -> None:
    """Rates (as `remembered_rates` gave them, with their source) from the same
    genai-prices data: the caller checks that it is the same. From then on, rates worked
    out in this process are remembered too, for `remembered_rates`."""
    global _remembered_source, _recording
    _recording = True
    _remembered.update(rates)
    if _remembered_source is None and source is not None:
        _remembered_source = source
        genai_prices_source.cache_clear()


def remembered_rates() -> tuple[dict[tuple[str, str, int], RateTiers], str | None]:
    """The rates this process knows by now, and their source (None: none priced)."""
    source = _remembered_source
    if _remembered and source is None:
        source = genai_prices_source()
    return dict(_remembered), source


def _flat_rates(
    provider: str, model: str, when: datetime, total_input: int = 0
) -> dict[str, Decimal] | None:
    # Prices change at dates genai-prices knows; an hour's granularity is plenty.
    tiers = _hour_tiers((provider, model, int(when.timestamp()) // 3600))
    if tiers is None:
        return None
    for start, rates in tiers:
        if total_input > start:
            return rates
    return tiers[-1][1]


def _hour_tiers(key: tuple[str, str, int]) -> RateTiers | None:
    tiers = _remembered.get(key)
    if tiers is None:
        tiers = _flat_rates_for_hour(*key)
        if tiers is None:
            return None
        if _recording:
            if len(_remembered) >= _REMEMBER_AT_MOST:  # a tray running for years: start over
                _remembered.clear()
            _remembered[key] = tiers
    return tiers


# The same rates in the ledger's unit, integer pico-dollars per token (per search), for
# an edge that prices many rows straight into ledger rows (a history import): a sum of
# integers, no Decimal per row. genai-prices states rates per million tokens with at most
# six decimals, so each is a whole number of pico-dollars per token and the integer sum
# is exactly `to_pusd` of the Decimal one; a rate that is not (None here) is left to it.
PusdTiers = tuple[tuple[int, dict[str, int]], ...]
_LEDGER_MAX_INT = 2**63 - 1  # SQLite's integers are 64-bit
_pusd_tiers: dict[tuple[str, str, int], PusdTiers | None] = {}


def _in_pusd(tiers: RateTiers) -> PusdTiers | None:
    converted = []
    for start, rates in tiers:
        whole = {}
        for name, rate in rates.items():
            pusd = rate * PICO
            if pusd != pusd.to_integral_value():
                return None
            whole[name] = int(pusd)
        converted.append((start, whole))
    return tuple(converted)


def cost_pusd(
    provider: str, model: str, usage: Usage, overrides: Iterable[PriceOverride], ts: float
) -> tuple[int | None, str | None]:
    """`price`'s answer in integer pico-dollars (the ledger's unit), with its source;
    for a plain usage on list rates without one Decimal per call."""
    if usage.modality_tokens or _priced_tier(usage.service_tier) or usage.reported_cost_usd:
        return _general_pusd(provider, model, usage, overrides, ts)
    model = normalise_model(model)
    if any(override.matches(provider, model) for override in overrides):
        return _general_pusd(provider, model, usage, overrides, ts)
    found = list_cost_pusd(provider, model, ts, usage.total_input_tokens, _counted(usage))
    return _general_pusd(provider, model, usage, overrides, ts) if found is None else found


def list_cost_pusd(
    provider: str, model: str, ts: float, total_input: int, counted: tuple[tuple[int, str], ...]
) -> tuple[int | None, str | None] | None:
    """`cost_pusd` at the model's list rates for the hour, from the counts alone (as
    `_counted` names them; `total_input` with cache reads and writes): a history import
    prices every response this way without a Usage. None when the rates cannot answer (no
    flat rates for the model, a count without a rate): then `cost_pusd` must. For a usage
    with no modality tokens, no priced tier, no reported cost and no override."""
    key = (provider, model, int(ts) // 3600)
    tiers = _pusd_tiers.get(key, ())
    if tiers == ():
        found = _hour_tiers(key)
        tiers = None if found is None else _in_pusd(found)
        if len(_pusd_tiers) >= _REMEMBER_AT_MOST:
            _pusd_tiers.clear()
        _pusd_tiers[key] = tiers
    if tiers is None:
        return None
    rates = tiers[-1][1]
    for start, tier_rates in tiers:
        if total_input > start:
            rates = tier_rates
            break
    total = 0
    for count, name in counted:
        if count:
            rate = rates.get(name)
            if rate is None:  # genai-prices has a rule for a missing rate: its own sum
                return None
            total += count * rate
    if not -_LEDGER_MAX_INT <= total <= _LEDGER_MAX_INT:
        return None, genai_prices_source()  # as `to_pusd`: no ledger column holds it
    return total, genai_prices_source()


def _general_pusd(
    provider: str, model: str, usage: Usage, overrides: Iterable[PriceOverride], ts: float
) -> tuple[int | None, str | None]:
    found = price(provider, model, usage, overrides, datetime.fromtimestamp(ts, UTC))
    return to_pusd(found.cost_usd), found.source


def _counted(usage: Usage) -> tuple[tuple[int, str], ...]:
    u = usage
    return priced_counts(
        u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
        u.cache_write_1h_tokens, u.web_search_requests,
    )  # fmt: skip


def priced_counts(
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int,
    web_search_requests: int,
) -> tuple[tuple[int, str], ...]:
    """Each priced count of a usage with the name of its rate (5m cache writes apart from
    1h ones, searches per thousand)."""
    return (
        (input_tokens, "input_mtok"),
        (output_tokens, "output_mtok"),
        (cache_read_tokens, "cache_read_mtok"),
        (cache_write_tokens - cache_write_1h_tokens, "cache_write_mtok"),
        (cache_write_1h_tokens, "cache_write_1h_mtok"),
        (web_search_requests, "web_searches_kcount"),
    )  # fmt: skip


def _cost_at_flat_rates(rates: dict[str, Decimal], usage: Usage) -> Decimal | None:
    total = Decimal(0)
    for count, key in _counted(usage):
        if not count:
            continue
        rate = rates.get(key)
        if rate is None:
            return None  # genai-prices has a rule for a missing rate; let it apply it
        total += count * rate
    return total


def warm() -> None:
    """Load genai-prices' price data now. It loads on first use, and slowly when Python
    has to compile its 1 MB module (PYTHONDONTWRITEBYTECODE, a read-only or fresh
    install). In the proxy, call this before listening, or the first
    metered call stalls the event loop, and every call in flight with it."""
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()


# ----------------------------------------------------- genai-prices lookups (all of them)
# Every other module asks these instead of querying genai-prices itself, so what
# "known model", "provider id" and "canonical id" mean is decided in one place.


def genai_providers() -> list[genai_prices.types.Provider]:
    """Every provider genai-prices knows, in its own order."""
    return list(_genai().data_snapshot.get_snapshot().providers)


def find_provider(name: str) -> genai_prices.types.Provider | None:
    """genai-prices' provider for a provider id or alias ("anthropic", "google-gla"), or None."""
    return _genai().data_snapshot.find_provider_by_id(genai_providers(), name)  # type: ignore[no-any-return]


@lru_cache(maxsize=1024)
def find_model(
    provider: str | None, model: str
) -> tuple[genai_prices.types.Provider, genai_prices.types.ModelInfo] | None:
    """genai-prices' provider and model for `model` (at `provider` when given), or None.

    With a provider, the model may come from that provider's fallback list (Google
    prices Anthropic models it resells); `model_limits.natively_priced` says whether it
    did not.
    """
    snapshot = _genai().data_snapshot.get_snapshot()
    for name in dict.fromkeys((model, bare_model_name(model))):
        try:
            return snapshot.find_provider_model(name, None, provider, None)  # type: ignore[no-any-return]
        except LookupError:
            continue
    return None


def resolve_model_ref(ref: str, provider: str | None = None) -> tuple[str, str] | None:
    """(provider id, canonical model id) genai-prices matches `ref` to, or None.

    genai-prices' own matching, loose spellings included ("claude-4.5-sonnet").
    """
    genai = _genai()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = genai.calc_price(genai.Usage(), model_ref=ref, provider_id=provider)
    except LookupError:
        return None
    return str(calc.provider.id), str(calc.model.id)


def bare_model_name(model: str) -> str:
    # OpenRouter-style "anthropic/claude-haiku-5-5" -> "claude-haiku-5-5".
    return model.lower().rsplit("/", 1)[-1]


def normalise_model(model: str) -> str:
    # Gemini names models "models/gemini-2.5-pro" in some responses and URLs.
    return model.removeprefix("models/")


def _genai() -> Any:
    import genai_prices
    import genai_prices.data_snapshot

    return genai_prices


def priced_tier(tier: str | None) -> bool:
    """Whether a service tier the provider reports has rates of its own (genai-prices
    prices it); the base tiers are priced at the list rates."""
    return _priced_tier(tier)


def _priced_tier(tier: str | None) -> bool:
    # "default"/"standard"/"auto" are the base price; "auto" is a request setting, not a rate.
    return tier is not None and tier not in ("default", "standard", "auto", "standard_only")


def _genai_usage(usage: Usage) -> genai_prices.Usage:
    import genai_prices

    # genai-prices counts cache reads and writes inside input_tokens; devmeter does not.
    values: dict[str, int] = {
        "input_tokens": usage.total_input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.cache_write_1h_tokens:
        values["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if usage.web_search_requests:
        values["web_searches"] = usage.web_search_requests
    for key, count in usage.modality_tokens:
        values[key] = values.get(key, 0) + count
    return genai_prices.Usage(**values)


def _price_with_override(
    override: PriceOverride, provider: str, model: str, usage: Usage, when: datetime | None
) -> Price:
    if override.free:
        return Price(Decimal(0), override.source)
    if override.rates is not None:
        return Price(_cost_at_rates(override.rates, usage), override.source)
    base = list_price(provider, model, usage, when)
    if base is None:
        return Price(None, None)
    assert override.discount is not None
    return Price(base * (1 - override.discount), f"{genai_prices_source()}, {override.source}")


def _cost_at_rates(rates: Mapping[str, Decimal], usage: Usage) -> Decimal:
    zero = Decimal(0)
    write_5m = usage.cache_write_tokens - usage.cache_write_1h_tokens
    cache_write = rates.get("cache_write_mtok", zero)
    per_token = (
        usage.input_tokens * rates.get("input_mtok", zero)
        + usage.cache_read_tokens * rates.get("cache_read_mtok", zero)
        + write_5m * cache_write
        + usage.cache_write_1h_tokens * rates.get("cache_write_1h_mtok", cache_write)
        + usage.output_tokens * rates.get("output_mtok", zero)
    )
    return per_token / MILLION


def parse_overrides(entries: Any) -> tuple[PriceOverride, ...]:
    """Validate the config's `[[prices]]` array of tables."""
    if not isinstance(entries, list):
        raise ConfigError("prices", "must be an array of tables: [[prices]]")
    return tuple(_parse_override(i, entry) for i, entry in enumerate(entries))


def _parse_override(index: int, entry: Any) -> PriceOverride:
    key = f"prices[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(key, "must be a table with at least `model`")
    allowed = {"model", "provider", "discount", "free", *RATE_KEYS}
    reject_unknown(key, entry, sorted(allowed))
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{key}.model", 'is required: a model name or glob, e.g. "claude-*"')
    provider = entry.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ConfigError(f"{key}.provider", 'must be a provider id such as "anthropic"')
    if provider is not None:
        # Calls carry genai-prices' provider id: any other name never matched a call.
        known = find_provider(provider)
        if known is None:
            hint = did_you_mean(provider, [p.id for p in genai_providers()], cutoff=0.6)
            raise ConfigError(
                f"{key}.provider",
                f"unknown provider {provider!r}; {hint}calls are billed by anthropic, "
                "openai, google (Gemini) or another genai-prices provider id",
            )
        provider = known.id
    rates = {name: _money(f"{key}.{name}", entry[name]) for name in RATE_KEYS if name in entry}
    discount = _money(f"{key}.discount", entry["discount"]) if "discount" in entry else None
    free = config_bool(f"{key}.free", entry.get("free", False))
    chosen = [bool(rates), discount is not None, free]
    if sum(chosen) != 1:
        raise ConfigError(
            key, "set exactly one of: discount = 0.2, free = true, or rates like input_mtok = 3"
        )
    if discount is not None and not Decimal(0) <= discount < 1:
        raise ConfigError(f"{key}.discount", "must be a fraction from 0 to below 1 (0.2 = 20% off)")
    if discount is not None and not _is_glob(model) and find_model(provider, model) is None:
        # A discount applies to a list price; without one such calls stay unpriced.
        raise ConfigError(
            f"{key}.model",
            f"genai-prices has no list price for {model!r}"
            f"{' at ' + provider if provider else ''}, so there is nothing to discount; "
            "set its rates (input_mtok = 3, output_mtok = 15) or free = true instead",
        )
    return PriceOverride(
        model=model, provider=provider, discount=discount, rates=rates or None, free=free
    )


def _is_glob(model: str) -> bool:
    return any(c in model for c in "*?[")


def _money(key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    amount = Decimal(str(value))
    if not amount.is_finite():
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if amount < 0:
        raise ConfigError(key, "must not be negative")
    return amount
