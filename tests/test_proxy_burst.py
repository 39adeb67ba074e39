"""Burst caps through a real proxy: 200 concurrent calls against a $0.005 day cap.

Before calls in flight counted against a cap, all 200 went through ($2.34 spent against
$0.005): each was checked before any had finished. Now each admitted call reserves its
estimated cost (prompt and max_tokens at the model's price) until it ends, so a burst
stops at the cap: only the calls already running when it was reached get through.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

# One call: 1200 input + 345 output on Claude Opus 5.5 ($4 / $20 per million) = $0.0117.
USAGE = {
    "input_tokens": 1200, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 345, "reasoning_tokens": 0,
}  # fmt: skip
PER_CALL = Decimal(1200 * 4 + 345 * 20) / Decimal(1_000_000)
CALLS = 200


@pytest.fixture()
def proxy(tmp_path: Path) -> Iterator[tuple[RunningProxy, FakeUpstream]]:
    # Each answer takes 400 ms: the 200 calls are all in flight together.
    with FakeUpstream(usage=USAGE, delay_ms=400) as upstream:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text("[budgets.day]\nblock_usd = 0.005\n")
        running = start_proxy(home, upstream.url)
        try:
            yield running, upstream
        finally:
            running.stop()


def client(proxy: RunningProxy) -> anthropic.AsyncAnthropic:
    http = anthropic.DefaultAsyncHttpxClient(  # up to 1,000 connections: all 200 at once
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    return anthropic.AsyncAnthropic(api_key="sk-ant-test", http_client=http, max_retries=0)


async def ask(c: anthropic.AsyncAnthropic, max_tokens: int) -> tuple[int, str]:
    try:
        await c.messages.create(
            model="claude-opus-5-5",
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": "hi"}],
        )
    except anthropic.APIStatusError as exc:
        return exc.status_code, exc.message
    return 200, ""


async def burst(proxy: RunningProxy, max_tokens: int, calls: int = CALLS) -> list[tuple[int, str]]:
    async with client(proxy) as c:
        return await asyncio.gather(*[ask(c, max_tokens) for _ in range(calls)])


def test_200_concurrent_calls_stop_at_a_day_cap(
    proxy: tuple[RunningProxy, FakeUpstream],
) -> None:
    running, upstream = proxy
    # max_tokens 345: the estimate (~$0.0069) alone passes the $0.005 cap, so once one
    # call is in flight the cap is reached and every other call is refused.
    answers = asyncio.run(burst(running, max_tokens=345))
    statuses = Counter(status for status, _ in answers)
    assert statuses == {200: 1, 402: CALLS - 1}, statuses
    message = next(text for status, text in answers if status == 402)
    assert "devmeter: Spend for " in message
    assert "$0.01 more on its way in calls under way" in message
    assert len(upstream.find("anthropic.messages")) == 1  # the provider saw one call

    rows = running.new_calls(CALLS)
    assert sum(r["cost_usd"] for r in rows) == PER_CALL
    assert Counter(r["status"] for r in rows) == {200: 1, 402: CALLS - 1}


def test_reservations_are_handed_back_when_calls_end(tmp_path: Path) -> None:
    """Calls one after another below the cap all pass: each reservation ends with its call."""
    with FakeUpstream(usage=USAGE) as upstream:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text("[budgets.day]\nblock_usd = 0.1\n")
        running = start_proxy(home, upstream.url)
        try:

            async def one_by_one() -> list[int]:
                async with client(running) as c:
                    return [(await ask(c, 345))[0] for _ in range(5)]

            assert asyncio.run(one_by_one()) == [200] * 5  # $0.0585 of $0.10
        finally:
            running.stop()
