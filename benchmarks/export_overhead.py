"""Call latency with export on against export off, as ratios (issue 20).

    uv run --extra test python benchmarks/export_overhead.py [--rounds 10] [--calls 150]
                                                           [--seed-rows 50000]

Three real `devmeter proxy` processes to one fake upstream (its own process), each with
a ledger seeded with `--seed-rows` calls, so a scrape has history to read:

- **off**: no `[export]` section;
- **on**: `[export.prometheus]` scraped every 0.5 s by a thread of this process (30x
  Prometheus's default interval) and `[export.otlp]` pushing every 0.2 s, with a log
  record per call, to a receiver in this process;
- **down**: the same, but the collector is down: every push fails and backs off.

Calls are non-streamed Anthropic messages, one at a time, timed from the client. The
targets run in interleaved rounds (the order rotating), and the result is the median over
rounds of each round's p50 (and p95) latency ratio against `off` in that round, so load
elsewhere on a shared machine hits all three alike. ~1-2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2  # noqa: E402

from tests.export_helpers import free_port  # noqa: E402
from tests.fake_upstream.process import FakeUpstreamProcess  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402
from tests.proxy_harness import RunningProxy, start_proxy  # noqa: E402


def seed(home: Path, rows: int) -> None:
    from decimal import Decimal

    from devmeter.ledger import write_calls
    from devmeter.usage import Attribution, Call, Usage

    now = time.time()
    write_calls(
        home / "ledger.sqlite",
        (
            Call(
                ts=now - 30 * 86400 + i * (30 * 86400 / rows), provider="anthropic",
                endpoint="anthropic.messages", host="api.anthropic.com",
                requested_model="claude-opus-4-8", model="claude-opus-4-8",
                attribution=Attribution(tool="claude-code", session=f"s{i // 50}",
                                        repo=f"/src/repo{i % 40}"),
                usage=Usage(input_tokens=1000, cache_read_tokens=3000, output_tokens=300),
                cost_usd=Decimal("0.0123"), price_source="bench", status=200,
            )
            for i in range(rows)
        ),
    )  # fmt: skip


def timed_calls(proxy: RunningProxy, count: int) -> list[float]:
    trust = ssl.create_default_context(cafile=str(proxy.bundle))
    took = []
    body = {"model": "claude-opus-4-8", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    headers = {"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01"}
    with httpx2.Client(proxy=proxy.url, verify=trust, timeout=30) as client:
        client.post("https://api.anthropic.com/v1/messages", headers=headers, json=body)
        for _ in range(count):
            began = time.perf_counter()
            client.post("https://api.anthropic.com/v1/messages", headers=headers, json=body)
            took.append(time.perf_counter() - began)
    return took


def scraper(url: str, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as answer:
            answer.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--seed-rows", type=int, default=50000)
    args = parser.parse_args()

    receiver = OtlpReceiver().start()
    down_port = free_port()  # nothing listens there: every push is refused
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="devmeter-export-bench-") as tmp, \
            FakeUpstreamProcess("--no-websocket") as upstream:  # fmt: skip
        proxies: dict[str, RunningProxy] = {}
        for name, endpoint in (("off", None), ("on", receiver.url),
                               ("down", f"http://127.0.0.1:{down_port}")):  # fmt: skip
            home = Path(tmp) / name
            home.mkdir()
            seed(home, args.seed_rows)
            if endpoint is not None:
                (home / "config.toml").write_text(
                    '[export.prometheus]\nlisten = "127.0.0.1:0"\n'
                    f'[export.otlp]\nendpoint = "{endpoint}"\ninterval_seconds = 0.2\n'
                    "logs = true\n"
                )
            proxy = start_proxy(home, upstream.url, env={"DEVMETER_OTLP_HEADERS": ""})
            proxies[name] = proxy
            if endpoint is not None:
                state = json.loads((home / "proxy.json").read_text())
                threading.Thread(
                    target=scraper, args=(state["metrics_url"], stop), daemon=True
                ).start()
        try:
            names = list(proxies)
            for name in names:  # warm up: first connections, certificates, caches
                timed_calls(proxies[name], 30)
            p50: dict[str, list[float]] = {n: [] for n in names}
            p95: dict[str, list[float]] = {n: [] for n in names}
            for round_no in range(args.rounds):
                order = names[round_no % 3 :] + names[: round_no % 3]
                for name in order:
                    took = sorted(timed_calls(proxies[name], args.calls))
                    p50[name].append(statistics.median(took))
                    p95[name].append(took[int(len(took) * 0.95) - 1])
                print(f"round {round_no + 1}: " + ", ".join(
                    f"{n} p50 {p50[n][-1] * 1000:.2f} ms" for n in names), flush=True)  # fmt: skip
            print()
            for name in ("on", "down"):
                r50 = statistics.median(a / b for a, b in zip(p50[name], p50["off"], strict=True))
                r95 = statistics.median(a / b for a, b in zip(p95[name], p95["off"], strict=True))
                print(f"export {name:>4} / off: p50 {r50:.3f}x, p95 {r95:.3f}x")
            pushed = len(receiver.metrics)
            print(f"(the collector got {pushed} metric pushes and "
                  f"{len(receiver.log_records())} log records meanwhile)")  # fmt: skip
        finally:
            stop.set()
            for proxy in proxies.values():
                proxy.stop()
            receiver.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
