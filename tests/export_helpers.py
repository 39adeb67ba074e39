"""Calls through a real proxy, and a real Prometheus server, for the export tests."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.clients_env import report
from tests.proxy_harness import RunningProxy

PROMPT_CANARY = "PROMPT-CANARY-7f3a91"
KEY_CANARY = "sk-ant-CANARY-KEY-5b2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client(proxy: RunningProxy) -> httpx2.Client:
    trust = ssl.create_default_context(cafile=str(proxy.bundle))
    return httpx2.Client(proxy=proxy.url, verify=trust, timeout=30)


def send_calls(proxy: RunningProxy, rounds: int = 1, error: bool = True) -> int:
    """Anthropic, OpenAI and Gemini calls (and a 500) through the proxy; how many."""
    sent = 0
    with client(proxy) as c:
        for _ in range(rounds):
            hello = [{"role": "user", "content": f"{PROMPT_CANARY} say hi"}]
            c.post(
                "https://api.anthropic.com/v1/messages",
                headers={"x-api-key": KEY_CANARY, "anthropic-version": "2023-06-01"},
                json={"model": "claude-opus-4-8", "max_tokens": 16, "messages": hello},
            ).raise_for_status()
            c.post(
                "https://api.openai.com/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY_CANARY}"},
                json={"model": "gpt-4o-mini", "messages": hello},
            ).raise_for_status()
            c.post(
                "https://generativelanguage.googleapis.com/v1beta/models/"
                f"gemini-2.5-flash:generateContent?key={KEY_CANARY}",
                json={"contents": [{"parts": [{"text": PROMPT_CANARY}]}]},
            ).raise_for_status()
            sent += 3
            if error:
                answer = c.post(
                    "https://api.anthropic.com/v1/messages",
                    headers={
                        "x-api-key": KEY_CANARY,
                        "anthropic-version": "2023-06-01",
                        "x-fake-status": "500",
                    },  # fmt: skip
                    json={"model": "claude-opus-4-8", "max_tokens": 16, "messages": hello},
                )
                assert answer.status_code == 500
                sent += 1
    return sent


def ledger_totals(proxy: RunningProxy) -> dict[str, Decimal]:
    """Cost and tokens over the whole ledger, as `devmeter report --json` gives them."""
    rows = json.loads(report(proxy, "--by", "provider", "--json"))
    totals = {"cost": sum((Decimal(repr(r["cost_usd"])) for r in rows), Decimal(0))}
    for kind in ("input", "cache_read", "cache_write", "output"):
        totals[kind] = Decimal(sum(r[f"{kind}_tokens"] for r in rows))
    totals["requests"] = Decimal(sum(r["requests"] for r in rows))
    return totals


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, promql: str) -> Decimal | None:
        result = self.query(promql)
        return Decimal(result[0]["value"][1]) if result else None


@contextmanager
def prometheus(tmp: Path, target: str, interval: str = "1s") -> Iterator[Prometheus]:
    """Debian's `prometheus` on loopback, scraping `target` (HOST:PORT) every `interval`."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (scripts/test.sh installs it)")
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        "  - job_name: devmeter\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    log = tmp / "prometheus.log"
    for _ in range(5):  # a port picked free can be taken before prometheus binds it
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        try:
            wait_for("prometheus to answer", lambda s=server: _ready(s), timeout=30)
        except AssertionError:
            proc.kill()
            proc.wait(5)
            continue
        try:
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return
    raise AssertionError(f"prometheus did not start:\n{log.read_text(errors='replace')}")


def _ready(server: Prometheus) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"prometheus exited:\n{server.log.read_text(errors='replace')}")
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
