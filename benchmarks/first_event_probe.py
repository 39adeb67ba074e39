"""Where a streamed call's time to first event goes, bare mitmproxy against devmeter.

Starts the fake upstream, a bare mitmproxy (bare_proxy.py) and a `devmeter proxy` with
the benchmark's config, each patched at start to write `time.monotonic()` and the thread's
CPU time at the entry and exit of its hooks (and of devmeter's stream tap on the first
chunk) to a trace file; then streams the stream phase's call through each in turn, for
`--rounds` rounds. As all three processes share the one monotonic clock, each call is
printed as a timeline from the client's send: the proxy's hooks, the upstream having read
the request (`up_read`) and sent its first event (`up_sent`), the client holding it
(`first`); then each hook's thread CPU, and every thread's CPU and run-queue wait over the
rounds (/proc schedstat): a worker holding the GIL would show there.

    uv run --python 3.11 --extra test python -m benchmarks.first_event_probe --rounds 40

2026-12-07 (load 7-14): the gap was the hooks' own CPU, paid cold (one call every few
hundred ms): the request hook ~0.3-0.5 ms of thread CPU against ~0.1 ms in hook_cost's hot
loop; no other thread ran on the first event's path (strace: no futex between the
request's read and its forwarding, nor at the first chunk).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import run
from benchmarks.load import MESSAGES_BODY

# Hooks timed in each process; the stream tap is wrapped when responseheaders sets one.
TRACER = """
import functools, os, sys, time
FD = os.open(os.environ["FIRST_EVENT_TRACE"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

def note(flow, event):
    tag = flow.request.headers.get("x-bench-id", "-")
    line = f"{tag} {event} {time.monotonic():.7f} {time.thread_time():.7f}\\n"
    os.write(FD, line.encode())

def traced(hook, name):
    @functools.wraps(hook)
    def wrapper(self, flow):
        note(flow, name + "_in")
        result = hook(self, flow)
        note(flow, name + "_out")
        tap = flow.response.stream if flow.response is not None else None
        if name == "responseheaders" and callable(tap):
            first = [True]
            def first_chunk(chunk):
                if first[0]:
                    note(flow, "chunk_in")
                out = tap(chunk)
                if first[0]:
                    note(flow, "chunk_out")
                    first[0] = False
                return out
            flow.response.stream = first_chunk
        return result
    return wrapper

def trace(cls, names):
    for name in names:
        setattr(cls, name, traced(getattr(cls, name), name))
"""

DEVMETER = (
    TRACER
    + """
from devmeter.proxy.meter import Meter
trace(Meter, ("requestheaders", "request", "responseheaders"))
from devmeter.cli import main
sys.exit(main(sys.argv[1:]))
"""
)

BARE = (
    TRACER
    + """
sys.path.insert(0, os.environ["FIRST_EVENT_BENCHMARKS"])
import bare_proxy
bare_proxy.MapHosts.request = lambda self, flow: None  # a hook to time, as devmeter's
trace(bare_proxy.MapHosts, ("requestheaders", "request", "responseheaders"))
sys.argv = ["bare_proxy.py", *sys.argv[1:]]
bare_proxy.main()
"""
)

HOOKS = ("requestheaders", "request", "responseheaders", "chunk")
TARGETS = ("bare", "devmeter")


def threads(pid: int) -> dict[str, tuple[int, int]]:
    """Each thread's (CPU ns, run-queue wait ns) so far."""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            run_ns, wait_ns, _ = Path(task, "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        out[task.rsplit("/", 1)[1]] = (int(run_ns), int(wait_ns))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--gap-ms", type=float, default=50.0, help="upstream's event spacing")
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        help="first send N whole calls through each (as the latency phase does)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="devmeter-first-event-"))
    trace = work / "trace.txt"
    os.environ["FIRST_EVENT_TRACE"] = str(trace)
    os.environ["FIRST_EVENT_BENCHMARKS"] = str(run.HERE)
    launcher = work / "bare" / "bare_proxy.py"
    launcher.parent.mkdir()
    launcher.write_text(BARE)
    real_start_proxy = run.start_proxy
    run.HERE = launcher.parent  # start_bare runs HERE / bare_proxy.py: the traced one
    run.start_proxy = lambda home, upstream: real_start_proxy(
        home, upstream, launcher=(sys.executable, "-c", DEVMETER)
    )
    calls: dict[str, list[tuple[str, float, float]]] = {t: [] for t in TARGETS}
    with run.running(run.Settings(), {"stream"}) as bench:
        clients = {t: run.http_client(bench, t) for t in TARGETS}
        for client, url in clients.values():
            run._one_stream(client, url, "warmup", 0)
            for _ in range(args.burst):
                client.post(url, content=MESSAGES_BODY, headers=run.HEADERS).raise_for_status()
        pids = {t: bench.proxies[t].proc.pid for t in TARGETS}
        before = {t: threads(pid) for t, pid in pids.items()}
        for _ in range(args.rounds):
            for target, (client, url) in clients.items():
                tag = uuid.uuid4().hex
                start = time.monotonic()
                first, _ = run._one_stream(client, url, tag, args.gap_ms)
                calls[target].append((tag, start, start + first))
        after = {t: threads(pid) for t, pid in pids.items()}
        requests = {r["headers"].get("x-bench-id"): r for r in bench.upstream.requests()}
        sent: dict[int, float] = {}
        for event in bench.upstream.sent_events():
            sent[event["request_id"]] = min(event["time"], sent.get(event["request_id"], 1e18))
        for client, _ in clients.values():
            client.close()
    wall: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    for line in trace.read_text().splitlines():
        tag, event, at, thread_cpu = line.split()
        wall.setdefault(tag, {}).setdefault(event, float(at))
        cpu.setdefault(tag, {}).setdefault(event, float(thread_cpu))
    ttfe = {t: [(first - start) * 1e3 for _, start, first in calls[t]] for t in TARGETS}
    for target in TARGETS:
        points: dict[str, list[float]] = {}
        for tag, start, first in calls[target]:
            request = requests[tag]
            marks = {**wall[tag], "up_read": request["time"], "up_sent": sent[request["id"]]}
            for name, at in {**marks, "first": first}.items():
                points.setdefault(name, []).append((at - start) * 1e3)
        print(f"{target}: ms from the client's send, median of {args.rounds}")
        for name, values in sorted(points.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"  {name:22s} {statistics.median(values):8.3f}")
        for hook in HOOKS:
            spent = [(c[f"{hook}_out"] - c[f"{hook}_in"]) * 1e3
                     for tag, _, _ in calls[target] if f"{hook}_in" in (c := cpu[tag])]  # fmt: skip
            if spent:
                print(f"  thread CPU in {hook:14s} {statistics.median(spent):8.3f} ms median")
        for tid, (run_ns, wait_ns) in sorted(after[target].items()):
            run0, wait0 = before[target].get(tid, (0, 0))
            print(f"  thread {tid}: CPU {(run_ns - run0) / 1e6:7.1f} ms, "
                  f"waited for a core {(wait_ns - wait0) / 1e6:7.1f} ms")  # fmt: skip
    gaps = [d - b for b, d in zip(ttfe["bare"], ttfe["devmeter"], strict=True)]
    print(f"first event, devmeter - bare, median of {len(gaps)} paired rounds: "
          f"{statistics.median(gaps):+.2f} ms (load {os.getloadavg()[0]:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
