"""`[export.prometheus]`: `/metrics` in the Prometheus text format, read from the ledger.

prometheus-client (the reference client) serves it from its own threads; each scrape
folds in the calls written since the last one (devmeter/export/counters.py) and reports
totals over the whole ledger, so a counter never goes backwards, across restarts too.
Nothing here runs on the proxy's event loop.

Names are a contract that dashboards read: add, never rename.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from devmeter.export.counters import TOKEN_TYPES, Key, LedgerCounters, QuotaWindow
from devmeter.money import PICO

COMMON = ("provider", "model", "tool", "repo", "machine")


def _usd(pusd: int) -> float:
    return float(Decimal(pusd) / PICO)


class LedgerCollector(Collector):
    def __init__(self, counters: LedgerCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        counters = self.counters
        counters.refresh()
        billing = counters.billing_known()
        cost_labels = [*COMMON, "billing"] if billing else list(COMMON)
        cost = CounterMetricFamily(
            "devmeter_cost_usd",
            "Cost of metered calls at list price, in USD (unpriced calls count 0).",
            labels=cost_labels,
        )
        tokens = CounterMetricFamily(
            "devmeter_tokens", "Tokens by type; input excludes cache reads and writes.",
            labels=[*COMMON, "type"],
        )  # fmt: skip
        requests = CounterMetricFamily(
            "devmeter_requests", "Metered calls by status: ok, error, or blocked by devmeter.",
            labels=[*COMMON, "status"],
        )  # fmt: skip
        errors = CounterMetricFamily(
            "devmeter_errors",
            "Calls that failed, by HTTP status (none: no answer; cut: cut off mid-stream).",
            labels=[*COMMON, "code"],
        )
        blocked = CounterMetricFamily(
            "devmeter_blocked_requests", "Calls devmeter refused (a cap, a stop or a pause).",
            labels=list(COMMON),
        )  # fmt: skip
        unpriced = CounterMetricFamily(
            "devmeter_unpriced_requests", "Calls no price list prices: tokens, no cost.",
            labels=list(COMMON),
        )  # fmt: skip
        savings = CounterMetricFamily(
            "devmeter_routing_savings_usd",
            "Model routing: saved (routing=routed) and what it would save (routing=shadow).",
            labels=[*COMMON, "routing", "rule"],
        )
        folded: dict[str, dict[tuple[str, ...], float]] = {}

        def add(metric: str, labels: tuple[str, ...], value: float) -> None:
            series = folded.setdefault(metric, {})
            series[labels] = series.get(labels, 0) + value

        for key, sums in list(counters.sums.items()):
            common = self._common(key)
            add("cost", (*common, key.billing) if billing else common, sums.cost_pusd)
            for kind in TOKEN_TYPES:
                add("tokens", (*common, kind), sums.tokens(kind))
            add("requests", (*common, key.status), sums.requests)
            if key.status == "error":
                add("errors", (*common, key.code), sums.requests)
            if key.status == "blocked":
                add("blocked", common, sums.requests)
            if sums.unpriced:
                add("unpriced", common, sums.unpriced)
            if key.routing in ("routed", "shadow"):
                add("savings", (*common, key.routing, key.rule), sums.saving_pusd)
        money = {"cost", "savings"}
        families = {"cost": cost, "tokens": tokens, "requests": requests, "errors": errors,
                    "blocked": blocked, "unpriced": unpriced, "savings": savings}  # fmt: skip
        for name, family in families.items():
            for labels, value in sorted(folded.get(name, {}).items()):
                family.add_metric(list(labels), _usd(int(value)) if name in money else value)
            yield family
        yield from self._gauges()

    def _common(self, key: Key) -> tuple[str, ...]:
        c = self.counters
        return (key.provider, key.model, key.tool, c.repo_label(key.repo), c.machine)

    def _gauges(self) -> Iterable[Metric]:
        c = self.counters
        g = c.gauges()
        machine = c.machine
        live = GaugeMetricFamily(
            "devmeter_live_sessions", "Sessions with a call in the last 10 minutes.",
            labels=["machine", "tool"],
        )  # fmt: skip
        for tool, count in sorted(g.live_sessions.items()):
            live.add_metric([machine, tool], count)
        yield live
        burn = GaugeMetricFamily(
            "devmeter_burn_rate_usd_per_hour",
            "This machine's spend over the last 10 minutes, per hour.", labels=["machine"],
        )  # fmt: skip
        burn.add_metric([machine], float(g.burn_usd_per_hour))
        yield burn
        top = GaugeMetricFamily(
            "devmeter_session_burn_rate_max_usd_per_hour",
            "The fastest-spending session's last 10 minutes, per hour.", labels=["machine"],
        )  # fmt: skip
        top.add_metric([machine], float(g.max_session_burn_usd_per_hour))
        yield top
        yield from _budget_gauges(machine, g.spent_usd, c.budgets)
        yield from _quota_gauges(machine, c.quota_windows())


def _quota_gauges(machine: str, windows: Iterable[QuotaWindow]) -> Iterable[Metric]:
    labels = ["machine", "provider", "account", "window"]
    utilization = GaugeMetricFamily(
        "devmeter_quota_utilization_ratio",
        "How full each subscription or rate-limit window is, 0 to 1, as the provider's "
        "last answer said; account: its [accounts] label, else a salted fingerprint.",
        labels=labels,
    )
    resets = GaugeMetricFamily(
        "devmeter_quota_reset_timestamp_seconds",
        "When each quota window resets, in Unix seconds.",
        labels=labels,
    )
    for w in windows:
        utilization.add_metric([machine, w.provider, w.account, w.window], w.utilization)
        if w.resets_at is not None:
            resets.add_metric([machine, w.provider, w.account, w.window], w.resets_at)
    yield utilization
    yield resets


def _budget_gauges(machine: str, spent: dict[str, Decimal], budgets: Any) -> Iterable[Metric]:
    spent_family = GaugeMetricFamily(
        "devmeter_budget_spent_usd",
        "Spend in each budget scope's current period: day, month; session and repo: the "
        "highest live session, the highest repo.",
        labels=["machine", "scope"],
    )
    cap_family = GaugeMetricFamily(
        "devmeter_budget_cap_usd", "The configured hard cap (block_usd) per scope.",
        labels=["machine", "scope"],
    )  # fmt: skip
    state_family = GaugeMetricFamily(
        "devmeter_budget_state",
        "0: under every threshold; 1: past a notify_usd threshold; 2: at or past the cap.",
        labels=["machine", "scope"],
    )
    for scope in sorted(("session", "repo", "day", "month")):
        usd = spent.get(scope, Decimal(0))  # no ledger yet: nothing spent, caps still shown
        spent_family.add_metric([machine, scope], float(usd))
        config = budgets.scope(scope) if budgets is not None else None
        state = 0
        if config is not None:
            if config.block_usd is not None:
                cap_family.add_metric([machine, scope], float(config.block_usd))
                if usd >= config.block_usd:
                    state = 2
            if state == 0 and any(usd >= level for level in config.notify_usd):
                state = 1
        state_family.add_metric([machine, scope], state)
    yield spent_family
    yield cap_family
    yield state_family


class PrometheusServer:
    """`/metrics` on its own threads, until `close`."""

    def __init__(self, counters: LedgerCounters, listen: tuple[str, int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = LedgerCollector(counters)
        self.registry.register(self.collector)
        host, port = listen
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_address
        self.address = (host, int(bound[1]))

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        closing = threading.Thread(target=self._server.shutdown, daemon=True)
        closing.start()
        closing.join(5)
        self._server.server_close()
