"""Dashboard pages over a big ledger: how long each takes to serve, in milliseconds.

    uv run --extra test python -m benchmarks.dashboard_bench [--rows 1000000] [--repeat 5]

Builds a synthetic ledger (`ledger_bench.synthetic_rows`: 90 days, ~50 calls a session,
12 repos, 4 tools and models), serves it with the real `Dashboard` on 127.0.0.1 in this
process, and times whole HTTP round trips of each page (after one warm-up request) from
a client on the same machine. The issue's target: every page under 300 ms at 1M calls.
Figures go to stdout as JSON, with the machine's load for context.

Where the time went before 2026-12-07's rollups (1M calls, warm, load ~5): a 30-day
page's one pass over the quarter-hour rollup (a row per session, branch and model:
~70 000 rows for 30 days) ~130 ms, its top sessions ~90 ms, and the today view's live
sessions ~160 ms (the window's session ids came from a scan of the whole session index).
Now: period pages read the local-day rollup (`rollup_day`, a few rows a day; ~3 ms),
top sessions `rollup_session`, the savings a partial index of routed calls, and live
sessions are picked before their calls are read (~30 ms). What is left on a 30-day page
is mostly its top sessions (~50 ms) and rendering. See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

from benchmarks.ledger_bench import build_ledger
from devmeter.config import Config
from devmeter.dashboard.server import Dashboard
from devmeter.ledger import connect_readonly
from devmeter.paths import paths

TARGET_MS = 300.0


def pages(session: str) -> list[str]:
    today = date.today()
    first, last = today - timedelta(days=60), today - timedelta(days=31)
    return [
        "/",
        "/api/today",
        "/?fragment=1",
        "/period?p=7d&by=repo",
        "/period?p=30d&by=repo",
        "/period?p=30d&by=model",
        "/period?p=30d&by=tool",
        f"/period?p=custom&from={first}&to={last}&by=repo",
        f"/session?id={session}",
    ]


def time_pages(home: Path, repeat: int) -> dict[str, dict[str, float]]:
    where = paths({"DEVMETER_HOME": str(home)})
    conn = connect_readonly(where.ledger)
    assert conn is not None
    (session,) = conn.execute("SELECT session FROM calls ORDER BY ts DESC LIMIT 1").fetchone()
    conn.close()
    server = Dashboard(where, Config())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cookie = {"Cookie": f"{server.cookie_name}={server.token}"}
    results = {}
    try:
        client = http.client.HTTPConnection(*server.server_address[:2], timeout=120)
        headers = {"Host": server.origin.removeprefix("http://"), **cookie}
        for path in pages(session):
            times = []
            for attempt in range(repeat + 1):
                start = time.perf_counter()
                client.request("GET", path, headers=headers)
                response = client.getresponse()
                body = response.read()
                elapsed = (time.perf_counter() - start) * 1000
                if response.status != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status}: {body[:300]!r}")
                if attempt:
                    times.append(elapsed)
            results[path] = {
                "best_ms": round(min(times), 1),
                "median_ms": round(statistics.median(times), 1),
                "bytes": len(body),
            }
    finally:
        server.shutdown()
        server.server_close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="devmeter-dashboard-bench-") as tmp:
        home = Path(tmp)
        built = build_ledger(home, args.rows)
        timed = time_pages(home, args.repeat)
    slowest = max(t["median_ms"] for t in timed.values())
    print(
        json.dumps(
            {
                "rows": args.rows,
                "build_seconds": round(built["seconds"], 1),
                "load_average": os.getloadavg(),
                "pages": timed,
                "slowest_median_ms": slowest,
                "target_ms": TARGET_MS,
                "within_target": slowest < TARGET_MS,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
