"""Reply builders, one per wire format. Pure: request JSON + directives -> `Reply`.

Usage is scripted in a provider-neutral form (see `directives.DEFAULT_USAGE`) and mapped here:

===============  ===============================================================================
Anthropic        input_tokens = input; cache_read_input_tokens = cache_read;
                 cache_creation_input_tokens = 5m + 1h, split in cache_creation{}; output_tokens
OpenAI chat /    prompt_tokens = input + cache_read (cached_tokens = cache_read);
Responses        completion/output tokens = output (reasoning_tokens a breakdown); no cache writes
DeepSeek         as OpenAI chat + prompt_cache_hit_tokens = cache_read, _miss_tokens = input
OpenRouter       as OpenAI chat + cost (USD), is_byok, cost_details
Gemini           promptTokenCount = input + cache_read; cachedContentTokenCount = cache_read;
                 candidatesTokenCount = output - reasoning; thoughtsTokenCount = reasoning;
                 toolUsePromptTokenCount = tool_use_prompt_tokens (Gemini only)
===============  ===============================================================================
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from .directives import Directives

#: Fixed ``created`` timestamp (2025-11-23T00:00:00Z) so bodies are deterministic.
CREATED = 1763856000


@dataclass
class Event:
    """One SSE event / WebSocket message. ``name`` ":comment" writes an SSE comment line."""

    name: str
    data: Any


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Non-streamed body: JSON-able value, or bytes written as is.
    body: Any = None
    #: Streamed body.
    events: list[Event] | None = None
    #: SSE framing: "named" (event: + data:), "data" (data: only), "data-crlf" (Gemini).
    sse_style: str = "named"
    content_type: str = "application/json"


@dataclass
class Ctx:
    """What a builder gets: the request's JSON, the model, the directives, an id maker."""

    body: dict[str, Any]
    model: str
    d: Directives
    serial: int

    def id(self, prefix: str, width: int = 24) -> str:
        return f"{prefix}{'fake':<4}{self.serial:0{width - 4}d}"

    @property
    def response_model(self) -> str:
        return self.d.model or self.model


def text_pieces(text: str) -> list[str]:
    """Split text into word-sized deltas (whitespace kept, so "".join() round-trips)."""
    pieces = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
    if pieces and "".join(pieces) != text:  # leading/trailing whitespace only
        pieces = [text]
    return pieces


def json_pieces(value: Any, size: int = 12) -> list[str]:
    raw = json.dumps(value, ensure_ascii=False)
    return [raw[i : i + size] for i in range(0, len(raw), size)] or [""]


def _u(d: Directives) -> dict[str, Any]:
    """Scripted usage, with reasoning capped at output (it is a breakdown of it)."""
    u = dict(d.usage)
    u["reasoning_tokens"] = min(u["reasoning_tokens"], u["output_tokens"])
    return u


# --------------------------------------------------------------------------- errors

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def error_reply(family: str, status: int, message: str | None = None, serial: int = 0) -> Reply:
    message = message or f"fake upstream: scripted HTTP {status}"
    if family == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error")
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_fake{serial:020d}",
        }
    elif family == "gemini":
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
            }
        }
    else:
        kind, code = {
            400: ("invalid_request_error", None),
            401: ("invalid_request_error", "invalid_api_key"),
            404: ("invalid_request_error", None),
            429: ("requests", "rate_limit_exceeded"),
        }.get(status, ("server_error", None))
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status=status, body=body)


# --------------------------------------------------------------------------- Anthropic


def anthropic_usage(d: Directives, output_tokens: int | None = None) -> dict[str, Any]:
    u = _u(d)
    return {
        "input_tokens": u["input_tokens"],
        "cache_creation_input_tokens": u["cache_write_5m_tokens"] + u["cache_write_1h_tokens"],
        "cache_read_input_tokens": u["cache_read_tokens"],
        "cache_creation": {
            "ephemeral_5m_input_tokens": u["cache_write_5m_tokens"],
            "ephemeral_1h_input_tokens": u["cache_write_1h_tokens"],
        },
        "output_tokens": u["output_tokens"] if output_tokens is None else output_tokens,
        "server_tool_use": {"web_search_requests": u["web_search_requests"]},
        "service_tier": "standard",
    }


def anthropic_messages(ctx: Ctx) -> Reply:
    d = ctx.d
    msg_id = ctx.id("msg_01")
    tool = d.tool_use
    stop_reason = d.stop_reason or ("tool_use" if tool else "end_turn")
    blocks: list[dict[str, Any]] = []
    if d.text:
        blocks.append({"type": "text", "text": d.text})
    if tool:
        blocks.append(
            {
                "type": "tool_use",
                "id": ctx.id("toolu_01"),
                "name": tool.get("name", "tool"),
                "input": tool.get("input", {}),
            }
        )
    headers = [
        ("request-id", ctx.id("req_01")),
        ("anthropic-organization-id", "00000000-0000-4000-8000-00000000fa4e"),
    ]
    if not ctx.body.get("stream"):
        return Reply(
            headers=headers,
            body={
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": ctx.response_model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": anthropic_usage(d),
            },
        )

    events = [
        Event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": ctx.response_model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": anthropic_usage(d, output_tokens=1),
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in text_pieces(block["text"])]
        else:
            start = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p} for p in json_pieces(block["input"])
            ]
        events.append(
            Event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        if index == 0:
            events.append(Event("ping", {"type": "ping"}))
        events += [
            Event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            for delta in deltas
        ]
        events.append(Event("content_block_stop", {"type": "content_block_stop", "index": index}))
    usage = anthropic_usage(d)
    del usage["cache_creation"], usage["service_tier"]  # message_delta carries the flat counts
    events.append(
        Event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        )
    )
    events.append(Event("message_stop", {"type": "message_stop"}))
    return Reply(
        headers=headers,
        events=events,
        sse_style="named",
        content_type="text/event-stream; charset=utf-8",
    )


def anthropic_complete(ctx: Ctx) -> Reply:
    """Legacy Text Completions: the text, no usage (the real API reports none)."""
    return Reply(
        body={
            "type": "completion",
            "id": ctx.id("compl_01"),
            "completion": ctx.d.text,
            "stop_reason": "stop_sequence",
            "model": ctx.response_model,
        }
    )


def anthropic_batch_results(ctx: Ctx) -> Reply:
    """A Message Batch's results (JSON Lines): two succeeded requests on the scripted
    model (default claude-sonnet-5-5) with the scripted usage each, and one errored."""
    model = ctx.d.model or "claude-sonnet-5-5"
    lines = []
    for i in range(2):
        usage = dict(anthropic_usage(ctx.d), service_tier="batch")
        message = {
            "id": ctx.id(f"msg_0{i}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": ctx.d.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        lines.append({"custom_id": f"req-{i}", "result": {"type": "succeeded", "message": message}})
    lines.append(
        {
            "custom_id": "req-2",
            "result": {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "invalid_request_error"}},
            },
        }
    )
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return Reply(body=body, content_type="application/binary")


def openai_batch(ctx: Ctx) -> Reply:
    """A Batch's status (``ctx.model`` is the path here): ``in_progress`` without usage when
    its id says ``running``, else ``completed`` on gpt-5 with the scripted usage."""
    batch_id = ctx.model.rsplit("/", 1)[-1]
    running = "running" in batch_id
    u = _u(ctx.d)
    body: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "model": ctx.d.model or "gpt-5",
        "input_file_id": "file-fakeinput",
        "completion_window": "24h",
        "status": "in_progress" if running else "completed",
        "output_file_id": None if running else "file-fakeoutput",
        "created_at": CREATED,
        "request_counts": {"total": 2, "completed": 0 if running else 2, "failed": 0},
        "usage": None,
    }
    if not running:
        prompt = u["input_tokens"] + u["cache_read_tokens"]
        body["usage"] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": u["cache_read_tokens"]},
            "output_tokens": u["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            "total_tokens": prompt + u["output_tokens"],
        }
    return Reply(body=body)


def openai_transcription(ctx: Ctx) -> Reply:
    """A transcription in tokens (gpt-4o-transcribe's shape): all input is audio."""
    u = _u(ctx.d)
    usage = {
        "type": "tokens",
        "input_tokens": u["input_tokens"],
        "input_token_details": {"text_tokens": 0, "audio_tokens": u["input_tokens"]},
        "output_tokens": u["output_tokens"],
        "total_tokens": u["input_tokens"] + u["output_tokens"],
    }
    return Reply(body={"text": ctx.d.text, "usage": usage})


def openai_images(ctx: Ctx) -> Reply:
    """Image generation: gpt-image models report token usage, DALL-E none."""
    body: dict[str, Any] = {
        "created": CREATED,
        "data": [{"b64_json": base64.b64encode(b"\x89PNG fake image" * 64).decode()}],
    }
    if ctx.model.startswith("gpt-image"):
        u = _u(ctx.d)
        body["usage"] = {
            "total_tokens": u["input_tokens"] + u["output_tokens"],
            "input_tokens": u["input_tokens"],
            "output_tokens": u["output_tokens"],
            "input_tokens_details": {"text_tokens": u["input_tokens"], "image_tokens": 0},
        }
    return Reply(body=body)


def realtime_response(d: Directives, serial: int) -> list[dict[str, Any]]:
    """A Realtime response's events: its usage splits the scripted counts, half audio."""
    u = _u(d)
    prompt = u["input_tokens"] + u["cache_read_tokens"]
    usage = {
        "total_tokens": prompt + u["output_tokens"],
        "input_tokens": prompt,
        "output_tokens": u["output_tokens"],
        "input_token_details": {
            "cached_tokens": u["cache_read_tokens"],
            "text_tokens": prompt - prompt // 2,
            "audio_tokens": prompt // 2,
            "image_tokens": 0,
            "cached_tokens_details": {"text_tokens": u["cache_read_tokens"], "audio_tokens": 0},
        },
        "output_token_details": {
            "text_tokens": u["output_tokens"] - u["output_tokens"] // 2,
            "audio_tokens": u["output_tokens"] // 2,
        },
    }
    response_id = f"resp_fake{serial:020d}"
    return [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {
            "type": "response.done",
            "response": {"id": response_id, "status": "completed", "output": [], "usage": usage},
        },
    ]


def anthropic_count_tokens(ctx: Ctx) -> Reply:
    u = _u(ctx.d)
    total = (
        u["input_tokens"]
        + u["cache_read_tokens"]
        + u["cache_write_5m_tokens"]
        + u["cache_write_1h_tokens"]
    )
    return Reply(body={"input_tokens": total})


# --------------------------------------------------------------------------- OpenAI chat


def chat_usage(d: Directives, flavor: str) -> dict[str, Any]:
    u = _u(d)
    prompt = u["input_tokens"] + u["cache_read_tokens"]
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": u["output_tokens"],
        "total_tokens": prompt + u["output_tokens"],
    }
    if flavor == "deepseek":
        usage["prompt_tokens_details"] = {"cached_tokens": u["cache_read_tokens"]}
        usage["completion_tokens_details"] = {"reasoning_tokens": u["reasoning_tokens"]}
        usage["prompt_cache_hit_tokens"] = u["cache_read_tokens"]
        usage["prompt_cache_miss_tokens"] = u["input_tokens"]
    elif flavor == "openrouter":
        usage["cost"] = u["cost"]
        usage["is_byok"] = False
        usage["prompt_tokens_details"] = {
            "cached_tokens": u["cache_read_tokens"],
            "audio_tokens": 0,
        }
        usage["cost_details"] = {"upstream_inference_cost": None}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": u["reasoning_tokens"],
            "image_tokens": 0,
        }
    else:
        usage["prompt_tokens_details"] = {
            "cached_tokens": u["cache_read_tokens"],
            "audio_tokens": 0,
        }
        usage["completion_tokens_details"] = {
            "reasoning_tokens": u["reasoning_tokens"],
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def chat_completions(ctx: Ctx, flavor: str = "openai") -> Reply:
    """OpenAI chat completions; ``flavor`` "openrouter" or "deepseek" adjusts usage and extras."""
    d = ctx.d
    tool = d.tool_use
    finish = d.stop_reason or ("tool_calls" if tool else "stop")
    call_id = ctx.id("call_")
    cid = ctx.id("chatcmpl-", 30) if flavor != "openrouter" else ctx.id("gen-", 30)
    extra: dict[str, Any] = {}
    if flavor == "openai":
        extra = {"service_tier": "default", "system_fingerprint": "fp_fake0001"}
    elif flavor == "openrouter":
        extra = {"provider": "FakeProvider"}
    elif flavor == "deepseek":
        extra = {"system_fingerprint": "fp_fake0001_prod0820_fp8_kvcache"}
    head = {"id": cid, "created": CREATED, "model": ctx.response_model}

    if not ctx.body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": d.text or None}
        if flavor == "openai":
            message.update(refusal=None, annotations=[])
        if tool:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": tool.get("name", "tool"),
                        "arguments": json.dumps(tool.get("input", {})),
                    },
                }
            ]
        return Reply(
            body={
                **head,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": chat_usage(d, flavor),
                **extra,
            }
        )

    include_usage = flavor == "openrouter" or bool(
        (ctx.body.get("stream_options") or {}).get("include_usage")
    )

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> Event:
        data = {
            **head,
            "object": "chat.completion.chunk",
            **extra,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage and flavor == "openai":
            data["usage"] = None
        return Event("chunk", data)

    events: list[Event] = []
    if flavor == "openrouter":
        events.append(Event(":comment", " OPENROUTER PROCESSING"))
    first: dict[str, Any] = {"role": "assistant", "content": ""}
    if flavor == "openai":
        first["refusal"] = None
    events.append(chunk(first))
    events += [chunk({"content": p}) for p in text_pieces(d.text)]
    if tool:
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": tool.get("name", "tool"), "arguments": ""},
                        }
                    ]
                }
            )
        )
        events += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
            for p in json_pieces(tool.get("input", {}))
        ]
    events.append(chunk({}, finish))
    if include_usage:
        events.append(
            Event(
                "chunk",
                {
                    **head,
                    "object": "chat.completion.chunk",
                    **extra,
                    "choices": [],
                    "usage": chat_usage(d, flavor),
                },
            )
        )
    events.append(Event("done", "[DONE]"))
    return Reply(events=events, sse_style="data", content_type="text/event-stream; charset=utf-8")


def embeddings(ctx: Ctx) -> Reply:
    inputs = ctx.body.get("input", "")
    items = (
        inputs
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
        else [inputs]
    )
    dims = int(ctx.body.get("dimensions") or (3072 if "large" in ctx.model else 1536))
    data = []
    for i in range(len(items)):
        vector = [round(math.sin(i + k * 0.01), 6) for k in range(dims)]
        embedding: Any = vector
        if ctx.body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = _u(ctx.d)["input_tokens"]
    return Reply(
        body={
            "object": "list",
            "data": data,
            "model": ctx.response_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# --------------------------------------------------------------------------- OpenAI Responses


def responses_usage(d: Directives, prewarm: bool = False) -> dict[str, Any]:
    u = _u(d)
    if prewarm:  # a prewarm generates nothing: zeros unless scripted
        u = {key: d.prewarm_usage.get(key, 0) for key in u}
    prompt = u["input_tokens"] + u["cache_read_tokens"]
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u["cache_read_tokens"]},
        "output_tokens": u["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
        "total_tokens": prompt + u["output_tokens"],
    }


def responses(ctx: Ctx, *, websocket: bool = False) -> Reply:
    """POST /v1/responses (JSON or SSE) and one ``response.create`` over the WebSocket."""
    d, body = ctx.d, ctx.body
    prewarm = body.get("generate") is False
    resp_id = ctx.id("resp_", 40)
    msg_id = ctx.id("msg_", 40)
    status = "completed" if prewarm else d.final_status
    base: dict[str, Any] = {
        "id": resp_id,
        "object": "response",
        "created_at": CREATED,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": ctx.response_model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }

    items: list[dict[str, Any]] = []
    if not prewarm and _u(d)["reasoning_tokens"] > 0:
        reasoning: dict[str, Any] = {"id": ctx.id("rs_", 40), "type": "reasoning", "summary": []}
        if "reasoning.encrypted_content" in (body.get("include") or []):
            reasoning["encrypted_content"] = "gAAAAABfake" + "A" * 64
        items.append(reasoning)
    if not prewarm and d.text:
        items.append(
            {
                "id": msg_id,
                "type": "message",
                "status": "completed",
                "content": [
                    {"type": "output_text", "annotations": [], "logprobs": [], "text": d.text}
                ],
                "role": "assistant",
            }
        )
    if not prewarm and d.tool_use:
        items.append(
            {
                "id": ctx.id("fc_", 40),
                "type": "function_call",
                "status": "completed",
                "arguments": json.dumps(d.tool_use.get("input", {})),
                "call_id": ctx.id("call_"),
                "name": d.tool_use.get("name", "tool"),
            }
        )

    final = {**base, "status": status, "output": items, "usage": responses_usage(d, prewarm)}
    if status == "incomplete":
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    elif status == "failed":
        final["error"] = {"code": "server_error", "message": "fake upstream: scripted failure"}
    headers = [
        ("x-request-id", ctx.id("req_", 32)),
        ("openai-processing-ms", "42"),
        ("openai-model", ctx.response_model),
    ]
    if not body.get("stream") and not websocket:
        return Reply(headers=headers, body=final)

    seq = itertools.count()
    events: list[Event] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(Event(kind, {"type": kind, "sequence_number": next(seq), **fields}))

    if ctx.d.rate_limits is not None:
        kind = "codex.rate_limits"
        events.append(Event(kind, {"type": kind, **ctx.d.rate_limits}))
    emit("response.created", response=base)
    if not prewarm:
        emit("response.in_progress", response=base)
    for index, item in enumerate(items):
        if item["type"] == "reasoning":
            emit("response.output_item.added", output_index=index, item=item)
            emit("response.output_item.done", output_index=index, item=item)
        elif item["type"] == "message":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            emit("response.content_part.added", **ids, part=part)
            for piece in text_pieces(d.text):
                emit("response.output_text.delta", **ids, delta=piece, logprobs=[])
            emit("response.output_text.done", **ids, text=d.text, logprobs=[])
            emit("response.content_part.done", **ids, part={**part, "text": d.text})
            emit("response.output_item.done", output_index=index, item=item)
        else:
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in json_pieces(d.tool_use.get("input", {}) if d.tool_use else {}):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
            emit("response.output_item.done", output_index=index, item=item)
    emit(f"response.{status}", response=final)
    return Reply(
        headers=headers,
        events=events,
        sse_style="named",
        content_type="text/event-stream; charset=utf-8",
    )


# --------------------------------------------------------------------------- Gemini


def gemini_usage(d: Directives, final: bool = True) -> dict[str, Any]:
    u = _u(d)
    prompt = u["input_tokens"] + u["cache_read_tokens"]
    thoughts = min(u["reasoning_tokens"], u["output_tokens"])
    candidates = u["output_tokens"] - thoughts
    meta: dict[str, Any] = {"promptTokenCount": prompt}
    if final:
        meta["candidatesTokenCount"] = candidates
    tool = u["tool_use_prompt_tokens"]
    meta["totalTokenCount"] = prompt + tool + (u["output_tokens"] if final else thoughts)
    if u["cache_read_tokens"]:
        meta["cachedContentTokenCount"] = u["cache_read_tokens"]
    if tool:
        meta["toolUsePromptTokenCount"] = tool
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if u["cache_read_tokens"]:
        meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": u["cache_read_tokens"]}]
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


def gemini_generate(ctx: Ctx, *, stream: bool, sse: bool = True, wrapped: bool = False) -> Reply:
    """generateContent / streamGenerateContent; ``wrapped`` is cloudcode-pa's {"response": ...}."""
    d = ctx.d
    response_id = ctx.id("fakeResp", 22)
    finish = d.stop_reason or "STOP"

    def chunk(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = finish
        data = {
            "candidates": [candidate],
            "usageMetadata": gemini_usage(d, final=last),
            "modelVersion": ctx.response_model,
            "responseId": response_id,
        }
        if wrapped:
            return {"response": data, "traceId": ctx.id("trace", 20)}
        return data

    tool_part = (
        [
            {
                "functionCall": {
                    "name": d.tool_use.get("name", "tool"),
                    "args": d.tool_use.get("input", {}),
                }
            }
        ]
        if d.tool_use
        else []
    )
    if not stream:
        parts = ([{"text": d.text}] if d.text else []) + tool_part
        return Reply(body=chunk(parts, last=True))
    pieces = [[{"text": p}] for p in text_pieces(d.text)] + ([tool_part] if tool_part else [])
    pieces = pieces or [[{"text": ""}]]
    chunks = [chunk(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    if sse:
        return Reply(
            events=[Event("chunk", c) for c in chunks],
            sse_style="data-crlf",
            content_type="text/event-stream",
        )
    # Without alt=sse Gemini streams one JSON array, element by element.
    events = [
        Event("array", ("[" if i == 0 else ",\r\n") + json.dumps(c)) for i, c in enumerate(chunks)
    ]
    events.append(Event("array", "]"))
    return Reply(events=events, sse_style="raw", content_type="application/json; charset=UTF-8")


def gemini_count_tokens(ctx: Ctx) -> Reply:
    u = _u(ctx.d)
    total = u["input_tokens"] + u["cache_read_tokens"]
    return Reply(
        body={
            "totalTokens": total,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
        }
    )
