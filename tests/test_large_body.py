"""The benchmarks' 1 MB Claude Code conversation is a request devmeter reads as real."""

from __future__ import annotations

import json

from benchmarks.large_body import SESSION_ID, conversation_body
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
