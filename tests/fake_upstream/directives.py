"""What a fake reply should look like: usage numbers, faults, pacing.

A `Directives` value is resolved for every request from four layers, later wins:

1. built-in defaults (`BUILTIN`),
2. the server-wide `server.defaults` dict (settable from Python, or from
   ``POST /_fake/defaults`` when the server runs as a subprocess),
3. the next queued one-shot entry (`server.set_next(...)`), if its path filter matches,
4. request headers ``x-fake-<name>`` (``x-fake-delay-ms: 200`` sets ``delay_ms``).

``usage`` merges key by key across layers; every other key replaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Provider-neutral usage. Each wire format maps it to its own fields (see providers.py):
#: ``input_tokens`` is fresh (uncached) input, ``output_tokens`` includes reasoning.
DEFAULT_USAGE: dict[str, Any] = {
    "input_tokens": 1200,
    "cache_read_tokens": 3000,
    "cache_write_5m_tokens": 300,
    "cache_write_1h_tokens": 200,
    "output_tokens": 345,
    "reasoning_tokens": 120,
    "web_search_requests": 0,
    "cost": 0.0123,  # OpenRouter's usage.cost, in USD
    # Gemini only: results of its built-in tools (search, code execution) fed back to the
    # model, billed as input; Gemini CLI's stats call them `tool`.
    "tool_use_prompt_tokens": 0,
}

_USAGE_ALIASES = {
    "cache_read_input_tokens": "cache_read_tokens",
    "cached_tokens": "cache_read_tokens",
    "cache_creation_input_tokens": "cache_write_5m_tokens",
    "cache_write_tokens": "cache_write_5m_tokens",
    "ephemeral_5m_input_tokens": "cache_write_5m_tokens",
    "ephemeral_1h_input_tokens": "cache_write_1h_tokens",
}

DEFAULT_TEXT = "Hi there! 👋 How can I help you today — café, naïve, 日本語?"

ENCODINGS = ("identity", "gzip", "deflate", "br", "zstd")
CHUNKINGS = ("event", "bytes", "random")
MALFORMED = ("json", "sse")
FINAL_STATUSES = ("completed", "incomplete", "failed")


class DirectiveError(ValueError):
    """A directive the fake upstream does not understand (answered with HTTP 400)."""


@dataclass(frozen=True)
class Directives:
    usage: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_USAGE))
    #: HTTP status; anything but 200 answers with the provider's error body.
    status: int = 200
    #: Seconds to put in a ``retry-after`` header on errors (None: no header).
    retry_after: float | None = None
    #: Milliseconds between SSE events / WebSocket messages (and before a non-streamed body).
    delay_ms: float = 0.0
    #: Close the connection after this many events, halfway through the next one.
    cut_after: int | None = None
    #: Content-Encoding of the response body; SSE is compressed as one stream, flushed per event.
    encoding: str = "identity"
    #: How body bytes are written: one write per event, one per byte, or random-sized pieces.
    chunking: str = "event"
    #: Break the body: ``json`` (invalid JSON) or ``sse`` (broken SSE framing).
    malformed: str | None = None
    #: The assistant's text.
    text: str = DEFAULT_TEXT
    #: Answer with a tool call: ``{"name": "Bash", "input": {"command": "ls"}}``.
    tool_use: dict[str, Any] | None = None
    #: Override the stop / finish reason.
    stop_reason: str | None = None
    #: Override the model in the response (default: echo the request's model).
    model: str | None = None
    #: Accept WebSocket upgrades on GET /v1/responses (False: refuse, clients fall back to POST).
    websocket: bool = True
    #: HTTP status used to refuse a WebSocket upgrade.
    websocket_refuse_status: int = 426
    #: Usage reported for a Responses ``generate: false`` prewarm (missing keys are 0).
    prewarm_usage: dict[str, Any] = field(default_factory=dict)
    #: Responses API: the terminal event, ``completed`` / ``incomplete`` / ``failed``.
    final_status: str = "completed"
    #: Seed for ``chunking: random``.
    seed: int = 0
    #: Extra response headers (on a WebSocket: on its 101 handshake).
    headers: dict[str, str] = field(default_factory=dict)
    #: Responses streams: a Codex rate-limits event sent first, as chatgpt.com does, e.g.
    #: ``{"plan_type": "plus", "rate_limits": {"primary": {"used_percent": 12.5, ...}}}``
    #: (sent as ``{"type": "codex.rate_limits", ...}``).
    rate_limits: dict[str, Any] | None = None


FIELDS = tuple(Directives.__dataclass_fields__)
BUILTIN = Directives()


def normalize_usage(usage: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in usage.items():
        name = _USAGE_ALIASES.get(key, key)
        if name not in DEFAULT_USAGE:
            raise DirectiveError(f"unknown usage key {key!r}; known: {sorted(DEFAULT_USAGE)}")
        if name != "cost" and not isinstance(value, int):
            raise DirectiveError(f"usage {key!r} must be an int, got {value!r}")
        out[name] = value
    return out


def check_layer(layer: dict[str, Any]) -> dict[str, Any]:
    """Validate one layer of directives; returns it with usage normalised."""
    unknown = set(layer) - set(FIELDS)
    if unknown:
        raise DirectiveError(f"unknown directive(s) {sorted(unknown)}; known: {list(FIELDS)}")
    out = dict(layer)
    if "usage" in out:
        if not isinstance(out["usage"], dict):
            raise DirectiveError("usage must be a JSON object")
        out["usage"] = normalize_usage(out["usage"])
    if "prewarm_usage" in out:
        if not isinstance(out["prewarm_usage"], dict):
            raise DirectiveError("prewarm_usage must be a JSON object")
        out["prewarm_usage"] = normalize_usage(out["prewarm_usage"])
    choices = {
        "encoding": ENCODINGS,
        "chunking": CHUNKINGS,
        "final_status": FINAL_STATUSES,
    }
    for key, allowed in choices.items():
        if key in out and out[key] not in allowed:
            raise DirectiveError(f"{key} must be one of {allowed}, got {out[key]!r}")
    if "malformed" in out:
        value = out["malformed"]
        if value in (1, True, "1", "true"):
            out["malformed"] = "json"
        elif value in (0, False, None, "0", "false", ""):
            out["malformed"] = None
        elif value not in MALFORMED:
            raise DirectiveError(f"malformed must be one of {MALFORMED}, got {value!r}")
    if "websocket" in out:
        out["websocket"] = out["websocket"] not in (False, 0, "0", "false", "no", "off")
    for key in ("status", "cut_after", "seed", "websocket_refuse_status"):
        if key in out and out[key] is not None:
            out[key] = int(out[key])
    for key in ("delay_ms", "retry_after"):
        if key in out and out[key] is not None:
            out[key] = float(out[key])
    return out


def from_headers(headers: dict[str, str]) -> dict[str, Any]:
    """``x-fake-delay-ms: 200`` -> ``{"delay_ms": 200}``. Values are JSON when they parse."""
    layer: dict[str, Any] = {}
    for name, raw in headers.items():
        if not name.startswith("x-fake-"):
            continue
        key = name[len("x-fake-") :].replace("-", "_")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if key in ("text", "model", "stop_reason") and not isinstance(value, str):
            value = raw
        layer[key] = value
    return check_layer(layer)


def resolve(*layers: dict[str, Any]) -> Directives:
    merged: dict[str, Any] = {}
    usage = dict(DEFAULT_USAGE)
    for layer in layers:
        layer = check_layer(layer)
        usage.update(layer.get("usage", {}))
        merged.update({k: v for k, v in layer.items() if k != "usage"})
    return Directives(usage=usage, **merged)


class Defaults(dict[str, Any]):
    """``server.defaults``: a dict that refuses unknown directive names early."""

    def __setitem__(self, key: str, value: Any) -> None:
        check_layer({key: value})
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        new = dict(*args, **kwargs)
        check_layer(new)
        super().update(new)
