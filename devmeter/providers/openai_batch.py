"""OpenAI's Batch API: what a finished batch used, read from its status.

A batch is billed as it runs, at the batch rate, and its results are a plain file
download. Its status (`GET /v1/batches/{id}`, the read every client polls) names the
`model` and, once the batch has ended (`completed`, `expired`, `cancelled`, `failed`),
the `usage` of every request it ran: {input_tokens, input_tokens_details {cached_tokens},
output_tokens, output_tokens_details {reasoning_tokens}}. OpenAI fills it in for batches
created after 2025-09-07. A status read without it is no call to record.
"""

from __future__ import annotations

from typing import Any

from devmeter.providers.base import BaseParser, as_dict, as_int, as_str
from devmeter.providers.openai_chat import error_body
from devmeter.providers.registry import WireFormat, register
from devmeter.usage import Usage

ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


class BatchStatusParser(BaseParser):
    def __init__(self, request: Any, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error") and obj.get("object") != "batch":
            self.set_error(obj["error"])
            return
        self.model = as_str(obj.get("model")) or self.model
        if obj.get("status") in ENDED and isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]

    def usage(self) -> Usage | None:
        u = self._usage
        if u is None:
            return None
        total_input = max(0, as_int(u.get("input_tokens")))
        cached = min(
            total_input, max(0, as_int(as_dict(u.get("input_tokens_details")).get("cached_tokens")))
        )
        reasoning = max(0, as_int(as_dict(u.get("output_tokens_details")).get("reasoning_tokens")))
        return Usage(
            input_tokens=total_input - cached,
            cache_read_tokens=cached,
            output_tokens=max(0, as_int(u.get("output_tokens"))),
            reasoning_tokens=reasoning,
            service_tier="batch",
        )


# A Batch's status (a GET): it carries the usage once the batch has ended.
register(
    WireFormat(
        "openai.batch",
        "openai",
        lambda endpoint, request, content_type: BatchStatusParser(request, content_type),
        error_body,
        bodyless=True,
        methods=frozenset({"GET"}),
    )
)
