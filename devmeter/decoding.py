"""Incremental decoders for compressed response bodies.

The proxy forwards the compressed bytes untouched and decodes a copy for metering,
chunk by chunk, so a stream is never held back to be decompressed whole.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...


class Identity:
    def decode(self, data: bytes) -> bytes:
        return data


class Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> bytes:
        return self._d.decompress(data)


class Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decode(self, data: bytes) -> bytes:
        return self._d.process(data) if data else b""


class Zstd:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decode(self, data: bytes) -> bytes:
        return self._d.decompress(data) if data else b""


def decoder_for(content_encoding: str | None) -> Decoder | None:
    """A decoder for the header's value; None for an encoding devmeter cannot read."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return Identity()
    if encoding in ("gzip", "x-gzip"):
        return Zlib(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return Zlib(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto-detected
    if encoding == "br":
        return Brotli()
    if encoding == "zstd":
        return Zstd()
    return None
