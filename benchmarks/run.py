"""devmeter's overhead, measured against the same load direct and through bare mitmproxy.

    uv run --extra test python -m benchmarks            # full run (~15 min on 2 cores)
    uv run --extra test python -m benchmarks --quick    # CI-sized (~1.5 min)
    uv run --extra test python benchmarks/run.py --only latency,stream

One process tree: a fake upstream (`python -m tests.fake_upstream`, its own process so it
does not share the client's GIL), bare mitmproxy (`benchmarks/bare_proxy.py`: the same
mitmproxy, started the way devmeter starts it, mapping the provider hosts to the upstream)
and `python -m devmeter proxy --upstream ...`, each with its own CA. The clients run here.
The latency and throughput phases use 3 bare/devmeter process pairs (2 with --quick): two
starts of the same proxy differ by up to 10%, more than one pair can be judged on.

Phases (``--only``): latency, large, stream, throughput, memory, ledger, report. Every phase
interleaves the three targets in rounds so a burst of load elsewhere on the machine hits
all of them alike. The proxies' CPU time per call (psutil) is printed next to throughput:
it is much steadier than wall-clock figures on a shared machine.

``--profile`` records the devmeter proxy with py-spy during the throughput phase and
prints where its time goes, next to bare mitmproxy's (needs ``py-spy`` installed).
``--write-results`` rewrites ``benchmarks/RESULTS.md`` (a ``## Findings`` section in it
is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
import psutil

from benchmarks import ledger_bench
from benchmarks.large_body import conversation_bodies
from benchmarks.load import (
    MESSAGES_BODY,
    PROVIDER_HOST,
    ClientPool,
    Connection,
    Target,
    request_bytes,
    run_load,
)
from tests.fake_upstream.process import FakeUpstreamProcess
from tests.proxy_harness import RunningProxy, start_proxy

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PHASES = ("latency", "large", "stream", "throughput", "memory", "ledger", "report")
CONFIGS = ("direct", "bare", "devmeter")
THROUGHPUT_SLICE_SECONDS = 0.5
MESSAGES_URL = f"https://{PROVIDER_HOST}/v1/messages"
STREAM_BODY = {
    "model": "claude-opus-5-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    latency_calls: int = 1500
    warmup_calls: int = 200
    streams: int = 24
    event_gap_ms: float = 50.0
    throughput_seconds: float = 10.0
    # Separately started bare/devmeter process pairs for the latency and throughput
    # phases: two starts of the very same proxy differ by up to 10% (see README), so one
    # pair is not a verdict.
    process_pairs: int = 3
    concurrency: int = 16
    memory_calls: int = 100_000
    memory_clients: int = 32
    reconnect_every: int = 1000
    writer_rows: int = 100_000
    ledger_rows: int = 1_000_000
    rounds: int = 8
    # The large-request phase: sequential 1 MB calls per target per round, and the
    # seconds of 16 concurrent 1 MB calls while a small call is timed.
    large_calls: int = 15
    large_load_seconds: float = 1.5

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        base = cls.quick() if args.quick else cls()
        changes: dict[str, Any] = {}
        if args.calls is not None:
            changes["memory_calls"] = args.calls
        if args.ledger_rows is not None:
            changes["ledger_rows"] = args.ledger_rows
        if args.seconds is not None:
            changes["throughput_seconds"] = args.seconds
        return cls(**{**base.__dict__, **changes})

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            latency_calls=300,
            warmup_calls=50,
            streams=6,
            throughput_seconds=3.0,
            process_pairs=2,
            memory_calls=10_000,
            writer_rows=20_000,
            ledger_rows=200_000,
            rounds=4,
            large_calls=6,
            large_load_seconds=1.0,
        )


# --------------------------------------------------------------------------- processes


@dataclass
class Proxy:
    name: str
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    ca_cert: Path
    running: RunningProxy | None = None  # devmeter's, to read its ledger

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def target(self) -> Target:
        return Target(proxy=(self.host, self.port), ssl_context=self.ssl_context())

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# A benchmark spends thousands of fake dollars in one session and day: the default asks
# would hold its requests for an answer. Levels out of reach keep the per-request check
# (what is measured) without ever holding one.
BENCH_CONFIG = """
[budgets.session]
ask_usd = [1000000000]

[budgets.day]
ask_usd = [1000000000]
"""


# The large-request phase also times a devmeter with a routing rule that sizes the prompt
# of every request (shadow: nothing is rewritten), where estimating a long conversation's
# prompt is on the request path. Not a target: the figure shows what routing adds.
ROUTING_CONFIG = """
[routing]
mode = "shadow"

[[routing.rules]]
name = "short-prompts-to-haiku"
max_prompt_tokens = 50000
to = "claude-haiku-5-5"
"""
ROUTING = "devmeter-routing"  # its name among the proxies


def start_devmeter(home: Path, upstream: str, config: str = BENCH_CONFIG) -> Proxy:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(config)
    running = start_proxy(home, upstream)
    return Proxy("devmeter", running.proc, running.host, running.port, running.ca_cert, running)


def start_bare(home: Path, upstream: str) -> Proxy:
    home.mkdir(parents=True, exist_ok=True)
    state = home / "bare.json"
    log = (home / "bare.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "bare_proxy.py"),
            "--confdir",
            str(home / "ca"),
            "--state-file",
            str(state),
            "--upstream",
            upstream,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"bare mitmproxy did not start: {(home / 'bare.log').read_text()}")
        time.sleep(0.05)
    info = json.loads(state.read_text())
    ca_cert = home / "ca" / "mitmproxy-ca-cert.pem"
    return Proxy("bare", proc, info["host"], int(info["port"]), ca_cert)


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    upstream: FakeUpstreamProcess
    proxies: dict[str, Proxy] = field(default_factory=dict)
    # (bare, devmeter) names in `proxies`, each pair started separately
    pairs: list[tuple[str, str]] = field(default_factory=lambda: [("bare", "devmeter")])
    results: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def direct_target(self) -> Target:
        return Target(direct=("127.0.0.1", self.upstream.port))

    def targets(self) -> list[str]:
        """Direct, then each process pair's bare and devmeter, in the order they take turns."""
        return ["direct", *(name for pair in self.pairs for name in pair)]

    def target(self, config: str) -> Target:
        return self.direct_target() if config == "direct" else self.proxies[config].target()

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))


def say(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- helpers


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def http_client(bench: Bench, config: str) -> tuple[httpx2.Client, str]:
    """A keep-alive httpx2 client for `config` and the URL of the messages endpoint."""
    if config == "direct":
        client = httpx2.Client(timeout=30, headers={"Host": PROVIDER_HOST})
        return client, f"{bench.upstream.url}/v1/messages"
    proxy = bench.proxies[config]
    return httpx2.Client(proxy=proxy.url, verify=proxy.ssl_context(), timeout=30), MESSAGES_URL


HEADERS = {
    "anthropic-version": "2023-06-01",
    "x-api-key": "sk-ant-bench",
    "content-type": "application/json",
    "user-agent": "devmeter-bench/1",
}


# --------------------------------------------------------------------------- phases


def phase_latency(bench: Bench) -> None:
    s = bench.settings
    pairs = bench.pairs
    say(
        f"latency: {s.latency_calls} sequential non-streamed calls per target, keep-alive, "
        f"after {s.warmup_calls} warm-up calls; {s.rounds} interleaved rounds; "
        f"{len(pairs)} separately started bare/devmeter process pairs"
    )
    targets = bench.targets()
    clients = {t: http_client(bench, t) for t in targets}
    samples: dict[str, list[float]] = {c: [] for c in CONFIGS}  # each config's processes
    # added p50, devmeter / bare, within each round: one list per process pair
    pair_ratios: list[list[float]] = [[] for _ in pairs]
    try:
        for client, url in clients.values():
            for _ in range(s.warmup_calls):
                client.post(url, content=MESSAGES_BODY, headers=HEADERS).raise_for_status()
        per_round = max(1, s.latency_calls // s.rounds)
        for _ in range(s.rounds):
            p50s: dict[str, float] = {}
            for target, (client, url) in clients.items():
                taken = []
                for _ in range(per_round):
                    start = time.perf_counter()
                    response = client.post(url, content=MESSAGES_BODY, headers=HEADERS)
                    taken.append(time.perf_counter() - start)
                    if response.status_code != 200:
                        raise RuntimeError(f"{target}: HTTP {response.status_code}")
                samples[target.split("#")[0]] += taken
                p50s[target] = pct(taken, 50)
            for ratios, (bare, devmeter) in zip(pair_ratios, pairs, strict=True):
                ratios.append(ratio(p50s[devmeter] - p50s["direct"], p50s[bare] - p50s["direct"]))
    finally:
        for client, _ in clients.values():
            client.close()
    out: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        out[config] = {
            "p50_ms": pct(samples[config], 50) * 1e3,
            "p99_ms": pct(samples[config], 99) * 1e3,
            "calls": len(samples[config]),
        }
    for config in ("bare", "devmeter"):
        for q in ("p50", "p99"):
            out[config][f"added_{q}_ms"] = out[config][f"{q}_ms"] - out["direct"][f"{q}_ms"]
    pooled = [r for ratios in pair_ratios for r in ratios]
    out["paired"] = {
        "added_p50_ratio_median": statistics.median(pooled),
        "added_p50_ratios": pooled,
        "pair_medians": [statistics.median(r) for r in pair_ratios],
    }
    bench.results["latency"] = out
    d, b, m = out["direct"], out["bare"], out["devmeter"]
    for q in ("p50", "p99"):
        say(
            f"  {q}: direct {d[q + '_ms']:.3f} ms | bare {b[q + '_ms']:.3f} ms "
            f"(+{b['added_' + q + '_ms']:.3f}) | devmeter {m[q + '_ms']:.3f} ms "
            f"(+{m['added_' + q + '_ms']:.3f}) | added devmeter/bare "
            f"{ratio(m['added_' + q + '_ms'], b['added_' + q + '_ms']):.2f}x, "
            f"devmeter/direct {ratio(m[q + '_ms'], d[q + '_ms']):.2f}x"
        )
    for k, ratios in enumerate(pair_ratios, start=1):
        say(
            f"  pair {k}: added p50 devmeter/bare within each round: {_spread(ratios)}; "
            f"median {statistics.median(ratios):.2f}x"
        )
    r = out["paired"]["added_p50_ratio_median"]
    bench.check(
        "added p50 latency <= 1.25x bare mitmproxy's",
        r <= 1.25,
        f"median of {len(pooled)} paired rounds over {len(pairs)} process pairs {r:.2f}x "
        f"(pairs: {', '.join(f'{x:.2f}x' for x in out['paired']['pair_medians'])}; pooled: "
        f"+{m['added_p50_ms']:.3f} ms vs +{b['added_p50_ms']:.3f} ms = "
        f"{ratio(m['added_p50_ms'], b['added_p50_ms']):.2f}x)",
    )


LARGE_SIZE = 1_000_000  # bytes: Claude Code's request late in a long session
IDLE_SMALL_CALLS = 10  # small calls timed on an idle proxy each round, the baseline
UNDER_LOAD_BODIES = 20  # the conversation's last bodies, sent in turn under load


def phase_large(bench: Bench) -> None:
    """A 1 MB Claude Code conversation re-sent, as late in a session, one turn longer each
    call (large_body.conversation_bodies: every target gets the same bodies in the same
    order): (a) one call's added latency, devmeter against bare, median of paired rounds;
    (b) 16 of them concurrently while a small call on its own connection is timed: how
    much the load delays it."""
    s = bench.settings
    warmup = 3
    bodies = conversation_bodies(warmup + s.rounds * s.large_calls, LARGE_SIZE)
    body = bodies[0]
    pairs = bench.pairs
    say(
        f"large: {len(body):,}- to {len(bodies[-1]):,}-byte Claude Code conversation, a "
        f"turn longer each call; {s.large_calls} sequential calls "
        f"per target a round, then {s.concurrency} concurrent for {s.large_load_seconds:g} s "
        f"while a small call is timed; {s.rounds} interleaved rounds, {len(pairs)} process pairs"
    )
    targets = bench.targets()
    timed = [*targets, ROUTING] if ROUTING in bench.proxies else targets
    bench.upstream.reset()  # it records every body: forget them as the phase goes
    clients = {t: http_client(bench, t) for t in timed}
    samples: dict[str, list[float]] = {c: [] for c in (*CONFIGS, ROUTING)}
    pair_ratios: list[list[float]] = [[] for _ in pairs]
    routing_ratios: list[float] = []  # against the first pair's bare
    # Each proxy process's CPU time a 1 MB call (psutil): steadier than wall-clock on a
    # shared machine, and what the call costs whatever else runs.
    cpu: dict[str, list[float]] = {c: [] for c in ("bare", "devmeter", ROUTING)}
    try:
        for sent in bodies[:warmup]:
            for client, url in clients.values():
                client.post(url, content=sent, headers=HEADERS).raise_for_status()
        sequence = iter(bodies[warmup:])
        for _ in range(s.rounds):
            # Call by call in turn: a 1 MB call takes tens of milliseconds, and a burst of
            # load elsewhere on the machine must hit every target alike.
            taken: dict[str, list[float]] = {t: [] for t in clients}
            cpu_before = {t: bench.proxies[t].cpu_seconds() for t in clients if t != "direct"}
            for _ in range(s.large_calls):
                sent = next(sequence)
                for target, (client, url) in clients.items():
                    start = time.perf_counter()
                    response = client.post(url, content=sent, headers=HEADERS)
                    taken[target].append(time.perf_counter() - start)
                    if response.status_code != 200:
                        raise RuntimeError(f"{target}: HTTP {response.status_code}")
            for t, before in cpu_before.items():
                cpu[t.split("#")[0]].append(
                    (bench.proxies[t].cpu_seconds() - before) / s.large_calls * 1e3
                )
            p50s = {t: pct(times, 50) for t, times in taken.items()}
            for t, times in taken.items():
                samples[t.split("#")[0]] += times
            bench.upstream.reset()
            for ratios, (bare, devmeter) in zip(pair_ratios, pairs, strict=True):
                ratios.append(ratio(p50s[devmeter] - p50s["direct"], p50s[bare] - p50s["direct"]))
            if ROUTING in p50s:
                routing_ratios.append(
                    ratio(p50s[ROUTING] - p50s["direct"], p50s["bare"] - p50s["direct"])
                )
    finally:
        for client, _ in clients.values():
            client.close()
    out: dict[str, Any] = {"body_bytes": len(body)}
    out["cpu_ms_per_call"] = {c: statistics.median(v) for c, v in cpu.items() if v}
    if routing_ratios:
        p50 = pct(samples[ROUTING], 50) * 1e3
        out["routing"] = {
            "p50_ms": p50,
            "added_p50_ms": p50 - pct(samples["direct"], 50) * 1e3,
            "added_p50_ratio_median": statistics.median(routing_ratios),
            "added_p50_ratios": routing_ratios,
        }
    for config in CONFIGS:
        out[config] = {"p50_ms": pct(samples[config], 50) * 1e3, "calls": len(samples[config])}
    for config in ("bare", "devmeter"):
        out[config]["added_p50_ms"] = out[config]["p50_ms"] - out["direct"]["p50_ms"]
    pooled = [r for ratios in pair_ratios for r in ratios]
    out["paired"] = {
        "added_p50_ratio_median": statistics.median(pooled),
        "added_p50_ratios": pooled,
        "pair_medians": [statistics.median(r) for r in pair_ratios],
    }
    d, b, m = out["direct"], out["bare"], out["devmeter"]
    say(
        f"  1 MB call p50: direct {d['p50_ms']:.2f} ms | bare {b['p50_ms']:.2f} ms "
        f"(+{b['added_p50_ms']:.2f}) | devmeter {m['p50_ms']:.2f} ms (+{m['added_p50_ms']:.2f})"
    )
    for k, ratios in enumerate(pair_ratios, start=1):
        say(
            f"  pair {k}: added p50 devmeter/bare within each round: {_spread(ratios)}; "
            f"median {statistics.median(ratios):.2f}x"
        )
    say(
        "  proxy CPU a 1 MB call (median of process-rounds): "
        + " | ".join(f"{c} {v:.2f} ms" for c, v in out["cpu_ms_per_call"].items())
    )
    if routing_ratios:
        rt = out["routing"]
        say(
            f"  with a routing rule sizing every prompt (not a target): {rt['p50_ms']:.2f} ms "
            f"(+{rt['added_p50_ms']:.2f}); added p50 against the first bare within each round: "
            f"{_spread(routing_ratios)}; median {rt['added_p50_ratio_median']:.2f}x"
        )
    r = out["paired"]["added_p50_ratio_median"]
    bench.check(
        "1 MB request: added p50 latency <= 1.25x bare mitmproxy's",
        r <= 1.25,
        f"median of {len(pooled)} paired rounds over {len(pairs)} process pairs {r:.2f}x "
        f"(pairs: {', '.join(f'{x:.2f}x' for x in out['paired']['pair_medians'])}; pooled: "
        f"+{m['added_p50_ms']:.2f} ms vs +{b['added_p50_ms']:.2f} ms)",
    )
    out["under_load"] = asyncio.run(_small_call_under_load(bench, bodies[-UNDER_LOAD_BODIES:]))
    bench.results["large"] = out
    bench.upstream.reset()


async def _small_call_under_load(bench: Bench, bodies: list[bytes]) -> dict[str, Any]:
    """Per round and target: a small call's p50 on an idle proxy, then its p50 while
    `concurrency` clients send the 1 MB bodies back to back (each call the next of the
    conversation's, in turn) through the same proxy. The delay is the difference;
    devmeter's is judged against bare's within each round."""
    s = bench.settings
    pairs = bench.pairs
    small = request_bytes()
    big = [request_bytes(body) for body in bodies]
    targets = bench.targets()
    pools = {t: ClientPool(bench.target(t), s.concurrency, big) for t in targets}
    smalls = {t: await Connection.open(bench.target(t)) for t in targets}
    delays: dict[str, list[float]] = {t: [] for t in targets}
    loaded: dict[str, list[float]] = {t: [] for t in targets}
    big_rates: dict[str, list[float]] = {t: [] for t in targets}
    try:
        for t in targets:
            await pools[t].open()  # one 1 MB call on each connection: per-connection work
            await smalls[t].call(small)
        bench.upstream.reset()
        for _ in range(s.rounds):
            for t in targets:
                idle = [await _timed(smalls[t], small) for _ in range(IDLE_SMALL_CALLS)]
                load = asyncio.create_task(pools[t].run(s.large_load_seconds))
                await asyncio.sleep(0.2)  # every client has a 1 MB call on its way
                timed: list[float] = []
                while not load.done():
                    timed.append(await _timed(smalls[t], small))
                result = await load
                if result.errors:
                    raise RuntimeError(f"{t}: {result.errors} of {result.calls} 1 MB calls failed")
                big_rates[t].append(result.rate)
                loaded[t].append(pct(timed, 50))
                delays[t].append(pct(timed, 50) - pct(idle, 50))
                await asyncio.to_thread(bench.upstream.reset)
    finally:
        for t in targets:
            await pools[t].close()
            await smalls[t].close()
    pair_ratios = [
        [ratio(dm, db) for dm, db in zip(delays[devmeter], delays[bare], strict=True)]
        for bare, devmeter in pairs
    ]
    pooled = [r for ratios in pair_ratios for r in ratios]
    out: dict[str, Any] = {}
    for config in CONFIGS:
        names = [t for t in targets if t.split("#")[0] == config]
        out[config] = {
            "small_p50_loaded_ms": statistics.median(x for t in names for x in loaded[t]) * 1e3,
            "small_delay_ms": statistics.median(x for t in names for x in delays[t]) * 1e3,
            "large_calls_per_s": statistics.median(x for t in names for x in big_rates[t]),
        }
    out["paired"] = {
        "delay_ratio_median": statistics.median(pooled),
        "delay_ratios": pooled,
        "pair_medians": [statistics.median(r) for r in pair_ratios],
    }
    d, b, m = out["direct"], out["bare"], out["devmeter"]
    say(
        f"  small call under {s.concurrency} concurrent 1 MB calls, p50 (delay over idle): "
        f"direct {d['small_p50_loaded_ms']:.1f} ms (+{d['small_delay_ms']:.1f}) | bare "
        f"{b['small_p50_loaded_ms']:.1f} ms (+{b['small_delay_ms']:.1f}) | devmeter "
        f"{m['small_p50_loaded_ms']:.1f} ms (+{m['small_delay_ms']:.1f}); 1 MB calls/s "
        f"direct {d['large_calls_per_s']:.0f}, bare {b['large_calls_per_s']:.0f}, "
        f"devmeter {m['large_calls_per_s']:.0f}"
    )
    for k, ratios in enumerate(pair_ratios, start=1):
        say(
            f"  pair {k}: small call's delay devmeter/bare within each round: {_spread(ratios)}; "
            f"median {statistics.median(ratios):.2f}x"
        )
    r = out["paired"]["delay_ratio_median"]
    bench.check(
        f"{s.concurrency} concurrent 1 MB requests delay a small call <= 1.25x bare's delay",
        r <= 1.25,
        f"median of {len(pooled)} paired rounds over {len(pairs)} process pairs {r:.2f}x "
        f"(pairs: {', '.join(f'{x:.2f}x' for x in out['paired']['pair_medians'])}; delay "
        f"+{m['small_delay_ms']:.1f} ms vs +{b['small_delay_ms']:.1f} ms)",
    )
    return out


async def _timed(conn: Connection, request: bytes) -> float:
    start = time.perf_counter()
    status, _ = await conn.call(request)
    if status != 200:
        raise RuntimeError(f"small call: HTTP {status}")
    return time.perf_counter() - start


def _spread(values: list[float]) -> str:
    """Per-round ratios, smallest to largest: how much the machine moved under the run."""
    return " ".join(f"{v:.2f}" for v in sorted(values))


def _one_stream(
    client: httpx2.Client, url: str, tag: str, gap_ms: float
) -> tuple[float, list[float]]:
    """Send one streamed call; (time to first event, arrival time of every event)."""
    headers = {**HEADERS, "x-fake-delay-ms": str(gap_ms), "x-bench-id": tag}
    arrivals: list[float] = []
    tail = b""
    start = time.monotonic()
    with client.stream("POST", url, json=STREAM_BODY, headers=headers) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            now = time.monotonic()
            data = tail + chunk
            arrivals.extend([now] * data.count(b"\n\n"))
            tail = data[data.rfind(b"\n\n") + 2 :] if b"\n\n" in data else data
    return arrivals[0] - start, arrivals


def phase_stream(bench: Bench) -> None:
    s = bench.settings
    say(f"stream: {s.streams} streams per target, upstream events {s.event_gap_ms:g} ms apart")
    bench.upstream.reset()
    clients = {c: http_client(bench, c) for c in CONFIGS}
    ttfe: dict[str, list[float]] = {c: [] for c in CONFIGS}
    tags: dict[str, list[tuple[str, list[float]]]] = {c: [] for c in CONFIGS}
    try:
        for client, url in clients.values():  # warm: TLS, certs, connection
            _one_stream(client, url, "warmup", 0)
        for _ in range(s.streams):  # a round: one stream through each target
            for config, (client, url) in clients.items():
                tag = uuid.uuid4().hex
                first, arrivals = _one_stream(client, url, tag, s.event_gap_ms)
                ttfe[config].append(first)
                tags[config].append((tag, arrivals))
    finally:
        for client, _ in clients.values():
            client.close()
    recorded = {r["headers"].get("x-bench-id"): r["id"] for r in bench.upstream.requests()}
    sent: dict[int, list[float]] = collections.defaultdict(list)
    for event in bench.upstream.sent_events():
        sent[event["request_id"]].append(event["time"])
    out: dict[str, Any] = {}
    for config in CONFIGS:
        later: list[float] = []
        for tag, arrivals in tags[config]:
            times = sorted(sent[recorded[tag]])
            if len(times) != len(arrivals):
                raise RuntimeError(f"{config}: {len(arrivals)} events arrived, {len(times)} sent")
            later += [a - t for a, t in zip(arrivals[1:], times[1:], strict=True)]
        out[config] = {
            "ttfe_ms": statistics.median(ttfe[config]) * 1e3,
            "event_delay_p50_ms": pct(later, 50) * 1e3,
            "event_delay_p99_ms": pct(later, 99) * 1e3,
            "events": len(later),
        }
    gaps = [(m - b) * 1e3 for m, b in zip(ttfe["devmeter"], ttfe["bare"], strict=True)]
    out["paired"] = {"ttfe_gap_ms_median": statistics.median(gaps), "ttfe_gaps_ms": gaps}
    bench.results["stream"] = out
    d, b, m = out["direct"], out["bare"], out["devmeter"]
    say(
        f"  time to first event (median): direct {d['ttfe_ms']:.2f} ms | bare "
        f"{b['ttfe_ms']:.2f} ms | devmeter {m['ttfe_ms']:.2f} ms | devmeter-bare "
        f"{m['ttfe_ms'] - b['ttfe_ms']:+.2f} ms, devmeter/bare "
        f"{ratio(m['ttfe_ms'], b['ttfe_ms']):.2f}x, devmeter/direct "
        f"{ratio(m['ttfe_ms'], d['ttfe_ms']):.2f}x"
    )
    say(
        f"  later events, sent->received p50/p99: direct {d['event_delay_p50_ms']:.2f}/"
        f"{d['event_delay_p99_ms']:.2f} ms | bare {b['event_delay_p50_ms']:.2f}/"
        f"{b['event_delay_p99_ms']:.2f} ms | devmeter {m['event_delay_p50_ms']:.2f}/"
        f"{m['event_delay_p99_ms']:.2f} ms ({m['events']} events each)"
    )
    gap = out["paired"]["ttfe_gap_ms_median"]
    say(f"  first event, devmeter - bare within each round (ms): {_spread(gaps)}")
    bench.check(
        "stream time to first event within 1 ms of bare mitmproxy's",
        gap <= 1.0,
        f"median of {len(gaps)} paired rounds {gap:+.2f} ms (medians: {m['ttfe_ms']:.2f} ms "
        f"vs {b['ttfe_ms']:.2f} ms)",
    )
    bench.upstream.reset()


def phase_throughput(bench: Bench, profile: bool) -> None:
    s = bench.settings
    slices = max(4, round(s.throughput_seconds / THROUGHPUT_SLICE_SECONDS))
    per_slice = s.throughput_seconds / slices
    say(
        f"throughput: {s.concurrency} concurrent keep-alive clients per target, connected "
        f"once; {s.throughput_seconds:g} s per target in {slices} alternating slices of "
        f"{per_slice:.2g} s; {len(bench.pairs)} separately started bare/devmeter process pairs"
    )
    pairs = bench.pairs
    targets = bench.targets()
    totals = {t: [0, 0.0, 0.0, 0] for t in targets}  # calls, seconds, proxy cpu, errors
    spies: dict[str, subprocess.Popen[bytes]] = {}
    # calls/s, devmeter / bare, in back-to-back slices: one list per process pair.
    pair_ratios: list[list[float]] = [[] for _ in pairs]
    # The other bare processes against the first, slice by slice: the same code, so
    # what these show is the noise floor of the method.
    control_ratios: list[list[float]] = [[] for _ in pairs[1:]]
    connect_ms: dict[str, float] = {}  # opening the clients: CONNECT, TLS, first call

    async def measure() -> None:
        # Connections opened once and kept: sustained load, as clients with a connection
        # pool give it. Short slices, the targets taking turns (ABC CBA ...), put each
        # devmeter slice next to its pair's bare one: this machine's speed moves within
        # seconds, and a pair that close sees the same machine.
        pools = {t: ClientPool(bench.target(t), s.concurrency) for t in targets}
        try:
            for target, pool in pools.items():
                started = time.perf_counter()
                await pool.open()
                connect_ms[target] = (time.perf_counter() - started) * 1e3
                await pool.run(THROUGHPUT_SLICE_SECONDS)  # warm-up
            if profile:  # after the warm-up: first-call costs are not per-call costs
                spies.update(start_profilers(bench, s.throughput_seconds * len(targets) / 3 + 2))
            for i in range(slices):
                rates: dict[str, float] = {}
                for target in targets if i % 2 == 0 else targets[::-1]:
                    proxy = bench.proxies.get(target)
                    cpu = proxy.cpu_seconds() if proxy else 0.0
                    result = await pools[target].run(per_slice)
                    rates[target] = result.calls / result.seconds
                    totals[target][0] += result.calls
                    totals[target][1] += result.seconds
                    totals[target][2] += (proxy.cpu_seconds() - cpu) if proxy else 0.0
                    totals[target][3] += result.errors
                for ratios, (bare, devmeter) in zip(pair_ratios, pairs, strict=True):
                    ratios.append(ratio(rates[devmeter], rates[bare]))
                for ratios, (bare, _) in zip(control_ratios, pairs[1:], strict=True):
                    ratios.append(ratio(rates[bare], rates["bare"]))
        finally:
            for pool in pools.values():
                await pool.close()

    asyncio.run(measure())
    for target, (_, _, _, errors) in totals.items():
        if errors:
            raise RuntimeError(f"{target}: {errors} failed calls under load")
    out: dict[str, Any] = {}
    for config in CONFIGS:  # each config's processes together
        members = [t for t in targets if t.split("#")[0] == config]
        calls, seconds, cpu = (sum(totals[t][j] for t in members) for j in range(3))
        out[config] = {
            "calls": calls,
            "calls_per_s": calls / seconds,  # per process: each ran its own slices
            "errors": 0,
            "proxy_cpu_ms_per_call": cpu / calls * 1e3 if calls else 0.0,
            "connect_ms": statistics.median(connect_ms[t] for t in members),
        }
    pooled = [r for ratios in pair_ratios for r in ratios]
    out["paired"] = {
        "ratio_median": statistics.median(pooled),
        "ratios": pooled,
        "pair_medians": [statistics.median(r) for r in pair_ratios],
        "control_medians": [statistics.median(r) for r in control_ratios],
    }
    bench.results["throughput"] = out
    d, b, m = out["direct"], out["bare"], out["devmeter"]
    say(
        f"  calls/s (per process): direct {d['calls_per_s']:.0f} | bare {b['calls_per_s']:.0f} | "
        f"devmeter {m['calls_per_s']:.0f} | devmeter/bare "
        f"{ratio(m['calls_per_s'], b['calls_per_s']):.2f}x, devmeter/direct "
        f"{ratio(m['calls_per_s'], d['calls_per_s']):.2f}x"
    )
    cpu_b, cpu_m = b["proxy_cpu_ms_per_call"], m["proxy_cpu_ms_per_call"]
    say(
        f"  proxy CPU per call: bare {cpu_b:.2f} ms | devmeter {cpu_m:.2f} ms "
        f"({ratio(cpu_m, cpu_b):.2f}x)"
    )
    say(
        f"  opening {s.concurrency} clients (CONNECT, TLS, first call; once, not in the "
        f"figures above): bare {b['connect_ms']:.0f} ms | devmeter {m['connect_ms']:.0f} ms"
    )
    for k, ratios in enumerate(pair_ratios, start=1):
        say(
            f"  pair {k}: calls/s devmeter/bare in each pair of slices: {_spread(ratios)}; "
            f"median {statistics.median(ratios):.2f}x"
        )
    if control_ratios:
        controls = ", ".join(f"{x:.2f}x" for x in out["paired"]["control_medians"])
        say(f"  control, bare processes 2.. against bare process 1 (same code): {controls}")
    r = out["paired"]["ratio_median"]
    bench.check(
        "throughput >= 0.8x bare mitmproxy's",
        r >= 0.8,
        f"median of {len(pooled)} paired slices over {len(pairs)} process pairs {r:.2f}x "
        f"(pairs: {', '.join(f'{x:.2f}x' for x in out['paired']['pair_medians'])}; pooled: "
        f"{m['calls_per_s']:.0f}/s vs {b['calls_per_s']:.0f}/s = "
        f"{ratio(m['calls_per_s'], b['calls_per_s']):.2f}x)",
    )
    out["churn"] = _churn_throughput(bench)
    if spies:
        report_profiles(bench, spies, out)


def start_pairs(bench: Bench, count: int) -> list[tuple[str, str]]:
    """(bare, devmeter) proxy names: the first pair, then `count - 1` started afresh."""
    pairs = [("bare", "devmeter")]
    for k in range(2, count + 1):
        bare, devmeter = f"bare#{k}", f"devmeter#{k}"
        bench.proxies[bare] = start_bare(bench.workdir / f"bare{k}", bench.upstream.url)
        bench.proxies[devmeter] = start_devmeter(bench.workdir / f"devmeter{k}", bench.upstream.url)
        pairs.append((bare, devmeter))
    return pairs


CHURN_CALLS = 25  # calls per connection in the churn figure


def _churn_throughput(bench: Bench) -> dict[str, Any]:
    """Not a target: the same load from clients that reconnect every CHURN_CALLS calls,
    so what a new connection costs (CONNECT, TLS, devmeter's client process lookup) shows."""
    s = bench.settings
    rates: dict[str, list[float]] = {"bare": [], "devmeter": []}
    for i in range(s.rounds):
        for config in ("bare", "devmeter") if i % 2 == 0 else ("devmeter", "bare"):
            result = asyncio.run(
                run_load(
                    bench.target(config), s.concurrency, seconds=1.0, reconnect_every=CHURN_CALLS
                )
            )
            rates[config].append(result.rate)
    ratios = [ratio(m, b) for m, b in zip(rates["devmeter"], rates["bare"], strict=True)]
    churn = {
        "calls_per_connection": CHURN_CALLS,
        "bare_calls_per_s": statistics.median(rates["bare"]),
        "devmeter_calls_per_s": statistics.median(rates["devmeter"]),
        "ratio_median": statistics.median(ratios),
    }
    say(
        f"  clients reconnecting every {CHURN_CALLS} calls (not a target): bare "
        f"{churn['bare_calls_per_s']:.0f}/s | devmeter {churn['devmeter_calls_per_s']:.0f}/s; "
        f"devmeter/bare median of {len(ratios)} rounds {churn['ratio_median']:.2f}x"
    )
    return churn


def phase_memory(bench: Bench) -> None:
    s = bench.settings
    first = s.memory_calls // 10
    say(
        f"memory: RSS of a fresh devmeter proxy after {first} and {s.memory_calls} calls "
        f"({s.memory_clients} keep-alive clients, each reconnecting every {s.reconnect_every})"
    )
    home = bench.workdir / "memory-home"
    proxy = start_devmeter(home, bench.upstream.url)
    try:
        asyncio.run(run_load(proxy.target(), 4, calls=200))  # certs, imports, caches
        marks: dict[int, int] = {}
        started = time.monotonic()

        def on_progress(done: int) -> None:
            if done in (first, s.memory_calls):
                marks[done] = proxy.rss()
            if done % 10_000 == 0:
                say(
                    f"  {done} calls, {done / (time.monotonic() - started):.0f}/s, RSS "
                    f"{proxy.rss() / 2**20:.1f} MiB"
                )

        result = asyncio.run(
            run_load(
                proxy.target(),
                s.memory_clients,
                calls=s.memory_calls,
                reconnect_every=s.reconnect_every,
                on_progress=on_progress,
            )
        )
        assert proxy.running is not None
        rows = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = _count_rows(proxy.running)
            if rows >= s.memory_calls + 200:
                break
            time.sleep(0.2)
        settled = proxy.rss()
    finally:
        proxy.stop()
    growth = (marks[s.memory_calls] - marks[first]) / marks[first]
    out = {
        "calls": result.calls,
        "errors": result.errors,
        "seconds": result.seconds,
        "calls_per_s": result.rate,
        f"rss_at_{first}_mib": marks[first] / 2**20,
        f"rss_at_{s.memory_calls}_mib": marks[s.memory_calls] / 2**20,
        "rss_settled_mib": settled / 2**20,
        "growth": growth,
        "ledger_rows": rows,
        "first_mark": first,
    }
    bench.results["memory"] = out
    say(
        f"  RSS {marks[first] / 2**20:.1f} MiB at {first} -> {marks[s.memory_calls] / 2**20:.1f} "
        f"MiB at {s.memory_calls} calls ({growth:+.1%}); {settled / 2**20:.1f} MiB once the "
        f"ledger caught up; {rows} ledger rows for {s.memory_calls + 200} calls; "
        f"{result.rate:.0f} calls/s, {result.seconds:.0f} s"
    )
    bench.check(
        "memory growth from 10% to 100% of the calls < 10%",
        growth < 0.10,
        f"{growth:+.1%} ({first} -> {s.memory_calls} calls)",
    )
    bench.check(
        "every call of the memory run is in the ledger",
        rows == s.memory_calls + 200 and result.errors == 0,
        f"{rows} rows for {s.memory_calls + 200} calls, {result.errors} errors",
    )


def _count_rows(running: RunningProxy) -> int:
    import sqlite3

    conn = sqlite3.connect(f"{(running.home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def phase_ledger(bench: Bench) -> None:
    s = bench.settings
    say(f"ledger: {s.writer_rows} calls through LedgerWriter (one writer thread, batched)")
    out = ledger_bench.writer_rate(bench.workdir / "writer" / "ledger.sqlite", s.writer_rows)
    bench.results["ledger"] = out
    say(
        f"  {out['rows_per_s']:.0f} rows/s ({out['seconds']:.2f} s; add_call "
        f"{out['add_call_us']:.1f} us on the caller's thread)"
    )


def phase_report(bench: Bench) -> None:
    s = bench.settings
    home = bench.workdir / "report-home"
    home.mkdir(parents=True, exist_ok=True)
    say(f"report: `devmeter report --by session` / `--by day` over {s.ledger_rows} calls")
    built = ledger_bench.build_ledger(home, s.ledger_rows)
    size = (home / "ledger.sqlite").stat().st_size
    say(f"  ledger built in {built['seconds']:.1f} s ({size / 2**20:.0f} MiB)")
    times = ledger_bench.report_times(home)
    bench.results["report"] = {"rows": s.ledger_rows, "ledger_mib": size / 2**20, **times}
    say(f"  interpreter + `import devmeter.cli`: {times['startup']['median_s']:.2f} s")
    for by in ("session", "day"):
        t = times[by]
        say(
            f"  --by {by}: median {t['median_s']:.2f} s, best {t['best_s']:.2f} s "
            f"({t['output_lines']} lines)"
        )
        bench.check(
            f"report --by {by} over {s.ledger_rows} calls < 1 s",
            t["median_s"] < 1.0,
            f"{t['median_s']:.2f} s",
        )


# --------------------------------------------------------------------------- profiling


def start_profilers(bench: Bench, seconds: float) -> dict[str, subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        say("  (--profile: py-spy is not installed; `uv pip install py-spy`)")
        return {}
    spies = {}
    for name in ("bare", "devmeter"):
        out = bench.workdir / f"profile-{name}.txt"
        spies[name] = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(bench.proxies[name].proc.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--gil",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(1.0)  # py-spy attaches
    return spies


def report_profiles(
    bench: Bench, spies: dict[str, subprocess.Popen[bytes]], throughput: dict[str, dict[str, float]]
) -> None:
    """Where each proxy's CPU goes, per call: a function's share of the GIL-holding samples
    times the proxy's measured CPU per call; devmeter next to bare, by the difference."""
    for spy in spies.values():
        spy.wait(60)
    stacks = {name: _folded(bench.workdir / f"profile-{name}.txt") for name in spies}
    if not all(stacks.values()):
        say("  (--profile: py-spy recorded nothing; it needs ptrace rights)")
        return
    cpu = {name: throughput[name]["proxy_cpu_ms_per_call"] for name in spies}

    def per_call(name: str, key: str) -> float:
        counts = stacks[name]
        return counts.get(key, 0) / counts[TOTAL] * cpu[name]

    say("  profile (py-spy --gil; estimated ms of proxy CPU per call, inclusive):")
    say("      bare devmeter  function")
    keys = (set(stacks["bare"]) | set(stacks["devmeter"])) - {TOTAL}
    roots = {k for k in keys if stacks["devmeter"].get(k, 0) > 0.9 * stacks["devmeter"][TOTAL]}
    ranked = sorted(
        keys - roots, key=lambda k: per_call("devmeter", k) - per_call("bare", k), reverse=True
    )
    for key in ranked[:30]:
        say(f"    {per_call('bare', key):6.3f} {per_call('devmeter', key):6.3f}  {key[:100]}")
    bench.results["profile_files"] = [str(bench.workdir / f"profile-{n}.txt") for n in spies]
    say(f"  raw folded stacks: {bench.workdir}/profile-*.txt")


TOTAL = "(all samples)"


def _folded(path: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = {re.sub(r":\d+\)", ")", f) for f in stack.split(";")}
        for frame in frames:
            counts[frame] += int(n)
        counts[TOTAL] += int(n)
    return dict(counts)


# --------------------------------------------------------------------------- output


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from mitmproxy import version as mitmproxy_version

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "mitmproxy": mitmproxy_version.VERSION,
        "os": f"{platform.system()} {platform.release()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def summary_rows(bench: Bench) -> list[tuple[str, str, str, str, str, str]]:
    """(figure, direct, bare, devmeter, devmeter/bare, devmeter/direct)."""
    r = bench.results
    rows: list[tuple[str, str, str, str, str, str]] = []
    if "latency" in r:
        lat = r["latency"]
        for q in ("p50", "p99"):
            d, b, m = (lat[c][f"{q}_ms"] for c in CONFIGS)
            rows.append(
                (
                    f"non-streamed call, {q} (ms)",
                    f"{d:.3f}",
                    f"{b:.3f}",
                    f"{m:.3f}",
                    f"{ratio(m, b):.2f}x",
                    f"{ratio(m, d):.2f}x",
                )
            )
            ab, am = lat["bare"][f"added_{q}_ms"], lat["devmeter"][f"added_{q}_ms"]
            rows.append(
                (
                    f"added latency, {q} (ms)",
                    "0",
                    f"{ab:.3f}",
                    f"{am:.3f}",
                    f"{ratio(am, ab):.2f}x",
                    "",
                )
            )
        paired = lat["paired"]
        rows.append(
            (
                f"added p50 latency, median of {len(paired['added_p50_ratios'])} paired rounds "
                f"({len(paired['pair_medians'])} process pairs)",
                "",
                "",
                "",
                f"{paired['added_p50_ratio_median']:.2f}x",
                "",
            )
        )
    if "large" in r:
        rows += _large_rows(r["large"], bench.settings.concurrency)
    if "stream" in r:
        st = r["stream"]
        d, b, m = (st[c]["ttfe_ms"] for c in CONFIGS)
        rows.append(
            (
                "stream: time to first event, median (ms)",
                f"{d:.2f}",
                f"{b:.2f}",
                f"{m:.2f}",
                f"{ratio(m, b):.2f}x ({m - b:+.2f} ms)",
                f"{ratio(m, d):.2f}x",
            )
        )
        gaps = st["paired"]["ttfe_gaps_ms"]
        rows.append(
            (
                f"stream: first event, devmeter - bare, median of {len(gaps)} paired rounds",
                "",
                "",
                "",
                f"{st['paired']['ttfe_gap_ms_median']:+.2f} ms",
                "",
            )
        )
        for q in ("p50", "p99"):
            d, b, m = (st[c][f"event_delay_{q}_ms"] for c in CONFIGS)
            rows.append(
                (
                    f"stream: later event sent->received, {q} (ms)",
                    f"{d:.2f}",
                    f"{b:.2f}",
                    f"{m:.2f}",
                    f"{ratio(m, b):.2f}x ({m - b:+.2f} ms)",
                    f"{ratio(m, d):.2f}x",
                )
            )
    if "throughput" in r:
        tp = r["throughput"]
        d, b, m = (tp[c]["calls_per_s"] for c in CONFIGS)
        rows.append(
            (
                f"throughput, {bench.settings.concurrency} clients (calls/s)",
                f"{d:.0f}",
                f"{b:.0f}",
                f"{m:.0f}",
                f"{ratio(m, b):.2f}x",
                f"{ratio(m, d):.2f}x",
            )
        )
        rows.append(
            (
                f"throughput, median of {len(tp['paired']['ratios'])} paired slices "
                f"({len(tp['paired']['pair_medians'])} process pairs)",
                "",
                "",
                "",
                f"{tp['paired']['ratio_median']:.2f}x",
                "",
            )
        )
        b, m = (tp[c]["proxy_cpu_ms_per_call"] for c in ("bare", "devmeter"))
        rows.append(
            (
                "proxy CPU per call under load (ms)",
                "",
                f"{b:.2f}",
                f"{m:.2f}",
                f"{ratio(m, b):.2f}x",
                "",
            )
        )
        churn = tp.get("churn")
        if churn:
            rows.append(
                (
                    f"throughput, clients reconnecting every {churn['calls_per_connection']} "
                    "calls (calls/s; not a target)",
                    "",
                    f"{churn['bare_calls_per_s']:.0f}",
                    f"{churn['devmeter_calls_per_s']:.0f}",
                    f"{churn['ratio_median']:.2f}x",
                    "",
                )
            )
    if "memory" in r:
        mem = r["memory"]
        first, last = mem["first_mark"], mem["calls"]
        rows.append(
            (
                f"devmeter RSS after {first} / {last} calls (MiB)",
                "",
                "",
                f"{mem[f'rss_at_{first}_mib']:.1f} / {mem[f'rss_at_{last}_mib']:.1f}",
                "",
                "",
            )
        )
        rows.append(
            (
                f"devmeter RSS growth {first} -> {last} calls",
                "",
                "",
                f"{mem['growth']:+.1%}",
                "",
                "",
            )
        )
    if "ledger" in r:
        rows.append(("LedgerWriter (rows/s)", "", "", f"{r['ledger']['rows_per_s']:.0f}", "", ""))
    if "report" in r:
        rep = r["report"]
        for by in ("session", "day"):
            rows.append(
                (
                    f"`devmeter report --by {by}`, {rep['rows']} calls (s)",
                    "",
                    "",
                    f"{rep[by]['median_s']:.2f}",
                    "",
                    "",
                )
            )
        rows.append(
            (
                "  of which interpreter + imports (s)",
                "",
                "",
                f"{rep['startup']['median_s']:.2f}",
                "",
                "",
            )
        )
    return rows


def _large_rows(
    large: dict[str, Any], concurrency: int
) -> list[tuple[str, str, str, str, str, str]]:
    kb = large["body_bytes"] // 1000
    d, b, m = (large[c]["p50_ms"] for c in CONFIGS)
    ab, am = large["bare"]["added_p50_ms"], large["devmeter"]["added_p50_ms"]
    paired = large["paired"]
    load = large["under_load"]
    ld, lb, lm = (load[c] for c in CONFIGS)
    return [
        (f"{kb} KB request, p50 (ms)", f"{d:.2f}", f"{b:.2f}", f"{m:.2f}",
         f"{ratio(m, b):.2f}x", f"{ratio(m, d):.2f}x"),
        (f"{kb} KB request, added latency p50 (ms)", "0", f"{ab:.2f}", f"{am:.2f}",
         f"{ratio(am, ab):.2f}x", ""),
        (f"{kb} KB request, added p50, median of {len(paired['added_p50_ratios'])} paired "
         f"rounds ({len(paired['pair_medians'])} process pairs)", "", "", "",
         f"{paired['added_p50_ratio_median']:.2f}x", ""),
        *_routing_row(large, kb),
        *_cpu_row(large, kb),
        (f"small call during {concurrency} concurrent {kb} KB requests, p50 (ms)",
         f"{ld['small_p50_loaded_ms']:.1f}", f"{lb['small_p50_loaded_ms']:.1f}",
         f"{lm['small_p50_loaded_ms']:.1f}",
         f"{ratio(lm['small_p50_loaded_ms'], lb['small_p50_loaded_ms']):.2f}x", ""),
        ("  its delay over the same proxy idle (ms)", f"{ld['small_delay_ms']:.1f}",
         f"{lb['small_delay_ms']:.1f}", f"{lm['small_delay_ms']:.1f}",
         f"{ratio(lm['small_delay_ms'], lb['small_delay_ms']):.2f}x", ""),
        (f"  its delay, median of {len(load['paired']['delay_ratios'])} paired rounds", "", "",
         "", f"{load['paired']['delay_ratio_median']:.2f}x", ""),
        (f"  {kb} KB calls/s meanwhile ({concurrency} clients)", f"{ld['large_calls_per_s']:.0f}",
         f"{lb['large_calls_per_s']:.0f}", f"{lm['large_calls_per_s']:.0f}",
         f"{ratio(lm['large_calls_per_s'], lb['large_calls_per_s']):.2f}x", ""),
    ]  # fmt: skip


def _cpu_row(large: dict[str, Any], kb: int) -> list[tuple[str, str, str, str, str, str]]:
    cpu = large.get("cpu_ms_per_call", {})
    if "bare" not in cpu or "devmeter" not in cpu:
        return []
    b, m = cpu["bare"], cpu["devmeter"]
    routed = f"; with the routing rule {cpu[ROUTING]:.2f}" if ROUTING in cpu else ""
    return [(f"proxy CPU per {kb} KB call (ms{routed})", "", f"{b:.2f}", f"{m:.2f}",
             f"{ratio(m, b):.2f}x", "")]  # fmt: skip


def _routing_row(large: dict[str, Any], kb: int) -> list[tuple[str, str, str, str, str, str]]:
    rt = large.get("routing")
    if rt is None:
        return []
    return [
        (f"{kb} KB request, devmeter with a routing rule sizing every prompt (not a target): "
         f"added p50 (ms), median of {len(rt['added_p50_ratios'])} rounds against bare", "",
         f"{large['bare']['added_p50_ms']:.2f}", f"{rt['added_p50_ms']:.2f}",
         f"{rt['added_p50_ratio_median']:.2f}x", ""),
    ]  # fmt: skip


def markdown(bench: Bench, command: str, info: dict[str, str]) -> str:
    lines = [
        "# devmeter benchmark results",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {info['nproc']} cores, {info['cpu']}, {info['os']}; load average at "
        f"start {info['load']} (the machine is shared: figures are noisy)",
        f"- Python {info['python']}, mitmproxy {info['mitmproxy']}",
        f"- command: `{command}`",
        "",
        "| figure | direct | bare mitmproxy | devmeter | devmeter/bare | devmeter/direct |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {' | '.join(row)} |" for row in summary_rows(bench)]
    lines += ["", "| target | result | measured |", "| --- | --- | --- |"]
    lines += [
        f"| {name} | {'PASS' if ok else 'MISS'} | {detail} |" for name, ok, detail in bench.checks
    ]
    return "\n".join(lines) + "\n"


def write_results(text: str) -> None:
    kept = ""
    if RESULTS.exists():
        old = RESULTS.read_text()
        at = old.find("\n## Findings")
        if at >= 0:
            kept = old[at:]
    RESULTS.write_text(text + kept)


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def running(settings: Settings, phases: set[str]) -> Iterator[Bench]:
    workdir = Path(tempfile.mkdtemp(prefix="devmeter-bench-"))
    upstream = FakeUpstreamProcess("--no-websocket").start()
    bench = Bench(settings, workdir, upstream)
    try:
        if phases & {"latency", "large", "stream", "throughput"}:
            bench.proxies["bare"] = start_bare(workdir / "bare", upstream.url)
            bench.proxies["devmeter"] = start_devmeter(workdir / "devmeter", upstream.url)
        if phases & {"latency", "large", "throughput"}:
            bench.pairs = start_pairs(bench, settings.process_pairs)
        if "large" in phases:
            bench.proxies[ROUTING] = start_devmeter(
                workdir / ROUTING, upstream.url, BENCH_CONFIG + ROUTING_CONFIG
            )
        yield bench
    finally:
        for proxy in bench.proxies.values():
            proxy.stop()
        upstream.stop()
        if not bench.results.get("profile_files"):
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run")
    parser.add_argument("--calls", type=int, help="calls in the memory phase (default 100000)")
    parser.add_argument("--ledger-rows", type=int, help="ledger size for report (default 1M)")
    parser.add_argument("--seconds", type=float, help="throughput seconds per target")
    parser.add_argument("--only", help=f"comma-separated phases: {','.join(PHASES)}")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the proxies during the throughput phase"
    )
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    parser.add_argument(
        "--write-results", action="store_true", help=f"rewrite {RESULTS.relative_to(REPO)}"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_args(args)
    phases = set(args.only.split(",")) if args.only else set(PHASES)
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}; choose from {', '.join(PHASES)}")
    info = machine()
    say(
        f"devmeter benchmarks: {info['nproc']} cores ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}, load average {info['load']}"
    )
    command = (
        "uv run --extra test python -m benchmarks"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    with running(settings, phases) as bench:
        for phase in PHASES:
            if phase not in phases:
                continue
            started = time.monotonic()
            if phase == "throughput":
                phase_throughput(bench, args.profile)
            else:
                globals()[f"phase_{phase}"](bench)
            say(f"  ({time.monotonic() - started:.0f} s)")
    say()
    for name, ok, detail in bench.checks:
        say(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "settings": settings.__dict__,
                    "results": bench.results,
                    "checks": bench.checks,
                },
                indent=2,
            )
        )
    if args.write_results:
        write_results(markdown(bench, command, info))
        say(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
