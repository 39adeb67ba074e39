"""The wire-format registry: one `WireFormat` object per API, and the hosts that serve them.

Each provider module registers what it knows at import time (`register`, `register_host`):
how its requests are read, which response parser concludes their usage, where its
conversation is, what its errors look like and, for the formats routing may rewrite, the
rewrite adapter. Everything else asks the registry (`wire_format(api)`) instead of
branching on `endpoint.api` strings, so adding a provider is one new module and its
import in `providers/__init__.py`.

Pure data and lookups: no parsing here, and nothing above `providers/` is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devmeter.providers.lazy_doc import LazyDoc
from devmeter.providers.turn_text import Piece, conversation_text
from devmeter.usage import RequestInfo

if TYPE_CHECKING:
    from devmeter.alerts import Refusal
    from devmeter.model_limits import ModelSpec
    from devmeter.providers.base import ResponseParser


@dataclass(frozen=True)
class Endpoint:
    """A metered API endpoint: who bills it, and which wire format it speaks."""

    provider: str  # genai-prices provider id
    api: str  # wire format: anthropic.messages, openai.chat, openai.responses, ...
    path_model: str | None = None  # the model named in the URL (Gemini)
    free: bool = False  # count_tokens: recorded at $0
    stream: bool = False  # the URL itself asks for a stream (Gemini)


# (body, headers, target's spec, provider, target model, changes): adapts the body and
# headers in place to what the target takes, appending each change as ledger text;
# raises IncompatibleRequest (providers/rewrite_common.py) when no rewrite can keep it.
RewriteAdapter = Callable[[dict[str, Any], dict[str, str], "ModelSpec", str, str, list[str]], None]
# (status, message) -> the JSON error body this API's clients read.
ErrorBody = Callable[[int, str], dict[str, Any]]
# The strings of a parsed body, each pointing into it (for redaction in place).
TextView = Callable[[dict[str, Any]], Iterable[Piece]]


@dataclass(frozen=True)
class WireFormat:
    """One API's wire format: everything devmeter knows about its requests and answers."""

    name: str  # the `Endpoint.api` it serves: "anthropic.messages"
    family: str  # whose error shapes its clients read: "anthropic", "openai", "gemini"
    # A response parser for one call: (endpoint, request, content type).
    response_parser: Callable[[Endpoint, RequestInfo, str], ResponseParser]
    error_body: ErrorBody
    # The request's facts from its parsed JSON body; None: it has no JSON body to read.
    parse_json: Callable[[dict[str, Any], Endpoint], RequestInfo] | None = None
    # A reader of the raw body, tried before JSON (protobuf, multipart forms): its
    # RequestInfo, or None to read the body as JSON.
    parse_bytes: Callable[[bytes, Endpoint], RequestInfo | None] | None = None
    # A call made with a GET (a WebSocket, a batch read): an empty body is no error.
    bodyless: bool = False
    # Methods a request to it may use; None: any (the URL alone makes it a call).
    methods: frozenset[str] | None = frozenset({"POST"})
    # The model is in the URL's query (`?model=`), as Realtime's WebSocket URL has it.
    query_model: bool = False
    # The conversation items of a parsed body (whose blocks may be images, whose last
    # turn a loop repeats); None: the body holds no conversation.
    conversation: Callable[[dict[str, Any]], Sequence[Any] | None] | None = None
    # The turn the user or agent is about to send: what follows the model's last turn
    # (the secrets inspector reports a secret in the turn that first sent it); None: no
    # text of its requests is inspected.
    new_turn: TextView | None = None
    # Every string of its conversation, re-sent turns too (what blocking and redaction
    # look at); None: the strings under the usual conversation keys (turn_text.py).
    sent_text: TextView | None = None
    # Adapts a request to another model of the same provider; None: not rewritable.
    rewrite: RewriteAdapter | None = None
    # The whole answer to a refused call, for a format whose errors are not a JSON body
    # (Cursor's Connect streams); None: `error_body`, per client (providers/refusal.py).
    refusal: Callable[[str], Refusal] | None = None
    # Whether an answer without usage can be estimated from its text. False for APIs whose
    # answers are audio or images: a call of theirs without usage is unpriced, not $0.
    estimable: bool = True


Matcher = Callable[["re.Match[str]"], Endpoint]
# (methods, regex over the normalised path): a free path, or a host's API (its gate).
PathRule = tuple[frozenset[str], "re.Pattern[str]"]


@dataclass
class HostRoutes:
    """One host: its metered paths (exact normalised paths first, then patterns), and what
    a pause or a cap lets through (paths.costs_nothing)."""

    host: str
    provider: str  # who bills the host's calls; the provider of its refusals
    exact: dict[str, Endpoint] = field(default_factory=dict)
    patterns: list[tuple[re.Pattern[str], Matcher]] = field(default_factory=list)
    # The error shape of a refused request to a path it does not meter; None: no JSON one.
    family: str | None = None
    free: tuple[PathRule, ...] = ()  # requests that cost nothing (default deny)
    # The host's API (no methods: any method); None: all of it. Outside it: free.
    gate: PathRule | None = None

    def match(self, path: str) -> Endpoint | None:
        endpoint = self.exact.get(path)
        if endpoint is not None:
            return endpoint
        for pattern, build in self.patterns:
            m = pattern.fullmatch(path)
            if m is not None:
                return build(m)
        return None


_FORMATS: dict[str, WireFormat] = {}
_HOSTS: dict[str, HostRoutes] = {}
_FAMILY_ERRORS: dict[str, ErrorBody] = {}
# The distinct conversation views, in registration order (asked on every request).
_VIEWS: list[Callable[[dict[str, Any]], Sequence[Any] | None]] = []


def _refresh() -> None:
    """The views and family error shapes, from the formats registered, in order."""
    views = []
    errors: dict[str, ErrorBody] = {}
    for wire in _FORMATS.values():
        if wire.conversation is not None and wire.conversation not in views:
            views.append(wire.conversation)
        errors.setdefault(wire.family, wire.error_body)
    _VIEWS[:] = views
    _FAMILY_ERRORS.clear()
    _FAMILY_ERRORS.update(errors)


def register(wire: WireFormat) -> WireFormat:
    """Make a wire format known; the first of a family also gives the family's error shape
    (for refusals of paths devmeter does not meter: `anthropic.unmetered`, ...)."""
    _FORMATS[wire.name] = wire
    _refresh()
    return wire


def register_host(
    host: str,
    provider: str,
    paths: dict[str, str] | None = None,
    *,
    free: frozenset[str] = frozenset(),
    patterns: tuple[tuple[str, Matcher], ...] = (),
    family: str | None = None,
    free_paths: tuple[PathRule, ...] = (),
    gate: PathRule | None = None,
) -> HostRoutes:
    """Meter `host`: each exact path in `paths` calls its API (billed by `provider`; the
    APIs in `free` at $0), then each (regex, build) of `patterns` in order. `family`,
    `free_paths` and `gate`: see HostRoutes. Registering a host again adds to it."""
    routes = _HOSTS.setdefault(host, HostRoutes(host, provider))
    routes.family = family or routes.family
    routes.free = routes.free + free_paths
    routes.gate = gate or routes.gate
    for path, api in (paths or {}).items():
        routes.exact[path] = Endpoint(provider, api, free=api in free)
    for regex, build in patterns:
        routes.patterns.append((re.compile(regex), build))
    return routes


def fixed(endpoint: Endpoint) -> Matcher:
    """A pattern's matcher that always gives `endpoint` (built once, shared by every call)."""
    return lambda _match: endpoint


def unregister(name: str) -> None:
    """Forget a wire format (tests register toy ones)."""
    _FORMATS.pop(name, None)
    _refresh()


def unregister_host(host: str) -> None:
    _HOSTS.pop(host, None)


def wire_format(api: str) -> WireFormat | None:
    return _FORMATS.get(api)


def host_routes(host: str) -> HostRoutes | None:
    """The routes of a normalised host name, or None for a host devmeter does not meter."""
    return _HOSTS.get(host)


def hosts() -> tuple[str, ...]:
    """Every metered host, in the order they were registered."""
    return tuple(_HOSTS)


def formats() -> Iterator[WireFormat]:
    return iter(tuple(_FORMATS.values()))


def family(api: str) -> str:
    """The family of an API's error shapes: its wire format's, else its name's prefix
    (`gemini.unmetered` -> gemini; Google's APIs read Gemini's errors)."""
    wire = _FORMATS.get(api)
    if wire is not None:
        return wire.family
    prefix = api.split(".", 1)[0]
    return "gemini" if prefix == "google" else prefix


def error_body(api: str, status: int, message: str) -> dict[str, Any]:
    """An error in the shape the client's SDK reads for `api` (OpenAI's for APIs of no
    known family: every OpenAI-compatible SDK reads it)."""
    wire = _FORMATS.get(api)
    shape = wire.error_body if wire is not None else _FAMILY_ERRORS.get(family(api))
    if shape is None:
        shape = _FAMILY_ERRORS["openai"]
    return shape(status, message)


def new_turn(api: str, doc: Any) -> list[Piece]:
    """The new strings of a request body (or a WebSocket frame) of wire format `api`."""
    wire = _FORMATS.get(api)
    if wire is None or wire.new_turn is None or not isinstance(doc, (dict, LazyDoc)):
        return []
    return list(wire.new_turn(doc))


def sent_text(api: str, doc: Any) -> list[Piece]:
    """Every string of the request's conversation (a secret sent in an earlier turn is
    re-sent with every later one)."""
    if not isinstance(doc, (dict, LazyDoc)):
        return []
    wire = _FORMATS.get(api)
    view = wire.sent_text if wire is not None and wire.sent_text is not None else None
    return list(view(doc) if view is not None else conversation_text(doc))


def any_conversation(doc: Mapping[str, Any]) -> Sequence[Any] | None:
    """The conversation of a body whose API is not known here (the loop fingerprint's
    view): the first registered format's view that finds one."""
    for view in _VIEWS:
        items = view(doc)
        if items is not None:
            return items
    return None
