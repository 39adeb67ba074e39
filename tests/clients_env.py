"""Running real clients (Claude Code, Codex CLI, Gemini CLI, SDK scripts) through `devmeter run`.

The end-to-end tests drive a real `devmeter proxy` (see `proxy_harness`) whose provider
hosts are mapped to the fake upstream, and start each client the way a user would:

    python -m devmeter run [--session S] [--project P] -- CLIENT ARGS...

with DEVMETER_HOME pointing at the test proxy's home, so `run` finds the running proxy
through `proxy.json` and sets HTTPS_PROXY, NODE_EXTRA_CA_CERTS, SSL_CERT_FILE,
CODEX_CA_CERTIFICATE, ... itself. Everything a client could read from the developer's
own setup (API base URLs, proxies, config dirs, HOME) is replaced by throwaway values.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devmeter.gitinfo import repo_for_uncached
from tests.proxy_harness import REPO_ROOT, RunningProxy

CLIENTS_BIN = REPO_ROOT / "tests" / "clients" / "node_modules" / ".bin"
INSTALL_HINT = "run `npm ci --prefix tests/clients` to install the real CLIs the e2e tests drive"

# Each CLI run takes a few seconds against the fake upstream; this only stops a hang.
RUN_TIMEOUT = 90.0
QUICK_TIMEOUT = 30.0  # git, devmeter report

# Variables from the developer's shell that would send a client elsewhere, name its
# session or project, or point it at real credentials and config. `devmeter run` sets the
# proxy and CA ones again for the child.
_SCRUB_PREFIXES = ("ANTHROPIC_", "CLAUDE", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_", "DEVMETER_",
                   "GIT_")  # fmt: skip
_SCRUB_NAMES = frozenset(
    {
        "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
        "NO_PROXY", "no_proxy", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME",
    }
)  # fmt: skip


def cli(name: str) -> Path:
    """The installed CLI `name` ("claude", "codex", "gemini"); skips the test when it is
    missing."""
    path = CLIENTS_BIN / (f"{name}.cmd" if os.name == "nt" else name)
    if not path.exists():
        pytest.skip(f"{name} CLI not found at {path}: {INSTALL_HINT}")
    return path


def client_env(proxy: RunningProxy, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a client started with `devmeter run` against `proxy`.

    `home` becomes HOME (created), so no user config, credentials or git identity leak in.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRUB_NAMES and not k.startswith(_SCRUB_PREFIXES)
    }
    env.update(
        HOME=str(home),
        DEVMETER_HOME=str(proxy.home),
        PYTHONUNBUFFERED="1",
        GIT_CONFIG_NOSYSTEM="1",
    )
    env.update(extra)
    return env


def claude_env(proxy: RunningProxy, tmp: Path) -> dict[str, str]:
    """Claude Code with an API key and a throwaway config dir (no base URL: it goes through
    the proxy to "api.anthropic.com", which the proxy maps to the fake upstream)."""
    config = tmp / "claude-config"
    config.mkdir(parents=True, exist_ok=True)
    return client_env(
        proxy,
        tmp / "home",
        ANTHROPIC_API_KEY="sk-ant-api03-devmeter-e2e",
        CLAUDE_CONFIG_DIR=str(config),
        DISABLE_AUTOUPDATER="1",
    )


def codex_env(proxy: RunningProxy, tmp: Path) -> dict[str, str]:
    """Codex CLI with an API key and a throwaway CODEX_HOME (it ignores OPENAI_BASE_URL and
    talks to https://api.openai.com itself, which the proxy maps to the fake upstream)."""
    codex_home = tmp / "codex-home"
    codex_home.mkdir(parents=True, exist_ok=True)
    return client_env(
        proxy, tmp / "home", OPENAI_API_KEY="sk-devmeter-e2e", CODEX_HOME=str(codex_home)
    )


def devmeter_run(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    session: str | None = None,
    project: str | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """`python -m devmeter run [--session] [--project] -- COMMAND` in `cwd`; fails on exit != 0.

    stdin is /dev/null: Codex reads extra input from a non-tty stdin until EOF.
    """
    args = [sys.executable, "-m", "devmeter", "run"]
    if session is not None:
        args += ["--session", session]
    if project is not None:
        args += ["--project", project]
    args += ["--", *command]
    started = time.monotonic()
    # Its own process group, so a hung client (a grandchild) dies with `devmeter run`.
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=os.name != "nt",
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{command[0]} did not finish within {timeout:.0f}s\n"
            f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
        ) from None
    if proc.returncode != 0:
        raise AssertionError(
            f"`devmeter run -- {' '.join(command)}` exited {proc.returncode} after "
            f"{time.monotonic() - started:.1f}s\nstdout:\n{stdout[-3000:]}\n"
            f"stderr:\n{stderr[-3000:]}"
        )
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill `proc` and, on POSIX, the process group it leads (the client under it)."""
    if os.name != "nt":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()


def git_repo(path: Path, branch: str) -> Path:
    """A throwaway git repo at `path`: one commit, then a named branch checked out.

    Returns its top level with symlinks resolved, as `git rev-parse --show-toplevel` does.
    """
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text("# throwaway repo for devmeter's e2e tests\n")
    env = _git_env(path.parent / "git-home")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", *args],
            cwd=path,
            env=env,
            check=True,
            capture_output=True,
            timeout=QUICK_TIMEOUT,
        )

    git("init", "-q")
    git("add", "README.md")
    git("-c", "user.name=devmeter e2e", "-c", "user.email=e2e@devmeter.invalid",
        "-c", "commit.gpgsign=false", "commit", "-q", "-m", "initial commit")  # fmt: skip
    git("checkout", "-q", "-b", branch)
    return path.resolve()


def _git_env(home: Path) -> dict[str, str]:
    """git without the user's or the system's config (no hooks, signing or templates)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1")
    return env


def not_a_repo(path: Path) -> Path:
    """A directory outside any git work tree (skips if the temp dir itself is in one)."""
    path.mkdir(parents=True, exist_ok=True)
    enclosing = repo_for_uncached(str(path))
    if enclosing is not None:
        pytest.skip(f"the temp dir {path} is inside the git repo {enclosing.root}")
    return path.resolve()


def report(proxy: RunningProxy, *args: str) -> str:
    """`devmeter report ARGS` against the proxy's ledger; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "devmeter", "report", *args],
        env={**os.environ, "DEVMETER_HOME": str(proxy.home)},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"devmeter report {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def last_id(proxy: RunningProxy) -> int:
    rows = proxy.rows()
    return int(rows[-1]["id"]) if rows else 0


def rows_after(
    proxy: RunningProxy,
    after_id: int,
    at_least: int,
    *,
    timeout: float = 15.0,
    quiet: float = 0.5,
) -> list[dict[str, Any]]:
    """Ledger rows with id > `after_id`, once there are `at_least` and none came for `quiet` s.

    The client has exited when this is called; the wait covers the proxy's batched writer
    and closing sockets (a WebSocket's last turn is settled when it ends).
    """
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    stable_since = time.monotonic()
    while True:
        now = time.monotonic()
        fresh = proxy.rows("id > ?", (after_id,))
        if len(fresh) != len(rows):
            rows, stable_since = fresh, now
        if len(rows) >= at_least and now - stable_since >= quiet:
            return rows
        if now > deadline:
            raise AssertionError(
                f"expected at least {at_least} ledger rows, got {len(rows)}: {rows}\n"
                f"proxy log:\n{proxy.log.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.05)


def describe(rows: list[dict[str, Any]]) -> str:
    """Rows in an assertion message: the columns these tests look at."""
    keys = ("id", "tool", "endpoint", "status", "session", "repo", "branch", "repo_source", "pid",
            "requested_model", "model", "input_tokens", "cache_read_tokens",
            "cache_write_tokens", "cache_write_1h_tokens", "output_tokens", "cost_usd",
            "price_source", "estimated", "complete", "error")  # fmt: skip
    return "\n".join(str({k: r.get(k) for k in keys}) for r in rows)
