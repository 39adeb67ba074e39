"""The Grafana dashboard in packaging/, proven against a real Prometheus (Grafana itself is
not installable here): every panel's PromQL, with the dashboard's variables filled in as
Grafana would, runs through Prometheus' HTTP API after calls flowed through a real proxy
and returns data, with no error. The same run checks the quota-window gauges exactly, in
Prometheus and as pushed over OTLP to a local receiver (tests/otlp_receiver.py).

Calls: API-key calls to three providers and a 500 (billed, errors), a Claude subscription
call answered with the unified quota headers (covered, quota), with model routing first
in shadow mode and then on (a config reload), so that every panel has something to show.
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.export_helpers import Prometheus, free_port, prometheus, send_calls, wait_for
from tests.fake_upstream import FakeUpstream
from tests.otlp_receiver import OtlpReceiver, attrs
from tests.proxy_harness import RunningProxy, start_proxy
from tests.test_proxy_config_reload import edit

pytestmark = pytest.mark.proxy

DASHBOARD = Path(__file__).resolve().parent.parent / "packaging" / "grafana-dashboard.json"
OAUTH_TOKEN = "sk-ant-oat01-PLANTEDgrafanaSubscriptionPl4Ok8Ij6"
# Reset times an hour and a day on, whole seconds as Anthropic sends them.
FIVE_H_RESET = int(time.time()) + 3600
SEVEN_D_RESET = int(time.time()) + 86400
CONFIG = """
[export.prometheus]
listen = "127.0.0.1:{port}"
machine = "ci-box"

[export.otlp]
endpoint = "{otlp}"
interval_seconds = 0.2

[budgets.day]
notify_usd = [1000]
block_usd = 5000

[routing]
mode = "{mode}"

[[routing.rules]]
name = "opus-to-haiku"
provider = "anthropic"
model = "claude-opus-*"
to = "claude-haiku-5-5"
{accounts}"""
# What Grafana puts in place of its variables: every machine and repo ("All" is the
# dashboard's allValue), a range covering the run, a rate window of several scrapes.
VARIABLES = {"$__rate_interval": "30s", "$__range": "10m", "$machine": ".*", "$repo": ".*"}


@dataclass
class Flowed:
    server: Prometheus
    proxy: RunningProxy
    account: str
    receiver: OtlpReceiver


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def filled(expr: str, variables: dict[str, str]) -> str:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def subscription_call(proxy: RunningProxy) -> None:
    trust = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx2.Client(proxy=proxy.url, verify=trust, timeout=30) as c:
        c.post(
            "https://api.anthropic.com/v1/messages",
            headers={"authorization": f"Bearer {OAUTH_TOKEN}", "anthropic-version": "2023-06-01",
                     "anthropic-beta": "oauth-2025-04-20"},
            json={"model": "claude-opus-4-8", "max_tokens": 16,
                  "messages": [{"role": "user", "content": "hi"}]},
        ).raise_for_status()  # fmt: skip


@pytest.fixture(scope="module")
def flowed(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flowed]:
    tmp = tmp_path_factory.mktemp("grafana")
    home = tmp / "home"
    home.mkdir()
    port = free_port()
    config = home / "config.toml"
    receiver = OtlpReceiver().start()
    config.write_text(CONFIG.format(port=port, otlp=receiver.url, mode="shadow", accounts=""))
    upstream.reset()
    proxy = start_proxy(home, upstream.url)
    try:
        with prometheus(tmp / "prom", f"127.0.0.1:{port}") as server:
            sent = send_calls(proxy, rounds=1)  # shadow routing on the Opus calls
            upstream.defaults.update(headers={
                "anthropic-ratelimit-unified-status": "allowed",
                "anthropic-ratelimit-unified-5h-utilization": "0.62",
                "anthropic-ratelimit-unified-5h-reset": str(FIVE_H_RESET),
                "anthropic-ratelimit-unified-7d-utilization": "0.31",
                "anthropic-ratelimit-unified-7d-reset": str(SEVEN_D_RESET),
            })  # fmt: skip
            subscription_call(proxy)
            upstream.reset()
            rows = proxy.new_calls(sent + 1)
            (account,) = {r["account"] for r in rows if r["billing"] == "subscription"}
            # Routing on, and a label for the subscription's account: a live reload.
            labelled = f'\n[accounts]\n"{account}" = "team-max"\n'
            edit(config, CONFIG.format(port=port, otlp=receiver.url, mode="on",
                                       accounts=labelled))  # fmt: skip
            wait_for("the reload", lambda: "config reloaded" in proxy.log.read_text())
            proxy.new_calls(send_calls(proxy, rounds=1, error=False))  # routed
            yield Flowed(server, proxy, account, receiver)
    finally:
        proxy.stop()
        receiver.stop()
        upstream.reset()


def label_values(server: Prometheus, label: str, metric: str) -> list[str]:
    query = urllib.parse.urlencode({"match[]": metric})
    with urllib.request.urlopen(f"{server.url}/api/v1/label/{label}/values?{query}") as answer:
        body: dict[str, Any] = json.loads(answer.read())
    assert body["status"] == "success", body
    return list(body["data"])


def test_every_panel_query_of_the_grafana_dashboard_returns_data(flowed: Flowed) -> None:
    server = flowed.server
    found = expressions()
    titles = {title for title, _ in found}
    # The panels the team asked for: billed vs covered, savings, quota windows.
    assert any("Billed vs covered" in t for t in titles), titles
    assert any("saved" in t.lower() or "savings" in t.lower() for t in titles), titles
    assert any("Quota" in t for t in titles), titles
    # The dashboard's template variables, as Grafana asks for them (label_values).
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(
                r"label_values\((\w+), (\w+)\)", variable["definition"]
            ).groups()  # type: ignore[union-attr]
            values = wait_for(f"values of ${variable['name']}",
                              lambda m=metric, lb=label: label_values(server, lb, m))  # fmt: skip
            assert values, variable["name"]
    assert "ci-box" in label_values(server, "machine", "devmeter_cost_usd_total")
    for variables in (VARIABLES, {**VARIABLES, "$machine": "ci-box"}):
        for title, expr in found:
            promql = filled(expr, variables)
            # Prometheus.query asserts status "success": a query that does not parse or
            # does not evaluate fails here, naming the query.
            result = wait_for(f"data for {title!r}: {promql}",
                              lambda q=promql: server.query(q))  # fmt: skip
            assert result, (title, promql)


def test_quota_windows_reach_prometheus_and_otlp_exactly(flowed: Flowed) -> None:
    server = flowed.server

    def windows() -> dict[str, tuple[Decimal, Decimal]] | None:
        found: dict[str, tuple[Decimal, Decimal]] = {}
        for sample in server.query('devmeter_quota_utilization_ratio{account="team-max"}'):
            labels = sample["metric"]
            reset = server.scalar(
                'devmeter_quota_reset_timestamp_seconds{account="team-max",'
                f'window="{labels["window"]}"}}'
            )
            assert (labels["machine"], labels["provider"]) == ("ci-box", "anthropic")
            found[labels["window"]] = (Decimal(sample["value"][1]), reset or Decimal(0))
        return found or None

    got = wait_for("the labelled quota windows", windows)
    assert got == {
        "5h": (Decimal("0.62"), Decimal(FIVE_H_RESET)),
        "7d": (Decimal("0.31"), Decimal(SEVEN_D_RESET)),
    }
    # The account's label replaced its fingerprint; the fingerprint is not another series.
    assert server.query(f'devmeter_quota_utilization_ratio{{account="{flowed.account}"}}') == []

    def pushed() -> dict[str, tuple[Decimal, Decimal]] | None:
        metrics = flowed.receiver.latest_metrics()
        if "devmeter.quota.utilization" not in metrics:
            return None
        resets = {
            attrs(p.attributes)["devmeter.quota.window"]: p.as_double
            for p in metrics["devmeter.quota.reset_time"].gauge.data_points
        }
        found = {}
        for point in metrics["devmeter.quota.utilization"].gauge.data_points:
            a = attrs(point.attributes)
            if a["devmeter.account"] != "team-max":
                return None  # a push from before the reload
            assert (a["gen_ai.provider.name"], a["devmeter.machine"]) == ("anthropic", "ci-box")
            window = a["devmeter.quota.window"]
            found[window] = (Decimal(repr(point.as_double)), Decimal(repr(resets[window])))
        return found or None

    assert wait_for("the quota windows pushed over OTLP", pushed) == {
        "5h": (Decimal("0.62"), Decimal(FIVE_H_RESET)),
        "7d": (Decimal("0.31"), Decimal(SEVEN_D_RESET)),
    }
