"""Which requests are metered calls, and the body framing under every parser."""

from __future__ import annotations

import pytest

from devmeter.providers import (
    INTERCEPT_HOSTS,
    Endpoint,
    match_endpoint,
    parse_request,
)
from devmeter.providers.framing import BodyReader, _ArraySplitter


@pytest.mark.parametrize(
    ("host", "method", "path", "expected"),
    [
        ("api.anthropic.com", "POST", "/v1/messages", Endpoint("anthropic", "anthropic.messages")),
        (
            "api.anthropic.com",
            "POST",
            "/v1/messages?beta=true",
            Endpoint("anthropic", "anthropic.messages"),
        ),
        (
            "api.anthropic.com",
            "POST",
            "/v1/messages/count_tokens?beta=true",
            Endpoint("anthropic", "anthropic.count_tokens", free=True),
        ),
        (
            "API.Anthropic.com:443",
            "post",
            "/v1/messages",
            Endpoint("anthropic", "anthropic.messages"),
        ),
        ("api.openai.com", "POST", "/v1/chat/completions", Endpoint("openai", "openai.chat")),
        ("api.openai.com", "POST", "/v1/responses", Endpoint("openai", "openai.responses")),
        ("api.openai.com", "POST", "/v1/embeddings", Endpoint("openai", "openai.embeddings")),
        (
            "chatgpt.com",
            "POST",
            "/backend-api/codex/responses",
            Endpoint("openai", "openai.responses"),
        ),
        (
            "openrouter.ai",
            "POST",
            "/api/v1/chat/completions",
            Endpoint("openrouter", "openai.chat"),
        ),
        ("api.deepseek.com", "POST", "/chat/completions", Endpoint("deepseek", "openai.chat")),
        ("api.deepseek.com", "POST", "/v1/chat/completions", Endpoint("deepseek", "openai.chat")),
        ("api.groq.com", "POST", "/openai/v1/chat/completions", Endpoint("groq", "openai.chat")),
        ("api.mistral.ai", "POST", "/v1/chat/completions", Endpoint("mistral", "openai.chat")),
        ("api.x.ai", "POST", "/v1/chat/completions", Endpoint("x-ai", "openai.chat")),
        (
            "generativelanguage.googleapis.com",
            "POST",
            "/v1beta/models/gemini-2.5-pro:generateContent?key=abc",
            Endpoint("google", "gemini.generate", path_model="gemini-2.5-pro"),
        ),
        (
            "generativelanguage.googleapis.com",
            "POST",
            "/v1/models/gemini-2.0-flash%2D001:streamGenerateContent",
            Endpoint("google", "gemini.generate", path_model="gemini-2.0-flash-001", stream=True),
        ),
        (
            "cloudcode-pa.googleapis.com",
            "POST",
            "/v1internal:generateContent",
            Endpoint("google", "gemini.generate"),
        ),
        # Not calls: other methods, other paths, other hosts.
        ("api.anthropic.com", "GET", "/v1/messages", None),
        ("api.anthropic.com", "POST", "/v1/messages/batches", None),
        ("api.anthropic.com", "GET", "/api/claude_code/settings", None),
        ("api.anthropic.com", "POST", "/api/event_logging/v2/batch", None),
        ("api.openai.com", "GET", "/v1/models", None),
        ("api.openai.com", "GET", "/v1/responses/resp_123", None),
        ("api.openai.com", "DELETE", "/v1/responses", None),
        ("chatgpt.com", "GET", "/", None),
        (
            "generativelanguage.googleapis.com",
            "POST",
            "/v1beta/models/gemini-2.5-pro:countTokens",
            None,
        ),
        (
            "generativelanguage.googleapis.com",
            "GET",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            None,
        ),
        ("cloudcode-pa.googleapis.com", "POST", "/v1internal:loadCodeAssist", None),
        ("example.com", "POST", "/v1/chat/completions", None),
        ("api.openai.com.evil.com", "POST", "/v1/chat/completions", None),
    ],
)
def test_match_endpoint(host: str, method: str, path: str, expected: Endpoint | None) -> None:
    assert match_endpoint(host, method, path) == expected


def test_intercept_hosts_cover_every_route_and_nothing_else() -> None:
    assert len(set(INTERCEPT_HOSTS)) == len(INTERCEPT_HOSTS)
    assert all(h == h.lower() and "/" not in h and ":" not in h for h in INTERCEPT_HOSTS)
    assert set(INTERCEPT_HOSTS) == {
        "api.anthropic.com",
        "api.openai.com",
        "chatgpt.com",
        "generativelanguage.googleapis.com",
        "cloudcode-pa.googleapis.com",
        "openrouter.ai",
        "api.deepseek.com",
        "api.groq.com",
        "api.mistral.ai",
        "api.x.ai",
        "api2.cursor.sh",
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty request body"),
        (b"{", "request body is not JSON"),
        (b"\xff\xfe{}", "request body is not JSON"),
        (b"[]", "request body is a JSON list, not an object"),
        (b'"text"', "request body is a JSON str, not an object"),
    ],
)
def test_parse_request_never_raises(body: bytes, reason: str) -> None:
    for api in ("anthropic.messages", "openai.chat", "openai.responses", "openai.embeddings"):
        info = parse_request(Endpoint("x", api), body)
        assert info.model is None
        assert info.facts["request_error"].startswith(reason)


def test_parse_request_survives_odd_shapes() -> None:
    odd = (
        b'{"model": 5, "messages": "hi", "tools": 3, "thinking": [], "metadata": "x",'
        b' "system": {"a": 1}, "stream_options": [], "reasoning": "high", "input": {"k": null},'
        b' "contents": 7, "generationConfig": [], "request": "x"}'
    )
    for api in ("anthropic.messages", "openai.chat", "openai.responses", "gemini.generate"):
        info = parse_request(Endpoint("x", api, path_model="pm"), odd)
        assert info.model == "pm"
        assert "request_error" not in info.facts


class TestArraySplitter:
    def test_elements_with_brackets_quotes_and_escapes_in_strings(self) -> None:
        data = b'[{"t": "a ] } [ {"},\r\n{"t": "q\\" \\\\"}, {"n": [1, {"x": 2}]}]'
        expected = [b'{"t": "a ] } [ {"}', b'{"t": "q\\" \\\\"}', b'{"n": [1, {"x": 2}]}']
        whole = _ArraySplitter()
        assert whole.feed(data) == expected and whole.closed
        bytewise = _ArraySplitter()
        got = [e for i in range(len(data)) for e in bytewise.feed(data[i : i + 1])]
        assert got == expected and bytewise.closed

    def test_unclosed_array(self) -> None:
        splitter = _ArraySplitter()
        assert splitter.feed(b'[{"a": 1}, {"b": ') == [b'{"a": 1}']
        assert not splitter.closed


class TestBodyReader:
    def collect(
        self, content_type: str, *chunks: bytes
    ) -> tuple[list[object], tuple[bool, str | None], str | None]:
        seen: list[object] = []
        reader = BodyReader(
            content_type,
            lambda name, data, flushed: seen.append((name, data, flushed)),
            lambda doc, in_array: seen.append((doc, in_array)),
        )
        for chunk in chunks:
            reader.feed(chunk)
        return seen, reader.finish(), reader.mode

    def test_leading_whitespace_split_from_the_body(self) -> None:
        seen, finished, mode = self.collect("application/json", b"  \n", b'{"a": 1}')
        assert (seen, finished, mode) == ([({"a": 1}, False)], (True, None), "json")

    def test_several_whitespace_chunks_before_an_array(self) -> None:
        seen, finished, mode = self.collect(
            "application/json", b" ", b"\xef\xbb\xbf\r\n", b'[{"a": 1},', b' {"b": 2}]'
        )
        assert (seen, finished, mode) == (
            [({"a": 1}, True), ({"b": 2}, True)],
            (True, None),
            "array",
        )

    def test_only_whitespace_is_an_empty_body(self) -> None:
        assert self.collect("application/json", b" ", b"\n") == ([], (True, None), None)

    def test_sse_sniffed_without_content_type(self) -> None:
        seen, finished, mode = self.collect("", b"data: x\n\n")
        assert (seen, finished, mode) == ([(None, "x", False)], (True, None), "sse")

    def test_huge_json_without_usage_in_its_tail(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from devmeter.providers import framing

        monkeypatch.setattr(framing, "JSON_CAP", 1_000)
        monkeypatch.setattr(framing, "TAIL_SIZE", 100)
        seen, finished, _ = self.collect(
            "application/json", b'{"data": [' + b"1, " * 2_000 + b"1]}"
        )
        assert seen == []
        assert finished[0] is False
        assert "no usage in its last bytes" in (finished[1] or "")

    def test_raw_body_error_is_short_and_single_line(self) -> None:
        page = b"<html>\n<body>\n" + b"<p>Bad Gateway</p>\n" * 500 + b"</body></html>"
        _, (complete, error), mode = self.collect("text/html", page)
        assert mode == "raw" and complete
        assert error is not None and "\n" not in error and len(error) < 250
        assert error.startswith(
            f"non-JSON response body (text/html, {len(page)} bytes): Bad Gateway"
        )
