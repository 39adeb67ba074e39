"""The router's sessions: keyed like the guard's, and their spend restored after a restart."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

from devmeter.guard import Guard
from devmeter.ledger import write_calls
from devmeter.paths import Paths
from devmeter.providers import Endpoint, parse_request
from devmeter.proxy.server import _seed
from devmeter.routing import parse_routing
from devmeter.routing.session_router import Router
from devmeter.usage import Attribution, Call, Usage

NOW = 1_800_000_000.0
ENDPOINT = Endpoint("anthropic", "anthropic.messages")
BODY = json.dumps({"model": "claude-opus-5-5", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
# Spend over $1 in the session routes Opus to Haiku.
RULES = {"mode": "on", "rules": [
    {"name": "spendy", "session_spend_over_usd": 1, "to": "claude-haiku-5-5"}]}  # fmt: skip


def spent(who: Attribution, cost: str, ts: float = NOW) -> Call:
    return Call(ts=ts, provider="anthropic", endpoint=ENDPOINT.api, host="api.anthropic.com",
                requested_model="claude-opus-5-5", model="claude-opus-5-5", attribution=who,
                usage=Usage(output_tokens=10), cost_usd=Decimal(cost), price_source="test",
                status=200)  # fmt: skip


def routed(router: Router, who: Attribution) -> bool:
    plan = router.plan(ENDPOINT, parse_request(ENDPOINT, BODY), who, {}, BODY, NOW)
    return plan is not None and plan.decision.rule == "spendy" and plan.rewrite


def test_clients_without_a_session_id_do_not_share_one_routing_session() -> None:
    """Without a session id a call's session is its tool@repo, as for the guard: one
    client's spend must not route an unrelated client's calls."""
    router = Router(parse_routing(RULES))
    claude = Attribution(tool="claude-code", repo="/src/acme")
    script = Attribution(tool="anthropic-sdk", repo="/src/other")
    router.settle(spent(claude, "2"), None)
    assert routed(router, claude)
    assert not routed(router, script)
    assert not routed(router, Attribution(tool="claude-code", repo="/src/other"))


def test_session_spend_survives_a_restart(tmp_path: Path) -> None:
    """The proxy seeds the router from the ledger at start, as it seeds the budgets."""
    paths = Paths(config_file=tmp_path / "config.toml", data_dir=tmp_path)
    now = time.time()  # `_seed` reads the ledger as of the clock
    with_id = Attribution(tool="claude-code", session="s-1", repo="/src/acme")
    without_id = Attribution(tool="codex", repo="/src/acme")
    cheap = Attribution(tool="claude-code", session="s-2", repo="/src/acme")
    write_calls(paths.ledger, [
        spent(with_id, "0.75", now - 9 * 86400), spent(with_id, "0.75", now - 60),  # $1.50
        spent(without_id, "1.20", now - 60),
        spent(cheap, "0.50", now - 60),
        # Sessionless spend older than a week is not the same "session" any more.
        spent(Attribution(tool="aider", repo="/src/acme"), "5", now - 8 * 86400),
    ])  # fmt: skip
    guard = Guard({}, {})
    router = Router(parse_routing(RULES), sessions=guard.sessions)  # as proxy/server.py does
    _seed(guard, paths)
    assert routed(router, with_id)
    assert routed(router, without_id)
    assert not routed(router, cheap)
    assert not routed(router, Attribution(tool="aider", repo="/src/acme"))
