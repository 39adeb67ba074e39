"""Who made a call: the tool, its session, and the git repo and branch it worked in.

Pure functions read what clients send (headers, and facts the request parser
found in the body); `Attributor` adds what only the machine knows (which process
owns the connection, its cwd and DEVMETER_* environment, the repo's branch).

Precedence, highest first:

- session: `X-Devmeter-Session` header > the client process's DEVMETER_SESSION >
  the tool's own session (Claude Code's `X-Claude-Code-Session-Id` or
  `metadata.user_id`, Codex's `session-id` / `thread-id` / `x-codex-turn-metadata`,
  Gemini CLI's `session_id` in its Code Assist requests; with an API key it sends none)
  > a per-process session that restarts after an idle gap > None.
- repo: `X-Devmeter-Project` header / DEVMETER_PROJECT ("explicit") > Claude
  Code's working directory ("claude-env") > the client process's cwd when it is
  inside a git repo ("process") > unattributed (None; never guessed).

No mitmproxy imports: the proxy addon passes headers, facts and the peer address.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from operator import methodcaller

from devmeter.gitinfo import GitInfo, RepoInfo
from devmeter.procinfo import ClientProcess, Lookup, Peer, ProcessFinder
from devmeter.usage import Attribution

# Headers devmeter itself understands (`devmeter run` and users may set them).
HEADER_SESSION = "x-devmeter-session"
HEADER_PROJECT = "x-devmeter-project"

# Keys of `RequestInfo.facts` read here; the request parsers fill them.
FACT_SESSION_ID = "session_id"  # Claude Code's metadata.user_id; Gemini CLI's request.session_id
FACT_USER_ID = "user_id"  # Claude Code: metadata.user_id as sent (JSON or legacy form)
FACT_CWD = "cwd"  # Claude Code: "Primary working directory" of its environment block

DEFAULT_IDLE_GAP = 30 * 60.0  # seconds without a call before a process session restarts
MAX_ID_LENGTH = 1024  # longer ids and paths are cut: they come from the network

Headers = Mapping[str, str]
Facts = Mapping[str, str]

# Every header value and request fact `Attributor.attribute` reads (with the header names,
# which say whether a client's own headers are there): equal ones on one connection, with
# the same process behind it, give the same tool, session and repo (see _Memo).
_READ_HEADERS = (
    "user-agent", "host", "x-app", "originator", "x-stainless-lang", "anthropic-version",
    "x-goog-api-client", "x-devmeter-session", "x-devmeter-project",
    "x-claude-code-session-id", "session-id", "thread-id", "x-codex-turn-metadata",
)  # fmt: skip


class LowerHeaders(dict[str, str]):
    """Headers `lower_headers` already lower-cased. Read-only by convention: the proxy
    lowers a request's headers once and hands the result on, and lowering it again
    (the attributor does, for callers with other Mappings) returns it as it is."""


def lower_headers(headers: Headers) -> dict[str, str]:
    """The headers with lower-case names (mitmproxy's Headers, a dict, anything Mapping)."""
    if type(headers) is LowerHeaders:
        return headers
    fields = getattr(headers, "fields", None)
    if fields is None:
        return LowerHeaders({str(k).lower(): str(v) for k, v in headers.items()})
    # mitmproxy's Headers: its raw (name, value) byte pairs, decoded as mitmproxy decodes
    # them. Going through its Mapping interface costs ~10x more, on every request.
    lowered = LowerHeaders()
    for raw_name, raw_value in fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        lowered[name] = f"{lowered[name]}, {value}" if name in lowered else value
    return lowered


# -- tool ---------------------------------------------------------------------

# Stainless SDKs send `<client class>/<Language> <version>`: Anthropic, AsyncAnthropic,
# AnthropicBedrock, AnthropicVertex, OpenAI, AsyncOpenAI, AzureOpenAI, ...
_SDK_VENDOR = re.compile(r"(?:async)?(?:azure)?(anthropic|openai)[a-z]*", re.IGNORECASE)
_CURSOR_UA = re.compile(r"\bcursor/")
# Gemini CLI: `GeminiCLI/<version>/<model> (...)` in older versions, now `GeminiCLI-<client>/...`
# (client "tui", "cli-command", "acp", "acp-<ide>"); in VS Code or Cloud Shell its Code
# Assist calls go out as `CloudCodeVSCode/... proxy_client=geminicli)`.
_GEMINI_CLI_UA = re.compile(
    r"^(?:geminicli(?:-[a-z0-9._-]+)?|gemini-cli)/|[(;\s]proxy_client=geminicli\b"
)
_GOOGLE_LANG = re.compile(r"\bgl-([a-z]+)/", re.IGNORECASE)
_PRODUCT = re.compile(r"[^a-z0-9._-]+")
# Header-name tests for any(map(...)): run in C over every header of every request.
_CODEX_HEADER = methodcaller("startswith", "x-codex-")
_CURSOR_HEADER = methodcaller("startswith", "x-cursor-")


def detect_tool(headers: Headers, host: str | None = None) -> str:
    """The client that sent a request, from its headers (names case-insensitive).

    "claude-code", "codex", "gemini-cli", "cursor", "anthropic-sdk-python" /
    "-node" (any Stainless language: "-go", "-java", ...), "openai-sdk-*",
    "gemini-sdk-python" / "-node", else the User-Agent's product name lower-cased
    ("curl"), else "unknown". `host` helps recognise Cursor over HTTP/2, where
    there is no Host header.
    """
    return _detect(lower_headers(headers), host)


def _detect(h: dict[str, str], host: str | None) -> str:
    ua = h.get("user-agent", "").strip()
    ua_lower = ua.lower()
    host = (host or h.get("host") or "").lower().split(":", 1)[0]

    # Claude Code speaks through the Anthropic JS SDK: check it before the SDKs.
    if (
        ua_lower.startswith(("claude-cli/", "claude-code/"))
        or "x-claude-code-session-id" in h
        or h.get("x-app", "").lower() == "cli"
    ):
        return "claude-code"
    if (
        h.get("originator", "").lower().startswith("codex")
        or ua_lower.startswith(("codex_", "codex-"))
        or any(map(_CODEX_HEADER, h))
    ):
        return "codex"
    # Gemini CLI sends the GenAI SDK's x-goog-api-client too: check it first.
    if _GEMINI_CLI_UA.search(ua_lower):
        return "gemini-cli"
    if host.endswith("cursor.sh") or _CURSOR_UA.search(ua_lower) or any(map(_CURSOR_HEADER, h)):
        return "cursor"

    product, _, rest = ua.partition("/")
    vendor = _SDK_VENDOR.fullmatch(product)
    if vendor:
        lang = rest.split(" ", 1)[0]
        if not lang.isalpha():  # "Anthropic/0.1": no language in the User-Agent
            lang = h.get("x-stainless-lang", "")
        return _sdk(vendor.group(1).lower(), lang)
    stainless_lang = h.get("x-stainless-lang")
    if stainless_lang and "anthropic-version" in h:
        # A Stainless SDK whose client class name a JS bundler mangled ("e/JS 0.52.0").
        return _sdk("anthropic", stainless_lang)

    google = h.get("x-goog-api-client", "") + " " + ua
    google_lower = google.lower()
    if "google-genai-sdk/" in google_lower or "genai-py/" in google_lower:
        if "genai-py/" in google_lower:
            return "gemini-sdk-python"
        lang = _GOOGLE_LANG.search(google)
        return _sdk("gemini", lang.group(1)) if lang else "gemini-sdk"
    if "genai-js/" in google_lower:
        return "gemini-sdk-node"

    name = _PRODUCT.sub("", ua_lower.split(" ", 1)[0].split("/", 1)[0])[:64]
    return name or "unknown"


def _sdk(vendor: str, lang: str) -> str:
    lang = lang.strip().lower()
    if lang in ("js", "javascript", "typescript", "ts"):
        lang = "node"
    return f"{vendor}-sdk-{lang}" if lang.isalpha() else f"{vendor}-sdk"


# -- session ------------------------------------------------------------------

_LEGACY_USER_ID = re.compile(r"_session_([0-9A-Za-z-]+)$")


def session_from_user_id(user_id: str) -> str | None:
    """Claude Code's session id from `metadata.user_id`.

    Current form: a JSON string `{"device_id": ..., "account_uuid": ..., "session_id": ...}`;
    older form: `user_<hash>_account_<uuid>_session_<uuid>`.
    """
    text = user_id.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        session = value.get("session_id") if isinstance(value, dict) else None
        return _clean(session) if isinstance(session, str) else None
    match = _LEGACY_USER_ID.search(text)
    return _clean(match.group(1)) if match else None


def session_from_headers(headers: Headers, request_facts: Facts | None = None) -> str | None:
    """The session a request declares: X-Devmeter-Session, else the tool's own."""
    h = lower_headers(headers)
    return _explicit_session(h) or _tool_session(h, request_facts or {})


def _explicit_session(h: dict[str, str]) -> str | None:
    return _clean(h.get(HEADER_SESSION))


def _tool_session(h: dict[str, str], facts: Facts) -> str | None:
    # Claude Code
    session = _clean(h.get("x-claude-code-session-id")) or _clean(facts.get(FACT_SESSION_ID))
    if session:
        return session
    user_id = facts.get(FACT_USER_ID)
    if user_id and (session := session_from_user_id(user_id)):
        return session
    # Codex
    session = _clean(h.get("session-id"))
    if session:
        return session
    raw_metadata = h.get("x-codex-turn-metadata")
    if not raw_metadata:  # what follows, without the metadata to read: most clients
        return _clean(h.get("thread-id"))
    metadata = _codex_turn_metadata(raw_metadata)
    return (
        _clean(metadata.get("session_id"))
        or _clean(h.get("thread-id"))
        or _clean(metadata.get("thread_id"))
    )


def _codex_turn_metadata(raw: str | None) -> dict[str, object]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_CONTROL_CHARS = dict.fromkeys([*range(32), 127])


def _clean(value: object) -> str | None:
    """A value from the network fit for the ledger: no control characters, bounded."""
    if not isinstance(value, str):
        return None
    value = value.translate(_CONTROL_CHARS).strip()
    return value[:MAX_ID_LENGTH] or None


@dataclass
class _ProcessSession:
    session: str
    last_seen: float


class ProcessSessions:
    """Sessions for clients that declare none: one per process, restarting when idle.

    Keyed by (pid, process start time), so a reused pid starts its own session.
    A session's id is `proc-<pid>-<unix second of its first call>`; a call more
    than `idle_gap` seconds after the process's previous one starts a new session.
    Pure bookkeeping: the caller supplies the clock. Not thread-safe.
    """

    def __init__(self, idle_gap: float = DEFAULT_IDLE_GAP, max_processes: int = 4096) -> None:
        self.idle_gap = idle_gap
        self.max_processes = max_processes
        self._live: dict[tuple[int, float], _ProcessSession] = {}

    def session_for(self, pid: int, start_time: float, now: float) -> str:
        key = (pid, start_time)
        entry = self._live.get(key)
        if entry is not None and now - entry.last_seen <= self.idle_gap:
            entry.last_seen = max(entry.last_seen, now)
            return entry.session
        if entry is None and len(self._live) >= self.max_processes:
            self._prune(now)
        entry = _ProcessSession(f"proc-{pid}-{int(now)}", now)
        self._live[key] = entry
        return entry.session

    def __len__(self) -> int:
        return len(self._live)

    def _prune(self, now: float) -> None:
        """Forget idle processes (their next call starts a new session anyway)."""
        self._live = {k: e for k, e in self._live.items() if now - e.last_seen <= self.idle_gap}
        while len(self._live) >= self.max_processes:  # all busy: drop the least recent
            del self._live[min(self._live, key=lambda k: self._live[k].last_seen)]


# -- putting it together --------------------------------------------------------


@dataclass(slots=True)
class _Memo:
    """A connection's last attribution and what it was made of (`Attributor.attribute`).

    Reused for the connection's next request while its inputs are the same (headers read,
    facts, host, and the very same process lookup) and the git answers it read are still
    the ones GitInfo holds (`until`, on its clock): a branch switch shows as soon as it
    did before. A session of the process's own (`process_session`) is asked for again on
    every call: that is what keeps it alive, or restarts it after an idle gap."""

    key: tuple[object, ...]
    lookup: Lookup
    until: float
    attribution: Attribution
    process_session: bool


class Attributor:
    """Attributes calls; caches the process behind each connection.

    `lookup` maps a peer address (and the proxy's own address on that
    connection, when known) to its process; the default asks the OS through
    `ProcessFinder`. Lookups are cached per peer for `peer_ttl` seconds, so a
    keep-alive connection costs one; call `forget(peer)` when a connection closes
    so a reused port cannot inherit it. `process_for` may run in a worker thread
    (e.g. from mitmproxy's `client_connected`) to warm the cache off the event loop;
    `attribute` itself belongs to one thread.
    """

    def __init__(
        self,
        lookup: Callable[[Peer, Peer | None], Lookup] | None = None,
        *,
        proxy_port: int | None = None,
        idle_gap: float = DEFAULT_IDLE_GAP,
        peer_ttl: float = 60.0,
        git: GitInfo | None = None,
        max_peers: int = 4096,
        quick_lookup: Callable[[Peer, Peer | None], Lookup] | None = None,
    ) -> None:
        if lookup is None:
            finder = ProcessFinder(proxy_port)
            lookup, quick_lookup = finder.lookup, finder.lookup_recent
        self._lookup = lookup
        # Cheap enough for the event loop: the recent clients only (see process_quickly).
        self._quick_lookup = quick_lookup
        self.sessions = ProcessSessions(idle_gap)
        self.git = git or GitInfo()
        self.peer_ttl = peer_ttl
        self.max_peers = max_peers
        self._peers: dict[Peer, tuple[float, Lookup]] = {}
        self._lock = threading.Lock()
        # Each connection's last attribution (only `attribute`'s thread uses it).
        self._memos: dict[Peer, _Memo] = {}
        self._git_until = 0.0  # while attributing: when the git answers read expire

    def attribute(
        self,
        headers: Headers,
        request_facts: Facts | None,
        peer: Peer | None,
        now: float,
        *,
        host: str | None = None,
        sockname: Peer | None = None,
    ) -> Attribution:
        """Tool, session, repo and branch for one request; never raises on bad input."""
        h = lower_headers(headers)
        facts = request_facts or {}
        if peer is None:
            self._git_until = float("inf")
            return self._settled(self._attribution(h, facts, None, now, host)[0])
        found = self.process_for(peer, now, sockname)
        key = (
            host,
            tuple(h),
            tuple(map(h.get, _READ_HEADERS)),
            facts.get(FACT_CWD),
            facts.get(FACT_SESSION_ID),
            facts.get(FACT_USER_ID),
        )
        memo = self._memos.get((peer[0], peer[1]))
        if (
            memo is not None
            and memo.lookup is found
            and memo.key == key
            and self.git.now() < memo.until
        ):
            attribution = memo.attribution
            if memo.process_session and found.process is not None:
                process = found.process
                session = self.sessions.session_for(process.pid, process.start_time, now)
                if session != attribution.session:
                    attribution = memo.attribution = replace(attribution, session=session)
            return attribution
        self._git_until = float("inf")
        attribution, process_session = self._attribution(h, facts, found.process, now, host)
        attribution = self._settled(attribution)
        if len(self._memos) >= self.max_peers:
            self._memos.clear()  # bounded; closed connections are forgotten one by one
        self._memos[(peer[0], peer[1])] = _Memo(
            key, found, self._git_until, attribution, process_session
        )
        return attribution

    def _settled(self, attribution: Attribution) -> Attribution:
        """`attribution`, marked unsettled when a git answer it read was not there yet (a
        lookup still under way: `_git_until` 0). Such an answer is never remembered."""
        return attribution if self._git_until > 0.0 else replace(attribution, settled=False)

    def _attribution(
        self,
        h: dict[str, str],
        facts: Facts,
        process: ClientProcess | None,
        now: float,
        host: str | None,
    ) -> tuple[Attribution, bool]:
        """The attribution, and whether its session is the process's own (ProcessSessions)."""
        repo, branch, source = self._repo(h, facts, process)
        session = self._declared_session(h, facts, process)
        process_session = session is None and process is not None
        if process_session:
            assert process is not None
            session = self.sessions.session_for(process.pid, process.start_time, now)
        attribution = Attribution(
            tool=_detect(h, host),
            session=session,
            repo=repo,
            branch=branch,
            repo_source=source,
            pid=process.pid if process else None,
        )
        return attribution, process_session

    def process_for(self, peer: Peer, now: float, sockname: Peer | None = None) -> Lookup:
        """The process behind a connection, looked up once per `peer_ttl` seconds."""
        key = (peer[0], peer[1])
        with self._lock:
            hit = self._peers.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found = self._lookup(key, sockname)
        except Exception as e:  # an injected lookup must not break attribution either
            found = Lookup(None, f"lookup failed: {type(e).__name__}: {e}")
        self._store(key, now, found)
        return found

    def process_quickly(self, peer: Peer, now: float, sockname: Peer | None = None) -> bool:
        """Find the process among the recent clients and cache it; False when only the
        full lookup (`process_for`, best run off the event loop) can tell.

        A client that opens a new connection is nearly always one seen before: its
        lookup then takes a millisecond or two, less than a worker thread costs the event
        loop by trading the GIL with it on every syscall of the lookup."""
        if self._quick_lookup is None:
            return False
        key = (peer[0], peer[1])
        try:
            found = self._quick_lookup(key, sockname)
        except Exception:  # the full lookup will say what is wrong
            return False
        if found.process is None:
            return False
        self._store(key, now, found)
        return True

    def _store(self, key: Peer, now: float, found: Lookup) -> None:
        with self._lock:
            if len(self._peers) >= self.max_peers:
                self._peers = {k: v for k, v in self._peers.items() if v[0] > now}
                if len(self._peers) >= self.max_peers:
                    self._peers.clear()
            self._peers[key] = (now + self.peer_ttl, found)

    def forget(self, peer: Peer) -> None:
        """Drop a closed connection's cached process."""
        with self._lock:
            self._peers.pop((peer[0], peer[1]), None)
        self._memos.pop((peer[0], peer[1]), None)

    def _declared_session(
        self, h: dict[str, str], facts: Facts, process: ClientProcess | None
    ) -> str | None:
        """The session the request or its process names, if any."""
        return (
            _explicit_session(h)
            or (_clean(process.env_session) if process else None)
            or _tool_session(h, facts)
        )

    def _repo(
        self, h: dict[str, str], facts: Facts, process: ClientProcess | None
    ) -> tuple[str | None, str | None, str | None]:
        explicit = _clean(h.get(HEADER_PROJECT)) or (
            _clean(process.env_project) if process else None
        )
        if explicit:
            info = self._repo_at(explicit) if os.path.isabs(explicit) else None
            if info is not None:
                return info.root, info.branch, "explicit"
            # A project name: the branch still comes from where the client works.
            _, branch, _ = self._workplace(facts, process)
            return explicit, branch, "explicit"
        return self._workplace(facts, process)

    def _workplace(
        self, facts: Facts, process: ClientProcess | None
    ) -> tuple[str | None, str | None, str | None]:
        cwd = _clean(facts.get(FACT_CWD))
        if cwd:
            info = self._repo_at(cwd)
            if info is not None:
                return info.root, info.branch, "claude-env"
            # Not a repo here, or not on this machine (a remote or container client):
            # Claude Code said where it works, so keep its word.
            return cwd, None, "claude-env"
        if process is not None and process.cwd:
            info = self._repo_at(process.cwd)
            if info is not None:
                return info.root, info.branch, "process"
        return None, None, None

    def _repo_at(self, path: str) -> RepoInfo | None:
        try:
            info, until = self.git.repo_until(path)
        except Exception:  # a path from the network must not break attribution
            self._git_until = 0.0
            return None
        self._git_until = min(self._git_until, until)
        return info
