"""`--upstream HOST=URL`: the request sent on is what mitmproxy's own setters make of it.

The mapping rewrites an HTTP/1 request's headers in one pass instead of through
mitmproxy's scheme/host/port setters and two header writes (each of which reads or
rewrites every header); these tests hold it to exactly what those setters produce.
"""

from __future__ import annotations

import itertools

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from devmeter.proxy.upstream import HOST_KEY, Upstream, UpstreamMapping, _send_to

HEADER_CASES = [
    [("Host", "api.anthropic.com"), ("User-Agent", "claude-cli/2")],
    [("User-Agent", "no host header")],
    [("Host", "")],
    [("host", "api.openai.com:443"), ("X-Forwarded-Host", "spoofed"),
     ("x-forwarded-host", "again"), ("Accept", "*/*")],
    [("Host", "a.example"), ("HOST", "b.example"), ("Accept", "*/*")],
    [("X-Forwarded-Host", "kept")],
    [("Host", ""), ("X-Forwarded-Host", "kept")],
]  # fmt: skip
UPSTREAMS = [
    "http://127.0.0.1:43210",
    "https://gateway.example.com",
    "http://gateway.example.com:80/prefix/",
    "https://gateway.example.com:8443/v2",
]


def _with_setters(flow: http.HTTPFlow, upstream: Upstream) -> None:
    """The mapping as mitmproxy's public setters do it: the reference."""
    original_host = flow.request.host_header
    flow.request.scheme = upstream.scheme
    flow.request.host = upstream.host
    flow.request.port = upstream.port
    if upstream.path_prefix:
        flow.request.path = upstream.path_prefix + flow.request.path
    if original_host:
        flow.request.headers["X-Forwarded-Host"] = original_host


def _flow(headers: list[tuple[str, str]], authority: bytes, version: str) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "POST",
        "https://api.anthropic.com/v1/messages?beta=true",
        b"{}",
        http.Headers([(k.encode(), v.encode()) for k, v in headers]),
    )
    flow.request.data.authority = authority
    flow.request.http_version = version
    return flow


@pytest.mark.parametrize(
    ("headers", "url", "authority", "version"),
    itertools.product(
        HEADER_CASES, UPSTREAMS, (b"", b"api.anthropic.com:443"), ("HTTP/1.1", "HTTP/2.0")
    ),
)
def test_the_mapped_request_is_what_mitmproxys_setters_make(
    headers: list[tuple[str, str]], url: str, authority: bytes, version: str
) -> None:
    upstream = Upstream.from_url(url)
    expected, mapped = _flow(headers, authority, version), _flow(headers, authority, version)
    _with_setters(expected, upstream)
    _send_to(mapped, upstream)
    want, got = expected.request, mapped.request
    assert got.data.headers.fields == want.data.headers.fields
    assert (got.scheme, got.host, got.port, got.path, got.authority, got.url) == (
        want.scheme, want.host, want.port, want.path, want.authority, want.url,
    )  # fmt: skip


def test_a_claude_call_goes_to_the_upstream_and_names_the_host_it_asked_for() -> None:
    mapping = UpstreamMapping({"api.anthropic.com": "http://127.0.0.1:43210"})
    flow = _flow([("Host", "api.anthropic.com"), ("Accept", "*/*")], b"", "HTTP/1.1")
    host = mapping.requestheaders(flow)
    mapping.send_upstream(flow, host)
    assert host == "api.anthropic.com" and flow.metadata[HOST_KEY] == host
    assert flow.request.url == "http://127.0.0.1:43210/v1/messages?beta=true"
    assert flow.request.data.headers.fields == (
        (b"Host", b"127.0.0.1:43210"),
        (b"Accept", b"*/*"),
        (b"content-length", b"2"),  # Request.make's, for the body
        (b"X-Forwarded-Host", b"api.anthropic.com"),
    )
