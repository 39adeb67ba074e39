"""OpenAI's image, audio and Realtime APIs: what each reports on the wire.

- Images (`/v1/images/generations|edits|variations`): gpt-image models answer with
  `usage` {input_tokens, output_tokens, input_tokens_details {text_tokens, image_tokens}}
  (streamed: in the `*.completed` event); DALL-E answers with none, and is unpriced.
- Transcriptions and translations: `usage` in tokens (gpt-4o-transcribe: audio input
  tokens) or `{type: "duration", seconds}` (whisper-1); text formats report nothing.
- Speech: the body is audio, with no usage: unpriced.
- Realtime (a WebSocket): every `response.done` event carries that response's usage,
  with text, audio and image token splits; each one is a row.

Edits, variations and transcriptions are multipart/form-data requests: the model is
read from the form's `model` field.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from devmeter.providers.base import BaseParser, as_dict, as_int, as_str, error_text
from devmeter.providers.openai_chat import error_body
from devmeter.providers.registry import Endpoint, WireFormat, register
from devmeter.providers.turn_text import realtime_event_text
from devmeter.usage import RequestInfo, ResponseResult, Usage

# What OpenAI uses when a request names no model.
DEFAULT_MODELS = {"openai.images": "dall-e-2"}


def is_multipart(body: bytes) -> bool:
    return body[:2] == b"--"


def form_field(body: bytes, name: str, limit: int = 200) -> str | None:
    """A short text field of a multipart/form-data body, found with `bytes.find` (a
    file part can be tens of megabytes: no regex over it, no copy of it)."""
    marker = b'name="' + name.encode() + b'"'
    at = body.find(marker)
    while at != -1:
        headers_end = body.find(b"\r\n\r\n", at, at + 1024)
        if headers_end != -1:
            start = headers_end + 4
            end = body.find(b"\r\n", start, start + limit + 2)
            if end != -1:
                return body[start:end].decode("utf-8", "replace").strip()
        at = body.find(marker, at + len(marker))
    return None


def parse_form_request(api: str, body: bytes) -> RequestInfo:
    """The model (and stream flag) of a multipart/form-data request; keeps no file bytes."""
    return RequestInfo(
        model=form_field(body, "model") or DEFAULT_MODELS.get(api),
        stream=form_field(body, "stream") == "true",
        prompt_tokens_estimate=0,  # audio or images, not text: nothing to estimate from
    )


def parse_json_request(body: dict[str, Any], path_model: str | None = None) -> RequestInfo:
    model = as_str(body.get("model")) or path_model
    return RequestInfo(model=model, stream=body.get("stream") is True)


def _image_usage(u: dict[str, Any]) -> Usage:
    details = as_dict(u.get("input_tokens_details"))
    modalities = []
    if as_int(details.get("image_tokens")) > 0:
        modalities.append(("input_image_tokens", as_int(details.get("image_tokens"))))
    return Usage(
        input_tokens=max(0, as_int(u.get("input_tokens"))),
        output_tokens=max(0, as_int(u.get("output_tokens"))),
        modality_tokens=tuple(modalities),
    )


class ImagesParser(BaseParser):
    TAIL_KEYS = ("usage",)  # after megabytes of base64

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self.set_error(obj["error"])
            return
        kind = obj.get("type") or name or ""
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        if isinstance(kind, str) and kind.endswith(".completed"):
            self.terminal = True

    def usage(self) -> Usage | None:
        return _image_usage(self._usage) if self._usage is not None else None


def _transcription_usage(u: dict[str, Any]) -> Usage | None:
    if u.get("type") == "duration" or ("seconds" in u and "input_tokens" not in u):
        seconds = max(0, as_int(u.get("seconds")))
        return Usage(modality_tokens=(("audio_seconds", seconds), ("input_audio_seconds", seconds)))
    details = as_dict(u.get("input_token_details"))
    audio = max(0, as_int(details.get("audio_tokens")))
    return Usage(
        input_tokens=max(0, as_int(u.get("input_tokens"))),
        output_tokens=max(0, as_int(u.get("output_tokens"))),
        modality_tokens=(("input_audio_tokens", audio),) if audio else (),
    )


class TranscriptionParser(BaseParser):
    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._usage: dict[str, Any] | None = None

    def on_event(self, name: str | None, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self.set_error(obj["error"])
            return
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        kind = obj.get("type") or name or ""
        if name is None or kind == "transcript.text.done":
            self.terminal = True

    def usage(self) -> Usage | None:
        return _transcription_usage(self._usage) if self._usage is not None else None


class SpeechParser(BaseParser):
    """Audio bytes back, no usage: the row is unpriced (its WireFormat is not estimable)."""

    def on_event(self, name: str | None, obj: Any) -> None:
        if isinstance(obj, dict) and obj.get("error"):
            self.set_error(obj["error"])
        elif isinstance(obj, dict) and (obj.get("type") or name) == "speech.audio.done":
            self.terminal = True  # the streamed form (stream_format: "sse")

    def usage(self) -> Usage | None:
        return None


def realtime_usage(u: dict[str, Any]) -> Usage:
    """A Realtime `response.usage` in the ledger's meaning, with modality splits."""
    inputs = as_dict(u.get("input_token_details"))
    cached = max(0, as_int(inputs.get("cached_tokens")))
    cached_split = as_dict(inputs.get("cached_tokens_details"))
    outputs = as_dict(u.get("output_token_details"))
    total_input = max(0, as_int(u.get("input_tokens")))
    modalities = {
        "input_audio_tokens": as_int(inputs.get("audio_tokens")),
        "input_image_tokens": as_int(inputs.get("image_tokens")),
        "cache_audio_read_tokens": as_int(cached_split.get("audio_tokens")),
        "output_audio_tokens": as_int(outputs.get("audio_tokens")),
    }
    return Usage(
        input_tokens=max(0, total_input - cached),
        cache_read_tokens=min(cached, total_input),
        output_tokens=max(0, as_int(u.get("output_tokens"))),
        modality_tokens=tuple((k, v) for k, v in modalities.items() if v > 0),
    )


class RealtimeParser(BaseParser):
    """One row per `response.done` on a Realtime WebSocket."""

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        super().__init__(request, content_type)
        self._completed: list[ResponseResult] = []

    def on_message(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind in ("session.created", "session.updated"):
            self.model = as_str(as_dict(obj.get("session")).get("model")) or self.model
        elif kind == "response.done":
            response = as_dict(obj.get("response"))
            usage = response.get("usage")
            status = response.get("status")
            error = None
            if status == "failed":
                error = error_text(as_dict(response.get("status_details")).get("error") or "failed")
            self._completed.append(
                ResponseResult(
                    usage=realtime_usage(usage) if isinstance(usage, dict) else None,
                    model=self.model or self.request.model,
                    complete=status in ("completed", "cancelled", "incomplete", "failed"),
                    error=error,
                )
            )
        elif kind == "error":
            self.set_error(obj.get("error", obj))

    def on_event(self, name: str | None, obj: Any) -> None:
        self.on_message(obj)

    def take_completed(self) -> list[ResponseResult]:
        done, self._completed = self._completed, []
        return done

    def take_unfinished(self) -> list[ResponseResult]:
        # A response cut by the socket closing reported no usage: nothing to bill from.
        return []

    def usage(self) -> Usage | None:
        return None


# --- the wire formats -------------------------------------------------------------------


def _form(endpoint: Endpoint, body: bytes) -> RequestInfo | None:
    """A multipart/form-data request's facts; None for a JSON one."""
    return parse_form_request(endpoint.api, body) if is_multipart(body) else None


def _json(doc: dict[str, Any], endpoint: Endpoint) -> RequestInfo:
    return parse_json_request(doc, endpoint.path_model)


def _images_json(doc: dict[str, Any], endpoint: Endpoint) -> RequestInfo:
    info = parse_json_request(doc, endpoint.path_model)
    return replace(info, model=info.model or DEFAULT_MODELS["openai.images"])


register(
    WireFormat(
        "openai.images",
        "openai",
        lambda endpoint, request, content_type: ImagesParser(request, content_type),
        error_body,
        parse_json=_images_json,
        parse_bytes=lambda body, endpoint: _form(endpoint, body),
        estimable=False,
    )
)
register(
    WireFormat(
        "openai.transcription",
        "openai",
        lambda endpoint, request, content_type: TranscriptionParser(request, content_type),
        error_body,
        parse_json=_json,
        parse_bytes=lambda body, endpoint: _form(endpoint, body),
        estimable=False,
    )
)
register(
    WireFormat(
        "openai.speech",
        "openai",
        lambda endpoint, request, content_type: SpeechParser(request, content_type),
        error_body,
        parse_json=_json,
        estimable=False,
    )
)
# A WebSocket: wss://api.openai.com/v1/realtime?model=gpt-realtime, whatever the method.
register(
    WireFormat(
        "openai.realtime",
        "openai",
        lambda endpoint, request, content_type: RealtimeParser(request, content_type),
        error_body,
        parse_json=_json,
        bodyless=True,
        methods=None,
        query_model=True,
        # A Realtime socket sends events, never the conversation again: each is all new.
        new_turn=realtime_event_text,
        sent_text=realtime_event_text,
    )
)
