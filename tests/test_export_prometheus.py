"""A real Prometheus server scrapes devmeter's /metrics while calls flow through a real
proxy: its PromQL totals equal `devmeter report --json` to the micro-dollar, and a proxy
restart sends no counter backwards (PromQL's own `resets()` sees none)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.export_helpers import (
    Prometheus,
    free_port,
    ledger_totals,
    prometheus,
    send_calls,
    wait_for,
)
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

MICRO = Decimal("0.000001")


def promql_totals(server: Prometheus) -> dict[str, Decimal | None]:
    totals = {
        "cost": server.scalar("sum(devmeter_cost_usd_total)"),
        "requests": server.scalar("sum(devmeter_requests_total)"),
    }
    for kind in ("input", "cache_read", "cache_write", "output"):
        totals[kind] = server.scalar(f'sum(devmeter_tokens_total{{type="{kind}"}})')
    return totals


def same(prom: dict[str, Decimal | None], ledger: dict[str, Decimal]) -> bool:
    return all(
        prom[k] is not None and abs(prom[k] - ledger[k]) < MICRO  # type: ignore[operator]
        for k in ledger
    )


def test_prometheus_scrapes_the_ledger_totals_and_a_restart_sends_nothing_backwards(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[export.prometheus]\nlisten = "127.0.0.1:{port}"\nmachine = "ci-box"\n'
    )
    proxy: RunningProxy = start_proxy(home, upstream.url)
    try:
        with prometheus(tmp_path / "prom", f"127.0.0.1:{port}") as server:
            sent = send_calls(proxy, rounds=2)
            proxy.new_calls(sent)
            ledger = ledger_totals(proxy)
            assert ledger["cost"] > 0 and ledger["requests"] == sent
            prom = wait_for(
                "PromQL totals to equal the ledger's",
                lambda: (p := promql_totals(server)) and same(p, ledger) and p,
            )
            assert prom["cost"].quantize(MICRO) == ledger["cost"].quantize(MICRO)
            # Labels as documented: machine, status, the error's code.
            assert server.scalar('sum(devmeter_requests_total{status="error"})') == 2
            assert server.scalar('sum(devmeter_errors_total{code="500"})') == 2
            assert server.scalar('count(devmeter_cost_usd_total{machine!="ci-box"})') is None
            providers = {r["metric"]["provider"] for r in server.query("devmeter_cost_usd_total")}
            assert providers == {"anthropic", "openai", "google"}

            # Every scrape so far succeeded (each one runs on a new server thread).
            wait_for(
                "three scrapes",
                lambda: (server.scalar('count_over_time(up{job="devmeter"}[1m])') or 0) >= 3,
            )
            assert server.scalar('min_over_time(up{job="devmeter"}[1m])') == 1

            proxy.stop()
            proxy = start_proxy(home, upstream.url)
            proxy.skip_existing()  # the ledger's rows so far: wait for the new ones only
            sent_after = send_calls(proxy, rounds=1, error=False)
            proxy.new_calls(sent_after)
            after = ledger_totals(proxy)
            assert after["cost"] > ledger["cost"]
            wait_for(
                "PromQL totals after the restart",
                lambda: (p := promql_totals(server)) and same(p, after) and p,
            )
            for metric in (
                "devmeter_cost_usd_total",
                "devmeter_tokens_total",
                "devmeter_requests_total",
            ):
                assert server.scalar(f"sum(resets({metric}[10m]))") == 0, metric
    finally:
        proxy.stop()
