"""OpenAI Chat Completions and the APIs that copy it (OpenRouter, DeepSeek, Groq,
Mistral, xAI), plus OpenAI embeddings.

Streams (SSE) are `data: {chunk}` lines ending with `data: [DONE]`. Usage arrives
only in the final chunk, and only when the request set
`stream_options.include_usage` (Mistral and OpenRouter send it regardless; Groq
may put it in `x_groq.usage`). `prompt_tokens` includes cached tokens: subtract.
A stream without its `[DONE]` is incomplete, even after a finish_reason: every
compatible server we meter sends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from devmeter.providers import openai_rewrite
from devmeter.providers.base import BaseParser, as_dict, as_int, as_str
from devmeter.providers.lazy_doc import SEQUENCES, items_of
from devmeter.providers.registry import Endpoint, WireFormat, register
from devmeter.providers.request import flag, set_int, stream_facts
from devmeter.providers.turn_text import embeddings_input, openai_chat_new_turn
from devmeter.usage import RequestInfo, Usage

# --- requests -------------------------------------------------------------------------


def parse_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    facts: dict[str, str] = {}
    stream = stream_facts(body, facts)
    flag(facts, "uses_tools", body.get("tools") or body.get("functions"))
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")  # OpenRouter's unified reasoning object
    flag(
        facts,
        "uses_thinking",
        (isinstance(effort, str) and effort not in ("none", ""))
        or (isinstance(reasoning, dict) and reasoning.get("enabled") is not False)
        or as_dict(body.get("thinking")).get("type") == "enabled",  # DeepSeek, Mistral
    )
    max_tokens = body.get("max_completion_tokens")
    set_int(facts, "max_tokens", max_tokens if max_tokens is not None else body.get("max_tokens"))
    model = as_str(body.get("model")) or path_model
    return RequestInfo(model=model, stream=stream, facts=facts)


def parse_embeddings_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    model = as_str(body.get("model")) or path_model
    return RequestInfo(model=model, stream=False)


# --- responses ------------------------------------------------------------------------


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return Decimal(str(value))  # str(): 0.1 stays 0.1, not its binary expansion
    except InvalidOperation:
        return None


def output_with_reasoning(prompt: int, completion: int, reasoning: int, total: Any) -> int:
    """Output tokens including reasoning.

    OpenAI counts reasoning inside completion_tokens; xAI does not (its total_tokens
    is prompt + completion + reasoning). The total says which one we are reading.
    """
    total = as_int(total)
    if reasoning > 0 and total == prompt + completion + reasoning:
        return completion + reasoning
    return completion


def chat_usage(u: dict[str, Any], provider: str, service_tier: str | None) -> Usage:
    """A chat `usage` object in the ledger's meaning."""
    prompt = as_int(u.get("prompt_tokens"))
    details = as_dict(u.get("prompt_tokens_details"))
    cache_read = as_int(details.get("cached_tokens"))
    cache_write = as_int(details.get("cache_write_tokens"))  # OpenRouter, newer OpenAI
    if "prompt_cache_hit_tokens" in u or "prompt_cache_miss_tokens" in u:
        # DeepSeek reports the split itself.
        cache_read = as_int(u.get("prompt_cache_hit_tokens"))
        if "prompt_cache_miss_tokens" in u:
            input_tokens = as_int(u.get("prompt_cache_miss_tokens"))
        else:
            input_tokens = prompt - cache_read
    else:
        input_tokens = prompt - cache_read - cache_write
    completion = as_int(u.get("completion_tokens"))
    reasoning = as_int(as_dict(u.get("completion_tokens_details")).get("reasoning_tokens"))
    return Usage(
        input_tokens=max(0, input_tokens),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=output_with_reasoning(prompt, completion, reasoning, u.get("total_tokens")),
        reasoning_tokens=reasoning,
        service_tier=service_tier,
        reported_cost_usd=_decimal(u.get("cost")) if provider == "openrouter" else None,
    )


class ChatParser(BaseParser):
    """Usage from a chat completion, streamed or whole."""

    def __init__(self, request: RequestInfo, content_type: str = "", provider: str = "") -> None:
        super().__init__(request, content_type)
        self.provider = provider
        self._usage: dict[str, Any] | None = None
        self._service_tier: str | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            # A JSON error body, or a mid-stream error chunk (OpenRouter's also carries
            # a choice with finish_reason "error", read below like any other).
            self.set_error(obj["error"])
        self.model = as_str(obj.get("model")) or self.model
        self._service_tier = as_str(obj.get("service_tier")) or self._service_tier
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            # Streams carry `delta`, whole responses `message`; legacy completions `text`.
            self._add_text(as_dict(choice.get("delta") or choice.get("message")))
            self.text.add(choice.get("text"))
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            usage = as_dict(obj.get("x_groq")).get("usage")  # Groq streams
        if isinstance(usage, dict):
            self._usage = usage

    def _add_text(self, delta: dict[str, Any]) -> None:
        add = self.text.add
        add(delta.get("content"))
        add(delta.get("reasoning_content"))  # DeepSeek
        add(delta.get("reasoning"))  # OpenRouter, Groq
        add(delta.get("refusal"))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                function = as_dict(call.get("function"))
                add(function.get("name"))
                add(function.get("arguments"))
        add(as_dict(delta.get("function_call")).get("arguments"))

    def usage(self) -> Usage | None:
        if self._usage is None:
            return None
        return chat_usage(self._usage, self.provider, self._service_tier)


class EmbeddingsParser(BaseParser):
    """Usage from an embeddings response: prompt tokens only."""

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if "error" in obj:
            self.set_error(obj["error"])
            return
        self.model = as_str(obj.get("model")) or self.model
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = usage

    def usage(self) -> Usage | None:
        if self._usage is None:
            return None
        return Usage(input_tokens=as_int(self._usage.get("prompt_tokens")))


# --- the wire formats -------------------------------------------------------------------


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape, which every OpenAI-compatible SDK reads. 403: devmeter refused
    the call (a cap, a pause); else devmeter could not pass it on."""
    if status == 403:
        return {
            "error": {
                "message": message,
                "type": "devmeter_budget_exceeded",
                "param": None,
                "code": "devmeter_blocked",
            }
        }
    return {"error": {"message": message, "type": "devmeter_error", "param": None, "code": None}}


def conversation(doc: dict[str, Any]) -> Sequence[Any] | None:
    messages = items_of(doc, "messages")
    return messages if isinstance(messages, SEQUENCES) else None


def _chat_parser(endpoint: Endpoint, request: RequestInfo, content_type: str) -> ChatParser:
    return ChatParser(request, content_type, provider=endpoint.provider)


def _parse(doc: dict[str, Any], endpoint: Endpoint) -> RequestInfo:
    return parse_request(doc, endpoint.path_model)


register(
    WireFormat(
        "openai.chat",
        "openai",
        _chat_parser,
        error_body,
        parse_json=_parse,
        conversation=conversation,
        new_turn=openai_chat_new_turn,
        rewrite=openai_rewrite.adapt_chat,
    )
)
register(WireFormat("openai.completions", "openai", _chat_parser, error_body, parse_json=_parse))
register(
    WireFormat(
        "openai.embeddings",
        "openai",
        lambda endpoint, request, content_type: EmbeddingsParser(request, content_type),
        error_body,
        parse_json=lambda doc, endpoint: parse_embeddings_request(doc, endpoint.path_model),
        new_turn=embeddings_input,
    )
)
