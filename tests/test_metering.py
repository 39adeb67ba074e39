"""From parser result to ledger row: impossible numbers are stopped at `build_call`.

Each hostile number goes all the way into a real ledger through the real writer: on the
code before this check, one such row raised OverflowError in the writer's commit and no
later row was ever written.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter.ledger import LedgerWriter
from devmeter.metering import build_call
from devmeter.pricing import PriceOverride
from devmeter.providers import Endpoint, match_endpoint, new_response_parser, parse_request
from devmeter.usage import MAX_TOKENS, Attribution, Call, RequestInfo, ResponseResult, Usage

MESSAGES = Endpoint("anthropic", "anthropic.messages")
OPENROUTER = Endpoint("openrouter", "openai.chat")


def call_for(
    usage: Usage | None,
    endpoint: Endpoint = MESSAGES,
    model: str = "claude-sonnet-4-5",
    overrides: tuple[PriceOverride, ...] = (),
    **result: Any,
) -> Call:
    return build_call(
        ts=1_800_000_000.0,
        host="api.anthropic.com",
        endpoint=endpoint,
        request=RequestInfo(model=model),
        result=ResponseResult(usage=usage, model=model, **result),
        status=200,
        attribution=Attribution(tool="test", session="hostile"),
        overrides=overrides,
    )


def committed(tmp_path: Path, calls: list[Call]) -> list[sqlite3.Row]:
    """Write `calls` and one ordinary call after them through a real writer; the rows."""
    ledger = tmp_path / "ledger.sqlite"
    writer = LedgerWriter(ledger, on_problem=lambda _: None)
    for call in [*calls, call_for(Usage(input_tokens=10, output_tokens=5))]:
        writer.add_call(call)
    assert writer.flush(timeout=5), "the writer stopped committing"
    writer.close()
    conn = sqlite3.connect(ledger)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM calls ORDER BY id").fetchall()
    conn.close()
    assert len(rows) == len(calls) + 1  # every row kept, and the writer went on after them
    return rows[:-1]


@pytest.mark.parametrize("value", [10**30, 2**63 - 1, -(2**63) - 1, 10**12])
def test_a_token_count_beyond_any_call_is_recorded_as_0_and_flagged(
    tmp_path: Path, value: int
) -> None:
    (row,) = committed(tmp_path, [call_for(Usage(input_tokens=100, output_tokens=value))])
    assert row["output_tokens"] == 0 and row["input_tokens"] == 100
    assert f"usage.output_tokens={value} out of range: recorded as 0" in row["error"]
    assert row["cost_pusd"] is not None and row["cost_pusd"] >= 0  # priced from what is sane


def test_7e11_tokens_would_cost_more_than_sqlite_holds_and_are_refused(tmp_path: Path) -> None:
    # 7e11 output tokens at $15/M is $10.5M: 1.05e19 pico-dollars, past 2**63.
    (row,) = committed(tmp_path, [call_for(Usage(output_tokens=700_000_000_000))])
    assert row["output_tokens"] == 0 and "out of range" in row["error"]


def test_negative_counts_never_lower_totals(tmp_path: Path) -> None:
    rows = committed(
        tmp_path,
        [call_for(Usage(input_tokens=-5_000_000_000, cache_read_tokens=-1, output_tokens=7))],
    )
    (row,) = rows
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (0, 0, 7)
    assert row["cost_pusd"] >= 0
    assert "usage.input_tokens=-5000000000 out of range" in row["error"]
    assert "usage.cache_read_tokens=-1 out of range" in row["error"]


@pytest.mark.parametrize("cost", ["-1000", "1e30", "NaN", "Infinity", "9223372036854775807"])
def test_an_impossible_openrouter_cost_is_priced_from_list_prices(
    tmp_path: Path, cost: str
) -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, reported_cost_usd=Decimal(cost))
    (row,) = committed(tmp_path, [call_for(usage, OPENROUTER, model="anthropic/claude-sonnet-4.5")])
    assert "usage.cost=" in row["error"] and "priced from list prices" in row["error"]
    # 1000 in at $3/M + 100 out at $15/M
    assert row["cost_pusd"] == (1000 * 3 + 100 * 15) * 10**6
    assert row["price_source"] != "openrouter reported"


def test_a_price_typo_is_recorded_unpriced_not_as_millions(tmp_path: Path) -> None:
    typo = PriceOverride(model="claude-*", rates={"input_mtok": Decimal("1e12")})
    (row,) = committed(tmp_path, [call_for(Usage(input_tokens=10_000), overrides=(typo,))])
    assert row["cost_pusd"] is None and row["input_tokens"] == 10_000
    assert "out of range" in row["error"] and "check the price" in row["error"]


def test_an_estimate_never_passes_the_maximum() -> None:
    call = call_for(None, output_text="abcd", output_chars=10**12, complete=False)
    assert call.usage.output_tokens == MAX_TOKENS and call.usage.estimated


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-7", "1e30"])
@pytest.mark.parametrize(
    ("host", "path", "body"),
    [
        (
            "api.anthropic.com",
            "/v1/messages",
            '{"type":"message","model":"claude-sonnet-4-5","content":[],'
            '"usage":{"input_tokens":10,"output_tokens":N}}',
        ),
        (
            "openrouter.ai",
            "/api/v1/chat/completions",
            '{"model":"anthropic/claude-sonnet-4.5","choices":[],'
            '"usage":{"prompt_tokens":10,"completion_tokens":N,"cost":N}}',
        ),
        (
            "api.openai.com",
            "/v1/responses",
            '{"object":"response","status":"completed","model":"gpt-5",'
            '"usage":{"input_tokens":10,"output_tokens":N}}',
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            '{"candidates":[],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":N}}',
        ),
    ],
)
def test_hostile_numbers_on_the_wire_are_flagged_per_format(
    host: str, path: str, body: str, number: str
) -> None:
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    request = parse_request(endpoint, json.dumps({"model": "m"}).encode())
    parser = new_response_parser(endpoint, request, "application/json")
    parser.feed(body.replace("N", number).encode())
    call = build_call(
        ts=1.0, host=host, endpoint=endpoint, request=request, result=parser.result(),
        status=200, attribution=Attribution(),
    )  # fmt: skip
    u = call.usage
    counts = (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens)
    assert all(0 <= n <= MAX_TOKENS for n in counts), call
    assert call.cost_usd is None or 0 <= call.cost_usd <= 10_000
    assert call.error, call
    if number in ("NaN", "Infinity", "-Infinity", "1e999"):
        assert "is not a number (NaN or infinite): recorded as 0" in call.error, call.error
    else:
        assert "out of range: recorded as 0" in call.error, call.error


# -- provider error text -----------------------------------------------------------------

KEY = "sk-proj-Zx9fQ2mB7LwR4tY1uI8oP3aS6dF0gH5jK2lZ7xC4vB9nM1qW"
PROMPT = "Refactor the billing module in /home/ana/acme so that invoices for Acme Corp"


@pytest.mark.parametrize(
    ("host", "path", "status", "body"),
    [
        (
            "api.openai.com",
            "/v1/chat/completions",
            401,
            {"error": {"message": f"Incorrect API key provided: {KEY[:8]}****{KEY[-4:]}. You can "
                       "find your API key at https://platform.openai.com/account/api-keys.",
                       "type": "invalid_request_error", "code": "invalid_api_key"}},
        ),
        (
            "api.anthropic.com",
            "/v1/messages",
            400,
            {"type": "error", "error": {"type": "invalid_request_error",
             "message": f"messages.0.content: Input should be a valid list: '{PROMPT}' " * 4}},
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            400,
            {"error": {"code": 400, "status": "INVALID_ARGUMENT",
             "message": "API key not valid: AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW (key ending "
                        "in 'tUvW'). Bearer ya29.a0AfH6SMBx-secret-token was refused."}},
        ),
    ],
)  # fmt: skip
def test_provider_error_text_keeps_the_type_and_never_a_key_or_the_prompt(
    tmp_path: Path, host: str, path: str, status: int, body: dict[str, Any]
) -> None:
    endpoint = match_endpoint(host, "POST", path)
    assert endpoint is not None
    request = parse_request(endpoint, b'{"model": "m"}')
    parser = new_response_parser(endpoint, request, "application/json")
    parser.feed(json.dumps(body).encode())
    call = build_call(
        ts=1.0, host=host, endpoint=endpoint, request=request, result=parser.result(),
        status=status, attribution=Attribution(),
    )  # fmt: skip
    (row,) = committed(tmp_path, [call])
    error = row["error"]
    kind = body["error"].get("type") or body["error"]["status"]
    assert error.startswith(f"{kind}: "), error
    assert len(error) <= 200
    for secret in (KEY[:12], KEY[-4:], "AIzaSy", "tUvW", "ya29", "secret-token", "invoices"):
        assert secret not in error, error


def test_a_non_json_error_page_is_scrubbed_too() -> None:
    endpoint = Endpoint("openai", "openai.chat")
    request = RequestInfo(model="gpt-4o")
    parser = new_response_parser(endpoint, request, "text/html")
    parser.feed(f"<html><title>Denied for key {KEY}</title></html>".encode())
    call = build_call(
        ts=1.0, host="api.openai.com", endpoint=endpoint, request=request,
        result=parser.result(), status=403, attribution=Attribution(),
    )  # fmt: skip
    assert call.error and "non-JSON response body" in call.error
    assert KEY[:12] not in call.error and KEY[-8:] not in call.error


def test_an_amended_call_is_what_replace_makes_and_leaves_the_original_alone() -> None:
    """The recorder copies each row once with `amended` (replace costs ~12 us a call)."""
    from dataclasses import replace

    from devmeter.usage import Attribution, Call, amended

    call = Call(ts=1.5, provider="anthropic", endpoint="anthropic.messages", host="h",
                requested_model="m", model="m", attribution=Attribution(tool="t"),
                usage=Usage(input_tokens=3), cost_usd=Decimal("0.1"), price_source="p",
                status=200, error="was")  # fmt: skip
    changes = {"billing": "api", "account": "acct-1", "error": None, "loop_fingerprint": "f"}
    copy = amended(call, changes)
    assert copy == replace(call, **changes) and copy is not call
    assert (call.billing, call.error, call.loop_fingerprint) == ("unknown", "was", None)
    assert hash(copy) == hash(replace(call, **changes))
    with pytest.raises(TypeError, match="no field bogus"):
        amended(call, {"bogus": 1})


def test_a_new_call_is_what_the_dataclass_makes() -> None:
    """build_call makes each row with `new_call` (Call's __init__ costs ~5 us a call)."""
    from dataclasses import fields

    from devmeter.usage import Attribution, Call, new_call

    required = dict(ts=1.5, provider="anthropic", endpoint="anthropic.messages", host="h",
                    requested_model="m", model="m", attribution=Attribution(tool="t"),
                    usage=Usage(input_tokens=3), cost_usd=Decimal("0.1"), price_source="p",
                    status=200)  # fmt: skip
    made = new_call(**required)
    assert made == Call(**required) and hash(made) == hash(Call(**required))
    assert repr(made) == repr(Call(**required))
    assert [getattr(made, f.name) for f in fields(Call)] == [
        getattr(Call(**required), f.name) for f in fields(Call)
    ]
    every = {**required, "duration_ms": 7, "error": "e", "billing": "api", "response_id": "r"}
    assert new_call(**every) == Call(**every)
    with pytest.raises(TypeError):
        new_call(**required, bogus=1)
    without_status = {k: v for k, v in required.items() if k != "status"}
    with pytest.raises(TypeError):
        new_call(**without_status)
    with pytest.raises(TypeError):  # one unknown name standing in for a missing field
        new_call(**without_status, bogus=1)
    with pytest.raises(AttributeError):
        made.ts = 2.0  # type: ignore[misc]  # still frozen
