"""A history import's reading and parsing in a forked child, while the parent stores.

`devmeter import` on a whole history has two halves of about the same CPU: reading and
parsing the files (JSON, rows, prices; genai-prices' import when no rates are kept) and
storing the rows (SQLite, its indexes and rollups). In one process the writer thread
cannot overlap them: it needs the GIL back after every SQLite statement while the parser
holds it, so most batches were stored after parsing ended. A forked child has a GIL of
its own: it reads and parses, the parent stores each batch as it arrives, exactly as
the in-process import would (the same `store`, the same transactions, the same marks).

The child sends frames over a pipe, each a length and a `marshal` of one message (rows
are tuples of ints, floats, strings and None: marshal is several times faster than
pickle for them): ("batch", rows, marks, files done), then ("end", files read, lines,
errors) or ("error", the pickled exception). A child that dies without its "end" is an
error of the import: what was stored before is committed with its marks, so the next
import reads on from there and nothing is doubled.

Only `history.run_import` calls this, and only where `history._can_fork` allows it; the
child never returns into the caller's code (`os._exit`).
"""

from __future__ import annotations

import marshal
import os
import pickle
import signal
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from devmeter.importers.history import Batch, ImportResult

_LENGTH = struct.Struct("<Q")


def batches(
    source: Iterator[Batch], result: ImportResult, at_end: Callable[[], None]
) -> Iterator[Batch]:
    """`source`'s batches, read and parsed in a forked child; `at_end` runs in the child
    after its last batch (the rates it priced with are kept there). The child's counts
    (files read, lines, unreadable files) are added to `result` when it ends. Raises
    OSError when no child can be made (the caller then reads in its own process)."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child
        os.close(read_fd)
        _child(source, result, at_end, write_fd)  # never returns
    os.close(write_fd)
    return _parent(pid, read_fd, result)


def _child(
    source: Iterator[Batch], result: ImportResult, at_end: Callable[[], None], fd: int
) -> None:
    code = 1
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                for rows, marks, done in source:
                    flat = [(str(p), m.inode, m.size, m.mtime_ns, m.offset, m.state)
                            for p, m in marks.items()]  # fmt: skip
                    _send(out, ("batch", rows, flat, done))
                at_end()
                end: tuple[Any, ...] = ("end", result.files_read, result.lines, result.errors)
            except BaseException as exc:  # every failure goes to the parent
                end = ("error", _pickled(exc))
            _send(out, end)
        code = 0
    finally:
        os._exit(code)  # no atexit, no buffers of the parent's flushed twice


def _pickled(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:  # one pickle cannot carry: named instead
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


def _parent(pid: int, fd: int, result: ImportResult) -> Iterator[Batch]:
    from devmeter.importers.history import FileMark

    ended = False
    try:
        with os.fdopen(fd, "rb") as feed:
            while True:
                message = _receive(feed)
                if message is None:
                    raise RuntimeError(
                        "the import's reading process ended before it finished; what it "
                        "read is stored: run the import again to read on"
                    )
                if message[0] == "batch":
                    _, rows, flat, done = message
                    marks = {Path(path): FileMark(inode, size, mtime_ns, offset, state)
                             for path, inode, size, mtime_ns, offset, state in flat}  # fmt: skip
                    yield rows, marks, done
                elif message[0] == "end":
                    _, files_read, lines, errors = message
                    result.files_read += files_read
                    result.lines += lines
                    result.errors += errors
                    ended = True
                    return
                else:
                    raise pickle.loads(message[1])
    finally:
        _reap(pid, ended)


def _reap(pid: int, ended: bool) -> None:
    """Wait for the child; one still parsing (the parent stopped: a failed batch, ^C)
    is stopped first, so no process outlives the import."""
    try:
        if not ended:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _send(out: BinaryIO, message: tuple[Any, ...]) -> None:
    data = marshal.dumps(message)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _receive(feed: BinaryIO) -> tuple[Any, ...] | None:
    """The next message, or None when the pipe ended before a whole one."""
    head = feed.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = feed.read(length)
    if len(data) < length:
        return None
    message = marshal.loads(data)
    return message if isinstance(message, tuple) and message else None
