"""``python -m tests.fake_upstream --port 0 --port-file F``: serve until SIGINT / SIGTERM.

Prints ``fake upstream listening on http://127.0.0.1:PORT`` and writes the port number to
``--port-file`` (atomically, so a poller never reads a half-written file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from .server import FakeUpstream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument(
        "--no-websocket",
        action="store_true",
        help="refuse WebSocket upgrades (clients fall back to HTTPS POST)",
    )
    parser.add_argument(
        "--defaults", default="{}", help="server-wide directives as JSON, e.g. '{\"delay_ms\": 20}'"
    )
    parser.add_argument("--usage", help="default usage as JSON (merged into --defaults)")
    args = parser.parse_args(argv)

    defaults = json.loads(args.defaults)
    if args.no_websocket:
        defaults["websocket"] = False
    if args.usage:
        defaults["usage"] = {**defaults.get("usage", {}), **json.loads(args.usage)}
    server = FakeUpstream(args.host, args.port, **defaults)
    asyncio.run(_serve(server, args.port_file))
    return 0


async def _serve(server: FakeUpstream, port_file: Path | None) -> None:
    await server.start_async()
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{server.port}\n")
        os.replace(tmp, port_file)
    print(f"fake upstream listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
