"""Secrets in Cursor's chat requests: the protobuf read without a schema, text rewritten
in place (lengths fixed up, every other byte kept), and a Connect stream inspected frame
by frame (warn passes bytes as they come; block/redact forward whole frames, rewritten)."""

from __future__ import annotations

import gzip
from pathlib import Path

from devmeter.providers import cursor
from devmeter.secrets.cursor_stream import CursorStream, inspect_body
from devmeter.secrets.inspector import Outcome, Reported, SecretInspector
from devmeter.secrets.policy import SecretsPolicy
from devmeter.usage import Attribution
from tests.secrets_corpus import DOTENV_FILE, PLANTED
from tests.test_cursor import build, field, fixture, frame, message

WHO = Attribution(tool="cursor", session="cur-1", repo="/src/acme")
CHAT = fixture("unified_chat_request.bin")  # one frame: the conversation, the model, ids


def tool_result_frame(text: str, compressed: bool = True) -> bytes:
    """A later frame on the same stream: a tool's output (here, a .env file read)."""
    return frame(
        message(field(2, message(field(1, "read_file"), field(3, text)))), compressed=compressed
    )


def stream_body() -> bytes:
    return CHAT + tool_result_frame(DOTENV_FILE) + build.end_stream()


def inspector(tmp_path: Path, mode: str, found: list[Reported]) -> SecretInspector:
    return SecretInspector(SecretsPolicy(mode=mode), b"k" * 32, found.append)


def test_rewriting_offers_every_text_the_meter_scans_and_keeps_the_rest() -> None:
    for name in ("unified_chat_request.bin", "unified_chat_request_gzip.bin"):
        body = fixture(name)
        texts = cursor.request_texts(body)
        reader = cursor.RequestReader()  # what the meter reads (it drops ids and models)
        reader.feed(body)
        scan = reader._scan
        assert scan.text_chars and set(scan.texts) <= set(texts), name
    assert cursor.rewrite_body(CHAT, lambda t: None) is None  # nothing to change: None
    new = cursor.rewrite_body(CHAT, lambda t: "GO AHEAD, LONGER NOW" if t == "Go ahead." else None)
    assert new is not None and b"GO AHEAD, LONGER NOW" in new and b"Go ahead." not in new
    assert len(new) == len(CHAT) + len("GO AHEAD, LONGER NOW") - len("Go ahead.")
    info, before = cursor.parse_request(new), cursor.parse_request(CHAT)
    assert info.model == before.model and "request_error" not in info.facts  # still valid


def test_a_whole_body_is_redacted_or_refused(tmp_path: Path) -> None:
    body = CHAT + tool_result_frame(DOTENV_FILE)
    found: list[Reported] = []
    outcome, rewritten = inspect_body(inspector(tmp_path, "redact", found), body, WHO, 1.0)
    assert outcome.redacted and rewritten is not None
    plain = "\n".join(cursor.request_texts(rewritten))
    assert PLANTED["stripe-key"] in "\n".join(cursor.request_texts(body))
    for secret in PLANTED.values():
        assert secret not in plain
    assert b"[REDACTED by devmeter: stripe-key]" in rewritten and b"DEBUG=false" in rewritten
    assert rewritten.startswith(CHAT)  # the frame without a secret is byte for byte the same
    assert cursor.parse_request(rewritten).model == "claude-4.5-sonnet-thinking"
    assert {(f.kind, f.action, f.location) for f in found} >= {
        ("stripe-key", "redacted", "message")
    }
    bare = message(field(1, message(field(1, DOTENV_FILE))))
    gzipped = gzip.compress(bare)  # a bare body the proxy could not decode: no header said so
    assert PLANTED["stripe-key"] in cursor.request_texts(gzipped)[0]
    _, rewritten = inspect_body(inspector(tmp_path, "redact", []), gzipped, WHO, 1.0)
    assert rewritten is not None and PLANTED["stripe-key"] not in "".join(
        cursor.request_texts(rewritten)
    )
    warned: list[Reported] = []
    warner = inspector(tmp_path, "warn", warned)
    assert inspect_body(warner, body, WHO, 1.0) == (Outcome(), None)  # read on the worker
    warner.wait_idle()
    assert {(f.kind, f.action) for f in warned} >= {("stripe-key", "warned")}
    blocked, unchanged = inspect_body(inspector(tmp_path, "block", []), body, WHO, 1.0)
    assert blocked.block is not None and unchanged is None
    assert "devmeter: refused: the request holds a secret" in blocked.block.message


def feed_in_chunks(stream: CursorStream, body: bytes, size: int = 7) -> bytes:
    out = [b for i in range(0, len(body), size) for b in stream.feed(body[i : i + size])]
    return b"".join(out + stream.feed(b""))


def test_a_stream_in_warn_mode_passes_its_bytes_as_they_come(tmp_path: Path) -> None:
    found: list[Reported] = []
    inspecting = inspector(tmp_path, "warn", found)
    stream = CursorStream(inspecting, WHO, lambda: 1.0)
    body = stream_body()
    assert stream.feed(body[:3]) == [body[:3]]  # not held: not even part of a header
    assert feed_in_chunks(stream, body[3:]) == body[3:]
    inspecting.wait_idle()
    assert sorted(f.kind for f in found) == [
        "database-password", "dotenv-secret", "openai-api-key", "stripe-key",
    ]  # fmt: skip
    assert {f.action for f in found} == {"warned"}


def test_a_stream_in_block_mode_forwards_whole_frames_with_the_secret_redacted(
    tmp_path: Path,
) -> None:
    """The answer already streams when a tool result frame arrives: it cannot be refused,
    so the secret is taken out and the finding says so."""
    found: list[Reported] = []
    stream = CursorStream(inspector(tmp_path, "block", found), WHO, lambda: 1.0)
    body = stream_body()
    assert stream.feed(body[:3]) == []  # held until its frame is whole
    sent = feed_in_chunks(stream, body[3:])
    plain = "\n".join(cursor.request_texts(sent))
    for secret in PLANTED.values():
        assert secret not in plain
    assert sent.startswith(CHAT) and sent.endswith(build.end_stream())
    assert b"[REDACTED by devmeter: stripe-key]" in sent
    frames = cursor.FrameReader().feed(sent)
    assert [flags for flags, _ in frames] == [0, 0, 2]  # rewritten frame sent uncompressed
    assert {f.action for f in found} == {"redacted"} and len(found) == 4
    assert stream.problem is None


def test_bytes_that_are_not_frames_go_on_untouched(tmp_path: Path) -> None:
    stream = CursorStream(inspector(tmp_path, "redact", []), WHO, lambda: 1.0)
    garbage = b"\xff" + b"x" * 20
    assert b"".join(stream.feed(CHAT[:10]) + stream.feed(CHAT[10:] + garbage)) == CHAT + garbage
    assert stream.feed(b"more") == [b"more"] and stream.problem is not None
