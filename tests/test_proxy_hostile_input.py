"""Hostile input that reaches the terminal or the file system, through a real proxy.

- Model names with escape sequences, from the upstream's response and from Gemini's URL
  path (`%1B...`): stored exactly, printed by `report` and `sessions` only escaped.
- `X-Devmeter-Project` naming a directory whose `.git/HEAD` is a FIFO: opening it for
  reading used to wait for a writer on the proxy's event loop, stalling every client.
- `"paused": "false"` (a string) in control.json: it used to pause the proxy.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest

from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy

pytestmark = pytest.mark.proxy

ESCAPES = "\x1b[2J\x1b]0;pwned\x07"
BODY = {
    "model": "claude-opus-4-1",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.reset()
    proxy.skip_existing()


def client(proxy: RunningProxy) -> httpx2.Client:
    trust = ssl.create_default_context(cafile=str(proxy.bundle))
    return httpx2.Client(proxy=proxy.url, verify=trust, timeout=15)


def devmeter(proxy: RunningProxy, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devmeter", *args],
        env=proxy.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_escape_sequences_in_model_names_are_shown_not_obeyed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.set_next(model=f"claude{ESCAPES}")  # the response's model
    with client(proxy) as http:
        r = http.post(
            "https://api.anthropic.com/v1/messages",
            json=BODY,
            headers={"x-api-key": "sk-ant-test", "x-devmeter-session": "hostile-names"},
        )
        assert r.status_code == 200
        r = http.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini%1B%5B2J%1B%5B31m%07:"
            "generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "test", "x-devmeter-session": "hostile-names"},
        )
        assert r.status_code == 200
    anthropic_row, gemini_row = proxy.new_calls(2)
    assert anthropic_row["model"] == f"claude{ESCAPES}"  # the ledger keeps what was sent
    assert "\x1b" in (gemini_row["model"] or gemini_row["requested_model"])

    for args in (("report", "--by", "request"), ("report", "--by", "model"), ("sessions",)):
        done = devmeter(proxy, *args)
        assert done.returncode == 0, done.stderr
        assert all(ch.isprintable() or ch == "\n" for ch in done.stdout), args
        assert "claude\\x1b[2J\\x1b]0;pwned\\x07" in done.stdout, args
        assert "gemini\\x1b[2J" in done.stdout, args
    rows = json.loads(devmeter(proxy, "report", "--by", "request", "--json").stdout)
    assert f"claude{ESCAPES}" in {row["model"] for row in rows}


def test_a_fifo_head_does_not_stall_the_proxy(proxy: RunningProxy, tmp_path: Path) -> None:
    project = tmp_path / "fifo-project"
    (project / ".git").mkdir(parents=True)
    os.mkfifo(project / ".git" / "HEAD")
    answers: dict[str, int] = {}

    def call(name: str, headers: dict[str, str]) -> None:
        with client(proxy) as http:
            r = http.post(
                "https://api.anthropic.com/v1/messages",
                json=BODY,
                headers={"x-api-key": "sk-ant-test", **headers},
            )
            answers[name] = r.status_code

    threads = [
        threading.Thread(target=call, args=("fifo", {"x-devmeter-project": str(project)})),
        threading.Thread(target=call, args=("normal", {})),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Before the fix neither came back: the event loop sat in open() on the FIFO.
    assert answers == {"fifo": 200, "normal": 200}
    rows = proxy.new_calls(2)
    fifo_row = next(row for row in rows if row["repo"] == str(project.resolve()))
    assert fifo_row["branch"] is None  # HEAD is no file to read: no branch, no wait


def test_paused_as_a_string_does_not_pause_the_proxy(proxy: RunningProxy) -> None:
    control = proxy.home / "control.json"
    control.write_text('{"paused": "false"}')
    try:
        deadline = time.monotonic() + 20
        with client(proxy) as http:
            # The proxy looks at control.json as requests come (at most twice a second).
            while "[paused]: must be true or false" not in proxy.log.read_text(errors="replace"):
                assert time.monotonic() < deadline, "the proxy never read control.json"
                r = http.post(
                    "https://api.anthropic.com/v1/messages",
                    json=BODY,
                    headers={"x-api-key": "sk-ant-test"},
                )
                assert r.status_code == 200, r.text  # not paused
                time.sleep(0.1)
            r = http.post(
                "https://api.anthropic.com/v1/messages",
                json=BODY,
                headers={"x-api-key": "sk-ant-test"},
            )
            assert r.status_code == 200, r.text  # read, refused, and still not paused
    finally:
        control.unlink()
