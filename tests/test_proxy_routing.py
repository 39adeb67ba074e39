"""Model routing through a real proxy: on rewrites, shadow only records, a refusal falls back.

The fake upstream logs the model it actually received, so these tests see what left
the proxy, and the ledger's costs are checked against published list prices.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

M = Decimal(1_000_000)
USAGE = {
    "input_tokens": 1200,
    "cache_read_tokens": 0,
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0,
    "output_tokens": 345,
    "reasoning_tokens": 0,
    "web_search_requests": 0,
}
# List prices, USD per million tokens: Opus 5.5 input 4 / output 20, Haiku 5.5 0.1 / 0.5.
OPUS = (1200 * 4 + 345 * 20) / M
HAIKU = (1200 * Decimal("0.1") + 345 * Decimal("0.5")) / M

CONFIG = """
[routing]
mode = "{mode}"

[[routing.rules]]
name = "opus-to-haiku"
provider = "anthropic"
model = "claude-opus-*"
to = "claude-haiku-5-5"
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def proxy_in_mode(mode: str, upstream: FakeUpstream, home: Path) -> RunningProxy:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(CONFIG.format(mode=mode))
    return start_proxy(home, upstream.url)


@pytest.fixture(scope="module")
def routed(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    proxy = proxy_in_mode("on", upstream, tmp_path_factory.mktemp("on") / "home")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def shadowed(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    proxy = proxy_in_mode("shadow", upstream, tmp_path_factory.mktemp("shadow") / "home")
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.defaults.update(usage=dict(USAGE))


def ask(proxy: RunningProxy, stream: bool = False) -> anthropic.types.Message:
    http = anthropic.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    # A fresh session each time: routing decisions depend on the session's cache.
    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        http_client=http,
        max_retries=0,
        default_headers={"X-Devmeter-Session": str(uuid.uuid4())},
    )
    args = {
        "model": "claude-opus-5-5",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream:
        with client.messages.stream(**args) as s:  # type: ignore[arg-type]
            return s.get_final_message()
    return client.messages.create(**args)  # type: ignore[arg-type]


def received_models(upstream: FakeUpstream) -> list[str | None]:
    return [r.model for r in upstream.find("anthropic.messages")]


@pytest.mark.parametrize("stream", [False, True])
def test_on_mode_sends_the_cheaper_model_and_records_the_saving(
    routed: RunningProxy, upstream: FakeUpstream, stream: bool
) -> None:
    routed.skip_existing()
    reply = ask(routed, stream)
    assert reply.content[0].type == "text"  # a normal answer
    assert received_models(upstream) == ["claude-haiku-5-5"]
    (row,) = routed.new_calls(1)
    assert row["requested_model"] == "claude-opus-5-5"
    assert row["model"] == "claude-haiku-5-5"
    assert row["routing"] == "routed" and row["route_rule"] == "opus-to-haiku"
    assert row["cost_usd"] == HAIKU
    assert row["alt_cost_usd"] == OPUS
    assert "model: claude-opus-5-5 -> claude-haiku-5-5" in row["route_note"]


def test_shadow_mode_changes_nothing_and_records_what_it_would_save(
    shadowed: RunningProxy, upstream: FakeUpstream
) -> None:
    shadowed.skip_existing()
    ask(shadowed)
    assert received_models(upstream) == ["claude-opus-5-5"]
    (row,) = shadowed.new_calls(1)
    assert (row["requested_model"], row["model"]) == ("claude-opus-5-5", "claude-opus-5-5")
    assert row["routing"] == "shadow" and row["route_target"] == "claude-haiku-5-5"
    assert row["cost_usd"] == OPUS
    assert row["alt_cost_usd"] == HAIKU


def test_refused_rewrite_falls_back_to_the_requested_model(
    routed: RunningProxy, upstream: FakeUpstream
) -> None:
    routed.skip_existing()
    upstream.set_next(status=400)  # the rewritten request is refused ...
    reply = ask(routed)  # ... and the client still gets the answer it asked for
    assert reply.model == "claude-opus-5-5"
    assert received_models(upstream) == ["claude-haiku-5-5", "claude-opus-5-5"]
    (row,) = routed.new_calls(1)
    assert row["routing"] == "fallback"
    assert row["status"] == 200
    assert row["model"] == "claude-opus-5-5"
    assert row["cost_usd"] == OPUS


def test_rate_limit_on_the_rewrite_is_not_retried(
    routed: RunningProxy, upstream: FakeUpstream
) -> None:
    routed.skip_existing()
    upstream.set_next(status=429)  # the original model would have hit this too
    with pytest.raises(anthropic.RateLimitError):
        ask(routed)
    assert received_models(upstream) == ["claude-haiku-5-5"]
    (row,) = routed.new_calls(1)
    assert row["status"] == 429 and row["routing"] == "routed"


def test_report_savings(routed: RunningProxy, shadowed: RunningProxy) -> None:
    routed.skip_existing()
    shadowed.skip_existing()
    ask(routed)
    ask(shadowed)
    routed.new_calls(1)
    shadowed.new_calls(1)
    for proxy, mode in ((routed, "routed"), (shadowed, "shadow")):
        out = subprocess.run(
            [sys.executable, "-m", "devmeter", "report", "--savings", "--json"],
            env=proxy.env(), capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        rows = [r for r in json.loads(out) if r["routing"] == mode]
        assert rows and rows[0]["rule"] == "opus-to-haiku"
        answered = len(proxy.rows("routing = ? AND status = 200", (mode,)))
        assert answered >= 1
        # Each answered call saves (or would save) Opus minus Haiku; refused ones save $0.
        assert Decimal(str(rows[0]["saving_usd"])) == (OPUS - HAIKU) * answered
        table = subprocess.run(
            [sys.executable, "-m", "devmeter", "report", "--savings"],
            env=proxy.env(), capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert "opus-to-haiku" in table and "claude-haiku-5-5" in table
