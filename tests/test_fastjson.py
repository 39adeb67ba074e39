"""fastjson: orjson's speed with the standard library's answers."""

from __future__ import annotations

import json
import math

import pytest

from devmeter import fastjson


@pytest.mark.parametrize(
    "text",
    [
        '{"model": "claude-sonnet-4-5", "max_tokens": 64, "nested": [1, 2.5, null, true]}',
        '"caf\\u00e9 \\ud83d\\udc4b \u65e5\u672c"',  # escapes and raw UTF-8
        '"\\ud800 a lone surrogate"',  # valid JSON that orjson refuses
        '{"n": NaN, "i": -Infinity}',  # accepted by json, refused by orjson
        '{"k": 1, "k": 2}',  # the last duplicate wins, as in json
    ],
)
def test_loads_gives_what_json_gives(text: str) -> None:
    expected = json.loads(text)
    for data in (text, text.encode(), bytearray(text.encode()), memoryview(text.encode())):
        got = fastjson.loads(data)
        if isinstance(expected, dict) and "n" in expected:
            assert math.isnan(got["n"]) and got["i"] == -math.inf
        else:
            assert got == expected


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1,]", '"\xff"', "{} x"])
def test_loads_refuses_what_json_refuses_with_a_value_error(text: str) -> None:
    data = text.encode("latin-1")  # "\xff": not UTF-8
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        fastjson.loads(data)


def test_an_integer_beyond_64_bits_reads_as_a_float_the_one_difference() -> None:
    # orjson's choice; no count devmeter reads (tokens, dollars) comes near 2**64.
    assert fastjson.loads(b'{"n": 123456789012345678901234567890}') == {"n": 1.2345678901234568e29}


def test_invalid_utf8_is_refused_as_json_refuses_it() -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        fastjson.loads(b'{"a": "\xff\xfe"}')


@pytest.mark.parametrize(
    "value",
    [
        (1764000000.123456, "claude-code", None, 0, 15400000000, "caf\u00e9 \U0001f44b", True),
        (2**70, "big"),  # orjson refuses integers beyond 64 bits
        ("\ud800 lone surrogate", 1),  # orjson refuses what UTF-8 cannot hold
    ],
)
def test_dumps_is_one_compact_line_that_reads_back_as_the_same_values(value: tuple) -> None:
    line = fastjson.dumps(value)
    assert b"\n" not in line and b", " not in line
    assert json.loads(line) == list(value)


def test_dumps_sorted_is_the_same_bytes_for_the_same_data_in_any_order() -> None:
    a = {"b": [1, {"y": 2, "x": "\u00e9"}], "a": object.__name__}
    b = {"a": "object", "b": [1, {"x": "\u00e9", "y": 2}]}
    assert fastjson.dumps_sorted(a) == fastjson.dumps_sorted(b)
    assert fastjson.dumps_sorted(["\ud800"]) == b'["\\ud800"]'  # refused by orjson
    assert json.loads(fastjson.dumps_sorted({"when": 3 + 4j})) == {"when": "(3+4j)"}  # str()
