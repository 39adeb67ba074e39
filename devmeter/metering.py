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
from devmeter.providers import Endpoint
from devmeter.usage import Attribution, Call, RequestInfo, ResponseResult, Usage


def conclude_usage(
    endpoint: Endpoint, request: RequestInfo, result: ResponseResult, status: int | None
) -> Usage:
    """The usage to bill: what the wire reported, or an estimate where it reported none.

    A failed call (4xx/5xx) that reports no usage cost nothing. A call that was
    answered but reported no usage (an OpenAI stream without include_usage, a
    client that hung up mid-stream) still generated tokens: estimate them.
    """
    if endpoint.free:
        return result.usage or Usage()
    usage = result.usage
    failed = status is not None and status >= 400
    if usage is not None and (result.complete or usage.output_tokens):
        return usage
    if failed and not result.output_text:
        return usage or Usage()
    if status is None and not result.output_text:
        return usage or Usage()  # the upstream never answered: nothing was generated
    model = result.model or request.model
    output = tokens.estimate_tokens(result.output_text, model) if result.output_text else 0
    if usage is not None:
        # Input was reported up front (Anthropic's message_start); only output is missing.
        return replace(usage, output_tokens=max(usage.output_tokens, output), estimated=True)
    return Usage(
        input_tokens=request.prompt_tokens_estimate or 0,
        output_tokens=output,
        estimated=True,
    )


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
    usage = conclude_usage(endpoint, request, result, status)
    model = served_model or result.model or request.model or endpoint.path_model
    when = datetime.fromtimestamp(ts, UTC)
    priced = (
        Price(Decimal(0), "free endpoint")
        if endpoint.free
        else price(endpoint.provider, model, usage, overrides, when)
    )
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
