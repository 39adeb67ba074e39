"""Where devmeter's extra proxy CPU per 1 MB request goes, against bare mitmproxy.

Starts the fake upstream, a bare mitmproxy (bare_proxy.py), a `devmeter proxy` with the
benchmark's config and, with `--variant`, devmeter processes patched at start to isolate
one cost each (an experiment, not a configuration):

- `parse-twice`: every request body parsed a second time (the copy thrown away): the
  variant's extra CPU over devmeter's is what one parse of the body costs in the proxy
  process (orjson, the objects it allocates, freeing them, the cyclic GC they trigger);
- `gc-off`: the cyclic GC disabled: devmeter's CPU minus this variant's is what the GC
  costs;
- `plain-parse`: every request body parsed whole with orjson, as before the lazy parse
  (providers/lazy_doc.py), whose saving is this variant's CPU minus devmeter's. (With the
  lazy parse, `parse-twice` doubles only the plain parses that remain.)
- `no-prefix`: the prefix memory off (providers/lazy_prefix.py), every large body checked
  whole: this variant's CPU minus devmeter's is what the memory saves;
- `secrets-off`: no secret inspection: devmeter's CPU minus this variant's is what the
  warn-mode scan of the new turn costs, with its handoff to the scanning thread;
- `secrets-inline`: the warn scan on the event loop, no handoff (what the handoff costs);
- `signals-off`: no loop fingerprint nor human-turn check (guard.request_signals);
- `tap-off`: the answer streamed untapped, as bare streams it;
- `stages`: proxy_stages' stage timers inside the proxy (thread CPU per stage, printed
  at the end).

Each proxy's CPU is also split: the event loop's thread (/proc task stats) and the rest
(the secrets worker, the ledger writer).

Each gets `--calls` sequential calls of the 1 MB Claude Code conversation, one turn
longer each call (large_body.conversation_bodies; every proxy gets the same bodies in the
same order; `--same` re-sends the first body every call instead), or of the small
messages body with `--small`, on one keep-alive
connection per proxy, in turn, for `--rounds` rounds; printed: each process's CPU per call
(psutil), per round and the median of rounds. `--spy DIR`, `--perf DIR` and `--strace DIR`
record bare's and devmeter's processes meanwhile (py-spy folded stacks, `perf record -g`,
`strace -c`).

    uv run --python 3.11 --extra test python -m benchmarks.large_probe --rounds 5 \
        --variant parse-twice --variant gc-off
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from benchmarks.large_body import conversation_bodies
from benchmarks.load import MESSAGES_BODY, PROVIDER_HOST
from benchmarks.proxy_stages import STAGE_TIMERS, thread_cpu
from benchmarks.run import BENCH_CONFIG, HEADERS, Proxy, start_bare
from tests.fake_upstream.process import FakeUpstreamProcess
from tests.proxy_harness import start_proxy

MESSAGES_URL = f"https://{PROVIDER_HOST}/v1/messages"

# Run as `python -c CODE proxy --listen ...`: patch, then devmeter's own entry point.
_RUN = "import sys\nfrom devmeter.entry import main\nsys.argv[0] = 'devmeter'\nsys.exit(main())\n"
VARIANTS = {
    "parse-twice": (
        "from devmeter import fastjson\n"
        "_loads = fastjson.loads\n"
        "def loads(data):\n"
        "    _loads(data)\n"
        "    return _loads(data)\n"
        "fastjson.loads = loads\n"
    ),
    "gc-off": "import gc\ngc.disable()\n",
    # The whole body parsed with orjson, as before the lazy parse (providers/lazy_doc.py):
    # devmeter's CPU minus this variant's is what the lazy parse saves.
    "plain-parse": (
        "import devmeter.providers as _providers\n_providers.lazy_doc = lambda body: None\n"
        "from devmeter.providers.lazy_prefix import PrefixMemory\n"
        "PrefixMemory.lazy_doc = lambda self, body: None\n"
    ),
    # Every large body checked whole, as before the prefix memory (providers/lazy_prefix.py).
    "no-prefix": "import devmeter.providers.lazy_prefix as _prefix\n_prefix.AVAILABLE = False\n",
    # No secret inspection (as `[secrets] mode = "off"`): devmeter's CPU minus this
    # variant's is what the warn-mode scan and its worker handoff cost.
    "secrets-off": (
        "from devmeter.secrets import policy as _policy\n"
        "_policy.SecretsPolicy.strictest_possible = lambda self, repo: 'off'\n"
    ),
    # The warn-mode scan run inline, on the event loop, instead of handed to the worker:
    # devmeter's CPU minus this variant's is what the handoff alone costs.
    "secrets-inline": (
        "from devmeter.secrets import inspector as _inspector\n"
        "class _Inline:\n"
        "    def submit(self, fn, *args):\n"
        "        fn(*args)\n"
        "    def shutdown(self, wait=True):\n"
        "        pass\n"
        "_init = _inspector.SecretInspector.__init__\n"
        "def _init_inline(self, *args, **kwargs):\n"
        "    _init(self, *args, **kwargs)\n"
        "    self._worker.shutdown()\n"
        "    self._worker = _Inline()\n"
        "_inspector.SecretInspector.__init__ = _init_inline\n"
    ),
    # No loop fingerprint nor human-turn check (guard.request_signals): devmeter's CPU
    # minus this variant's is what the runaway signals of a call cost.
    "signals-off": (
        "from devmeter.proxy import guard_stage as _guard\n"
        "_guard.request_signals = lambda body, request_class, key=None: (None, None)\n"
    ),
    # No response tap (the answer streamed as bare streams it, unread).
    "tap-off": (
        "from devmeter.proxy import metering_stage as _ms\n"
        "def _untapped(self, flow, state):\n"
        "    flow.response.stream = True\n"
        "_ms.MeteringStage.responseheaders = _untapped\n"
    ),
}


def start_devmeter_variant(home: Path, upstream: str, name: str) -> Proxy:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(BENCH_CONFIG)
    # `stages`: proxy_stages' timers around each stage, as the real proxy spends it
    # (written to the variant's stages.txt at exit, printed at the end).
    code = STAGE_TIMERS if name == "stages" else VARIANTS.get(name, "") + _RUN
    running = start_proxy(home, upstream, launcher=(sys.executable, "-c", code))
    return Proxy(name, running.proc, running.host, running.port, running.ca_cert, running)


def record(tool: str, folder: Path, proxies: dict[str, Proxy]) -> list[subprocess.Popen[bytes]]:
    """Start `tool` recording bare's and devmeter's processes into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    started = []
    for name in ("bare", "devmeter"):
        pid, out = str(proxies[name].proc.pid), str(folder / name)
        command = {
            # --gil: only the thread holding the GIL, so a sample is CPU the process spent
            "py-spy": ["py-spy", "record", "--nonblocking", "--threads", "--gil", "-r", "1000",
                       "-f", "raw", "-o", f"{out}.txt", "-p", pid],
            "perf": ["perf", "record", "-F", "1999", "-g", "-o", f"{out}.data", "-p", pid],
            "strace": ["strace", "-c", "-f", "-o", f"{out}.txt", "-p", pid],
        }[tool]  # fmt: skip
        started.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="calls per proxy a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="the small messages body instead")
    parser.add_argument("--same", action="store_true", help="re-send one 1 MB body every call")
    parser.add_argument(
        "--variant", action="append", default=[], choices=sorted([*VARIANTS, "stages"])
    )
    parser.add_argument("--spy", type=Path, help="py-spy folded stacks into this folder")
    parser.add_argument("--perf", type=Path, help="`perf record -g` data into this folder")
    parser.add_argument("--strace", type=Path, help="`strace -c` counts into this folder")
    args = parser.parse_args()
    if args.small or args.same:
        bodies = [MESSAGES_BODY if args.small else conversation_bodies(1)[0]]
    else:  # a turn longer each call, from the warm-up on
        bodies = conversation_bodies(10 + args.rounds * args.calls)
    body = bodies[0]
    sequence = iter(bodies * (1 if len(bodies) > 1 else 10 + args.rounds * args.calls))
    upstream = FakeUpstreamProcess("--no-websocket").start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proxies: dict[str, Proxy] = {"bare": start_bare(work / "bare", upstream.url)}
        for name in ("devmeter", *args.variant):
            proxies[name] = start_devmeter_variant(work / name, upstream.url, name)
        clients = {
            n: httpx2.Client(proxy=p.url, verify=p.ssl_context(), timeout=30)
            for n, p in proxies.items()
        }
        recorders: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(10):
                sent = next(sequence)
                for client in clients.values():
                    client.post(MESSAGES_URL, content=sent, headers=HEADERS).raise_for_status()
            for tool, folder in (
                ("py-spy", args.spy),
                ("perf", args.perf),
                ("strace", args.strace),
            ):
                if folder is not None:
                    recorders += record(tool, folder, proxies)
            if recorders:
                time.sleep(1.5)  # attached before the first timed call
            per_call: dict[str, list[float]] = {n: [] for n in proxies}
            loop_ms: dict[str, list[float]] = {n: [] for n in proxies}  # the event loop's
            grows = f" growing to {len(bodies[-1]):,}" if len(bodies) > 1 else ""
            print(f"{len(body):,}-byte body{grows}: proxy CPU ms per call, {args.calls} a round")
            for r in range(args.rounds):
                before = {n: p.cpu_seconds() for n, p in proxies.items()}
                threads = {n: thread_cpu(p.proc.pid) for n, p in proxies.items()}
                for _ in range(args.calls):
                    sent = next(sequence)
                    for client in clients.values():
                        client.post(MESSAGES_URL, content=sent, headers=HEADERS).raise_for_status()
                    upstream.reset()
                for n, p in proxies.items():
                    per_call[n].append((p.cpu_seconds() - before[n]) / args.calls * 1e3)
                    pid = p.proc.pid
                    loop = thread_cpu(pid).get(pid, 0.0) - threads[n].get(pid, 0.0)
                    loop_ms[n].append(loop / args.calls * 1e3)
                print(
                    f"  round {r + 1}: "
                    + ", ".join(f"{n} {v[-1]:.2f}" for n, v in per_call.items())
                )
            medians = {n: statistics.median(v) for n, v in per_call.items()}
            print("  median: " + ", ".join(f"{n} {m:.2f}" for n, m in medians.items()))
            print(
                "  of which the event loop's thread, median: "
                + ", ".join(f"{n} {statistics.median(v):.2f}" for n, v in loop_ms.items())
            )
            for n in proxies:
                if n != "bare":
                    extra = [v - b for v, b in zip(per_call[n], per_call["bare"], strict=True)]
                    print(f"  {n} - bare, median of rounds: {statistics.median(extra):+.2f}")
            for n in args.variant:
                diff = [v - d for v, d in zip(per_call[n], per_call["devmeter"], strict=True)]
                print(f"  {n} - devmeter, median of rounds: {statistics.median(diff):+.2f}")
        finally:
            for recorder in recorders:
                recorder.send_signal(2)
                recorder.wait(60)
            for client in clients.values():
                client.close()
            for p in proxies.values():
                p.stop()
            upstream.stop()
            if "stages" in proxies:
                timers = work / "stages" / "stages.txt"
                if timers.exists():
                    print("stages (thread CPU per call, in the proxy, with the timers):")
                    print(timers.read_text())


if __name__ == "__main__":
    main()
