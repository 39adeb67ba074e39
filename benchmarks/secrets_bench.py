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

Figures are medians of interleaved rounds, printed as milliseconds and as ratios to off.

    uv run --extra test python benchmarks/secrets_bench.py [--rounds 15]
"""

from __future__ import annotations

import argparse
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
from devmeter.providers import match_endpoint  # noqa: E402
from devmeter.proxy.streaming import read_request  # noqa: E402
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
    warner.close()


if __name__ == "__main__":
    main()
