"""A request body's JSON, decoded as it is read: the request path's one parse.

An agent re-sends its whole conversation every turn (about 1 MB late in a Claude Code
session), while each call reads only its top-level fields, the first user message and
the last turn. `LazyDoc` checks the whole body once (msgspec skips what it does not
build, at about a third of the cost of decoding it) and decodes a field, or one
conversation item, when a reader first asks for it. A reader that needs everything (a
routing rewrite, a redaction) asks for `whole()`, the plain dict the body always parsed
to, with the items already read in it.

Same answers as the plain parse (`fastjson.loads`), or no LazyDoc at all: a body msgspec
or UTF-8 refuses, or whose conversation key holds something other than a list, is parsed
the old way by the caller (`lazy_doc` returns None), so its error note is the one it was.
One difference remains, in a body no client sends: an integer beyond 64 bits reads as
`fastjson` reads it alone (a float), even when a number past a double's range (1e400)
elsewhere in the body would have sent the whole body to `json` (which reads it exactly).
And on Python 3.12+, whose recursion limit lets msgspec go ~1,500 levels deep, a body
nested past orjson's 1,023 is read lazily rather than refused whole: its model and facts
are read, and a reader of the whole body (`whole()`), or of an item itself nested past
the limit, gets orjson's ValueError (every request stage fails open on it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import msgspec
from msgspec import UNSET, Raw, UnsetType

from devmeter import fastjson

# Bodies from this size are read lazily: below it, parsing the body whole costs less than
# the check plus decoding each part read (measured: about even at 150-250 KB in-process,
# before the GC and freeing a whole parse also costs in the proxy). Claude Code's
# conversation passes it after a few dozen turns.
LAZY_FROM = 128 << 10

_ABSENT = Raw()  # msgspec's empty Raw: the key is not in the body


class _Top(msgspec.Struct):
    """The top-level keys the request path reads, undecoded. Any other key is read from
    `whole()`. The conversation keys are lists of undecoded items (Responses' `input`
    may also be one string)."""

    messages: list[Raw] | UnsetType = UNSET
    contents: list[Raw] | UnsetType = UNSET
    input: list[Raw] | str | UnsetType = UNSET
    model: Raw = _ABSENT
    stream: Raw = _ABSENT
    stream_options: Raw = _ABSENT
    system: Raw = _ABSENT
    tools: Raw = _ABSENT
    functions: Raw = _ABSENT
    thinking: Raw = _ABSENT
    reasoning: Raw = _ABSENT
    reasoning_effort: Raw = _ABSENT
    max_tokens: Raw = _ABSENT
    max_completion_tokens: Raw = _ABSENT
    max_output_tokens: Raw = _ABSENT
    metadata: Raw = _ABSENT
    instructions: Raw = _ABSENT
    prompt_cache_key: Raw = _ABSENT
    previous_response_id: Raw = _ABSENT
    generate: Raw = _ABSENT
    prewarm: Raw = _ABSENT
    request: Raw = _ABSENT
    project: Raw = _ABSENT
    user: Raw = _ABSENT
    generationConfig: Raw = _ABSENT  # noqa: N815 (Gemini's key)
    generation_config: Raw = _ABSENT
    systemInstruction: Raw = _ABSENT  # noqa: N815 (Gemini's key)
    system_instruction: Raw = _ABSENT


_DECODER = msgspec.json.Decoder(_Top)
_ITEM_KEYS = frozenset({"messages", "contents", "input"})
_RAW_KEYS = frozenset(_Top.__struct_fields__) - _ITEM_KEYS
_UNREAD = object()  # an item not decoded yet


def lazy_doc(body: bytes) -> LazyDoc | None:
    """The body as a LazyDoc; None when only the plain parse can say what it is (not
    JSON, not UTF-8, not an object, a conversation key that is not a list, nested too
    deeply for msgspec): the caller parses it the old way, for the same value or error."""
    if not body.isascii():
        try:
            body.decode("utf-8")  # msgspec skips strings it does not build unchecked
        except UnicodeDecodeError:
            return None
    try:
        top = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    return LazyDoc(body, top)


class LazyItems(Sequence[Any]):
    """A conversation list whose items are decoded as they are read (each once)."""

    __slots__ = ("_raw", "_items")

    def __init__(self, raw: list[Raw]) -> None:
        self._raw = raw
        self._items: list[Any] = [_UNREAD] * len(raw)

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self._raw)))]
        if index < 0:
            index += len(self._raw)
        if not 0 <= index < len(self._raw):
            raise IndexError("conversation index out of range")
        return self._item(index)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self._raw)):
            yield self._item(i)

    def __reversed__(self) -> Iterator[Any]:
        for i in range(len(self._raw) - 1, -1, -1):
            yield self._item(i)

    def _item(self, i: int) -> Any:
        item = self._items[i]
        if item is _UNREAD:
            item = self._items[i] = fastjson.loads(memoryview(self._raw[i]))
        return item

    def merge_into(self, whole: list[Any]) -> None:
        """Put the items already read into the whole list (readers may hold them, a
        redaction may change them), and read the rest from it from now on."""
        for i, item in enumerate(self._items):
            if item is not _UNREAD:
                whole[i] = item
        self._items = whole


class LazyDoc(Mapping[str, Any]):
    """A request body's top-level object, each value decoded when first read.

    `doc[key]`/`get` give the same value as the plain parse's dict; `items_of(key)` the
    conversation list without decoding it whole. A write (a redaction) lands in
    `whole()`, which is what `fastjson.dumps` writes.
    """

    __slots__ = ("_body", "_top", "_values", "_items", "_whole")

    def __init__(self, body: bytes, top: _Top) -> None:
        self._body = body
        self._top = top
        self._values: dict[str, Any] = {}
        self._items: dict[str, LazyItems] = {}
        self._whole: dict[str, Any] | None = None

    def items_of(self, key: str) -> Sequence[Any] | str | None:
        """The value of a conversation key (`messages`, `contents`, `input`): a lazily
        decoded list, a string (`input`), or None when absent."""
        if self._whole is not None or key not in _ITEM_KEYS:
            return self.get(key)
        items = self._items.get(key)
        if items is not None:
            return items
        raw = getattr(self._top, key)
        if raw is UNSET:
            return None
        if isinstance(raw, str):
            return raw
        items = self._items[key] = LazyItems(raw)
        return items

    def get(self, key: str, default: Any = None) -> Any:
        if self._whole is not None:
            return self._whole.get(key, default)
        if key in _RAW_KEYS:
            value = self._values.get(key, _UNREAD)
            if value is _UNREAD:
                raw: Raw = getattr(self._top, key)
                if not raw:
                    return default
                value = self._values[key] = fastjson.loads(memoryview(raw))
            return value
        if key in _ITEM_KEYS:
            items = getattr(self._top, key)
            if items is UNSET:
                return default
            if isinstance(items, str):  # Responses' one-string `input`
                return items
        return self.whole().get(key, default)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _UNREAD)
        if value is _UNREAD:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.whole()[key] = value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _UNREAD) is not _UNREAD if isinstance(key, str) else False

    def __iter__(self) -> Iterator[str]:
        return iter(self.whole())

    def __len__(self) -> int:
        return len(self.whole())

    def whole(self) -> dict[str, Any]:
        """The plain parse's dict (keys in the body's order), with every value and item
        already read in it: the same objects, so what a reader changed is kept."""
        if self._whole is None:
            whole = fastjson.loads(self._body)
            for key, value in self._values.items():
                whole[key] = value
            for key, items in self._items.items():
                items.merge_into(whole[key])
            self._whole = whole
        return self._whole


def plain(doc: Any) -> Any:
    """A parsed request as a plain dict, for readers that walk or rewrite all of it."""
    return doc.whole() if isinstance(doc, LazyDoc) else doc


# What a conversation view may hold: a plain parse's list or a LazyDoc's.
SEQUENCES = (list, LazyItems)


def items_of(doc: Mapping[str, Any], key: str) -> Any:
    """`doc.get(key)`, except that a LazyDoc's conversation list is not decoded whole."""
    return doc.items_of(key) if type(doc) is LazyDoc else doc.get(key)
