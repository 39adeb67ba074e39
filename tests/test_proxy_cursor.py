"""Cursor's Connect-RPC chat through a real proxy: streamed request, estimated usage.

A small Connect server stands in for api2.cursor.sh: it answers with recorded-shape
frames (tests/fixtures/cursor) and counts the request bytes it received, so the test
sees that the body reached the upstream unchanged while devmeter read a copy.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from devmeter.providers import cursor
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

FIXTURES = Path(__file__).parent / "fixtures" / "cursor"
REQUEST = (FIXTURES / "unified_chat_request_gzip.bin").read_bytes()
RESPONSE = (FIXTURES / "unified_chat_response.bin").read_bytes()
PATH = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"


class ConnectServer(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length", "0"))
        if length:
            body = self.rfile.read(length)
        else:  # chunked: a streamed request
            body = b""
            while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        type(self).received.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/connect+proto")
        self.send_header("content-length", str(len(RESPONSE)))
        self.end_headers()
        self.wfile.write(RESPONSE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ConnectServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def proxy(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    running = start_proxy(tmp_path_factory.mktemp("home"), upstream, hosts=(cursor.HOST,))
    yield running
    running.stop()


def test_cursor_chat_is_metered_as_estimated_at_the_makers_price(proxy: RunningProxy) -> None:
    ConnectServer.received.clear()
    proxy.skip_existing()
    context = ssl.create_default_context(cafile=str(proxy.bundle))

    def chunks() -> Iterator[bytes]:  # a streamed request body, as Cursor sends it
        for i in range(0, len(REQUEST), 1000):
            yield REQUEST[i : i + 1000]

    with httpx2.Client(proxy=proxy.url, verify=context, timeout=30) as client:
        answer = client.post(
            f"https://{cursor.HOST}{PATH}",
            content=chunks(),
            headers={"content-type": "application/connect+proto", "connect-protocol-version": "1"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.content == RESPONSE
    assert ConnectServer.received == [REQUEST]  # forwarded byte for byte

    (row,) = proxy.new_calls(1)
    assert row["endpoint"] == "cursor.chat"
    assert row["provider"] == "anthropic"  # the model's maker, priced at its list price
    assert row["requested_model"] == "claude-4.5-sonnet-thinking"
    assert row["estimated"] == 1
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
