"""Which git repository and branch a directory belongs to, without spawning git.

The proxy asks this for (nearly) every call, so it reads the files git itself reads:
walk up from the directory to the first `.git` (a directory, or a file holding
`gitdir: <path>` for worktrees and submodules), then read `HEAD` in that git dir:
`ref: refs/heads/x` is branch `x`, a bare object id is a detached HEAD (reported
as its short sha). Answers are cached for a short TTL because branches change.

Like git, the walk stops at the filesystem root; unlike git, it ignores
GIT_DIR, GIT_CEILING_DIRECTORIES and filesystem boundaries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

SHORT_SHA = 7  # characters of a detached HEAD's object id, as `git log --oneline` shows it


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
    try:
        with open(os.path.join(git_dir, "HEAD"), encoding="utf-8", errors="replace") as f:
            head = f.read(4096).strip()
    except OSError:
        return None, False
    if head.startswith("ref:"):
        ref = head[4:].strip()
        for prefix in ("refs/heads/", "refs/"):
            if ref.startswith(prefix):
                return ref[len(prefix) :] or None, False
        return ref or None, False
    if len(head) >= SHORT_SHA and all(c in "0123456789abcdef" for c in head.lower()):
        return head[:SHORT_SHA].lower(), True
    return None, False


def _read_gitdir_file(dot_git_file: str) -> str | None:
    """The git dir a `.git` file points at (`gitdir: ...`, relative to the file's directory)."""
    try:
        with open(dot_git_file, encoding="utf-8", errors="replace") as f:
            first = f.readline(4096).strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    target = first[len("gitdir:") :].strip()
    if not target:
        return None
    target = os.path.normpath(os.path.join(os.path.dirname(dot_git_file), target))
    return target if os.path.isdir(target) else None


class GitInfo:
    """`repo_for` with a per-path cache; entries live `ttl` seconds (branches change)."""

    def __init__(
        self,
        ttl: float = 2.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[float, RepoInfo | None]] = {}

    def repo_for(self, path: str) -> RepoInfo | None:
        now = self._clock()
        hit = self._cache.get(path)
        if hit is not None and hit[0] > now:
            return hit[1]
        info = repo_for_uncached(path)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[path] = (now + self.ttl, info)
        return info

    def clear(self) -> None:
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
