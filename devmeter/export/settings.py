"""`[export.prometheus]` and `[export.otlp]`: validated, with errors naming the key.

Both exporters are off unless their section is written. Nothing secret lives here:
OTLP auth headers come from the environment variable `headers_env` names.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from devmeter.config_error import ConfigError
from devmeter.config_values import config_bool, config_table, reject_unknown, url_problem

RepoLabel = Literal["path", "name", "hash"]
REPO_LABELS: tuple[RepoLabel, ...] = ("path", "name", "hash")
DEFAULT_PROMETHEUS_PORT = 9464
DEFAULT_REPO_LIMIT = 20
DEFAULT_HEADERS_ENV = "DEVMETER_OTLP_HEADERS"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Labels:
    """How the labels every exporter shares are made."""

    repo_label: RepoLabel = "name"
    repo_limit: int = DEFAULT_REPO_LIMIT  # repos with a label of their own; the rest `other`
    machine: str = ""  # "" means this machine's host name


@dataclass(frozen=True)
class PrometheusSettings:
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PROMETHEUS_PORT)


@dataclass(frozen=True)
class OtlpSettings:
    endpoint: str  # base URL; /v1/metrics and /v1/logs are added
    headers_env: str = DEFAULT_HEADERS_ENV
    interval_seconds: float = 15.0
    timeout_seconds: float = 10.0
    logs: bool = False  # one log record per call


@dataclass(frozen=True)
class ExportSettings:
    labels: Labels = Labels()
    prometheus: PrometheusSettings | None = None
    otlp: OtlpSettings | None = None

    def machine(self) -> str:
        return self.labels.machine or socket.gethostname()


_LABEL_KEYS = ("repo_label", "repo_limit", "machine")


def parse_export(table: Mapping[str, object]) -> ExportSettings:
    """The `[export]` table. `repo_label`, `repo_limit` and `machine` may sit in
    `[export]` for both exporters, or in either exporter's section."""
    reject_unknown("export", table, ("prometheus", "otlp", *_LABEL_KEYS))
    prom = _subtable(table, "prometheus")
    otlp = _subtable(table, "otlp")
    shared = {k: table[k] for k in _LABEL_KEYS if k in table}
    for name, sub in (("prometheus", prom), ("otlp", otlp)):
        for key in _LABEL_KEYS:
            if sub is not None and key in sub:
                if key in shared and shared[key] != sub[key]:
                    raise ConfigError(
                        f"export.{name}.{key}",
                        f"differs from another {key}; both exporters share one, so set it "
                        "once in [export]",
                    )
                shared[key] = sub[key]
    return ExportSettings(
        labels=_labels(shared),
        prometheus=None if prom is None else _prometheus(prom),
        otlp=None if otlp is None else _otlp(otlp),
    )


def _labels(table: Mapping[str, object]) -> Labels:
    repo_label = table.get("repo_label", "name")
    if repo_label not in REPO_LABELS:
        raise ConfigError(
            "export.repo_label", f"{repo_label!r} is not one of {', '.join(REPO_LABELS)}"
        )
    limit = table.get("repo_limit", DEFAULT_REPO_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= 1000:
        raise ConfigError("export.repo_limit", f"must be a whole number 0-1000, got {limit!r}")
    machine = table.get("machine", "")
    if not isinstance(machine, str) or len(machine) > 200:
        raise ConfigError("export.machine", 'must be a short string such as "alice-laptop"')
    return Labels(repo_label=repo_label, repo_limit=limit, machine=machine)  # type: ignore[arg-type]


def _prometheus(table: Mapping[str, object]) -> PrometheusSettings:
    reject_unknown("export.prometheus", table, ("listen", *_LABEL_KEYS))
    if "listen" not in table:
        return PrometheusSettings()
    return PrometheusSettings(listen=parse_metrics_listen(table["listen"]))


def parse_metrics_listen(value: object, key: str = "export.prometheus.listen") -> tuple[str, int]:
    """`HOST:PORT`, or a bare port on loopback. Any other address is served only when
    written out: the metrics name repos and spend, so exposing them is a choice."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"127.0.0.1:{value}"
    if not isinstance(value, str):
        raise ConfigError(key, 'must be "127.0.0.1:9464"')
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, f'{value!r} has no valid port; use "127.0.0.1:9464"')
    if not re.fullmatch(r"[A-Za-z0-9.:-]+", host):
        raise ConfigError(key, f"{host!r} is not an address")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.")


def _otlp(table: Mapping[str, object]) -> OtlpSettings:
    allowed = ("endpoint", "headers_env", "interval_seconds", "timeout_seconds", "logs")
    reject_unknown("export.otlp", table, (*allowed, "headers", *_LABEL_KEYS))
    if "headers" in table:
        raise ConfigError(
            "export.otlp.headers",
            "auth headers never go in the config file; put them in the environment as "
            f'{DEFAULT_HEADERS_ENV}="key=value,key2=value2" (or name another variable '
            "with headers_env)",
        )
    endpoint = table.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    problem = url_problem(endpoint) if isinstance(endpoint, str) else "is not a URL"
    if parts is None or problem is not None:
        raise ConfigError(
            "export.otlp.endpoint",
            f'must be an OTLP/HTTP base URL like "http://collector:4318"; {endpoint!r} {problem}',
        )
    if parts.username or parts.password:
        raise ConfigError(
            "export.otlp.endpoint",
            "has credentials in it; put them in the environment (headers_env) instead",
        )
    headers_env = table.get("headers_env", DEFAULT_HEADERS_ENV)
    if not isinstance(headers_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", headers_env):
        raise ConfigError("export.otlp.headers_env", "must name an environment variable")
    logs = config_bool("export.otlp.logs", table.get("logs", False))
    return OtlpSettings(
        endpoint=str(endpoint).rstrip("/"),
        headers_env=headers_env,
        interval_seconds=_seconds(table, "interval_seconds", 15.0, 0.1, 3600),
        timeout_seconds=_seconds(table, "timeout_seconds", 10.0, 0.1, 120),
        logs=logs,
    )


def _seconds(
    table: Mapping[str, object], key: str, default: float, low: float, high: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"export.otlp.{key}", f"must be a number of seconds, {low}-{high}")
    return float(value)


def parse_headers(text: str) -> dict[str, str]:
    """The standard `k=v,k2=v2` form of OTEL_EXPORTER_OTLP_HEADERS (values URL-decoded)."""
    from urllib.parse import unquote

    headers = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip())] = unquote(value.strip())
    return headers


def _subtable(table: Mapping[str, object], name: str) -> Mapping[str, object] | None:
    if name not in table:
        return None
    return config_table(f"export.{name}", table[name])
