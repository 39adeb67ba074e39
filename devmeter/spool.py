"""The spool: each call's ledger row on disk the moment it is metered, before SQLite has it.

The proxy appends a row here (one `write`, no fsync) and answers the client at once; the
ledger's writer thread commits rows to SQLite in batches and records, in the same
transaction, how far into the spool it got (a `Mark`). A proxy killed at any moment has
every answered call either in SQLite or in the spool past the mark, and the next start
replays the latter. That is the same promise SQLite's WAL gives at synchronous=NORMAL
(a killed process loses nothing; a power cut may lose the last moments), without making
the client wait for a commit on another thread.

Files are `<n>.jsonl` in one directory, one JSON array per line; a file is deleted once
every row in it is committed. The spool holds exactly what the ledger holds, no more.

Where the system can reserve a file's disk space up front (posix_fallocate: Linux), a
file is reserved whole and mapped into memory, and a row is copied into the mapping:
no system call per row. A `write` releases the GIL, and on the proxy's busy event loop
getting it back from the ledger writer or the secrets worker costs more CPU than the
write itself (~17 us a call in benchmarks/hook_cost.py against ~1 us for the copy), and
up to the interpreter's switch interval in latency. The mapping is the kernel's page
cache, as a written file is, so a killed process loses nothing it copied. A file a
killed run mapped ends in zero bytes (no JSON line has one): reading stops there.
Elsewhere, or when reserving fails for a reason other than a full disk, rows are
appended with `write` as before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from devmeter import fastjson
from devmeter.diagnostics import say
from devmeter.paths import make_private_dir

# A new file after this many bytes, so committed rows do not pile up on disk.
FILE_BYTES = 4 * 1024 * 1024
# Whether this system can reserve a file's blocks up front: only then may a row go into a
# mapping, which a full disk would otherwise meet with SIGBUS instead of an OSError.
CAN_MAP = hasattr(os, "posix_fallocate")
# A mapped file's reservation: small, so a nearly full disk still takes one (a 4 MiB
# reservation failed on a disk with 3 MiB free, where rows of 1 KiB still fit), and a
# new file after it costs the proxy ~50 us once for hundreds of rows.
MAP_BYTES = 256 * 1024


class Mark(NamedTuple):
    """Where a row ends in the spool: file number and byte offset after its line."""

    file: int
    offset: int


def spool_dir(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".spool")


class SpoolBusy(RuntimeError):
    """Another process writes this spool (and so this ledger)."""


class Spool:
    """Appends rows; thread-safe. `append` raises OSError when the disk refuses.

    One process owns a spool: it holds a lock on `lock` in the directory for as long as
    it lives (the kernel drops it when the process dies, SIGKILL included). A second
    writer would replay the first one's rows as its own and count them twice.
    Raises SpoolBusy when another process holds it, OSError when the directory cannot be
    made or locked.
    """

    def __init__(
        self, directory: Path, file_bytes: int | None = None, mapped: bool = CAN_MAP
    ) -> None:
        self.directory = directory
        self._file_bytes = file_bytes or (MAP_BYTES if mapped else FILE_BYTES)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.mapped = mapped  # rows copied into a mapped, reserved file (else written)
        self._map: mmap.mmap | None = None
        self._owner = _own(directory)
        existing = _files(directory)
        # Never append to a file from an earlier run: its rows may still need replaying.
        self._number = (existing[-1] + 1) if existing else 1
        self._offset = 0
        self.first_file = self._number  # files numbered below are an earlier run's
        self.keep_before = 0  # files numbered below are never deleted (not yet replayed)

    def append(self, row: tuple[Any, ...]) -> Mark:
        line = fastjson.dumps(row) + b"\n"
        with self._lock:
            if self._map is not None and self._offset + len(line) > len(self._map):
                self._open_next(len(line))  # this file is full: the row starts the next
            if self._fd is None or (self._map is None and self._offset >= self._file_bytes):
                self._open_next(len(line))
            assert self._fd is not None
            if self._map is not None:
                self._map[self._offset : self._offset + len(line)] = line
                self._offset += len(line)
                return Mark(self._number, self._offset)
            try:
                written = os.write(self._fd, line)
                if written != len(line):  # a short write to a regular file: the disk is full
                    raise OSError(f"short write to the spool in {self.directory}")
            except OSError:
                # A cut line may now end this file: cut it back to its last whole row, or
                # (if even that fails) start the next row in a new file, or replay would
                # read the two as one broken line and lose the good one.
                if not self._cut_back():
                    self._abandon()
                raise
            self._offset += written
            return Mark(self._number, self._offset)

    def _cut_back(self) -> bool:
        """Drop a partly written row from the end of the current file; False if it stays.

        Truncating frees space, so it works on a full disk too; the file is then whole
        and the next row can go on in it, rather than in a new file per failed write.
        """
        if self._fd is None:
            return False
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            return False
        return True

    def _abandon(self) -> None:
        """Stop writing the current file: the next row starts a new one."""
        if self._fd is not None:
            self._close_file()
            if self._offset == 0:  # nothing in it: no file left behind, its number reused
                _unlink(self.directory / f"{self._number}.jsonl")
            else:
                self._number += 1

    def _close_file(self) -> None:
        if self._map is not None:
            with contextlib.suppress(OSError, ValueError):
                self._map.close()
            self._map = None
            if self._fd is not None:
                # Its reserved, unwritten tail given back: the file ends at its last row.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._offset)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _open_next(self, line_bytes: int = 0) -> None:
        self._abandon()
        make_private_dir(self.directory)
        if self.mapped:
            self._open_mapped(max(self._file_bytes, line_bytes))
            if self.mapped:
                return
        path = self.directory / f"{self._number}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._offset = os.fstat(self._fd).st_size

    def _open_mapped(self, size: int) -> None:
        """A new file of `size` bytes reserved on disk and mapped. Raises OSError when the
        disk is full (the row is then held in memory, as for a failed write); falls back
        to writing for good when the file system cannot reserve space."""
        while True:
            path = self.directory / f"{self._number}.jsonl"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size == 0:
                break
            os.close(fd)  # a file left behind (its delete failed): never written over
            self._number += 1
        try:
            os.posix_fallocate(fd, 0, size)
            mapping = mmap.mmap(fd, size)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            _unlink(path)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.mapped = False  # no reserving (or mapping) here: rows are written
            return
        self._fd, self._map, self._offset = fd, mapping, 0

    def release(self, mark: Mark, *, everything: bool = False) -> None:
        """Delete the files every row of which is committed (all rows up to `mark` are).

        `everything`: the row at `mark` is the last one appended (a clean shutdown).
        """
        with self._lock:
            if everything and self._number == mark.file:
                self._abandon()
            for number in _files(self.directory):
                # Files before the mark's are whole; the mark's own is still being written.
                if number < self.keep_before:
                    continue
                if number < mark.file or (everything and number == mark.file):
                    _unlink(self.directory / f"{number}.jsonl")

    def close(self) -> None:
        with self._lock:
            self._close_file()
            if self._owner is not None:
                os.close(self._owner)  # and with it the lock
                self._owner = None


def _own(directory: Path) -> int | None:
    """Lock the spool for this process; the lock file names the pid that holds it."""
    make_private_dir(directory)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; one proxy per ledger is on you
        return fd
    try:
        # POSIX record locks belong to the process: another process is refused, while
        # this one may open the spool again (a restarted writer, tests).
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpoolBusy(
            f"devmeter: another devmeter proxy (pid {holder}) is writing to the ledger in "
            f"{directory.parent}. Stop it first, or give this one its own data folder with "
            "DEVMETER_HOME=DIR."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def pending(
    directory: Path, mark: Mark | None, before: int | None = None
) -> Iterator[tuple[Mark, tuple[Any, ...]]]:
    """Rows a previous run spooled past `mark` (None: all of them), in spool order, from
    files numbered below `before` (this run's first file: its own files are never opened,
    as this run may drop one meanwhile, e.g. when the disk is full).

    A line that does not parse (torn by a power cut) is reported and skipped: there is
    nothing else to recover it from.
    """
    for number in _files(directory):
        if before is not None and number >= before:
            break
        if mark is not None and number < mark.file:
            continue
        start = mark.offset if mark is not None and number == mark.file else 0
        path = directory / f"{number}.jsonl"
        with path.open("rb") as f:
            f.seek(start)
            offset = start
            for line in f:
                offset += len(line)
                end = line.find(b"\0")
                if end >= 0:
                    # The unwritten rest of a file a killed run had mapped (see the module
                    # docstring); a row it was copying when killed ends in it, cut short.
                    if end > 0:
                        say(
                            f"devmeter: skipped an unreadable row in {path} at byte "
                            f"{offset - len(line)} (cut short by a crash?)"
                        )
                    break
                try:
                    row = json.loads(line)
                    if not isinstance(row, list):
                        raise ValueError("not a row")
                except ValueError:
                    say(
                        f"devmeter: skipped an unreadable row in {path} at byte "
                        f"{offset - len(line)} (cut short by a crash?)"
                    )
                    continue
                yield Mark(number, offset), tuple(row)


def _files(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []  # no spool yet, or something else in its place: appending will say so
    numbers = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "jsonl" and stem.isdigit():
            numbers.append(int(stem))
    return sorted(numbers)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # left behind: replay skips it by the mark; say so once
        say(f"devmeter: could not delete {path}: {exc}")
