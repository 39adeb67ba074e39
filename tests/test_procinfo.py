"""procinfo finds the real process behind a real TCP connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from devmeter import procinfo
from devmeter.procinfo import ProcessFinder, describe, normalize_ip

# A client: connect to the test's listening socket, then hold the connection
# until the test closes our stdin.
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sys.stdin.read()
"""
# A wrapper that drops DEVMETER_PROJECT from its child, so only the parent has it.
PARENT = """
import os, subprocess, sys
env = dict(os.environ)
env.pop("DEVMETER_PROJECT", None)
subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], env=env)
"""

METHODS = ["psutil"] + (["procfs"] if sys.platform.startswith("linux") else [])


@dataclass
class Connected:
    client: subprocess.Popen[bytes]
    peer: tuple[str, int]  # the client's address as the accepting side sees it
    sockname: tuple[str, int]  # the accepting side's own address
    port: int


@contextmanager
def connected_client(
    cwd: Path,
    env: dict[str, str],
    host: str = "127.0.0.1",
    wrapper: bool = False,
    dual_stack: bool = False,
) -> Iterator[Connected]:
    """A client process connected to a server socket of ours (dual-stack: bound to ::)."""
    family = socket.AF_INET6 if ":" in host or dual_stack else socket.AF_INET
    with socket.socket(family) as server:
        if dual_stack:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::" if dual_stack else host, 0))
        server.listen()
        server.settimeout(15)
        port = server.getsockname()[1]
        args = [CLIENT, host, str(port)]
        cmd = [sys.executable, "-c", PARENT, *args] if wrapper else [sys.executable, "-c", *args]
        client = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdin=subprocess.PIPE)
        try:
            conn, peer = server.accept()
            with conn:
                yield Connected(client, peer[:2], conn.getsockname()[:2], port)
        finally:
            assert client.stdin is not None
            client.stdin.close()
            client.wait(10)


def client_pid(c: Connected) -> int:
    """The pid of the process that actually holds the socket (the child, with a wrapper)."""
    proc = psutil.Process(c.client.pid)
    children = proc.children()
    return children[0].pid if children else proc.pid


@pytest.mark.parametrize("method", METHODS)
def test_peer_address_maps_to_the_client_process(tmp_path: Path, method: str) -> None:
    work = tmp_path / "acme" / "src"
    work.mkdir(parents=True)
    env = {"DEVMETER_SESSION": "sess-x", "DEVMETER_PROJECT": "acme"}
    with connected_client(work, env) as c:
        found = ProcessFinder(proxy_port=c.port, method=method).lookup(c.peer)

        assert found, found.reason
        p = found.process
        assert p is not None
        assert p.pid == c.client.pid
        assert p.start_time == psutil.Process(c.client.pid).create_time()
        assert p.cwd == str(work.resolve())
        assert p.name and p.name.startswith("python")
        assert (p.env_session, p.env_project) == ("sess-x", "acme")
        assert found.method in ("netlink", "procfs", "psutil")


@pytest.mark.parametrize("method", METHODS)
def test_devmeter_env_from_a_parent(tmp_path: Path, method: str) -> None:
    env = {"DEVMETER_SESSION": "s1", "DEVMETER_PROJECT": "from-parent"}
    with connected_client(tmp_path, env, wrapper=True) as c:
        found = ProcessFinder(proxy_port=c.port, method=method).lookup(c.peer)
        p = found.process
        assert p is not None, found.reason
        assert p.pid == client_pid(c) != c.client.pid
        assert (p.env_session, p.env_project) == ("s1", "from-parent")


@pytest.mark.parametrize("method", METHODS)
def test_client_without_devmeter_env(tmp_path: Path, method: str, monkeypatch) -> None:
    monkeypatch.delenv("DEVMETER_SESSION", raising=False)
    monkeypatch.delenv("DEVMETER_PROJECT", raising=False)
    with connected_client(tmp_path, {}) as c:
        p = ProcessFinder(proxy_port=c.port, method=method).lookup(c.peer).process
        assert p is not None
        assert (p.env_session, p.env_project) == (None, None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux lookup paths")
@pytest.mark.parametrize("how", ["4-tuple", "port only", "dump", "proc-net"])
def test_every_linux_path_finds_the_socket(tmp_path: Path, how: str, monkeypatch) -> None:
    if how == "proc-net":

        def unavailable(*args: object, **kwargs: object) -> None:
            raise procinfo._NetlinkUnavailable("test")

        monkeypatch.setattr(procinfo, "_sock_diag", unavailable)
    with connected_client(tmp_path, {}) as c:
        finder = ProcessFinder(proxy_port=None if how == "dump" else c.port, method="procfs")
        sockname = c.sockname if how == "4-tuple" else None
        found = finder.lookup(c.peer, sockname)
        assert found.process is not None and found.process.pid == c.client.pid, found.reason
        assert found.method == ("procfs" if how == "proc-net" else "netlink")


@pytest.mark.parametrize("method", METHODS)
def test_ipv4_mapped_peer_address(tmp_path: Path, method: str) -> None:
    # A proxy listening on a dual-stack socket sees IPv4 clients as ::ffff:a.b.c.d.
    with connected_client(tmp_path, {}) as c:
        mapped = (f"::ffff:{c.peer[0]}", c.peer[1])
        found = ProcessFinder(proxy_port=c.port, method=method).lookup(mapped)
        assert found.process is not None and found.process.pid == c.client.pid


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("client_host", ["127.0.0.1", "::ffff:127.0.0.1"])
def test_dual_stack_proxy(tmp_path: Path, method: str, client_host: str) -> None:
    # The client's socket is AF_INET, or AF_INET6 holding a mapped address.
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with connected_client(tmp_path, {}, host=client_host, dual_stack=True) as c:
        assert c.peer[0] == "::ffff:127.0.0.1"
        for sockname in (c.sockname, None):
            found = ProcessFinder(proxy_port=c.port, method=method).lookup(c.peer, sockname)
            assert found.process is not None and found.process.pid == c.client.pid, found.reason


@pytest.mark.parametrize("method", METHODS)
def test_ipv6_loopback(tmp_path: Path, method: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with connected_client(tmp_path, {}, host="::1") as c:
        found = ProcessFinder(proxy_port=c.port, method=method).lookup(c.peer, c.sockname)
        assert found.process is not None and found.process.pid == c.client.pid, found.reason


@pytest.mark.parametrize("method", METHODS)
def test_wrong_proxy_port_does_not_match(tmp_path: Path, method: str) -> None:
    with connected_client(tmp_path, {}) as c:
        found = ProcessFinder(proxy_port=1 if c.port != 1 else 2, method=method).lookup(c.peer)
        assert found.process is None and found.reason


@pytest.mark.parametrize("method", METHODS)
def test_unknown_peers_return_a_reason_never_raise(method: str) -> None:
    finder = ProcessFinder(proxy_port=1, method=method)
    # A port nobody on this machine connects from, a remote address, garbage.
    for peer in [("127.0.0.1", 1), ("203.0.113.9", 40000), ("not-an-ip", 5), ("", 0)]:
        found = finder.lookup(peer)
        assert not found
        assert found.process is None and found.reason


@pytest.mark.parametrize("method", METHODS)
def test_closed_connection_is_not_found(tmp_path: Path, method: str) -> None:
    with connected_client(tmp_path, {}) as c:
        peer, port = c.peer, c.port
    c.client.wait(10)
    found = ProcessFinder(proxy_port=port, method=method).lookup(peer)
    assert found.process is None and found.reason


def test_recent_pids_are_tried_first_and_bounded(tmp_path: Path) -> None:
    finder = ProcessFinder(recent_pids=2)
    with connected_client(tmp_path, {}) as c:
        finder.proxy_port = c.port
        assert finder.lookup(c.peer).process is not None
        assert list(finder._recent) == [c.client.pid]
        for pid in (1, 2, 3):
            finder._remember(pid)
        assert list(finder._recent) == [3, 2]


def test_describe_a_process_that_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    found = describe(child.pid)
    assert found.process is None and found.reason and "exited" in found.reason


def test_describe_ourselves() -> None:
    found = describe(os.getpid())
    assert found.process is not None
    assert found.process.cwd == os.getcwd()


def test_normalize_ip() -> None:
    assert str(normalize_ip("::ffff:127.0.0.1")) == "127.0.0.1"
    assert str(normalize_ip("fe80::1%eth0")) == "fe80::1"
    assert normalize_ip("localhost") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the quick path reads /proc")
def test_a_quick_lookup_finds_only_a_recent_client(tmp_path: Path) -> None:
    # Cheap enough for the proxy's event loop: it tries the last few clients and nothing
    # else, so a client it has not met is a miss with a reason, never a scan of /proc.
    finder = ProcessFinder(method="procfs")
    with connected_client(tmp_path, {}) as c:
        missed = finder.lookup_recent(c.peer, c.sockname)
        assert missed.process is None and missed.reason == "not one of the recent client processes"
        assert finder.lookup(c.peer, c.sockname).process is not None  # the full scan
        found = finder.lookup_recent(c.peer, c.sockname)
        assert found.process is not None and found.process.pid == c.client.pid


def test_a_quick_lookup_without_proc_is_a_miss() -> None:
    found = ProcessFinder(method="psutil").lookup_recent(("127.0.0.1", 40000), None)
    assert found.process is None and found.reason == "a quick lookup needs /proc"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/fd")
def test_the_quick_path_skips_a_process_with_too_many_files() -> None:
    with socket.socket() as held:
        target = f"socket:[{os.fstat(held.fileno()).st_ino}]"
        assert procinfo._holds_socket(os.getpid(), target)
        open_files = len(os.listdir("/proc/self/fd"))
        assert procinfo._holds_socket(os.getpid(), target, max_fds=open_files + 8)
        assert not procinfo._holds_socket(os.getpid(), target, max_fds=open_files - 1)
