"""Hostile input through a real `devmeter proxy`: bounded memory, no stall, every call on disk.

Each case sends one hostile input through the proxy (a hostile upstream on
api.openai.com, tests/hostile_upstream.py; the fake upstream everywhere else), and while
it is still in flight (the hostile upstream holds its last bytes back) makes a normal
call, which must be answered. The proxy's peak RSS during the case (psutil, and the
kernel's high-water mark where it can be reset) must stay within a bound the unfixed
proxy overshot many times, and the ledger must hold one row per call answered.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from websockets.sync.client import connect as ws_connect

from tests.fake_upstream import FakeUpstream
from tests.hostile_upstream import BOMB_SIZE, HostileUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

MB = 1 << 20
CHAT = "https://api.openai.com/v1/chat/completions"
MESSAGES = "https://api.anthropic.com/v1/messages"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(
    upstream: FakeUpstream, hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("devmeter-home"),
        upstream.url,
        extra_args=("--upstream", f"api.openai.com={hostile.url}"),
    )
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream, hostile: HostileUpstream) -> None:
    upstream.reset()
    hostile.reset()


def client(proxy: RunningProxy, http2: bool = False) -> httpx2.Client:
    trust = ssl.create_default_context(cafile=str(proxy.bundle))
    return httpx2.Client(proxy=proxy.url, verify=trust, timeout=60, http2=http2)


def session() -> str:
    return f"hostile-{uuid.uuid4().hex[:12]}"


def rows_of(proxy: RunningProxy, sid: str, count: int, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows("session = ?", (sid,))
        if len(rows) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(rows) == count, (
        f"expected {count} rows for {sid}, got {rows}\n"
        f"proxy log:\n{proxy.log.read_text(errors='replace')[-3000:]}"
    )
    return rows


def normal_call(proxy: RunningProxy, sid: str) -> None:
    """An ordinary Anthropic call (to the fake upstream): answered, and metered."""
    body = {"model": "claude-opus-5-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test",
               "x-devmeter-session": sid}  # fmt: skip
    with client(proxy) as http:
        response = http.post(MESSAGES, json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["output_tokens"] == 345


class PeakRSS:
    """The proxy process's RSS growth over a block: sampled with psutil, and read from the
    kernel's high-water mark (VmHWM, reset through clear_refs) on Linux, where a sample
    could miss a short peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.pid = pid
        self.growth = 0

    def __enter__(self) -> PeakRSS:
        self.base = self.process.memory_info().rss
        self._hwm = _reset_hwm(self.pid)
        self._peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(psutil.Error):
                self._peak = max(self._peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        peak = self._peak
        if self._hwm:
            peak = max(peak, _read_hwm(self.pid))
        self.growth = peak - self.base


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _read_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_hostile(
    proxy: RunningProxy, hostile: HostileUpstream, call: Callable[[], Any], sid: str
) -> tuple[Any, int]:
    """Run `call` (the hostile one) in a thread; once the hostile upstream has started
    answering, make a normal call; then let the hostile answer finish. Returns the hostile
    call's result and the proxy's RSS growth meanwhile."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def hostile_call() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)

    with PeakRSS(proxy.proc.pid) as rss:
        thread = threading.Thread(target=hostile_call, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not hostile.started.wait(0.05):
            assert thread.is_alive() and time.monotonic() < deadline, (
                f"the hostile upstream was never called: {failure or result}"
            )
        try:
            normal_call(proxy, sid)
        finally:
            hostile.release()
        thread.join(60)
    if failure:
        raise failure[0]
    assert not thread.is_alive(), "the hostile call never finished"
    return result[0], rss.growth


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **extra}


def raw_post(proxy: RunningProxy, mode: str, sid: str, **kwargs: Any) -> tuple[int, int, bytes]:
    """POST to the hostile chat path; the body is read raw (never decoded here)."""
    headers = {"authorization": "Bearer sk-test", "x-hostile": mode, "x-devmeter-session": sid,
               "accept-encoding": "gzip, br, zstd", **kwargs.pop("headers", {})}  # fmt: skip
    received = 0
    head = b""
    with (
        client(proxy, http2=kwargs.pop("http2", False)) as http,
        http.stream("POST", CHAT, headers=headers, **({"json": chat_body()} | kwargs)) as response,
    ):
        for chunk in response.iter_raw():
            received += len(chunk)
            if len(head) < 4096:
                head += chunk[:4096]
    return response.status_code, received, head


# -- 1. decompression bombs -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_decompression_bomb_is_metered_within_the_decode_budget(
    proxy: RunningProxy, hostile: HostileUpstream, encoding: str
) -> None:
    from tests.hostile_upstream import bomb

    sent = len(bomb(encoding))  # built before the clock starts
    sid = session()
    (status, received, _), growth = run_hostile(
        proxy, hostile, lambda: raw_post(proxy, f"bomb-{encoding}", sid), sid
    )
    assert status == 200 and received == sent  # the client got every compressed byte
    rows = rows_of(proxy, sid, 2)
    (row,) = [r for r in rows if r["provider"] == "openai"]
    assert "metering stopped reading it" in row["error"]
    assert row["status"] == 200 and row["estimated"] == 1
    # The bomb decodes to 256 MB; the unfixed proxy held it whole (8 GB for a larger one).
    assert growth < 120 * MB, f"proxy RSS grew {growth / MB:.0f} MB for a {BOMB_SIZE >> 20} MB bomb"


def test_routing_fallback_decodes_a_refusal_bomb_within_the_budget(
    upstream: FakeUpstream, hostile: HostileUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[routing]\nmode = "on"\n\n[[routing.rules]]\nname = "to-mini"\n'
        'provider = "openai"\nmodel = "gpt-4o"\nto = "gpt-4o-mini"\n'
    )
    routed = start_proxy(
        home, upstream.url, extra_args=("--upstream", f"api.openai.com={hostile.url}")
    )
    try:
        sid = session()
        (status, _, head), growth = run_hostile(
            routed, hostile, lambda: raw_post(routed, "fallback-bomb", sid), sid
        )
        # The rewrite's refusal was read (within the budget), and the original re-sent;
        # its answer reached the client as the provider encoded it, once.
        assert status == 200 and b"chatcmpl-hostile" in gzip.decompress(head)
        assert hostile.requests == 2
        rows = rows_of(routed, sid, 2)
        (row,) = [r for r in rows if r["provider"] == "openai"]
        assert row["routing"] == "fallback" and row["input_tokens"] == 1000
        assert growth < 120 * MB, f"proxy RSS grew {growth / MB:.0f} MB on a refusal bomb"
    finally:
        routed.stop()


# -- 2. SSE lines and events without end -----------------------------------------------------


@pytest.mark.parametrize("mode", ["sse-line", "sse-data"])
def test_oversized_sse_event_is_dropped_and_the_stream_still_metered(
    proxy: RunningProxy, hostile: HostileUpstream, mode: str
) -> None:
    sid = session()
    (status, received, _), growth = run_hostile(
        proxy, hostile, lambda: raw_post(proxy, mode, sid, json=chat_body(stream=True)), sid
    )
    assert status == 200 and received > 64 * MB  # passed on whole
    rows = rows_of(proxy, sid, 2)
    (row,) = [r for r in rows if r["provider"] == "openai"]
    assert "1 SSE event(s) over 16 MiB dropped unread" in row["error"]
    # The events after the dropped one were read: the usage chunk at the end.
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 50)
    assert row["complete"] == 1
    assert growth < 120 * MB, f"proxy RSS grew {growth / MB:.0f} MB for 64 MB of one event"


# -- 3. unmetered paths stream; large request bodies stream -----------------------------------


def test_unmetered_download_streams_through_unheld(
    proxy: RunningProxy, hostile: HostileUpstream
) -> None:
    sid = session()
    first_byte: list[float] = []

    def download() -> int:
        received = 0
        with client(proxy) as http, http.stream(
            "GET", "https://api.openai.com/v1/files/file-abc/content",
            headers={"x-hostile": "download", "authorization": "Bearer sk-test"},
        ) as response:  # fmt: skip
            assert response.status_code == 200
            for chunk in response.iter_raw():
                if not first_byte:
                    first_byte.append(time.monotonic())
                received += len(chunk)
        return received

    received, growth = run_hostile(proxy, hostile, download, sid)
    assert received == 256 * MB
    # The client had its first byte before the upstream sent its last: not buffered.
    assert first_byte[0] < hostile.last_byte_sent
    assert growth < 100 * MB, f"proxy RSS grew {growth / MB:.0f} MB for a 256 MB download"
    rows_of(proxy, sid, 1)  # the normal call only: a file download is not a metered call


def test_unmetered_websocket_frames_are_not_kept(
    proxy: RunningProxy, hostile: HostileUpstream
) -> None:
    sid = session()
    trust = ssl.create_default_context(cafile=str(proxy.bundle))

    def listen() -> int:
        received = 0
        with ws_connect(
            "wss://api.openai.com/v1/unmetered-socket", proxy=proxy.url, ssl=trust,
            max_size=None, open_timeout=30,
        ) as ws:  # fmt: skip
            for message in ws:
                received += len(message)
        return received

    received, growth = run_hostile(proxy, hostile, listen, sid)
    assert received == 128 * MB
    # 128 MB pushed while the socket stayed open: the unfixed proxy kept every frame.
    assert growth < 80 * MB, f"proxy RSS grew {growth / MB:.0f} MB for 128 MB of frames"
    rows_of(proxy, sid, 1)  # the normal call only


def big_request(size: int) -> bytes:
    head, tail = json.dumps(chat_body()).encode().split(b'"hi"')
    return head + b'"' + b"x" * (size - len(head) - len(tail) - 2) + b'"' + tail


def test_large_request_body_streams_through_and_is_metered(
    proxy: RunningProxy, hostile: HostileUpstream
) -> None:
    sid = session()
    body = big_request(64 * MB)
    (status, _, head), growth = run_hostile(
        proxy, hostile, lambda: raw_post(proxy, "count-body", sid, content=body), sid
    )
    assert status == 200 and b"chatcmpl-hostile" in head
    assert hostile.request_bytes == len(body)  # the upstream got all of it
    rows = rows_of(proxy, sid, 2)
    (row,) = [r for r in rows if r["provider"] == "openai"]
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 50)  # as reported
    assert row["model"] == "gpt-4o-2024-08-06"
    assert growth < 100 * MB, f"proxy RSS grew {growth / MB:.0f} MB for a 64 MB request"


def test_large_request_body_is_refused_unsent_while_paused(
    proxy: RunningProxy, hostile: HostileUpstream
) -> None:
    sid = session()
    env = {**os.environ, "DEVMETER_HOME": str(proxy.home)}
    subprocess.run([sys.executable, "-m", "devmeter", "pause"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    try:
        time.sleep(0.7)  # the proxy polls control.json twice a second
        with pytest.raises(httpx2.TransportError):
            raw_post(proxy, "count-body", sid, content=big_request(40 * MB))
    finally:
        subprocess.run([sys.executable, "-m", "devmeter", "resume"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        time.sleep(0.7)  # resumed for the next test too
    (row,) = rows_of(proxy, sid, 1)
    assert "paused" in row["error"] and "closed the connection" in row["error"]
    assert hostile.requests == 0  # nothing reached the provider


def test_chunked_request_streams_through_and_is_refused_unsent_while_paused(
    proxy: RunningProxy, hostile: HostileUpstream
) -> None:
    """A body of no declared length streams through unread, metered; paused, it is
    refused before any of it is sent (a refusal would have to wait for all of it)."""
    body = big_request(96 * MB)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), MB):
            yield body[i : i + MB]

    sid = session()
    (status, _, head), growth = run_hostile(
        proxy, hostile, lambda: raw_post(proxy, "count-body", sid, content=chunks()), sid
    )
    assert status == 200 and hostile.request_bytes == len(body)
    (row,) = [r for r in rows_of(proxy, sid, 2) if r["provider"] == "openai"]
    assert row["input_tokens"] == 1000 and "streamed through unread" in row["error"]
    # The unfixed proxy held all 96 MB, several times over (200 MB: 928 MB).
    assert growth < 100 * MB, f"proxy RSS grew {growth / MB:.0f} MB for a 96 MB chunked body"

    hostile.reset()
    paused = session()
    env = {**os.environ, "DEVMETER_HOME": str(proxy.home)}
    subprocess.run([sys.executable, "-m", "devmeter", "pause"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    try:
        time.sleep(0.7)
        with pytest.raises(httpx2.TransportError):
            raw_post(proxy, "count-body", paused, content=iter([b'{"model": "gpt-4o"}']))
    finally:
        subprocess.run([sys.executable, "-m", "devmeter", "resume"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        time.sleep(0.7)
    (row,) = rows_of(proxy, paused, 1)
    assert "paused" in row["error"] and "closed the connection" in row["error"]
    assert hostile.requests == 0


# -- 4. huge response headers ---------------------------------------------------------------


@pytest.mark.parametrize("http2", [True, False], ids=["http2", "http1"])
def test_huge_response_header_is_refused_with_a_502(
    proxy: RunningProxy, hostile: HostileUpstream, http2: bool
) -> None:
    sid = session()
    (status, _, head), growth = run_hostile(
        proxy, hostile, lambda: raw_post(proxy, "big-header", sid, http2=http2), sid
    )
    assert status == 502
    assert b"response headers" in head and b"KiB devmeter accepts" in head
    rows = rows_of(proxy, sid, 2)
    (row,) = [r for r in rows if r["provider"] == "openai"]
    assert row["status"] == 502 and row["complete"] == 0  # what the client got
    assert "response headers" in row["error"]


def test_huge_request_header_is_answered_431_and_not_sent(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    sid = session()
    body = {"model": "claude-opus-5-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test",
               "x-devmeter-session": sid, "x-junk": "j" * MB}  # fmt: skip
    with client(proxy) as http:
        refused = http.post(MESSAGES, json=body, headers=headers)
    assert refused.status_code == 431
    assert "KiB devmeter passes on" in refused.json()["error"]["message"]
    normal_call(proxy, sid)
    assert len(upstream.find("anthropic.messages")) == 1  # the normal call only
    first, second = rows_of(proxy, sid, 2)
    assert first["status"] == 431 and "bytes of headers" in first["error"]
    assert second["status"] == 200


# -- 5. deep nesting -------------------------------------------------------------------------


def test_deeply_nested_request_is_still_guarded_and_recorded(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    sid = session()
    nested = (
        b'{"model": "claude-opus-5-5", "max_tokens": 8, "messages": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}"
    )
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test",
               "content-type": "application/json", "x-devmeter-session": sid}  # fmt: skip
    env = {**os.environ, "DEVMETER_HOME": str(proxy.home)}
    subprocess.run([sys.executable, "-m", "devmeter", "pause"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    try:
        time.sleep(0.7)
        with client(proxy) as http:
            refused = http.post(MESSAGES, content=nested, headers=headers)
        # The refusal's status is per client (400, 402 or 403): never a retryable one.
        assert refused.status_code in (400, 402, 403) and "devmeter" in refused.text
    finally:
        subprocess.run([sys.executable, "-m", "devmeter", "resume"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    time.sleep(0.7)
    with client(proxy) as http:
        passed = http.post(MESSAGES, content=nested, headers=headers)
    # Only the second reached the fake upstream, whose own JSON parser gave up on it.
    assert passed.status_code == 500 and "fake_upstream_bug" in passed.text
    first, second = rows_of(proxy, sid, 2)
    assert first["status"] == refused.status_code and "paused" in first["error"]
    assert second["status"] == passed.status_code  # what the upstream made of it
    assert "internal error" not in (second["error"] or "")


# -- 6. the request-header deadline ----------------------------------------------------------


def test_slow_connections_are_closed_at_the_header_deadline(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(tmp_path / "home", upstream.url, env={"DEVMETER_HEADER_TIMEOUT": "1"})
    try:
        slow = []
        for _ in range(20):
            sock = socket.create_connection((proxy.host, proxy.port))
            sock.sendall(b"CONNECT api.anthropic.com:443 HTTP/1.1\r\n")  # and never more
            slow.append(sock)
        sid = session()
        normal_call(proxy, sid)  # served meanwhile
        closed = 0
        for sock in slow:
            sock.settimeout(10)
            try:
                closed += sock.recv(1024) == b""  # EOF: the proxy closed it
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass  # still open after 10 s: the deadline did not hold
            sock.close()
        assert closed == len(slow)
        rows_of(proxy, sid, 1)
    finally:
        proxy.stop()
