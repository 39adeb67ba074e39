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
