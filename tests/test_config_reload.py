"""The reloader on its own: a changed file is read whole and applied once; a broken one is
reported once and not applied; a file caught mid-write is read again, not reported."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from devmeter.config import Config, ConfigError, load
from devmeter.config_reload import ConfigReloader, load_with_pins, read_status


def write(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


class Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[Config, Config]] = []

    def apply(self, old: Config, new: Config, extra: Any) -> list[str]:
        self.applied.append((old, new))
        return (
            ["[proxy] listen applies when the proxy restarts"] if old.listen != new.listen else []
        )


def reloader(tmp_path: Path, recorder: Recorder) -> ConfigReloader:
    path = tmp_path / "config.toml"
    current = load(path)
    r = ConfigReloader(path, tmp_path, current, lambda: (load(path), None), recorder.apply)
    r.start()
    return r


def check(r: ConfigReloader) -> bool:
    async def once() -> bool:
        return await r.check(asyncio.get_running_loop())

    return asyncio.run(once())


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[budgets.day]\nblock_usd = 5\n")
    recorder = Recorder()
    r = reloader(tmp_path, recorder)
    assert not check(r) and recorder.applied == []
    write(path, "[budgets.day]\nblock_usd = 9\n")
    assert check(r)
    assert not check(r)  # once per change
    ((old, new),) = recorder.applied
    assert old.section("budgets").day.block_usd == 5 and new.section("budgets").day.block_usd == 9


def test_a_broken_edit_is_reported_once_with_file_line_and_key(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[budgets.day]\nblock_usd = 5\n")
    recorder = Recorder()
    r = reloader(tmp_path, recorder)
    write(path, "[budgets.day]\nblock_usd = -1\n")
    assert not check(r)
    write(path, "[budgets.day]\nblock_usd = -1\n\n")  # still broken: not said twice
    assert not check(r)
    assert recorder.applied == []
    assert r.current.section("budgets").day.block_usd == 5
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert f"{path}, line 2 [budgets.day.block_usd]" in err[0]
    status = read_status(tmp_path)
    assert status is not None and f"{path}, line 2" in status["config_error"]
    write(path, "[budgets.day]\nblock_usd = 7\n")
    assert check(r)
    assert (read_status(tmp_path) or {}).get("config_error", "no status") is None


def test_a_file_caught_mid_write_is_read_again_not_reported(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    recorder = Recorder()
    calls = 0

    def loader() -> tuple[Config, None]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the editor finishes writing while the half-written file is parsed
            write(path, "[budgets.day]\nblock_usd = 3\n")
            raise ConfigError("budgets", "not valid TOML", path, 1)
        return load(path), None

    r = ConfigReloader(path, tmp_path, load(path), loader, recorder.apply)
    write(path, "[budgets.d")
    assert not check(r)
    assert check(r)
    assert capsys.readouterr().err.count("bad config") == 0
    assert recorder.applied[0][1].section("budgets").day.block_usd == 3


def test_a_listen_change_says_it_needs_a_restart(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[proxy]\nlisten = "127.0.0.1:8788"\n')
    r = reloader(tmp_path, Recorder())
    write(path, '[proxy]\nlisten = "127.0.0.1:9999"\n')
    assert check(r)
    assert "listen applies when the proxy restarts" in capsys.readouterr().err


def test_upstream_flags_win_over_the_reloaded_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[upstream]\n"api.openai.com" = "http://127.0.0.1:1"\n"x.test" = "http://h:2"\n'
    )
    config = load_with_pins(path, {"api.openai.com": "http://127.0.0.1:9"})
    assert dict(config.upstreams) == {
        "api.openai.com": "http://127.0.0.1:9",
        "x.test": "http://h:2",
    }


def test_routing_does_not_name_a_config_file_that_does_not_exist(tmp_path: Path) -> None:
    env = dict(os.environ, DEVMETER_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "devmeter", "routing"], env=env, capture_output=True, text=True
    ).stdout
    assert "does not exist" in out and "from " not in out
    (tmp_path / "config.toml").write_text('[routing]\nmode = "off"\n')
    out = subprocess.run(
        [sys.executable, "-m", "devmeter", "routing"], env=env, capture_output=True, text=True
    ).stdout
    assert out.strip() == f"routing mode: off (from {tmp_path / 'config.toml'})"


def test_a_reload_keeps_a_routing_mode_set_from_the_cli_or_tray() -> None:
    from devmeter.routing import parse_routing
    from devmeter.routing.session_router import Router

    router = Router(parse_routing({"mode": "shadow"}))
    router.reconfigure(parse_routing({"mode": "off"}), ())
    assert router.mode == "off" and router.configured_mode == "off"
    router.set_mode("on")  # `devmeter routing on`
    router.reconfigure(parse_routing({"mode": "shadow"}), ())
    assert router.mode == "on" and router.configured_mode == "shadow"


def test_scopes_a_reload_must_seed_from_the_ledger() -> None:
    from devmeter.budget import parse_budgets
    from devmeter.proxy.server import _unseeded

    quiet = {"session": {"notify_usd": []}, "day": {"notify_usd": []}}
    before = parse_budgets(quiet)
    assert _unseeded(before, parse_budgets(quiet)) == set()
    assert _unseeded(before, parse_budgets(quiet | {"month": {"block_usd": 9}})) == {"month"}
    daily = parse_budgets(quiet | {"repo": {"block_usd": 9}})
    assert _unseeded(before, daily) == {"repo"}
    monthly = parse_budgets(quiet | {"repo": {"block_usd": 9, "period": "month"}})
    assert _unseeded(daily, monthly) == {"repo"}  # counted per day so far
    assert _unseeded(monthly, monthly) == set()


def test_a_broken_config_does_not_stop_pause_or_finding_the_file(tmp_path: Path) -> None:
    """A running proxy keeps its last good config; the commands that read none of it
    keep working too, saying the file is broken."""
    (tmp_path / "config.toml").write_text("[budgets.day]\nblock_usd = -1\n")
    env = dict(os.environ, DEVMETER_HOME=str(tmp_path))

    def devmeter(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devmeter", *args], env=env, capture_output=True, text=True
        )

    for args in (("config",), ("pause",), ("resume",)):
        done = devmeter(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert "line 2 [budgets.day.block_usd]" in done.stderr
    assert devmeter("config").stdout.strip() == str(tmp_path / "config.toml")
    # --init on a file that exists: the path (scripts read it) and, on stderr, that it was
    # left alone rather than a bare path, as if the template had replaced it.
    done = devmeter("config", "--init")
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "config.toml")
    assert "exists already: left as it is" in done.stderr
    assert (tmp_path / "config.toml").read_text() == "[budgets.day]\nblock_usd = -1\n"
    for args in (("routing",), ("allow", "--day")):  # these read the file: refused
        done = devmeter(*args)
        assert done.returncode == 2 and "line 2" in done.stderr, (args, done.stderr)
