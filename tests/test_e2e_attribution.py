"""Attributing an SDK client by its process: the repo it runs in, or honestly none.

An SDK call carries no working directory, so the proxy finds the process behind the
connection (socket -> pid) and reads its cwd. A plain `anthropic` script, configured
only by the environment `devmeter run` gives it (HTTPS_PROXY, SSL_CERT_FILE), is
attributed to the git repo it runs in; run outside any repo it stays unattributed
rather than guessed, and `devmeter report --by repo` says so.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.clients_env import (
    client_env,
    describe,
    devmeter_run,
    git_repo,
    last_id,
    not_a_repo,
    report,
    rows_after,
)
from tests.proxy_harness import RunningProxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

BRANCH = "chore/sdk-attribution"
MODEL = "claude-opus-4-8"
# The fake upstream's default usage at Claude Opus 4.8 list prices (USD per million tokens:
# input 5, cache read 0.5, 5m cache write 6.25, 1h cache write 10, output 25).
DEFAULT_COST = (
    1200 * 5 + 3000 * Decimal("0.5") + 300 * Decimal("6.25") + 200 * 10 + 345 * 25
) / Decimal(1_000_000)

# What a user writes: no proxy or CA settings in the code, the SDK reads the environment.
SCRIPT = f"""\
import json, os

import anthropic

assert os.environ.get("HTTPS_PROXY") and os.environ.get("SSL_CERT_FILE"), "not under devmeter"
client = anthropic.Anthropic(api_key="sk-ant-devmeter-e2e", max_retries=0, timeout=30)
reply = client.messages.create(
    model={MODEL!r}, max_tokens=64, messages=[{{"role": "user", "content": "say hi"}}]
)
print(json.dumps({{"pid": os.getpid(), "cwd": os.getcwd(), "output": reply.usage.output_tokens}}))
"""


def run_script(
    proxy: RunningProxy, tmp_path: Path, cwd: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SDK script as a subprocess of `devmeter run`, in `cwd`: its report and its row."""
    script = tmp_path / "say_hi.py"
    script.write_text(SCRIPT)
    mark = last_id(proxy)
    done = devmeter_run(
        [sys.executable, str(script)], cwd=cwd, env=client_env(proxy, tmp_path / "home")
    )
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["output"] == 345  # the client got the upstream's answer through the proxy
    rows = rows_after(proxy, mark, at_least=1)
    assert len(rows) == 1, describe(rows)
    return said, rows[0]


def test_sdk_script_in_a_repo_is_attributed_to_it_and_outside_one_to_nothing(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "billing-service", BRANCH)
    elsewhere = not_a_repo(tmp_path / "scratch")

    said, row = run_script(proxy, tmp_path, repo)
    assert row["tool"] == "anthropic-sdk-python"
    assert row["pid"] == said["pid"]  # the script itself, found from its socket
    assert row["repo"] == str(repo)
    assert row["branch"] == BRANCH
    assert row["repo_source"] == "process"
    # No session of its own: one per process.
    assert row["session"].startswith(f"proc-{said['pid']}-")
    assert (row["requested_model"], row["model"]) == (MODEL, MODEL)
    assert row["cost_usd"] == DEFAULT_COST

    said, row = run_script(proxy, tmp_path, elsewhere)
    assert row["tool"] == "anthropic-sdk-python"
    assert row["pid"] == said["pid"]
    assert (row["repo"], row["branch"], row["repo_source"]) == (None, None, None)
    assert row["session"].startswith(f"proc-{said['pid']}-")
    assert row["cost_usd"] == DEFAULT_COST  # unattributed, still counted

    by_repo = {r["key"]: r for r in json.loads(report(proxy, "--by", "repo", "--json"))}
    assert set(by_repo) == {str(repo), "(unattributed)"}
    for key in by_repo:
        assert by_repo[key]["requests"] == 1
        assert Decimal(repr(by_repo[key]["cost_usd"])) == DEFAULT_COST
    table = report(proxy, "--by", "repo")
    assert "(unattributed)" in table
    assert "billing-service" in table
