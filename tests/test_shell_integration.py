"""The shell hook `devmeter setup` installs, in real bash, zsh and fish.

With the proxy down a shell's HTTPS goes direct (curl reaches a local TLS server that a
dead HTTPS_PROXY would have cut off); with it up, a call is metered; the shell says
which, once per change.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmeter.integration import shellhook
from devmeter.paths import paths
from devmeter.shellenv import proxy_environment
from tests.proxy_harness import RunningProxy

SHELLS = [
    pytest.param(s, marks=pytest.mark.skipif(not shutil.which(s), reason=f"{s} not installed"))
    for s in ("bash", "zsh")
]
# Variables the hook manages; the test machine may set some of them itself.
MANAGED = tuple(proxy_environment(paths({"DEVMETER_HOME": "/x"}), "h", 1))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on loopback for `tls.test`, with its own self-signed certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"direct-ok")

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert
    server.shutdown()


def write_hook(shell: str, home: Path) -> Path:
    where = paths({"DEVMETER_HOME": str(home)})
    settings = shellhook.settings_for(where, ("127.0.0.1", 8788), None)
    hook = home / shellhook.hook_file_name(shell)
    home.mkdir(parents=True, exist_ok=True)
    hook.write_text(shellhook.hook_script(shell, settings))
    return hook


def run_interactive(shell: str, hook: Path, lines: list[str], env: dict[str, str]) -> str:
    """Feed `lines` to an interactive shell that sourced the hook; its stdout and stderr.

    An interactive shell runs its prompt hooks before each line it reads, as in a terminal.
    """
    argv = {"bash": ["bash", "--norc", "--noprofile", "-i"], "zsh": ["zsh", "-f", "-i"]}[shell]
    script = "\n".join([f". '{hook}'", *lines, "exit"]) + "\n"
    done = subprocess.run(
        argv, input=script, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    return done.stdout + done.stderr


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MANAGED}
    env.update(PS1="$ ", PROMPT="$ ", TERM="dumb", **extra)
    return env


def curl_line(port: int, cert: Path) -> str:
    # tls.test is in no NO_PROXY list: with HTTPS_PROXY set, curl must go through it.
    return (
        f"curl -sS --max-time 10 --cacert '{cert}' --resolve tls.test:{port}:127.0.0.1 "
        f"https://tls.test:{port}/ && echo ' <- curl'"
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_proxy_down_tools_go_direct(
    shell: str, tls_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, cert = tls_server
    home = tmp_path / "dm"
    hook = write_hook(shell, home)
    # A proxy that died without cleaning up: its state file names a pid that is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (home / "proxy.json").write_text(
        f'{{"host": "127.0.0.1", "port": 9, "pid": {dead.pid}, "started": 1.0}}'
    )
    out = run_interactive(
        shell,
        hook,
        ['echo "proxy=${HTTPS_PROXY-unset}"', curl_line(port, cert), curl_line(port, cert)],
        clean_env(),
    )
    assert "proxy=unset" in out
    assert out.count("direct-ok <- curl") == 2
    assert out.count("devmeter: no proxy answers") == 1  # said once, not on every prompt

    # The control: the same curl with `devmeter env`'s variables and no proxy fails.
    env = clean_env(**proxy_environment(paths({"DEVMETER_HOME": str(home)}), "127.0.0.1", 9))
    failed = subprocess.run(
        ["sh", "-c", curl_line(port, cert)], capture_output=True, text=True, env=env, check=False
    )
    assert failed.returncode != 0 and "direct-ok" not in failed.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_proxy_up_a_call_is_metered_and_down_goes_direct_again(
    shell: str, proxy: RunningProxy, tls_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, cert = tls_server
    hook = write_hook(shell, proxy.home)  # the running proxy's own proxy.json
    proxy.skip_existing()
    body = '{"model":"claude-opus-5-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
    call = (
        "curl -sS --max-time 20 https://api.anthropic.com/v1/messages "
        "-H 'x-api-key: sk-test' -H 'anthropic-version: 2023-06-01' "
        f"-H 'content-type: application/json' -d '{body}' "
        "-o /dev/null -w '%{http_code} <- api\\n'"
    )
    out = run_interactive(shell, hook, ['echo "proxy=${HTTPS_PROXY-unset}"', call], clean_env())
    assert f"proxy={proxy.url}" in out
    assert "200 <- api" in out
    [row] = proxy.new_calls(1)
    assert row["endpoint"] == "anthropic.messages"
    assert "devmeter: no proxy answers" not in out

    # The proxy goes away under a running shell: the next prompt goes direct, once.
    state = proxy.home / "proxy.json"
    saved = state.read_text()
    fake_state = tmp_path / "elsewhere.json"
    try:
        lines = [
            'echo "proxy=${HTTPS_PROXY-unset}"',
            f"mv '{state}' '{fake_state}'",  # as when the proxy stops
            'echo "proxy=${HTTPS_PROXY-unset}"',
            curl_line(port, cert),
            f"mv '{fake_state}' '{state}'",  # and starts again
            'echo "proxy=${HTTPS_PROXY-unset}"',
        ]
        out = run_interactive(shell, hook, lines, clean_env())
    finally:
        if not state.exists():
            state.write_text(saved)
    shown = [line for line in out.splitlines() if line.startswith("proxy=")]
    assert shown == [f"proxy={proxy.url}", "proxy=unset", f"proxy={proxy.url}"]
    assert out.count("direct-ok <- curl") == 1  # direct while the proxy was away
    assert out.count("devmeter: no proxy answers") == 1
    # Where the proxy was (a port of its own here), not the default the hook was written with.
    assert f"no proxy answers (it was at 127.0.0.1:{proxy.port})" in out
    assert out.count(f"devmeter: the proxy answers at 127.0.0.1:{proxy.port}") == 1


@pytest.mark.parametrize("shell", SHELLS)
def test_a_shell_started_before_devmeter_is_routed_once_it_answers(
    shell: str, proxy: RunningProxy, tmp_path: Path
) -> None:
    # A new user's order: open a shell, then start devmeter. The shell said the proxy
    # "answers again" and its tools were "metered again", though they never had been.
    hook = write_hook(shell, proxy.home)
    state = proxy.home / "proxy.json"
    saved = state.read_text()
    away = tmp_path / "elsewhere.json"
    state.rename(away)  # not started yet
    try:
        lines = [
            'echo "proxy=${HTTPS_PROXY-unset}"',
            f"mv '{away}' '{state}'",  # devmeter starts
            'echo "proxy=${HTTPS_PROXY-unset}"',
        ]
        out = run_interactive(shell, hook, lines, clean_env())
    finally:
        if not state.exists():
            state.write_text(saved)
    shown = [line for line in out.splitlines() if line.startswith("proxy=")]
    assert shown == ["proxy=unset", f"proxy={proxy.url}"]
    assert out.count("devmeter: no proxy answers (expected at 127.0.0.1:8788)") == 1
    said = f"devmeter: the proxy answers at 127.0.0.1:{proxy.port}; tools in this shell are"
    assert out.count(said) == 1 and "again" not in out


@pytest.mark.parametrize("shell", SHELLS)
def test_going_direct_puts_back_what_the_user_had(shell: str, proxy: RunningProxy) -> None:
    hook = write_hook(shell, proxy.home)
    state = proxy.home / "proxy.json"
    saved = state.read_text()
    lines = [
        'echo "up=$HTTPS_PROXY ssl=$SSL_CERT_FILE"',
        f"rm '{state}'",
        'echo "down=${HTTPS_PROXY-unset} ssl=$SSL_CERT_FILE"',
    ]
    try:
        out = run_interactive(shell, hook, lines, clean_env(SSL_CERT_FILE="/etc/mine.pem"))
    finally:
        state.write_text(saved)
    assert f"up={proxy.url} ssl={proxy.bundle}" in out
    assert "down=unset ssl=/etc/mine.pem" in out


@pytest.mark.skipif(not shutil.which("fish"), reason="fish not installed")
def test_fish_routes_while_the_proxy_runs(proxy: RunningProxy, tmp_path: Path) -> None:
    hook = write_hook("fish", proxy.home)
    env = clean_env()
    up = subprocess.run(
        ["fish", "--no-config", "-i", "-c", f"source '{hook}'; echo proxy=$HTTPS_PROXY"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert f"proxy={proxy.url}" in up.stdout
    other = tmp_path / "down"
    down_hook = write_hook("fish", other)
    down = subprocess.run(
        ["fish", "--no-config", "-i", "-c", f"source '{down_hook}'; echo \"proxy=$HTTPS_PROXY.\""],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert "proxy=." in down.stdout
    assert "devmeter: no proxy answers" in down.stderr


@pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed")
@pytest.mark.parametrize("shell", SHELLS)
def test_the_prompt_check_starts_no_process(
    shell: str, proxy: RunningProxy, tmp_path: Path
) -> None:
    """Five prompts with the proxy up: five connections to its port, and not one fork."""
    hook = write_hook(shell, proxy.home)
    trace = tmp_path / "trace.log"
    argv = {"bash": ["bash", "--norc", "--noprofile", "-i"], "zsh": ["zsh", "-f", "-i"]}[shell]
    script = "\n".join([f". '{hook}'", *[":"] * 5, "exit"]) + "\n"
    done = subprocess.run(
        ["strace", "-f", "-e", "trace=clone,clone3,fork,vfork,connect", "-o", str(trace),
         *argv],
        input=script, capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    if "Operation not permitted" in done.stderr:
        pytest.skip("ptrace is not permitted here")
    calls = trace.read_text()
    assert not re.search(r"\b(clone3?|v?fork)\(", calls), calls
    to_proxy = re.findall(rf"connect\(\d+, .*htons\({proxy.port}\)", calls)
    assert len(to_proxy) >= 6  # once when sourced, then before each of 5 prompts


@pytest.mark.parametrize("shell", SHELLS)
def test_sourced_twice_or_nested_it_never_keeps_a_dead_proxy(
    shell: str, proxy: RunningProxy, tmp_path: Path
) -> None:
    """Sourcing the startup file again in a routed shell, or starting a shell from a routed
    one, must not mistake devmeter's values for the user's own and put them back."""
    hook = write_hook(shell, proxy.home)
    state = proxy.home / "proxy.json"
    copy = tmp_path / "proxy.json"
    copy.write_text(state.read_text())
    child = tmp_path / "child.sh"  # what the child shell is fed
    child.write_text(f". '{hook}'\nrm '{state}'\necho \"child=${{HTTPS_PROXY-unset}}\"\nexit\n")
    child_shell = {"bash": "bash --norc --noprofile -i", "zsh": "zsh -f -i"}[shell]
    lines = [
        f". '{hook}'",  # again, while routed
        f"rm '{state}'",  # the proxy stops
        'echo "again=${HTTPS_PROXY-unset} ssl=$SSL_CERT_FILE"',
        f"cp '{copy}' '{state}'",  # and starts again
        'echo "up=${HTTPS_PROXY-unset}"',
        f"{child_shell} < '{child}' 2>&1",  # a routed child; the proxy stops under it
    ]
    try:
        out = run_interactive(shell, hook, lines, clean_env(SSL_CERT_FILE="/etc/mine.pem"))
    finally:
        state.write_text(copy.read_text())
    assert "again=unset ssl=/etc/mine.pem" in out
    assert f"up={proxy.url}" in out
    assert "child=unset" in out, out


def test_the_powershell_hook_names_each_variable_once_ignoring_case(tmp_path: Path) -> None:
    """PowerShell refuses a hash literal with keys that differ only in case (NO_PROXY and
    no_proxy): the hook would not even load. (No pwsh here to run it; see the README.)"""
    text = write_hook("powershell", tmp_path).read_text()
    [fixed] = re.findall(r"(?m)^\$global:__devmeterFixed = @\{(.*)\}$", text)
    keys = [k.upper() for k in re.findall(r"'([A-Za-z_]+)' = ", fixed)]
    assert len(keys) == len(set(keys)) and "NO_PROXY" in keys and "SSL_CERT_FILE" in keys
    [urls] = re.findall(r"(?m)^\$global:__devmeterUrlNames = @\((.*)\)$", text)
    assert urls == "'HTTPS_PROXY'"
