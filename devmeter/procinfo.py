"""Which local process opened a connection to the proxy.

The proxy sees a client as its TCP peer address: the client socket's *local*
address. Finding the owner takes two steps:

1. the socket: the TCP socket whose local address is the peer and whose remote
   end is the proxy (its listen port, or the exact address the proxy accepted on);
2. its process: who holds that socket, then its start time, cwd, executable
   name and the DEVMETER_SESSION / DEVMETER_PROJECT variables `devmeter run` sets.

On Linux step 1 asks the kernel (netlink sock_diag, like `ss`), falling back to
/proc/net/tcp{,6}, and step 2 scans /proc/<pid>/fd of the socket owner's uid,
recently seen client pids first, then newest pid first. That is an order of
magnitude cheaper than psutil.net_connections(), which reads every fd of every
process (figures: benchmarks/RESULTS.md). Elsewhere
psutil does both steps; on macOS psutil.net_connections() needs root, so it
falls back to asking each process (recent client pids first) for its sockets.

Nothing here raises: a lookup that fails returns a `Lookup` with a reason.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import psutil

ENV_SESSION = "DEVMETER_SESSION"
ENV_PROJECT = "DEVMETER_PROJECT"
# How many parents to ask for DEVMETER_* when the client itself lacks them.
MAX_PARENT_DEPTH = 8

# How many of the most recent client pids a quick lookup tries before giving up, and the
# most open files it reads of each: it runs on the proxy's event loop, so a client with
# thousands of them (an editor) is left to the full lookup, on a worker thread.
QUICK_PIDS = 4
QUICK_MAX_FDS = 1024

Peer = tuple[str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Method = Literal["auto", "procfs", "psutil"]


@dataclass(frozen=True)
class ClientProcess:
    """The process at the other end of a proxy connection."""

    pid: int
    start_time: float  # unix seconds (psutil create_time); with pid, identifies the process
    name: str | None = None  # executable name, e.g. "claude", "node", "python3.11"
    cwd: str | None = None  # None when unreadable
    env_session: str | None = None  # DEVMETER_SESSION from the process or its nearest parent
    env_project: str | None = None  # DEVMETER_PROJECT likewise


@dataclass(frozen=True)
class Lookup:
    """The answer to "who is this peer?": a process, or None and why not."""

    process: ClientProcess | None
    reason: str | None = None
    # How the socket was found: "netlink", "procfs" (/proc/net/tcp) or "psutil".
    method: str = ""

    def __bool__(self) -> bool:
        return self.process is not None


class ProcessFinder:
    """Maps a proxy client's peer address to its process; remembers recent client pids.

    `proxy_port` is the port the proxy listens on; only a socket connected to it
    matches, so another connection that shares the peer's address cannot be
    mistaken for the client. `method` "auto" is "procfs" on Linux, else "psutil".
    """

    def __init__(
        self, proxy_port: int | None = None, method: Method = "auto", recent_pids: int = 64
    ) -> None:
        self.proxy_port = proxy_port
        if method == "auto":
            method = "procfs" if _procfs_available() else "psutil"
        self.method: Method = method
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._recent_max = recent_pids
        self._lock = threading.Lock()  # lookups may run in worker threads

    def lookup(self, peer: Peer, sockname: Peer | None = None) -> Lookup:
        """The process whose socket has local address `peer`.

        `sockname` is the proxy's own address on that connection (mitmproxy's
        `client_conn.sockname`); with it the kernel finds the socket directly.
        """
        return self._lookup(peer, sockname, quick=False)

    def lookup_recent(self, peer: Peer, sockname: Peer | None = None) -> Lookup:
        """`lookup`, trying only the few most recent client processes (Linux): a
        millisecond or two, cheap enough for the event loop. A miss (a new client, or not
        Linux) says so in its reason; `lookup` then scans every process."""
        return self._lookup(peer, sockname, quick=True)

    def _lookup(self, peer: Peer, sockname: Peer | None, quick: bool) -> Lookup:
        if normalize_ip(peer[0]) is None:
            return Lookup(None, f"not an IP address: {peer[0]!r}", self.method)
        if quick and self.method != "procfs":
            return Lookup(None, "a quick lookup needs /proc", self.method)
        remote_port = sockname[1] if sockname else self.proxy_port
        remote_ip = sockname[0] if sockname else None
        with self._lock:
            recent = list(self._recent)[:QUICK_PIDS] if quick else list(self._recent)
        try:
            if self.method == "procfs":
                pid, reason, how = _pid_via_procfs(
                    peer, remote_ip, remote_port, recent, recent_only=quick
                )
            else:
                pid, reason, how = _pid_via_psutil(peer, remote_port, recent)
        except Exception as e:  # never let a lookup take a request down
            return Lookup(None, f"lookup failed: {type(e).__name__}: {e}", self.method)
        if pid is None:
            return Lookup(None, reason, how)
        found = describe(pid)
        if found.process is not None:
            self._remember(pid)
        return Lookup(found.process, found.reason, how)

    def _remember(self, pid: int) -> None:
        with self._lock:
            self._recent[pid] = None
            self._recent.move_to_end(pid, last=False)
            while len(self._recent) > self._recent_max:
                self._recent.popitem()


def describe(pid: int) -> Lookup:
    """Start time, name, cwd and DEVMETER_* of a process; None with a reason if it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            start_time = proc.create_time()
            name = _guarded(proc.name)
        cwd = _guarded(proc.cwd) or None
    except psutil.NoSuchProcess:
        return Lookup(None, f"process {pid} exited")
    except psutil.AccessDenied:
        return Lookup(None, f"process {pid}: access denied")
    except (psutil.Error, OSError) as e:
        return Lookup(None, f"process {pid}: {type(e).__name__}: {e}")
    session, project = _devmeter_env(proc)
    return Lookup(ClientProcess(pid, start_time, name, cwd, session, project))


def _guarded(getter: Callable[[], str]) -> str | None:
    try:
        return getter()
    except psutil.NoSuchProcess:
        raise
    except (psutil.Error, OSError):
        return None


def _devmeter_env(proc: psutil.Process) -> tuple[str | None, str | None]:
    """DEVMETER_SESSION and DEVMETER_PROJECT from the process, else its nearest parent."""
    if _procfs_available():
        return _devmeter_env_procfs(proc.pid)
    session: str | None = None
    project: str | None = None
    current: psutil.Process | None = proc
    for _ in range(MAX_PARENT_DEPTH + 1):
        if current is None:
            break
        try:
            env = current.environ()
        except (psutil.Error, OSError):
            env = {}
        session = session or env.get(ENV_SESSION) or None
        project = project or env.get(ENV_PROJECT) or None
        if session and project:
            break
        try:
            current = current.parent()
        except (psutil.Error, OSError):
            break
    return session, project


def _devmeter_env_procfs(pid: int) -> tuple[str | None, str | None]:
    """Linux: the same walk over /proc/<pid>/environ and stat, without psutil's overhead."""
    wanted = {ENV_SESSION.encode(): 0, ENV_PROJECT.encode(): 1}
    found: list[str | None] = [None, None]
    for _ in range(MAX_PARENT_DEPTH + 1):
        if pid <= 0:
            break
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            env = b""
        if b"DEVMETER_" in env:
            for entry in env.split(b"\0"):
                name, _, value = entry.partition(b"=")
                index = wanted.get(name)
                if index is not None and value and found[index] is None:
                    found[index] = value.decode("utf-8", "replace")
        if found[0] and found[1]:
            break
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # state, then ppid
        except (OSError, ValueError, IndexError):
            break
    return found[0], found[1]


# -- addresses ---------------------------------------------------------------


def normalize_ip(ip: str) -> IPAddress | None:
    """The address, with an IPv4-mapped IPv6 address (::ffff:a.b.c.d) as plain IPv4."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _same_address(a: str, b: str) -> bool:
    na, nb = normalize_ip(a), normalize_ip(b)
    return na is not None and na == nb


# -- Linux: netlink sock_diag, /proc ------------------------------------------
#
# Step 1 asks the kernel for the socket by its 4-tuple (NETLINK_SOCK_DIAG, as
# `ss` does), the cheapest way. Without the proxy's own address it dumps TCP
# sockets filtered by port (dearer: the kernel walks its hash table), and where
# netlink is unavailable it reads /proc/net/tcp{,6} (dearest: text of every socket).

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NOCOOKIE = 0xFFFFFFFF
_NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_MSG_MIN = 72  # inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid, inode


class _NetlinkUnavailable(Exception):
    pass


def _procfs_available() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")


def _families(addr: IPAddress) -> list[tuple[int, bytes]]:
    """(address family, packed address) a socket with this local address can have."""
    if isinstance(addr, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
        return [(socket.AF_INET, addr.packed), (socket.AF_INET6, mapped.packed)]
    return [(socket.AF_INET6, addr.packed)]


def _diag_request(family: int, sport: int, src: bytes, dport: int, dst: bytes, dump: bool) -> bytes:
    sockid = struct.pack("!HH16s16s", sport, dport, src, dst)
    sockid += struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)  # interface, cookie: any
    all_states = 0xFFFFFFFF
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, all_states) + sockid
    flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
    header = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(req), _SOCK_DIAG_BY_FAMILY, flags, 1, 0)
    return header + req


def _sock_diag(
    family: int, sport: int, src: bytes, dport: int, dst: bytes, dump: bool
) -> list[tuple[bytes, int, int, int]]:
    """(local address, remote port, uid, inode) of the sockets the kernel reports."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError) as e:
        raise _NetlinkUnavailable(str(e)) from e
    found: list[tuple[bytes, int, int, int]] = []
    with sock:
        sock.settimeout(1.0)
        try:
            sock.sendto(_diag_request(family, sport, src, dport, dst, dump), (0, 0))
            while True:
                data = sock.recv(1 << 16)
                offset = 0
                while offset + _NLMSG_HEADER.size <= len(data):
                    length, kind = _NLMSG_HEADER.unpack_from(data, offset)[:2]
                    if length < _NLMSG_HEADER.size:
                        return found
                    if kind == _NLMSG_DONE:
                        return found
                    if kind == _NLMSG_ERROR:
                        (errno,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
                        if errno in (0, -2):  # ENOENT: no such socket
                            return found
                        raise _NetlinkUnavailable(os.strerror(-errno))
                    body = data[offset + _NLMSG_HEADER.size : offset + length]
                    if len(body) >= _DIAG_MSG_MIN:
                        msg_family = body[0]
                        remote_port = struct.unpack_from("!H", body, 6)[0]
                        size = 4 if msg_family == socket.AF_INET else 16
                        local = body[8 : 8 + size]
                        uid, inode = struct.unpack_from("=II", body, 64)
                        found.append((local, remote_port, uid, inode))
                    offset += (length + 3) & ~3
                if not dump:
                    return found
        except OSError as e:
            raise _NetlinkUnavailable(str(e)) from e


def _socket_via_netlink(
    peer: Peer, remote_ip: str | None, remote_port: int | None
) -> tuple[int, int] | None:
    """(inode, uid) of the socket whose local address is `peer`, asking the kernel."""
    addr = normalize_ip(peer[0])
    assert addr is not None
    families = _families(addr)
    remote_port = remote_port or 0
    if remote_port:
        # By 4-tuple: the proxy's address as given, else the peer's own (a local
        # connection's source address is usually its destination).
        remote_addr = normalize_ip(remote_ip) if remote_ip else None
        remotes = dict(_families(remote_addr)) if remote_addr is not None else {}
        for family, local in families:
            for dst in dict.fromkeys([remotes.get(family, local), local]):
                hits = _sock_diag(family, peer[1], local, remote_port, dst, dump=False)
                if hits:
                    return hits[0][3], hits[0][2]
    for family, local in families:
        for sock_local, sock_remote_port, uid, inode in _sock_diag(
            family, peer[1], b"", remote_port, b"", dump=True
        ):
            if sock_local == local and (not remote_port or sock_remote_port == remote_port):
                return inode, uid
    return None


def _proc_hex(packed: bytes) -> str:
    """An address as /proc/net/tcp{,6} prints it: each 32-bit word in host byte order."""
    if sys.byteorder == "little":
        packed = b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))
    return packed.hex().upper()


def _socket_via_proc_net(peer: Peer, remote_port: int | None) -> tuple[int, int] | None:
    """(inode, uid) of the socket whose local address is `peer`, from /proc/net/tcp{,6}."""
    addr = normalize_ip(peer[0])
    assert addr is not None
    suffix = f":{remote_port:04X}" if remote_port else None
    for family, packed in _families(addr):
        path = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
        local = f"{_proc_hex(packed)}:{peer[1]:04X}"
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                table = f.read()
        except OSError:
            continue
        start = table.find(local)
        while start != -1:
            line_start = table.rfind("\n", 0, start) + 1
            line_end = table.find("\n", start)
            fields = table[line_start : line_end if line_end != -1 else None].split()
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if (
                len(fields) > 9
                and fields[1] == local
                and (suffix is None or fields[2].endswith(suffix))
            ):
                return int(fields[9]), int(fields[7])
            start = table.find(local, start + 1)
    return None


def _pids_to_scan(uid: int, first: Iterable[int], recent_only: bool = False) -> Iterator[int]:
    """Recent client pids, then (unless `recent_only`) every process of `uid`, newest first."""
    seen: set[int] = set()
    for pid in first:
        seen.add(pid)
        yield pid
    if recent_only:
        return
    try:
        pids = sorted((int(e) for e in os.listdir("/proc") if e.isdigit()), reverse=True)
    except OSError:
        return
    # Newest first: pids mostly grow, and a client we have not seen is usually new.
    for pid in pids:
        if pid in seen:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        yield pid


def _holds_socket(pid: int, target: str, max_fds: int | None = None) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    if max_fds is not None and len(fds) > max_fds:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _pid_via_procfs(
    peer: Peer,
    remote_ip: str | None,
    remote_port: int | None,
    recent: list[int],
    recent_only: bool = False,
) -> tuple[int | None, str | None, str]:
    """(pid, reason, how the socket was found) on Linux."""
    how = "netlink"
    try:
        found = _socket_via_netlink(peer, remote_ip, remote_port)
    except _NetlinkUnavailable:
        how = "procfs"
        found = _socket_via_proc_net(peer, remote_port)
    if found is None:
        return None, "no local socket with that address (remote client, or it closed)", how
    inode, uid = found
    if inode == 0:
        return None, "the socket is closing", how
    target = f"socket:[{inode}]"
    max_fds = QUICK_MAX_FDS if recent_only else None
    for pid in _pids_to_scan(uid, recent, recent_only):
        if _holds_socket(pid, target, max_fds):
            return pid, None, how
    if recent_only:
        return None, "not one of the recent client processes", how
    if uid != os.getuid() and os.getuid() != 0:
        return None, f"the socket belongs to uid {uid}, whose processes are not readable", how
    return None, "no process holds the socket (it closed)", how


# -- elsewhere: psutil -------------------------------------------------------


def _matches(conn: object, peer: Peer, remote_port: int | None) -> bool:
    laddr = getattr(conn, "laddr", None)
    if not laddr or laddr[1] != peer[1] or not _same_address(laddr[0], peer[0]):
        return False
    if not remote_port:
        return True
    raddr = getattr(conn, "raddr", None)
    return bool(raddr) and raddr[1] == remote_port


def _pid_via_psutil(
    peer: Peer, remote_port: int | None, recent: list[int]
) -> tuple[int | None, str | None, str]:
    """(pid, reason, "psutil"): recent client pids, then all sockets, then each process."""
    for pid in recent:
        if _process_has(pid, peer, remote_port):
            return pid, None, "psutil"
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if _matches(conn, peer, remote_port) and conn.pid is not None:
                return conn.pid, None, "psutil"
    except (psutil.AccessDenied, PermissionError):
        pass  # macOS without root: ask each process instead
    except (psutil.Error, OSError) as e:
        return None, f"net_connections failed: {e}", "psutil"
    skip = set(recent)
    for proc in psutil.process_iter():
        if proc.pid not in skip and _process_has(proc, peer, remote_port):
            return proc.pid, None, "psutil"
    return None, "no local process holds a socket with that address", "psutil"


def _process_has(proc: int | psutil.Process, peer: Peer, remote_port: int | None) -> bool:
    try:
        if isinstance(proc, int):
            proc = psutil.Process(proc)
        # psutil >= 6 calls it net_connections; 5.x connections.
        connections = getattr(proc, "net_connections", None) or proc.connections
        conns = connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(_matches(c, peer, remote_port) for c in conns)
