"""The request path's lazy parse (providers/lazy_doc.py) reads every body as the plain
parse does: the same RequestInfo, new turn, loop fingerprint and human-turn answer over
every request in tests/fixtures and the captured real traffic, the same whole dict, and
the same outcome on hostile bodies."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.large_body import conversation_body
from devmeter import fastjson
from devmeter.providers import Endpoint, parse_request_doc, request_uses_images
from devmeter.providers.lazy_doc import _UNREAD, LAZY_FROM, LazyDoc, LazyItems, lazy_doc, plain
from devmeter.providers.registry import new_turn, sent_text
from devmeter.proxy.streaming import read_request
from devmeter.runaway import is_human_turn, request_fingerprint

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURES = Path("/work/shared/captures")  # real client traffic, where this machine has it

ENDPOINTS = [
    Endpoint("anthropic", "anthropic.messages"),
    Endpoint("openai", "openai.chat"),
    Endpoint("openai", "openai.responses"),
    Endpoint("google", "gemini.generate", path_model="gemini-2.5-pro"),
]
_REQUEST_KEYS = ("messages", "input", "contents", "request")


def _requests(node: Any) -> list[dict[str, Any]]:
    """Every object under `node` shaped like a request body (it holds a conversation)."""
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if any(key in item for key in _REQUEST_KEYS):
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _bodies() -> list[tuple[str, bytes]]:
    files = sorted(FIXTURES.rglob("*.json"))
    if CAPTURES.is_dir():
        files += sorted(CAPTURES.glob("*.json"))
    bodies = []
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        for i, request in enumerate(_requests(doc)):
            bodies.append((f"{path.name}#{i}", json.dumps(request).encode()))
    bodies.append(("large_body", conversation_body(200_000)))
    return bodies


BODIES = _bodies()


def _view(endpoint: Endpoint, body: bytes, lazy: bool) -> dict[str, Any]:
    info, doc = parse_request_doc(endpoint, body, 0 if lazy else None)
    view: dict[str, Any] = {
        "model": info.model,
        "stream": info.stream,
        "facts": info.facts,
        "estimate": info.prompt_tokens(),
    }
    if doc is not None:
        readers: dict[str, Callable[[], Any]] = {
            "new_turn": lambda: [(p.where, p.key, p.text) for p in new_turn(endpoint.api, doc)],
            "fingerprint": lambda: request_fingerprint(doc, model=endpoint.path_model),
            "human": lambda: is_human_turn(doc),
            "images": lambda: request_uses_images(endpoint, info, doc),
            "sent_text": lambda: [(p.where, p.key, p.text) for p in sent_text(endpoint.api, doc)],
            "whole": lambda: plain(doc),
        }
        for name, read in readers.items():
            try:
                view[name] = read()
            except Exception as exc:  # a reader that fails on a body fails on both parses
                view[name] = f"raised {type(exc).__name__}"
    return view


def test_fixtures_cover_real_traffic() -> None:
    assert len(BODIES) > 20
    captured = any(name.startswith("claude-code-2.1.328") for name, _ in BODIES)
    assert captured or not CAPTURES.is_dir()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.api)
def test_same_reading_as_the_plain_parse(endpoint: Endpoint) -> None:
    read_lazily = 0
    for name, body in BODIES:
        assert _view(endpoint, body, lazy=True) == _view(endpoint, body, lazy=False), name
        read_lazily += isinstance(parse_request_doc(endpoint, body, 0)[1], LazyDoc)
    assert read_lazily > len(BODIES) // 2  # the others have an `input` that is an object


def test_a_large_body_decodes_only_what_the_request_path_reads() -> None:
    body = conversation_body(1_000_000)
    endpoint = ENDPOINTS[0]
    info, doc, note = read_request(endpoint, body)
    assert note is None and isinstance(doc, LazyDoc)
    new_turn(endpoint.api, doc)
    request_fingerprint(doc)
    is_human_turn(doc)
    items = doc.items_of("messages")
    assert isinstance(items, LazyItems)
    decoded = sum(item is not _UNREAD for item in items._items)
    assert len(items) > 100 and decoded <= 12, (decoded, len(items))
    assert doc._whole is None, "nothing on the request path needed the whole body"
    assert info.facts["cwd"] == "/home/dev/src/acme-api"


def test_the_request_path_reads_lazily_from_lazy_from_bytes() -> None:
    small, large = conversation_body(LAZY_FROM // 2), conversation_body(2 * LAZY_FROM)
    assert len(small) < LAZY_FROM <= len(large)
    assert isinstance(read_request(ENDPOINTS[0], small)[1], dict)
    assert isinstance(read_request(ENDPOINTS[0], large)[1], LazyDoc)
    assert isinstance(read_request(ENDPOINTS[0], large, lazy=False)[1], dict)


def test_whole_keeps_what_readers_hold_and_changed() -> None:
    body = (
        b'{"model":"m","extra":{"k":1},"messages":[{"role":"user","content":"a"},'
        b'{"role":"assistant","content":"b"},{"role":"user","content":"secret"}]}'
    )
    doc = lazy_doc(body)
    assert doc is not None
    items = doc.items_of("messages")
    assert items is not None and not isinstance(items, str)
    last = items[-1]
    last["content"] = "[REDACTED]"  # what a redaction does to the item it found
    doc["model"] = "other"
    whole = doc.whole()
    assert whole["messages"][-1] is last
    assert list(whole) == ["model", "extra", "messages"]  # the body's order
    assert json.loads(fastjson.dumps(doc)) == {
        "model": "other",
        "extra": {"k": 1},
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "[REDACTED]"},
        ],
    }


HOSTILE = {
    "invalid JSON": b'{"model": "m", "messages": [',
    "trailing garbage": b'{"model":"m","messages":[]} x',
    "invalid UTF-8 in a message": b'{"model":"m","messages":[{"role":"user","content":"\xff"}]}',
    "invalid UTF-8 in an unread key": b'{"model":"m","zzz":"\xc3\x28","messages":[]}',
    "lone surrogate escape": b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',
    "NaN": b'{"model":"m","temperature":NaN,"messages":[]}',
    "duplicate keys": b'{"model":"a","messages":[{"role":"user","content":"x"}],"model":"b",'
    b'"messages":[{"role":"user","content":"y"}],"stream":false,"stream":true}',
    "model after messages": b'{"messages":[{"role":"user","content":"hi"}],"model":"late"}',
    "deep nesting in a message": b'{"model":"m","messages":[{"role":"user","content":'
    + b"[" * 5000
    + b"]" * 5000
    + b"}]}",
    "nesting 600 deep": b'{"model":"m","messages":[{"role":"user","c":'
    + b"[" * 600
    + b"]" * 600
    + b"}]}",
    "nesting past orjson's limit": b'{"model":"m","messages":[{"role":"user","c":'
    + b"[" * 1022
    + b"]" * 1022
    + b"}]}",
    "non-object top level": b'[{"model":"m"}]',
    "a string top level": b'"hello"',
    "an integer past 64 bits": b'{"model":"m","max_tokens":123456789012345678901234567890,'
    b'"messages":[{"role":"user","content":"x","n":-99999999999999999999999}]}',
    "a float past double's range": b'{"model":"m","max_tokens":1e400,'
    b'"messages":[{"role":"user","content":"x","n":-1e999}]}',
    "messages not a list": b'{"model":"m","messages":{"role":"user","content":"x"}}',
    "messages null": b'{"model":"m","messages":null}',
    "an element not an object": b'{"model":"m","messages":["text",3,null,[1]]}',
    "input a string": b'{"model":"m","input":"hello"}',
    "input a number": b'{"model":"m","input":5}',
    "model not a string": b'{"model":["x"],"messages":[]}',
    "empty object": b"{}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("endpoint", ENDPOINTS[:3], ids=lambda e: e.api)
def test_hostile_bodies_read_as_before(endpoint: Endpoint, name: str) -> None:
    if name == "nesting past orjson's limit" and sys.version_info >= (3, 12):
        return  # read lazily on 3.12+: test_nesting_past_orjsons_limit says how
    body = HOSTILE[name]
    lazily, plainly = _view(endpoint, body, lazy=True), _view(endpoint, body, lazy=False)
    assert lazily == plainly


def test_duplicate_keys_keep_orjsons_winner() -> None:
    info, doc = parse_request_doc(ENDPOINTS[0], HOSTILE["duplicate keys"], 0)
    assert isinstance(doc, LazyDoc)
    assert info.model == "b" and info.stream is True
    assert plain(doc)["messages"] == [{"role": "user", "content": "y"}]
    assert new_turn("anthropic.messages", doc)[0].text == "y"


def test_what_only_the_plain_parse_can_read_is_parsed_plainly() -> None:
    for name in ("invalid JSON", "invalid UTF-8 in an unread key", "NaN", "non-object top level",
                 "messages not a list", "lone surrogate escape"):  # fmt: skip
        assert lazy_doc(HOSTILE[name]) is None, name
    info, doc = parse_request_doc(ENDPOINTS[0], HOSTILE["invalid UTF-8 in an unread key"], 0)
    assert doc is None and "not JSON" in info.facts["request_error"]
    info, doc = parse_request_doc(ENDPOINTS[0], HOSTILE["NaN"], 0)
    assert isinstance(doc, dict) and info.model == "m"  # as `json` reads it, as before


def test_nesting_past_orjsons_limit() -> None:
    """orjson refuses a body nested past 1,023 levels; msgspec's own limit is the
    interpreter's recursion limit: lower on Python 3.11 (refused as before), ~1,500 on
    3.12+, where such a body is read lazily. Then the call is still metered (its model
    read; each item decodes alone, within orjson's limit) and only a reader of the whole
    body (routing rules, a strict secret scan) gets orjson's ValueError, which each
    request stage fails open on."""
    body = HOSTILE["nesting past orjson's limit"]
    info, doc = parse_request_doc(ENDPOINTS[0], body, 0)
    plain_info, plain_doc = parse_request_doc(ENDPOINTS[0], body)
    assert plain_doc is None and "nested too deeply" in plain_info.facts["request_error"]
    if sys.version_info < (3, 12):
        assert doc is None and info == plain_info
    else:
        assert isinstance(doc, LazyDoc) and info.model == "m"
        assert request_fingerprint(doc) and new_turn("anthropic.messages", doc) == []
        with pytest.raises(ValueError, match="nested too deeply"):
            doc.whole()
    info, doc = parse_request_doc(ENDPOINTS[0], HOSTILE["deep nesting in a message"], 0)
    assert doc is None and "nested too deeply" in info.facts["request_error"]
