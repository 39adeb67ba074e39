"""Incremental, bounded decoders for compressed bodies.

The proxy forwards the compressed bytes untouched and decodes a copy for metering,
chunk by chunk, so a stream is never held back to be decompressed whole.

A compressed body can expand a thousand times or more (a 1.6 KB brotli "bomb" is 8 GB),
so no decoder ever produces more than `PIECE` bytes at once, and a body may decode to at
most `FLOOR` bytes plus `RATIO` times its compressed size: real JSON and SSE compress
well under that ratio, a bomb far over it. Past the budget a decoder stops, says why in
`limit_error`, and produces nothing more; what it would have decoded is only a cost of
metering, the client gets every byte as sent.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol

import brotli
import zstandard

PIECE = 1 << 20  # the most one step hands on: memory held per body, whatever it expands to
FLOOR = 8 << 20  # every body may decode this much...
RATIO = 200  # ...plus this many per compressed byte (JSON, SSE: ~3-70x; bombs: 1,000x+)

OnPiece = Callable[[bytes], object]


class Decoder(Protocol):
    limit_error: str | None

    def feed(self, data: bytes, on_piece: OnPiece) -> None:
        """Decode `data`, handing the output to `on_piece` at most `PIECE` bytes at a time."""
        ...

    def decode(self, data: bytes) -> bytes: ...


class _OverBudget(Exception):
    """Raised inside a decode step when the body has decoded all it may."""


class _Bounded:
    """The budget shared by every decoder; subclasses implement `_run`."""

    def __init__(self, floor: int = FLOOR, ratio: int = RATIO) -> None:
        self._floor = floor
        self._ratio = ratio
        self.compressed = 0
        self.decoded = 0
        self.limit_error: str | None = None

    def feed(self, data: bytes, on_piece: OnPiece) -> None:
        if self.limit_error is not None or not data:
            return
        self.compressed += len(data)
        try:
            self._run(data, on_piece)
        except _OverBudget:
            self.limit_error = (
                f"compressed body of {self.compressed:,} bytes decodes to over "
                f"{self.decoded:,} (more than {self._floor >> 20} MiB + {self._ratio}x its "
                "compressed size): metering stopped reading it, the client got it all"
            )

    def decode(self, data: bytes) -> bytes:
        """All of `data`'s output at once (within the budget): for tests and small bodies."""
        pieces: list[bytes] = []
        self.feed(data, pieces.append)
        return b"".join(pieces)

    def _room(self) -> int:
        """How much more may be decoded now, at most one piece; raises when nothing."""
        room = self._floor + self._ratio * self.compressed - self.decoded
        if room <= 0:
            raise _OverBudget
        return min(room, PIECE)

    def _hand_on(self, piece: bytes, on_piece: OnPiece) -> None:
        if piece:
            self.decoded += len(piece)
            on_piece(piece)

    def _run(self, data: bytes, on_piece: OnPiece) -> None:
        raise NotImplementedError


class Identity(_Bounded):
    """Nothing to decode: the bytes are handed on as they are, unbounded by the ratio."""

    def feed(self, data: bytes, on_piece: OnPiece) -> None:
        if data:
            on_piece(data)


class Zlib(_Bounded):
    def __init__(self, wbits: int, floor: int = FLOOR, ratio: int = RATIO) -> None:
        super().__init__(floor, ratio)
        self._d = zlib.decompressobj(wbits)

    def _run(self, data: bytes, on_piece: OnPiece) -> None:
        pending = data
        while True:
            room = self._room()
            piece = self._d.decompress(pending, room)
            pending = self._d.unconsumed_tail
            self._hand_on(piece, on_piece)
            # A full piece may leave output inside zlib even when all input was taken.
            if not pending and len(piece) < room:
                return


class Brotli(_Bounded):
    def __init__(self, floor: int = FLOOR, ratio: int = RATIO) -> None:
        super().__init__(floor, ratio)
        self._d = brotli.Decompressor()

    def _run(self, data: bytes, on_piece: OnPiece) -> None:
        # brotli >= 1.2: with a limit it keeps the rest, to be drained with empty input.
        self._hand_on(self._d.process(data, output_buffer_limit=self._room()), on_piece)
        while not self._d.can_accept_more_data():
            self._hand_on(self._d.process(b"", output_buffer_limit=self._room()), on_piece)


class _Sink:
    """Where zstandard's stream writer puts each piece it decodes: checked, then handed on."""

    def __init__(self, owner: Zstd) -> None:
        self.owner = owner
        self.on_piece: OnPiece = _ignore

    def write(self, piece: bytes) -> int:
        owner = self.owner
        room = owner._room()
        owner._hand_on(piece[:room], self.on_piece)
        if len(piece) > room:
            raise _OverBudget
        return len(piece)


class Zstd(_Bounded):
    """zstandard's decompressobj has no output limit; its stream writer hands output on in
    `PIECE`-sized writes to a sink, which stops it by raising once over budget."""

    def __init__(self, floor: int = FLOOR, ratio: int = RATIO) -> None:
        super().__init__(floor, ratio)
        self._sink = _Sink(self)
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            self._sink, write_size=PIECE, write_return_read=True
        )

    def _run(self, data: bytes, on_piece: OnPiece) -> None:
        self._sink.on_piece = on_piece
        try:
            self._writer.write(data)
        finally:
            self._sink.on_piece = _ignore


def _ignore(_: bytes) -> None:
    """A sink's callback between two feeds."""


def decoder_for(
    content_encoding: str | None, floor: int = FLOOR, ratio: int = RATIO
) -> Decoder | None:
    """A decoder for the header's value; None for an encoding devmeter cannot read."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return Identity()
    if encoding in ("gzip", "x-gzip"):
        return Zlib(16 + zlib.MAX_WBITS, floor, ratio)
    if encoding == "deflate":
        return Zlib(32 + zlib.MAX_WBITS, floor, ratio)  # zlib or gzip header, auto-detected
    if encoding == "br":
        return Brotli(floor, ratio)
    if encoding == "zstd":
        return Zstd(floor, ratio)
    return None


def decode_bounded(
    body: bytes, content_encoding: str | None, limit: int
) -> tuple[bytes, str | None]:
    """A whole (small, buffered) body decoded, but never past `limit` bytes: the body and
    why it stopped short, if it did. An encoding devmeter cannot read gives b"" and why."""
    decoder = decoder_for(content_encoding, floor=limit, ratio=0)
    if decoder is None:
        return b"", f"body in an encoding devmeter cannot decode: {content_encoding}"
    if isinstance(decoder, Identity):
        return body[:limit], None if len(body) <= limit else f"body over {limit:,} bytes"
    try:
        return decoder.decode(body), decoder.limit_error
    except Exception as exc:  # corrupt data: what matters is that metering goes on
        return b"", f"could not decode the {content_encoding} body: {exc}"
