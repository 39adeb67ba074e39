"""CPU a small call costs devmeter, stage by stage, in-process (issue 16).

Drives the real Meter addon, built by `devmeter proxy`'s own builder (proxy/server.py
build_meter: a LedgerWriter in a temporary DEVMETER_HOME, the Attributor with the real
process lookup, the guard, router, asks, accounts, quota watch and secret inspector of
the default config), through its hooks on real mitmproxy flows: requestheaders, request,
responseheaders, the response stream tap chunk by chunk, response. The client is a real
loopback connection of this process, so attribution finds a real process, its working
folder and its git repository, as it finds the benchmark's client.

Calls: a small Anthropic Messages call (Claude Code's headers) answered whole and
streamed, OpenAI Responses (streamed) and OpenAI Chat Completions (whole).

Prints CPU microseconds per call: the hooks' thread CPU uninstrumented (what the event
loop spends), the process CPU (adds the ledger writer's thread), then the same calls with
every stage wrapped in a timer, each stage's exclusive CPU (its own, minus the stages it
calls). The wrappers add ~0.3 us each to the stage that calls them.

    uv run --extra test python -m benchmarks.hook_cost [--calls 3000] [--only anthropic]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow, tutils

from benchmarks.large_body import conversation_bodies

CLAUDE_HEADERS = {
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
    "X-Stainless-Timeout": "600",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    "anthropic-version": "2023-06-01",
    "x-api-key": "sk-ant-api03-bench-key-not-real",
    "x-app": "cli",
    "x-claude-code-request-class": "main",
    "x-client-request-id": "03fe580d-079f-4eb0-aeeb-d7ee7fd7876a",
}
OPENAI_HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "OpenAI/Python 1.99.0",
    "Authorization": "Bearer sk-proj-bench-key-not-real",
    "X-Stainless-Lang": "python",
}

ANTHROPIC_REQUEST = {
    "model": "claude-haiku-4-5",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are Claude Code."}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "say hi"}]}],
}
ANTHROPIC_ANSWER = {
    "id": "msg_000000000000000000000000",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "Hi! How can I help?"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 120, "output_tokens": 12, "cache_read_input_tokens": 80,
              "cache_creation_input_tokens": 0},
}  # fmt: skip


def _sse(events: list[tuple[str | None, dict[str, Any]]]) -> list[bytes]:
    return [
        ((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n").encode()
        for name, data in events
    ]


ANTHROPIC_STREAM = _sse([
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_000000000000000000000000", "type": "message", "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [], "stop_reason": None,
        "usage": {"input_tokens": 120, "output_tokens": 1, "cache_read_input_tokens": 80}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Hi! "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "How can I help?"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 12}}),
    ("message_stop", {"type": "message_stop"}),
])  # fmt: skip

RESPONSES_REQUEST = {"model": "gpt-5-mini", "input": "say hi", "stream": True}
RESPONSES_STREAM = _sse([
    ("response.created", {"type": "response.created", "response": {
        "id": "resp_000000000000000000000000", "model": "gpt-5-mini", "status": "in_progress"}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi!"}),
    ("response.completed", {"type": "response.completed", "response": {
        "id": "resp_000000000000000000000000", "model": "gpt-5-mini", "status": "completed",
        "usage": {"input_tokens": 100, "output_tokens": 12,
                  "input_tokens_details": {"cached_tokens": 50},
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 112}}}),
])  # fmt: skip

CHAT_REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say hi"}]}
CHAT_ANSWER = {
    "id": "chatcmpl-000000000000000000000000", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103},
}  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """One kind of call: where it goes, what it sends, how the answer comes back."""

    name: str
    host: str
    path: str
    request_headers: dict[str, str]
    body: bytes
    response_headers: dict[str, str]
    chunks: list[bytes]
    # Bodies sent in turn instead of `body` (cycled): a conversation growing a turn a call.
    bodies: tuple[bytes, ...] = ()


def _whole(answer: dict[str, Any]) -> tuple[dict[str, str], list[bytes]]:
    body = json.dumps(answer).encode()
    return {"content-type": "application/json", "content-length": str(len(body))}, [body]


def _streamed(chunks: list[bytes]) -> tuple[dict[str, str], list[bytes]]:
    return {"content-type": "text/event-stream", "transfer-encoding": "chunked"}, chunks


SHAPES = {
    "anthropic": Shape("anthropic messages, whole", "api.anthropic.com", "/v1/messages?beta=true",
                       CLAUDE_HEADERS, json.dumps(ANTHROPIC_REQUEST).encode(),
                       *_whole(ANTHROPIC_ANSWER)),
    "anthropic-stream": Shape("anthropic messages, streamed", "api.anthropic.com",
                              "/v1/messages?beta=true", CLAUDE_HEADERS,
                              json.dumps({**ANTHROPIC_REQUEST, "stream": True}).encode(),
                              *_streamed(ANTHROPIC_STREAM)),
    "responses": Shape("openai responses, streamed", "api.openai.com", "/v1/responses",
                       OPENAI_HEADERS, json.dumps(RESPONSES_REQUEST).encode(),
                       *_streamed(RESPONSES_STREAM)),
    "chat": Shape("openai chat, whole", "api.openai.com", "/v1/chat/completions",
                  OPENAI_HEADERS, json.dumps(CHAT_REQUEST).encode(), *_whole(CHAT_ANSWER)),
}  # fmt: skip


# The large shape's distinct bodies (~1.2 MB each at most): enough turns that the prefix
# memory always checks a body from where the previous one changed, bounded in memory.
LARGE_TURNS = 60


def large_shape() -> Shape:
    """`--only large`: Claude Code late in a session, its whole ~1 MB conversation re-sent,
    one turn longer each call (large_body.conversation_bodies; after the last, the
    sequence starts again, as a resumed session would). Not in the default run: each call
    costs milliseconds, not microseconds."""
    bodies = tuple(conversation_bodies(LARGE_TURNS))
    return Shape("anthropic messages 1 MB, whole", "api.anthropic.com", "/v1/messages?beta=true",
                 CLAUDE_HEADERS, bodies[0], *_whole(ANTHROPIC_ANSWER), bodies)  # fmt: skip


class StageClock:
    """Exclusive thread CPU per stage: a stage's time minus the timed stages it calls."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self._stack: list[list[int]] = []  # [start, children's time]

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time_ns
        stack = self._stack
        totals = self.ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [clock(), 0]
            stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
                elapsed = clock() - frame[0]
                totals[label] += elapsed - frame[1]
                if stack:
                    stack[-1][1] += elapsed

        return timed

    @contextmanager
    def stage(self, label: str) -> Iterator[None]:
        self.wrap(label, lambda: None)  # keeps the label's order of first use
        frame = [time.thread_time_ns(), 0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.thread_time_ns() - frame[0]
            self.ns[label] += elapsed - frame[1]


def build_meter(home: Path) -> tuple[Any, Any, Callable[[], None]]:
    """The Meter as `serve` builds it (proxy/server.py build_meter), for the default config
    in `home`; and a closer. Alerts go to the ledger only: no desktop notifications."""
    os.environ["DEVMETER_HOME"] = str(home)
    from devmeter.config import load
    from devmeter.paths import paths as find_paths
    from devmeter.proxy.server import build_meter as build_proxy_meter

    paths = find_paths()
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    built = build_proxy_meter(load(paths.config_file), paths)

    def close() -> None:
        built.secrets.close()  # its last findings reach the writer before it closes
        built.writer.close()

    return built.meter, built.writer, close


def instrument(meter: Any, clock: StageClock) -> list[str]:
    """Wrap each stage of `meter` (and the module functions they call) in `clock`; the
    names this version of the code lacks (stages move) are skipped and returned."""
    from devmeter import metering
    from devmeter.proxy import meter as meter_module
    from devmeter.proxy import metering_stage, recorder, streaming

    rec = meter._recorder
    stages: list[tuple[Any, str, str]] = [
        (meter._upstream, "requestheaders", "requestheaders: host"),
        (meter._upstream, "send_upstream", "requestheaders: host"),
        (meter._upstream, "host_of", "requestheaders: host"),
        (meter._client_lookup, "requestheaders", "requestheaders: client lookup"),
        (meter._bounds, "requestheaders", "requestheaders: bounds"),
        (meter._bounds, "stream_large_request", "requestheaders: bounds"),
        (meter._cursor, "streams", "requestheaders: cursor check"),
        (meter, "_apply_control", "control poll"),
        (meter_module, "match_endpoint", "endpoint match"),
        (metering_stage, "lower_headers", "header lowercasing"),
        (streaming, "request_body", "body parse (t16-large)"),
        (streaming, "read_request", "body parse (t16-large)"),
        (meter._metering, "_attribute", "attribution"),
        (metering_stage, "set_billing", "billing (who pays)"),
        (meter._secrets, "request", "secrets"),
        (meter._guards, "request", "guard: request (caps, reservation)"),
        (meter._ask, "request", "asks"),
        (meter._routing, "request", "routing: request"),
        (meter._bounds, "responseheaders", "responseheaders: bounds"),
        (meter._routing, "responseheaders", "routing: response"),
        (meter._routing, "may_fall_back", "routing: response"),
        (metering_stage, "read_quota", "quota reading"),
        (metering_stage, "new_response_parser", "response parser setup"),
        (metering_stage, "decoder_for", "response parser setup"),
        (metering, "build_call", "row build + pricing"),
        (meter._metering, "finish", "finish (result, row assembly)"),
        (recorder, "with_billing", "billing (who pays)"),  # before 2026-12-07's t16-small
        (recorder, "billing_fields", "billing (who pays)"),
        (meter._guards, "settle", "guard: settle/fingerprint/observe"),
        (meter._guards, "fingerprinted", "guard: settle/fingerprint/observe"),  # likewise
        (meter._guards, "loop_fingerprint", "guard: settle/fingerprint/observe"),
        (meter._guards, "observe", "guard: settle/fingerprint/observe"),
        (meter._routing, "settle", "routing: settle"),
        (rec, "record", "ledger handoff (spool + queue)"),
        (rec, "_on_billed", "quota watch"),
    ]
    missing = []
    for owner, name, label in stages:
        found = getattr(owner, name, None) if owner is not None else None
        if found is None:
            missing.append(name)
            continue
        setattr(owner, name, clock.wrap(label, found))
    return missing


class Client:
    """A real loopback connection of this process: the flows' client address."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.sock = socket.create_connection(self._server.getsockname())
        self.peer = self.sock.getsockname()
        self.sockname = self._server.getsockname()

    def close(self) -> None:
        self.sock.close()
        self._server.close()


_sent: dict[str, int] = {}  # per shape with `bodies`: how many it sent (the next to send)


def make_flow(shape: Shape, client: Client, session: str, turn: int | None) -> http.HTTPFlow:
    """A flow of `shape`; a Claude Code call in `session` (a fresh one a round keeps the
    default config's asks, $25 a session, from holding the harness's calls). `turn`: the
    prompt is new text, numbered so (as an agent's every turn is), not the shape's own.
    A shape with `bodies` sends the next of them instead (its turns are new already)."""
    fields = {k.replace("-", "_"): v for k, v in shape.request_headers.items()}
    if "X-Claude-Code-Session-Id" in shape.request_headers:
        fields["X_Claude_Code_Session_Id"] = session
    if shape.bodies:
        sent = _sent.get(shape.name, 0)
        _sent[shape.name] = sent + 1
        body = shape.bodies[sent % len(shape.bodies)]
    elif turn is None:
        body = shape.body
    else:
        body = shape.body.replace(b"say hi", b"say hi, turn %d" % turn)
    headers = http.Headers(host=shape.host, **fields, content_length=str(len(body)))
    flow = tflow.tflow(req=tutils.treq(
        host=shape.host, port=443, scheme=b"https", authority=b"", path=shape.path.encode(),
        method=b"POST", content=body, headers=headers,
    ))  # fmt: skip
    flow.client_conn.peername = client.peer
    flow.client_conn.sockname = client.sockname
    return flow


def response_for(shape: Shape) -> http.Response:
    headers = http.Headers(**{k.replace("-", "_"): v for k, v in shape.response_headers.items()})
    return tutils.tresp(content=None, headers=headers)


ZEROS = b"0" * 24  # the answers' ids: each call's own serial number instead, as upstreams
_serial = 0  # give them (the ledger looks a live row's imported twin up by its id)


def unique_chunks(shape: Shape) -> list[bytes]:
    global _serial
    _serial += 1
    serial = b"%024d" % _serial
    return [chunk.replace(ZEROS, serial) for chunk in shape.chunks]


def one_call(
    meter: Any, flow: http.HTTPFlow, response: http.Response, chunks: list[bytes],
    shape: Shape, clock: StageClock | None,
) -> None:  # fmt: skip
    """The hooks mitmproxy calls for one call, in its order."""
    stage = clock.stage if clock is not None else _no_stage
    with stage("hook: requestheaders (rest)"):
        held = meter.requestheaders(flow)
        if held is not None:  # a connection's first request: its process looked up
            asyncio.run(held)
    with stage("hook: request (rest)"):
        held = meter.request(flow)
        assert held is None, f"a held request: {held!r}, {flow.response and flow.response.content}"
    flow.response = response  # built beforehand: what mitmproxy does to read it is not ours
    with stage("hook: responseheaders (rest)"):
        meter.responseheaders(flow)
    tap = flow.response.stream
    assert callable(tap), "the answer was not tapped"
    with stage("response parse (stream tap)"):
        for chunk in chunks:
            tap(chunk)
        tap(b"")
    with stage("hook: response (rest)"):
        meter.response(flow)


@contextmanager
def _no_stage(label: str) -> Iterator[None]:
    yield


def measure(meter: Any, writer: Any, shape: Shape, client: Client, calls: int,
            clock: StageClock | None, new_turns: bool = False) -> tuple[float, float]:  # fmt: skip
    """(thread CPU us, process CPU us) per call over `calls` calls of `shape`: the hooks',
    and the whole process's until the ledger writer and the secrets worker are done.
    `new_turns`: every call's prompt is new text (the secrets worker scans each one)."""
    session = str(uuid.uuid4())
    flows = [
        (make_flow(shape, client, session, n if new_turns else None), response_for(shape),
         unique_chunks(shape))
        for n in range(calls)
    ]  # fmt: skip
    gc.collect()
    thread0, process0 = time.thread_time_ns(), time.process_time_ns()
    for flow, response, chunks in flows:
        one_call(meter, flow, response, chunks, shape, clock)
    thread = time.thread_time_ns() - thread0
    meter._secrets.inspector.wait_idle()  # the secrets worker's share: its scans done
    writer.flush()  # the ledger writer's share: its rows committed (batched, as in the proxy)
    process = time.process_time_ns() - process0
    return thread / calls / 1000, process / calls / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls of each shape a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the best is shown)")
    parser.add_argument("--only", default=",".join(SHAPES),
                        help="shapes: " + ",".join([*SHAPES, "large"]))  # fmt: skip
    parser.add_argument("--new-turns", action="store_true",
                        help="each call's prompt new text, as an agent's turns are (by default "
                             "every call repeats one, as the benchmarks' calls do)")  # fmt: skip
    args = parser.parse_args(argv)
    shapes = [SHAPES[name] if name != "large" else large_shape() for name in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="devmeter-hook-cost-") as home:
        meter, writer, close = build_meter(Path(home))
        client = Client()
        try:
            for shape in shapes:  # warm: caches, imports, the first lookups
                measure(meter, writer, shape, client, 200, None)
            for shape in shapes:
                best = min(
                    (
                        measure(meter, writer, shape, client, args.calls, None, args.new_turns)
                        for _ in range(args.rounds)
                    ),
                    key=lambda figures: figures[0],
                )
                print(f"{shape.name:32} hooks {best[0]:7.1f} us/call thread CPU, "
                      f"{best[1]:7.1f} us process CPU (+ writer, secrets)")  # fmt: skip
            clock = StageClock()
            missing = instrument(meter, clock)
            total_calls = 0
            for shape in shapes:
                measure(meter, writer, shape, client, args.calls, clock, args.new_turns)
                total_calls += args.calls
            print(f"\nexclusive thread CPU per call by stage (instrumented, all shapes, "
                  f"{total_calls} calls):")  # fmt: skip
            total = sum(clock.ns.values())
            for label, ns in sorted(clock.ns.items(), key=lambda item: -item[1]):
                print(f"  {label:40} {ns / total_calls / 1000:7.1f} us")
            print(f"  {'total (with the timers)':40} {total / total_calls / 1000:7.1f} us")
            print(f"  (not in this version of the code: {', '.join(missing) or 'none'})")
        finally:
            client.close()
            close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
