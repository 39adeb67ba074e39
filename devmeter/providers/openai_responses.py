"""OpenAI Responses API: POST /v1/responses over HTTP (SSE or JSON) and over a WebSocket.

Every event is a JSON object with a `type`. Usage is in the `response` object of
the terminal event: `response.completed`, `response.incomplete` or
`response.failed`. `input_tokens` includes cached tokens: subtract.

Codex CLI speaks this API over a WebSocket: each server message is one of these
events, one socket carries several responses (a prewarm with `generate: false`,
then each turn), and responses may run side by side on "lanes" named by
`stream_id`. So this parser keeps one state per lane, and yields one
ResponseResult per finished response through `take_completed()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from devmeter.providers import openai_rewrite
from devmeter.providers.base import (
    ERROR_CAP,
    BaseParser,
    TextBuffer,
    as_dict,
    as_int,
    as_str,
    error_text,
)
from devmeter.providers.lazy_doc import SEQUENCES, items_of
from devmeter.providers.openai_chat import error_body, output_with_reasoning
from devmeter.providers.registry import Endpoint, WireFormat, register
from devmeter.providers.request import flag, set_int, stream_facts
from devmeter.providers.turn_text import openai_responses_new_turn
from devmeter.usage import RequestInfo, ResponseResult, Usage

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose `delta` is output text (estimation material if usage never comes).
_TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)

# --- requests -------------------------------------------------------------------------


def parse_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    """A POST body, or the same fields in a WebSocket `response.create` message."""
    facts: dict[str, str] = {}
    stream = stream_facts(body, facts)
    flag(facts, "uses_tools", body.get("tools"))
    effort = as_dict(body.get("reasoning")).get("effort")
    flag(facts, "uses_thinking", isinstance(effort, str) and effort != "none")
    set_int(facts, "max_tokens", body.get("max_output_tokens"))
    # Codex's prewarm: prepares the cache, generates nothing.
    flag(facts, "prewarm", body.get("generate") is False or body.get("prewarm") is True)
    model = as_str(body.get("model")) or path_model
    return RequestInfo(model=model, stream=stream, facts=facts)


# --- responses ------------------------------------------------------------------------


def responses_usage(u: dict[str, Any], service_tier: str | None, web_searches: int) -> Usage:
    """A Responses `usage` object in the ledger's meaning."""
    details = as_dict(u.get("input_tokens_details"))
    cache_read = as_int(details.get("cached_tokens"))
    cache_write = as_int(details.get("cache_write_tokens"))
    prompt = as_int(u.get("input_tokens"))
    reasoning = as_int(as_dict(u.get("output_tokens_details")).get("reasoning_tokens"))
    output = output_with_reasoning(
        prompt, as_int(u.get("output_tokens")), reasoning, u.get("total_tokens")
    )
    return Usage(
        input_tokens=max(0, prompt - cache_read - cache_write),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=output,
        reasoning_tokens=reasoning,
        web_search_requests=web_searches,
        service_tier=service_tier,
    )


@dataclass
class _Response:
    """One response in flight."""

    id: str | None = None
    model: str | None = None
    service_tier: str | None = None
    usage: dict[str, Any] | None = None
    # web_search_call item ids, from output_item.done and the final output list
    web_searches: set[str] = field(default_factory=set)
    text: TextBuffer = field(default_factory=TextBuffer)
    error: str | None = None

    def update(self, response: dict[str, Any]) -> None:
        self.id = as_str(response.get("id")) or self.id
        self.model = as_str(response.get("model")) or self.model
        self.service_tier = as_str(response.get("service_tier")) or self.service_tier
        for i, item in enumerate(response.get("output") or ()):
            self.note_item(item, i)

    def note_item(self, item: Any, index: int) -> None:
        if isinstance(item, dict) and item.get("type") == "web_search_call":
            self.web_searches.add(as_str(item.get("id")) or f"#{index}")


class ResponsesParser(BaseParser):
    """Usage from Responses API events, over HTTP or a WebSocket."""

    TAIL_KEYS = ("usage", "model", "service_tier")

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._lanes: dict[str | None, _Response] = {}  # stream_id -> response in flight
        self._completed: list[ResponseResult] = []  # not yet taken
        self._last: ResponseResult | None = None

    # --- events ----------------------------------------------------------------------

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or name
        if not isinstance(kind, str):
            return
        lane = as_str(obj.get("stream_id"))
        if kind == "error":
            self._on_error(lane, obj)
            return
        if not kind.startswith("response."):
            return  # e.g. Codex's rate-limit notices
        state = self._lanes.get(lane)
        response = as_dict(obj.get("response"))
        if state is None or (kind == "response.created" and state.id != response.get("id")):
            if state is not None:  # a new response on a lane whose last one never ended
                self._queue(self._conclude(state, complete=False))
            state = self._lanes[lane] = _Response()
        if response:
            state.update(response)
        if kind in _TEXT_DELTAS:
            state.text.add(obj.get("delta"))
        elif kind == "response.output_item.done":
            state.note_item(obj.get("item"), as_int(obj.get("output_index")))
        elif kind in _TERMINAL:
            if isinstance(response.get("usage"), dict):
                state.usage = response["usage"]
            if kind == "response.failed" and response.get("error"):
                state.error = error_text(response["error"])
            del self._lanes[lane]
            self._queue(self._conclude(state, complete=True))

    def on_document(self, obj: Any) -> None:
        """A non-streaming response object, or an error body."""
        if not isinstance(obj, dict):
            return
        if obj.get("object") != "response" and "error" in obj:
            self._on_error(None, obj)
            return
        state = _Response()
        state.update(obj)
        if isinstance(obj.get("usage"), dict):
            state.usage = obj["usage"]
        if obj.get("error"):
            state.error = error_text(obj["error"])
        for item in obj.get("output") or ():
            for part in as_dict(item).get("content") or ():
                state.text.add(as_dict(part).get("text"))
        self._queue(self._conclude(state, complete=True))

    def _on_error(self, lane: str | None, obj: dict[str, Any]) -> None:
        # SSE: {"type":"error","code","message"}; WebSocket: {"type":"error","error":{...}}.
        nested = obj.get("error")
        error = error_text(nested or {"code": obj.get("code"), "message": obj.get("message")})
        state = self._lanes.get(lane)
        if state is not None:
            state.error = error  # a response.failed may still follow with usage
        else:
            self._queue(self._conclude(_Response(error=error), complete=False))

    # --- results ---------------------------------------------------------------------

    def _conclude(self, state: _Response, complete: bool) -> ResponseResult:
        usage = None
        if state.usage is not None:
            usage = responses_usage(state.usage, state.service_tier, len(state.web_searches))
        keep_text = usage is None or not complete
        return ResponseResult(
            usage=usage,
            model=state.model or self.request.model,
            complete=complete,
            output_chars=state.text.chars,
            output_text=state.text.value() if keep_text else "",
            error=state.error,
            response_id=state.id,
        )

    def _queue(self, result: ResponseResult) -> None:
        self._completed.append(result)
        self._last = result

    def take_completed(self) -> list[ResponseResult]:
        done, self._completed = self._completed, []
        return done

    def take_unfinished(self) -> list[ResponseResult]:
        states, self._lanes = list(self._lanes.values()), {}
        return [self._conclude(s, complete=False) for s in states]

    def build(self, framing_ok: bool, body_error: str | None) -> ResponseResult:
        """The one response of an HTTP exchange: in flight (cut short) or the last one."""
        if self._lanes:
            result = self._conclude(next(iter(self._lanes.values())), complete=False)
        elif self._last is not None:
            result = self._last
        else:
            # Nothing response-shaped arrived; a whole non-JSON body still ended normally.
            whole = framing_ok and self._reader.mode == "raw"
            result = ResponseResult(usage=None, model=self.request.model, complete=whole)
        errors = [e for e in (result.error, self.error, body_error) if e]
        if self.bad_events:
            errors.append(f"{self.bad_events} events were not valid JSON")
        error = "; ".join(errors)[:ERROR_CAP] if errors else None
        return replace(result, complete=result.complete and not self._broken, error=error)

    def usage(self) -> Usage | None:  # build() is overridden; kept for the base contract
        return self._last.usage if self._last else None


# --- the wire formats -------------------------------------------------------------------


def conversation(doc: dict[str, Any]) -> Sequence[Any] | None:
    """The input items; a one-string prompt is one user message."""
    value = items_of(doc, "input")
    if isinstance(value, SEQUENCES):
        return value
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return None


def _parser(endpoint: Endpoint, request: RequestInfo, content_type: str) -> ResponsesParser:
    return ResponsesParser(request, content_type)


def _parse(doc: dict[str, Any], endpoint: Endpoint) -> RequestInfo:
    return parse_request(doc, endpoint.path_model)


register(
    WireFormat(
        "openai.responses",
        "openai",
        _parser,
        error_body,
        parse_json=_parse,
        # Codex CLI's Responses-over-WebSocket opens with a GET.
        methods=frozenset({"POST", "GET"}),
        conversation=conversation,
        new_turn=openai_responses_new_turn,
        rewrite=openai_rewrite.adapt_responses,
    )
)
# Codex's remote compaction of a long conversation: a paid Responses call, not routed.
register(WireFormat("openai.compact", "openai", _parser, error_body, parse_json=_parse))
