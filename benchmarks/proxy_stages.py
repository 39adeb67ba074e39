"""Where a real `devmeter proxy`'s CPU per small call goes, next to bare mitmproxy's.

    uv run --extra test python -m benchmarks.proxy_stages [--seconds 10] [--slices 10]

Starts the fake upstream, bare mitmproxy (bare_proxy.py) and two devmeter proxies (one
plain, one with hook_cost's stage timers wrapped around its Meter inside the proxy
process), then drives each with the throughput phase's load (16 keep-alive clients) in
alternating slices. Prints, per call: each process's thread CPU split into the event
loop's thread and the others (the ledger writer, the secrets worker; from
/proc/PID/task/*/stat, Linux only), and the instrumented devmeter's exclusive CPU per
stage as the real proxy spends it. hook_cost measures the same stages in a tight loop,
where devmeter's code stays in the CPU's caches; in the proxy each stage costs more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.load import ClientPool
from benchmarks.run import BENCH_CONFIG, Proxy, start_bare
from tests.fake_upstream.process import FakeUpstreamProcess
from tests.proxy_harness import start_proxy

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Run in the proxy before devmeter's CLI: hook_cost's timers around the Meter's stages,
# its hooks and the response tap; per-call figures written at exit.
STAGE_TIMERS = r"""
import atexit, os, sys
sys.path.insert(0, os.getcwd())
from benchmarks.hook_cost import StageClock, instrument
from devmeter.proxy import meter, metering_stage
CLOCK, CALLS = StageClock(), [0]
_init = meter.Meter.__init__
def __init__(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    instrument(self, CLOCK)
meter.Meter.__init__ = __init__
for name in ("requestheaders", "request", "responseheaders", "response", "error"):
    setattr(meter.Meter, name, CLOCK.wrap(f"hook: {name} (rest)", getattr(meter.Meter, name)))
_tap = metering_stage._tap
def tap(*args, **kwargs):
    CALLS[0] += 1
    return CLOCK.wrap("response parse (stream tap)", _tap(*args, **kwargs))
metering_stage._tap = tap
def dump():
    n = max(CALLS[0], 1)
    rows = sorted(CLOCK.ns.items(), key=lambda kv: -kv[1])
    lines = [f"  {label:40} {ns / n / 1000:7.1f} us" for label, ns in rows]
    lines.append(f"  {'total (with the timers)':40} {sum(CLOCK.ns.values()) / n / 1000:7.1f} us")
    open(os.path.join(os.environ["DEVMETER_HOME"], "stages.txt"), "w").write("\n".join(lines))
atexit.register(dump)
from devmeter.entry import main
sys.exit(main(sys.argv[1:]))
"""


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (user + system)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def start(name: str, home: Path, upstream: str) -> Proxy:
    if name == "bare":
        return start_bare(home, upstream)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(BENCH_CONFIG)
    launcher = (sys.executable, "-c", STAGE_TIMERS) if name == "devmeter-timed" else None
    running = start_proxy(home, upstream, launcher=launcher)
    return Proxy(name, running.proc, running.host, running.port, running.ca_cert, running)


async def measure(proxies: dict[str, Proxy], seconds: float, slices: int) -> dict[str, Any]:
    pools = {name: ClientPool(proxy.target(), 16) for name, proxy in proxies.items()}
    totals = {name: {"calls": 0, "loop": 0.0, "others": 0.0} for name in proxies}
    try:
        for pool in pools.values():
            await pool.open()
            await pool.run(0.5)  # warm-up
        names = list(proxies)
        for i in range(slices):
            for name in names if i % 2 == 0 else names[::-1]:
                pid = proxies[name].proc.pid
                before = thread_cpu(pid)
                result = await pools[name].run(seconds / slices)
                after = thread_cpu(pid)
                totals[name]["calls"] += result.calls
                for tid, cpu in after.items():
                    key = "loop" if tid == pid else "others"
                    totals[name][key] += cpu - before.get(tid, 0.0)
    finally:
        for pool in pools.values():
            await pool.close()
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load seconds per proxy")
    parser.add_argument("--slices", type=int, default=10)
    args = parser.parse_args(argv)
    upstream = FakeUpstreamProcess().start()
    proxies: dict[str, Proxy] = {}
    with tempfile.TemporaryDirectory(prefix="devmeter-proxy-stages-") as tmp:
        try:
            for name in ("bare", "devmeter", "devmeter-timed"):
                proxies[name] = start(name, Path(tmp) / name, upstream.url)
            totals = asyncio.run(measure(proxies, args.seconds, args.slices))
        finally:
            for proxy in proxies.values():
                proxy.stop()
            upstream.stop()
        print("thread CPU per call under load (us): event loop | other threads | total")
        for name, t in totals.items():
            calls = max(int(t["calls"]), 1)
            loop, others = t["loop"] / calls * 1e6, t["others"] / calls * 1e6
            print(
                f"  {name:16} {loop:7.0f} | {others:5.0f} | {loop + others:7.0f}  ({calls} calls)"
            )
        stages = Path(tmp) / "devmeter-timed" / "stages.txt"
        if stages.exists():
            print("devmeter-timed: exclusive CPU per call by stage, in the real proxy:")
            print(stages.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
