"""What devmeter keeps names every repo, branch and session you work in: only you read it.

Issue 13: the ledger, its WAL and SHM and proxy.json were 0644 and the data and spool
folders 0755. Under the usual umask (022), a real proxy and the CLI must create every
folder 0700 and every state file 0600.
"""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from devmeter.cabundle import PRIVATE_FILES
from devmeter.paths import paths, read_loop_key
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import start_proxy

pytestmark = pytest.mark.proxy


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(home: Path) -> dict[str, int]:
    return {str(p.relative_to(home)): stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*")}


def test_every_folder_and_state_file_is_private(
    upstream: FakeUpstream, tmp_path: Path, usual_umask: None
) -> None:
    home = tmp_path / "home"
    proxy = start_proxy(home, upstream.url)
    try:
        context = ssl.create_default_context(cafile=str(proxy.bundle))
        with httpx2.Client(proxy=proxy.url, verify=context, timeout=30) as http:
            r = http.post(
                "https://api.anthropic.com/v1/messages",
                json={"model": "claude-opus-5-5", "max_tokens": 8, "messages": []},
                headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"},
            )
        assert r.status_code == 200
        proxy.new_calls(1)
        for command in ("pause", "resume"):  # writes control.json
            subprocess.run(
                [sys.executable, "-m", "devmeter", command], env=proxy.env(), check=True,
                capture_output=True, timeout=60,
            )  # fmt: skip
        running = modes(home)
    finally:
        proxy.stop()
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "proxy.json",
                 "control.json", "ledger.sqlite.spool/lock", "loop.key"):  # fmt: skip
        assert running.get(name) == 0o600, (name, oct(running.get(name, 0)), running)
    folders = [name for name in running if (home / name).is_dir()]
    assert {"ledger.sqlite.spool", "ca"} <= set(folders)
    # The harness made DEVMETER_HOME (0755): a folder devmeter did not make is the user's
    # and keeps its mode (tests/test_key_files.py: DEVMETER_HOME=~); the ones it makes
    # inside are private.
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    for name in folders:
        assert running[name] == 0o700, (name, oct(running[name]))
    state = [
        n for n in running if not n.startswith("ca/") and n not in folders and n != "proxy.log"
    ]
    assert all(running[n] == 0o600 for n in state), {n: oct(running[n]) for n in state}
    for name in PRIVATE_FILES:  # the CA's private key
        if f"ca/{name}" in running:
            assert running[f"ca/{name}"] == 0o600


def test_the_loop_key_is_made_once_kept_private_and_a_damaged_one_kept(
    tmp_path: Path, usual_umask: None
) -> None:
    where = paths({"DEVMETER_HOME": str(tmp_path / "home")})
    key = read_loop_key(where)
    assert key is not None and len(key) == 16
    assert stat.S_IMODE(where.loop_key.stat().st_mode) == 0o600
    assert read_loop_key(where) == key
    # Never overwritten (paths.load_key): the proxy uses a per-process key instead.
    where.loop_key.write_bytes(b"short")
    assert read_loop_key(where) is None
    assert where.loop_key.read_bytes() == b"short"
    where.loop_key.unlink()  # what the warning tells the user to do
    fresh = read_loop_key(where)
    assert fresh is not None and len(fresh) == 16 and fresh != key


def test_without_a_writable_data_folder_there_is_no_loop_key(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert read_loop_key(paths({"DEVMETER_HOME": str(blocked / "home")})) is None
