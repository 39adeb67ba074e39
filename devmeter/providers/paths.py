"""Which requests to an intercepted host cost money: path normalisation and the free list.

Matching works on the path a server would route, not the bytes a client sent:
`//v1/messages`, `/v1/%6Dessages`, `/V1/MESSAGES`, `/v1/messages;x`, `/v1/messages/`
and `/v1/x/../messages` are all `/v1/messages` here (the request itself is forwarded
as sent). Without this, each spelling would be a side door past metering and caps.

When metered traffic is paused or a cap is reached, every request to an LLM API host
is refused unless it is on its host's free list (registered with the host by its
provider module): reads of models, files, batch status and results, token counting,
cancelling, Claude Code's own side calls. Default deny: a path nobody listed (a new
paid API, a misspelling the server still routes) is treated as one that costs money.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

from devmeter.providers import registry
from devmeter.providers.registry import PathRule

__all__ = [
    "READ",
    "costs_nothing",
    "free_rules",
    "normalise_path",
    "refusal_family",
]

_MAX_DECODE_ROUNDS = 3  # %2525 -> %25 -> %: a server decoding twice must not win either
# A path with nothing to normalise (nearly every request): returned as it is.
_PLAIN = re.compile(r"(?:/[a-z0-9_:\-]+(?:\.[a-z0-9_:\-]+)*)+|/")


def normalise_path(path: str) -> str:
    """The lower-case path a server would route: no query or fragment, %-escapes decoded,
    `;params` dropped, empty and `.` segments removed, `..` resolved, no trailing slash."""
    # Nearly every call goes to one of a few paths: remembered, ~0.1 us instead of ~0.5.
    # Long ones are not, so a client cannot fill the memory with them.
    return _normalise_cached(path) if len(path) <= 256 else _normalise(path)


@lru_cache(maxsize=4096)
def _normalise_cached(path: str) -> str:
    return _normalise(path)


def _normalise(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0].lower()
    if _PLAIN.fullmatch(path):
        return path
    for _ in range(_MAX_DECODE_ROUNDS):
        if "%" not in path:
            break
        decoded = unquote(path, errors="replace")
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/")
    segments: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0].strip()
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return ("/" + "/".join(segments)).lower()  # lower again: %-escapes decoded to capitals


# Free lists are (methods, path regex on the normalised path) pairs, registered with each
# host by its provider module. Reads are listed by what they read, not as "every GET": a
# WebSocket upgrade is a GET too, and it is never free.
def free_rules(*rules: tuple[str, str]) -> tuple[PathRule, ...]:
    """("METHODS ...", path regex) pairs, compiled: a host's free list."""
    return tuple((frozenset(m.split()), re.compile(p)) for m, p in rules)


READ = "GET HEAD OPTIONS"


def refusal_family(host: str) -> str | None:
    """The error shape ("anthropic", "openai", "gemini") a refusal of an unmetered
    request on `host` takes; None for Cursor's host and hosts devmeter does not know."""
    routes = registry.host_routes(host)
    return routes.family if routes is not None else None


def costs_nothing(host: str, method: str, path: str, upgrade: bool = False) -> bool:
    """Whether a request to an intercepted host is free, and so passes a pause or a cap.

    `path` is normalised (see `normalise_path`). `upgrade`: the client asked for a
    WebSocket, which is never a free read. Hosts devmeter does not know are free, and so
    is what lies outside a host's API (its `gate`: chatgpt.com's website, the rest of
    Cursor's backend). Each host's free list is registered with it (`register_host`).
    """
    routes = registry.host_routes(host)
    if routes is None:
        return True  # not an LLM API host devmeter knows
    method = method.upper()
    gate = routes.gate
    if gate is not None and not ((not gate[0] or method in gate[0]) and gate[1].fullmatch(path)):
        return True  # not the API
    if upgrade:
        return False
    return any(method in methods and rule.fullmatch(path) for methods, rule in routes.free)
