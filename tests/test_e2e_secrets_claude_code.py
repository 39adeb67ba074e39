"""The real Claude Code CLI reads a `.env` in a throwaway repo (the fake upstream asks for
a Read of it) through a real proxy in each [secrets] mode."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients_env import claude_env, cli, devmeter_run, git_repo
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import start_proxy
from tests.secrets_corpus import DOTENV_FILE, PLANTED

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

ENV_SECRETS = ("stripe-key", "openai-api-key", "database-password", "dotenv-secret")


@pytest.fixture()
def fresh(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    yield upstream


def findings(home: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"{(home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM findings ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["warn", "block", "redact"])
def test_claude_code_reading_a_dotenv(mode: str, fresh: FakeUpstream, tmp_path: Path) -> None:
    upstream = fresh
    repo = git_repo(tmp_path / "acme-api", "main")
    (repo / ".env").write_text(DOTENV_FILE)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[secrets]\nmode = "{mode}"\n')
    proxy = start_proxy(home, upstream.url)
    upstream.set_next(
        path="/v1/messages", tool_use={"name": "Read", "input": {"file_path": str(repo / ".env")}}
    )
    upstream.set_next(path="/v1/messages")
    command = [str(cli("claude")), "-p", "say hi", "--output-format", "json",
               "--allowedTools", "Read"]  # fmt: skip
    try:
        if mode == "block":
            with pytest.raises(AssertionError) as failed:
                devmeter_run(command, cwd=repo, env=claude_env(proxy, tmp_path))
            shown = str(failed.value)
            assert "devmeter: refused: the request holds a secret" in shown, shown[-2000:]
            assert len(upstream.find("anthropic.messages")) == 1  # the Read result never left
        else:
            done = devmeter_run(command, cwd=repo, env=claude_env(proxy, tmp_path))
            assert json.loads(done.stdout)["subtype"] == "success", done.stdout
            sent = [r.body.decode() for r in upstream.find("anthropic.messages")]
            with_result = [b for b in sent if '"tool_result"' in b]
            assert len(with_result) == 1, [b[:300] for b in sent]
            second = with_result[0]
            result = second[second.rfind('"tool_result"') :][:1500]  # for a failure's message
            if mode == "redact":
                assert not any(PLANTED[k] in second for k in ENV_SECRETS)
                assert "[REDACTED by devmeter: stripe-key]" in second, result
            else:
                assert PLANTED["stripe-key"] in second, result  # warn: the call goes as sent
        proxy.stop()  # flushed: the ledger holds every finding
        rows = findings(home)
        action = {"warn": "warned", "block": "blocked", "redact": "redacted"}[mode]
        assert sorted(r["kind"] for r in rows) == sorted(ENV_SECRETS)
        assert {(r["action"], r["tool"], r["repo"]) for r in rows} == {
            (action, "claude-code", str(repo))
        }
        assert {r["location"] for r in rows} == {f"tool result ({repo / '.env'})"}
        alerts = sqlite3.connect(f"{(home / 'ledger.sqlite').as_uri()}?mode=ro", uri=True)
        kinds = [k for (k,) in alerts.execute("SELECT kind FROM alerts")]
        alerts.close()
        assert kinds.count("secret") == len(ENV_SECRETS)  # one alert each, not one per turn
        for path in home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(PLANTED[k].encode() in data for k in ENV_SECRETS), path
    finally:
        proxy.stop()
