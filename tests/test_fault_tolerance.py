"""Faults around a real devmeter proxy: the client's call goes on, and the ledger keeps the truth.

Every call carries its own `X-Devmeter-Session`, so each test finds exactly its rows. What
the client received is checked against what the fake upstream logged as sent: the proxy
must pass broken bytes through as they are, and still record the call.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

M = Decimal(1_000_000)
# Claude Opus 5.5 list prices: input 4, output 20, cache read 0.20, 5m write 5, 1h write 8.
OPUS_55_COST = (1200 * 4 + 3000 * Decimal("0.2") + 300 * 5 + 200 * 8 + 345 * 20) / M
MESSAGES = "https://api.anthropic.com/v1/messages"
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}


def body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-opus-5-5", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}], **extra}  # fmt: skip


# -- helpers (`upstream` and `proxy` come from conftest.py) --------------------------------


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def trust(proxy: RunningProxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.bundle))


def client(proxy: RunningProxy, timeout: float = 30) -> httpx2.Client:
    return httpx2.Client(proxy=proxy.url, verify=trust(proxy), timeout=timeout)


def session() -> str:
    return f"fault-{uuid.uuid4().hex[:12]}"


def wait_rows(proxy: RunningProxy, sid: str, count: int = 1, timeout: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows("session = ?", (sid,))
        if len(rows) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(rows) == count, (
        f"expected {count} ledger rows for {sid}, got {rows}\n"
        f"proxy log:\n{proxy.log.read_text(errors='replace')[-3000:]}"
    )
    return rows


def sent_bytes(upstream: FakeUpstream) -> tuple[list[str], int]:
    """The last model request's events as the upstream logged them: names, total bytes."""
    (request,) = upstream.find("anthropic.messages")
    events = upstream.events_of(request)
    return [e.name for e in events], sum(e.size for e in events)


def event_names(raw: bytes) -> list[str]:
    return [line[len(b"event: "):].decode() for line in raw.split(b"\n")
            if line.startswith(b"event: ")]  # fmt: skip


def start_with(home: Path, upstream_url: str, code: str, env: dict[str, str]) -> RunningProxy:
    """Like `start_proxy`, but `python -c code proxy ...`: a launcher that patches devmeter
    before `devmeter.cli.main` runs the proxy in the same process."""
    return start_proxy(home, upstream_url, launcher=(sys.executable, "-c", code), env=env)


# -- the client hangs up; the upstream breaks the stream -------------------------------------


def test_client_hangs_up_mid_stream(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    upstream.set_next(delay_ms=100)
    sid = session()
    seen = b""
    with (
        client(proxy) as http,
        http.stream(
            "POST", MESSAGES, json=body(True), headers={**HEADERS, "x-devmeter-session": sid}
        ) as response,
    ):
        for chunk in response.iter_raw():
            seen += chunk
            if seen.count(b"event: content_block_delta") >= 2:
                break  # leaving both blocks closes the connection mid-stream
    (request,) = upstream.find("anthropic.messages")
    (row,) = wait_rows(proxy, sid)
    assert len(upstream.events_of(request)) < 19  # it really was cut short
    assert row["complete"] == 0
    assert row["input_tokens"] == 1200  # message_start reported it before the hang-up
    assert row["output_tokens"] > 0 and row["estimated"] == 1
    assert row["cost_usd"] is not None and row["cost_usd"] > 0


def test_upstream_resets_mid_stream(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    upstream.set_next(cut_after=6)
    sid = session()
    received = b""
    with (
        client(proxy) as http,
        pytest.raises(httpx2.HTTPError),
        http.stream(
            "POST", MESSAGES, json=body(True), headers={**HEADERS, "x-devmeter-session": sid}
        ) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    names, _ = sent_bytes(upstream)
    assert names[-1] == "cut"
    assert event_names(received)[:6] == names[:6]  # every whole event the upstream sent
    (row,) = wait_rows(proxy, sid)
    assert row["complete"] == 0 and row["status"] == 200
    assert row["input_tokens"] == 1200 and row["output_tokens"] > 0 and row["estimated"] == 1
    assert row["error"], "a stream cut by the upstream is recorded with an error"


@pytest.mark.parametrize(("stream", "malformed"), [(True, "sse"), (True, "json"), (False, "json")])
def test_invalid_upstream_bytes_pass_through_and_are_recorded(
    proxy: RunningProxy, upstream: FakeUpstream, stream: bool, malformed: str
) -> None:
    upstream.set_next(malformed=malformed)
    sid = session()
    with (
        client(proxy) as http,
        http.stream(
            "POST", MESSAGES, json=body(stream), headers={**HEADERS, "x-devmeter-session": sid}
        ) as response,
    ):
        received = b"".join(response.iter_raw())
    assert response.status_code == 200
    names, size = sent_bytes(upstream)
    assert len(received) == size  # byte for byte what the upstream wrote, nothing added
    if malformed == "sse":
        assert b"\xff\xfe this line has no field name" in received
    (row,) = wait_rows(proxy, sid)
    assert row["status"] == 200
    assert row["error"], f"{malformed} garbage must be recorded as an error: {row}"


# -- a bug inside the Meter -------------------------------------------------------------------

# Runs the proxy with one devmeter function replaced by one that raises.
INJECT = """
import importlib, os, sys
target = os.environ["DEVMETER_TEST_FAIL"]
module, name = target.rsplit(".", 1)
def boom(*args, **kwargs):
    raise RuntimeError("injected failure in " + target)
setattr(importlib.import_module(module), name, boom)
from devmeter.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "target",
    [
        "devmeter.providers.parse_request_doc",  # request hook
        "devmeter.providers.new_response_parser",  # responseheaders hook (and the fallback)
        "devmeter.metering.build_call",  # response hook
    ],
)
def test_exception_in_the_meter_is_recorded_and_the_call_completes(
    upstream: FakeUpstream, tmp_path: Path, target: str
) -> None:
    broken = start_with(tmp_path / "home", upstream.url, INJECT, {"DEVMETER_TEST_FAIL": target})
    try:
        sid = session()
        http = anthropic.DefaultHttpxClient(proxy=broken.url, verify=trust(broken))
        sdk = anthropic.Anthropic(
            api_key="sk-ant-test", http_client=http, max_retries=0,
            default_headers={"x-devmeter-session": sid},
        )  # fmt: skip
        reply = sdk.messages.create(model="claude-opus-5-5", max_tokens=64,
                                    messages=body(False)["messages"])  # fmt: skip
        assert reply.usage.output_tokens == 345
        with sdk.messages.stream(model="claude-opus-5-5", max_tokens=64,
                                 messages=body(True)["messages"]) as events:  # fmt: skip
            final = events.get_final_message()
        assert final.usage.output_tokens == 345
        rows = wait_rows(broken, sid, 2) if "parse_request" not in target else None
        if rows is None:
            # The request hook failed before attribution: the rows carry no session.
            deadline = time.monotonic() + 10
            while len(rows := broken.rows()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(rows) == 2, broken.log.read_text()
        for row in rows:
            assert row["error"] and "injected failure" in row["error"], row
        assert "injected failure" in broken.log.read_text()  # and said so on stderr
    finally:
        broken.stop()


# -- SIGKILL under load -----------------------------------------------------------------------


def test_sigkill_under_load_loses_no_acknowledged_call(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    victim = start_proxy(home, upstream.url)
    completed: list[str] = []  # sessions of calls whose whole answer reached the client
    stop = threading.Event()

    def load() -> None:
        with contextlib.suppress(httpx2.HTTPError), client(victim, timeout=5) as http:
            while not stop.is_set():
                sid = session()
                r = http.post(MESSAGES, json=body(False),
                              headers={**HEADERS, "x-devmeter-session": sid})  # fmt: skip
                if r.status_code == 200 and r.json()["usage"]["output_tokens"] == 345:
                    completed.append(sid)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while len(completed) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.proc.send_signal(signal.SIGKILL)
    acknowledged = set(completed)  # answered before the kill
    victim.proc.wait(5)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(acknowledged) >= 50

    ledger = home / "ledger.sqlite"
    conn = sqlite3.connect(ledger)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    again = start_proxy(home, upstream.url)  # opens and recovers the WAL cleanly
    try:
        sid = session()
        with client(again) as http:
            r = http.post(
                MESSAGES, json=body(False), headers={**HEADERS, "x-devmeter-session": sid}
            )
        assert r.status_code == 200
        wait_rows(again, sid)
        recorded = {row["session"] for row in again.rows()}
    finally:
        again.stop()
    lost = acknowledged - recorded
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} calls answered to the client before SIGKILL are "
        f"not in the ledger: the writer acknowledges before it commits"
    )


# -- volume -----------------------------------------------------------------------------------


def test_fifty_concurrent_streams_all_recorded_exactly(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.defaults.update(delay_ms=40)  # ~0.7 s per stream
    sids = [session() for _ in range(50)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(50)

    def one(sid: str) -> None:
        try:
            with client(proxy, timeout=60) as http:
                http.get("https://api.anthropic.com/")  # TLS set up before the barrier (404)
                barrier.wait(30)
                with http.stream("POST", MESSAGES, json=body(True),
                                 headers={**HEADERS, "x-devmeter-session": sid}) as r:  # fmt: skip
                    raw = b"".join(r.iter_raw())
            assert r.status_code == 200 and raw.rstrip().endswith(b'{"type":"message_stop"}')
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(sid,)) for sid in sids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not failures, failures[:3]
    requests = upstream.find("anthropic.messages")
    last_start = max(r.time for r in requests)
    first_end = min(upstream.events_of(r)[-1].time for r in requests)
    assert last_start < first_end, "all 50 streams were under way at the same time"
    for sid in sids:
        (row,) = wait_rows(proxy, sid)
        assert row["cost_usd"] == OPUS_55_COST and row["complete"] == 1
        assert (row["output_tokens"], row["estimated"], row["error"]) == (345, 0, None)


def test_ten_megabyte_request_reaches_the_upstream_intact(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    big = os.urandom(5 * 1024 * 1024).hex()  # 10 MiB of text the proxy cannot compress away
    payload = json.dumps(body(True, messages=[{"role": "user", "content": big}])).encode()
    sid = session()
    with client(proxy, timeout=60) as http, http.stream(
        "POST", MESSAGES, content=payload,
        headers={**HEADERS, "content-type": "application/json", "x-devmeter-session": sid},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        b"".join(response.iter_raw())
    (request,) = upstream.find("anthropic.messages")
    assert request.body == payload
    (row,) = wait_rows(proxy, sid)
    assert row["cost_usd"] == OPUS_55_COST and row["error"] is None


# -- the ledger's disk fails ------------------------------------------------------------------


def _chattr(flag: str, *paths: Path) -> bool:
    existing = [str(p) for p in paths if p.exists()]
    done = subprocess.run(["chattr", flag, *existing], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
def test_ledger_turns_read_only_while_serving(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The ledger's files become immutable mid-run (root ignores chmod; `chattr +i` stops
    even writes to already-open files): calls go on, the proxy says so loudly, and the rows
    it held are written once the disk is writable again."""
    home = tmp_path / "home"
    running = start_proxy(home, upstream.url)
    ledger = home / "ledger.sqlite"
    # Not the -shm file: SQLite memory-maps it, and growing an immutable mapped file kills
    # the process with SIGBUS (a disk that really went read-only keeps its mapped pages).
    files = (ledger, ledger.with_name("ledger.sqlite-wal"))
    try:
        first = session()
        with client(running) as http:
            http.post(MESSAGES, json=body(False), headers={**HEADERS, "x-devmeter-session": first})
        wait_rows(running, first)
        if not _chattr("+i", home, *files):
            pytest.skip("this filesystem does not support the immutable flag")
        try:
            sids = [session() for _ in range(3)]
            with client(running) as http:
                for sid in sids:
                    r = http.post(MESSAGES, json=body(False),
                                  headers={**HEADERS, "x-devmeter-session": sid})  # fmt: skip
                    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 345
            deadline = time.monotonic() + 10
            while "cannot write the ledger" not in running.log.read_text(errors="replace"):
                assert time.monotonic() < deadline, running.log.read_text(errors="replace")
                time.sleep(0.05)
            assert running.proc.poll() is None
        finally:
            _chattr("-i", home, *files)
        said = running.log.read_text(errors="replace")
        assert "disk I/O error" in said or "readonly" in said, said  # the real cause
        for sid in sids:
            wait_rows(running, sid, timeout=15)  # held in memory, written on the retry
        assert "writable again" in running.log.read_text(errors="replace")
    finally:
        running.stop()


def test_ledger_path_unusable_from_the_start(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Something that is not a database sits where the ledger should be: the proxy starts,
    serves every call, and says on stderr that it cannot write the ledger."""
    home = tmp_path / "home"
    (home / "ledger.sqlite").mkdir(parents=True)
    running = start_proxy(home, upstream.url)
    try:
        with client(running) as http:
            for _ in range(3):
                r = http.post(MESSAGES, json=body(False), headers=HEADERS)
                assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 345
        deadline = time.monotonic() + 10
        while "cannot write the ledger" not in running.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, running.log.read_text(errors="replace")
            time.sleep(0.05)
        assert running.proc.poll() is None
    finally:
        running.stop()
