"""A real full disk under a real proxy, with its stderr on that same disk.

Issue 13: when the proxy's log (`nohup`, `2>>log`, a LaunchAgent's log) sat on the disk
that filled, the "cannot write the ledger" warning itself raised ENOSPC and killed the
writer: 3,029 calls answered, 65 rows kept. Here DEVMETER_HOME and the proxy's stdout and
stderr are on one 4 MiB tmpfs; the disk is filled, thousands of calls go through, space
is freed, and the ledger must hold exactly the calls that were answered.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

MESSAGES = "https://api.anthropic.com/v1/messages"
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}
BODY = {
    "model": "claude-opus-5-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            "needs to mount a small tmpfs to fill a real disk (root with CAP_SYS_ADMIN): "
            f"{done.stderr.strip()}"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, log: Path) -> Path:
    """Fill the disk to the last byte, and the log's last block too, so the proxy's next
    line on stderr fails with ENOSPC; the filler file, to delete when space is wanted."""
    filler = disk / "filler"
    for path, sizes in ((filler, (65536, 4096, 1)), (log, (1,))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in sizes:
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\n" * size) == size:
                        pass
        finally:
            os.close(fd)
    return filler


def call(proxy: RunningProxy, context: ssl.SSLContext, count: int, answered: list[str]) -> None:
    with httpx2.Client(proxy=proxy.url, verify=context, timeout=30) as http:
        for _ in range(count):
            sid = f"disk-{uuid.uuid4().hex[:12]}"
            r = http.post(MESSAGES, json=BODY, headers={**HEADERS, "x-devmeter-session": sid})
            if r.status_code == 200 and r.json()["usage"]["output_tokens"] == 345:
                answered.append(sid)


def test_a_full_disk_with_stderr_on_it_loses_no_answered_call(
    upstream: FakeUpstream, small_disk: Path
) -> None:
    upstream.reset()
    home = small_disk / "home"
    log = small_disk / "devmeter.log"
    # As `nohup devmeter proxy >>log 2>&1` or a LaunchAgent's log: appended to, on the disk.
    shell = f'exec "{sys.executable}" -m devmeter "$@" >>"{log}" 2>&1'
    proxy = start_proxy(home, upstream.url, launcher=("sh", "-c", shell, "sh"))
    try:
        context = ssl.create_default_context(cafile=str(proxy.bundle))
        answered: list[str] = []
        call(proxy, context, 1, answered)
        assert len(proxy.new_calls(1)) == 1
        filler = fill(small_disk, log)
        assert os.statvfs(small_disk).f_bavail == 0
        threads = [
            threading.Thread(target=call, args=(proxy, context, 500, answered)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert len(answered) == 2001, "every call is answered while the disk is full"
        assert proxy.proc.poll() is None
        time.sleep(1.5)  # the writer retries into the full disk, and reports into it too
        spooled = list((home / "ledger.sqlite.spool").glob("*.jsonl"))
        assert len(spooled) <= 2, spooled  # not a new empty file per failed write
        filler.unlink()  # space again
        deadline = time.monotonic() + 30
        while len(proxy.rows()) < len(answered) and time.monotonic() < deadline:
            time.sleep(0.1)
        recorded = [row["session"] for row in proxy.rows()]
        # Seen once in a full-suite run: 1,501 of 2,001 rows after 30 s, a whole batch of
        # 500 short. Said with the disk's free space and what is on it, to tell a disk
        # filled again (the freed space taken by the WAL and spool) from rows gone.
        on_disk = sorted(f"{p.relative_to(small_disk)} {p.stat().st_size}"
                         for p in small_disk.rglob("*") if p.is_file())  # fmt: skip
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        assert sorted(recorded) == sorted(answered), (
            f"{len(recorded)} rows for {len(answered)} answered calls; {free} bytes free; "
            f"on the disk: {on_disk}\n" + log.read_text(errors="replace").strip()[-3000:]
        )
        # And a call after the recovery lands as usual.
        call(proxy, context, 1, answered)
        proxy.skip_existing()
        deadline = time.monotonic() + 10
        while len(proxy.rows()) < len(answered) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(proxy.rows()) == len(answered) == 2002
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0, log.read_text(errors="replace").strip()[-3000:]
    spool = home / "ledger.sqlite.spool"
    assert [p.name for p in spool.iterdir() if p.suffix == ".jsonl"] == []  # all committed
    # The spool devmeter made is private (home was made by the harness: the user's folder).
    assert os.stat(spool).st_mode & 0o077 == 0


def test_a_proxy_whose_ledger_cannot_be_written_stops_by_itself(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """It used to wait for the disk on the way out (over 20 s), until it was killed."""
    upstream.reset()
    home = tmp_path / "home"
    (home / "ledger.sqlite").mkdir(parents=True)  # never writable
    proxy = start_proxy(home, upstream.url)
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    answered: list[str] = []
    call(proxy, context, 3, answered)
    assert len(answered) == 3
    proxy.stop()  # SIGTERM; the harness kills it if it has not exited within 15 s
    said = proxy.log.read_text(errors="replace")
    assert proxy.proc.returncode == 0, said[-3000:]
    assert "3 are in the spool and are written at the next start" in said, said[-3000:]
