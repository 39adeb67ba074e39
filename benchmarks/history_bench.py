"""History import and statusline benchmark: a generated heavy Claude Code history.

    uv run --extra test python benchmarks/history_bench.py              # ~1-2 minutes
    uv run --extra test python benchmarks/history_bench.py --responses 150000   # heavy user
    uv run --extra test python benchmarks/history_bench.py --ccusage DIR  # + ccusage daily
    ... --bytecode   # Python caches bytecode, as on a user's install

Generates a Claude Code config folder: sessions of user turns and assistant responses,
each response written as Claude Code streams it (three lines, output growing), a resumed
session repeating earlier lines, and ~1.5 kB of text per line (so 100k responses are
~500 MB on disk). Then, each as a separate process, as a user would run them:

- `devmeter import claude-code` on an empty ledger (first import), `--rounds` times,
  each round interleaved with ccusage's report (in turns first), medians of both, in
  wall clock and in CPU (user + system);
- the same again with nothing new (the incremental re-scan);
- `ccusage daily --json --offline` on the same folder, when `--ccusage` names a folder
  where the npm package `ccusage` is installed (`npm install --prefix DIR ccusage@20.0.24`;
  20.0.26 has no published linux-x64 binary package),
  with the ratios and both totals;
- `python -m devmeter.statusline` (what `--install` writes) and `python -m devmeter
  statusline` fed a statusline JSON, against `python3 -c pass` (p95 of `--runs` starts
  each, interleaved), and `ccusage statusline` when present.

Ratios are what matter: the machine's speed varies, the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")
FILLER = "lorem ipsum dolor sit amet " * 50  # ~1.4 kB of "content" per line


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))  # as Claude Code writes its lines


def generate(root: Path, responses: int, per_session: int = 400, seed: int = 7) -> dict[str, int]:
    """A Claude Code config folder with `responses` API responses; what it holds."""
    rng = random.Random(seed)
    projects = root / "projects"
    start = datetime(2026, 10, 1, tzinfo=UTC)
    lines = sessions = 0
    made = 0
    first_session_lines: list[str] = []
    while made < responses:
        session = str(uuid.UUID(int=rng.getrandbits(128)))
        cwd = f"/home/dev/src/project-{sessions % 25}"
        folder = projects / cwd.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        out: list[str] = []
        when = start + timedelta(minutes=sessions * 37)
        for _ in range(min(per_session, responses - made)):
            made += 1
            when += timedelta(seconds=rng.randint(5, 90))
            stamp = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # as Claude Code writes it
            out.append(
                _compact(
                    {
                        "type": "user",
                        "sessionId": session,
                        "cwd": cwd,
                        "timestamp": stamp,
                        "message": {"role": "user", "content": FILLER},
                    }
                )
            )
            msg, req = f"msg_{made:024d}", f"req_{made:024d}"
            model = rng.choice(MODELS)
            usage = {
                "input_tokens": rng.randint(1, 5000),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": rng.randint(0, 150_000),
                "cache_creation": {
                    "ephemeral_5m_input_tokens": rng.randint(0, 3000),
                    "ephemeral_1h_input_tokens": 0,
                },
            }
            usage["cache_creation_input_tokens"] = usage["cache_creation"][
                "ephemeral_5m_input_tokens"
            ]
            final = rng.randint(20, 4000)
            for output in (1, final // 2, final):  # streamed: the last line has the final count
                out.append(
                    _compact(
                        {
                            "type": "assistant",
                            "sessionId": session,
                            "cwd": cwd,
                            "gitBranch": "main",
                            "timestamp": stamp,
                            "requestId": req,
                            "isSidechain": False,
                            "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
                            "message": {
                                "id": msg,
                                "model": model,
                                "role": "assistant",
                                "content": [{"type": "text", "text": FILLER}],
                                "usage": {**usage, "output_tokens": output},
                            },
                        }
                    )
                )
        (folder / f"{session}.jsonl").write_text("\n".join(out) + "\n")
        if not first_session_lines:
            first_session_lines = out[: len(out) // 2]
        lines += len(out)
        sessions += 1
    # A resumed session: a new file repeating half of the first one's lines.
    resumed = projects / "-home-dev-src-project-0" / "resumed.jsonl"
    resumed.write_text("\n".join(first_session_lines) + "\n")
    lines += len(first_session_lines)
    size = sum(p.stat().st_size for p in projects.rglob("*.jsonl"))
    return {"responses": made, "lines": lines, "files": sessions + 1, "bytes": size}


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    elapsed, _, out = timed_cpu(args, env)
    return elapsed, out


def timed_cpu(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall clock, CPU seconds (user + system, the process and its children) and stdout.
    On a shared machine the CPU is the steadier figure: wall clock waits for the others."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu, done.stdout


def fresh_ledger(home: Path) -> None:
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "price-memory.json"):
        (home / name).unlink(missing_ok=True)


def ledger_total(db: Path) -> tuple[int, float]:
    conn = sqlite3.connect(db)
    count, pusd = conn.execute("SELECT count(*), sum(cost_pusd) FROM calls").fetchone()
    conn.close()
    return count, (pusd or 0) / 1e12


def ledger_sum(db: Path, column: str) -> int:
    conn = sqlite3.connect(db)
    (total,) = conn.execute(f"SELECT sum({column}) FROM calls").fetchone()
    conn.close()
    return int(total or 0)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=40, help="statusline starts to time")
    parser.add_argument(
        "--rounds", type=int, default=3, help="first imports to time (each with ccusage)"
    )
    parser.add_argument("--ccusage", type=Path, help="a folder with npm's ccusage installed")
    parser.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    parser.add_argument(
        "--bytecode",
        action="store_true",
        help="let Python cache bytecode (in the work folder) as on a user's install, even "
        "where PYTHONDONTWRITEBYTECODE is set; warmed before timing",
    )
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="devmeter-history-"))
    claude_dir, home = work / "claude", work / "devmeter-home"
    t = time.perf_counter()
    shape = generate(claude_dir, args.responses)
    print(
        f"generated {shape['responses']} responses, {shape['lines']} lines, "
        f"{shape['files']} files, {shape['bytes'] / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s"
    )

    env = {**os.environ, "DEVMETER_HOME": str(home), "CLAUDE_CONFIG_DIR": str(claude_dir)}
    if args.bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        warm = (
            "import devmeter.cli, devmeter.entry, devmeter.statusline, "
            "devmeter.importers.claude_code; from devmeter import pricing; pricing.warm()"
        )
        subprocess.run([sys.executable, "-c", warm], env=env, check=True)
    devmeter = [sys.executable, "-m", "devmeter", "import", "claude-code", "--json"]
    ccusage = args.ccusage / "node_modules" / ".bin" / "ccusage" if args.ccusage else None
    ccusage_daily = [str(ccusage), "daily", "--json", "--offline"]
    # First imports (each on an empty ledger, no rates kept) and ccusage's report,
    # interleaved and in turns first, so both see the same load.
    firsts: list[tuple[float, float]] = []
    theirs_runs: list[tuple[float, float]] = []
    their_out = ""
    for round_ in range(args.rounds):
        order = ["devmeter", "ccusage"] if round_ % 2 == 0 else ["ccusage", "devmeter"]
        for who in order:
            if who == "devmeter":
                fresh_ledger(home)
                wall, cpu, _ = timed_cpu(devmeter, env)
                firsts.append((wall, cpu))
            elif ccusage is not None:
                wall, cpu, their_out = timed_cpu(ccusage_daily, env)
                theirs_runs.append((wall, cpu))
    first = statistics.median(w for w, _ in firsts)
    first_cpu = statistics.median(c for _, c in firsts)
    rescan, out = timed(devmeter, env)
    assert json.loads(out)["imported"] == 0
    rows, total = ledger_total(home / "ledger.sqlite")
    print(
        f"devmeter first import   {first:7.2f}s  ({rows} rows, ${total:,.2f}); CPU "
        f"{first_cpu:.2f}s; median of {args.rounds}: "
        + ", ".join(f"{w:.2f}s/{c:.2f}s" for w, c in firsts)
        + " (wall/CPU)"
    )
    print(f"devmeter re-scan        {rescan:7.2f}s  (nothing new)")
    # In process, as the tray runs it every few minutes: no interpreter start.
    from devmeter.importers.claude_code import import_claude_code

    started = time.perf_counter()
    assert import_claude_code(home / "ledger.sqlite", claude_dir).imported == 0
    in_process = time.perf_counter() - started
    print(f"  re-scan in process    {in_process:7.3f}s  (the tray's background import)")

    if ccusage is not None:
        their_time = statistics.median(w for w, _ in theirs_runs)
        their_cpu = statistics.median(c for _, c in theirs_runs)
        theirs = json.loads(their_out)
        their_total = theirs.get("totals", {}).get("totalCost")
        print(
            f"ccusage daily           {their_time:7.2f}s  (${their_total:,.2f}); CPU "
            f"{their_cpu:.2f}s; " + ", ".join(f"{w:.2f}s/{c:.2f}s" for w, c in theirs_runs)
        )
        print(
            f"  first import / ccusage {first / their_time:5.2f}x   (target <= 1); by round: "
            + ", ".join(f"{a[0] / b[0]:.2f}x" for a, b in zip(firsts, theirs_runs, strict=True))
        )
        print(f"  the same in CPU        {first_cpu / their_cpu:5.2f}x")
        print(f"  re-scan / ccusage      {rescan / their_time:5.2f}x   (target <= 0.1)")
        print(f"  in-process / ccusage   {in_process / their_time:5.2f}x")
        print(
            f"  input tokens: ccusage {theirs['totals']['inputTokens']:,}, devmeter "
            f"{ledger_sum(home / 'ledger.sqlite', 'input_tokens'):,}; cache reads: ccusage "
            f"{theirs['totals']['cacheReadTokens']:,}, devmeter "
            f"{ledger_sum(home / 'ledger.sqlite', 'cache_read_tokens'):,}"
        )
        print(
            f"  output tokens: ccusage {theirs['totals']['outputTokens']:,}, devmeter "
            f"{ledger_sum(home / 'ledger.sqlite', 'output_tokens'):,}"
        )

    hook = _compact(
        {
            "session_id": "not-a-session",
            "cwd": str(work),
            "model": {"id": "claude-sonnet-4-5"},
            "cost": {"total_cost_usd": 1},
        }
    )
    ours, command, bare, theirs_sl = [], [], [], []
    for _ in range(args.runs):
        for target, sink in (
            ([sys.executable, "-m", "devmeter.statusline"], ours),  # what --install writes
            ([sys.executable, "-m", "devmeter", "statusline"], command),  # the command
            ([sys.executable, "-c", "pass"], bare),  # the same interpreter, bare
        ):
            started = time.perf_counter()
            subprocess.run(target, input=hook, env=env, capture_output=True, text=True, check=True)
            sink.append(time.perf_counter() - started)
    print(
        f"statusline p95 {p95(ours) * 1000:6.1f} ms; python -c pass p95 "
        f"{p95(bare) * 1000:6.1f} ms: {p95(ours) / p95(bare):.2f}x (target <= 3); medians "
        f"{statistics.median(ours) * 1000:.1f} / {statistics.median(bare) * 1000:.1f} ms: "
        f"{statistics.median(ours) / statistics.median(bare):.2f}x"
    )
    print(
        f"  `devmeter statusline` p95 {p95(command) * 1000:6.1f} ms: "
        f"{p95(command) / p95(bare):.2f}x"
    )
    if ccusage is not None:
        for _ in range(min(args.runs, 10)):
            started = time.perf_counter()
            subprocess.run(
                [str(ccusage), "statusline", "--offline"],
                input=hook,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            theirs_sl.append(time.perf_counter() - started)
        print(f"ccusage statusline median {statistics.median(theirs_sl) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
