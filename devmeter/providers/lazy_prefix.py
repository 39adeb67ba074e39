"""The previous request's check, reused for the bytes that did not change.

An agent re-sends its conversation every turn: call N+1's body is call N's up to about
its last message, then the new turns (Claude Code moves its `cache_control` marker to
the new last message, so the bytes differ from inside the previous last item on). A
`PrefixMemory` keeps the last few large bodies the request path checked (in memory only,
bounded in count and bytes) with what the check found. For a new body it finds the
remembered one sharing the longest byte prefix (memcmp in blocks: tens of microseconds
for 1 MB), cuts at the last conversation item that starts inside that prefix, and checks
with msgspec only from there: `{"<key>":[` + the body from that item on, decoded with the
same `_Top`, gives the remaining items and every top-level key after the conversation;
the items and keys before the cut are the remembered ones, the bytes being identical.

Sound, or not used: the result is the `_Top` a full check of the body gives, or the full
check runs (`lazy_doc`). What makes it so:
- the parser's state at the cut is the same in both bodies (same bytes before it): inside
  the top-level object, inside the conversation array, before an item; the tail decode
  starts in that state and checks the rest of the body to its end, so the new body
  decodes whole exactly when the tail does;
- where each item and top-level value lies is read from the buffer address of its
  `msgspec.Raw` (a view into the body msgspec decoded), never guessed; item offsets are
  verified by rebuilding the array from the items and comparing it to the body;
- a top-level key whose winning (last) value lies after the conversation is kept only if
  the tail sets it again: otherwise an earlier duplicate, before the cut, would win;
- a second array under the conversation key after ours (a duplicate key) is noticed: the
  tail's list then does not start at the cut, and the full check runs;
- UTF-8 is checked over the tail (the prefix was checked with the remembered body).
No prompt text is written anywhere: the memory holds bytes objects the proxy holds anyway.
"""

from __future__ import annotations

import ctypes
import re
import threading
from bisect import bisect_right
from itertools import accumulate

import msgspec
from msgspec import UNSET, Raw

from devmeter.providers.lazy_doc import _DECODER, _ITEM_KEYS, _RAW_KEYS, LazyDoc, _Top, lazy_doc

MAX_BODIES = 8  # a few agents' sessions at once (subagents, parallel sessions)
MAX_BYTES = 48 << 20  # every body the memory keeps alive, counted once
_BLOCK = 1 << 16  # bytes compared at a time when looking for the first difference
_GAP = re.compile(rb"[ \t\n\r]*,[ \t\n\r]*")  # between two array items


class _Buffer(ctypes.Structure):
    """CPython's Py_buffer (the stable buffer protocol), read for its data address."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


try:
    _get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    _get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
    _get_buffer.restype = ctypes.c_int
    _release_buffer = ctypes.pythonapi.PyBuffer_Release
    _release_buffer.argtypes = [ctypes.POINTER(_Buffer)]
    _release_buffer.restype = None
    AVAILABLE = True
except (AttributeError, ValueError):  # not CPython: every body is checked whole
    AVAILABLE = False


def _address(obj: bytes | Raw) -> int:
    """Where the object's bytes are in memory (a Raw's: inside the body it was decoded
    from; msgspec makes it a view, not a copy)."""
    view = _Buffer()
    if _get_buffer(obj, ctypes.byref(view), 0) != 0:
        raise BufferError("no buffer")
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))


def common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes `a` and `b` share, compared in C block by block."""
    n = min(len(a), len(b))
    view = memoryview(b)
    lo = 0
    while lo < n:
        hi = min(lo + _BLOCK, n)
        if a.startswith(view[lo:hi], lo):
            lo = hi
            continue
        while hi - lo > 32:
            mid = (lo + hi) // 2
            if a.startswith(view[lo:mid], lo):
                lo = mid
            else:
                hi = mid
        while a[lo] == b[lo]:
            lo += 1
        return lo
    return n


def item_starts(buffer: bytes, first: int, items: list[Raw]) -> list[int] | None:
    """The offset in `buffer` of each item of an array whose first item starts at
    `first`, or None when they are not laid out with one separator throughout. Verified,
    not assumed: the items joined by that separator must be the buffer's bytes there
    (a separator is whitespace, one comma, whitespace; an item never starts with either,
    so any other layout differs somewhere)."""
    if len(items) == 1:
        return [first]
    gap = _GAP.match(buffer, first + len(items[0]))
    if gap is None:
        return None
    separator = gap.group()
    if not buffer.startswith(separator.join(items), first):
        return None
    step = len(separator)
    return list(accumulate((len(item) + step for item in items[:-1]), initial=first))


class _Remembered:
    """A checked body and what the check found, with where its parts lie (worked out
    when first needed: most bodies are never reused)."""

    __slots__ = ("body", "top", "key", "root", "starts", "after")

    def __init__(
        self,
        body: bytes,
        top: _Top,
        key: str,
        root: bytes,
        starts: list[int] | None = None,
        after: frozenset[str] | None = None,
    ) -> None:
        self.body = body
        self.top = top
        self.key = key  # the conversation key, holding a non-empty list
        self.root = root  # the body the top's uncopied Raws are views into
        self.starts = starts  # each item's offset in `body`; [] when unknowable
        self.after = after  # keys whose value lies after the conversation

    def locate(self) -> list[int]:
        """Each item's offset (and which keys come after the conversation), from the
        Raws' addresses in a body checked whole."""
        if self.starts is None:
            self.starts, self.after = [], frozenset()
            items: list[Raw] = getattr(self.top, self.key)
            base = _address(self.body)
            first = _address(items[0]) - base
            if not 0 < first < len(self.body):
                return self.starts  # not a view into this body: never cut
            after = set()
            for name in _RAW_KEYS:
                raw: Raw = getattr(self.top, name)
                if raw:
                    where = _address(raw) - base
                    if not 0 <= where < len(self.body):
                        return self.starts
                    if where > first:
                        after.add(name)
            self.after = frozenset(after)
            self.starts = item_starts(self.body, first, items) or []
        return self.starts


def _conversation_key(top: _Top) -> str | None:
    """The one conversation key set, when it holds a non-empty list; else None."""
    found = [key for key in _ITEM_KEYS if getattr(top, key) is not UNSET]
    if len(found) != 1:
        return None
    items = getattr(top, found[0])
    return found[0] if isinstance(items, list) and items else None


class PrefixMemory:
    """The last few large bodies checked, to check the next one only where it differs."""

    def __init__(self, max_bodies: int = MAX_BODIES, max_bytes: int = MAX_BYTES) -> None:
        self._max_bodies = max_bodies
        self._max_bytes = max_bytes
        self._entries: list[_Remembered] = []  # most recently used first
        self._lock = threading.Lock()  # readers may run off the event loop
        self.reused = 0  # calls checked from a remembered prefix (for tests and probes)

    def lazy_doc(self, body: bytes) -> LazyDoc | None:
        """`lazy_doc(body)`: the same LazyDoc (or None), checking only what changed
        since a remembered body where one shares a prefix with it."""
        if not AVAILABLE:
            return lazy_doc(body)
        with self._lock:
            entries = list(self._entries)
        best: _Remembered | None = None
        shared = compared = 0
        for entry in entries:  # most recent first: usually the best at once
            if min(len(entry.body), len(body)) <= shared:
                continue
            n = common_prefix(body, entry.body)
            if n > shared:
                best, shared = entry, n
            compared += n
            if compared > 2 * len(body):  # bodies alike at length: bound the comparing
                break
        if best is not None:
            try:
                reused = self._reuse(best, body, shared)
            except Exception:  # a bug here must not cost the call its parse: check it whole
                reused = None
            if reused is not None:
                doc, remembered = reused
                self.reused += 1
                self._keep(remembered, replacing=best)
                return doc
        doc = lazy_doc(body)
        if doc is not None:
            key = _conversation_key(doc._top)
            if key is not None:
                self._keep(_Remembered(body, doc._top, key, body), replacing=None)
        return doc

    def _reuse(
        self, entry: _Remembered, body: bytes, shared: int
    ) -> tuple[LazyDoc, _Remembered] | None:
        if shared == len(body) == len(entry.body):  # the same bytes re-sent
            return LazyDoc(body, entry.top), entry
        try:
            starts = entry.locate()
        except BufferError:
            return None
        k = bisect_right(starts, shared) - 1
        if k < 0:
            return None  # it differs before the conversation
        cut = starts[k]
        key = entry.key
        head = b'{"' + key.encode() + b'":['
        tail_bytes = b"".join((head, memoryview(body)[cut:]))
        if not tail_bytes.isascii():
            try:
                tail_bytes.decode("utf-8")
            except UnicodeDecodeError:
                return None
        try:
            tail: _Top = _DECODER.decode(tail_bytes)
        except (msgspec.DecodeError, RecursionError):
            return None
        new_items = getattr(tail, key)
        if not isinstance(new_items, list) or not new_items:
            return None
        base = _address(tail_bytes)
        if _address(new_items[0]) != base + len(head):
            return None  # a later duplicate of the key won: its list is not ours
        new_starts = item_starts(tail_bytes, len(head), new_items)
        changed: dict[str, object] = {}
        after = set()
        for name in _RAW_KEYS:
            raw: Raw = getattr(tail, name)
            if raw:
                changed[name] = raw.copy()  # not a view: the memory keeps no tail buffer
                after.add(name)
        if not entry.after <= after:
            return None  # a key's last value was after the cut: an earlier one may win
        for name in _ITEM_KEYS - {key}:
            if getattr(tail, name) is not UNSET:
                return None  # a second conversation key after the cut
        old_items: list[Raw] = getattr(entry.top, key)
        changed[key] = old_items[:k] + [item.copy() for item in new_items]
        top = msgspec.structs.replace(entry.top, **changed)
        doc = LazyDoc(body, top)
        if new_starts is None:
            return doc, _Remembered(body, top, key, entry.root, [], frozenset())
        shift = cut - len(head)
        starts = starts[:k] + [start + shift for start in new_starts]
        return doc, _Remembered(body, top, key, entry.root, starts, frozenset(after))

    def _keep(self, remembered: _Remembered, replacing: _Remembered | None) -> None:
        """Remember `remembered` first, instead of the entry it was reused from; then
        forget the least recently used until within the count and bytes limits. A body
        past a quarter of the bytes is not kept: a few huge bodies would evict every
        session's."""
        with self._lock:
            entries = [e for e in self._entries if e is not replacing and e is not remembered]
            if _kept_bytes([remembered]) <= self._max_bytes // 4:
                entries.insert(0, remembered)
            while len(entries) > self._max_bodies or _kept_bytes(entries) > self._max_bytes:
                entries.pop()
            self._entries = entries

    def clear(self) -> None:
        with self._lock:
            self._entries = []


def _kept_bytes(entries: list[_Remembered]) -> int:
    """The bytes the entries keep alive, each buffer once: each body checked whole
    (its Raws are views into it), and a reused body's bytes plus the tail parts copied
    out of it (at most its length again) and the body its other Raws point into."""
    seen: dict[int, int] = {}
    for entry in entries:
        seen[id(entry.root)] = len(entry.root)
        if entry.root is not entry.body:  # and the parts copied out of its tails
            seen[id(entry.body)] = 2 * len(entry.body)
    return sum(seen.values())
