import gzip
import zlib

import brotli
import pytest
import zstandard

from devmeter.decoding import decoder_for

BODY = b'data: {"type":"message_delta","usage":{"output_tokens":42}}\n\n' * 50


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("identity", lambda b: b),
        ("", lambda b: b),
    ],
)
def test_decodes_any_chunking(encoding: str, compress: object) -> None:
    compressed = compress(BODY)  # type: ignore[operator]
    for size in (1, 7, 4096):
        decoder = decoder_for(encoding)
        assert decoder is not None
        out = b"".join(
            decoder.decode(compressed[i : i + size]) for i in range(0, len(compressed), size)
        )
        assert decoder.decode(b"") == b""  # mitmproxy calls the tap with b"" at the end
        assert out == BODY


def test_unknown_encoding_has_no_decoder() -> None:
    assert decoder_for("compress") is None


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_bomb_stops_at_the_budget_in_bounded_pieces(encoding: str) -> None:
    raw = b"A" * (64 << 20)
    packed = {
        "gzip": lambda: gzip.compress(raw, 9),
        "deflate": lambda: zlib.compress(raw, 9),
        "br": lambda: brotli.compress(raw, quality=5),
        "zstd": lambda: zstandard.ZstdCompressor().compress(raw),
    }[encoding]()
    decoder = decoder_for(encoding, floor=1 << 20, ratio=10)
    assert decoder is not None
    pieces: list[int] = []
    decoder.feed(packed, lambda piece: pieces.append(len(piece)))
    assert decoder.limit_error is not None and "metering stopped reading it" in decoder.limit_error
    assert sum(pieces) <= (1 << 20) + 10 * len(packed) + (1 << 20)  # brotli may overshoot a block
    assert max(pieces) <= 2 << 20
    decoder.feed(packed, lambda piece: pieces.append(len(piece)))  # nothing more once stopped
    assert sum(pieces) <= (1 << 20) + 10 * len(packed) + (1 << 20)
