"""What the Meter does with a request body on the event loop: one parse, and the prompt
tokenized only when a routing rule needs it, then on a worker thread (issue 16)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from devmeter import fastjson, tokens
from devmeter.budget import Budgets
from devmeter.guard import Guard
from devmeter.proxy.meter import Meter
from devmeter.routing import parse_routing
from devmeter.routing.session_router import Router
from devmeter.runaway import RunawayConfig
from devmeter.usage import Attribution, Call, RequestInfo

# "the " a thousand times: 1,004 tokens by the heuristic, 2,004 by the tiny encoding below.
PROMPT = "the " * 1000
BODY = json.dumps(
    {"model": "claude-opus-5-5", "max_tokens": 64,
     "messages": [{"role": "user", "content": PROMPT}]}
).encode()  # fmt: skip


@pytest.fixture(autouse=True)
def tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[int]]:
    """A real tiktoken Encoding over a tiny vocabulary, as if o200k_base were cached.
    Yields the threads every tokenizer run happened on."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    tokens.reset_cache()
    content = b"fake bpe file"
    path = tokens.tiktoken_cache_path("o200k_base")
    assert path is not None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(content)
    url = tokens._TIKTOKEN_FILES["o200k_base"][0]
    monkeypatch.setitem(
        tokens._TIKTOKEN_FILES, "o200k_base", (url, hashlib.sha256(content).hexdigest())
    )
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"th": 256, b"he": 257, b"the": 258})
    tiny = tiktoken.Encoding("tiny", pat_str=r"\s+|\S+", mergeable_ranks=ranks, special_tokens={})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: tiny)
    threads: list[int] = []
    real = tokens._count_texts

    def counting(texts: list[str], model: str | None) -> int:
        threads.append(threading.get_ident())
        return real(texts, model)

    monkeypatch.setattr(tokens, "_count_texts", counting)
    yield threads
    tokens.reset_cache()


def attribute(
    flow: http.HTTPFlow, info: RequestInfo, headers: Mapping[str, str], host: str, now: float
) -> Attribution:
    return Attribution(tool="claude-code", session="s1", repo="/src/app")


def meter_with(rule: dict[str, Any], mode: str = "on") -> Meter:
    router = Router(parse_routing({"mode": mode, "rules": [{"name": "r", **rule}]}))
    recorded: list[Call] = []
    return Meter(record=recorded.append, attribute=attribute, router=router,
                 guard=Guard(Budgets(), RunawayConfig()))  # fmt: skip


def request_flow(meter: Meter) -> tuple[http.HTTPFlow, Any]:
    flow = tflow.tflow(
        req=tutils.treq(
            host="api.anthropic.com", port=443, scheme=b"https", authority=b"api.anthropic.com",
            path=b"/v1/messages", method=b"POST", content=BODY,
            headers=http.Headers(host="api.anthropic.com", content_type="application/json"),
        )
    )  # fmt: skip
    meter.requestheaders(flow)
    return flow, meter.request(flow)


def sent_model(flow: http.HTTPFlow) -> str:
    return str(json.loads(flow.request.content or b"")["model"])


def test_a_threshold_near_the_prompt_is_decided_by_the_tokenizer_off_the_event_loop(
    tokenizer: list[int],
) -> None:
    meter = meter_with({"max_prompt_tokens": 2500, "to": "claude-haiku-5-5"})
    flow, pending = request_flow(meter)
    # 1,004 by the heuristic is within 4x of 2,500: only the tokenizer can tell, and the
    # request hook hands that to a worker instead of tokenizing on the loop.
    assert pending is not None and tokenizer == []
    assert sent_model(flow) == "claude-opus-5-5"
    asyncio.run(pending)
    assert tokenizer and threading.get_ident() not in tokenizer
    assert sent_model(flow) == "claude-haiku-5-5"  # 2,004 tokens <= 2,500: routed


def test_a_threshold_far_from_the_prompt_needs_no_tokenizer(tokenizer: list[int]) -> None:
    meter = meter_with({"min_prompt_tokens": 100_000, "to": "claude-haiku-5-5"})
    flow, pending = request_flow(meter)
    assert pending is None and tokenizer == []
    assert sent_model(flow) == "claude-opus-5-5"  # ~1,000 tokens is far under 100,000


def test_a_rule_that_fails_on_a_cheaper_condition_never_sizes_the_prompt(
    tokenizer: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    walked: list[object] = []
    monkeypatch.setattr(tokens, "_prompt_parts", lambda body: walked.append(body) or ([], None, 0))
    meter = meter_with({"tool": "codex", "max_prompt_tokens": 2500, "to": "claude-haiku-5-5"})
    _, pending = request_flow(meter)
    assert pending is None and walked == [] and tokenizer == []


def test_the_body_is_parsed_once_for_metering_guard_and_routing(
    tokenizer: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real_fast, real_json = fastjson.loads, json.loads

    def counting(real: Any) -> Any:
        def loads(data: Any, *args: Any, **kwargs: Any) -> Any:
            if len(data) == len(BODY):
                parsed.append(len(data))
            return real(data, *args, **kwargs)

        return loads

    monkeypatch.setattr(fastjson, "loads", counting(real_fast))
    monkeypatch.setattr(json, "loads", counting(real_json))
    # A rule that matches but is not applied (shadow), sized far from its threshold.
    meter = meter_with({"max_prompt_tokens": 100_000, "to": "claude-haiku-5-5"}, mode="shadow")
    _, pending = request_flow(meter)
    if pending is not None:  # the trade is priced on the tokenized prompt: off the loop
        asyncio.run(pending)
    assert parsed == [len(BODY)]


@pytest.mark.parametrize(("rule", "looked"), [({}, False), ({"uses_images": False}, True)])
def test_images_are_looked_for_only_when_a_rule_asks(
    rule: dict[str, Any], looked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devmeter.routing import session_router

    asked: list[object] = []
    real = session_router.request_uses_images

    def recording(*args: Any) -> bool:
        asked.append(args)
        return real(*args)

    monkeypatch.setattr(session_router, "request_uses_images", recording)
    meter = meter_with({"min_prompt_tokens": 100_000, "to": "claude-haiku-5-5", **rule})
    request_flow(meter)
    assert bool(asked) is looked


class Watched(dict[str, Any]):
    """A message that counts how often it is read."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        Watched.reads += 1
        return super().get(key, default)


@pytest.mark.parametrize(
    ("api", "key", "model_item", "new_item"),
    [
        ("anthropic.messages", "messages", {"role": "assistant", "content": "ok"},
         {"role": "user", "content": "AKIA new"}),
        ("openai.chat", "messages", {"role": "assistant", "content": "ok"},
         {"role": "user", "content": "AKIA new"}),
        ("openai.responses", "input", {"type": "function_call", "call_id": "c", "arguments": "{}"},
         {"type": "function_call_output", "call_id": "c", "output": "AKIA new"}),
        ("gemini.generate", "contents", {"role": "model", "parts": [{"text": "ok"}]},
         {"role": "user", "parts": [{"text": "AKIA new"}]}),
    ],
)  # fmt: skip
def test_the_new_turn_is_found_without_reading_the_conversation_before_it(
    api: str, key: str, model_item: dict[str, Any], new_item: dict[str, Any]
) -> None:
    from devmeter.secrets.new_content import new_pieces

    history = [Watched(new_item if i % 2 else model_item) for i in range(1000)]
    Watched.reads = 0
    pieces = new_pieces(api, {key: [*history, model_item, new_item]})
    assert [p.text for p in pieces] == ["AKIA new"]
    # A re-sent history of 1,000 items is not walked: at most the item next to the
    # model's last turn is looked at (Responses: where that turn's run of calls starts).
    assert Watched.reads <= 2
