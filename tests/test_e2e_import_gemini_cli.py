"""The real Gemini CLI's recorded chats, imported: the proxy's rows, never twice.

Gemini CLI (API key) runs through `devmeter run`: a router call, then a turn that calls a
tool and the answer after it. Its chat log (`~/.gemini/tmp/<hash>/chats/*.jsonl`) is then
imported into a fresh ledger, where each answer's row must equal the live one token for
token, and into the proxy's own ledger, where nothing is added; then into a third ledger
before the proxy's rows reach it, which then replace their imported twins. The router's call is in
no chat: only the proxy sees it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from devmeter.importers.gemini_cli import import_gemini_cli
from tests.clients_env import cli, devmeter_run, git_repo, last_id, rows_after
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy
from tests.test_e2e_gemini_cli import ANSWER_USAGE, LOGINS, ROUTER_USAGE, TURN_USAGE, gemini_env
from tests.test_e2e_import_codex import replay_live

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

COLUMNS = ("model", "input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens",
           "cost_pusd")  # fmt: skip


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def table(db: Path, where: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM calls WHERE {where} ORDER BY ts, id")]
    conn.close()
    return rows


def test_gemini_cli_chats_imported_equal_the_live_rows_and_never_double(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, devmeter_home: Path
) -> None:
    gemini = cli("gemini")
    login = LOGINS["api-key"]
    repo = git_repo(tmp_path / "acme", "main")
    upstream.set_next(path=":generateContent", text=login.router_text, usage=ROUTER_USAGE)
    upstream.set_next(
        usage=TURN_USAGE, tool_use={"name": "list_directory", "input": {"dir_path": "."}}
    )
    upstream.set_next(usage=ANSWER_USAGE)
    env = gemini_env(proxy, tmp_path, login)
    mark = last_id(proxy)
    devmeter_run(
        [str(gemini), "-p", "list the files", "--output-format", "json"], cwd=repo, env=env
    )
    rows_after(proxy, mark, at_least=3)
    live_db = proxy.home / "ledger.sqlite"
    live = table(live_db, f"id > {mark} AND model = '{login.main_model}'")
    assert len(live) == 2, live

    gemini_home = Path(env["HOME"]) / ".gemini"
    assert list(gemini_home.glob("tmp/*/chats/**/*.jsonl")), "no chat log written"
    fresh_db = devmeter_home / "ledger.sqlite"
    result = import_gemini_cli(fresh_db, gemini_home)
    assert result.imported == 2, result
    imported = table(fresh_db, "1")
    assert [tuple(r[c] for c in COLUMNS) for r in imported] == [
        tuple(r[c] for c in COLUMNS) for r in live
    ]
    assert import_gemini_cli(fresh_db, gemini_home).imported == 0

    before = len(table(live_db, "1"))
    into_live = import_gemini_cli(live_db, gemini_home)
    assert (into_live.imported, into_live.live) == (0, 2), into_live
    assert len(table(live_db, "1")) == before

    # Imported first, metered live after: one row per answer, the live one (the router's
    # call, in no chat, is there once too).
    first_db = tmp_path / "import-first" / "ledger.sqlite"
    assert import_gemini_cli(first_db, gemini_home).imported == 2
    replay_live(live_db, mark, first_db)
    after = table(first_db, "1")
    assert len(after) == len(table(live_db, f"id > {mark}"))
    assert {r["source"] for r in after} == {None}
    assert import_gemini_cli(first_db, gemini_home).imported == 0
