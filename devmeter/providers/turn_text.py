"""The text of a request's conversation, per wire format, as `Piece`s: its NEW turn
(what the user or agent is about to send) and the whole of it. Each provider module
names its views on its `WireFormat` (`new_turn`, `sent_text`); the secrets inspector asks
the registry for them (`registry.new_turn`, `registry.sent_text`), so that a secret is
reported once: in the turn that first sent it, not again each time the conversation is
re-sent.

Agents re-send the whole conversation every turn; what is new is what follows the
model's last turn: Anthropic's and OpenAI chat's trailing user/tool messages, the
Responses input items after the last assistant/tool-call/reasoning item (Codex's
WebSocket `response.create` frames carry the same shape), Gemini's last content. The
first turn (nothing from the model yet) also carries the system prompt/instructions.
A Realtime socket sends events, never the conversation again: each one is all new.

Each Piece points at the string inside the parsed document, so redaction can replace
it in place and the caller re-serialises the document. Pure: no I/O, nothing above
`providers/` imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from devmeter.providers.lazy_doc import SEQUENCES, items_of

# Keys whose strings are ids, types or binary payloads, never text a person wrote.
_SKIP_KEYS = frozenset(
    {
        "type",
        "id",
        "tool_use_id",
        "call_id",
        "role",
        "signature",
        "encrypted_content",
        "media_type",
        "mime_type",
        "mimeType",
        "cache_control",
        "status",
        "name",
    }
)
_BINARY_KEYS = frozenset({"data", "image_url", "file_data", "audio"})


@dataclass
class Piece:
    where: str  # "message", "tool result", "tool result (.env)", "system prompt"
    container: dict[str, Any] | list[Any]  # holds the string, for redaction in place
    key: str | int
    text: str


def conversation_text(doc: dict[str, Any]) -> Iterator[Piece]:
    """Every string of a body's conversation, under the keys the registered formats keep
    it in: the whole-conversation view of a format that names none of its own."""
    keys = ("system", "messages", "instructions", "input", "contents", "systemInstruction",
            "system_instruction")  # fmt: skip
    for key in keys:
        if key in doc:
            yield from strings(doc[key], "message", doc, key)


def strings(node: Any, where: str, container: Any = None, key: Any = None) -> Iterator[Piece]:
    if isinstance(node, str):
        if container is not None and node:
            yield Piece(where, container, key, node)
    elif isinstance(node, dict):
        for k, v in node.items():
            if k in _SKIP_KEYS or k in _BINARY_KEYS and not isinstance(v, list):
                continue
            yield from strings(v, where, node, k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, where, node, i)


_READERS = frozenset({"cat", "head", "tail", "less", "more", "bat", "nl", "type"})


def file_of(tool_input: Any) -> str | None:
    """The file a tool call read: a Read tool's path, or the file a shell call printed
    (`cat .env`, Codex's `["bash", "-lc", "cat .env"]`)."""
    if not isinstance(tool_input, dict):
        return None
    for key in ("file_path", "path", "filePath", "absolute_path", "filename"):
        if isinstance(tool_input.get(key), str):
            return tool_input[key]
    command = tool_input.get("command") or tool_input.get("cmd")
    if isinstance(command, list) and all(isinstance(word, str) for word in command):
        if len(command) == 3 and command[1] in ("-lc", "-c"):
            command = command[2]
        else:
            command = " ".join(command)
    if isinstance(command, str):
        words = command.split()
        if len(words) >= 2 and words[0].rsplit("/", 1)[-1] in _READERS:
            return words[-1]
    return None


def last_index(items: Sequence[Any], is_model: Callable[[Any], bool]) -> int:
    """The index of the model's last item, -1 if none: searched from the end, as the new
    content is the tail of a conversation that grows every turn."""
    for i in range(len(items) - 1, -1, -1):
        if is_model(items[i]):
            return i
    return -1


def _is_assistant(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "assistant"


def _is_model(content: Any) -> bool:
    return isinstance(content, dict) and content.get("role") == "model"


def tool_result_where(file: str | None) -> str:
    return f"tool result ({file})" if file else "tool result"


def anthropic_new_turn(doc: dict[str, Any]) -> Iterator[Piece]:
    messages = items_of(doc, "messages")
    if not isinstance(messages, SEQUENCES):
        return
    last_model = last_index(messages, _is_assistant)
    if last_model < 0:
        yield from strings(doc.get("system"), "system prompt", doc, "system")
    files: dict[str, str] = {}  # tool_use id -> the file it read, from the model's calls
    if last_model >= 0 and isinstance(messages[last_model].get("content"), list):
        for block in messages[last_model]["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                file = file_of(block.get("input"))
                if file and isinstance(block.get("id"), str):
                    files[block["id"]] = file
    for message in messages[last_model + 1 :]:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield from strings(content, "message", message, "content")
        elif isinstance(content, list):
            for i, block in enumerate(content):
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    yield from strings(
                        block.get("content"),
                        tool_result_where(files.get(str(block.get("tool_use_id")))),
                        block,
                        "content",
                    )
                else:
                    yield from strings(block, "message", content, i)


def openai_chat_new_turn(doc: dict[str, Any]) -> Iterator[Piece]:
    messages = items_of(doc, "messages")
    if not isinstance(messages, SEQUENCES):
        return
    last_model = last_index(messages, _is_assistant)
    files: dict[str, str] = {}
    if last_model >= 0:
        for call in messages[last_model].get("tool_calls") or []:
            try:
                file = file_of(json.loads(call["function"]["arguments"]))
            except (KeyError, TypeError, ValueError):
                file = None
            if file and isinstance(call.get("id"), str):
                files[call["id"]] = file
    for message in messages[last_model + 1 :]:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer") and last_model >= 0:
            continue
        where = (
            tool_result_where(files.get(str(message.get("tool_call_id"))))
            if role in ("tool", "function")
            else ("system prompt" if role in ("system", "developer") else "message")
        )
        yield from strings(message.get("content"), where, message, "content")


_MODEL_ITEMS = frozenset(
    {"function_call", "reasoning", "custom_tool_call", "local_shell_call", "web_search_call"}
)


def openai_responses_new_turn(doc: dict[str, Any]) -> Iterator[Piece]:
    items = items_of(doc, "input")
    if isinstance(items, str):
        yield Piece("message", doc, "input", items)
        return
    if not isinstance(items, SEQUENCES):
        return

    def from_model(item: Any) -> bool:
        return isinstance(item, dict) and (
            item.get("role") == "assistant" or item.get("type") in _MODEL_ITEMS
        )

    last_model = last_index(items, from_model)
    if last_model < 0 and not doc.get("previous_response_id"):
        yield from strings(doc.get("instructions"), "system prompt", doc, "instructions")
    files: dict[str, str] = {}
    # The calls the new outputs answer are in the model's last run of items.
    first_call = last_model
    while first_call > 0 and from_model(items[first_call - 1]):
        first_call -= 1
    for item in items[max(first_call, 0) : last_model + 1]:
        if (
            isinstance(item, dict)
            and item.get("type") == "function_call"
            and isinstance(item.get("call_id"), str)
        ):
            try:
                file = file_of(json.loads(item.get("arguments") or "{}"))
            except (TypeError, ValueError):
                file = None
            if file:
                files[item["call_id"]] = file
    for item in items[last_model + 1 :]:
        if not isinstance(item, dict):
            continue
        if item.get("role") in ("system", "developer"):
            continue  # Codex re-sends its own instructions as developer items each turn
        if str(item.get("type", "")).endswith("_output"):
            yield from strings(
                item.get("output"),
                tool_result_where(files.get(str(item.get("call_id")))),
                item,
                "output",
            )
        else:
            yield from strings(item.get("content"), "message", item, "content")


def gemini_body(doc: dict[str, Any]) -> dict[str, Any]:
    """Gemini's request, unwrapped from Code Assist's `{"request": ...}` envelope."""
    inner = doc.get("request")
    return inner if isinstance(inner, dict) else doc


def gemini_new_turn(doc: dict[str, Any]) -> Iterator[Piece]:
    doc = gemini_body(doc)
    contents = items_of(doc, "contents")
    if not isinstance(contents, SEQUENCES) or not contents:
        return
    last_model = last_index(contents, _is_model)
    if last_model < 0:
        yield from strings(
            doc.get("systemInstruction") or doc.get("system_instruction"),
            "system prompt",
            doc,
            "systemInstruction" if "systemInstruction" in doc else "system_instruction",
        )
    for content in contents[last_model + 1 :]:
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            continue
        for i, part in enumerate(content["parts"]):
            if not isinstance(part, dict):
                continue
            response = part.get("functionResponse") or part.get("function_response")
            if isinstance(response, dict):
                yield from strings(response.get("response"), "tool result", response, "response")
            elif isinstance(part.get("text"), str):
                yield Piece("message", part, "text", part["text"])
            else:
                yield from strings(part, "message", content["parts"], i)


def realtime_event_text(event: dict[str, Any]) -> Iterator[Piece]:
    """A Realtime client event (one WebSocket frame): what the user adds to the session.

    `conversation.item.create` (a message's input_text, an audio part's transcript, a
    function_call_output), `response.create` (its instructions and inline input items)
    and `session.update` (instructions). Audio buffers and control events hold no text.
    """
    kind = event.get("type")
    if kind == "conversation.item.create" and isinstance(event.get("item"), dict):
        yield from _realtime_item(event["item"])
    elif kind == "response.create" and isinstance(event.get("response"), dict):
        response = event["response"]
        yield from strings(response.get("instructions"), "system prompt", response, "instructions")
        for item in response.get("input") or []:
            if isinstance(item, dict):
                yield from _realtime_item(item)
    elif kind == "session.update" and isinstance(event.get("session"), dict):
        session = event["session"]
        yield from strings(session.get("instructions"), "system prompt", session, "instructions")


def _realtime_item(item: dict[str, Any]) -> Iterator[Piece]:
    if item.get("type") == "function_call_output":
        yield from strings(item.get("output"), "tool result", item, "output")
    elif item.get("type", "message") == "message":
        where = "system prompt" if item.get("role") == "system" else "message"
        yield from strings(item.get("content"), where, item, "content")


def embeddings_input(doc: dict[str, Any]) -> Iterator[Piece]:
    """Every input is new: an embeddings request re-sends nothing."""
    return strings(doc.get("input"), "embedding input", doc, "input")


def gemini_conversation_text(doc: dict[str, Any]) -> Iterator[Piece]:
    return conversation_text(gemini_body(doc))


def cursor_doc(texts: list[str]) -> dict[str, Any]:
    """The texts of a Cursor request or stream frame (`providers.cursor.request_texts`),
    as the document `new_pieces` reads: redaction replaces them in the list."""
    return {"texts": texts}


def cursor_texts(doc: dict[str, Any]) -> list[Piece]:
    """Cursor's protobuf has no public schema: which text is a tool result, or new this
    turn, cannot be told, so every text is offered (a secret is still reported once, by
    its fingerprint; texts already scanned are looked up by digest)."""
    texts = doc.get("texts")
    if not isinstance(texts, list):
        return []
    return [Piece("message", texts, i, t) for i, t in enumerate(texts) if isinstance(t, str) and t]
