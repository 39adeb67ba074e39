"""OTLP/HTTP export through a real proxy to a local receiver that decodes the protobuf
with the official `opentelemetry-proto`: names, attributes and values match the ledger,
and with the receiver down for a while and then back, nothing is lost."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.export_helpers import ledger_totals, send_calls, wait_for
from tests.fake_upstream import FakeUpstream
from tests.otlp_receiver import OtlpReceiver, attrs
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

MICRO = Decimal("0.000001")


def pushed_totals(receiver: OtlpReceiver) -> dict[str, Decimal] | None:
    metrics = receiver.latest_metrics()
    if "devmeter.cost" not in metrics:
        return None
    totals = {
        "cost": sum(
            (Decimal(repr(p.as_double)) for p in metrics["devmeter.cost"].sum.data_points),
            Decimal(0),
        )
    }
    totals["requests"] = Decimal(
        sum(p.as_int for p in metrics["devmeter.requests"].sum.data_points)
    )
    for point in metrics["gen_ai.client.token.usage"].histogram.data_points:
        kind = attrs(point.attributes)["devmeter.token.type"]
        totals[kind] = totals.get(kind, Decimal(0)) + Decimal(int(point.sum))
    return totals


def matches(pushed: dict[str, Decimal] | None, ledger: dict[str, Decimal]) -> bool:
    return pushed is not None and all(
        abs(pushed.get(k, Decimal(-1)) - v) < MICRO for k, v in ledger.items()
    )


def start(home: Path, upstream: FakeUpstream, receiver: OtlpReceiver) -> RunningProxy:
    return start_proxy(
        home,
        upstream.url,
        env={"DEVMETER_OTLP_HEADERS": "authorization=Bearer%20team-token,x-team=platform"},
    )


def test_otlp_push_matches_the_ledger_and_survives_a_collector_outage(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    receiver = OtlpReceiver().start()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[export.otlp]\n"
        f'endpoint = "{receiver.url}"\n'
        "interval_seconds = 0.2\n"
        "logs = true\n"
        "[export]\n"
        'machine = "ci-box"\n'
    )
    proxy = start(home, upstream, receiver)
    try:
        sent = send_calls(proxy, rounds=2)
        rows = proxy.new_calls(sent)
        ledger = ledger_totals(proxy)
        wait_for(
            "the pushed totals to equal the ledger's",
            lambda: matches(pushed_totals(receiver), ledger),
        )

        # Names and attributes: the GenAI semantic conventions plus devmeter's own.
        metrics = receiver.latest_metrics()
        assert {
            "gen_ai.client.token.usage",
            "devmeter.cost",
            "devmeter.tokens",
            "devmeter.requests",
        } <= set(metrics)
        usage = metrics["gen_ai.client.token.usage"]
        assert usage.unit == "{token}"
        point_attrs = [attrs(p.attributes) for p in usage.histogram.data_points]
        assert {a["gen_ai.token.type"] for a in point_attrs} == {"input", "output"}
        assert {a["gen_ai.provider.name"] for a in point_attrs} == {"anthropic", "openai", "google"}
        assert {a["gen_ai.request.model"] for a in point_attrs} >= {
            "claude-opus-4-8",
            "gpt-4o-mini",
        }
        assert all(a["devmeter.machine"] == "ci-box" for a in point_attrs)
        assert {a["devmeter.repo"] for a in point_attrs} == {rows[0]["repo"].rsplit("/", 1)[-1]}
        cost = metrics["devmeter.cost"].sum
        assert cost.is_monotonic and cost.aggregation_temporality == 2  # cumulative
        # Auth headers came from the environment, URL-decoded, never from the file.
        assert receiver.headers[-1]["authorization"] == "Bearer team-token"
        assert receiver.headers[-1]["x-team"] == "platform"
        # One log record per call, each call once, with what the ledger holds.
        logged = {r["devmeter.call.id"]: r for r in receiver.log_records()}
        assert sorted(logged) == [r["id"] for r in rows]
        first = logged[rows[0]["id"]]
        assert Decimal(repr(first["devmeter.cost_usd"])) == rows[0]["cost_usd"]
        assert first["gen_ai.usage.output_tokens"] == rows[0]["output_tokens"]
        start_ns = usage.histogram.data_points[0].start_time_unix_nano

        # The collector goes away; calls go on, unslowed, and the ledger holds them.
        receiver.stop()
        began = time.monotonic()
        more = send_calls(proxy, rounds=3)
        took = time.monotonic() - began
        more_rows = proxy.new_calls(more)
        time.sleep(1.0)  # several failed pushes, with back-off
        assert took < 10, f"{more} calls took {took:.1f}s with the collector down"

        # A restart meanwhile: the cursor and the totals come from disk, not memory.
        proxy.stop()
        proxy = start(home, upstream, receiver)
        proxy.skip_existing()
        later = send_calls(proxy, rounds=1, error=False)
        later_rows = proxy.new_calls(later)
        receiver.start()  # back, on the same port
        everything = ledger_totals(proxy)
        wait_for(
            "the pushed totals to catch up after the outage",
            lambda: matches(pushed_totals(receiver), everything),
            timeout=60,
        )
        all_ids = [r["id"] for r in (*rows, *more_rows, *later_rows)]
        wait_for(
            "every call's log record",
            lambda: {r["devmeter.call.id"] for r in receiver.log_records()} >= set(all_ids),
        )
        ids = [r["devmeter.call.id"] for r in receiver.log_records()]
        assert sorted(ids) == all_ids  # none lost, none twice
        # The start time is the ledger's first call: a restart did not reset the sums.
        usage = receiver.latest_metrics()["gen_ai.client.token.usage"]
        assert {p.start_time_unix_nano for p in usage.histogram.data_points} == {start_ns}
        assert "OTLP export failed" in proxy.log.read_text()  # said, once per cause
    finally:
        proxy.stop()
        receiver.stop()
