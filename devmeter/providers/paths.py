"""Which requests to an intercepted host cost money: path normalisation and the free list.

Matching works on the path a server would route, not the bytes a client sent:
`//v1/messages`, `/v1/%6Dessages`, `/V1/MESSAGES`, `/v1/messages;x`, `/v1/messages/`
and `/v1/x/../messages` are all `/v1/messages` here (the request itself is forwarded
as sent). Without this, each spelling would be a side door past metering and caps.

When metered traffic is paused or a cap is reached, every request to an LLM API host
is refused unless it is on the free list below: reads of models, files, batch status
and results, token counting, cancelling, Claude Code's own side calls. Default deny:
a path nobody listed (a new paid API, a misspelling the server still routes) is
treated as one that costs money.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

__all__ = [
    "CURSOR_CHAT_PATH",
    "CURSOR_HOST",
    "costs_nothing",
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


# (methods, path regex on the normalised path). Reads are listed by what they read, not
# as "every GET": a WebSocket upgrade is a GET too, and it is never free.
_Rule = tuple[frozenset[str], re.Pattern[str]]


def _rules(*rules: tuple[str, str]) -> tuple[_Rule, ...]:
    return tuple((frozenset(m.split()), re.compile(p)) for m, p in rules)


_READ = "GET HEAD OPTIONS"

_ANTHROPIC = _rules(
    (_READ, r"/"),
    (_READ, r"/v1/models(/[^/]+)?"),
    (_READ + " POST DELETE", r"/v1/files(/.*)?"),  # uploads, listing, downloads: no charge
    (_READ, r"/v1/messages/batches(/[^/]+(/results)?)?"),  # status reads, results
    ("POST", r"/v1/messages/batches/[^/]+/cancel"),
    ("DELETE", r"/v1/messages/batches/[^/]+"),
    ("POST", r"/v1/messages/count_tokens"),
    # Claude Code's own side calls: settings, feature flags, telemetry, MCP registry.
    (_READ + " POST", r"/api(/.*)?"),
    (_READ, r"/mcp-registry(/.*)?"),
)

_OPENAI = _rules(
    (_READ, r"/v1/models(/[^/]+)?"),
    (_READ + " POST DELETE", r"/v1/files(/.*)?"),
    (_READ + " POST", r"/v1/uploads(/.*)?"),
    (_READ, r"/v1/batches(/[^/]+)?"),
    ("POST", r"/v1/batches/[^/]+/cancel"),
    (_READ + " DELETE", r"/v1/responses/[^/]+(/input_items)?"),
    ("POST", r"/v1/responses/[^/]+/cancel"),
    ("POST", r"/v1/responses/input_tokens"),  # token counting
    (_READ + " DELETE", r"/v1/chat/completions(/[^/]+(/messages)?)?"),  # stored completions
    ("POST", r"/v1/moderations"),  # free of charge at OpenAI
    (_READ, r"/v1/(fine_tuning|organization|conversations|vector_stores|containers)(/.*)?"),
    ("POST", r"/v1/fine_tuning/jobs/[^/]+/cancel"),
)

# OpenAI-compatible APIs, under their own prefixes: reads of models, files and batches,
# and each one's account reads (OpenRouter's credits and generation stats, DeepSeek's
# balance).
_COMPATIBLE = _rules(
    (_READ, r"(/api|/openai)?(/v1)?/models(/.*)?"),
    (_READ + " DELETE", r"(/api|/openai)?(/v1)?/files(/.*)?"),
    ("POST", r"(/api|/openai)?(/v1)?/files"),
    (_READ, r"(/api|/openai)?(/v1)?/batches(/[^/]+)?"),
    ("POST", r"(/api|/openai)?(/v1)?/batches/[^/]+/cancel"),
    (_READ, r"/api/v1/(credits|generation|key|auth/key|providers)(/.*)?"),
    (_READ, r"/user/balance"),
    ("POST", r"/v1/tokenize-text"),  # xAI
)

_GEMINI = _rules(
    (_READ, r"/v1\w*/models(/[^/:]+)?"),
    (_READ + " DELETE", r"/v1\w*/(files|cachedcontents|operations|batches|tunedmodels)(/.*)?"),
    ("POST", r"/(upload/)?v1\w*/files(:register)?"),
    ("POST", r"/v1\w*/models/[^/:]+:counttokens"),
    ("POST", r"/v1\w*/batches/[^/:]+:cancel"),
    (_READ, r"/download/.*"),
)

# Gemini CLI's Code Assist: its setup, quota and settings calls; generation is paid.
_CLOUDCODE = _rules(
    (_READ, r"/v1internal(/.*)?"),  # long-running operation polls
    (
        "POST",
        r"/v1internal:(loadcodeassist|onboarduser|counttokens|listexperiments|retrieveuserquota"
        r"|recordcodeassistmetrics|fetchadmincontrols|getcodeassistglobalusersetting"
        r"|setcodeassistglobalusersetting|listmodels)",
    ),
)

# Cursor's editor talks to one host for everything (settings, indexing, Tab): only the
# chat devmeter meters is gated; the rest is its editor's backend, billed by plan.
CURSOR_HOST = "api2.cursor.sh"
CURSOR_CHAT_PATH = re.compile(
    r"/aiserver\.v1\.chatservice/streamunifiedchat\w*"
    r"|/aiserver\.v1\.aiservice/stream(?:chat|composer|edit)\w*"
    r"|/agent\.v1\.agentservice/run(?:sse)?"
)

# chatgpt.com is a website as well as Codex's API: only Codex's backend is gated, and
# its reads (model lists, settings) are free.
_CHATGPT_API = re.compile(r"/backend-api/codex(/.*)?")
_CHATGPT = _rules((_READ, r"/backend-api/codex(/.*)?"))

_HOSTS: dict[str, tuple[str, tuple[_Rule, ...]]] = {
    "api.anthropic.com": ("anthropic", _ANTHROPIC),
    "api.openai.com": ("openai", _OPENAI),
    "chatgpt.com": ("openai", _CHATGPT),
    "openrouter.ai": ("openai", _COMPATIBLE),
    "api.deepseek.com": ("openai", _COMPATIBLE),
    "api.groq.com": ("openai", _COMPATIBLE),
    "api.mistral.ai": ("openai", _COMPATIBLE),
    "api.x.ai": ("openai", _COMPATIBLE),
    "generativelanguage.googleapis.com": ("gemini", _GEMINI),
    "cloudcode-pa.googleapis.com": ("gemini", _CLOUDCODE),
}


def refusal_family(host: str) -> str | None:
    """The error shape ("anthropic", "openai", "gemini") a refusal of an unmetered
    request on `host` takes; None for Cursor's host and hosts devmeter does not know."""
    entry = _HOSTS.get(host)
    return entry[0] if entry else None


def costs_nothing(host: str, method: str, path: str, upgrade: bool = False) -> bool:
    """Whether a request to an intercepted host is free, and so passes a pause or a cap.

    `path` is normalised (see `normalise_path`). `upgrade`: the client asked for a
    WebSocket, which is never a free read. Hosts devmeter does not know are free.
    """
    if host == CURSOR_HOST:
        return method.upper() != "POST" or not CURSOR_CHAT_PATH.fullmatch(path)
    entry = _HOSTS.get(host)
    if entry is None:
        return True  # not an LLM API host devmeter knows
    if host == "chatgpt.com" and not _CHATGPT_API.fullmatch(path):
        return True  # the website, not the API
    if upgrade:
        return False
    method = method.upper()
    return any(method in methods and rule.fullmatch(path) for methods, rule in entry[1])
