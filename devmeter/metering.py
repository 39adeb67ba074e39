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
from devmeter.providers import Endpoint, effective_endpoint
from devmeter.usage import Attribution, Call, RequestInfo, ResponseResult, Usage


def conclude_usage(
    endpoint: Endpoint, request: RequestInfo, result: ResponseResult, status: int | None
) -> Usage:
    """The usage to bill: what the wire reported, or an estimate where it fell short.

    A call that reported no usage but produced text (an OpenAI stream without
    include_usage) still generated tokens: estimate them. A stream cut short (the
    client or upstream hung up) is billed for what it produced so far: the reported
    counts, raised to the estimate of the text that passed where that is higher.
    """
    usage = result.usage
    if endpoint.free or (usage is not None and result.complete):
        return usage or Usage()
    if not result.output_text:
        return usage or Usage()  # nothing was generated (an error, or no answer at all)
    output = tokens.estimate_tokens(result.output_text, result.model or request.model)
    if usage is not None:
        # Input was reported up front (Anthropic's message_start); output was cut short.
        if usage.output_tokens >= output:
            return usage
        return replace(usage, output_tokens=output, estimated=True)
    return Usage(
        input_tokens=request.prompt_tokens() or 0,
        output_tokens=output,
        estimated=True,
    )


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
    usage = conclude_usage(endpoint, request, result, status)
    model = served_model or result.model or request.model or endpoint.path_model
    # Cursor names models its own way; the parser maps them to genai-prices' ids.
    priced_model = request.facts.get("price_model") or model
    when = datetime.fromtimestamp(ts, UTC)
    if endpoint.free:
        priced = Price(Decimal(0), "free endpoint")
    elif _billed_nothing(usage, status):
        # A refused or failed call that used no tokens costs nothing, priced model or not.
        priced = Price(Decimal(0), "not billed")
    else:
        priced = price(endpoint.provider, priced_model, usage, overrides, when)
    return Call(
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
        error=error or result.error,
    )
