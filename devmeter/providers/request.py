"""Facts every request parser reads the same way, whatever the API."""

from __future__ import annotations

from typing import Any

_IMAGE_BLOCKS = frozenset({"image", "image_url", "input_image"})
_INLINE_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


def uses_images(node: Any) -> bool:
    """Whether any content block under `node` is an image (stops at the first one).

    Walks containers only, never scans strings, so a body of base64 stays cheap.
    """
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") in _IMAGE_BLOCKS:
                return True
            for key in _INLINE_KEYS:
                inline = item.get(key)
                if isinstance(inline, dict):
                    mime = inline.get("mimeType") or inline.get("mime_type") or ""
                    if isinstance(mime, str) and mime.startswith("image/"):
                        return True
            # Plain loops, not generators: routing walks every block of a conversation.
            for v in item.values():
                if isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(item, list):
            for v in item:
                if isinstance(v, (dict, list)):
                    stack.append(v)
    return False


def flag(facts: dict[str, str], name: str, condition: Any) -> None:
    if condition:
        facts[name] = "1"


def set_int(facts: dict[str, str], name: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        facts[name] = str(value)


def stream_facts(body: dict[str, Any], facts: dict[str, str]) -> bool:
    """`stream` and `stream_options.include_usage` (OpenAI-style APIs)."""
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if isinstance(options, dict) and "include_usage" in options:
        facts["include_usage"] = "1" if options.get("include_usage") is True else "0"
    return stream
