"""The benchmarks' 1 MB Claude Code conversation is a request devmeter reads as real."""

from __future__ import annotations

import json

from benchmarks.large_body import SESSION_ID, conversation_bodies, conversation_body
from devmeter.providers import match_endpoint
from devmeter.proxy.streaming import read_request


def test_the_conversation_is_about_a_megabyte_the_same_every_time_and_metered_as_claude_code() -> (
    None
):
    body = conversation_body()
    assert 990_000 <= len(body) <= 1_010_000
    assert conversation_body() == body  # the same bytes in every process and round
    endpoint = match_endpoint("api.anthropic.com", "POST", "/v1/messages")
    assert endpoint is not None
    info, doc, error = read_request(endpoint, body)
    assert error is None and doc is not None
    assert info.model == "claude-opus-5-5"
    assert info.facts["session_id"] == SESSION_ID
    assert info.facts["cwd"] == "/home/dev/src/acme-api"
    messages = json.loads(body)["messages"]
    assert len(messages) > 300  # a long session, re-sent whole
    last = messages[-1]["content"][-1]
    assert last["type"] == "tool_result" and len(last["content"]) < 100  # a short new turn


def test_the_growing_conversation_adds_a_turn_a_call_and_moves_the_cache_marker() -> None:
    bodies = conversation_bodies(4)
    assert 1_000_000 <= len(bodies[0]) <= 1_020_000
    assert conversation_bodies(4) == bodies
    docs = [json.loads(body) for body in bodies]
    for before, after in zip(docs, docs[1:], strict=False):
        assert len(after["messages"]) == len(before["messages"]) + 2  # a tool call, its result
        assert {k: v for k, v in after.items() if k != "messages"} == {
            k: v for k, v in before.items() if k != "messages"
        }
    for doc in docs:  # the marker on the last message only, as the CLI puts it
        marked = [
            i for i, m in enumerate(doc["messages"]) for b in m["content"] if "cache_control" in b
        ]
        assert marked == [len(doc["messages"]) - 1]
