"""Wire formats of the LLM APIs devmeter meters: which requests are calls, and what
they used. Pure functions of bytes: no mitmproxy here, so every format is tested
with plain fixtures.

    endpoint = match_endpoint(host, method, path)          # None: not a metered call
    request = parse_request(endpoint, body)                # never raises
    parser = new_response_parser(endpoint, request, content_type)
    parser.feed(chunk) ...                                 # never raises
    result = parser.result()                               # usage, model, complete, error
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from devmeter import fastjson
from devmeter.providers import anthropic, cursor, gemini, openai_chat, openai_responses
from devmeter.providers.base import ResponseParser
from devmeter.providers.request import uses_images
from devmeter.tokens import estimate_request_tokens
from devmeter.usage import RequestInfo

__all__ = [
    "INTERCEPT_HOSTS",
    "Endpoint",
    "ResponseParser",
    "effective_endpoint",
    "match_endpoint",
    "new_response_parser",
    "parse_request",
    "request_uses_images",
]


@dataclass(frozen=True)
class Endpoint:
    """A metered API endpoint: who bills it, and which wire format it speaks."""

    provider: str  # genai-prices provider id
    api: str  # wire format: anthropic.messages, openai.chat, openai.responses, ...
    path_model: str | None = None  # the model named in the URL (Gemini)
    free: bool = False  # count_tokens: recorded at $0
    stream: bool = False  # the URL itself asks for a stream (Gemini)


# host -> {path: (provider, api, free)}. Paths are matched exactly, without the query.
_ROUTES: dict[str, dict[str, tuple[str, str, bool]]] = {
    "api.anthropic.com": {
        "/v1/messages": ("anthropic", "anthropic.messages", False),
        "/v1/messages/count_tokens": ("anthropic", "anthropic.count_tokens", True),
    },
    "api.openai.com": {
        "/v1/chat/completions": ("openai", "openai.chat", False),
        "/v1/responses": ("openai", "openai.responses", False),
        "/v1/embeddings": ("openai", "openai.embeddings", False),
    },
    # Codex CLI signed in with a ChatGPT account.
    "chatgpt.com": {
        "/backend-api/codex/responses": ("openai", "openai.responses", False),
    },
    "openrouter.ai": {
        "/api/v1/chat/completions": ("openrouter", "openai.chat", False),
    },
    "api.deepseek.com": {
        "/chat/completions": ("deepseek", "openai.chat", False),
        "/v1/chat/completions": ("deepseek", "openai.chat", False),
    },
    "api.groq.com": {
        "/openai/v1/chat/completions": ("groq", "openai.chat", False),
    },
    "api.mistral.ai": {
        "/v1/chat/completions": ("mistral", "openai.chat", False),
    },
    "api.x.ai": {
        "/v1/chat/completions": ("x-ai", "openai.chat", False),
        "/v1/responses": ("x-ai", "openai.responses", False),
    },
}

_GEMINI_HOST = "generativelanguage.googleapis.com"
_CLOUDCODE_HOST = "cloudcode-pa.googleapis.com"  # Gemini CLI signed in with Google
_GEMINI_PATH = re.compile(
    r"/(?:v1|v1beta|v1alpha)/models/([^/:]+):(generateContent|streamGenerateContent)"
)
_CLOUDCODE_PATH = re.compile(r"/v1internal:(generateContent|streamGenerateContent)")
# Cursor's editor: Connect-RPC chat streams (protobuf; metered as estimates). Not metered:
# Cursor Tab (StreamCpp), BidiAppend (the client half of an HTTP/1.1 bidi emulation),
# and the rest of its API (settings, indexing, telemetry), which passes through untouched.
_CURSOR_HOST = cursor.HOST
_CURSOR_PATH = re.compile(
    r"/aiserver\.v1\.ChatService/StreamUnifiedChat\w*"
    r"|/aiserver\.v1\.AiService/Stream(?:Chat|Composer|Edit)\w*"
    r"|/agent\.v1\.AgentService/Run(?:SSE)?"
)

INTERCEPT_HOSTS: tuple[str, ...] = (*_ROUTES, _GEMINI_HOST, _CLOUDCODE_HOST, _CURSOR_HOST)

# The Endpoint of each fixed route, built once: Endpoint is frozen, so every request to
# a route can share one instead of constructing its own.
_ROUTE_ENDPOINTS: dict[str, dict[str, Endpoint]] = {
    host: {
        path: Endpoint(provider, api, free=free) for path, (provider, api, free) in paths.items()
    }
    for host, paths in _ROUTES.items()
}
_CURSOR_ENDPOINT = Endpoint("cursor", "cursor.chat", stream=True)


def match_endpoint(host: str, method: str, path: str) -> Endpoint | None:
    """The metered endpoint a request goes to, or None for everything else.

    Calls are POSTs. A GET to a Responses path is also matched: it is the
    WebSocket upgrade Codex CLI opens before falling back to POST.
    """
    host = host.lower().rstrip(".")
    if host.rsplit(":", 1)[-1].isdigit():  # "api.openai.com:443"
        host = host.rsplit(":", 1)[0]
    path = path.split("?", 1)[0].split("#", 1)[0]
    if len(path) > 1:
        path = path.rstrip("/")
    method = method.upper()
    if host == _CURSOR_HOST:
        if method == "POST" and _CURSOR_PATH.fullmatch(path):
            return _CURSOR_ENDPOINT
        return None
    if host in (_GEMINI_HOST, _CLOUDCODE_HOST):
        if method != "POST":
            return None
        if host == _GEMINI_HOST:
            m = _GEMINI_PATH.fullmatch(path)
            model = unquote(m.group(1)) if m else None
        else:
            m = _CLOUDCODE_PATH.fullmatch(path)
            model = None  # named in the body
        if m is None:
            return None
        stream = m.group(m.lastindex or 0) == "streamGenerateContent"
        return Endpoint("google", "gemini.generate", path_model=model, stream=stream)
    endpoint = _ROUTE_ENDPOINTS.get(host, {}).get(path)
    if endpoint is None:
        return None
    if method == "POST" or (method == "GET" and endpoint.api == "openai.responses"):
        return endpoint
    return None


_REQUEST_PARSERS = {
    "anthropic.messages": anthropic.parse_request,
    "anthropic.count_tokens": anthropic.parse_request,
    "openai.chat": openai_chat.parse_request,
    "openai.embeddings": openai_chat.parse_embeddings_request,
    "openai.responses": openai_responses.parse_request,
}


def parse_request(endpoint: Endpoint, body: bytes) -> RequestInfo:
    """What the request asked for. Never raises: a bad body gives facts["request_error"]."""
    return parse_request_doc(endpoint, body)[0]


def parse_request_doc(endpoint: Endpoint, body: bytes) -> tuple[RequestInfo, dict[str, Any] | None]:
    """`parse_request`, and the parsed JSON body for callers that read more of it (the
    guard's loop fingerprint), so a large body is parsed once per call, not once per reader."""
    fallback_model = endpoint.path_model

    def failed(reason: str) -> tuple[RequestInfo, None]:
        info = RequestInfo(
            model=fallback_model, stream=endpoint.stream, facts={"request_error": reason}
        )
        return info, None

    if endpoint.api == "cursor.chat":
        return cursor.parse_request(body), None  # protobuf, never raises
    if not body:
        return failed("empty request body")
    try:
        doc = fastjson.loads(body)  # one pass over the body; bytes are decoded as UTF-8
    except (ValueError, UnicodeDecodeError) as exc:
        return failed(f"request body is not JSON: {exc}"[:200])
    if not isinstance(doc, dict):
        return failed(f"request body is a JSON {type(doc).__name__}, not an object")
    try:
        if endpoint.api == "gemini.generate":
            info = gemini.parse_request(doc, endpoint.path_model, endpoint.stream)
        else:
            info = _REQUEST_PARSERS[endpoint.api](doc, endpoint.path_model)
    except Exception as exc:  # a body shaped like nothing we know still gets metered
        model = doc.get("model")
        fallback_model = model if isinstance(model, str) else fallback_model
        return failed(f"unreadable request: {type(exc).__name__}: {exc}"[:200])
    # Built field by field: dataclasses.replace costs several times more, on every call.
    with_estimate = RequestInfo(
        model=info.model,
        stream=info.stream,
        prompt_tokens_estimate=info.prompt_tokens_estimate,
        facts=info.facts,
        prompt_estimator=_prompt_estimator(body),
    )
    return with_estimate, doc


# Where each API puts the conversation, whose blocks may be images.
_CONVERSATION_KEYS = {
    "anthropic.messages": "messages",
    "anthropic.count_tokens": "messages",
    "openai.chat": "messages",
    "openai.responses": "input",
    "gemini.generate": "contents",
}


def request_uses_images(endpoint: Endpoint, request: RequestInfo, doc: Any) -> bool:
    """Whether the request sends an image. Asked only by routing rules: the walk over
    every block of a long conversation costs more than parsing the request's facts."""
    if request.facts.get("uses_images") == "1":  # Cursor's parser knows it already
        return True
    key = _CONVERSATION_KEYS.get(endpoint.api)
    if key is None or not isinstance(doc, dict):
        return False
    if isinstance(doc.get("request"), dict):  # Gemini CLI's cloudcode-pa envelope
        doc = doc["request"]
    return uses_images(doc.get(key))


def _prompt_estimator(body: bytes) -> Callable[[], int | None]:
    """The prompt estimate of a JSON body, worked out when asked for. It keeps the bytes
    (which the flow holds anyway), not the parsed body, which is several times larger."""

    def estimate() -> int | None:
        try:
            return estimate_request_tokens(json.loads(body))
        except Exception:  # the body parsed once already; never fail a call over this
            return None

    return estimate


def new_response_parser(
    endpoint: Endpoint, request: RequestInfo, content_type: str = ""
) -> ResponseParser:
    """A parser for this endpoint's response; the body framing is picked from its bytes."""
    api = endpoint.api
    if api == "anthropic.messages":
        return anthropic.MessagesParser(request, content_type)
    if api == "anthropic.count_tokens":
        return anthropic.CountTokensParser(request, content_type)
    if api == "openai.chat":
        return openai_chat.ChatParser(request, content_type, provider=endpoint.provider)
    if api == "openai.responses":
        return openai_responses.ResponsesParser(request, content_type)
    if api == "openai.embeddings":
        return openai_chat.EmbeddingsParser(request, content_type)
    if api == "gemini.generate":
        return gemini.GenerateParser(request, content_type)
    if api == "cursor.chat":
        return cursor.ChatParser(request, content_type)
    raise ValueError(f"no response parser for {api!r}")


def effective_endpoint(endpoint: Endpoint, request: RequestInfo) -> Endpoint:
    """The endpoint with the provider the request body revealed.

    Cursor's one host serves every maker's models: its request names the model, and
    the parser sets `facts["provider"]` to the maker (or "cursor"), which bills it.
    """
    provider = request.facts.get(cursor.FACT_PROVIDER)
    if endpoint.api == "cursor.chat" and provider and provider != endpoint.provider:
        return replace(endpoint, provider=provider)
    return endpoint
