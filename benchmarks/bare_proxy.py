"""Bare mitmproxy for the benchmarks: devmeter's proxy minus devmeter.

    python benchmarks/bare_proxy.py --confdir DIR --state-file F --upstream URL

The same mitmproxy version, started the way `devmeter proxy` starts it (a `DumpMaster`
without the terminal log and the flow dumper, `allow_hosts` anchored on the same host
list, `connection_strategy=lazy`, loopback, port 0), with one tiny addon that maps every
provider host to the upstream URL exactly like the Meter does, and streams their responses
(`flow.response.stream = True`, as the Meter's tap does). No metering, attribution,
routing or ledger: what is left is the cost of mitmproxy itself. Writes
``{"host", "port", "pid"}`` to the state file once it listens.

(`mitmdump -s map.py` would also load its termlog and dumper addons, which `devmeter proxy`
does not, and make the bare figures slower than what devmeter really builds on.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
from pathlib import Path
from urllib.parse import urlsplit

from mitmproxy import http, options
from mitmproxy.tools.dump import DumpMaster

from devmeter.providers import INTERCEPT_HOSTS


class MapHosts:
    """Send every intercepted provider host to one plain-HTTP upstream (as the Meter does)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.hosts = frozenset(INTERCEPT_HOSTS)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # The same hook the Meter maps in: where the mapping happens changes what
        # mitmproxy does with the upstream connection, so the baseline must match.
        if flow.request.pretty_host.lower() not in self.hosts:
            return
        original_host = flow.request.host_header
        flow.metadata["mapped"] = True
        flow.request.scheme = self.scheme
        flow.request.host = self.host
        flow.request.port = self.port
        if original_host:
            flow.request.headers["X-Forwarded-Host"] = original_host

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Stream every intercepted response as devmeter does (its tap streams them all);
        # otherwise mitmproxy holds an SSE stream back until it ends.
        if flow.response is not None and flow.metadata.get("mapped"):
            flow.response.stream = True


async def serve(confdir: Path, state_file: Path, upstream: str) -> None:
    confdir.mkdir(parents=True, exist_ok=True)
    alternation = "|".join(re.escape(h) for h in sorted(INTERCEPT_HOSTS))
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
    master.options.update(
        listen_host="127.0.0.1",
        listen_port=0,
        confdir=str(confdir),
        allow_hosts=[rf"^({alternation})(:\d+)?$"],
        connection_strategy="lazy",
    )
    master.addons.add(MapHosts(upstream))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    run = asyncio.ensure_future(master.run())
    proxyserver = master.addons.get("proxyserver")
    for _ in range(1000):
        if run.done():
            run.result()
            raise SystemExit("bare proxy stopped before it listened")
        addresses = [a for server in proxyserver.servers for a in server.listen_addrs]
        if addresses:
            break
        await asyncio.sleep(0.01)
    else:
        raise SystemExit("bare proxy did not listen within 10 s")
    host, port = addresses[0][:2]
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"host": host, "port": port, "pid": os.getpid()}))
    tmp.replace(state_file)
    await run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confdir", type=Path, required=True, help="mitmproxy's CA directory")
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    args = parser.parse_args()
    asyncio.run(serve(args.confdir, args.state_file, args.upstream))


if __name__ == "__main__":
    main()
