"""A growing conversation through a real `devmeter proxy`, large enough to be read lazily
and checked from where each call differs from the last (providers/lazy_prefix.py): the
anthropic SDK's calls get the same ledger rows as through a proxy that checks every body
whole."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import pytest

from benchmarks.large_body import conversation_bodies
from devmeter.providers import Endpoint, parse_request_doc
from devmeter.providers.lazy_doc import LAZY_FROM
from tests.clients_env import claude_env, cli
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

_MAIN = "from devmeter.entry import main\nsys.argv[0] = 'devmeter'\nsys.exit(main())\n"
# `devmeter proxy` with the prefix memory off: every large body checked whole.
_WHOLE = "import sys\nimport devmeter.providers.lazy_prefix as m\nm.AVAILABLE = False\n" + _MAIN
# `devmeter proxy` as it is, writing how many bodies its memory reused to a file.
_COUNTED = (
    "import os, sys\nfrom pathlib import Path\nimport devmeter.providers.lazy_prefix as m\n"
    "_lazy_doc = m.PrefixMemory.lazy_doc\n"
    "def lazy_doc(self, body):\n"
    "    doc = _lazy_doc(self, body)\n"
    "    Path(os.environ['DEVMETER_HOME'], 'reused').write_text(str(self.reused))\n"
    "    return doc\n"
    "m.PrefixMemory.lazy_doc = lazy_doc\n" + _MAIN
)
# What differs between two proxies' rows of the same calls however they parse: times, the
# fake upstream's message ids, and what each home's own key hashes (account, loop print).
_PER_RUN = {"id", "ts", "duration_ms", "pid", "response_id", "account", "loop_fingerprint"}


def _calls(proxy: RunningProxy, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    verify = ssl.create_default_context(cafile=str(proxy.bundle))
    http = anthropic.DefaultHttpxClient(proxy=proxy.url, verify=verify, timeout=30)
    client = anthropic.Anthropic(api_key="sk-ant-devmeter-e2e", max_retries=0, http_client=http)
    try:
        for request in requests:
            reply = client.messages.create(**request)
            assert reply.usage.output_tokens > 0
    finally:
        http.close()
    rows = proxy.new_calls(len(requests))
    prints = [row["loop_fingerprint"] for row in rows]
    assert all(prints)
    same_print = [prints.index(p) for p in prints]  # which calls share a loop print
    return [
        {"same_print": same, **{k: v for k, v in row.items() if k not in _PER_RUN}}
        for same, row in zip(same_print, rows, strict=True)
    ]


def test_a_growing_conversation_gets_the_rows_a_whole_check_gives(tmp_path: Path) -> None:
    requests = [json.loads(body) for body in conversation_bodies(5, size=2 * LAZY_FROM)]
    with FakeUpstream() as upstream:
        reused = start_proxy(
            tmp_path / "reused", upstream.url, launcher=(sys.executable, "-c", _COUNTED)
        )
        whole = start_proxy(
            tmp_path / "whole", upstream.url, launcher=(sys.executable, "-c", _WHOLE)
        )
        try:
            got, want = _calls(reused, requests), _calls(whole, requests)
        finally:
            reused.stop()
            whole.stop()
    for a, b in zip(got, want, strict=True):
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert (tmp_path / "reused" / "reused").read_text() == str(len(requests) - 1)
    assert all(row["model"] == "claude-opus-5-5" for row in got)
    assert {row["session"] for row in got} == {"c94186ab-2b3f-417d-a580-48a4be19ff53"}


def test_claude_code_reading_a_file_turn_after_turn_is_metered_as_its_bodies_read(
    tmp_path: Path,
) -> None:
    """The real CLI, its every answer a `cat` of a 25 KB file (under its 30,000-character
    output cap): the conversation passes LAZY_FROM after a few turns, and each later turn
    is checked from where it differs. Each row says what a full parse of the body the
    upstream received says."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.txt").write_text("".join(f"line {n:05d} of the file\n" for n in range(1000)))
    with FakeUpstream(websocket=False) as upstream:
        upstream.defaults["tool_use"] = {"name": "Bash", "input": {"command": "cat big.txt"}}
        proxy = start_proxy(
            tmp_path / "home-proxy", upstream.url, launcher=(sys.executable, "-c", _COUNTED)
        )
        try:
            args = [str(cli("claude")), "-p", "show big.txt", "--max-turns", "9",
                    "--allowedTools", "Bash"]  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "devmeter", "run", "--", *args],
                cwd=work, env=claude_env(proxy, tmp_path), stdin=subprocess.DEVNULL,
                capture_output=True, timeout=120,
            )  # fmt: skip
            bodies = [r.body for r in upstream.find("anthropic.messages")]
            rows = proxy.new_calls(len(bodies))
        finally:
            proxy.stop()
    large = [body for body in bodies if len(body) >= LAZY_FROM]
    assert len(large) >= 3, [len(body) for body in bodies]
    assert (tmp_path / "home-proxy" / "reused").read_text() == str(len(large) - 1)
    endpoint = Endpoint("anthropic", "anthropic.messages")
    want = sorted(
        (info.model, info.facts.get("session_id"))
        for info in (parse_request_doc(endpoint, body)[0] for body in bodies)
    )
    got = sorted((row["requested_model"], row["session"]) for row in rows)
    assert got == want
    assert all(row["status"] == 200 and row["error"] is None for row in rows)
