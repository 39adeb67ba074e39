"""From what the wire showed to one ledger row: usage (reported or estimated) and cost.

Pure: the proxy addon gathers the request facts and the parser's result and calls
`build_call`; tests call it directly.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from devmeter import tokens
from devmeter.pricing import Price, PriceOverride, price
from devmeter.providers import Endpoint, effective_endpoint, wire_format
from devmeter.providers.base import scrub
from devmeter.usage import (
    MAX_COST_USD,
    MAX_TOKENS,
    Attribution,
    Call,
    RequestInfo,
    ResponseResult,
    Usage,
    checked_usage,
    new_call,
    sane_cost,
)

# The prices of rows that are not priced from a rate, shared (Price is frozen): built
# once rather than, with a Decimal each, on every call.
_FREE = Price(Decimal(0), "free endpoint")
_NOT_BILLED = Price(Decimal(0), "not billed")
_UNPRICED = Price(None, None)


def conclude_usage(
    endpoint: Endpoint, request: RequestInfo, result: ResponseResult, status: int | None
) -> Usage:
    """The usage to bill: what the wire reported, or an estimate where it fell short.

    The one place devmeter estimates a call's usage. A call that reported no usage but
    produced text (an OpenAI stream without include_usage) still generated tokens:
    estimate them. A stream cut short (the client or upstream hung up) is billed for
    what it produced so far: the reported counts, raised to the estimate of the text
    that passed where that is higher. The estimate covers all the text that passed,
    not only the part the parser kept (see `tokens.estimate_output_tokens`).
    """
    usage = result.usage
    if endpoint.free or (usage is not None and result.complete):
        return usage or Usage()
    if not (result.output_text or result.output_chars):
        return usage or Usage()  # nothing was generated (an error, or no answer at all)
    output = min(tokens.estimate_output_tokens(result, result.model or request.model), MAX_TOKENS)
    if usage is not None:
        # Input was reported up front (Anthropic's message_start); output was cut short.
        if usage.output_tokens >= output:
            return usage
        return replace(usage, output_tokens=output, estimated=True)
    return Usage(
        input_tokens=min(request.prompt_tokens() or 0, MAX_TOKENS),
        output_tokens=output,
        estimated=True,
    )


def _estimable(api: str) -> bool:
    """Whether a call of `api` without usage can be estimated (its wire format says)."""
    wire = wire_format(api)
    return wire is None or wire.estimable


def _billed_nothing(usage: Usage, status: int | None) -> bool:
    failed = status is None or status >= 400
    return failed and usage == Usage(service_tier=usage.service_tier)


def build_call(
    *,
    ts: float,
    host: str,
    endpoint: Endpoint,
    request: RequestInfo,
    result: ResponseResult,
    status: int | None,
    attribution: Attribution,
    overrides: tuple[PriceOverride, ...] = (),
    duration_ms: int = 0,
    error: str | None = None,
    served_model: str | None = None,
) -> Call:
    endpoint = effective_endpoint(endpoint, request)
    # Impossible numbers stop here, for every wire format, with the row kept and flagged:
    # past this point the ledger, totals and caps only ever see sane ones.
    reported, problems = (None, []) if result.usage is None else checked_usage(result.usage)
    if reported is not result.usage:
        result = replace(result, usage=reported)
    usage = conclude_usage(endpoint, request, result, status)
    model = served_model or result.model or request.model or endpoint.path_model
    # Cursor names models its own way; the parser maps them to genai-prices' ids.
    priced_model = request.facts.get("price_model") or model
    if endpoint.free:
        priced = _FREE
    elif _billed_nothing(usage, status):
        # A refused or failed call that used no tokens costs nothing, priced model or not.
        priced = _NOT_BILLED
    elif result.usage is None and not _estimable(endpoint.api):
        # The API reports nothing to price from (speech audio, DALL-E images): recorded
        # unpriced, so reports flag it rather than count it as $0.
        priced = _UNPRICED
    else:
        # The date picks the price in force then: needed only when pricing.
        priced = price(
            endpoint.provider, priced_model, usage, overrides, datetime.fromtimestamp(ts, UTC)
        )
    if priced.cost_usd is not None and not sane_cost(priced.cost_usd):
        # A price no call can have (a `[[prices]]` typo such as input_mtok = 1e12): the
        # row says so and counts as unpriced, rather than poisoning every total with it.
        problems.append(
            f"cost ${priced.cost_usd:.2f} from {priced.source} out of range ($0 to "
            f"${MAX_COST_USD:,}): recorded unpriced; check the price"
        )
        priced = _UNPRICED
    # The provider's words (an error body, an error page) never carry a key or the prompt
    # to disk; devmeter's own (`error`) are kept as written.
    said = error or (scrub(result.error) if result.error else None)
    error = "; ".join(e for e in (said, *problems) if e) or None
    return new_call(
        ts=ts,
        provider=endpoint.provider,
        endpoint=endpoint.api,
        host=host,
        requested_model=request.model or endpoint.path_model,
        model=model,
        attribution=attribution,
        usage=usage,
        cost_usd=priced.cost_usd,
        price_source=priced.source,
        status=status,
        duration_ms=duration_ms,
        complete=result.complete,
        error=error,
        response_id=result.response_id,
    )
