"""Ledger figures: rows/s through `LedgerWriter`, and `devmeter report` over a big ledger."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from devmeter.ledger import INSERT_CALL, LedgerWriter, call_row, connect
from devmeter.paths import paths
from devmeter.usage import Attribution, Call, Usage

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400.0


def sample_call(i: int, now: float) -> Call:
    return Call(
        ts=now - (i % 5000),
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-5-5",
        model="claude-opus-5-5",
        attribution=Attribution(
            tool="claude-code",
            session=f"s{i // 50}",
            repo="/src/app",
            branch="main",
            repo_source="claude-env",
            pid=4242,
        ),
        usage=Usage(
            input_tokens=1200,
            cache_read_tokens=3000,
            cache_write_tokens=500,
            cache_write_1h_tokens=200,
            output_tokens=345,
            reasoning_tokens=120,
        ),
        cost_usd=Decimal("0.0154"),
        price_source="genai-prices",
        status=200,
        duration_ms=900,
    )


def writer_rate(ledger: Path, rows: int) -> dict[str, float]:
    """Rows/s from the first `add_call` to the last commit (Call objects built beforehand)."""
    now = time.time()
    calls = [sample_call(i, now) for i in range(rows)]
    writer = LedgerWriter(ledger)
    start = time.perf_counter()
    for call in calls:
        writer.add_call(call)
    enqueued = time.perf_counter() - start
    if not writer.flush(timeout=600):
        raise RuntimeError("LedgerWriter did not flush within 600 s")
    seconds = time.perf_counter() - start
    writer.close()
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "add_call_us": enqueued / rows * 1e6,
    }


def synthetic_rows(count: int, days: int = 90, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """`count` realistic call rows over `days` days: ~50 calls a session, a few repos,
    tools and models, one in fifty unpriced, one in twenty estimated."""
    rng = random.Random(seed)
    end = time.time()
    start = end - days * DAY
    step = (end - start) / count
    models = [
        ("anthropic", "anthropic.messages", "claude-opus-5-5", 15_400_000_000),
        ("anthropic", "anthropic.messages", "claude-sonnet-4-5", 3_100_000_000),
        ("openai", "openai.responses", "gpt-5", 5_325_000_000),
        ("google", "gemini.generate", "gemini-2.5-pro", 5_325_000_000),
    ]
    tools = ["claude-code", "codex", "gemini-cli", "anthropic-sdk-python"]
    repos = [f"/home/dev/src/project-{n}" for n in range(12)]
    base = call_row(sample_call(0, end))
    columns = len(base)
    for i in range(count):
        provider, endpoint, model, pusd = models[i % 4 if i % 7 else 0]
        row = list(base)
        row[0] = start + i * step
        row[1] = tools[(i // 50) % 4]
        row[2], row[3] = provider, endpoint
        row[5] = row[6] = model
        row[7] = f"session-{i // 50:07d}"
        row[8] = repos[(i // 50) % 12]
        row[9] = "main" if i % 3 else "feature"
        row[12] = rng.randrange(10, 20_000)
        row[16] = rng.randrange(1, 2_000)
        row[20] = None if i % 50 == 0 else pusd + rng.randrange(0, 1_000_000_000)
        row[22] = int(i % 20 == 0)
        assert len(row) == columns
        yield tuple(row)


def build_ledger(home: Path, rows: int) -> dict[str, float]:
    ledger = paths({"DEVMETER_HOME": str(home)}).ledger
    ledger.unlink(missing_ok=True)
    conn = connect(ledger)
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(INSERT_CALL, synthetic_rows(rows))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"rows": rows, "seconds": time.perf_counter() - start}


def time_command(args: list[str], home: Path, repeat: int = 3) -> dict[str, float]:
    """Wall time of a CLI command in a fresh interpreter (what a user waits for), best and
    median of `repeat` runs after one warm-up run (so the OS file cache is warm)."""
    env = dict(os.environ, DEVMETER_HOME=str(home))
    times = []
    for attempt in range(repeat + 1):
        start = time.perf_counter()
        done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, timeout=300)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{args} failed: {done.stderr.decode(errors='replace')[-2000:]}")
        if attempt:
            times.append(elapsed)
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "output_lines": done.stdout.count(b"\n"),
    }


def report_times(home: Path, repeat: int = 3) -> dict[str, dict[str, float]]:
    python = sys.executable
    results = {
        "startup": time_command([python, "-c", "import devmeter.cli"], home, repeat),
    }
    for by in ("session", "day"):
        results[by] = time_command([python, "-m", "devmeter", "report", "--by", by], home, repeat)
    return results
