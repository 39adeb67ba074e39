"""Export to a team's monitoring: Prometheus `/metrics` and OTLP push, from the ledger.

The proxy starts them (`start`), because the proxy runs wherever calls are metered, with
or without the tray, and a restart of the proxy is a restart of the export; every figure
is read from the ledger, never from the request path: the exporters live on their own
threads and a failed export never touches a call. `[export]` is read from the config
file; a live reload swaps the exporters (`Exporters.reconfigure`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from devmeter.config import Config
from devmeter.diagnostics import say
from devmeter.export.counters import LedgerCounters
from devmeter.export.settings import ExportSettings, is_loopback
from devmeter.paths import Paths

_RECONFIGURING = threading.Lock()  # one reload at a time, in the order they came


@dataclass
class Exporters:
    settings: ExportSettings
    paths: Paths
    prometheus: object | None = None  # devmeter.export.prometheus.PrometheusServer
    otlp: object | None = None  # devmeter.export.otlp.OtlpPusher

    @property
    def metrics_url(self) -> str | None:
        return getattr(self.prometheus, "url", None)

    def reconfigure_soon(self, config: Config) -> threading.Thread:
        """`reconfigure` on a thread of its own, for a caller on the event loop: stopping
        an exporter waits for its threads (up to seconds), which no call should."""
        worker = threading.Thread(
            target=self._reconfigure_safely, args=(config,), name="devmeter-export-reload",
            daemon=True,
        )  # fmt: skip
        worker.start()
        return worker

    def _reconfigure_safely(self, config: Config) -> None:
        try:
            self.reconfigure(config)
        except Exception as exc:  # a reload must never stop the proxy
            say(f"devmeter: export could not follow the new config: {exc!r}")

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: restart what changed (a new listen, a new endpoint)."""
        with _RECONFIGURING:
            self._reconfigure(config)

    def _reconfigure(self, config: Config) -> None:
        new: ExportSettings = config.section("export")
        if new == self.settings:  # the same exporters; budgets may have changed
            for counters in self._counters():
                counters.budgets = config.section("budgets")
                counters.accounts = config.section("accounts")
            return
        self.close()
        fresh = start(config, self.paths)
        self.settings, self.prometheus, self.otlp = fresh.settings, fresh.prometheus, fresh.otlp

    def _counters(self) -> list[LedgerCounters]:
        prometheus = getattr(self.prometheus, "collector", None)
        found = [getattr(prometheus, "counters", None), getattr(self.otlp, "counters", None)]
        return [c for c in found if isinstance(c, LedgerCounters)]

    def close(self) -> None:
        for exporter in (self.otlp, self.prometheus):
            if exporter is not None:
                try:
                    exporter.close()  # type: ignore[attr-defined]
                except Exception as exc:  # stopping an exporter must not stop the proxy
                    say(f"devmeter: stopping an exporter failed: {exc!r}")
        self.prometheus = self.otlp = None


def start(config: Config, paths: Paths) -> Exporters:
    """Start the exporters the config asks for; one that cannot start is said, and the
    proxy serves on without it."""
    try:
        return _start(config, paths)
    except Exception as exc:  # export is never a reason for the proxy not to meter
        say(f"devmeter: export could not start: {type(exc).__name__}: {exc}; metering goes on")
        return Exporters(config.section("export"), paths)


def _start(config: Config, paths: Paths) -> Exporters:
    settings: ExportSettings = config.section("export")
    exporters = Exporters(settings, paths)

    def counters(histograms: bool) -> LedgerCounters:
        return LedgerCounters(
            paths.ledger, paths.data_dir, settings.labels, settings.machine(),
            budgets=config.section("budgets"), histograms=histograms,
            accounts=config.section("accounts"),
        )  # fmt: skip

    if settings.prometheus is not None:
        from devmeter.export.prometheus import PrometheusServer

        host, port = settings.prometheus.listen
        try:
            exporters.prometheus = PrometheusServer(counters(False), (host, port))
        except OSError as exc:
            say(
                f"devmeter: cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "change [export.prometheus] listen in the config. The proxy runs without it."
            )
        else:
            where = exporters.metrics_url
            exposed = "" if is_loopback(host) else " (not loopback: reachable from the network)"
            say(f"devmeter: Prometheus metrics at {where}{exposed}")
    if settings.otlp is not None:
        from devmeter.export.otlp import OtlpPusher

        exporters.otlp = OtlpPusher(counters(True), settings.otlp, paths.data_dir)
        say(f"devmeter: pushing OTLP metrics to {settings.otlp.endpoint}")
    return exporters
