"""`[export.otlp]`: push the ledger's counters to an OpenTelemetry collector (OTLP/HTTP,
protobuf), and optionally one log record per call.

Why a small exporter on `opentelemetry-proto` and not the OpenTelemetry SDK: the SDK
keeps its own counters in memory, fed by the process, and would start from zero at every
restart and lose what an outage held once its queue filled. devmeter's counters already
exist, exact, in the ledger. So each push sends cumulative totals read from the ledger
(devmeter/export/counters.py) with a start time that is the ledger's first call, which
never changes: a restart or an outage loses nothing and resets nothing, and no push
needs memory beyond one request. Log records are read from the ledger past a cursor (the
last exported row id, persisted in the data dir after each accepted batch), so an outage
is buffered by the ledger itself, not by memory; when the collector is back, the backlog
goes out in batches.

The pusher is one daemon thread: it never touches the proxy's event loop, and a failed
push only waits (doubling, up to 5 minutes) and tries again.

Names follow the GenAI semantic conventions where they exist (`gen_ai.client.token.usage`,
a histogram with the advised buckets, with `gen_ai.token.type` input/output,
`gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`); devmeter's own
figures are `devmeter.*`. Cache reads and writes are `gen_ai.token.type = input` (the
convention counts them as input) with `devmeter.token.type` saying which. No prompt,
completion, error text, session id or credential is ever sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import devmeter
from devmeter.export.counters import TOKEN_BUCKETS, TOKEN_TYPES, LedgerCounters, QuotaWindow
from devmeter.export.settings import OtlpSettings, parse_headers
from devmeter.money import PICO

CURSOR_FILE = "otlp_cursor.json"
LOG_BATCH = 500
MAX_BACKOFF_SECONDS = 300.0
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def _attrs(items: Mapping[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in items.items():
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = AnyValue(double_value=value)
        else:
            any_value = AnyValue(string_value=str(value))
        out.append(KeyValue(key=key, value=any_value))
    return out


def _resource(machine: str) -> Resource:
    return Resource(
        attributes=_attrs(
            {
                "service.name": "devmeter",
                "service.version": devmeter.__version__,
                "host.name": machine,
            }  # fmt: skip
        )
    )


def _scope() -> InstrumentationScope:
    return InstrumentationScope(name="devmeter", version=devmeter.__version__)


def metrics_request(counters: LedgerCounters, now: float) -> ExportMetricsServiceRequest:
    """Every counter as a cumulative total since the ledger's first call."""
    start = int((counters.first_ts or now) * 1e9)
    stamp = int(now * 1e9)
    machine = counters.machine

    def common(provider: str, requested: str, model: str, tool: str, repo: str) -> dict[str, Any]:
        return {
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": requested,
            "gen_ai.response.model": model,
            "devmeter.tool": tool,
            "devmeter.repo": counters.repo_label(repo),
            "devmeter.machine": machine,
        }

    def total(points: dict[tuple[tuple[str, Any], ...], float], attrs: dict[str, Any],
              value: float) -> None:  # fmt: skip
        key = tuple(sorted(attrs.items()))
        points[key] = points.get(key, 0) + value

    cost: dict[tuple[tuple[str, Any], ...], float] = {}
    tokens: dict[tuple[tuple[str, Any], ...], float] = {}
    requests: dict[tuple[tuple[str, Any], ...], float] = {}
    savings: dict[tuple[tuple[str, Any], ...], float] = {}
    for key, sums in list(counters.sums.items()):
        base = common(key.provider, key.requested_model, key.model, key.tool, key.repo)
        total(cost, base, sums.cost_pusd)
        for kind in TOKEN_TYPES:
            total(tokens, {**base, "devmeter.token.type": kind}, sums.tokens(kind))
        total(requests, {**base, "devmeter.status": key.status}, sums.requests)
        if key.routing in ("routed", "shadow"):
            total(savings, {**base, "devmeter.routing": key.routing, "devmeter.route_rule":
                            key.rule}, sums.saving_pusd)  # fmt: skip

    Points = dict[tuple[tuple[str, Any], ...], float]

    def sum_metric(name: str, unit: str, description: str, points: Points, money: bool) -> Metric:
        data = []
        for attrs, value in sorted(points.items()):
            point = NumberDataPoint(
                attributes=_attrs(dict(attrs)), start_time_unix_nano=start, time_unix_nano=stamp
            )
            if money:
                point.as_double = float(Decimal(int(value)) / PICO)
            else:
                point.as_int = int(value)
            data.append(point)
        return Metric(
            name=name, unit=unit, description=description,
            sum=Sum(data_points=data, aggregation_temporality=CUMULATIVE, is_monotonic=True),
        )  # fmt: skip

    histogram_points = []
    for hkey, hist in sorted(counters.hists.items()):
        attrs = common(hkey.provider, hkey.requested_model, hkey.model, hkey.tool, hkey.repo)
        attrs["gen_ai.token.type"] = "output" if hkey.token_type == "output" else "input"
        attrs["devmeter.token.type"] = hkey.token_type
        histogram_points.append(
            HistogramDataPoint(
                attributes=_attrs(attrs), start_time_unix_nano=start, time_unix_nano=stamp,
                count=hist.count, sum=float(hist.total), bucket_counts=list(hist.counts),
                explicit_bounds=[float(b) for b in TOKEN_BUCKETS],
            )
        )  # fmt: skip
    metrics = [
        Metric(
            name="gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens per call (GenAI semantic conventions).",
            histogram=Histogram(data_points=histogram_points, aggregation_temporality=CUMULATIVE),
        ),  # fmt: skip
        sum_metric("devmeter.cost", "USD", "Cost at list price.", cost, True),
        sum_metric("devmeter.tokens", "{token}", "Tokens by devmeter.token.type.", tokens, False),
        sum_metric("devmeter.requests", "{request}", "Calls by devmeter.status.", requests, False),
        sum_metric(
            "devmeter.routing.savings",
            "USD",
            "Routing: saved (routed) and would-save (shadow).",
            savings,
            True,
        ),  # fmt: skip
    ]
    metrics += _quota_gauges(counters.quota_windows(), machine, stamp)
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=_resource(machine),
                scope_metrics=[ScopeMetrics(scope=_scope(), metrics=metrics)],
            )
        ]
    )


def _quota_gauges(windows: Iterable[QuotaWindow], machine: str, stamp: int) -> list[Metric]:
    """Each quota window's fill and reset time, as gauges (the last value is the truth)."""
    utilization, resets = [], []
    for w in windows:
        attributes = _attrs({
            "gen_ai.provider.name": w.provider, "devmeter.account": w.account,
            "devmeter.quota.window": w.window, "devmeter.machine": machine,
        })  # fmt: skip
        utilization.append(
            NumberDataPoint(attributes=attributes, time_unix_nano=stamp, as_double=w.utilization)
        )
        if w.resets_at is not None:
            resets.append(
                NumberDataPoint(attributes=attributes, time_unix_nano=stamp, as_double=w.resets_at)
            )
    return [
        Metric(
            name="devmeter.quota.utilization", unit="1",
            description="How full each quota window is, 0 to 1, as the provider last said.",
            gauge=Gauge(data_points=utilization),
        ),
        Metric(
            name="devmeter.quota.reset_time", unit="s",
            description="When each quota window resets, in Unix seconds.",
            gauge=Gauge(data_points=resets),
        ),
    ]  # fmt: skip


_LOG_COLUMNS = (
    "id, ts, provider, coalesce(requested_model, model, ''), coalesce(model, requested_model, ''),"
    " tool, coalesce(repo, ''), input_tokens, cache_read_tokens, cache_write_tokens,"
    " output_tokens, cost_pusd, status, complete, estimated, duration_ms,"
    " CASE WHEN error LIKE 'devmeter:%' THEN 1 ELSE 0 END"
)


def log_records(counters: LedgerCounters, rows: Iterable[tuple[Any, ...]]) -> list[LogRecord]:
    """One record per call: what it cost and used, never what it said."""
    records = []
    for (row_id, ts, provider, requested, model, tool, repo, inp, cread, cwrite, out, pusd,
         status, complete, estimated, duration, blocked) in rows:  # fmt: skip
        attrs: dict[str, Any] = {
            "event.name": "devmeter.call",
            "devmeter.call.id": int(row_id),
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": requested,
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": int(inp + cread + cwrite),
            "gen_ai.usage.output_tokens": int(out),
            "devmeter.tokens.input": int(inp),
            "devmeter.tokens.cache_read": int(cread),
            "devmeter.tokens.cache_write": int(cwrite),
            "devmeter.tool": tool,
            "devmeter.repo": counters.repo_label(repo),
            "devmeter.machine": counters.machine,
            "devmeter.estimated": bool(estimated),
            "devmeter.complete": bool(complete),
            "devmeter.blocked": bool(blocked),
            "devmeter.duration_ms": int(duration),
        }
        if pusd is not None:
            attrs["devmeter.cost_usd"] = float(Decimal(pusd) / PICO)
        if status is not None:
            attrs["http.response.status_code"] = int(status)
        records.append(
            LogRecord(
                time_unix_nano=int(ts * 1e9), observed_time_unix_nano=int(time.time() * 1e9),
                body=AnyValue(string_value="devmeter.call"), attributes=_attrs(attrs),
            )
        )  # fmt: skip
    return records


class OtlpPusher:
    """Pushes every `interval_seconds` from a daemon thread until `close`."""

    def __init__(self, counters: LedgerCounters, settings: OtlpSettings, data_dir: Path) -> None:
        self.counters = counters
        self.settings = settings
        self._cursor_path = data_dir / CURSOR_FILE
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.pushes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._said: str | None = None
        self._thread = threading.Thread(target=self._run, name="devmeter-otlp", daemon=True)
        self._thread.start()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        ok = False
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                ok = self.push()
            except Exception as exc:  # a bug here must never stop the proxy
                ok = False
                self._failed(f"{type(exc).__name__}: {exc}")
            interval = self.settings.interval_seconds
            delay = interval if ok else min(max(delay, interval) * 2, MAX_BACKOFF_SECONDS)
        if ok:  # the last totals on a clean stop; a collector already failing is not waited on
            with contextlib.suppress(Exception):
                self.push()

    def push(self) -> bool:
        """One round: metrics, then any log records past the cursor. True if all landed."""
        if not self.counters.refresh():
            return False
        body = metrics_request(self.counters, time.time()).SerializeToString()
        if not self._post("/v1/metrics", body):
            return False
        if self.settings.logs and not self._push_logs():
            return False
        self.pushes += 1
        if self._said is not None:
            self._say("devmeter: OTLP export is reaching the collector again")
            self._said = None
        return True

    def _push_logs(self) -> bool:
        cursor = self._cursor()
        while True:
            rows = self._rows_after(cursor)
            if not rows:
                return True
            request = ExportLogsServiceRequest(
                resource_logs=[
                    ResourceLogs(
                        resource=_resource(self.counters.machine),
                        scope_logs=[
                            ScopeLogs(scope=_scope(), log_records=log_records(self.counters, rows))
                        ],
                    )
                ]
            )
            if not self._post("/v1/logs", request.SerializeToString()):
                return False
            cursor = int(rows[-1][0])
            self._save_cursor(cursor)
            if len(rows) < LOG_BATCH:
                return True

    def _rows_after(self, cursor: int) -> list[tuple[Any, ...]]:
        from devmeter.ledger import connect_readonly

        conn = connect_readonly(self.counters.ledger)
        if conn is None:
            return []
        try:
            return conn.execute(
                f"SELECT {_LOG_COLUMNS} FROM calls WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, LOG_BATCH),
            ).fetchall()
        finally:
            conn.close()

    # -- the cursor -------------------------------------------------------------------------

    def _cursor(self) -> int:
        """The last row id the collector accepted. With none yet, logs start at the
        ledger's end: enabling them does not send a year of history."""
        try:
            saved = json.loads(self._cursor_path.read_text(encoding="utf-8"))
            return int(saved["last_id"])
        except (OSError, ValueError, KeyError, TypeError):
            start = self.counters.last_id
            self._save_cursor(start)
            return start

    def _save_cursor(self, last_id: int) -> None:
        tmp = self._cursor_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"last_id": last_id}, out)
            os.replace(tmp, self._cursor_path)
        except OSError as exc:
            self._failed(f"cannot save {self._cursor_path}: {exc}")

    # -- sending ----------------------------------------------------------------------------

    def _post(self, path: str, body: bytes) -> bool:
        headers = {"Content-Type": "application/x-protobuf"}
        headers.update(parse_headers(os.environ.get(self.settings.headers_env, "")))
        request = urllib.request.Request(
            self.settings.endpoint + path, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_seconds) as answer:
                answer.read()
            return True
        except urllib.error.HTTPError as exc:
            hint = (
                f"; check the auth headers in ${self.settings.headers_env}"
                if exc.code in (401, 403)
                else ""
            )
            self._failed(f"the collector answered {exc.code} for {path}{hint}")
        except (OSError, ValueError) as exc:
            self._failed(
                f"cannot reach {self.settings.endpoint}: {getattr(exc, 'reason', exc)}; check "
                "[export.otlp] endpoint and that the collector runs"
            )
        return False

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if why != self._said:
            self._said = why
            self._say(
                f"devmeter: OTLP export failed ({why}); retrying with back-off, nothing is "
                "lost: the ledger keeps every call"
            )

    @staticmethod
    def _say(line: str) -> None:
        from devmeter.diagnostics import say

        say(line)

    def close(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
