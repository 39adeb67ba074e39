"""Attribution: which tool, which session, which repo and branch, for every call."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import openai
import pytest

from devmeter.attribution import (
    Attributor,
    ProcessSessions,
    detect_tool,
    session_from_headers,
    session_from_user_id,
)
from devmeter.gitinfo import GitInfo
from devmeter.procinfo import ClientProcess, Lookup
from devmeter.usage import Attribution

# Headers as captured from Claude Code 2.1.328 (POST /v1/messages) and
# Codex CLI 0.169.0 (WebSocket upgrade to /v1/responses).
CLAUDE_CODE = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "claude-cli/2.1.328 (external, sdk-cli)",
    "X-Claude-Code-Session-Id": "c94186ab-2b3f-417d-a580-48a4be19ff53",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Lang": "js",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Package-Version": "0.128.0",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Runtime": "node",
    "X-Stainless-Runtime-Version": "v26.12.1",
    "anthropic-version": "2023-06-01",
    "x-api-key": "sk-ant-api03-fake",
    "x-app": "cli",
    "x-claude-code-request-class": "main",
    "Host": "api.anthropic.com",
}
CLAUDE_CODE_USER_ID = json.dumps(
    {
        "device_id": "337c304ac32549a51e63cf3657a8b7b149c20391a9ae9a8bb93cb0879c94568f",
        "account_uuid": "",
        "session_id": "c94186ab-2b3f-417d-a580-48a4be19ff53",
    }
)
CODEX_SESSION = "01a20804-def5-7ef0-b12b-5c32930f1fa8"
CODEX_TURN = {
    "installation_id": "01ee8ea1-1ea0-4aa3-9909-781df93b0f6a",
    "session_id": CODEX_SESSION,
    "thread_id": CODEX_SESSION,
    "request_kind": "prewarm",
    "model": "gpt-6.1-sol",
}
CODEX = {
    "Host": "api.openai.com",
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "user-agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.169.0)",
    "originator": "codex_exec",
    "openai-beta": "responses_websockets=2026-02-06",
    "x-codex-turn-metadata": json.dumps(CODEX_TURN),
    "x-codex-window-id": f"{CODEX_SESSION}:0",
    "version": "0.169.0",
    "session-id": CODEX_SESSION,
    "thread-id": CODEX_SESSION,
}


# -- tool -----------------------------------------------------------------------


def test_claude_code_from_its_captured_headers() -> None:
    assert detect_tool(CLAUDE_CODE) == "claude-code"
    # Its side requests carry only a User-Agent.
    assert detect_tool({"User-Agent": "claude-code/2.1.328"}) == "claude-code"
    assert detect_tool({"x-app": "cli"}) == "claude-code"


def test_codex_from_its_captured_headers() -> None:
    assert detect_tool(CODEX) == "codex"
    assert detect_tool({"originator": "codex_cli_rs"}) == "codex"
    assert detect_tool({"User-Agent": "codex_cli_rs/0.40.0 (Mac OS 15.1; arm64)"}) == "codex"


def test_header_names_are_case_insensitive() -> None:
    assert detect_tool({"USER-AGENT": "claude-cli/2.1.328"}) == "claude-code"
    assert detect_tool({k.upper(): v for k, v in CODEX.items()}) == "codex"


@pytest.mark.parametrize(
    "client, tool",
    [
        (anthropic.Anthropic(api_key="x"), "anthropic-sdk-python"),
        (anthropic.AsyncAnthropic(api_key="x"), "anthropic-sdk-python"),
        (openai.OpenAI(api_key="x"), "openai-sdk-python"),
        (openai.AsyncOpenAI(api_key="x"), "openai-sdk-python"),
        (
            openai.AzureOpenAI(api_key="x", api_version="2024-06-01", azure_endpoint="https://x"),
            "openai-sdk-python",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_the_installed_python_sdks(client: object, tool: str) -> None:
    headers = client.default_headers  # type: ignore[attr-defined]
    assert headers["User-Agent"].split("/")[0] == type(client).__name__
    assert detect_tool(headers) == tool


@pytest.mark.parametrize(
    "headers, tool",
    [
        # The JS SDKs send `${this.constructor.name}/JS ${VERSION}`.
        ({"User-Agent": "Anthropic/JS 0.52.0", "X-Stainless-Lang": "js"}, "anthropic-sdk-node"),
        ({"User-Agent": "OpenAI/JS 6.26.0", "X-Stainless-Lang": "js"}, "openai-sdk-node"),
        ({"User-Agent": "AnthropicBedrock/Python 0.60.0"}, "anthropic-sdk-python"),
        ({"User-Agent": "Anthropic/Go 1.4.0", "X-Stainless-Lang": "go"}, "anthropic-sdk-go"),
        # A bundler mangled the class name; the Anthropic API version header remains.
        (
            {"User-Agent": "e/JS 0.52.0", "X-Stainless-Lang": "js", "anthropic-version": "1"},
            "anthropic-sdk-node",
        ),
        ({"x-goog-api-client": "google-genai-sdk/1.20.0 gl-python/3.11.7"}, "gemini-sdk-python"),
        ({"x-goog-api-client": "google-genai-sdk/1.41.0 gl-node/v22.19.0"}, "gemini-sdk-node"),
        ({"x-goog-api-client": "genai-py/0.8.3 gl-python/3.11.7"}, "gemini-sdk-python"),
        ({"x-goog-api-client": "genai-js/0.21.0 gl-js/ fire/0.21.0"}, "gemini-sdk-node"),
        (
            {
                "User-Agent": "GeminiCLI/0.34.0/gemini-2.5-pro (darwin; arm64; terminal)",
                "x-goog-api-client": "google-genai-sdk/1.41.0 gl-node/v22.19.0",
            },
            "gemini-cli",
        ),
        # Gemini CLI 0.61.0 as captured (headless `-p` is still the "tui" client).
        (
            {
                "User-Agent": "GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64; terminal)",
                "x-goog-api-client": "google-genai-sdk/1.30.0 gl-node/v20.20.2",
                "x-gemini-api-privileged-user-id": "286bd2c5-56aa-4e3f-a35e-84f19ca09cae",
            },
            "gemini-cli",
        ),
        (
            {"User-Agent": "GeminiCLI-cli-command/0.61.0/gemini-3.5-flash (linux; x64; terminal)"},
            "gemini-cli",
        ),
        ({"User-Agent": "GeminiCLI-acp-vscode/0.61.0/auto (darwin; arm64; ide)"}, "gemini-cli"),
        (
            {
                "User-Agent": "CloudCodeVSCode/0.61.0 (aidev_client; os_type=Linux; "
                "os_version=6.8.0; arch=x64; host_path=VSCode/1.99.0; proxy_client=geminicli)"
            },
            "gemini-cli",
        ),
        # Not Gemini CLI: a product that only starts like it.
        ({"User-Agent": "GeminiCLIent/1.0"}, "geminiclient"),
        ({"User-Agent": "connect-es/1.6.1", "x-cursor-client-version": "1.7.0"}, "cursor"),
        ({"User-Agent": "Mozilla/5.0 (Macintosh) Cursor/1.7.0 Chrome/132"}, "cursor"),
        ({"User-Agent": "curl/8.5.0"}, "curl"),
        ({"User-Agent": "python-httpx/0.28.1"}, "python-httpx"),
        ({"User-Agent": "Groq/Python 0.9.0", "X-Stainless-Lang": "python"}, "groq"),
        ({}, "unknown"),
        ({"User-Agent": "  "}, "unknown"),
    ],
)
def test_tools_by_what_they_send(headers: dict[str, str], tool: str) -> None:
    assert detect_tool(headers) == tool


def test_cursor_by_host_over_http2() -> None:
    assert detect_tool({"User-Agent": "connect-es/1.6.1"}, host="api2.cursor.sh") == "cursor"
    assert detect_tool({"User-Agent": "connect-es/1.6.1"}) == "connect-es"


# -- session --------------------------------------------------------------------


def test_session_from_user_id_json_form() -> None:
    assert session_from_user_id(CLAUDE_CODE_USER_ID) == "c94186ab-2b3f-417d-a580-48a4be19ff53"


def test_session_from_user_id_legacy_form() -> None:
    legacy = (
        "user_337c304ac32549a51e63cf3657a8b7b149c20391a9ae9a8bb93cb0879c94568f"
        "_account_8f2c1c3e-93f4-4a8e-b8a0-3f0f0c7b3a11"
        "_session_5b1f9a9e-0c7d-4c52-9d7c-2a1e6f3b8d40"
    )
    assert session_from_user_id(legacy) == "5b1f9a9e-0c7d-4c52-9d7c-2a1e6f3b8d40"
    no_account = "user_abc_account__session_5b1f9a9e-0c7d-4c52-9d7c-2a1e6f3b8d40"
    assert session_from_user_id(no_account) == "5b1f9a9e-0c7d-4c52-9d7c-2a1e6f3b8d40"


@pytest.mark.parametrize("bad", ["", "user_abc", "{not json", '{"session_id": 5}', "[1]", '""'])
def test_session_from_user_id_without_a_session(bad: str) -> None:
    assert session_from_user_id(bad) is None


def test_claude_code_session_from_header_or_body() -> None:
    claude = "c94186ab-2b3f-417d-a580-48a4be19ff53"
    assert session_from_headers(CLAUDE_CODE, {}) == claude
    body_only = {k: v for k, v in CLAUDE_CODE.items() if k != "X-Claude-Code-Session-Id"}
    assert session_from_headers(body_only, {"session_id": claude}) == claude
    assert session_from_headers(body_only, {"user_id": CLAUDE_CODE_USER_ID}) == claude


def test_codex_session_from_its_headers() -> None:
    assert session_from_headers(CODEX, {}) == CODEX_SESSION
    only_metadata = {"x-codex-turn-metadata": json.dumps({"session_id": "s-meta"})}
    assert session_from_headers(only_metadata, {}) == "s-meta"
    assert session_from_headers({"thread-id": "t-1"}, {}) == "t-1"
    assert session_from_headers({"x-codex-turn-metadata": "{broken"}, {}) is None


def test_explicit_devmeter_session_wins() -> None:
    assert session_from_headers({**CLAUDE_CODE, "X-Devmeter-Session": "review"}, {}) == "review"
    assert session_from_headers({**CODEX, "x-devmeter-session": "review"}, {}) == "review"


def test_no_session_declared() -> None:
    assert session_from_headers({"User-Agent": "curl/8"}, None) is None
    assert session_from_headers({"X-Devmeter-Session": "  "}, {}) is None


# -- process sessions -----------------------------------------------------------


def test_process_session_is_stable_while_active() -> None:
    sessions = ProcessSessions(idle_gap=1800)
    first = sessions.session_for(4242, 1000.5, now=5000.0)
    assert first == "proc-4242-5000"
    assert sessions.session_for(4242, 1000.5, now=5000.0 + 1700) == first
    assert sessions.session_for(4242, 1000.5, now=5000.0 + 3400) == first  # gap measured per call


def test_process_session_restarts_after_an_idle_gap() -> None:
    sessions = ProcessSessions(idle_gap=60)
    first = sessions.session_for(7, 1.0, now=100.0)
    second = sessions.session_for(7, 1.0, now=161.0)
    assert second == "proc-7-161" != first
    assert sessions.session_for(7, 1.0, now=200.0) == second


def test_a_reused_pid_is_another_process() -> None:
    sessions = ProcessSessions()
    old = sessions.session_for(7, start_time=1.0, now=100.0)
    new = sessions.session_for(7, start_time=90.0, now=101.0)
    assert new != old
    assert sessions.session_for(7, start_time=1.0, now=102.0) == old


def test_process_sessions_forget_idle_processes_when_full() -> None:
    sessions = ProcessSessions(idle_gap=10, max_processes=3)
    for pid in range(3):
        sessions.session_for(pid, 0.0, now=0.0)
    sessions.session_for(99, 0.0, now=50.0)
    assert len(sessions) == 1
    for pid in range(5):
        sessions.session_for(pid, 0.0, now=51.0 + pid)
    assert len(sessions) == 3


# -- Attributor, with a stand-in process lookup ---------------------------------

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def make_repo(path: Path, branch: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", branch], cwd=path, env=GIT_ENV, check=True)
    return path.resolve()


class FakeLookup:
    """Stands in for ProcessFinder.lookup: one process per peer, counting calls."""

    def __init__(self, processes: dict[tuple[str, int], ClientProcess]) -> None:
        self.processes = processes
        self.calls: list[tuple[str, int]] = []

    def __call__(self, peer: tuple[str, int], sockname: tuple[str, int] | None) -> Lookup:
        self.calls.append(peer)
        process = self.processes.get(peer)
        return Lookup(process, None if process else "no such peer")


PEER = ("127.0.0.1", 50123)


def attributor(process: ClientProcess | None) -> tuple[Attributor, FakeLookup]:
    lookup = FakeLookup({PEER: process} if process else {})
    return Attributor(lookup), lookup


def test_claude_code_in_a_repo(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme-api", "feature/x")
    (repo / "pkg").mkdir()
    attr, _ = attributor(ClientProcess(pid=10, start_time=1.0, cwd=str(repo / "pkg")))

    got = attr.attribute(CLAUDE_CODE, {"cwd": str(repo / "pkg")}, PEER, now=100.0)

    assert got == Attribution(
        tool="claude-code",
        session="c94186ab-2b3f-417d-a580-48a4be19ff53",
        repo=str(repo),
        branch="feature/x",
        repo_source="claude-env",
        pid=10,
    )


def test_claude_env_cwd_beats_the_process_cwd(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "work", "main")
    elsewhere = make_repo(tmp_path / "elsewhere", "other")
    attr, _ = attributor(ClientProcess(pid=10, start_time=1.0, cwd=str(elsewhere)))
    got = attr.attribute(CLAUDE_CODE, {"cwd": str(work)}, PEER, now=1.0)
    assert (got.repo, got.branch, got.repo_source) == (str(work), "main", "claude-env")


def test_claude_cwd_from_another_machine_is_kept_as_given(tmp_path: Path) -> None:
    attr, _ = attributor(None)
    got = attr.attribute(CLAUDE_CODE, {"cwd": "/home/dev/src/acme-api"}, PEER, now=1.0)
    assert (got.repo, got.branch, got.repo_source) == ("/home/dev/src/acme-api", None, "claude-env")
    assert got.pid is None


def test_process_cwd_when_the_client_says_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "svc", "dev")
    attr, _ = attributor(ClientProcess(pid=33, start_time=5.0, cwd=str(repo)))
    got = attr.attribute({"User-Agent": "OpenAI/Python 3.54.0"}, {}, PEER, now=1000.0)
    assert got == Attribution(
        tool="openai-sdk-python",
        session="proc-33-1000",
        repo=str(repo),
        branch="dev",
        repo_source="process",
        pid=33,
    )


def test_a_process_outside_any_repo_is_unattributed(tmp_path: Path) -> None:
    attr, _ = attributor(ClientProcess(pid=33, start_time=5.0, cwd=str(tmp_path)))
    got = attr.attribute({"User-Agent": "curl/8.5.0"}, {}, PEER, now=1000.0)
    assert (got.repo, got.branch, got.repo_source) == (None, None, None)
    assert got.session == "proc-33-1000"


def test_no_process_and_no_hints_is_unattributed() -> None:
    attr, _ = attributor(None)
    assert attr.attribute({"User-Agent": "curl/8.5.0"}, {}, PEER, now=1.0) == Attribution(
        tool="curl"
    )
    assert attr.attribute({}, None, None, now=1.0) == Attribution()


def test_explicit_project_beats_everything(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "work", "main")
    process = ClientProcess(pid=1, start_time=1.0, cwd=str(work), env_project="from-env")
    attr, _ = attributor(process)

    by_header = attr.attribute(
        {**CLAUDE_CODE, "X-Devmeter-Project": "billing"}, {"cwd": str(work)}, PEER, 1.0
    )
    # A project name keeps the branch of where the client works.
    assert (by_header.repo, by_header.branch, by_header.repo_source) == (
        "billing",
        "main",
        "explicit",
    )
    by_env = attr.attribute(CLAUDE_CODE, {"cwd": str(work)}, PEER, 1.0)
    assert (by_env.repo, by_env.repo_source) == ("from-env", "explicit")


def test_explicit_project_path_resolves_to_its_repo(tmp_path: Path) -> None:
    other = make_repo(tmp_path / "other", "release")
    (other / "sub").mkdir()
    attr, _ = attributor(None)
    got = attr.attribute({"X-Devmeter-Project": str(other / "sub")}, {}, PEER, 1.0)
    assert (got.repo, got.branch, got.repo_source) == (str(other), "release", "explicit")


def test_session_precedence() -> None:
    process = ClientProcess(pid=9, start_time=1.0, env_session="from-env")
    attr, _ = attributor(process)
    assert attr.attribute(CLAUDE_CODE, {}, PEER, 1.0).session == "from-env"
    explicit = {**CLAUDE_CODE, "X-Devmeter-Session": "from-header"}
    assert attr.attribute(explicit, {}, PEER, 1.0).session == "from-header"

    attr, _ = attributor(ClientProcess(pid=9, start_time=1.0))
    assert attr.attribute(CODEX, {}, PEER, 1.0).session == CODEX_SESSION
    assert attr.attribute({}, {}, PEER, 1.0).session == "proc-9-1"


def test_one_lookup_per_connection(tmp_path: Path) -> None:
    attr, lookup = attributor(ClientProcess(pid=9, start_time=1.0, cwd=str(tmp_path)))
    for i in range(50):
        attr.attribute(CLAUDE_CODE, {}, PEER, now=100.0 + i)
    assert lookup.calls == [PEER]

    attr.attribute(CLAUDE_CODE, {}, ("127.0.0.1", 50124), now=150.0)
    assert len(lookup.calls) == 2  # another connection, another lookup
    attr.attribute(CLAUDE_CODE, {}, PEER, now=100.0 + attr.peer_ttl + 1)
    assert len(lookup.calls) == 3  # the cached answer expired
    attr.forget(PEER)
    attr.attribute(CLAUDE_CODE, {}, PEER, now=200.0)
    assert len(lookup.calls) == 4  # the connection closed; its port may be reused


def test_failed_lookups_are_cached_too() -> None:
    attr, lookup = attributor(None)
    for _ in range(5):
        attr.attribute({}, {}, PEER, now=1.0)
    assert len(lookup.calls) == 1


def test_a_lookup_that_raises_leaves_the_call_unattributed() -> None:
    def broken(peer: tuple[str, int], sockname: tuple[str, int] | None) -> Lookup:
        raise RuntimeError("boom")

    got = Attributor(broken).attribute(CLAUDE_CODE, {}, PEER, now=1.0)
    assert got.tool == "claude-code" and got.pid is None and got.repo is None


def test_garbage_from_the_network_does_not_break_it() -> None:
    attr, _ = attributor(None)
    got = attr.attribute(
        {"X-Devmeter-Project": "/nope\0", "x-codex-turn-metadata": "[]"},
        {"cwd": "\0"},
        PEER,
        now=1.0,
    )
    assert (got.repo, got.repo_source) == ("/nope", "explicit")


# -- Attributor against a real client process -----------------------------------

CLIENT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdin.read()
"""


@contextmanager
def real_client(cwd: Path, env: dict[str, str]) -> Iterator[tuple[int, tuple[str, int], int]]:
    """(client pid, the peer address the server sees, server port)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEVMETER_")}
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(15)
        port = server.getsockname()[1]
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(port)],
            cwd=cwd,
            env={**clean, **env},
            stdin=subprocess.PIPE,
        )
        try:
            conn, peer = server.accept()
            with conn:
                yield client.pid, peer, port
        finally:
            assert client.stdin is not None
            client.stdin.close()
            client.wait(10)


def test_real_client_in_a_repo_with_devmeter_run_env(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme", "feature/meter")
    (repo / "src").mkdir()
    with real_client(repo / "src", {"DEVMETER_SESSION": "x"}) as (pid, peer, port):
        attr = Attributor(proxy_port=port)
        got = attr.attribute({"User-Agent": "Anthropic/Python 2.12.0"}, {}, peer, now=1.0)
        assert got == Attribution(
            tool="anthropic-sdk-python",
            session="x",
            repo=str(repo),
            branch="feature/meter",
            repo_source="process",
            pid=pid,
        )


def test_real_client_outside_a_repo_is_unattributed(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with real_client(plain, {}) as (pid, peer, port):
        got = Attributor(proxy_port=port).attribute({"User-Agent": "curl/8.5.0"}, {}, peer, 7.0)
        assert got == Attribution(tool="curl", session=f"proc-{pid}-7", pid=pid)


def test_real_client_with_devmeter_project(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "acme", "main")
    with real_client(repo, {"DEVMETER_PROJECT": "acme-billing"}) as (pid, peer, port):
        got = Attributor(proxy_port=port).attribute({}, {}, peer, 1.0)
        assert (got.repo, got.branch, got.repo_source, got.pid) == (
            "acme-billing",
            "main",
            "explicit",
            pid,
        )


def test_lower_headers_reads_mitmproxy_headers_as_mitmproxy_does() -> None:
    from mitmproxy import http

    from devmeter.attribution import lower_headers

    headers = http.Headers(
        [
            (b"User-Agent", b"claude-cli/2.1.328"),
            (b"X-Claude-Code-Session-Id", b"c94186ab"),
            (b"Accept", b"text/event-stream"),
            (b"accept", b"application/json"),  # repeated: folded like mitmproxy folds it
            (b"X-Odd", "caf\u00e9".encode()),
        ]
    )
    lowered = lower_headers(headers)
    assert lowered == {k.lower(): v for k, v in headers.items()}
    assert lowered["accept"] == "text/event-stream, application/json"
    assert lowered["x-odd"] == "caf\u00e9"
    assert lower_headers({"X-A": "1"}) == {"x-a": "1"}


def test_lowered_headers_are_not_lowered_again() -> None:
    from devmeter.attribution import LowerHeaders, lower_headers

    lowered = lower_headers({"User-Agent": "claude-cli/2.0", "X-Devmeter-Session": "s1"})
    assert isinstance(lowered, LowerHeaders)
    assert lower_headers(lowered) is lowered
    mixed = {"User-Agent": "claude-cli/2.0", "X-Devmeter-Session": "s1"}
    attributor = Attributor(lookup=lambda peer, sock=None: Lookup(None, "test"))
    assert attributor.attribute(lowered, {}, None, 0.0) == attributor.attribute(
        mixed, {}, None, 0.0
    )


def test_a_quick_lookup_hit_is_cached_and_a_miss_leaves_the_full_lookup_to_do() -> None:
    process = ClientProcess(pid=9, start_time=1.0, cwd="/")
    full = FakeLookup({PEER: process})
    quick = FakeLookup({PEER: process})
    attr = Attributor(full, quick_lookup=quick)
    assert attr.process_quickly(PEER, now=1.0)
    assert attr.attribute(CLAUDE_CODE, {}, PEER, now=2.0).pid == 9
    assert full.calls == []  # the quick answer was cached for the connection

    other = ("127.0.0.1", 50124)
    assert not attr.process_quickly(other, now=3.0)  # not a recent client
    assert full.calls == []
    assert attr.process_for(other, now=3.0).process is None  # the full lookup decides
    assert full.calls == [other]


def test_a_quick_lookup_that_raises_is_a_miss() -> None:
    def broken(peer: tuple[str, int], sockname: tuple[str, int] | None) -> Lookup:
        raise RuntimeError("boom")

    assert not Attributor(FakeLookup({}), quick_lookup=broken).process_quickly(PEER, now=1.0)
    assert not Attributor(FakeLookup({})).process_quickly(PEER, now=1.0)  # none given


# -- a connection's attribution, kept for its next requests ------------------------------


class TickingClock:
    """GitInfo's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def switch_branch(repo: Path, branch: str) -> None:
    (repo / ".git" / "HEAD").write_text(f"ref: refs/heads/{branch}\n")


def test_a_connection_reuses_its_attribution_while_nothing_it_read_changed(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "acme", "main")
    attr, _ = attributor(ClientProcess(pid=10, start_time=1.0, cwd=str(repo)))
    first = attr.attribute(CLAUDE_CODE, {"cwd": str(repo)}, PEER, now=1.0)
    again = attr.attribute(
        {**CLAUDE_CODE, "x-client-request-id": "another"}, {"cwd": str(repo)}, PEER, now=2.0
    )
    assert (
        again
        == first
        == Attribution(
            "claude-code",
            "c94186ab-2b3f-417d-a580-48a4be19ff53",
            str(repo),
            "main",
            "claude-env",
            10,
        )
    )
    # Anything attribution reads that differs is attributed afresh.
    other = make_repo(tmp_path / "other", "dev")
    moved = attr.attribute(CLAUDE_CODE, {"cwd": str(other)}, PEER, now=3.0)
    assert (moved.repo, moved.branch) == (str(other), "dev")
    named = attr.attribute({**CLAUDE_CODE, "X-Devmeter-Session": "mine"}, {}, PEER, now=4.0)
    assert named.session == "mine"
    # A header whose name alone tells (Codex's x-codex-*), and the host, count as well.
    assert attr.attribute({"User-Agent": "x"}, {}, PEER, now=5.0).tool == "x"
    assert attr.attribute({"User-Agent": "x", "x-codex-a": "1"}, {}, PEER, now=6.0).tool == (
        "codex"
    )
    assert attr.attribute({"User-Agent": "x"}, {}, PEER, now=7.0, host="x.cursor.sh").tool == (
        "cursor"
    )


def test_a_branch_switch_on_a_kept_connection_shows_as_soon_as_the_git_cache_expires(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "acme", "main")
    clock = TickingClock()
    lookup = FakeLookup({PEER: ClientProcess(pid=10, start_time=1.0, cwd=str(repo))})
    attr = Attributor(lookup, git=GitInfo(ttl=2.0, clock=clock))
    assert attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=1.0).branch == "main"
    switch_branch(repo, "feature")
    clock.now = 1.9  # the git answer is still the cached one, as it was before
    assert attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=2.0).branch == "main"
    clock.now = 2.1
    got = attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=3.0)
    assert (got.repo, got.branch, got.repo_source) == (str(repo), "feature", "process")


def test_a_new_process_on_a_reused_port_is_attributed_afresh(tmp_path: Path) -> None:
    first_repo = make_repo(tmp_path / "first", "main")
    second_repo = make_repo(tmp_path / "second", "dev")
    lookup = FakeLookup({PEER: ClientProcess(pid=10, start_time=1.0, cwd=str(first_repo))})
    attr = Attributor(lookup)
    first = attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=1.0)
    assert (first.pid, first.repo) == (10, str(first_repo))
    # The connection closes; another process connects from the same port.
    attr.forget(PEER)
    lookup.processes[PEER] = ClientProcess(pid=11, start_time=5.0, cwd=str(second_repo))
    second = attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=2.0)
    assert (second.pid, second.repo, second.branch) == (11, str(second_repo), "dev")
    assert second.session == "proc-11-2"
    # The process lookup expiring (a new lookup) is noticed as well, without a forget.
    lookup.processes[PEER] = ClientProcess(pid=12, start_time=6.0, cwd=str(first_repo))
    third = attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=2.0 + attr.peer_ttl + 1)
    assert (third.pid, third.repo) == (12, str(first_repo))


def test_a_process_session_on_a_kept_connection_still_restarts_after_an_idle_gap() -> None:
    attr, _ = attributor(ClientProcess(pid=9, start_time=1.0))
    attr.sessions.idle_gap = 10.0
    assert attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=100.0).session == "proc-9-100"
    # Each call keeps it alive, reused attribution or not ...
    for now in (105.0, 114.0, 123.0):
        assert attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=now).session == ("proc-9-100")
    # ... and after the gap a new one starts.
    assert attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=140.0).session == "proc-9-140"
    assert attr.attribute({"User-Agent": "curl/8"}, {}, PEER, now=141.0).session == "proc-9-140"


def test_a_repo_lookup_too_slow_to_wait_for_is_unsettled_until_it_answers(tmp_path: Path) -> None:
    """A loaded machine or a slow mount: the call goes on with what is known (the working
    directory, no branch) marked unsettled, so the proxy asks again when the call ends;
    once the lookup has answered, the same call is attributed in full."""
    import dataclasses
    import threading

    from devmeter.gitinfo import repo_for_uncached

    repo = make_repo(tmp_path / "acme", "main")
    release = threading.Event()

    def slow(path: str):  # type: ignore[no-untyped-def]
        release.wait(30)
        return repo_for_uncached(path)

    attr = Attributor(FakeLookup({}), git=GitInfo(timeout=0.01, resolve=slow))
    facts = {"cwd": str(repo)}
    first = attr.attribute(CLAUDE_CODE, facts, PEER, now=1.0)
    assert (first.repo, first.branch, first.settled) == (str(repo), None, False)
    # Still under way: asked again, not remembered as the connection's answer.
    assert attr.attribute(CLAUDE_CODE, facts, PEER, now=1.5).settled is False
    release.set()
    while attr.git._pending:
        threading.Event().wait(0.01)
    again = attr.attribute(CLAUDE_CODE, facts, PEER, now=2.0)
    assert (again.repo, again.branch, again.settled) == (str(repo), "main", True)
    assert again.session == first.session
    # Settled or not, the same attribution: the flag is not part of what it is.
    assert dataclasses.replace(first, settled=True) == first
    no_peer = attr.attribute(CLAUDE_CODE, facts, None, now=3.0)
    assert (no_peer.branch, no_peer.settled) == ("main", True)
