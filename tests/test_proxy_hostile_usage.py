"""Hostile usage numbers and long unreported streams through a real proxy.

An upstream that reports 1e30 tokens, a negative count or an impossible OpenRouter cost
(over HTTPS or Codex's WebSocket) gets its row kept and flagged, and the ledger goes on
writing the calls after it. A stream that reports no usage is billed for all the text
that streamed, not for the part the parser keeps.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from pathlib import Path

import httpx2
import pytest

from devmeter import tokens
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import SOCKET_SECONDS, RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

MESSAGES = "https://api.anthropic.com/v1/messages"
OPENROUTER = "https://openrouter.ai/api/v1/chat/completions"
CHAT = "https://api.openai.com/v1/chat/completions"
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def client(proxy: RunningProxy) -> httpx2.Client:
    return httpx2.Client(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle)), timeout=60
    )


def post(proxy: RunningProxy, url: str, body: dict[str, object], stream: bool = False) -> str:
    """One call in its own session, answered in full; the session."""
    sid = f"hostile-{uuid.uuid4().hex[:12]}"
    with client(proxy) as http:
        r = http.post(
            url, json={**body, "stream": stream}, headers={**HEADERS, "x-devmeter-session": sid}
        )
    assert r.status_code == 200
    return sid


def row_of(proxy: RunningProxy, sid: str) -> dict[str, object]:
    """The call's row, once a normal call made after it has been written too."""
    after = post(proxy, MESSAGES, {"model": "claude-opus-5-5", "max_tokens": 8, "messages": []})
    deadline = time.monotonic() + 10
    while not proxy.rows("session = ?", (after,)):
        assert time.monotonic() < deadline, proxy.log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)
    (row,) = proxy.rows("session = ?", (sid,))
    return row


ANTHROPIC = {
    "model": "claude-opus-5-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tokens_out", [10**30, 2**63 - 1, 700_000_000_000, -1_000_000])
def test_impossible_anthropic_counts_are_recorded_as_0_and_flagged(
    proxy: RunningProxy, upstream: FakeUpstream, tokens_out: int, stream: bool
) -> None:
    upstream.set_next(usage={"output_tokens": tokens_out, "reasoning_tokens": 0})
    row = row_of(proxy, post(proxy, MESSAGES, ANTHROPIC, stream))
    assert row["output_tokens"] == 0 and row["input_tokens"] == 1200
    assert "usage.output_tokens=" in str(row["error"]) and "recorded as 0" in str(row["error"])
    assert row["cost_usd"] is not None and row["cost_usd"] > 0  # the sane counts still cost


@pytest.mark.parametrize("cost", [1e30, 9223372036854775807, -1000])
def test_an_impossible_openrouter_cost_is_priced_from_list_prices(
    proxy: RunningProxy, upstream: FakeUpstream, cost: float
) -> None:
    upstream.set_next(usage={"cost": cost})
    body = {"model": "anthropic/claude-sonnet-4.5", "messages": [{"role": "user", "content": "hi"}]}
    row = row_of(proxy, post(proxy, OPENROUTER, body))
    assert "usage.cost=" in str(row["error"]) and "priced from list prices" in str(row["error"])
    assert row["cost_usd"] is not None and 0 < row["cost_usd"] < 1
    assert row["price_source"] != "openrouter reported"


def test_impossible_counts_over_codex_websocket(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:

    upstream.set_next(usage={"output_tokens": 10**30, "input_tokens": -5, "reasoning_tokens": 0})
    sid = f"hostile-ws-{uuid.uuid4().hex[:8]}"
    turn = {"type": "response.create", "model": "gpt-5", "input": "hi", "stream": True}
    with proxy.responses_socket(sid) as socket:
        socket.send(json.dumps(turn))
        while json.loads(socket.recv(timeout=SOCKET_SECONDS))["type"] != "response.completed":
            pass
    row = row_of(proxy, sid)
    assert (row["output_tokens"], row["input_tokens"]) == (0, 0)
    # The Responses parser itself floors a negative input at 0; 1e30 is flagged here.
    assert "usage.output_tokens=" in str(row["error"]), row


def test_a_million_characters_with_no_usage_are_billed_for_all_of_them(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Issue 16: an OpenAI stream without include_usage is estimated from its text; with
    1M characters the estimate covered only the 256K the parser keeps (~65k tokens)."""
    # 1,000 deltas of 1,000 characters (the fake upstream sends one delta per word).
    text = ("Sure,-here-is-the-refactor-you-asked-for.-" * 24 + "done\n") * 1_000
    upstream.set_next(text=text)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "refactor"}]}
    row = row_of(proxy, post(proxy, CHAT, body, stream=True))
    assert row["estimated"] == 1 and row["complete"] == 1
    expected = tokens.estimate_tokens(text, "gpt-4o")  # the whole text, tokenized
    assert abs(row["output_tokens"] - expected) <= expected // 100, (row["output_tokens"], expected)
    assert row["output_tokens"] > 200_000


def test_a_stream_cut_after_a_million_characters_is_billed_for_them(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Issue 13: a hung-up stream's estimate stopped at 65,536 output tokens however much
    text had streamed. Anthropic's message_start reports the input; the upstream then
    hangs up after ~1M characters of text, before the final usage."""
    text = ("Sure,-here-is-the-refactor-you-asked-for.-" * 24 + "done\n") * 1_000
    upstream.set_next(text=text, cut_after=1_000)  # message_start, a block start, ~998 deltas
    sid = f"hostile-{uuid.uuid4().hex[:12]}"
    with (
        client(proxy) as http,
        http.stream(
            "POST", MESSAGES, json={**ANTHROPIC, "stream": True},
            headers={**HEADERS, "x-devmeter-session": sid},
        ) as response,
    ):  # fmt: skip
        streamed = b""
        with pytest.raises(httpx2.HTTPError):  # the upstream hung up mid-stream
            for chunk in response.iter_raw():
                streamed += chunk
    row = row_of(proxy, sid)
    assert row["complete"] == 0 and row["estimated"] == 1
    assert row["input_tokens"] == 1200  # reported up front, kept
    passed = streamed.count(b'"type":"text_delta"') * 1013  # each delta is one 1,013-char word
    assert passed > 900_000
    expected = tokens.estimate_tokens(text[:passed], "claude-opus-5-5")
    assert abs(row["output_tokens"] - expected) <= expected // 50, (row["output_tokens"], expected)


def test_a_price_typo_in_the_config_is_recorded_unpriced(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`input_mtok = 1e12` made every call cost millions, past what the ledger holds."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[[prices]]\nmodel = "claude-*"\ninput_mtok = 1e12\noutput_mtok = 1.0\n'
    )
    typo = start_proxy(home, upstream.url)
    try:
        sid = post(typo, MESSAGES, ANTHROPIC)
        second = post(typo, MESSAGES, ANTHROPIC)
        deadline = time.monotonic() + 10
        while len(typo.rows()) < 2:
            assert time.monotonic() < deadline, typo.log.read_text(errors="replace")[-3000:]
            time.sleep(0.05)
        for session in (sid, second):
            (row,) = typo.rows("session = ?", (session,))
            assert row["cost_usd"] is None and row["input_tokens"] == 1200
            assert "out of range" in str(row["error"]) and "check the price" in str(row["error"])
    finally:
        typo.stop()
