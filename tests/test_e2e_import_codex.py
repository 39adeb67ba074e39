"""The real Codex CLI's rollouts, imported: the same rows the proxy recorded, never twice.

Codex runs through `devmeter run` (two turns: `exec`, then `exec resume --last`); the
rollout it wrote is then imported twice: into a fresh ledger, where its rows must equal
the live ones token for token and to the micro-dollar, and into the proxy's own ledger,
where every response is already there and nothing is added. Then the other order: into
a third ledger the rollout is imported first and the proxy's rows arrive after (as its
spool replays them once a ledger that could not be written is writable again): each live
row replaces its imported twin, one row per response.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from devmeter import ledger
from devmeter.importers.codex import import_codex
from tests.clients_env import cli, codex_env, devmeter_run, git_repo, last_id, rows_after
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy
from tests.test_import_forked import import_command

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

BRANCH = "fix/codex-history"
FIRST = {
    "input_tokens": 2345,
    "cache_read_tokens": 6789,
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0,
    "output_tokens": 432,
    "reasoning_tokens": 210,
}
SECOND = {"input_tokens": 511, "cache_read_tokens": 9001, "cache_write_5m_tokens": 0,
          "cache_write_1h_tokens": 0, "output_tokens": 77, "reasoning_tokens": 13}  # fmt: skip
COLUMNS = ("session", "model", "input_tokens", "cache_read_tokens", "output_tokens",
           "reasoning_tokens", "cost_pusd")  # fmt: skip


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def billed(db: Path, where: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [
        dict(r)
        for r in conn.execute(
            f"SELECT * FROM calls WHERE {where} AND (input_tokens > 0 OR output_tokens > 0) "
            "ORDER BY ts, id"
        )
    ]
    conn.close()
    return rows


def replay_live(live_db: Path, after: int, into: Path) -> None:
    """The proxy's rows after id `after`, inserted into `into` as its writer inserts them."""
    conn = sqlite3.connect(live_db)
    live_rows = conn.execute(
        f"SELECT {', '.join(ledger.CALL_COLUMNS)} FROM calls WHERE id > ? ORDER BY id", (after,)
    ).fetchall()
    conn.close()
    target = ledger.connect(into)
    target.execute("BEGIN IMMEDIATE")
    ledger.insert_calls(target, live_rows)
    target.execute("COMMIT")
    target.close()


def test_codex_rollouts_imported_equal_the_live_rows_and_never_double(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, devmeter_home: Path
) -> None:
    codex = cli("codex")
    repo = git_repo(tmp_path / "payments", BRANCH)
    upstream.defaults.update(websocket=False)
    upstream.set_next(usage=FIRST)
    upstream.set_next(usage=SECOND)
    env = codex_env(proxy, tmp_path)
    mark = last_id(proxy)
    first = devmeter_run([str(codex), "exec", "--json", "say hi"], cwd=repo, env=env)
    devmeter_run([str(codex), "exec", "--json", "resume", "--last", "again"], cwd=repo, env=env)
    rows_after(proxy, mark, at_least=2)
    live_db = proxy.home / "ledger.sqlite"
    live = billed(live_db, f"id > {mark}")
    assert len(live) == 2, live
    thread = next(
        json.loads(line)["thread_id"]
        for line in first.stdout.splitlines()
        if line.startswith("{") and json.loads(line).get("type") == "thread.started"
    )

    codex_home = Path(env["CODEX_HOME"])
    fresh_db = devmeter_home / "ledger.sqlite"
    result = import_command("codex", devmeter_home, codex_home)  # the command's path
    assert result["imported"] == 2, result
    imported = billed(fresh_db, "1")
    assert [tuple(r[c] for c in COLUMNS) for r in imported] == [
        tuple(r[c] for c in COLUMNS) for r in live
    ]
    assert {r["session"] for r in imported} == {thread}
    assert {(r["repo"], r["branch"], r["source"]) for r in imported} == {
        (str(repo), BRANCH, "import")
    }
    assert import_codex(fresh_db, codex_home).imported == 0  # twice: nothing

    before = len(billed(live_db, "1"))
    into_live = import_codex(live_db, codex_home)
    assert (into_live.imported, into_live.live) == (0, 2), into_live
    assert len(billed(live_db, "1")) == before

    # Imported first, metered live after: one row per response, the live one.
    first_db = tmp_path / "import-first" / "ledger.sqlite"
    assert import_codex(first_db, codex_home).imported == 2
    replay_live(live_db, mark, first_db)
    after = billed(first_db, "1")
    assert [(r["source"], r["response_id"]) for r in after] == [
        (None, r["response_id"]) for r in live
    ]
    assert import_codex(first_db, codex_home).imported == 0
