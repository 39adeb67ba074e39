"""Gemini generateContent / streamGenerateContent, direct or through Gemini CLI's
Code Assist endpoint (cloudcode-pa), which wraps the request as
`{"model", "project", "request": {...}}` and each response chunk as `{"response": {...}}`.

Streams are SSE with `?alt=sse`, otherwise a JSON array sent element by element.
Every chunk may carry `usageMetadata`; the last one is the total.
`promptTokenCount` includes `cachedContentTokenCount`: subtract. Output is
`candidatesTokenCount` + `thoughtsTokenCount`, thoughts being reasoning.
There is no end-of-stream event: a stream is complete when it ended cleanly after
a candidate's `finishReason`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from devmeter.providers.base import BaseParser, as_dict, as_int, as_str
from devmeter.providers.lazy_doc import SEQUENCES, items_of
from devmeter.providers.paths import READ, free_rules
from devmeter.providers.registry import Endpoint, WireFormat, register, register_host
from devmeter.providers.request import flag, set_int
from devmeter.providers.turn_text import gemini_conversation_text, gemini_new_turn
from devmeter.tokens import estimate_tokens
from devmeter.usage import RequestInfo, ResponseResult, Usage

# --- requests -------------------------------------------------------------------------


def parse_request(
    body: dict[str, Any], path_model: str | None = None, stream: bool = False
) -> RequestInfo:
    envelope = isinstance(body.get("request"), dict)  # Gemini CLI's cloudcode-pa
    inner: dict[str, Any] = body["request"] if envelope else body
    facts: dict[str, str] = {}
    flag(facts, "uses_tools", inner.get("tools"))
    config = as_dict(inner.get("generationConfig") or inner.get("generation_config"))
    thinking = as_dict(config.get("thinkingConfig") or config.get("thinking_config"))
    budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
    flag(facts, "uses_thinking", thinking and budget != 0)
    set_int(facts, "max_tokens", config.get("maxOutputTokens", config.get("max_output_tokens")))
    if envelope:
        project = as_str(body.get("project"))
        if project:
            facts["project"] = project
        session = as_str(inner.get("session_id"))
        if session:
            facts["session_id"] = session
    model = path_model or as_str(body.get("model"))
    if model and model.startswith("models/"):
        model = model[len("models/") :]
    return RequestInfo(model=model, stream=stream, facts=facts)


# --- responses ------------------------------------------------------------------------


class GenerateParser(BaseParser):
    """Usage from a Gemini response: one JSON document, a JSON array, or SSE."""

    TAIL_KEYS = ("usageMetadata", "modelVersion")

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] | None = None
        self._searches: set[str] = set()
        self._finished = False

    def on_event(self, name: str | None, obj: Any) -> None:
        if isinstance(obj, list):  # a whole streamed array sent as one JSON body
            for element in obj:
                self.on_event(name, element)
            return
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("response"), dict):  # cloudcode-pa envelope
            obj = obj["response"]
        if "error" in obj:
            self.set_error(obj["error"])
            return
        self.model = as_str(obj.get("modelVersion")) or self.model
        usage = obj.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage  # cumulative: the last report is the total
        for candidate in obj.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            for part in as_dict(candidate.get("content")).get("parts") or ():
                if isinstance(part, dict):
                    self.text.add(part.get("text"))
                    call = part.get("functionCall")
                    if isinstance(call, dict):
                        self.text.add(str(call.get("args", "")))
            queries = as_dict(candidate.get("groundingMetadata")).get("webSearchQueries")
            for query in queries or ():
                if isinstance(query, str):
                    self._searches.add(query)
            if candidate.get("finishReason"):
                self._finished = True

    def on_document(self, obj: Any) -> None:
        self.on_event(None, obj)
        # A whole JSON body is complete by itself (also for error bodies).
        self.terminal = True

    def build(self, framing_ok: bool, body_error: str | None) -> ResponseResult:
        if self._finished:
            self.terminal = True
        return super().build(framing_ok, body_error)

    def usage(self) -> Usage | None:
        u = self._usage
        if u is None:
            return None
        cached = as_int(u.get("cachedContentTokenCount"))
        thoughts = as_int(u.get("thoughtsTokenCount"))
        # Tokens of tool results Gemini fed itself (e.g. search grounding) bill as input.
        prompt = as_int(u.get("promptTokenCount")) + as_int(u.get("toolUsePromptTokenCount"))
        return Usage(
            input_tokens=max(0, prompt - cached),
            cache_read_tokens=cached,
            output_tokens=as_int(u.get("candidatesTokenCount")) + thoughts,
            reasoning_tokens=thoughts,
            web_search_requests=len(self._searches),
        )


# --- embeddings -----------------------------------------------------------------------


def parse_embed_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    """embedContent `{content: {parts}}` or batchEmbedContents `{requests: [{content}]}`.

    The response reports no tokens, so the estimate of the texts here is what is billed.
    """
    requests = body.get("requests")
    contents = (
        [as_dict(r).get("content") for r in requests]
        if isinstance(requests, list)
        else [body.get("content")]
    )
    texts = [
        part["text"]
        for content in contents
        for part in as_dict(content).get("parts") or ()
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    model = path_model or as_str(body.get("model"))
    if model and model.startswith("models/"):
        model = model[len("models/") :]

    def estimate() -> int | None:
        return sum(estimate_tokens(text, model) for text in texts)

    return RequestInfo(model=model, prompt_estimator=estimate)


class EmbedParser(BaseParser):
    """Gemini embeddings: `usageMetadata` when the API sends it, else the request's
    estimate (the API reports no usage for most embedding models)."""

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if "error" in obj:
            self.set_error(obj["error"])
            return
        if isinstance(obj.get("usageMetadata"), dict):
            self._usage = obj["usageMetadata"]

    def usage(self) -> Usage | None:
        if self.error is not None or not self.terminal:
            return None
        if self._usage is not None:
            return Usage(input_tokens=max(0, as_int(self._usage.get("promptTokenCount"))))
        return Usage(input_tokens=self.request.prompt_tokens() or 0, estimated=True)


# --- the wire formats -------------------------------------------------------------------

HOST = "generativelanguage.googleapis.com"
CLOUDCODE_HOST = "cloudcode-pa.googleapis.com"  # Gemini CLI signed in with Google


def error_body(status: int, message: str) -> dict[str, Any]:
    """Google's error shape: 403 PERMISSION_DENIED when devmeter refused the call (the
    Gemini CLI shows it and does not retry), else UNAVAILABLE."""
    reason = "PERMISSION_DENIED" if status == 403 else "UNAVAILABLE"
    return {"error": {"code": status, "message": message, "status": reason}}


def conversation(doc: dict[str, Any]) -> Sequence[Any] | None:
    """The contents, in a Gemini CLI Code Assist envelope (`request`) or not."""
    contents = items_of(doc, "contents")
    if isinstance(contents, SEQUENCES):
        return contents
    inner = doc.get("request")
    if isinstance(inner, dict) and isinstance(inner.get("contents"), list):
        return inner["contents"]  # type: ignore[no-any-return]
    return None


def _endpoint(method_name: str, model: str | None) -> Endpoint:
    if method_name in ("embedcontent", "batchembedcontents"):
        return Endpoint("google", "gemini.embed", path_model=model)
    stream = method_name == "streamgeneratecontent"
    return Endpoint("google", "gemini.generate", path_model=model, stream=stream)


def _api_path(m: re.Match[str]) -> Endpoint:
    return _endpoint(m.group(2), m.group(1))


def _cloudcode_path(m: re.Match[str]) -> Endpoint:
    return _endpoint(m.group(1), None)  # the model is named in the body


register(
    WireFormat(
        "gemini.generate",
        "gemini",
        lambda endpoint, request, content_type: GenerateParser(request, content_type),
        error_body,
        parse_json=lambda doc, endpoint: parse_request(doc, endpoint.path_model, endpoint.stream),
        conversation=conversation,
        new_turn=gemini_new_turn,
        sent_text=gemini_conversation_text,
    )
)
register(
    WireFormat(
        "gemini.embed",
        "gemini",
        lambda endpoint, request, content_type: EmbedParser(request, content_type),
        error_body,
        parse_json=lambda doc, endpoint: parse_embed_request(doc, endpoint.path_model),
        new_turn=gemini_new_turn,
        sent_text=gemini_conversation_text,
    )
)
register_host(
    HOST,
    "google",
    patterns=(
        (
            r"/(?:v1|v1beta|v1alpha)/models/([^/:]+)"
            r":(generatecontent|streamgeneratecontent|embedcontent|batchembedcontents)",
            _api_path,
        ),
    ),
    family="gemini",
    free_paths=free_rules(
        (READ, r"/v1\w*/models(/[^/:]+)?"),
        (READ + " DELETE", r"/v1\w*/(files|cachedcontents|operations|batches|tunedmodels)(/.*)?"),
        ("POST", r"/(upload/)?v1\w*/files(:register)?"),
        ("POST", r"/v1\w*/models/[^/:]+:counttokens"),
        ("POST", r"/v1\w*/batches/[^/:]+:cancel"),
        (READ, r"/download/.*"),
    ),
)
# Gemini CLI's Code Assist: its setup, quota and settings calls are free; generation is paid.
register_host(
    CLOUDCODE_HOST,
    "google",
    patterns=((r"/v1internal:(generatecontent|streamgeneratecontent)", _cloudcode_path),),
    family="gemini",
    free_paths=free_rules(
        (READ, r"/v1internal(/.*)?"),  # long-running operation polls
        (
            "POST",
            r"/v1internal:(loadcodeassist|onboarduser|counttokens|listexperiments"
            r"|retrieveuserquota|recordcodeassistmetrics|fetchadmincontrols"
            r"|getcodeassistglobalusersetting|setcodeassistglobalusersetting|listmodels)",
        ),
    ),
)
