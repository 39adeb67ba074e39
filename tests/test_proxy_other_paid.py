"""The paid APIs beside chat, through a real proxy with the real SDKs: each call is a row
priced by genai-prices where the wire says what it used, unpriced where it says nothing."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from websockets.sync.client import ClientConnection, connect

from devmeter.pricing import list_price
from devmeter.usage import Usage
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import SOCKET_SECONDS, RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

USAGE = {
    "input_tokens": 1000,
    "cache_read_tokens": 0,
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0,
    "output_tokens": 400,
    "reasoning_tokens": 0,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    running = start_proxy(Path(tmp_path_factory.mktemp("home")), upstream.url)
    yield running
    running.stop()


def trust(proxy: RunningProxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.bundle))


def fence_row(proxy: RunningProxy) -> dict[str, Any]:
    """The next row, after a call made now: a read that should have added no row and
    did would show up here first, whenever the ledger committed it."""
    with httpx2.Client(proxy=proxy.url, verify=trust(proxy), timeout=30) as client:
        client.post(
            "https://api.openai.com/v1/embeddings",
            headers={"authorization": "Bearer sk-test"},
            json={"model": "text-embedding-3-small", "input": "fence"},
        )
    (row,) = proxy.new_calls(1)
    return row


def test_message_batch_results_are_metered_once_at_the_batch_rate(proxy: RunningProxy) -> None:
    proxy.skip_existing()
    with httpx2.Client(proxy=proxy.url, verify=trust(proxy), timeout=30) as client:
        url = "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results"
        headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
        first = client.get(url, headers=headers)
        assert first.status_code == 200 and first.text.count("\n") == 3
        (row,) = proxy.new_calls(1)
        again = client.get(url, headers=headers)  # the same results, read again
        assert again.status_code == 200 and len(again.content) == len(first.content)
    assert row["endpoint"] == "anthropic.batch_results" and row["model"] == "claude-sonnet-5-5"
    assert (row["input_tokens"], row["output_tokens"]) == (2000, 800)  # two succeeded requests
    standard = list_price(
        "anthropic",
        "claude-sonnet-5-5",
        Usage(input_tokens=2000, output_tokens=800),
        datetime.fromtimestamp(row["ts"], UTC),
    )
    assert standard is not None and row["cost_usd"] == standard / 2
    assert fence_row(proxy)["endpoint"] == "openai.embeddings"  # the second read added none


def test_legacy_text_completions_are_estimated(proxy: RunningProxy) -> None:
    proxy.skip_existing()
    # The SDKs no longer have this API; the wire still does.
    with httpx2.Client(proxy=proxy.url, verify=trust(proxy), timeout=30) as client:
        answer = client.post(
            "https://api.anthropic.com/v1/complete",
            headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
            json={
                "model": "claude-2.1",
                "prompt": "\n\nHuman: write a haiku about proxies\n\nAssistant:",
                "max_tokens_to_sample": 100,
            },
        ).json()
    assert answer["completion"]
    (row,) = proxy.new_calls(1)
    assert row["endpoint"] == "anthropic.complete" and row["estimated"]
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0


def test_images_are_priced_from_their_usage_and_dall_e_is_unpriced(proxy: RunningProxy) -> None:
    proxy.skip_existing()
    http = openai.DefaultHttpxClient(proxy=proxy.url, verify=trust(proxy))
    client = openai.OpenAI(api_key="sk-test", http_client=http)
    client.images.generate(model="gpt-image-1", prompt="a lighthouse")
    client.images.generate(model="dall-e-2", prompt="a lighthouse")
    image, dall_e = proxy.new_calls(2)
    assert image["endpoint"] == "openai.images" and image["model"] == "gpt-image-1"
    assert (image["input_tokens"], image["output_tokens"]) == (1000, 400)
    expected = list_price(
        "openai",
        "gpt-image-1",
        Usage(input_tokens=1000, output_tokens=400),
        datetime.fromtimestamp(image["ts"], UTC),
    )
    assert image["cost_usd"] == expected
    assert dall_e["model"] == "dall-e-2" and dall_e["cost_usd"] is None
    assert dall_e["status"] == 200


def realtime_socket(proxy: RunningProxy, session: str) -> ClientConnection:
    return connect(
        "wss://api.openai.com/v1/realtime?model=gpt-realtime",
        ssl=trust(proxy),
        proxy=proxy.url,
        additional_headers={"Authorization": "Bearer sk-test", "X-Devmeter-Session": session},
        open_timeout=SOCKET_SECONDS,
    )


def realtime_turn(socket: ClientConnection) -> dict[str, Any]:
    """Audio in, then ask for a response; the response.done (or the error) that answers."""
    for _ in range(5):
        socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 50}))
    socket.send(json.dumps({"type": "response.create"}))
    while True:
        event: dict[str, Any] = json.loads(socket.recv(timeout=SOCKET_SECONDS))
        if event["type"] in ("response.done", "error"):
            return event


def test_realtime_meters_each_response_with_audio_at_audio_rates(proxy: RunningProxy) -> None:
    proxy.skip_existing()
    with realtime_socket(proxy, "voice-1") as socket:
        assert realtime_turn(socket)["type"] == "response.done"
        assert realtime_turn(socket)["type"] == "response.done"
    rows = proxy.new_calls(2)
    assert [r["endpoint"] for r in rows] == ["openai.realtime"] * 2
    row = rows[0]
    assert row["model"] == "gpt-realtime" and row["status"] == 101
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 400)
    text_only = list_price(
        "openai",
        "gpt-realtime",
        Usage(input_tokens=1000, output_tokens=400),
        datetime.fromtimestamp(row["ts"], UTC),
    )
    assert text_only is not None and row["cost_usd"] > text_only  # half of it was audio


def test_a_cap_on_an_open_realtime_socket_refuses_once_per_ask_not_per_frame(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[budgets.session]\nnotify_usd = []\nblock_usd = 0.001\n")
    capped = start_proxy(home, upstream.url)
    try:
        with realtime_socket(capped, "voice-2") as socket:
            assert realtime_turn(socket)["type"] == "response.done"  # crosses the cap
            capped.new_calls(1)
            upstream.clear()
            refusal = realtime_turn(socket)
            assert refusal["type"] == "error" and "devmeter" in json.dumps(refusal)
            refusal = realtime_turn(socket)
            assert refusal["type"] == "error"
        # Neither the audio nor the asks reached the provider. Ten audio frames and two
        # asks were refused: one row for the socket (its first refused frame), one per ask.
        assert upstream.requests == []
        rows = capped.new_calls(3)
        assert [r["status"] for r in rows] == [403, 403, 403]
        assert {r["requested_model"] for r in rows} == {"gpt-realtime"}
        assert capped.rows("id > ?", (rows[-1]["id"],)) == []
    finally:
        capped.stop()


def test_an_openai_batch_is_metered_once_from_its_ended_status(proxy: RunningProxy) -> None:
    proxy.skip_existing()
    with httpx2.Client(proxy=proxy.url, verify=trust(proxy), timeout=30) as client:
        headers = {"authorization": "Bearer sk-test"}
        running = client.get("https://api.openai.com/v1/batches/batch_running_1", headers=headers)
        assert running.json()["status"] == "in_progress"
        for _ in range(2):  # clients poll: the ended batch is read more than once
            done = client.get("https://api.openai.com/v1/batches/batch_done_1", headers=headers)
            assert done.json()["status"] == "completed"
    (row,) = proxy.new_calls(1)
    assert row["endpoint"] == "openai.batch" and row["model"] == "gpt-5"
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 400)
    standard = list_price(
        "openai",
        "gpt-5",
        Usage(input_tokens=1000, output_tokens=400),
        datetime.fromtimestamp(row["ts"], UTC),
    )
    assert standard is not None and row["cost_usd"] == standard / 2
    # Neither the running read nor the second one made a row.
    assert fence_row(proxy)["endpoint"] == "openai.embeddings"


def test_a_transcription_reads_its_model_from_the_sdks_multipart_form(
    proxy: RunningProxy,
) -> None:
    proxy.skip_existing()
    http = openai.DefaultHttpxClient(proxy=proxy.url, verify=trust(proxy))
    client = openai.OpenAI(api_key="sk-test", http_client=http)
    audio = b"RIFF" + bytes(range(256)) * 400  # stands in for a WAV file
    answer = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.wav", audio, "audio/wav")
    )
    assert answer.text
    (row,) = proxy.new_calls(1)
    assert row["endpoint"] == "openai.transcription"
    assert row["requested_model"] == "gpt-4o-transcribe"
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 400)
    text_only = list_price(
        "openai",
        "gpt-4o-transcribe",
        Usage(input_tokens=1000, output_tokens=400),
        datetime.fromtimestamp(row["ts"], UTC),
    )
    assert text_only is not None and row["cost_usd"] > text_only  # audio input, priced as audio
