"""Which git repository and branch a directory belongs to, without spawning git.

The proxy asks this for (nearly) every call, so it reads the files git itself reads:
walk up from the directory to the first `.git` (a directory, or a file holding
`gitdir: <path>` for worktrees and submodules), then read `HEAD` in that git dir:
`ref: refs/heads/x` is branch `x`, a bare object id is a detached HEAD (reported
as its short sha). Answers are cached for a short TTL because branches change.

The paths come from the network (`X-Devmeter-Project`, Claude Code's working directory)
and the proxy asks on its event loop, so nothing here may block: only regular files are
opened (a FIFO `HEAD` would wait for a writer for ever), non-blocking and read to a
bound, and `GitInfo` reads the disk in a worker thread it waits on briefly (a hung NFS
mount or a slow automount answers "no repo" rather than stalling every client; the
lookup keeps going, and its answer is cached when it comes).

Like git, the walk stops at the filesystem root; unlike git, it ignores
GIT_DIR, GIT_CEILING_DIRECTORIES and filesystem boundaries.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

SHORT_SHA = 7  # characters of a detached HEAD's object id, as `git log --oneline` shows it
MAX_READ = 4096  # HEAD and `.git` files are one short line
# Flags for opening a file named by the network: never wait (a FIFO), never adopt a tty.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True)
class RepoInfo:
    """A git working tree: its top level directory and what HEAD points at."""

    root: str  # absolute path of the working tree's top level (`git rev-parse --show-toplevel`)
    branch: str | None  # branch name, the short sha when detached, None if HEAD is unreadable
    detached: bool = False


def find_git_dir(path: str) -> tuple[str, str] | None:
    """(top level, git dir) of the working tree containing `path`, or None if there is none."""
    current = os.path.abspath(path)
    if not os.path.isdir(current):
        if not os.path.exists(current):
            return None
        current = os.path.dirname(current)
    while True:
        dot_git = os.path.join(current, ".git")
        if os.path.isdir(dot_git):
            return current, dot_git
        if os.path.isfile(dot_git):
            git_dir = _read_gitdir_file(dot_git)
            if git_dir is not None:
                return current, git_dir
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def read_head(git_dir: str) -> tuple[str | None, bool]:
    """(branch, detached) from `git_dir/HEAD`; (None, False) when it cannot be read."""
    text = read_small_file(os.path.join(git_dir, "HEAD"))
    if text is None:
        return None, False
    head = text.strip()
    if head.startswith("ref:"):
        ref = head[4:].strip()
        for prefix in ("refs/heads/", "refs/"):
            if ref.startswith(prefix):
                return ref[len(prefix) :] or None, False
        return ref or None, False
    if len(head) >= SHORT_SHA and all(c in "0123456789abcdef" for c in head.lower()):
        return head[:SHORT_SHA].lower(), True
    return None, False


def read_small_file(path: str, limit: int = MAX_READ) -> str | None:
    """The first `limit` bytes of a regular file as text; None for anything else (a FIFO,
    a device, a directory) or when it cannot be read. Checked before opening, and again
    on the open file (it may have been swapped in between)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def _read_gitdir_file(dot_git_file: str) -> str | None:
    """The git dir a `.git` file points at (`gitdir: ...`, relative to the file's directory)."""
    text = read_small_file(dot_git_file)
    if text is None:
        return None
    first = text.split("\n", 1)[0].strip()
    if not first.startswith("gitdir:"):
        return None
    target = first[len("gitdir:") :].strip()
    if not target:
        return None
    target = os.path.normpath(os.path.join(os.path.dirname(dot_git_file), target))
    return target if os.path.isdir(target) else None


class GitInfo:
    """`repo_for` with a per-path cache; entries live `ttl` seconds (branches change).

    The disk is read in a short-lived daemon thread; `repo_for` waits for it at most
    `timeout` seconds. A lookup still running after that (a hung or slow mount) is not
    waited for again: until it finishes, calls for that path get the last answer, or
    None, at once, and at most `max_pending` such lookups run at a time (beyond that,
    new paths get None without a lookup). Safe to call from several threads.
    """

    def __init__(
        self,
        ttl: float = 2.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        *,
        timeout: float = 0.5,
        max_pending: int = 8,
        resolve: Callable[[str], RepoInfo | None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self.max_pending = max_pending
        self._clock = clock
        self._resolve = resolve or repo_for_uncached
        self._cache: dict[str, tuple[float, RepoInfo | None]] = {}
        self._pending: dict[str, Future[RepoInfo | None]] = {}
        self._lock = threading.Lock()

    def repo_for(self, path: str) -> RepoInfo | None:
        return self.repo_until(path)[0]

    def now(self) -> float:
        """The clock `repo_until`'s expiries are on."""
        return self._clock()

    def repo_until(self, path: str) -> tuple[RepoInfo | None, float]:
        """`repo_for`, and until when (on `now()`'s clock) the answer stays the cached one:
        what a caller keeping the answer must drop it by, to be no staler than this cache.
        0.0 for an answer not cached (a lookup still under way)."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit[0] > now:
                return hit[1], hit[0]
            known = hit[1] if hit is not None else None
            if path in self._pending or len(self._pending) >= self.max_pending:
                return known, 0.0  # a slow filesystem: never wait on it twice
            future: Future[RepoInfo | None] = Future()
            self._pending[path] = future
        worker = threading.Thread(
            target=self._look_up, args=(path, future), name="devmeter-git", daemon=True
        )
        worker.start()
        try:
            info = future.result(timeout=self.timeout)
        except FutureTimeout:
            return known, 0.0
        with self._lock:
            hit = self._cache.get(path)
        return info, (hit[0] if hit is not None and hit[1] is info else 0.0)

    def _look_up(self, path: str, future: Future[RepoInfo | None]) -> None:
        try:
            info = self._resolve(path)
        except Exception:  # a path from the network must never break attribution
            info = None
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[path] = (self._clock() + self.ttl, info)
            self._pending.pop(path, None)
        future.set_result(info)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def repo_for_uncached(path: str) -> RepoInfo | None:
    """The working tree containing `path` (a directory or file), read from disk now."""
    try:
        found = find_git_dir(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    if found is None:
        return None
    root, git_dir = found
    branch, detached = read_head(git_dir)
    # Symlinks resolved, as `git rev-parse --show-toplevel` reports it.
    return RepoInfo(root=os.path.realpath(root), branch=branch, detached=detached)


_default = GitInfo()


def repo_for(path: str) -> RepoInfo | None:
    """The working tree containing `path`, cached for a couple of seconds; None if not in one."""
    return _default.repo_for(path)
