"""Anthropic Messages API: POST /v1/messages (streaming or not) and count_tokens.

Streams (SSE): `message_start` carries `message.usage` with the input and cache
counts; `message_delta.usage` is cumulative (overwrite, never add) and may repeat
input and cache counts; `message_stop` ends the stream; `event: error` reports an
error mid-stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from devmeter.providers import anthropic_rewrite
from devmeter.providers.base import BaseParser, as_dict, as_int, as_str
from devmeter.providers.lazy_doc import SEQUENCES, items_of
from devmeter.providers.paths import READ, free_rules
from devmeter.providers.registry import Endpoint, WireFormat, register, register_host
from devmeter.providers.request import flag, set_int
from devmeter.providers.turn_text import anthropic_new_turn
from devmeter.usage import RequestInfo, Usage

# The usage fields that are counts or objects of counts; each one seen overwrites.
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "server_tool_use",
    "output_tokens_details",
    "service_tier",
)

_CWD_MARKERS = ("Primary working directory: ", "Working directory: ")


# --- requests -------------------------------------------------------------------------


def parse_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    facts: dict[str, str] = {}
    messages = items_of(body, "messages")  # only the first user message is read
    messages = messages if isinstance(messages, SEQUENCES) else []
    flag(facts, "uses_tools", body.get("tools"))
    thinking = as_dict(body.get("thinking"))
    flag(facts, "uses_thinking", thinking.get("type") in ("enabled", "adaptive"))
    set_int(facts, "max_tokens", body.get("max_tokens"))
    cwd = _working_directory(messages, body.get("system"))
    if cwd:
        facts["cwd"] = cwd
    session = _session_id(as_dict(body.get("metadata")).get("user_id"))
    if session:
        facts["session_id"] = session
    model = as_str(body.get("model")) or path_model
    return RequestInfo(model=model, stream=body.get("stream") is True, facts=facts)


def _texts(content: Any) -> list[str]:
    """The text of a message's content: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        ]
    return []


def _working_directory(messages: Sequence[Any], system: Any) -> str | None:
    """Claude Code's working directory from its environment block.

    Current versions put it in the first user message ("Primary working directory:"),
    older ones in the system prompt's <env> ("Working directory:").
    """
    candidates: list[str] = []
    for m in messages:  # the first user message (a loop: cheaper than next() over a generator)
        if isinstance(m, dict) and m.get("role") == "user":
            candidates = _texts(m.get("content"))
            break
    candidates += _texts(system)
    for marker in _CWD_MARKERS:
        for text in candidates:
            at = text.find(marker)
            if at < 0:
                continue
            start = at + len(marker)
            end = text.find("\n", start, start + 4096)
            value = text[start : end if end >= 0 else start + 4096].strip()
            if value.startswith("/") or (len(value) > 2 and value[1] == ":"):  # POSIX or C:\
                return value
    return None


def _session_id(user_id: Any) -> str | None:
    """Claude Code's session id from `metadata.user_id`.

    Current versions send a JSON string with `session_id`; older ones
    `user_<hash>_account_<uuid>_session_<uuid>`.
    """
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.startswith("{"):
        try:
            decoded = json.loads(user_id)
        except ValueError:
            return None
        return as_str(as_dict(decoded).get("session_id"))
    _, sep, session = user_id.rpartition("_session_")
    return session if sep and session else None


# --- responses ------------------------------------------------------------------------


class MessagesParser(BaseParser):
    """Usage from a Messages response, streamed or whole."""

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] = {}

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or name
        if kind == "content_block_delta":
            delta = as_dict(obj.get("delta"))
            # Output text of every kind, for estimation if the stream is cut.
            self.text.add(delta.get("text") or delta.get("thinking") or delta.get("partial_json"))
        elif kind == "message_start":
            message = as_dict(obj.get("message"))
            self.model = as_str(message.get("model")) or self.model
            self.response_id = as_str(message.get("id")) or self.response_id
            self._merge(message.get("usage"))
        elif kind == "message_delta":
            self._merge(obj.get("usage"))
        elif kind == "message_stop":
            self.terminal = True
        elif kind == "error":
            self.set_error(obj.get("error", obj))

    def on_document(self, obj: Any) -> None:
        """A non-streaming Message, or an error body."""
        if not isinstance(obj, dict):
            return
        if obj.get("type") == "error" or "error" in obj:
            self.set_error(obj.get("error", obj))
            return
        self.model = as_str(obj.get("model")) or self.model
        self.response_id = as_str(obj.get("id")) or self.response_id
        for block in obj.get("content") or ():
            if isinstance(block, dict):
                self.text.add(block.get("text") or block.get("thinking"))
                if block.get("type") == "tool_use":
                    self.text.add(json.dumps(block.get("input")))
        self._merge(obj.get("usage"))

    def _merge(self, usage: Any) -> None:
        # Cumulative counts: each report replaces what an earlier one said.
        for key, value in as_dict(usage).items():
            if key in _USAGE_FIELDS and value is not None:
                self._usage[key] = value

    def usage(self) -> Usage | None:
        return message_usage(self._usage) if self._usage else None


def message_usage(u: dict[str, Any]) -> Usage:
    """A Message's `usage` object in the ledger's meaning."""
    split = as_dict(u.get("cache_creation"))
    write_5m = as_int(split.get("ephemeral_5m_input_tokens"))
    write_1h = as_int(split.get("ephemeral_1h_input_tokens"))
    cache_write = (
        as_int(u["cache_creation_input_tokens"])
        if "cache_creation_input_tokens" in u
        else write_5m + write_1h
    )
    return Usage(
        input_tokens=as_int(u.get("input_tokens")),
        cache_read_tokens=as_int(u.get("cache_read_input_tokens")),
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=write_1h,
        output_tokens=as_int(u.get("output_tokens")),
        reasoning_tokens=as_int(as_dict(u.get("output_tokens_details")).get("thinking_tokens")),
        web_search_requests=as_int(as_dict(u.get("server_tool_use")).get("web_search_requests")),
        service_tier=as_str(u.get("service_tier")),
    )


def document_usage(usage: Any) -> Usage | None:
    """The usage of a whole Message's `usage` object, as MessagesParser.on_document reads
    it (None when it holds no count), without a parser per message: Claude Code's
    transcripts carry one per response, hundreds of thousands in a history import."""
    fields = {
        key: value
        for key, value in as_dict(usage).items()
        if key in _USAGE_FIELDS and value is not None
    }
    return message_usage(fields) if fields else None


class CountTokensParser(BaseParser):
    """count_tokens is free: it is recorded with zero usage, whatever it counted."""

    def on_event(self, name: str | None, obj: Any) -> None:
        if isinstance(obj, dict) and "error" in obj:
            self.set_error(obj["error"])

    def usage(self) -> Usage | None:
        return Usage() if self.error is None and self.terminal else None


# --- the wire formats -------------------------------------------------------------------

HOST = "api.anthropic.com"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape. 402 (a cap: Claude Code shows it and stops), 403 (refused),
    else devmeter could not pass the call on."""
    kind = {402: "billing_error", 403: "permission_error"}.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def conversation(doc: dict[str, Any]) -> Sequence[Any] | None:
    messages = items_of(doc, "messages")
    return messages if isinstance(messages, SEQUENCES) else None


def _parse(doc: dict[str, Any], endpoint: Endpoint) -> RequestInfo:
    return parse_request(doc, endpoint.path_model)


register(
    WireFormat(
        "anthropic.messages",
        "anthropic",
        lambda endpoint, request, content_type: MessagesParser(request, content_type),
        error_body,
        parse_json=_parse,
        conversation=conversation,
        new_turn=anthropic_new_turn,
        rewrite=anthropic_rewrite.adapt,
    )
)
register(
    WireFormat(
        "anthropic.count_tokens",
        "anthropic",
        lambda endpoint, request, content_type: CountTokensParser(request, content_type),
        error_body,
        parse_json=_parse,
        conversation=conversation,
        new_turn=anthropic_new_turn,
    )
)
register_host(
    HOST,
    "anthropic",
    {"/v1/messages": "anthropic.messages", "/v1/messages/count_tokens": "anthropic.count_tokens"},
    free=frozenset({"anthropic.count_tokens"}),
    family="anthropic",
    free_paths=free_rules(
        (READ, r"/"),
        (READ, r"/v1/models(/[^/]+)?"),
        (READ + " POST DELETE", r"/v1/files(/.*)?"),  # uploads, listing, downloads: no charge
        (READ, r"/v1/messages/batches(/[^/]+(/results)?)?"),  # status reads, results
        ("POST", r"/v1/messages/batches/[^/]+/cancel"),
        ("DELETE", r"/v1/messages/batches/[^/]+"),
        ("POST", r"/v1/messages/count_tokens"),
        # Claude Code's own side calls: settings, feature flags, telemetry, MCP registry.
        (READ + " POST", r"/api(/.*)?"),
        (READ, r"/mcp-registry(/.*)?"),
    ),
)
