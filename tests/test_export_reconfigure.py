"""Exporters follow a reloaded config: a new listen moves /metrics, a removed section
stops its exporter, and an exporter that cannot start leaves the proxy running."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devmeter import export
from devmeter.config import parse
from devmeter.paths import paths


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def test_a_reload_moves_and_stops_the_exporters(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = paths()
    config_path = where.config_file
    first = parse('[export.prometheus]\nlisten = "127.0.0.1:0"\n', config_path)
    exporters = export.start(first, where)
    try:
        old_url = exporters.metrics_url
        assert old_url is not None and "# HELP devmeter_cost_usd_total" in scrape(old_url)
        capped = parse(
            '[budgets.day]\nblock_usd = 7\n[export.prometheus]\nlisten = "127.0.0.1:0"\n',
            config_path,
        )
        exporters.reconfigure(capped)  # the same exporter: it keeps serving, with the cap
        assert exporters.metrics_url == old_url
        assert "devmeter_budget_cap_usd{machine=" in scrape(old_url)

        moved = parse('[export]\nmachine = "m2"\n[export.prometheus]\nlisten = 0\n', config_path)
        exporters.reconfigure(moved)
        new_url = exporters.metrics_url
        assert new_url is not None and new_url != old_url
        scrape(new_url)
        with pytest.raises(urllib.error.URLError):
            scrape(old_url)

        exporters.reconfigure_soon(parse("", config_path)).join(10)  # as a reload does
        assert exporters.metrics_url is None and exporters.prometheus is None
        with pytest.raises(urllib.error.URLError):
            scrape(new_url)
    finally:
        exporters.close()


def test_a_taken_port_is_said_and_nothing_else_stops(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse(f'[export.prometheus]\nlisten = "127.0.0.1:{port}"\n', paths().config_file)
        exporters = export.start(config, paths())
    assert exporters.prometheus is None
    said = capsys.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in said and "[export.prometheus]" in said


@pytest.mark.proxy
def test_editing_config_toml_starts_and_stops_metrics_in_a_running_proxy(tmp_path: Path) -> None:
    from tests.export_helpers import free_port, wait_for
    from tests.fake_upstream import FakeUpstream
    from tests.proxy_harness import start_proxy

    home = tmp_path / "home"
    home.mkdir()
    with FakeUpstream() as upstream:
        proxy = start_proxy(home, upstream.url)
        try:
            port = free_port()
            url = f"http://127.0.0.1:{port}/metrics"

            def serving() -> bool:
                try:
                    return "devmeter_cost_usd_total" in scrape(url)
                except OSError:
                    return False

            assert not serving()
            (home / "config.toml").write_text(f'[export.prometheus]\nlisten = "127.0.0.1:{port}"\n')
            wait_for("the reloaded config to serve /metrics", serving, timeout=15)
            (home / "config.toml").write_text("# export switched off again\n")
            wait_for("/metrics to stop after the next reload", lambda: not serving(), timeout=15)
            assert proxy.proc.poll() is None
        finally:
            proxy.stop()
