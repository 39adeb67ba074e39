"""`[export.prometheus]` and `[export.otlp]`: defaults, and errors naming file, key, line."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmeter.config import ConfigError, parse
from devmeter.export.settings import ExportSettings, parse_headers

PATH = Path("/home/ann/.config/devmeter/config.toml")


def export(text: str) -> ExportSettings:
    return parse(text, PATH).section("export")  # type: ignore[no-any-return]


def error(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse(text, PATH)
    return str(raised.value)


def test_off_unless_written() -> None:
    settings = export("")
    assert settings.prometheus is None and settings.otlp is None


def test_prometheus_listens_on_loopback_unless_another_address_is_written() -> None:
    assert export("[export.prometheus]\n").prometheus.listen == ("127.0.0.1", 9464)  # type: ignore[union-attr]
    assert export("[export.prometheus]\nlisten = 9000\n").prometheus.listen == (  # type: ignore[union-attr]
        "127.0.0.1",
        9000,
    )
    explicit = export('[export.prometheus]\nlisten = "0.0.0.0:9464"\n').prometheus
    assert explicit is not None and explicit.listen == ("0.0.0.0", 9464)


def test_otlp_settings_and_shared_labels() -> None:
    settings = export(
        '[export]\nrepo_label = "hash"\nrepo_limit = 5\n'
        '[export.otlp]\nendpoint = "http://collector:4318/"\nlogs = true\n'
    )
    assert settings.otlp is not None and settings.otlp.endpoint == "http://collector:4318"
    assert settings.otlp.headers_env == "DEVMETER_OTLP_HEADERS" and settings.otlp.logs
    assert (settings.labels.repo_label, settings.labels.repo_limit) == ("hash", 5)


@pytest.mark.parametrize(
    ("text", "key", "line", "says"),
    [
        (
            '[export.otlp]\nendpoint = "http://c:4318"\nheaders = "a=b"\n',
            "export.otlp.headers",
            3,
            "never go in the config file",
        ),
        ('[export.otlp]\nendpoint = "collector:4318"\n', "export.otlp.endpoint", 2, "OTLP/HTTP"),
        (
            '[export.otlp]\nendpoint = "http://u:pw@c:4318"\n',
            "export.otlp.endpoint",
            2,
            "credentials",
        ),
        ('[export]\nrepo_label = "names"\n', "export.repo_label", 2, "path, name, hash"),
        (
            '[export.prometheus]\nlisten = "127.0.0.1:x"\n',
            "export.prometheus.listen",
            2,
            "no valid port",
        ),
        ("[export.prometheus]\nport = 9464\n", "export.prometheus.port", 2, "unknown key"),
        ("[export]\nrepo_limit = -1\n", "export.repo_limit", 2, "whole number"),
    ],
)
def test_errors_name_file_key_and_line(text: str, key: str, line: int, says: str) -> None:
    message = error(text)
    assert f"{PATH}, line {line} [{key}]" in message and says in message, message


def test_headers_in_the_standard_form() -> None:
    assert parse_headers("authorization=Bearer%20abc, x-team = platform,broken") == {
        "authorization": "Bearer abc",
        "x-team": "platform",
    }
