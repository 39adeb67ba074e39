"""Anthropic's other paid APIs: legacy Text Completions and Message Batches results.

`POST /v1/complete` takes `{model, prompt, max_tokens_to_sample, stream}` and answers
`{completion, stop_reason, model}` (or SSE `completion` events) with no usage at all:
its tokens are estimated from the prompt and the completion text.

A Message Batch is billed as it runs, at the batch rate; the wire shows what it used
only in its results, `GET /v1/messages/batches/{id}/results`: JSON Lines, one
`{"custom_id", "result": {"type": "succeeded", "message": {... "model", "usage"}}}`
per request. Each read of the results is metered: one row per model, usage summed,
priced at genai-prices' batch rate (`service_tier = "batch"`).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from devmeter import fastjson
from devmeter.providers.anthropic import HOST, error_body, message_usage
from devmeter.providers.base import ERROR_CAP, BaseParser, as_dict, as_str, error_text
from devmeter.providers.registry import Endpoint, WireFormat, fixed, register, register_host
from devmeter.providers.request import stream_facts
from devmeter.usage import RequestInfo, ResponseResult, Usage

# --- Text Completions -------------------------------------------------------------------


def parse_complete_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    """The prompt estimate comes from the body's `prompt`, like every request's."""
    facts: dict[str, str] = {}
    stream = stream_facts(body, facts)
    return RequestInfo(model=as_str(body.get("model")) or path_model, stream=stream, facts=facts)


class CompleteParser(BaseParser):
    """The completion text (for the estimate), the model and the end of the stream."""

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or name
        if kind == "error" or "error" in obj:
            self.set_error(obj.get("error", obj))
            return
        self.model = as_str(obj.get("model")) or self.model
        self.text.add(obj.get("completion"))
        if obj.get("stop_reason"):
            self.terminal = True

    def usage(self) -> Usage | None:
        return None  # the API reports none: the meter estimates from the text


# --- Message Batches results -------------------------------------------------------------

LINE_CAP = 4 * 1024 * 1024  # a result line past this is skipped (and counted), not held


class BatchResultsParser:
    """Sums the usage of every succeeded request in a batch's JSON Lines results, by model.

    Holds one line at a time, bounded by LINE_CAP; never raises.
    """

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        self.request = request
        self._partial = bytearray()
        self._skipping = False  # inside a line longer than LINE_CAP
        self._by_model: dict[str, Usage] = {}
        self._requests = 0
        self._unreadable = 0
        self._error: str | None = None
        self._results: list[ResponseResult] | None = None

    def feed(self, data: bytes) -> None:
        if self._results is not None or not data:
            return
        try:
            start = 0
            while True:
                end = data.find(b"\n", start)
                if end < 0:
                    self._keep(data[start:])
                    return
                self._keep(data[start:end])
                self._end_line()
                start = end + 1
        except Exception as exc:  # never let a parser bug reach the proxy's stream
            self._error = f"parser error: {type(exc).__name__}: {exc}"[:ERROR_CAP]

    def feed_message(self, text: str | bytes) -> None:
        return None

    def _keep(self, piece: bytes) -> None:
        if self._skipping:
            return
        if len(self._partial) + len(piece) > LINE_CAP:
            self._partial.clear()
            self._skipping = True
            return
        self._partial += piece

    def _end_line(self) -> None:
        if self._skipping:
            self._skipping = False
            self._unreadable += 1
            return
        line = bytes(self._partial).strip()
        self._partial.clear()
        if line:
            self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            obj = fastjson.loads(line)
        except ValueError:
            self._unreadable += 1
            return
        if not isinstance(obj, dict):
            self._unreadable += 1
            return
        if "error" in obj and "result" not in obj:  # an error body instead of results
            self._error = error_text(obj.get("error"))
            return
        result = as_dict(obj.get("result"))
        self._requests += 1
        if result.get("type") != "succeeded":
            return  # errored, canceled or expired requests are not billed
        message = as_dict(result.get("message"))
        model = as_str(message.get("model")) or self.request.model or "unknown"
        usage = _non_negative(message_usage(as_dict(message.get("usage"))))
        seen = self._by_model.get(model)
        self._by_model[model] = usage if seen is None else _add(seen, usage)

    def _conclude(self) -> list[ResponseResult]:
        if self._results is None:
            if self._partial or self._skipping:
                self._end_line()  # a last line without its newline
            notes = [self._error] if self._error else []
            if self._unreadable:
                notes.append(f"{self._unreadable} result lines could not be read")
            error = "; ".join(notes)[:ERROR_CAP] or None
            results = [
                ResponseResult(usage=usage, model=model, error=error)
                for model, usage in self._by_model.items()
            ]
            if not results:
                results = [ResponseResult(usage=Usage(), model=self.request.model, error=error)]
            self._results = results
        return self._results

    def result(self) -> ResponseResult:
        return self._conclude()[0]

    def take_completed(self) -> list[ResponseResult]:
        """The rows past the first, one per further model in the batch, once."""
        results = self._conclude()
        extra, self._results = results[1:], results[:1]
        return extra

    def take_unfinished(self) -> list[ResponseResult]:
        return []


_SUMMED = tuple(f.name for f in fields(Usage) if f.type in ("int", int) and f.name != "estimated")


def _non_negative(usage: Usage) -> Usage:
    """A line's usage at the batch rate, a negative count (no real batch reports one)
    read as 0: summed over a whole batch it would lower the total."""
    counts = {name: max(0, getattr(usage, name)) for name in _SUMMED}
    return replace(usage, service_tier="batch", **counts)


def _add(a: Usage, b: Usage) -> Usage:
    return replace(a, **{name: getattr(a, name) + getattr(b, name) for name in _SUMMED})


# --- the wire formats -------------------------------------------------------------------

register(
    WireFormat(
        "anthropic.complete",
        "anthropic",
        lambda endpoint, request, content_type: CompleteParser(request, content_type),
        error_body,
        parse_json=lambda doc, endpoint: parse_complete_request(doc, endpoint.path_model),
    )
)
# Message Batches results: billed when the batch ran, metered when they are read (a GET).
register(
    WireFormat(
        "anthropic.batch_results",
        "anthropic",
        lambda endpoint, request, content_type: BatchResultsParser(request, content_type),
        error_body,
        bodyless=True,
        methods=frozenset({"GET"}),
    )
)
register_host(
    HOST,
    "anthropic",
    {"/v1/complete": "anthropic.complete"},  # legacy Text Completions
    patterns=(
        (
            r"/v1/messages/batches/[^/]+/results",
            fixed(Endpoint("anthropic", "anthropic.batch_results")),
        ),
    ),
)
