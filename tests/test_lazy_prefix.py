"""The prefix memory (providers/lazy_prefix.py) gives exactly the LazyDoc a full check of
the body gives (or none where the full check gives none), over conversations grown turn
by turn from every fixture and captured request, moved cache markers, changed system
prompts, interleaved sessions, resends, truncations, hostile tails and random mutations;
it reuses what it can; and it stays within its bounds."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET, Raw

from benchmarks.large_body import conversation_bodies
from devmeter.providers.lazy_doc import LazyDoc, _Top, lazy_doc
from devmeter.providers.lazy_prefix import PrefixMemory, _kept_bytes, common_prefix, item_starts
from tests.test_lazy_doc import BODIES, HOSTILE


def _field(value: Any) -> Any:
    if value is UNSET or isinstance(value, str):
        return value
    if isinstance(value, list):
        return [bytes(item) for item in value]
    assert isinstance(value, Raw)
    return bytes(value)


def _whole(doc: LazyDoc) -> Any:
    try:
        return doc.whole()
    except Exception as exc:  # both fail alike, or the test fails
        return f"raised {type(exc).__name__}: {exc}"


def check(memory: PrefixMemory, body: bytes) -> LazyDoc | None:
    """memory.lazy_doc(body), asserted equal to the full check field by field."""
    got, want = memory.lazy_doc(body), lazy_doc(body)
    if want is None:
        assert got is None
        return None
    assert got is not None and got._body is body
    for name in _Top.__struct_fields__:
        assert _field(getattr(got._top, name)) == _field(getattr(want._top, name)), name
    assert _whole(got) == _whole(want)
    return got


def _conversation(body: bytes) -> tuple[dict[str, Any], str] | None:
    doc = json.loads(body)
    for key in ("messages", "contents", "input"):
        if isinstance(doc.get(key), list) and len(doc[key]) >= 2:
            return doc, key
    return None


def _dump(doc: dict[str, Any], style: int) -> bytes:
    if style == 0:
        return json.dumps(doc, separators=(",", ":")).encode()
    if style == 1:
        return json.dumps(doc).encode()  # the Python SDKs' ", " and ": "
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def _grown(doc: dict[str, Any], key: str, style: int) -> list[bytes]:
    """The conversation re-sent one item longer each call, the cache marker on the last
    item's last block (moved as Claude Code moves it)."""
    items = doc[key]
    bodies = []
    for n in range(1, len(items) + 1):
        shown = [json.loads(json.dumps(item)) for item in items[:n]]
        last = shown[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), list) and last["content"]:
            block = last["content"][-1]
            if isinstance(block, dict):
                block["cache_control"] = {"type": "ephemeral"}
        bodies.append(_dump({**doc, key: shown}, style))
    return bodies


GROWABLE = [(name, found) for name, body in BODIES if (found := _conversation(body))]


def test_every_fixture_grown_turn_by_turn_reads_as_the_full_check() -> None:
    assert len(GROWABLE) > 10
    for style in (0, 1, 2):
        memory = PrefixMemory()
        calls = 0
        for _name, (doc, key) in GROWABLE:
            for body in _grown(doc, key, style):
                check(memory, body)
                calls += 1
        assert memory.reused > calls // 2, (style, memory.reused, calls)


def test_a_claude_code_session_reuses_every_call_after_the_first() -> None:
    bodies = conversation_bodies(12, size=60_000)
    memory = PrefixMemory()
    for body in bodies:
        check(memory, body)
    assert memory.reused == len(bodies) - 1
    # The cut is inside the previous last message: the new part was checked, not all.
    assert common_prefix(bodies[-1], bodies[-2]) > len(bodies[-2]) - 20_000


def test_changes_before_the_conversation_and_interleaved_sessions() -> None:
    one = conversation_bodies(6, size=40_000)
    other = conversation_bodies(6, size=40_000, model="claude-sonnet-5")
    memory = PrefixMemory()
    for a, b in zip(one, other, strict=True):  # two sessions, call by call
        check(memory, a)
        check(memory, b)
    assert memory.reused >= 10
    changed = json.loads(one[-1])
    changed["system"][1]["text"] = "Another system prompt."
    check(memory, json.dumps(changed, separators=(",", ":")).encode())
    check(memory, one[-1])  # an identical resend
    check(memory, one[-1][:-30])  # cut short: not JSON
    check(memory, one[-1][:-1] + b' , "model": "late"}')  # a key after the conversation
    check(memory, one[2])  # a strict prefix of the conversation, complete


def _tail_cases(good: bytes) -> dict[str, bytes]:
    """Bodies that share all of `good` up to its last message, then go wrong or strange."""
    cut = good.rindex(b',{"role"') + 1
    head = good[:cut]
    return {
        "duplicate conversation key after": head
        + b'{"role":"user","content":"x"}],"messages":[{"role":"user","content":"y"}]}',
        "duplicate conversation key, empty": head
        + b'{"role":"user","content":"x"}],"messages":[]}',
        "conversation key then null": head + b'{"role":"user","content":"x"}],"messages":null}',
        "duplicate model after": head + b'{"role":"user","content":"x"}],"model":"late"}',
        "another conversation key after": head + b'{"role":"user","content":"x"}],"input":[1]}',
        "input string after": head + b'{"role":"user","content":"x"}],"input":"s"}',
        "invalid UTF-8 in the tail": head + b'{"role":"user","content":"\xff"}]}',
        "non-ASCII in the tail": head + '{"role":"user","content":"é✓"}]}'.encode(),
        "lone surrogate in the tail": head + b'{"role":"user","content":"\\ud800"}]}',
        "deep nesting in the tail": head + b'{"c":' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        "NaN in the tail": head + b'{"c":NaN}]}',
        "trailing garbage": head + b'{"role":"user","content":"x"}]} x',
        "truncated": head + b'{"role":"user","content":"x"}',
        "whitespace between items": head[:-1] + b' ,\n\t{"role":"user","content":"x"} ]  }',
        "the conversation emptied": good[: good.index(b'"messages":[') + 12] + b"]}",
        "an extra key after": head + b'{"role":"user","content":"x"}],"zzz":{"a":[1,2]}}',
    }


# Tails read from the remembered prefix; every other case is checked whole.
REUSED = {"duplicate model after", "non-ASCII in the tail",
          "whitespace between items", "an extra key after"}  # fmt: skip


@pytest.mark.parametrize("name", list(_tail_cases(conversation_bodies(1, size=20_000)[0])))
def test_hostile_tails_after_a_good_body(name: str) -> None:
    good = conversation_bodies(1, size=20_000)[0]
    memory = PrefixMemory()
    check(memory, good)
    check(memory, _tail_cases(good)[name])
    assert memory.reused == (name in REUSED)
    check(memory, good)  # and the memory still reads the good one right after


def test_a_remembered_empty_conversation_is_not_cut() -> None:
    memory = PrefixMemory()
    check(memory, b'{"model":"m","messages":[],"stream":true}')
    check(memory, b'{"model":"m","messages":[{"a":1}],"stream":true}')
    check(memory, b'{"model":"m","messages":[{"a":1}],"stream":true}')  # resent
    assert memory.reused == 1  # only the resend: an empty list has no item to cut at


def test_a_conversation_of_one_item_grows() -> None:
    memory = PrefixMemory()
    check(memory, b'{"model":"m","messages":[{"a":1}]}')
    check(memory, b'{"model":"m","messages":[{"a":1},{"b":2}]}')
    assert memory.reused == 1


def test_a_failure_in_the_reuse_falls_back_to_the_full_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies = conversation_bodies(2, size=30_000)
    memory = PrefixMemory()
    check(memory, bodies[0])

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(PrefixMemory, "_reuse", broken)
    assert check(memory, bodies[1]) is not None and memory.reused == 0


def test_model_after_the_conversation_is_not_taken_from_the_prefix() -> None:
    """The remembered body's `model` came after its conversation; an earlier duplicate
    before the cut wins in a body that drops the late one."""
    memory = PrefixMemory()
    first = b'{"model":"early","messages":[{"a":1},{"b":2}],"model":"late"}'
    then = b'{"model":"early","messages":[{"a":1},{"b":2},{"c":3}]}'
    check(memory, first)
    doc = check(memory, then)
    assert doc is not None and doc["model"] == "early"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bodies_after_a_good_one(name: str) -> None:
    memory = PrefixMemory()
    check(memory, b'{"model":"m","messages":[{"role":"user","content":"x"},{"a":1}]}')
    check(memory, HOSTILE[name])


def test_item_offsets_are_verified() -> None:
    body = b'[{"a":1}, {"b":2} ,3]'
    items = [Raw(b'{"a":1}'), Raw(b'{"b":2}'), Raw(b"3")]
    assert item_starts(body, 1, items) is None  # two separators: not one layout
    even = b'[{"a":1}, {"b":2}, 3]'
    assert item_starts(even, 1, items) == [1, 10, 19]
    assert [even[s : s + len(i)] for s, i in zip([1, 10, 19], items, strict=True)] == [
        bytes(i) for i in items
    ]


def test_common_prefix() -> None:
    rng = random.Random(7)
    a = bytes(rng.randrange(256) for _ in range(300_000))
    for at in (0, 1, 31, 32, 65_535, 65_536, 65_537, 200_000, 299_999):
        b = a[:at] + bytes([a[at] ^ 1]) + a[at + 1 :]
        assert common_prefix(a, b) == at
    assert common_prefix(a, a) == len(a)
    assert common_prefix(a, a[:1000]) == 1000
    assert common_prefix(b"", a) == 0


def test_memory_stays_within_its_bounds() -> None:
    memory = PrefixMemory(max_bodies=4, max_bytes=1 << 20)
    rng = random.Random(1)
    for i in range(30):  # distinct bodies of up to 400 KB, each a new session
        filler = "x" * rng.randrange(1, 400_000)
        body = json.dumps({"model": f"m{i}", "messages": [{"c": filler}, {"c": i}]}).encode()
        check(memory, body)
        assert len(memory._entries) <= 4
        assert _kept_bytes(memory._entries) <= 1 << 20
    big = json.dumps({"messages": [{"c": "y" * (300 << 10)}, {"c": 1}]}).encode()
    check(memory, big)
    assert all(entry.body is not big for entry in memory._entries)  # past a quarter


def test_sessions_read_from_several_threads() -> None:
    memory = PrefixMemory()
    sessions = [conversation_bodies(8, size=30_000, model=f"m{i}") for i in range(3)]
    failures: list[BaseException] = []

    def run(bodies: list[bytes]) -> None:
        try:
            for body in bodies:
                check(memory, body)
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(bodies,)) for bodies in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert memory.reused > 0


_BASE = conversation_bodies(2, size=20_000)
_TOKENS = [b",", b"]", b"}", b"[", b"{", b'"', b" ", b"\n", b":", b'"messages":[', b'"model":"x"',
           b'"messages"', b'{"role":"user","content":"z"}', b"\xff", "é".encode(), b"\\u00e9",
           b"null", b"1e400", b"-0", b'"input":"s"', b"\\"]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 1),
    at=st.floats(0.0, 1.0),
    cut=st.integers(0, 40),
    insert=st.lists(st.sampled_from(_TOKENS), max_size=4),
)
def test_random_mutations_read_as_the_full_check(
    which: int, at: float, cut: int, insert: list[bytes]
) -> None:
    """A remembered body, then a mutation of the next one near a random place (weighted
    to its end, where real bodies change): inserted tokens, deleted bytes."""
    memory = PrefixMemory()
    check(memory, _BASE[0])
    body = _BASE[which]
    where = int(len(body) * (1 - at * at))  # anywhere, most often near the end
    check(memory, body[:where] + b"".join(insert) + body[where + cut :])
