"""What the exporters send never names a hashed repo, and never carries a prompt or a
credential: every byte of /metrics and of every OTLP push is searched, after a real SDK
script in a real git repo sent a prompt and an API key through a real proxy."""

from __future__ import annotations

import os
import stat
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.clients_env import client_env, devmeter_run, git_repo
from tests.export_helpers import KEY_CANARY, PROMPT_CANARY, send_calls, wait_for
from tests.fake_upstream import FakeUpstream
from tests.otlp_receiver import OtlpReceiver
from tests.proxy_harness import start_proxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

REPO_NAME = "acme-secret-payroll"
BRANCH = "feature/secret-branch-name"
SCRIPT = f"""\
import anthropic
client = anthropic.Anthropic(api_key={KEY_CANARY!r}, max_retries=0, timeout=30)
client.messages.create(model="claude-opus-4-8", max_tokens=16,
                       messages=[{{"role": "user", "content": {PROMPT_CANARY!r}}}])
"""


def test_hashed_repos_prompts_and_keys_never_leave_in_any_exported_byte(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    receiver = OtlpReceiver().start()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[export]\nrepo_label = "hash"\n'
        '[export.prometheus]\nlisten = "127.0.0.1:0"\n'
        f'[export.otlp]\nendpoint = "{receiver.url}"\ninterval_seconds = 0.2\nlogs = true\n'
    )
    proxy = start_proxy(home, upstream.url)
    try:
        repo = git_repo(tmp_path / REPO_NAME, BRANCH)
        script = tmp_path / "call.py"
        script.write_text(SCRIPT)
        devmeter_run(
            [sys.executable, str(script)], cwd=repo, env=client_env(proxy, tmp_path / "client-home")
        )
        send_calls(proxy, rounds=1)  # and calls from this test's own checkout
        rows = proxy.new_calls(5)
        assert any(r["repo"] == str(repo) for r in rows), "the script's call was not attributed"
        ledger_ids = {r["id"] for r in rows}
        wait_for(
            "a log record for every call",
            lambda: ledger_ids <= {r["devmeter.call.id"] for r in receiver.log_records()},
        )
        metrics_url = __import__("json").loads(proxy.home.joinpath("proxy.json").read_text())[
            "metrics_url"
        ]
        with urllib.request.urlopen(metrics_url, timeout=10) as answer:
            scraped = answer.read()
        exported = [scraped, *receiver.raw]

        repos = {r["repo"] for r in rows if r["repo"]}
        secrets = {PROMPT_CANARY, KEY_CANARY, REPO_NAME, BRANCH, "secret-branch", *repos}
        secrets |= {Path(r).name for r in repos}
        for body in exported:
            for secret in secrets:
                assert secret.encode() not in body, f"{secret!r} was exported"
        # The repos are there, as hashes: the labels exist, they just name nothing.
        labels = {
            line.split('repo="')[1].split('"')[0]
            for line in scraped.decode().splitlines()
            if 'repo="' in line
        }
        assert len(labels) == 2 and all(label.startswith("repo-") for label in labels), labels
        # The salt stays in the data dir, readable by the user alone, and is not exported.
        salt = home / "export_salt"
        assert stat.S_IMODE(os.stat(salt).st_mode) == 0o600
        for body in exported:
            assert salt.read_text().strip().encode() not in body
    finally:
        proxy.stop()
        receiver.stop()
