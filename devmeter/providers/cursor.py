"""Cursor's chat: Connect-RPC with protobuf messages to api2.cursor.sh, metered as estimates.

Cursor's editor speaks Connect-RPC (HTTP/1.1 or HTTP/2 POSTs to paths like
`/aiserver.v1.ChatService/StreamUnifiedChatWithTools`). A streaming body
(`application/connect+proto`) is a run of frames: one flags byte, a 4-byte big-endian
length, then the message. Flag 0x01: the message is compressed (`connect-content-encoding`,
gzip in practice; zstd and brotli are read too, by their magic bytes). Flag 0x02: the
end-stream frame, a JSON trailer carrying the error if the call failed. A unary body
(`application/proto`) is one bare message.

The messages are protobuf without a public schema, so nothing here relies on one. A
schema-less walk decodes fields recursively and sorts each length-delimited value into
a nested message, text, an image, or opaque bytes. From that:

- the model: a short string shaped like a model id (`claude-4.5-sonnet`, `gpt-5`, `o3`,
  `gemini-2.5-pro`, `composer-1`, ...), priced ones preferred;
- the input estimate: the size of all the request's text, plus a fixed amount per image;
- the output estimate: the size of the streamed text (answer, thinking, tool calls).

No token counts cross the wire, so every Cursor row is `estimated`. The provider is the
model's maker when it is recognisable (Cursor's usage-based pricing mirrors the makers'
list prices) or "cursor" for Cursor's own models (genai-prices has a `cursor` provider
for the ones it prices). The text itself is never kept: only sizes and estimates.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import brotli
import zstandard

from devmeter import pricing, tokens
from devmeter.alerts import Refusal
from devmeter.providers.base import ERROR_CAP, TEXT_CAP, TextBuffer, error_text
from devmeter.providers.openai_chat import error_body
from devmeter.providers.registry import Endpoint, WireFormat, fixed, register, register_host
from devmeter.providers.turn_text import cursor_texts
from devmeter.usage import RequestInfo, ResponseResult, Usage

# Keys of RequestInfo.facts this module fills.
HOST = "api2.cursor.sh"
# Cursor's editor talks to one host for everything (settings, indexing, Tab): only the
# chat devmeter meters is gated; the rest is its editor's backend, billed by plan.
CHAT_PATH = re.compile(
    r"/aiserver\.v1\.chatservice/streamunifiedchat\w*"
    r"|/aiserver\.v1\.aiservice/stream(?:chat|composer|edit)\w*"
    r"|/agent\.v1\.agentservice/run(?:sse)?"
)
FACT_PROVIDER = "provider"  # the model's maker (genai-prices provider id), or "cursor"
FACT_PRICE_MODEL = "price_model"  # the genai-prices model id the Cursor name resolved to
FACT_REQUEST_ID = "cursor_request_id"  # a bidi request id (SSE variants carry only that)

# A frame (or unary body) larger than this is skipped, not buffered: Cursor's messages
# are kilobytes; a huge one is counted by size only.
FRAME_CAP = 32 * 1024 * 1024
# A compressed frame may expand to at most this (bounds a decompression bomb).
INFLATE_CAP = 64 * 1024 * 1024
MAX_DEPTH = 24  # protobuf nesting followed

_FLAG_COMPRESSED = 0x01
_FLAG_END_STREAM = 0x02

# --- protobuf, without a schema ----------------------------------------------------------

Field = tuple[int, int, "int | memoryview"]  # (field number, wire type, varint or bytes)


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    """(value, next index); value -1 when the varint is cut or longer than 10 bytes."""
    value = shift = 0
    n = len(data)
    while i < n and shift < 70:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    return -1, i


def parse_fields(data: bytes | memoryview) -> list[Field] | None:
    """Every field of `data` read as one protobuf message, or None if it is not one.

    Strict: field numbers 1..2^29-1, wire types 0, 1, 2 and 5 only, and the last field
    must end exactly at the end of the data. Length-delimited values are zero-copy views.
    """
    mv = data if isinstance(data, memoryview) else memoryview(data)
    fields: list[Field] = []
    i, n = 0, len(mv)
    while i < n:
        key, i = _varint(mv, i)
        if key < 0:
            return None
        number, wire = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            return None
        if wire == 0:
            value, i = _varint(mv, i)
            if value < 0:
                return None
            fields.append((number, 0, value))
        elif wire == 2:
            length, i = _varint(mv, i)
            if length < 0 or i + length > n:
                return None
            fields.append((number, 2, mv[i : i + length]))
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > n:
                return None
        else:  # 3 and 4 (groups) are long gone; 6 and 7 do not exist
            return None
    return fields


# Bytes that never appear in text (tab, newline and carriage return excepted).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# Opaque tokens (signatures, hashes, encrypted blobs): long, no spaces, base64/hex alphabet.
_BLOB = re.compile(r"[A-Za-z0-9+/=_-]{40,}")

# A model id as Cursor names it: a known family, dash-separated parts, dots only inside
# version numbers (so "gpt-4.py" is a file, not a model), an optional [option] suffix.
_MODEL_NAME = re.compile(
    r"(?:o[1-9](?:-[a-z0-9]+)*"
    r"|(?:claude|gpt|chatgpt|gemini|grok|composer|deepseek|kimi|qwen|glm|llama|mistral"
    r"|codestral|devstral|codex)(?:-[a-z0-9]+(?:\.[0-9]+)*)+"
    r"|cursor-(?:small|fast|[0-9][a-z0-9.]*))"
    r"(?:\[[a-z0-9=,._-]*\])?"
)
_MODEL_MAX = 64


@dataclass
class Scan:
    """What a schema-less walk saw in one or more messages. Holds text only transiently."""

    keep_text: bool = True
    texts: list[str] = field(default_factory=list)
    text_chars: int = 0  # every text character seen
    kept_chars: int = 0  # of which kept in `texts`, up to TEXT_CAP, to estimate from
    images: int = 0
    messages: int = 0
    # model candidate -> [occurrences, order of last occurrence]
    models: dict[str, list[int]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    seen: int = 0

    def add_string(self, text: str) -> None:
        self.seen += 1
        if len(text) <= _MODEL_MAX:
            lowered = text.strip().lower()
            if _MODEL_NAME.fullmatch(lowered):
                entry = self.models.setdefault(lowered, [0, 0])
                entry[0] += 1
                entry[1] = self.seen
                return
            if _UUID.fullmatch(lowered):
                if len(self.ids) < 8:
                    self.ids.append(lowered)
                return
        if " " not in text and _BLOB.fullmatch(text):
            return  # a signature or hash: not text a model reads or writes
        self.text_chars += len(text)
        if self.keep_text and self.kept_chars < TEXT_CAP:
            piece = text[: TEXT_CAP - self.kept_chars]
            self.texts.append(piece)
            self.kept_chars += len(piece)

    def best_model(self) -> str | None:
        """The model the request names: a priced id first, then the most frequent, then
        the last one seen (the conversation comes before the model in Cursor's messages)."""
        if not self.models:
            return None

        def rank(item: tuple[str, list[int]]) -> tuple[bool, int, int]:
            name, (count, order) = item
            return (resolve_model(name)[1] is not None, count, order)

        return max(self.models.items(), key=rank)[0]


def scan_message(data: bytes | memoryview, scan: Scan) -> bool:
    """Walk one protobuf message into `scan`; False when `data` is not a message."""
    top = parse_fields(data)
    if top is None:
        return False
    scan.messages += 1
    stack: list[tuple[list[Field], int]] = [(top, 0)]
    while stack:
        fields, depth = stack.pop()
        # Reversed onto a stack, so fields are visited in wire order.
        pending: list[tuple[list[Field], int]] = []
        for _number, wire, value in fields:
            if wire != 2 or not isinstance(value, memoryview) or not value:
                continue
            nested = _classify(value, scan, depth)
            if nested is not None:
                pending.append((nested, depth + 1))
        stack.extend(reversed(pending))
    return True


def _classify(value: memoryview, scan: Scan, depth: int) -> list[Field] | None:
    """Text goes into `scan`; a nested message is returned for walking; bytes are skipped."""
    head = bytes(value[:4])
    if head.startswith(_IMAGE_MAGIC) or (head == b"RIFF" and bytes(value[8:12]) == b"WEBP"):
        scan.images += 1
        return None
    if value[0] >= 0x20 and not _CONTROL.search(value):
        text = _utf8(value)
        if text is not None:  # printable from its first byte: text, not a message
            scan.add_string(text)
            return None
    if depth < MAX_DEPTH:
        nested = parse_fields(value)
        if nested:
            return nested
    text = _utf8(value)
    if text is not None:  # text with control characters (terminal output, say)
        scan.add_string(text)
    return None


def _utf8(value: memoryview) -> str | None:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        return None


def scan_json(obj: Any, scan: Scan) -> None:
    """Walk a JSON document's string values (Connect's JSON codec, or JSON inside proto)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            scan.add_string(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def scan_payload(payload: bytes, scan: Scan) -> bool:
    """One Connect message, protobuf or JSON; False when it is neither."""
    if payload[:1] in (b"{", b"["):
        try:
            scan_json(json.loads(payload), scan)
            scan.messages += 1
            return True
        except ValueError:
            pass
    return scan_message(payload, scan)


# --- text rewritten in place (secret redaction, devmeter/secrets) ---------------------------

# Given each text of a message: its replacement, or None to keep it.
Replace = Callable[[str], "str | None"]


def rewrite_message(data: bytes | memoryview, replace: Replace) -> bytes | None:
    """One protobuf message with text fields replaced, read by the same rules as
    `scan_message` (so every text it scans is offered to `replace`). Nested messages get
    their new lengths; every other byte is kept as it was. None when nothing changed or
    `data` is not a message. Also a way to list a message's texts (`replace` a collector)."""
    if not parse_fields(data):
        return None
    return _rewrite(memoryview(data), replace, 0)


def _rewrite(mv: memoryview, replace: Replace, depth: int) -> bytes | None:
    out = bytearray()
    last = i = 0
    n = len(mv)
    while i < n:  # well formed: parse_fields accepted it
        key, i = _varint(mv, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(mv, i)
            continue
        if wire != 2:
            i += 8 if wire == 1 else 4
            continue
        length, start = _varint(mv, i)
        end = start + length
        new = _rewrite_value(mv[start:end], replace, depth) if length else None
        if new is not None:
            out += mv[last:i]
            out += _encode_varint(len(new))
            out += new
            last = end
        i = end
    if last == 0:
        return None
    out += mv[last:]
    return bytes(out)


def _rewrite_value(value: memoryview, replace: Replace, depth: int) -> bytes | None:
    """`_classify`'s decision, with text replaced instead of scanned."""
    head = bytes(value[:4])
    if head.startswith(_IMAGE_MAGIC) or (head == b"RIFF" and bytes(value[8:12]) == b"WEBP"):
        return None
    if value[0] >= 0x20 and not _CONTROL.search(value):
        text = _utf8(value)
        if text is not None:
            return _replaced(text, replace)
    if depth < MAX_DEPTH and parse_fields(value):
        return _rewrite(value, replace, depth + 1)
    text = _utf8(value)
    return None if text is None else _replaced(text, replace)


def _replaced(text: str, replace: Replace) -> bytes | None:
    new = replace(text)
    return None if new is None or new == text else new.encode()


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def rewrite_payload(payload: bytes, replace: Replace) -> bytes | None:
    """One Connect message, protobuf or JSON (its string values), with text replaced."""
    if payload[:1] in (b"{", b"["):
        try:
            doc = json.loads(payload)
        except ValueError:
            pass
        else:
            changed = _rewrite_json(doc, replace)
            return json.dumps(doc, ensure_ascii=False).encode() if changed else None
    return rewrite_message(payload, replace)


def _rewrite_json(node: Any, replace: Replace) -> bool:
    changed = False
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in list(items):
        if isinstance(value, str):
            new = replace(value)
            if new is not None and new != value:
                node[key] = new
                changed = True
        elif isinstance(value, dict | list):
            changed = _rewrite_json(value, replace) or changed
    return changed


def rewrite_frame(flags: int, payload: bytes, replace: Replace) -> bytes | None:
    """One Connect frame, whole, with its message's text replaced; sent uncompressed (the
    flag is per message in Connect, so a rewritten one need not be compressed again).
    None when unchanged, unreadable, or the end-stream frame."""
    if flags & _FLAG_END_STREAM:
        return None
    if flags & _FLAG_COMPRESSED:
        inflated = inflate(payload)
        if inflated is None:
            return None
        payload = inflated
    new = rewrite_payload(payload, replace) if payload else None
    if new is None:
        return None
    return bytes([flags & ~_FLAG_COMPRESSED]) + len(new).to_bytes(4, "big") + new


def rewrite_body(body: bytes, replace: Replace) -> bytes | None:
    """A whole request body (Connect frames, or one bare message) with text replaced;
    None when nothing changed. Bytes after the last whole frame are kept as they are."""
    if not body:
        return None
    if body[:2] == b"\x1f\x8b":  # a gzip body the proxy did not decode (no header said so)
        inflated = inflate(body)
        new = rewrite_payload(inflated, replace) if inflated else None
        return None if new is None else gzip.compress(new, mtime=0)
    if body[0] > 0x03:
        return rewrite_payload(body, replace)
    out = bytearray()
    changed = False
    i = 0
    while i + 5 <= len(body):
        length = int.from_bytes(body[i + 1 : i + 5], "big")
        end = i + 5 + length
        if end > len(body):
            break
        new = rewrite_frame(body[i], body[i + 5 : end], replace)
        out += body[i:end] if new is None else new
        changed = changed or new is not None
        i = end
    out += body[i:]
    return bytes(out) if changed else None


def request_texts(body: bytes) -> list[str]:
    """Every text of a whole request body, in the order rewriting offers them."""
    texts: list[str] = []

    def collect(text: str) -> None:
        texts.append(text)

    rewrite_body(body, collect)
    return texts


# --- the Connect envelope ------------------------------------------------------------------


def inflate(payload: bytes) -> bytes | None:
    """A compressed message (gzip, zstd or brotli, told by its bytes); None if unreadable."""
    try:
        if payload[:2] == b"\x1f\x8b":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(payload, INFLATE_CAP)
            return None if d.unconsumed_tail else out
        if payload[:4] == b"\x28\xb5\x2f\xfd":
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload))
            out = reader.read(INFLATE_CAP + 1)
            return None if len(out) > INFLATE_CAP else out
        decompressor = brotli.Decompressor()
        out = decompressor.process(payload)
        finished = decompressor.is_finished()  # a cut or foreign payload is not finished
        return out if finished and len(out) <= INFLATE_CAP else None
    except (zlib.error, zstandard.ZstdError, brotli.error, ValueError, OSError):
        return None


class FrameReader:
    """Cuts a Connect stream into (flags, message) frames, whatever the chunk boundaries.

    A frame is buffered only until complete; one longer than FRAME_CAP is skipped and
    counted. Bytes that cannot start a frame (flags beyond 0x03) end the reading.
    """

    def __init__(self, cap: int = FRAME_CAP) -> None:
        self._buf = bytearray()
        self._skip = 0
        self._cap = cap
        self.oversize = 0
        self.bad = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.bad:
            return []
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        self._buf += data
        frames: list[tuple[int, bytes]] = []
        buf = self._buf
        while len(buf) >= 5:
            flags = buf[0]
            if flags & ~0x03:
                self.bad = True
                buf.clear()
                break
            length = int.from_bytes(buf[1:5], "big")
            if length > self._cap:
                self.oversize += 1
                available = len(buf) - 5
                self._skip = length - available if available < length else 0
                del buf[: 5 + min(length, available)]
                continue
            if len(buf) < 5 + length:
                break
            frames.append((flags, bytes(buf[5 : 5 + length])))
            del buf[: 5 + length]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame: nonzero at the end means the stream was cut."""
        return len(self._buf) + self._skip


# --- model names -----------------------------------------------------------------------------

# Cursor's names for options that are not part of the maker's model id.
_OPTION_SUFFIX = re.compile(
    r"-(?:thinking|max|high|medium|low|minimal|xhigh|fast|latest|instruct)$"
)
_CLAUDE_CURSOR_ORDER = re.compile(r"claude-(\d+(?:\.\d+)?)-(opus|sonnet|haiku)((?:-.*)?)")
_FAMILY_PROVIDER = (
    ("claude", "anthropic"),
    ("gpt", "openai"),
    ("chatgpt", "openai"),
    ("codex", "openai"),
    ("gemini", "google"),
    ("grok", "x-ai"),
    ("deepseek", "deepseek"),
    ("kimi", "moonshotai"),
    ("mistral", "mistral"),
    ("codestral", "mistral"),
    ("devstral", "mistral"),
)


def _candidates(name: str) -> list[str]:
    """genai-prices ids worth trying for a Cursor model name, most faithful first."""
    bases = [name]
    base = re.sub(r"\[.*\]$", "", name)
    while True:
        if base not in bases:
            bases.append(base)
        stripped = _OPTION_SUFFIX.sub("", base)
        if stripped == base:
            break
        base = stripped
    out: list[str] = []
    for b in bases:
        # Cursor says "claude-4.5-sonnet"; Anthropic says "claude-sonnet-4-5".
        m = _CLAUDE_CURSOR_ORDER.fullmatch(b)
        reordered = f"claude-{m.group(2)}-{m.group(1).replace('.', '-')}{m.group(3)}" if m else None
        for candidate in (b, reordered, f"{b}-preview" if b.startswith("gemini-") else None):
            if candidate and candidate not in out:
                out.append(candidate)
    return out


def _lookup(ref: str, provider: str | None = None) -> tuple[str, str] | None:
    """(provider, canonical model id) genai-prices finds for `ref`, if any."""
    return pricing.resolve_model_ref(ref, provider)


def _family_provider(name: str) -> str:
    if re.match(r"o[1-9]\b", name):
        return "openai"
    for prefix, provider in _FAMILY_PROVIDER:
        if name.startswith(prefix + "-"):
            return provider
    return "cursor"


@lru_cache(maxsize=1024)
def resolve_model(name: str) -> tuple[str, str | None]:
    """(provider, canonical genai-prices model id or None) for a model as Cursor names it.

    Cursor's own price list (genai-prices' `cursor` provider: Composer, the Grok models
    it hosts) wins; then the maker's list price; an unpriced name still gets its maker
    from its family ("gpt-9" is OpenAI's), or "cursor".
    """
    name = name.strip().lower()
    for ref in _candidates(name):
        found = _lookup(ref, "cursor") or _lookup(ref)
        if found is not None:
            return found
    return _family_provider(name), None


# --- requests ---------------------------------------------------------------------------------


class RequestReader:
    """Reads a Cursor request body, whole or chunk by chunk (a bidi stream's request
    side stays open while the answer streams), and concludes what it asked for.

    Between chunks it keeps sizes, model candidates, and at most TEXT_CAP characters of
    text to estimate tokens from (the rest is extrapolated); `info()` drops that text.
    """

    def __init__(self) -> None:
        self._frames = FrameReader()
        self._mode: str | None = None  # "frames" or "bare", decided by the first byte
        self._bare = bytearray()
        self._bare_size = 0
        self._scan = Scan()
        self._errors: list[str] = []
        self._undecodable = 0
        self._size = 0

    def feed(self, data: bytes) -> RequestReader:
        if not data:
            return self
        self._size += len(data)
        if self._mode is None:
            self._mode = "frames" if data[0] <= 0x03 else "bare"
        if self._mode == "bare":
            self._bare_size += len(data)
            if self._bare_size <= FRAME_CAP:
                self._bare += data
            return self
        for flags, payload in self._frames.feed(data):
            self._payload(flags, payload)
        return self

    def _payload(self, flags: int, payload: bytes) -> None:
        if flags & _FLAG_COMPRESSED:
            inflated = inflate(payload)
            if inflated is None:
                self._undecodable += 1
                return
            payload = inflated
        if payload and not scan_payload(payload, self._scan):
            self._errors.append("a request frame is not a protobuf or JSON message")

    def info(self) -> RequestInfo:
        """What the request asked for. Never raises."""
        try:
            return self._info()
        except Exception as exc:  # a parser bug must not cost the row
            return RequestInfo(
                stream=True,
                facts={"request_error": f"unreadable request: {type(exc).__name__}: {exc}"[:200]},
            )

    def _info(self) -> RequestInfo:
        scan = self._scan
        errors = list(self._errors)
        if self._mode == "bare" and self._bare:
            body = bytes(self._bare)
            if body[:2] == b"\x1f\x8b":  # a gzip body the proxy did not decode
                body = inflate(body) or b""
            self._bare = bytearray()
            if self._bare_size > FRAME_CAP:
                errors.append(f"request body over {FRAME_CAP} bytes was not read")
            elif not scan_payload(body, scan):
                errors.append("request body is not a protobuf or JSON message")
        if self._size == 0:
            errors.append("empty request body")
        if self._frames.pending:
            errors.append("request body ends inside a frame")
        if self._frames.bad:
            errors.append("request body is not Connect frames")
        if self._undecodable:
            errors.append(f"{self._undecodable} compressed request frames could not be read")
        if self._frames.oversize:
            errors.append(f"{self._frames.oversize} request frames over {FRAME_CAP} bytes")

        name = scan.best_model()
        provider, ref = resolve_model(name) if name else ("cursor", None)
        facts: dict[str, str] = {FACT_PROVIDER: provider}
        if ref:
            facts[FACT_PRICE_MODEL] = ref
        if scan.images:
            facts["uses_images"] = "1"
        if not scan.text_chars and scan.ids:
            facts[FACT_REQUEST_ID] = scan.ids[0]  # only an id: an SSE variant's request
        if errors:
            facts["request_error"] = "; ".join(errors)[:ERROR_CAP]
        estimate = _estimate(scan, ref or name)
        scan.texts, scan.kept_chars = [], 0  # measured: the text goes no further
        return RequestInfo(
            model=name,
            stream=True,
            prompt_tokens_estimate=estimate + scan.images * tokens.IMAGE_TOKENS,
            facts=facts,
        )


def _estimate(scan: Scan, model: str | None) -> int:
    """Tokens of all the text seen, from the part kept, extrapolated by characters."""
    if not scan.kept_chars:
        return -(-scan.text_chars // 4)
    estimate = tokens.estimate_tokens("\n".join(scan.texts), model)
    if scan.text_chars > scan.kept_chars:
        estimate = -(-estimate * scan.text_chars // scan.kept_chars)
    return estimate


def parse_request(body: bytes) -> RequestInfo:
    """What a whole Cursor request body asked for (Connect frames or one message)."""
    return RequestReader().feed(body).info()


# --- responses -----------------------------------------------------------------------------


class ChatParser:
    """Estimated usage of a Cursor response: Connect frames, one message, or a JSON error.

    Satisfies the ResponseParser protocol: never raises, cheap per chunk.
    """

    def __init__(self, request: RequestInfo, content_type: str = "") -> None:
        self.request = request
        ctype = (content_type or "").lower()
        self._mode: str | None = None
        if "connect+" in ctype:
            self._mode = "frames"
        elif "json" in ctype:
            self._mode = "json"
        elif "proto" in ctype:
            self._mode = "bare"
        self._frames = FrameReader()
        self._body = bytearray()
        self._body_size = 0
        self.text = TextBuffer()
        self.terminal = False
        self.error: str | None = None
        self.bad_frames = 0
        self._broken = False
        self._result: ResponseResult | None = None

    # --- the ResponseParser protocol -------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._broken or self._result is not None or not data:
            return
        try:
            self._feed(data)
        except Exception as exc:  # never let a parser bug reach the proxy's stream
            self._fail(exc)

    def feed_message(self, text: str | bytes) -> None:
        return None  # Cursor does not use WebSockets for chat

    def result(self) -> ResponseResult:
        if self._result is None:
            try:
                self._result = self._build()
            except Exception as exc:
                self._fail(exc)
                self._result = ResponseResult(
                    usage=None, model=self._model(), complete=False, error=self.error
                )
        return self._result

    def take_completed(self) -> list[ResponseResult]:
        return []

    def take_unfinished(self) -> list[ResponseResult]:
        return []

    # --- internals -------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._mode is None:
            first = data[0]
            self._mode = "frames" if first <= 0x03 else "json" if first == 0x7B else "bare"
        if self._mode == "frames":
            for flags, payload in self._frames.feed(data):
                self._frame(flags, payload)
        else:
            self._body_size += len(data)
            if self._body_size <= FRAME_CAP:
                self._body += data

    def _frame(self, flags: int, payload: bytes) -> None:
        if flags & _FLAG_COMPRESSED:
            inflated = inflate(payload)
            if inflated is None:
                self.bad_frames += 1
                return
            payload = inflated
        if flags & _FLAG_END_STREAM:
            self.terminal = True
            self._trailer(payload)
            return
        if payload:
            self._message(payload)

    def _message(self, payload: bytes) -> None:
        scan = Scan(keep_text=True)
        if not scan_payload(payload, scan):
            self.bad_frames += 1
            return
        for text in scan.texts:
            self.text.add(text)

    def _trailer(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            self.bad_frames += 1
            return
        if isinstance(doc, dict) and doc.get("error"):
            self.error = _connect_error(doc["error"])

    def _finish_body(self) -> None:
        body = bytes(self._body)
        self._body = bytearray()
        if self._body_size > FRAME_CAP:
            self.terminal = True  # whole, just too large to read: its size stands
            self.text.chars += self._body_size
            return
        if not body:
            return
        if self._mode == "json" or body[:1] == b"{":
            try:
                doc = json.loads(body)
            except ValueError:
                self.error = _snippet(body)
                self.terminal = True
                return
            if isinstance(doc, dict) and ("code" in doc or "error" in doc):
                self.error = _connect_error(doc.get("error", doc))
            else:
                scan = Scan()
                scan_json(doc, scan)
                for text in scan.texts:
                    self.text.add(text)
            self.terminal = True
            return
        scan = Scan()
        if scan_message(body, scan):
            for text in scan.texts:
                self.text.add(text)
        else:
            self.error = _snippet(body)  # an HTML error page from a gateway, say
        self.terminal = True

    def _model(self) -> str | None:
        return self.request.facts.get(FACT_PRICE_MODEL) or self.request.model

    def _build(self) -> ResponseResult:
        if self._mode in ("json", "bare"):
            self._finish_body()
        complete = (
            self.terminal and not self._broken and not self._frames.pending and not self._frames.bad
        )
        errors = [e for e in (self.error,) if e]
        if self._frames.bad:
            errors.append("response is not Connect frames")
        if self.bad_frames:
            errors.append(f"{self.bad_frames} response frames could not be read")
        if self._frames.oversize:
            errors.append(f"{self._frames.oversize} response frames over {FRAME_CAP} bytes")
        output = self._output_tokens()
        if output == 0 and (errors or not complete):
            # Refused, failed or abandoned before generating: Cursor charges nothing.
            usage = Usage()
        else:
            usage = Usage(
                input_tokens=self.request.prompt_tokens() or 0,
                output_tokens=output,
                estimated=True,
            )
        return ResponseResult(
            usage=usage,
            model=self._model(),
            complete=complete,
            output_chars=self.text.chars,
            output_text="",  # the estimate is made here; the text goes no further
            error="; ".join(errors)[:ERROR_CAP] if errors else None,
        )

    def _output_tokens(self) -> int:
        kept = self.text.value()
        if not kept:
            return -(-self.text.chars // 4)
        estimate = tokens.estimate_tokens(kept, self._model())
        if self.text.chars > len(kept):  # the text buffer is bounded: extrapolate
            estimate = -(-estimate * self.text.chars // len(kept))
        return estimate

    def _fail(self, exc: Exception) -> None:
        self._broken = True
        if self.error is None:
            self.error = f"parser error: {type(exc).__name__}: {exc}"[:ERROR_CAP]


def _connect_error(error: Any) -> str:
    """Connect's error: `{"code": "resource_exhausted", "message": "...", "details": [...]}`."""
    if isinstance(error, dict):
        return error_text({"code": error.get("code"), "message": error.get("message")})
    return error_text(error)


def _snippet(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace")
    return "unreadable response: " + " ".join(text.split())


def end_stream_error(message: str, code: str = "resource_exhausted") -> bytes:
    """A Connect streaming response that only fails: one end-stream frame (HTTP 200).

    For the guard rails to refuse a Cursor call in a shape Cursor understands
    (content type `application/connect+proto`).
    """
    trailer = json.dumps({"error": {"code": code, "message": message}}).encode()
    return bytes([_FLAG_END_STREAM]) + len(trailer).to_bytes(4, "big") + trailer


# --- the wire format --------------------------------------------------------------------


def refusal(message: str) -> Refusal:
    """A refused chat: Connect streams report errors in an end-stream frame of a 200."""
    body = end_stream_error(message, code="permission_denied")
    event = {"type": "error", "error": {"code": "permission_denied", "message": message}}
    return Refusal(200, {"content-type": "application/connect+proto"}, body, event)


# Connect-RPC chat streams (protobuf; metered as estimates). Not metered: Cursor Tab
# (StreamCpp), BidiAppend (the client half of an HTTP/1.1 bidi emulation), and the rest of
# its API (settings, indexing, telemetry), which passes through untouched. A refusal is a
# Connect end-stream frame (`refusal`); `error_body` is OpenAI's JSON shape, for
# devmeter's own errors on the plain HTTP side.
register(
    WireFormat(
        "cursor.chat",
        "cursor",
        lambda endpoint, request, content_type: ChatParser(request, content_type),
        error_body,
        parse_bytes=lambda body, endpoint: parse_request(body),
        refusal=refusal,
        new_turn=cursor_texts,
        sent_text=cursor_texts,
    )
)
register_host(
    HOST,
    "cursor",
    patterns=((CHAT_PATH.pattern, fixed(Endpoint("cursor", "cursor.chat", stream=True))),),
    gate=(frozenset({"POST"}), CHAT_PATH),  # nothing else there is paid per call
)
