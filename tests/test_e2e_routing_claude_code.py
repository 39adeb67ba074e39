"""Model routing with the real Claude Code CLI: `on` rewrites, `shadow` only records.

Claude Code asks for Opus 4.8 with adaptive thinking, effort and a dozen beta headers;
the rule sends it to Sonnet 5.5. The fake upstream logs the model it really received,
and `devmeter report --savings` must show the saving to the micro-dollar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.clients_env import (
    claude_env,
    cli,
    describe,
    devmeter_run,
    git_repo,
    last_id,
    report,
    rows_after,
)
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

REQUESTED = "claude-opus-4-8"  # what Claude Code 2.1.197 asks for
TARGET = "claude-sonnet-5-5"
M = Decimal(1_000_000)
USAGE = {
    "input_tokens": 2345, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 67, "reasoning_tokens": 0,
}  # fmt: skip
# List prices, USD per million tokens: Opus 4.8 input 5 / output 25; Sonnet 5.5 2 / 10.
OPUS = (2345 * 5 + 67 * 25) / M
SONNET = (2345 * 2 + 67 * 10) / M

CONFIG = f"""
[routing]
mode = "{{mode}}"

[[routing.rules]]
name = "claude-code-opus-to-sonnet"
tool = "claude-code"
model = "claude-opus-*"
to = "{TARGET}"
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


@pytest.fixture(params=["on", "shadow"])
def mode_proxy(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[tuple[str, RunningProxy]]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(CONFIG.format(mode=request.param))
    proxy = start_proxy(home, upstream.url)
    yield request.param, proxy
    proxy.stop()


def test_claude_code_is_routed_or_shadowed(
    mode_proxy: tuple[str, RunningProxy], upstream: FakeUpstream, tmp_path: Path
) -> None:
    mode, proxy = mode_proxy
    upstream.requests.clear()
    repo = git_repo(tmp_path / "acme-api", "main")
    mark = last_id(proxy)
    done = devmeter_run(
        [str(cli("claude")), "-p", "say hi", "--output-format", "json"],
        cwd=repo,
        env=claude_env(proxy, tmp_path),
    )
    result = json.loads(done.stdout)
    assert result["subtype"] == "success" and result["result"], done.stdout  # a normal answer

    sent = {r.model for r in upstream.find("anthropic.messages")}
    assert sent == ({TARGET} if mode == "on" else {REQUESTED})

    (row,) = rows_after(proxy, mark, at_least=1)
    assert row["requested_model"] == REQUESTED, describe([row])
    assert row["route_rule"] == "claude-code-opus-to-sonnet"
    if mode == "on":
        assert (row["model"], row["routing"]) == (TARGET, "routed")
        assert (row["cost_usd"], row["alt_cost_usd"]) == (SONNET, OPUS)
        # What the rewrite had to change for Sonnet is on record.
        assert f"model: {REQUESTED} -> {TARGET}" in row["route_note"]
    else:
        assert (row["model"], row["routing"]) == (REQUESTED, "shadow")
        assert row["route_target"] == TARGET
        assert (row["cost_usd"], row["alt_cost_usd"]) == (OPUS, SONNET)

    (saved,) = json.loads(report(proxy, "--savings", "--json"))
    assert saved["routing"] == ("routed" if mode == "on" else "shadow")
    assert (saved["requested_model"], saved["target"]) == (REQUESTED, TARGET)
    assert Decimal(repr(saved["saving_usd"])) == OPUS - SONNET
