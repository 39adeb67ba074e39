"""Secrets in Cursor's chat through a real proxy. A streamed Connect request's frames are
inspected as they arrive: a tool-result frame holding a secret goes on rewritten without
it (its answer already streams, so even a `block` rule redacts there), and warn passes
every byte as sent. A request read whole is refused in Connect's error shape (block) or
forwarded rewritten (redact). Nothing under DEVMETER_HOME holds a planted secret.

Two proxies for the module (warn; redact with stripe-key blocked): each test sends
secrets of its own, since a finding is recorded once per fingerprint and action."""

from __future__ import annotations

import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from devmeter.providers import cursor
from tests.proxy_harness import RunningProxy, start_proxy
from tests.secrets_corpus import CONTEXT, DOTENV_FILE, PLANTED
from tests.test_cursor import build
from tests.test_proxy_cursor import PATH, RESPONSE, ConnectServer, upstream  # noqa: F401
from tests.test_proxy_secrets import assert_no_secret_leaked
from tests.test_secrets_cursor import CHAT, tool_result_frame

pytestmark = pytest.mark.proxy


def run_proxy(home: Path, upstream: str, config: str) -> Iterator[RunningProxy]:  # noqa: F811
    home.mkdir()
    (home / "config.toml").write_text(config)
    proxy = start_proxy(home, upstream, hosts=(cursor.HOST,))
    yield proxy
    assert_no_secret_leaked(proxy)


@pytest.fixture(scope="module")
def warning(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:  # noqa: F811
    yield from run_proxy(
        tmp_path_factory.mktemp("warn") / "h", upstream, '[secrets]\nmode = "warn"\n'
    )


@pytest.fixture(scope="module")
def redacting(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:  # noqa: F811
    config = '[secrets]\nmode = "redact"\n[secrets.modes]\n"stripe-key" = "block"\n'
    yield from run_proxy(tmp_path_factory.mktemp("redact") / "h", upstream, config)


def post(proxy: RunningProxy, content: bytes | Iterator[bytes], kind: str) -> httpx2.Response:
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx2.Client(proxy=proxy.url, verify=context, timeout=30) as client:
        return client.post(
            f"https://{cursor.HOST}{PATH}",
            content=content,
            headers={"content-type": kind, "connect-protocol-version": "1",
                     "x-devmeter-session": "cursor-sess"},
        )  # fmt: skip


def chunks(body: bytes) -> Iterator[bytes]:  # streamed, as Cursor sends it
    for i in range(0, len(body), 500):
        yield body[i : i + 500]


def readable(sent: bytes) -> str:
    """Every text of a Cursor body as the upstream reads it (compressed frames inflated)."""
    return "\n".join(cursor.request_texts(sent))


def findings_of(proxy: RunningProxy, kinds: set[str], timeout: float = 10) -> list[dict[str, Any]]:
    """The findings rows of these kinds, once there is one for each."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(f"{(proxy.home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM findings ORDER BY id")]
        except sqlite3.Error:
            rows = []
        finally:
            conn.close()
        rows = [r for r in rows if r["kind"] in kinds]
        if {r["kind"] for r in rows} == kinds or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


DOTENV_KINDS = {"stripe-key", "openai-api-key", "database-password", "dotenv-secret"}


def test_a_streamed_tool_result_goes_on_without_its_secrets(redacting: RunningProxy) -> None:
    """Redact, and stripe-key's `block` too: the call already streams its answer."""
    ConnectServer.received.clear()
    redacting.skip_existing()
    answer = post(
        redacting, chunks(CHAT + tool_result_frame(DOTENV_FILE)), "application/connect+proto"
    )
    assert answer.status_code == 200 and answer.content == RESPONSE
    (sent,) = ConnectServer.received
    text = readable(sent)
    for kind in DOTENV_KINDS:
        assert PLANTED[kind] not in text, kind
    assert sent.startswith(CHAT)  # the frame without a secret, byte for byte
    assert "[REDACTED by devmeter: stripe-key]" in text and "DEBUG=false" in text
    rows = findings_of(redacting, DOTENV_KINDS)
    assert {(r["action"], r["location"], r["session"]) for r in rows} == {
        ("redacted", "message", "cursor-sess")
    }
    (call,) = redacting.new_calls(1)
    assert call["endpoint"] == "cursor.chat" and call["status"] == 200 and call["error"] is None


def test_a_streamed_request_with_a_declared_length_is_resent_without_it(
    redacting: RunningProxy,
) -> None:
    """A Content-Length no longer holds once a frame is rewritten: the body goes chunked."""
    ConnectServer.received.clear()
    body = CHAT + tool_result_frame(CONTEXT["github-token"], compressed=False)
    answer = post(redacting, body, "application/connect+proto")
    assert answer.status_code == 200 and answer.content == RESPONSE
    (sent,) = ConnectServer.received
    assert PLANTED["github-token"] not in readable(sent) and sent.startswith(CHAT)
    assert "[REDACTED by devmeter: github-token]" in readable(sent)
    assert cursor.parse_request(sent).model == "claude-4.5-sonnet-thinking"
    (call,) = redacting.new_calls(1)  # its row, so the next test counts from here
    assert call["endpoint"] == "cursor.chat" and call["error"] is None


def unary(text: str) -> bytes:
    """One bare protobuf message (`application/proto`): a unary call, read whole."""
    return build.message(build.field(1, build.chat_message(text, 1, "m-1")),
                         build.field(5, build.message(build.field(1, "gpt-5"))))  # fmt: skip


def test_a_unary_request_is_redacted_or_refused_in_connects_error_shape(
    redacting: RunningProxy,
) -> None:
    ConnectServer.received.clear()
    redacting.skip_existing()
    assert post(redacting, unary(CONTEXT["aws-access-key"]), "application/proto").status_code == 200
    (sent,) = ConnectServer.received
    assert PLANTED["aws-access-key"] not in readable(sent)
    assert "[REDACTED by devmeter: aws-access-key]" in readable(sent)
    assert cursor.parse_request(sent).model == "gpt-5"
    assert redacting.new_calls(1)[0]["error"] is None

    ConnectServer.received.clear()
    answer = post(
        redacting, unary(CONTEXT["stripe-key"] + CONTEXT["slack-token"]), "application/proto"
    )
    assert answer.status_code == 200
    frames = cursor.FrameReader().feed(answer.content)
    assert frames[-1][0] == 0x02  # the end-stream frame carries the error
    assert b"devmeter: refused: the request holds a secret, stripe-key" in frames[-1][1]
    assert ConnectServer.received == []
    (call,) = redacting.new_calls(1)
    assert call["error"].startswith("devmeter: refused")
    rows = findings_of(redacting, {"slack-token"})
    assert [r["action"] for r in rows] == ["redacted"]  # would have been; the call was refused


def test_warn_passes_a_stream_byte_for_byte_and_records_the_findings(
    warning: RunningProxy,
) -> None:
    ConnectServer.received.clear()
    body = CHAT + tool_result_frame(DOTENV_FILE)
    assert post(warning, chunks(body), "application/connect+proto").status_code == 200
    assert ConnectServer.received == [body]
    assert PLANTED["stripe-key"] in readable(body)  # what warn let through
    rows = findings_of(warning, DOTENV_KINDS)
    assert len(rows) == 4
    assert {(r["action"], r["location"], r["session"]) for r in rows} == {
        ("warned", "message", "cursor-sess")
    }


def test_warn_reads_a_unary_request_beside_it(warning: RunningProxy) -> None:
    ConnectServer.received.clear()
    body = unary(CONTEXT["npm-token"])
    assert post(warning, body, "application/proto").status_code == 200
    assert ConnectServer.received == [body]  # as sent
    (row,) = findings_of(warning, {"npm-token"})
    assert (row["action"], row["location"]) == ("warned", "message")
