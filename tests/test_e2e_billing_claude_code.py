"""Which dollars are real: the real Claude Code CLI, once on a subscription
(`CLAUDE_CODE_OAUTH_TOKEN`) and once on an API key (`ANTHROPIC_API_KEY`), through a real
proxy to the fake Anthropic upstream answering with the headers each gets in life.

The ledger must record who pays for each call, `devmeter quota --json` must show the
windows exactly as the fake reported them, the switch to the API key must raise one
`billing_switch` alert naming the key by its last four characters only, `report --json`
must split billed from covered dollars to the micro-dollar, and no credential (nor any
part of one longer than that tail) may be on disk anywhere devmeter writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter.reports import format_usd
from tests.clients_env import (
    QUICK_TIMEOUT,
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
from tests.proxy_harness import RunningProxy
from tests.test_e2e_claude_code import opus_cost

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

# Planted credentials: distinctive, so any trace of them on disk is found.
OAUTH_TOKEN = "sk-ant-oat01-PLANTEDoauthZq7Xw2Vb9Nc4Md8Lk3Jh6Gf1Ds5Ap0"
API_KEY = "sk-ant-api03-PLANTEDkeyRt5Yu8Io2Pa6Sd9Fg3Hj7Kl1Zx4Cv0f3a9"

FIVE_H_RESET = 1_796_646_600  # epoch seconds, as Anthropic sends them
SEVEN_D_RESET = 1_797_000_000
SUBSCRIPTION_HEADERS = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-utilization": "0.62",
    "anthropic-ratelimit-unified-5h-reset": str(FIVE_H_RESET),
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-utilization": "0.31",
    "anthropic-ratelimit-unified-7d-reset": str(SEVEN_D_RESET),
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-overage-status": "allowed",
    "anthropic-ratelimit-unified-overage-utilization": "not-a-number",  # ignored, with a note
}
API_HEADERS = {
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3000",
    "anthropic-ratelimit-requests-reset": "2026-12-07T14:10:00Z",
}
USAGE = {
    "input_tokens": 1201,
    "cache_read_tokens": 3003,
    "cache_write_5m_tokens": 307,
    "cache_write_1h_tokens": 0,
    "output_tokens": 345,
    "reasoning_tokens": 0,
}
MICRO = Decimal("0.000001")


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def run_claude(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, repo: Path, **credential: str
) -> list[dict[str, Any]]:
    env = claude_env(proxy, tmp_path)
    env.pop("ANTHROPIC_API_KEY")
    env.update(credential)
    mark = last_id(proxy)
    done = devmeter_run(
        [str(cli("claude")), "-p", "say hi", "--output-format", "json"], cwd=repo, env=env
    )
    result = json.loads(done.stdout)
    assert result["subtype"] == "success", done.stdout
    return [r for r in rows_after(proxy, mark, at_least=1) if r["endpoint"] == "anthropic.messages"]


def devmeter(proxy: RunningProxy, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", *args],
        env={**os.environ, "DEVMETER_HOME": str(proxy.home)},
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def test_subscription_then_api_key(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "acme-api", "main")

    # 1. On the subscription: an OAuth token, answers with the unified quota headers.
    upstream.defaults.update(headers=SUBSCRIPTION_HEADERS, usage=USAGE)
    first = run_claude(proxy, upstream, tmp_path / "a", repo, CLAUDE_CODE_OAUTH_TOKEN=OAUTH_TOKEN)
    sent = upstream.find("anthropic.messages")
    assert sent and all(r.headers["authorization"] == f"Bearer {OAUTH_TOKEN}" for r in sent)
    assert first, describe(first)
    assert {r["billing"] for r in first} == {"subscription"}, describe(first)
    (sub_account,) = {r["account"] for r in first}
    assert sub_account.startswith("acct-")
    # The unreadable overage value is named on the row; the call is otherwise whole.
    assert all("overage utilization 'not-a-number'" in (r["error"] or "") for r in first)
    assert {(r["status"], r["complete"]) for r in first} == {(200, 1)}

    quota = json.loads(devmeter(proxy, "quota", "--json"))
    windows = {(q["account"], q["window"]): q for q in quota}
    five = windows[(sub_account, "5h")]
    assert {k: five[k] for k in ("provider", "utilization", "resets_at", "status")} == {
        "provider": "anthropic",
        "utilization": 0.62,
        "resets_at": iso(FIVE_H_RESET),
        "status": "allowed",
    }
    seven = windows[(sub_account, "7d")]
    assert (seven["utilization"], seven["resets_at"]) == (0.31, iso(SEVEN_D_RESET))
    assert (sub_account, "overage") not in windows  # its only figure was unreadable

    # 2. The same tool and repo on an API key: billed, and said once.
    upstream.reset()
    upstream.defaults.update(headers=API_HEADERS, usage=USAGE)
    second = run_claude(proxy, upstream, tmp_path / "b", repo, ANTHROPIC_API_KEY=API_KEY)
    assert all(r.headers["x-api-key"] == API_KEY for r in upstream.find("anthropic.messages"))
    assert {r["billing"] for r in second} == {"api"}, describe(second)
    (api_account,) = {r["account"] for r in second}
    assert api_account.startswith("acct-") and api_account != sub_account
    # ... a second API-key run raises no second alert.
    third = run_claude(proxy, upstream, tmp_path / "c", repo, ANTHROPIC_API_KEY=API_KEY)
    assert {r["billing"] for r in third} == {"api"}

    switches = [a for a in json.loads(devmeter(proxy, "alerts", "--json"))
                if a["kind"] == "billing_switch"]  # fmt: skip
    assert len(switches) == 1, switches
    assert switches[0]["message"] == (
        "Claude Code in acme-api is now billed to an API key: sk-…f3a9 — unset "
        "ANTHROPIC_API_KEY to go back to your subscription"
    )
    quota = {(q["account"], q["window"]): q for q in json.loads(devmeter(proxy, "quota", "--json"))}
    requests = quota[(api_account, "requests")]
    assert (requests["utilization"], requests["resets_at"]) == (0.25, "2026-12-07T14:10:00Z")

    # 3. Billed and covered, call by call and per repo, to the micro-dollar.
    ledger_cost = {r["id"]: r["cost_usd"] for r in proxy.rows()}  # exact Decimals
    assert all(c is not None for c in ledger_cost.values())
    sub_cost = sum((r["cost_usd"] for r in first), Decimal(0))
    api_cost = sum((r["cost_usd"] for r in second + third), Decimal(0))
    assert sub_cost > 0 and api_cost > 0
    # Every call asked for Opus with the fake's usage is priced as the test prices it.
    assert any(r["cost_usd"] == opus_cost(USAGE) for r in first + second)
    calls = json.loads(report(proxy, "--by", "request", "--json"))
    assert len(calls) == len(ledger_cost)
    for row in calls:
        cost = Decimal(str(row["cost_usd"]))
        if row["billing"] == "subscription":
            assert (Decimal(str(row["covered_usd"])), row["billed_usd"]) == (cost, 0)
            assert row["account"] == sub_account
        else:
            assert row["billing"] == "api"
            assert (Decimal(str(row["billed_usd"])), row["covered_usd"]) == (cost, 0)
            assert row["account"] == api_account
    (repo_row,) = json.loads(report(proxy, "--by", "repo", "--json"))
    assert Decimal(str(repo_row["covered_usd"])).quantize(MICRO) == sub_cost.quantize(MICRO)
    assert Decimal(str(repo_row["billed_usd"])).quantize(MICRO) == api_cost.quantize(MICRO)
    assert Decimal(str(repo_row["cost_usd"])).quantize(MICRO) == (sub_cost + api_cost).quantize(
        MICRO
    )
    sessions = json.loads(devmeter(proxy, "sessions", "--json"))
    covered = sum((Decimal(str(x["covered_usd"])) for x in sessions), Decimal(0))
    billed = sum((Decimal(str(x["billed_usd"])) for x in sessions), Decimal(0))
    assert (covered.quantize(MICRO), billed.quantize(MICRO)) == (
        sub_cost.quantize(MICRO),
        api_cost.quantize(MICRO),
    )
    table = report(proxy, "--by", "repo")
    assert f"billed {format_usd(api_cost)}" in table
    assert f"covered {format_usd(sub_cost)}" in table

    # 4. No credential, nor anything but the alert's 4-character tail, on disk.
    for path in proxy.home.rglob("*"):  # ledger, WAL, spool, salt, proxy.log, devmeter.log
        if path.is_file():
            data = path.read_bytes()
            for secret in (OAUTH_TOKEN, API_KEY):
                for piece in (secret, secret[:-4], secret[12:30], secret[-16:]):
                    assert piece.encode() not in data, f"{piece!r} found in {path}"
