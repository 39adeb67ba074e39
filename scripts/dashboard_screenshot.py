"""Take the README's dashboard screenshots again: assets/dashboard-today.png and
assets/dashboard-session.png, from a demo ledger, in headless Chromium.

    uv run --extra test python scripts/dashboard_screenshot.py

The demo day: four repos, three tools, calls every few minutes from 08:00 to 18:00, made
up (no real spend). The time zone is chosen so that it is about 18:00 there now, so the
picture shows a whole working day whenever it is taken.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devmeter.ledger import write_calls  # noqa: E402
from devmeter.usage import Attribution, Call, Usage  # noqa: E402
from tests.headless_chromium import Chromium  # noqa: E402

SESSIONS = [
    ("claude-code", "/home/dev/src/acme-api", "feat/billing", "claude-opus-4-1", "3f2a9c1e-0b7d"),
    ("claude-code", "/home/dev/src/acme-web", "main", "claude-sonnet-4-5", "8c41d0aa-77e2"),
    ("codex", "/home/dev/src/infra", "main", "gpt-5", "019a7c2e-5d11"),
    ("gemini-cli", "/home/dev/src/docs", "main", "gemini-2.5-pro", "b7e9f3c0-2a64"),
]


def demo_calls(now: float) -> list[Call]:
    rng = random.Random(7)
    start = datetime.fromtimestamp(now).replace(hour=8, minute=0, second=0).timestamp()
    start = max(start, now - 14 * 3600)
    calls = []
    ts = start
    while ts < now - 30:
        tool, repo, branch, model, session = SESSIONS[rng.choice([0, 0, 0, 1, 1, 2, 3])]
        cost = Decimal(rng.randrange(20_000, 900_000)) / 1_000_000
        cache_write = rng.randrange(0, 4000)
        # The Opus session runs a routing rule in shadow mode: what Sonnet would have cost.
        shadow = session == SESSIONS[0][4] and rng.random() < 0.4
        calls.append(
            Call(
                ts=ts,
                provider="anthropic",
                endpoint="anthropic.messages",
                host="api.anthropic.com",
                requested_model=model,
                model=model,
                attribution=Attribution(
                    tool=tool, session=f"{session}-4a55-9e61-1c2d3e4f5a6b", repo=repo, branch=branch
                ),
                usage=Usage(
                    input_tokens=rng.randrange(100, 5000),
                    cache_read_tokens=rng.randrange(0, 80_000),
                    cache_write_tokens=cache_write,
                    cache_write_1h_tokens=cache_write // 3 if rng.random() < 0.3 else 0,
                    output_tokens=rng.randrange(50, 3000),
                    reasoning_tokens=rng.randrange(0, 1500) if tool == "codex" else 0,
                ),
                cost_usd=cost,
                price_source="demo",
                status=200,
                complete=True,
                duration_ms=rng.randrange(800, 20_000),
                routing="shadow" if shadow else None,
                route_rule="opus-to-sonnet" if shadow else None,
                route_target="claude-sonnet-4-5" if shadow else None,
                alt_cost_usd=cost / 5 if shadow else None,
                billing="subscription" if tool == "claude-code" else "api",
            )  # fmt: skip
        )
        ts += rng.randrange(60, 420)
    return calls


def evening_time_zone(now: float) -> str:
    """A fixed-offset zone where it is 18:xx now (POSIX `Etc/GMT-N` means UTC+N)."""
    offset = (18 - time.gmtime(now).tm_hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


def main() -> None:
    os.environ["TZ"] = evening_time_zone(time.time())
    time.tzset()
    with tempfile.TemporaryDirectory(prefix="devmeter-demo-") as home:
        write_calls(Path(home) / "ledger.sqlite", demo_calls(time.time()))
        env = {"DEVMETER_HOME": home, "PATH": "/usr/bin:/bin", "TZ": os.environ["TZ"]}
        proc = subprocess.Popen(
            [sys.executable, "-m", "devmeter", "dashboard", "--no-open"],
            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        browser = Chromium(width=1280, height=1000)
        try:
            browser.open(url, "document.querySelector('[data-figure=today-total]')")
            browser.screenshot(REPO / "assets" / "dashboard-today.png")
            session = f"{SESSIONS[0][4]}-4a55-9e61-1c2d3e4f5a6b"
            browser.open(url.replace("/?", f"/session?id={session}&"),
                         "document.querySelector('[data-figure=session-total]')")  # fmt: skip
            browser.screenshot(REPO / "assets" / "dashboard-session.png")
        finally:
            browser.close()
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
