"""gitinfo reads what git reads: checked against throwaway repos and git itself."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from devmeter.gitinfo import GitInfo, RepoInfo, repo_for_uncached

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def make_repo(path: Path, branch: str = "main", commit: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    if commit:
        (path / "README").write_text("hi\n")
        git(path, "add", "README")
        git(path, "commit", "-q", "-m", "first")
    return path


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repo_top_level_and_branch_from_a_nested_directory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    nested = repo / "src" / "pkg"
    nested.mkdir(parents=True)

    info = repo_for_uncached(str(nested))

    assert info == RepoInfo(root=git(nested, "rev-parse", "--show-toplevel"), branch="main")
    assert info.branch == git(nested, "branch", "--show-current")


def test_a_file_inside_the_repo_resolves_like_its_directory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    info = repo_for_uncached(str(repo / "README"))
    assert info is not None and info.root == str(repo.resolve())


def test_unborn_branch_before_the_first_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "fresh", branch="trunk", commit=False)
    assert repo_for_uncached(str(repo)) == RepoInfo(str(repo.resolve()), "trunk")


def test_branch_names_with_slashes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    git(repo, "checkout", "-q", "-b", "feature/login-form")
    info = repo_for_uncached(str(repo))
    assert info is not None and info.branch == "feature/login-form"


def test_detached_head_is_reported_as_its_short_sha(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    git(repo, "checkout", "-q", "--detach")

    info = repo_for_uncached(str(repo))

    assert info is not None
    assert info.detached
    assert info.branch == git(repo, "rev-parse", "--short=7", "HEAD")


def test_worktree_with_a_dot_git_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    worktree = tmp_path / "acme-wt"
    git(repo, "worktree", "add", "-q", "-b", "hotfix", str(worktree))
    (worktree / "deep" / "er").mkdir(parents=True)
    assert (worktree / ".git").is_file()

    info = repo_for_uncached(str(worktree / "deep" / "er"))

    assert info == RepoInfo(str(worktree.resolve()), "hotfix")
    # The main checkout keeps its own branch.
    main = repo_for_uncached(str(repo))
    assert main is not None and main.branch == "main"


def test_separate_git_dir_like_a_submodule(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "modules").mkdir()
    git(work, "init", "-q", "-b", "sub", f"--separate-git-dir={tmp_path / 'modules' / 'work'}")
    assert (work / ".git").read_text().startswith("gitdir:")

    assert repo_for_uncached(str(work)) == RepoInfo(str(work.resolve()), "sub")


def test_relative_gitdir_in_a_dot_git_file(tmp_path: Path) -> None:
    make_repo(tmp_path / "store", branch="elsewhere", commit=False)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".git").write_text("gitdir: ../store/.git\n")

    assert repo_for_uncached(str(checkout)) == RepoInfo(str(checkout.resolve()), "elsewhere")


def test_the_innermost_repo_wins(tmp_path: Path) -> None:
    outer = make_repo(tmp_path / "outer", branch="outer-branch")
    inner = make_repo(outer / "vendor" / "inner", branch="inner-branch")
    (inner / "x").mkdir()
    assert repo_for_uncached(str(inner / "x")) == RepoInfo(str(inner.resolve()), "inner-branch")
    assert repo_for_uncached(str(outer / "vendor")) == RepoInfo(
        str(outer.resolve()), "outer-branch"
    )


def test_not_a_repo(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert repo_for_uncached(str(plain)) is None


def test_a_path_that_does_not_exist_is_none_even_inside_a_repo(tmp_path: Path) -> None:
    # A path from another machine must not be attributed to a repo that encloses it here.
    repo = make_repo(tmp_path / "home")
    assert repo_for_uncached(str(repo / "src" / "not-here")) is None


def test_broken_dot_git_file_is_skipped(tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / ".git").write_text("not a gitdir line\n")
    assert repo_for_uncached(str(odd)) is None
    assert repo_for_uncached("bad\0path") is None


def test_symlinked_path_reports_the_real_top_level(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(repo)
    info = repo_for_uncached(str(link))
    assert info is not None and info.root == str(repo.resolve())


def test_cache_serves_within_ttl_then_sees_the_new_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    clock = FakeClock()
    gi = GitInfo(ttl=2.0, clock=clock)
    assert gi.repo_for(str(repo)).branch == "main"  # type: ignore[union-attr]

    git(repo, "checkout", "-q", "-b", "next")
    clock.now = 1.0
    assert gi.repo_for(str(repo)).branch == "main"  # type: ignore[union-attr]  # cached
    clock.now = 2.5
    assert gi.repo_for(str(repo)).branch == "next"  # type: ignore[union-attr]


def test_cache_is_bounded(tmp_path: Path) -> None:
    gi = GitInfo(max_entries=3)
    for i in range(10):
        d = tmp_path / f"d{i}"
        d.mkdir()
        assert gi.repo_for(str(d)) is None
    assert len(gi._cache) <= 3


def test_a_fifo_head_or_dot_git_is_not_opened(tmp_path: Path) -> None:
    # open() on a FIFO waits for a writer: the proxy's event loop would wait with it.
    repo = tmp_path / "fifo"
    (repo / ".git").mkdir(parents=True)
    os.mkfifo(repo / ".git" / "HEAD")
    assert repo_for_uncached(str(repo)) == RepoInfo(root=str(repo.resolve()), branch=None)
    worktree = tmp_path / "wt"
    worktree.mkdir()
    os.mkfifo(worktree / ".git")
    assert repo_for_uncached(str(worktree)) is None


def test_a_huge_head_is_read_to_a_bound(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme")
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/" + "x" * 10_000_000)
    info = repo_for_uncached(str(repo))
    assert info is not None and info.branch is not None and len(info.branch) < 4096


def test_a_slow_filesystem_is_waited_for_once_then_cached_when_it_answers(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    asked: list[str] = []
    answer = RepoInfo(root="/mnt/slow", branch="main")

    def hung(path: str) -> RepoInfo | None:
        asked.append(path)
        release.wait(30)
        return answer

    gi = GitInfo(timeout=0.01, resolve=hung, max_pending=2)
    assert gi.repo_for("/mnt/slow/a") is None  # gave up waiting: no repo, for now
    assert gi.repo_for("/mnt/slow/a") is None  # still hung: not waited on again
    assert asked == ["/mnt/slow/a"]
    assert gi.repo_for("/mnt/slow/b") is None
    # Two lookups hang: a third path is not looked up (no thread piles up behind them).
    assert gi.repo_for("/mnt/slow/c") is None
    assert asked == ["/mnt/slow/a", "/mnt/slow/b"]
    release.set()
    while gi._pending:  # the hung lookups finish and store their answer
        threading.Event().wait(0.01)
    assert gi.repo_for("/mnt/slow/a") == answer
    assert asked == ["/mnt/slow/a", "/mnt/slow/b"]  # from the cache
