"""Secret inspection's cost per request: a 1 MB Claude Code conversation re-sent with one
new turn (a tool result holding a `.env`), against the same request with inspection off.

"Off" is what the proxy does with every request body anyway: `streaming.read_request`
(parse and read the model, tokens, ...). Each mode adds:

- warn, on the event loop: picking out the new turn and handing its strings to the worker
  (`SecretInspector.inspect` returns before any scan);
- warn, on the worker thread: scanning that new turn (beside the request, not before it);
- block / redact, on the event loop: scanning the whole conversation before forwarding
  (redact also re-serialises the body). Strings scanned on an earlier turn are found by
  digest, so the re-sent history costs a hash per string, not a scan.

Then the same for Cursor's streamed request: the conversation as one gzip-compressed
Connect frame of protobuf, against the meter's own read of that frame.

Figures are medians of interleaved rounds, printed as milliseconds and as ratios to off.

    uv run --extra test python benchmarks/secrets_bench.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devmeter import fastjson  # noqa: E402
from devmeter.providers import cursor, match_endpoint  # noqa: E402
from devmeter.proxy.streaming import read_request  # noqa: E402
from devmeter.secrets.cursor_stream import CursorStream  # noqa: E402
from devmeter.secrets.inspector import SecretInspector, load_salt  # noqa: E402
from devmeter.secrets.new_content import new_pieces  # noqa: E402
from devmeter.secrets.policy import SecretsPolicy  # noqa: E402
from devmeter.secrets.scan import builtin_detectors, scan  # noqa: E402
from devmeter.usage import Attribution  # noqa: E402
from tests.secrets_corpus import DOTENV_FILE, numbered  # noqa: E402

SOURCE = (Path(__file__).resolve().parent.parent / "devmeter" / "proxy" / "meter.py").read_text()


def conversation(size: int = 1_000_000) -> bytes:
    """Claude Code-shaped turns (the model reads source files) up to `size`, then the new
    turn: a Read of `.env`."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "refactor the proxy"}]
    i = 0
    while len(json.dumps(messages)) < size:
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Reading part {i}."},
            {"type": "tool_use", "id": f"toolu_{i}", "name": "Read",
             "input": {"file_path": f"/src/app/mod{i}.py"}},
        ]})  # fmt: skip
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}",
             "content": numbered(SOURCE[:20000])},
        ]})  # fmt: skip
        i += 1
    messages.append({"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_env", "name": "Read",
         "input": {"file_path": "/src/app/.env"}},
    ]})  # fmt: skip
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_env", "content": numbered(DOTENV_FILE)},
    ]})  # fmt: skip
    body = {"model": "claude-sonnet-5-5", "max_tokens": 4096, "messages": messages}
    return json.dumps(body).encode()


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def cursor_conversation(size: int = 1_000_000) -> bytes:
    """The same conversation as Cursor sends it: one gzip-compressed Connect frame holding
    a protobuf chat request (messages of source text, then the `.env`, then the model)."""
    parts = [_field(1, _field(1, b"refactor the proxy"))]
    chunk = numbered(SOURCE[:20000]).encode()
    while sum(map(len, parts)) < size:
        parts.append(_field(1, _field(1, chunk)))
    parts.append(_field(1, _field(1, numbered(DOTENV_FILE).encode())))
    parts.append(_field(5, _field(1, b"claude-4.5-sonnet")))
    payload = gzip.compress(b"".join(parts), mtime=0)
    return bytes([1]) + len(payload).to_bytes(4, "big") + payload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    body = conversation()
    endpoint = match_endpoint("api.anthropic.com", "POST", "/v1/messages")
    assert endpoint is not None
    builtin_detectors()  # imported once at proxy start, not per request
    who = Attribution(tool="claude-code", session="bench", repo="/src/app")
    salt = load_salt(Path(tempfile.mkdtemp()))

    def inspector(mode: str) -> SecretInspector:
        return SecretInspector(SecretsPolicy(mode=mode), salt, lambda _: None)

    # Each target returns the time it adds, parsing excluded (the proxy parses anyway).
    def off() -> float:
        start = time.perf_counter()
        read_request(endpoint, body)
        return time.perf_counter() - start

    warner = inspector("warn")

    def warn_loop() -> float:
        _, doc, _ = read_request(endpoint, body)
        start = time.perf_counter()
        warner.inspect(endpoint.api, doc, who, 0.0)
        return time.perf_counter() - start

    def warn_worker() -> float:
        _, doc, _ = read_request(endpoint, body)
        start = time.perf_counter()
        for piece in new_pieces(endpoint.api, doc):
            scan(piece.text)
        return time.perf_counter() - start

    def blocking(mode: str) -> Callable[[], float]:
        ins = inspector(mode)

        def run() -> float:
            _, doc, _ = read_request(endpoint, body)
            start = time.perf_counter()
            if ins.inspect(endpoint.api, doc, who, 0.0).redacted:
                fastjson.dumps(doc)  # as the meter re-serialises a redacted body
            return time.perf_counter() - start

        return run

    targets: dict[str, Callable[[], float]] = {
        "off": off, "warn (event loop)": warn_loop, "warn (worker, beside)": warn_worker,
        "block": blocking("block"), "redact": blocking("redact"),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(args.rounds):
        for name, run in targets.items():
            times[name].append(run())
            warner.wait_idle()  # each warn scan finishes before the next target runs
    base = statistics.median(times["off"])
    print(f"request body: {len(body):,} bytes, one new turn ({len(DOTENV_FILE)} bytes of .env)")
    print("off = parsing the request, which the proxy does anyway; the rest = what each adds")
    print(f"{'mode':<24}{'median ms':>10}{'x off':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24}{median * 1000:>10.2f}{median / base:>8.2f}")
    cursor_table(args.rounds, who, inspector)
    warner.close()


def cursor_table(
    rounds: int, who: Attribution, inspector: Callable[[str], SecretInspector]
) -> None:
    """Cursor's streamed request, inspected frame by frame (secrets/cursor_stream.py):
    off = the meter's own read of the frame; warn = the frame's texts picked out on the
    event loop and queued; block/redact = the frame held, scanned and rewritten."""
    body = cursor_conversation()

    def off() -> float:
        start = time.perf_counter()
        cursor.RequestReader().feed(body).info()
        return time.perf_counter() - start

    def streamed(ins: SecretInspector) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            stream = CursorStream(ins, who, time.time)
            sent = stream.feed(body) + stream.feed(b"")
            elapsed = time.perf_counter() - start
            assert sent and stream.problem is None
            return elapsed

        return run

    warner = inspector("warn")
    targets = {"off (meter reads it)": off, "warn (event loop)": streamed(warner),
               "block or redact (held)": streamed(inspector("redact"))}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, run in targets.items():
            times[name].append(run())
            warner.wait_idle()
    base = statistics.median(times["off (meter reads it)"])
    print(f"\nCursor: one {len(body):,}-byte gzip frame (the same conversation as protobuf)")
    print(f"{'mode':<24}{'median ms':>10}{'x off':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24}{median * 1000:>10.2f}{median / base:>8.2f}")
    warner.close()


if __name__ == "__main__":
    main()
