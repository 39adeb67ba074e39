"""The ledger: one SQLite row per metered call, written by one thread, read by everyone.

Money is stored as integer pico-dollars (USD x 10^12), so sums are exact: a list
price per million tokens with up to six decimals times any token count is a whole
number of pico-dollars. The proxy is the only writer (WAL, synchronous=NORMAL, a
transaction every 250 ms for the rows its spool already holds); the tray and the CLI
open it read-only.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from devmeter.alerts import Alert
from devmeter.diagnostics import say
from devmeter.money import to_pusd
from devmeter.paths import make_private_dir, make_private_file
from devmeter.quota import Snapshot
from devmeter.spool import Mark, Spool, SpoolBusy, spool_dir
from devmeter.spool import pending as spool_pending
from devmeter.usage import Call

# The sums every v10 rollup keeps, and how a call's row adds to them and comes off them:
# one text for rollup_group, rollup_session and rollup_day (migration v10), which differ
# only in their keys. The text is exactly what v10 shipped with: SQLite keeps it in
# sqlite_master (tests/fixtures/ledger/v10_rollup_triggers.json).
_SUMMED = (
    "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "cost_pusd", "unpriced", "estimated", "billed_pusd", "covered_pusd",
)  # fmt: skip
_NEW_SUMS = """\
            1, NEW.input_tokens, NEW.cache_read_tokens, NEW.cache_write_tokens,
            NEW.output_tokens, NEW.reasoning_tokens, coalesce(NEW.cost_pusd, 0),
            NEW.cost_pusd IS NULL, NEW.estimated,
            CASE WHEN NEW.billing IN ('api', 'overage') THEN coalesce(NEW.cost_pusd, 0) ELSE 0 END,
            CASE WHEN NEW.billing = 'subscription' THEN coalesce(NEW.cost_pusd, 0) ELSE 0 END
"""
_OLD_SUMS = """\
            requests = requests - 1,
            input_tokens = input_tokens - OLD.input_tokens,
            cache_read_tokens = cache_read_tokens - OLD.cache_read_tokens,
            cache_write_tokens = cache_write_tokens - OLD.cache_write_tokens,
            output_tokens = output_tokens - OLD.output_tokens,
            reasoning_tokens = reasoning_tokens - OLD.reasoning_tokens,
            cost_pusd = cost_pusd - coalesce(OLD.cost_pusd, 0),
            unpriced = unpriced - (OLD.cost_pusd IS NULL),
            estimated = estimated - OLD.estimated,
            billed_pusd = billed_pusd - CASE WHEN OLD.billing IN ('api', 'overage')
                THEN coalesce(OLD.cost_pusd, 0) ELSE 0 END,
            covered_pusd = covered_pusd - CASE WHEN OLD.billing = 'subscription'
                THEN coalesce(OLD.cost_pusd, 0) ELSE 0 END
"""


def _rollup_triggers(table: str, new_key: str, old_key: str, emptied: str) -> str:
    """The insert and delete triggers that keep rollup `table` equal to the sums of the
    calls rows. `new_key`: the key's values from NEW (the VALUES lines before the sums);
    `old_key`: the WHERE that finds OLD's rollup row; `emptied`: what narrows the delete
    of the rows left with no request to the ones OLD's could have emptied."""
    added = "".join(
        f"            {c} = {c} + excluded.{c}{';' if c == _SUMMED[-1] else ','}\n" for c in _SUMMED
    )
    return f"""\
    CREATE TRIGGER calls_{table} AFTER INSERT ON calls BEGIN
        INSERT INTO {table} VALUES (
{new_key}{_NEW_SUMS}        )
        ON CONFLICT DO UPDATE SET
            requests = requests + 1,
{added}    END;
    CREATE TRIGGER calls_{table}_delete AFTER DELETE ON calls BEGIN
        UPDATE {table} SET
{_OLD_SUMS}        WHERE {old_key};
        DELETE FROM {table} WHERE requests <= 0{emptied};
    END;
"""


_BUCKET_OF_OLD = " AND bucket = CAST(OLD.ts / 900 AS INTEGER)"
_LOCAL_DAY = "CAST(strftime('%s', {0}.ts, 'unixepoch', 'localtime') AS INTEGER)"

# Numbered migrations: index + 1 is the schema version after it runs. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        tool TEXT NOT NULL,
        provider TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        host TEXT NOT NULL,
        requested_model TEXT,
        model TEXT,
        session TEXT,
        repo TEXT,
        branch TEXT,
        repo_source TEXT,
        pid INTEGER,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        web_search_requests INTEGER NOT NULL DEFAULT 0,
        service_tier TEXT,
        cost_pusd INTEGER,
        price_source TEXT,
        estimated INTEGER NOT NULL DEFAULT 0,
        complete INTEGER NOT NULL DEFAULT 1,
        status INTEGER,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        routing TEXT,
        route_rule TEXT,
        route_target TEXT,
        alt_cost_pusd INTEGER,
        route_note TEXT
    );
    CREATE INDEX calls_ts ON calls (ts);
    CREATE INDEX calls_session ON calls (session, ts);
    CREATE INDEX calls_repo ON calls (repo, ts);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        figure_pusd INTEGER,
        message TEXT NOT NULL,
        session TEXT,
        repo TEXT,
        tool TEXT
    );
    CREATE INDEX alerts_ts ON alerts (ts);
    """,
    # Reports over a year of calls: a rollup per quarter hour (every time zone's day starts
    # on one) and group key, kept by a trigger so every way of inserting a call feeds it.
    """
    CREATE TABLE rollup (
        bucket INTEGER NOT NULL,
        session TEXT NOT NULL,
        repo TEXT NOT NULL,
        branch TEXT NOT NULL,
        tool TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_pusd INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        PRIMARY KEY (bucket, session, repo, branch, tool, provider, model)
    ) WITHOUT ROWID;
    CREATE TRIGGER calls_rollup AFTER INSERT ON calls BEGIN
        INSERT INTO rollup VALUES (
            CAST(NEW.ts / 900 AS INTEGER), coalesce(NEW.session, ''), coalesce(NEW.repo, ''),
            coalesce(NEW.branch, ''), NEW.tool, NEW.provider,
            coalesce(NEW.model, NEW.requested_model, ''), 1, NEW.input_tokens,
            NEW.cache_read_tokens, NEW.cache_write_tokens, NEW.output_tokens,
            NEW.reasoning_tokens, coalesce(NEW.cost_pusd, 0), NEW.cost_pusd IS NULL,
            NEW.estimated
        )
        ON CONFLICT DO UPDATE SET
            requests = requests + 1,
            input_tokens = input_tokens + excluded.input_tokens,
            cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
            cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
            output_tokens = output_tokens + excluded.output_tokens,
            reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
            cost_pusd = cost_pusd + excluded.cost_pusd,
            unpriced = unpriced + excluded.unpriced,
            estimated = estimated + excluded.estimated;
    END;
    INSERT INTO rollup
        SELECT CAST(ts / 900 AS INTEGER), coalesce(session, ''), coalesce(repo, ''),
               coalesce(branch, ''), tool, provider, coalesce(model, requested_model, ''),
               count(*), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
               sum(output_tokens), sum(reasoning_tokens), sum(coalesce(cost_pusd, 0)),
               sum(cost_pusd IS NULL), sum(estimated)
        FROM calls GROUP BY 1, 2, 3, 4, 5, 6, 7;
    """,
    # v3: how far into the spool (devmeter/spool.py) the committed rows reach.
    """
    CREATE TABLE spool_mark (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        file INTEGER NOT NULL,
        end_byte INTEGER NOT NULL
    );
    INSERT INTO spool_mark VALUES (1, 0, 0);
    """,
    # v4: imported history (devmeter/importers/), exactly once. `response_id` is the
    # provider's id for the response (live and imported rows); `source` is 'import' for a
    # row read from a tool's own records (NULL: metered live); `import_key` identifies an
    # imported row across imports. A live row replaces its imported twin (the trigger), and
    # the rollup forgets a deleted row. `import_files` remembers how far each file was read.
    """
    ALTER TABLE calls ADD COLUMN response_id TEXT;
    ALTER TABLE calls ADD COLUMN source TEXT;
    ALTER TABLE calls ADD COLUMN import_key TEXT;
    CREATE UNIQUE INDEX calls_import_key ON calls (import_key) WHERE import_key IS NOT NULL;
    CREATE INDEX calls_response_id ON calls (response_id) WHERE response_id IS NOT NULL;
    CREATE TRIGGER calls_rollup_delete AFTER DELETE ON calls BEGIN
        UPDATE rollup SET
            requests = requests - 1,
            input_tokens = input_tokens - OLD.input_tokens,
            cache_read_tokens = cache_read_tokens - OLD.cache_read_tokens,
            cache_write_tokens = cache_write_tokens - OLD.cache_write_tokens,
            output_tokens = output_tokens - OLD.output_tokens,
            reasoning_tokens = reasoning_tokens - OLD.reasoning_tokens,
            cost_pusd = cost_pusd - coalesce(OLD.cost_pusd, 0),
            unpriced = unpriced - (OLD.cost_pusd IS NULL),
            estimated = estimated - OLD.estimated
        WHERE bucket = CAST(OLD.ts / 900 AS INTEGER) AND session = coalesce(OLD.session, '')
            AND repo = coalesce(OLD.repo, '') AND branch = coalesce(OLD.branch, '')
            AND tool = OLD.tool AND provider = OLD.provider
            AND model = coalesce(OLD.model, OLD.requested_model, '');
        DELETE FROM rollup WHERE requests <= 0 AND bucket = CAST(OLD.ts / 900 AS INTEGER);
    END;
    CREATE TRIGGER calls_live_replaces_import AFTER INSERT ON calls
    WHEN NEW.response_id IS NOT NULL AND NEW.source IS NULL BEGIN
        DELETE FROM calls WHERE response_id = NEW.response_id AND source = 'import';
    END;
    CREATE TABLE import_files (
        path TEXT PRIMARY KEY,
        importer TEXT NOT NULL,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        state TEXT
    );
    """,
    # v5: who pays for each call (devmeter/billing.py), and quota windows (devmeter/quota.py):
    # the latest snapshot per provider, account and window, and a reading whenever one moved.
    """
    ALTER TABLE calls ADD COLUMN billing TEXT NOT NULL DEFAULT 'unknown';
    ALTER TABLE calls ADD COLUMN account TEXT;
    CREATE TABLE quota (
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        window TEXT NOT NULL,
        ts REAL NOT NULL,
        utilization REAL,
        resets_at REAL,
        status TEXT,
        PRIMARY KEY (provider, account, window)
    );
    CREATE TABLE quota_readings (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        provider TEXT NOT NULL,
        account TEXT NOT NULL,
        window TEXT NOT NULL,
        utilization REAL,
        resets_at REAL,
        status TEXT,
        session TEXT,
        repo TEXT
    );
    CREATE INDEX quota_readings_key ON quota_readings (provider, account, window, ts);
    ALTER TABLE rollup ADD COLUMN billed_pusd INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rollup ADD COLUMN covered_pusd INTEGER NOT NULL DEFAULT 0;
    DROP TRIGGER calls_rollup;
    CREATE TRIGGER calls_rollup AFTER INSERT ON calls BEGIN
        INSERT INTO rollup VALUES (
            CAST(NEW.ts / 900 AS INTEGER), coalesce(NEW.session, ''), coalesce(NEW.repo, ''),
            coalesce(NEW.branch, ''), NEW.tool, NEW.provider,
            coalesce(NEW.model, NEW.requested_model, ''), 1, NEW.input_tokens,
            NEW.cache_read_tokens, NEW.cache_write_tokens, NEW.output_tokens,
            NEW.reasoning_tokens, coalesce(NEW.cost_pusd, 0), NEW.cost_pusd IS NULL,
            NEW.estimated,
            CASE WHEN NEW.billing IN ('api', 'overage') THEN coalesce(NEW.cost_pusd, 0) ELSE 0 END,
            CASE WHEN NEW.billing = 'subscription' THEN coalesce(NEW.cost_pusd, 0) ELSE 0 END
        )
        ON CONFLICT DO UPDATE SET
            requests = requests + 1,
            input_tokens = input_tokens + excluded.input_tokens,
            cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
            cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
            output_tokens = output_tokens + excluded.output_tokens,
            reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
            cost_pusd = cost_pusd + excluded.cost_pusd,
            unpriced = unpriced + excluded.unpriced,
            estimated = estimated + excluded.estimated,
            billed_pusd = billed_pusd + excluded.billed_pusd,
            covered_pusd = covered_pusd + excluded.covered_pusd;
    END;
    DROP TRIGGER calls_rollup_delete;
    CREATE TRIGGER calls_rollup_delete AFTER DELETE ON calls BEGIN
        UPDATE rollup SET
            requests = requests - 1,
            input_tokens = input_tokens - OLD.input_tokens,
            cache_read_tokens = cache_read_tokens - OLD.cache_read_tokens,
            cache_write_tokens = cache_write_tokens - OLD.cache_write_tokens,
            output_tokens = output_tokens - OLD.output_tokens,
            reasoning_tokens = reasoning_tokens - OLD.reasoning_tokens,
            cost_pusd = cost_pusd - coalesce(OLD.cost_pusd, 0),
            unpriced = unpriced - (OLD.cost_pusd IS NULL),
            estimated = estimated - OLD.estimated,
            billed_pusd = billed_pusd - CASE WHEN OLD.billing IN ('api', 'overage')
                THEN coalesce(OLD.cost_pusd, 0) ELSE 0 END,
            covered_pusd = covered_pusd - CASE WHEN OLD.billing = 'subscription'
                THEN coalesce(OLD.cost_pusd, 0) ELSE 0 END
        WHERE bucket = CAST(OLD.ts / 900 AS INTEGER) AND session = coalesce(OLD.session, '')
            AND repo = coalesce(OLD.repo, '') AND branch = coalesce(OLD.branch, '')
            AND tool = OLD.tool AND provider = OLD.provider
            AND model = coalesce(OLD.model, OLD.requested_model, '');
        DELETE FROM rollup WHERE requests <= 0 AND bucket = CAST(OLD.ts / 900 AS INTEGER);
    END;
    """,
    # v6: secrets found in what agents sent (devmeter/secrets): what and where, never the
    # secret or its surrounding text; the fingerprint is an HMAC keyed by a private salt.
    """
    CREATE TABLE findings (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        rule TEXT NOT NULL,
        preview TEXT NOT NULL,
        location TEXT NOT NULL,
        tool TEXT,
        repo TEXT,
        session TEXT,
        action TEXT NOT NULL,
        fingerprint TEXT NOT NULL
    );
    CREATE INDEX findings_ts ON findings (ts);
    """,
    # v7: the loop fingerprint of a metered call (runaway.request_fingerprint: a hash keyed
    # by the data folder's loop key, no prompt text), so loop counts survive a restart.
    """
    ALTER TABLE calls ADD COLUMN loop_fingerprint TEXT;
    """,
    # v8: what refused a request (alerts.Block's scope, key and cap), as data: the tray
    # shows the caps refusing now from these, not from the message's wording.
    """
    ALTER TABLE calls ADD COLUMN refused_scope TEXT;
    ALTER TABLE calls ADD COLUMN refused_key TEXT;
    ALTER TABLE calls ADD COLUMN refused_cap_pusd INTEGER;
    """,
    # v9: a live row replaces its imported twin when the import names no response id
    # (Codex rollouts, Gemini CLI chats): the same tool's imported row with the same token
    # counts within 15 minutes, the same session first, the nearest in time first, one per
    # live row (devmeter/importers/history.py TWIN_WINDOW: the same rule the other way
    # round). A live row without tokens (a refusal, an error) is no response's twin. The
    # partial index keeps the lookup free for the proxy while nothing is imported.
    """
    CREATE INDEX calls_unkeyed_import ON calls (tool, output_tokens, input_tokens)
        WHERE source = 'import' AND response_id IS NULL;
    CREATE TRIGGER calls_live_replaces_unkeyed_import AFTER INSERT ON calls
    WHEN NEW.source IS NULL AND NEW.input_tokens + NEW.cache_read_tokens
        + NEW.cache_write_tokens + NEW.output_tokens > 0 BEGIN
        DELETE FROM calls WHERE id = (
            SELECT id FROM calls
            WHERE source = 'import' AND response_id IS NULL AND tool = NEW.tool
                AND output_tokens = NEW.output_tokens AND input_tokens = NEW.input_tokens
                AND cache_read_tokens = NEW.cache_read_tokens
                AND cache_write_tokens = NEW.cache_write_tokens
                AND ts BETWEEN NEW.ts - 900 AND NEW.ts + 900
            ORDER BY session IS NOT NEW.session, abs(ts - NEW.ts)
            LIMIT 1
        );
    END;
    """,
    # v10: narrower rollups for the dashboard and the reports grouped by one of their keys
    # (a quarter hour's calls of many sessions are one row per repo, tool and model here;
    # a local day's, in rollup_day), kept by triggers like `rollup` and backfilled from
    # it; and the routed calls, indexed for the savings report.
    """
    CREATE TABLE rollup_group (
        bucket INTEGER NOT NULL,
        repo TEXT NOT NULL,
        tool TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_pusd INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        billed_pusd INTEGER NOT NULL,
        covered_pusd INTEGER NOT NULL,
        PRIMARY KEY (bucket, repo, tool, provider, model)
    ) WITHOUT ROWID;
"""
    + _rollup_triggers(
        "rollup_group",
        """\
            CAST(NEW.ts / 900 AS INTEGER), coalesce(NEW.repo, ''), NEW.tool, NEW.provider,
            coalesce(NEW.model, NEW.requested_model, ''),
""",
        """bucket = CAST(OLD.ts / 900 AS INTEGER)
            AND repo = coalesce(OLD.repo, '')
            AND tool = OLD.tool
            AND provider = OLD.provider
            AND model = coalesce(OLD.model, OLD.requested_model, '')""",
        _BUCKET_OF_OLD,
    )
    + """\
    INSERT INTO rollup_group
        SELECT bucket, repo, tool, provider, model, sum(requests), sum(input_tokens),
               sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
               sum(reasoning_tokens), sum(cost_pusd), sum(unpriced), sum(estimated),
               sum(billed_pusd), sum(covered_pusd)
        FROM rollup GROUP BY bucket, repo, tool, provider, model;
    CREATE TABLE rollup_session (
        bucket INTEGER NOT NULL,
        session TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_pusd INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        billed_pusd INTEGER NOT NULL,
        covered_pusd INTEGER NOT NULL,
        PRIMARY KEY (bucket, session)
    ) WITHOUT ROWID;
"""
    + _rollup_triggers(
        "rollup_session",
        """\
            CAST(NEW.ts / 900 AS INTEGER), coalesce(NEW.session, ''),
""",
        """bucket = CAST(OLD.ts / 900 AS INTEGER)
            AND session = coalesce(OLD.session, '')""",
        _BUCKET_OF_OLD,
    )
    + """\
    INSERT INTO rollup_session
        SELECT bucket, session, sum(requests), sum(input_tokens),
               sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
               sum(reasoning_tokens), sum(cost_pusd), sum(unpriced), sum(estimated),
               sum(billed_pusd), sum(covered_pusd)
        FROM rollup GROUP BY bucket, session;
    -- Local days, for the period pages: the day on this machine's clock and its offset
    -- from UTC then (quarter hours), so a reader in another zone can tell and not use it.
    CREATE TABLE rollup_day (
        day INTEGER NOT NULL,
        utc_offset INTEGER NOT NULL,
        repo TEXT NOT NULL,
        tool TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_pusd INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        billed_pusd INTEGER NOT NULL,
        covered_pusd INTEGER NOT NULL,
        PRIMARY KEY (day, utc_offset, repo, tool, provider, model)
    ) WITHOUT ROWID;
"""
    + _rollup_triggers(
        "rollup_day",
        f"""\
            {_LOCAL_DAY.format("NEW")} / 86400,
            ({_LOCAL_DAY.format("NEW")}
                - CAST(NEW.ts AS INTEGER)) / 900,
            coalesce(NEW.repo, ''), NEW.tool, NEW.provider,
            coalesce(NEW.model, NEW.requested_model, ''),
""",
        f"""day = {_LOCAL_DAY.format("OLD")} / 86400
            AND utc_offset = ({_LOCAL_DAY.format("OLD")}
                - CAST(OLD.ts AS INTEGER)) / 900
            AND repo = coalesce(OLD.repo, '') AND tool = OLD.tool AND provider = OLD.provider
            AND model = coalesce(OLD.model, OLD.requested_model, '')""",
        f"""
            AND day = {_LOCAL_DAY.format("OLD")} / 86400""",
    )
    + """\
    INSERT INTO rollup_day
        SELECT CAST(strftime('%s', bucket * 900, 'unixepoch', 'localtime') AS INTEGER) / 86400,
               (CAST(strftime('%s', bucket * 900, 'unixepoch', 'localtime') AS INTEGER)
                - bucket * 900) / 900,
               repo, tool, provider, model, sum(requests), sum(input_tokens),
               sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
               sum(reasoning_tokens), sum(cost_pusd), sum(unpriced), sum(estimated),
               sum(billed_pusd), sum(covered_pusd)
        FROM rollup_group GROUP BY 1, 2, 3, 4, 5, 6;
    CREATE INDEX calls_routed ON calls (ts) WHERE routing IN ('routed', 'shadow', 'fallback');
    """,
    # v11: the imported rows by response id, for calls_live_replaces_import. Through the
    # index on every response id, an upstream that repeats one id made each live insert
    # walk every earlier row with it (the ledger slower with every call); imported rows
    # are the only ones the trigger deletes, and this index holds only them.
    """
    CREATE INDEX calls_imported_response_id ON calls (response_id)
        WHERE source = 'import' AND response_id IS NOT NULL;
    """,
)
BUCKET_SECONDS = 900
# What routing saved on a call (routed: the requested model's cost less what it cost) or
# would have saved (shadow: what it cost less the target's), in pico-dollars; NULL when
# either price is missing or the call was not routed. The savings report and the
# exporters' counters both sum it.
SAVING_PUSD = (
    "CASE routing WHEN 'routed' THEN alt_cost_pusd - cost_pusd"
    " WHEN 'shadow' THEN cost_pusd - alt_cost_pusd END"
)

CALL_COLUMNS = (
    "ts", "tool", "provider", "endpoint", "host", "requested_model", "model", "session",
    "repo", "branch", "repo_source", "pid", "input_tokens", "cache_read_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens",
    "web_search_requests", "service_tier", "cost_pusd", "price_source", "estimated",
    "complete", "status", "duration_ms", "error", "routing", "route_rule", "route_target",
    "alt_cost_pusd", "route_note", "response_id", "source", "import_key", "billing",
    "account", "loop_fingerprint", "refused_scope", "refused_key", "refused_cap_pusd",
)  # fmt: skip
# What `_padded` gives a column an older spooled row lacks, where NULL is not allowed.
_PAD_DEFAULTS = {"billing": "unknown"}


@functools.cache
def _insert_rows_sql(count: int) -> str:
    one = f"({', '.join('?' * len(CALL_COLUMNS))})"
    return f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES {', '.join([one] * count)}"


INSERT_CALL = _insert_rows_sql(1)
# Rows per multi-row INSERT (a power of two): as many as SQLite's bound-variable limit
# allows, up to this.
ROWS_PER_INSERT = 64
ALERT_COLUMNS = ("ts", "kind", "scope", "key", "figure_pusd", "message", "session", "repo", "tool")
FINDING_COLUMNS = (
    "ts", "kind", "rule", "preview", "location", "tool", "repo", "session", "action",
    "fingerprint",
)  # fmt: skip
INSERT_FINDING = (
    f"INSERT INTO findings ({', '.join(FINDING_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(FINDING_COLUMNS))})"
)
INSERT_ALERT = (
    f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ALERT_COLUMNS))})"
)

QUOTA_COLUMNS = ("provider", "account", "window", "ts", "utilization", "resets_at", "status")
UPSERT_QUOTA = (
    f"INSERT OR REPLACE INTO quota ({', '.join(QUOTA_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(QUOTA_COLUMNS))})"
)
READING_COLUMNS = (
    "ts",
    "provider",
    "account",
    "window",
    "utilization",
    "resets_at",
    "status",
    "session",
    "repo",
)
INSERT_QUOTA_READING = (
    f"INSERT INTO quota_readings ({', '.join(READING_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(READING_COLUMNS))})"
)
_TABLES = {
    INSERT_CALL: "calls", UPSERT_QUOTA: "quota", INSERT_QUOTA_READING: "quota_readings",
    INSERT_FINDING: "findings",
}  # fmt: skip


def insert_calls(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows with a few multi-row INSERTs rather than one statement per row.

    In the proxy this runs on the writer thread, next to the event loop: `executemany`
    takes the GIL back from the loop for every row (binding it) and drops it again while
    SQLite steps, two thread switches a row that the loop pays for under load.
    A multi-row statement binds a batch in one go and steps it once, without the GIL.
    Statements come in power-of-two sizes only: each size is a prepared statement the
    connection caches (~0.2 MB for 64 rows), and one per batch length grew the proxy by
    ~17 MB over a hundred lengths.
    """
    size = ROWS_PER_INSERT
    while size > 1 and size * len(CALL_COLUMNS) > conn.getlimit(
        sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
    ):
        size //= 2
    start = 0
    while start < len(rows):
        while len(rows) - start < size:
            size //= 2  # the remainder in halves: 64 + 32 + 4 + 1 for 101 rows
        chunk = rows[start : start + size]
        conn.execute(_insert_rows_sql(size), [value for row in chunk for value in row])
        start += size


# The rollups the insert triggers keep (v2, v10), as set-wise statements: what each
# trigger adds for one row, summed over many rows at once. The new rows are summed once
# into the finest rollup's groups (a temporary table), and every rollup is fed from those
# sums, as migration v10 backfilled the narrower ones from `rollup`: a time zone's
# offset changes on a quarter hour, so a bucket's local day and offset are its rows'.
# `insert_calls_in_bulk` runs them instead of the triggers (tests/test_import_bulk.py
# checks that both give the same rollups).
_BUCKET_KEYS = (
    ("bucket", "CAST(ts / 900 AS INTEGER)"), ("session", "coalesce(session, '')"),
    ("repo", "coalesce(repo, '')"), ("branch", "coalesce(branch, '')"), ("tool", "tool"),
    ("provider", "provider"), ("model", "coalesce(model, requested_model, '')"),
)  # fmt: skip
_SUMS = (
    ("requests", "count(*)"),
    ("input_tokens", "sum(input_tokens)"),
    ("cache_read_tokens", "sum(cache_read_tokens)"),
    ("cache_write_tokens", "sum(cache_write_tokens)"),
    ("output_tokens", "sum(output_tokens)"),
    ("reasoning_tokens", "sum(reasoning_tokens)"),
    ("cost_pusd", "sum(coalesce(cost_pusd, 0))"),
    ("unpriced", "sum(cost_pusd IS NULL)"),
    ("estimated", "sum(estimated)"),
    ("billed_pusd",
     "sum(CASE WHEN billing IN ('api', 'overage') THEN coalesce(cost_pusd, 0) ELSE 0 END)"),
    ("covered_pusd",
     "sum(CASE WHEN billing = 'subscription' THEN coalesce(cost_pusd, 0) ELSE 0 END)"),
)  # fmt: skip
_LOCAL = "CAST(strftime('%s', bucket * 900, 'unixepoch', 'localtime') AS INTEGER)"
# insert trigger -> (the rollup it keeps, its key columns and what each is from the sums)
_ROLLUPS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "calls_rollup": ("rollup", tuple((name, name) for name, _ in _BUCKET_KEYS)),
    "calls_rollup_group": ("rollup_group", (
        ("bucket", "bucket"), ("repo", "repo"), ("tool", "tool"), ("provider", "provider"),
        ("model", "model"),
    )),
    "calls_rollup_session": ("rollup_session", (("bucket", "bucket"), ("session", "session"))),
    "calls_rollup_day": ("rollup_day", (
        ("day", f"{_LOCAL} / 86400"), ("utc_offset", f"({_LOCAL} - bucket * 900) / 900"),
        ("repo", "repo"), ("tool", "tool"), ("provider", "provider"), ("model", "model"),
    )),
}  # fmt: skip
# Below this many rows the triggers cost less than changing the schema twice.
BULK_AT_LEAST = 256


def _new_sums_sql() -> str:
    keys = ", ".join(f"{expr} AS {name}" for name, expr in _BUCKET_KEYS)
    sums = ", ".join(f"{expr} AS {name}" for name, expr in _SUMS)
    groups = ", ".join(str(i + 1) for i in range(len(_BUCKET_KEYS)))
    return (
        f"CREATE TEMP TABLE bulk_sums AS SELECT {keys}, {sums} FROM calls WHERE id > ? "
        f"GROUP BY {groups}"
    )


def _rollup_sql(table: str, keys: tuple[tuple[str, str], ...]) -> str:
    columns = [name for name, _ in keys] + [name for name, _ in _SUMS]
    exprs = [expr for _, expr in keys] + [f"sum({name})" for name, _ in _SUMS]
    groups = ", ".join(str(i + 1) for i in range(len(keys)))
    adds = ", ".join(f"{name} = {name} + excluded.{name}" for name, _ in _SUMS)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(exprs)} "
        f"FROM temp.bulk_sums WHERE true GROUP BY {groups} ON CONFLICT DO UPDATE SET {adds}"
    )


def _insert_varying(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """`insert_calls`, with what every row has the same written into the statement once,
    as SQLite quotes it: binding a value costs more than SQLite storing it, and an
    imported row has 41 columns, most of them its importer's constants (tool, host,
    source, the columns only live calls fill). Only NULL, text, and integers in numeric
    columns are written so: 1 == 1.0 == True, which such a column stores alike (a float's
    text need not be the same number); the rest is bound."""
    numeric = {
        name for _, name, kind, *_ in conn.execute("PRAGMA table_info(calls)") if kind != "TEXT"
    }
    literal: dict[int, str] = {}
    for i, values in enumerate(zip(*rows, strict=True)):
        first = values[0]
        kind = type(first)
        writable = (kind is str and "\x00" not in first) or (
            kind is int and CALL_COLUMNS[i] in numeric
        )  # quote() ends a text at a NUL, and a statement cannot hold one
        if (first is None or writable) and values.count(first) == len(values):
            (literal[i],) = conn.execute("SELECT quote(?)", (first,)).fetchone()
    varying = [i for i in range(len(CALL_COLUMNS)) if i not in literal]
    if not literal or not varying:
        insert_calls(conn, rows)
        return
    one = "(" + ", ".join(literal.get(i, "?") for i in range(len(CALL_COLUMNS))) + ")"
    head = f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES "
    size = ROWS_PER_INSERT
    while size > 1 and size * len(varying) > conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER):
        size //= 2
    pick = operator.itemgetter(*varying) if len(varying) > 1 else lambda row: (row[varying[0]],)
    start = 0
    while start < len(rows):
        while len(rows) - start < size:
            size //= 2
        values = [value for row in rows[start : start + size] for value in pick(row)]
        conn.execute(head + ", ".join([one] * size), values)
        start += size


def insert_calls_in_bulk(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """`insert_calls` for many rows at once (a history import), inside the caller's
    transaction. The rollup triggers cost as much as the rows themselves (an upsert into
    each of four rollups per row, a local-time conversion among them), so they are
    dropped for the insert, the new rows are summed into the rollups set-wise, and the
    triggers are put back as they were, all in the same transaction: no other connection
    ever sees the ledger without them. A trigger this does not know keeps firing row by
    row."""
    if len(rows) < BULK_AT_LEAST:
        insert_calls(conn, rows)
        return
    triggers = dict(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'calls' "
            f"AND name IN ({', '.join('?' * len(_ROLLUPS))})",
            tuple(_ROLLUPS),
        ).fetchall()
    )
    (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()
    for name in triggers:
        conn.execute(f"DROP TRIGGER {name}")
    _insert_varying(conn, rows)
    conn.execute("DROP TABLE IF EXISTS temp.bulk_sums")
    conn.execute(_new_sums_sql(), (before,))
    for name, sql in triggers.items():
        conn.execute(_rollup_sql(*_ROLLUPS[name]))
        conn.execute(sql)
    conn.execute("DROP TABLE temp.bulk_sums")


def call_row(call: Call) -> tuple[Any, ...]:
    u, a = call.usage, call.attribution
    return (
        call.ts, a.tool, call.provider, call.endpoint, call.host, call.requested_model,
        call.model, a.session, a.repo, a.branch, a.repo_source, a.pid, u.input_tokens,
        u.cache_read_tokens, u.cache_write_tokens, u.cache_write_1h_tokens, u.output_tokens,
        u.reasoning_tokens, u.web_search_requests, u.service_tier, to_pusd(call.cost_usd),
        call.price_source, int(u.estimated), int(call.complete), call.status,
        call.duration_ms, call.error, call.routing, call.route_rule, call.route_target,
        to_pusd(call.alt_cost_usd), call.route_note, call.response_id, call.source,
        call.import_key, call.billing, call.account, call.loop_fingerprint,
        call.refused_scope, call.refused_key, to_pusd(call.refused_cap_usd),
    )  # fmt: skip


def alert_row(alert: Alert) -> tuple[Any, ...]:
    return (
        alert.ts, alert.kind, alert.scope, alert.key, to_pusd(alert.figure_usd), alert.message,
        alert.session, alert.repo, alert.tool,
    )  # fmt: skip


def quota_row(s: Snapshot) -> tuple[Any, ...]:
    return (s.provider, s.account, s.window, s.ts, s.utilization, s.resets_at, s.status)


def quota_reading_row(s: Snapshot) -> tuple[Any, ...]:
    return (
        s.ts, s.provider, s.account, s.window, s.utilization, s.resets_at, s.status, s.session,
        s.repo,
    )  # fmt: skip


# A spooled quota snapshot starts with this tag; a call's row starts with its timestamp.
QUOTA_SPOOL_TAG = "quota"


def spool_quota_row(s: Snapshot, moved: bool) -> tuple[Any, ...]:
    """A snapshot as one spool row: the tag, whether it moved, then its reading's values."""
    return (QUOTA_SPOOL_TAG, int(moved), *quota_reading_row(s))


def quota_items(spooled: tuple[Any, ...], mark: Mark | None) -> list[_Item]:
    """The ledger writes a spooled snapshot stands for: the window's latest, and a reading
    when it moved. A row of the wrong shape (a damaged spool) is handed on as it is, for
    the writer to set aside in the quarantine file."""
    values = tuple(spooled[2:])
    if len(values) != len(READING_COLUMNS):
        return [_Item(UPSERT_QUOTA, values, mark)]
    latest = quota_row(Snapshot(*values))  # READING_COLUMNS are Snapshot's fields, in order
    if not spooled[1]:
        return [_Item(UPSERT_QUOTA, latest, mark)]
    return [_Item(UPSERT_QUOTA, latest), _Item(INSERT_QUOTA_READING, values, mark)]


def read_quota(conn: sqlite3.Connection) -> list[Snapshot]:
    """The latest snapshot of every window, by provider, account and window."""
    rows = conn.execute(
        f"SELECT {', '.join(QUOTA_COLUMNS)} FROM quota ORDER BY provider, account, window"
    ).fetchall()
    return [
        Snapshot(ts=ts, provider=p, account=a, window=w, utilization=u, resets_at=r, status=st)
        for p, a, w, ts, u, r, st in rows
    ]


def read_quota_readings(conn: sqlite3.Connection, since: float = 0.0) -> list[Snapshot]:
    """Readings since `since`, oldest first."""
    rows = conn.execute(
        f"SELECT {', '.join(READING_COLUMNS)} FROM quota_readings WHERE ts >= ? ORDER BY ts, id",
        (since,),
    ).fetchall()
    return [
        Snapshot(ts, p, a, w, u, r, st, session, repo)
        for ts, p, a, w, u, r, st, session, repo in rows
    ]


def connect(path: Path) -> sqlite3.Connection:
    """Open the ledger for writing, creating and migrating it.

    The ledger, and the -wal and -shm files SQLite creates beside it with the ledger's
    own mode, are readable by the user alone (0600), in a folder that is too (0700).
    """
    make_private_dir(path.parent)
    for private in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if private is path or private.exists():
            make_private_file(private)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    migrate(conn)
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection | None:
    """Open the ledger for reading; None when no ledger exists yet (or is being created)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        # The writer creates the file, then its tables: in between it is not a ledger yet.
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.close()
            return None
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    _migrate_from(conn, current)


def _migrate_from(conn: sqlite3.Connection, current: int) -> None:
    """Run the migrations after version `current` (as read before any lock was taken), all
    in one transaction: a reader (the headless line, `devmeter report`) opening a ledger
    being created or upgraded sees it before or after, never half migrated (a new user's
    first start printed "no such column" from a ledger between two versions)."""
    if current >= len(MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another writer (the proxy, an import) may have migrated it since we looked.
        (done,) = conn.execute("PRAGMA user_version").fetchone()
        for script in MIGRATIONS[done:]:
            for statement in _statements(script):
                conn.execute(statement)
        if done < len(MIGRATIONS):
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """A migration's statements; a trigger body's own semicolons stay inside it."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s.rstrip(";").strip()]


class _Item(NamedTuple):
    """A row waiting for the writer: its statement and values, and where the spool has it
    (None: memory only)."""

    sql: str
    values: tuple[Any, ...]
    mark: Mark | None = None


# What one bad row raises when bound or inserted (an integer past 64 bits, a lone
# surrogate, a row of the wrong length from a damaged spool, a broken constraint): the
# row is at fault, not the disk, and retrying it would fail forever.
_ROW_ERRORS = (
    OverflowError,
    ValueError,
    TypeError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
)


def quarantine_path(ledger: Path) -> Path:
    """Where rows the ledger refused are set aside, beside the spool."""
    return ledger.with_name(ledger.name + ".quarantine.jsonl")


# Rows committed in one transaction at most.
BATCH_SIZE = 500
# Seconds between commits. Rows are safe in the spool meanwhile; a longer batch writes
# each of the ledger's pages once for more rows (the tray reads it every 0.5 s).
COMMIT_INTERVAL = 0.25


class LedgerWriter:
    """The single writer: callers enqueue rows; one thread commits them in batches.

    Each call's row is spooled to disk first (devmeter/spool.py), so a caller never
    waits for a commit and a killed proxy loses nothing: the next start commits what
    the spool holds past the ledger's mark. A failed write (disk full, read-only,
    locked) keeps the batch and retries: a row is never dropped. A row SQLite refuses
    (one that no retry can write) is set aside in `quarantine_path`, said once, and
    counted, so it can never stop the rows after it, now or on a replay. Nothing the
    thread meets stops it: an unexpected error is reported and the work goes on.
    `on_problem` hears about failures (loudly, once per state change) and recoveries.
    """

    def __init__(
        self,
        path: Path,
        on_problem: Callable[[str], object] | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self.path = path
        # A deque, not a queue.Queue: appending is one atomic step for the proxy's thread,
        # which adds a row for every call; only the writer ever waits (on `_wake`).
        self._queue: collections.deque[_Item | None] = collections.deque()
        self._wake = threading.Event()
        self._waiting = False  # the writer sleeps on `_wake` until a row arrives
        self._on_problem = on_problem or say
        self._batch_size = BATCH_SIZE
        self._retry_seconds = retry_seconds
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Item] = []
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = threading.Event()  # close() was called: finish up, no waiting
        self._ended = False  # the writer took close()'s end marker off the queue
        self._recovered = False
        self._replayed = threading.Event()  # the first try at an earlier run's spool is over
        self._last_attempt = False  # the writer's round began after close(): no retry
        self.problem: str | None = None
        self.spool_problem: str | None = None
        self.internal_problem: str | None = None
        self._problem_said = True  # False while `problem` could not be reported
        self.rows_written = 0
        self.rows_recovered = 0
        self.rows_quarantined = 0
        self._order = threading.Lock()
        self._spool = self._open_spool(spool_dir(path))
        self._last_mark: Mark | None = None  # the newest mark committed
        self._commit_interval = COMMIT_INTERVAL
        self._hurry = threading.Event()  # cuts the wait between commits short (flush)
        # Create and migrate the ledger now, so readers starting alongside find its tables;
        # if it cannot be opened, the writer thread retries and says why.
        with contextlib.suppress(sqlite3.Error, OSError):
            self._conn = connect(path)
        self._thread = threading.Thread(target=self._run, name="devmeter-ledger", daemon=True)
        self._thread.start()

    def _tell(self, message: str) -> bool:
        """Report through `on_problem`, which must not stop the writer if it fails;
        False when the report could not be made (stderr on a full disk)."""
        try:
            said = self._on_problem(message)
        except Exception:
            return say(message)
        return said is not False  # a listener that returns nothing has heard it

    def _open_spool(self, directory: Path) -> Spool | None:
        """The spool, or None (rows held in memory) when its directory cannot be made.

        Raises SpoolBusy when another process writes this ledger.
        """
        try:
            return Spool(directory)
        except SpoolBusy:
            raise
        except OSError as exc:
            self._spool_failed(directory, exc)
            return None

    def _spool_failed(self, directory: Path, exc: OSError) -> None:
        if self.spool_problem is None:
            self.spool_problem = (
                f"devmeter: cannot write the spool in {directory}: {exc}. Calls are held in "
                "memory until the ledger can be written; free space or fix permissions on "
                f"{directory.parent}."
            )
            self._tell(self.spool_problem)

    def add_call(self, call: Call) -> bool:
        """Queue a call's row; True once it is safe on disk (spooled), False when the
        spool cannot be written and the row is held in memory until the ledger can."""
        row = call_row(call)
        # One lock for spooling and queueing: rows reach SQLite in spool order, so the
        # mark committed with a batch covers exactly the rows before it.
        with self._order:
            mark = self._spool_row(row)
            self._enqueue(_Item(INSERT_CALL, row, mark))
        return mark is not None

    def add_alert(self, alert: Alert) -> None:
        with self._order:
            self._enqueue(_Item(INSERT_ALERT, alert_row(alert)))

    def add_quota(self, snapshot: Snapshot, moved: bool) -> bool:
        """Keep `snapshot` as its window's latest; `moved`: also as a reading (its
        utilization changed since the last one), for pace and share. Spooled like a
        call's row, so a proxy killed right after the answer keeps it; True once it is
        on disk."""
        spooled = spool_quota_row(snapshot, moved)
        with self._order:
            mark = self._spool_row(spooled)
            self._enqueue_items(quota_items(spooled, mark))
        return mark is not None

    def add_finding(self, row: tuple[Any, ...]) -> None:
        """A secret finding's row, in FINDING_COLUMNS order (devmeter.secrets.inspector)."""
        with self._order:
            self._enqueue(_Item(INSERT_FINDING, row))

    def _enqueue_items(self, items: Iterable[_Item]) -> None:
        for item in items:
            self._enqueue(item)

    def _enqueue(self, item: _Item | None) -> None:
        self._queue.append(item)
        if self._waiting:
            self._wake.set()

    def _take(self) -> _Item | None:
        """The next queued item (None: close), waiting for one."""
        while True:
            if self._queue:
                self._idle.clear()  # before the item leaves the queue: flush must wait
                return self._queue.popleft()
            self._waiting = True
            if not self._queue:  # an item queued before the flag was up is not missed
                self._wake.wait()
                self._wake.clear()
            self._waiting = False

    def _spool_row(self, row: tuple[Any, ...]) -> Mark | None:
        if self._spool is None:
            return None
        try:
            mark = self._spool.append(row)
        except OSError as exc:
            self._spool_failed(self._spool.directory, exc)
            return None
        except Exception as exc:  # a row the spool cannot encode: held in memory
            self._spool_failed(self._spool.directory, OSError(f"{type(exc).__name__}: {exc}"))
            return None
        if self.spool_problem is not None:
            self.spool_problem = None
            self._tell(f"devmeter: the spool in {self._spool.directory} is writable again.")
        return mark

    def wait_replayed(self, timeout: float = 5.0) -> bool:
        """Wait until what a killed earlier run spooled is committed, so that reading the
        ledger now (the proxy's budgets and quota windows at start) sees those calls too.
        False when the first try failed (a ledger that cannot be written: the writer
        retries on its own, and the proxy starts from what the ledger has) or took longer
        than `timeout`."""
        return self._replayed.wait(timeout) and self._recovered

    @property
    def backlog(self) -> int:
        return len(self._queue) + len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._hurry.set()
            if not self._queue and not self._pending and self._idle.wait(0.01):
                return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Commit everything queued, checkpoint the WAL into the ledger file and stop.

        The writer makes one last attempt at rows it could not write yet (disk full) and
        then stops rather than wait for the disk: those rows stay in the spool for the
        next start, and it says so.
        """
        with self._order:
            self._enqueue(None)
        self._stopping.set()
        self._hurry.set()
        self._thread.join(timeout)
        if self._spool is not None:
            done = not self._thread.is_alive() and not self._pending and self.problem is None
            if done and self._last_mark is not None:
                # Every spooled row is in SQLite: the spool has nothing left to give.
                with contextlib.suppress(OSError):
                    self._spool.release(self._last_mark, everything=True)
            self._spool.close()

    # --- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    if self._step():
                        return
                except Exception as exc:  # a bug or a surprise: said, and the writer goes on
                    self._internal_error(exc)
                    if self._last_attempt:
                        self._give_up(exc)
                        return
                    self._pause()
        finally:
            self._finish()

    def _step(self) -> bool:
        """One round of work; True when the writer is done (closed)."""
        # Only a round that began after close() is the last attempt: one already under
        # way when close() came (say with the disk still full) is followed by another.
        self._last_attempt = self._stopping.is_set()
        if not self._recovered:
            self._recovered = self._recover()
            self._replayed.set()  # done, or the ledger refused: no one waits for a retry
            if not self._recovered:
                if self._last_attempt:
                    self._give_up(None)  # the spool keeps those rows for the next start
                    return True
                self._pause()
            return False
        if not self._pending:
            if self._ended:
                return True
            item = self._take()
            if item is None:
                return True
            self._pending.append(item)
        while len(self._pending) < self._batch_size:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if item is None:
                self._ended = True
                break
            self._pending.append(item)
        if self._commit(self._pending):
            self._pending = []
            if not self._queue:
                self._idle.set()
            if self.internal_problem is not None:
                self.internal_problem = None
            if self._spool is not None and self.spool_problem is None and not self._ended:
                # Rows are safe in the spool: commit a batch every interval rather than
                # waking on every row, which costs the proxy's thread the GIL each time.
                self._hurry.wait(self._commit_interval)
                self._hurry.clear()
            return False
        if self._last_attempt:
            self._give_up(None)
            return True
        self._pause()
        return False

    def _pause(self) -> None:
        """Wait before a retry; close() cuts it short."""
        self._stopping.wait(self._retry_seconds)

    def _give_up(self, exc: BaseException | None) -> None:
        """Stopping with rows the ledger would not take: say where each one is."""
        # list(deque) copies it in one step: the proxy may still be adding rows meanwhile.
        held = [*self._pending, *(item for item in list(self._queue) if item is not None)]
        calls = [item for item in held if item.sql is INSERT_CALL]
        if not calls:
            return
        spooled = sum(1 for item in calls if item.mark is not None)
        why = f" ({exc})" if exc is not None else f" ({self.problem})" if self.problem else ""
        lost = len(calls) - spooled
        self._tell(
            f"devmeter: stopping with {len(calls)} calls not written to the ledger "
            f"{self.path}{why}: {spooled} are in the spool and are written at the next start"
            + (f"; {lost} could not be saved anywhere (the spool was not writable)" if lost else "")
            + "."
        )

    def _finish(self) -> None:
        """Fold the WAL into the ledger file and close: after a clean stop the data is
        in ledger.sqlite itself, not in ledger.sqlite-wal."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _internal_error(self, exc: BaseException) -> None:
        problem = f"devmeter: the ledger writer hit an unexpected error: {exc!r}"
        if self.internal_problem is None:
            self._tell(f"{problem}; it keeps the rows and retries.")
        self.internal_problem = problem
        self._reset_connection()

    def _recover(self) -> bool:
        """Commit what an earlier run spooled but did not commit (it was killed)."""
        if self._spool is None:
            return True
        try:
            conn = self._connection()
            file, end_byte = conn.execute("SELECT file, end_byte FROM spool_mark").fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._cannot_write(exc)
            return False
        this_run = self._spool.first_file
        # In batches, each committed with its mark: a spool of any size is replayed in
        # bounded memory, and a retry goes on from the last batch written.
        batch: list[_Item] = []
        try:
            directory = self._spool.directory
            # This run's own rows are not read back: the normal path writes them.
            for mark, row in spool_pending(directory, Mark(file, end_byte), before=this_run):
                batch.extend(_spooled_items(row, mark))
                if len(batch) >= self._batch_size:
                    if not self._commit(batch):
                        return False
                    self.rows_recovered += len(batch)
                    batch = []
        except OSError as exc:
            # Left in place for a later start; the ledger goes on with this run's calls.
            self._spool.keep_before = this_run
            self._tell(
                f"devmeter: cannot read the spool in {self._spool.directory}: {exc}; calls "
                "a killed earlier run had not written are not in the ledger until it can."
            )
            return True
        if batch and not self._commit(batch):
            return False
        self.rows_recovered += len(batch)
        if self.rows_recovered:
            say(
                f"devmeter: recovered {self.rows_recovered} calls from "
                f"{self._spool.directory} that the last run had not yet written to the ledger "
                "(it was stopped abruptly)."
            )
        with contextlib.suppress(OSError):
            self._spool.release(Mark(this_run, 0))
        return True

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path)
        return self._conn

    def _commit(self, items: list[_Item]) -> bool:
        marks = [item.mark for item in items if item.mark is not None]
        try:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                refused = self._insert(conn, items)
                if refused:
                    self._quarantine(refused)  # on disk before the mark passes them
                if marks:
                    conn.execute("UPDATE spool_mark SET file = ?, end_byte = ?", marks[-1])
                conn.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after an I/O error (read-only disk, disk
                # full); a second ROLLBACK would raise and hide the real cause.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._cannot_write(exc)
            return False
        if self.problem is not None:
            self._report(None)
        self.rows_written += len(items) - len(refused)
        if refused:
            self._quarantined(len(refused))
        if marks:
            self._advance(marks[-1])
        return True

    def _insert(
        self, conn: sqlite3.Connection, items: list[_Item]
    ) -> list[tuple[_Item, BaseException]]:
        """Insert the items in the open transaction; the ones SQLite refused, and why.

        All rows at once, as nearly always; if one of them is refused, the transaction
        starts over and inserts them one by one, to find it.
        """
        calls = [item.values for item in items if item.sql is INSERT_CALL]
        if all(len(values) == len(CALL_COLUMNS) for values in calls):
            try:
                insert_calls(conn, calls)
                for item in items:
                    if item.sql is not INSERT_CALL:
                        conn.execute(item.sql, item.values)
                return []
            except _ROW_ERRORS:
                pass
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")
        refused: list[tuple[_Item, BaseException]] = []
        for item in items:
            if item.sql is INSERT_CALL and len(item.values) != len(CALL_COLUMNS):
                refused.append((item, ValueError(f"{len(item.values)} values, not a call row")))
                continue
            try:
                conn.execute(item.sql, item.values)
            except _ROW_ERRORS as exc:
                refused.append((item, exc))
        return refused

    def _quarantine(self, refused: list[tuple[_Item, BaseException]]) -> None:
        """Append refused rows to the quarantine file, beside the spool. Raises OSError
        when it cannot be written: the batch is then retried, like any failed write."""
        lines = b"".join(
            json.dumps(
                {"table": _TABLES.get(item.sql, "alerts"),
                 "reason": f"{type(exc).__name__}: {exc}", "row": list(item.values)},
                default=repr,
            ).encode("ascii")
            + b"\n"
            for item, exc in refused
        )  # fmt: skip
        path = quarantine_path(self.path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            written = os.write(fd, lines)
            if written != len(lines):
                raise OSError(f"short write to {path}")
        finally:
            os.close(fd)

    def _quarantined(self, count: int) -> None:
        if self.rows_quarantined == 0:
            self._tell(
                f"devmeter: the ledger refused a row it cannot store; set it aside in "
                f"{quarantine_path(self.path)} (said once; later ones go there too) and went on."
            )
        self.rows_quarantined += count

    def _advance(self, mark: Mark) -> None:
        previous, self._last_mark = self._last_mark, mark
        if self._spool is not None and (previous is None or mark.file > previous.file):
            with contextlib.suppress(OSError):
                self._spool.release(mark)  # a file behind the mark is wholly committed

    def _cannot_write(self, exc: BaseException) -> None:
        self._report(
            f"devmeter: cannot write the ledger {self.path}: {exc}. "
            f"{self.backlog} rows are held in memory"
            f"{' (and in the spool on disk)' if self.spool_problem is None else ''} and "
            f"retried every {self._retry_seconds:g}s; "
            f"free space or fix permissions on {self.path.parent}."
        )
        self._reset_connection()

    def _report(self, problem: str | None) -> None:
        if problem is not None and self.problem is not None:
            self.problem = problem
            if not self._problem_said:  # stderr was full too: say it once it can be read
                self._problem_said = self._tell(problem)
            return  # already said so; do not flood
        self.problem = problem
        said = self._tell(problem or f"devmeter: ledger {self.path} is writable again.")
        self._problem_said = said

    def _reset_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None


def _spooled_items(row: tuple[Any, ...], mark: Mark) -> list[_Item]:
    """A spooled row as the ledger items it stands for (the mark on the last of them:
    the spool mark moves past a row only once all of it is committed)."""
    if row and row[0] == QUOTA_SPOOL_TAG:
        return quota_items(row, mark)
    return [_Item(INSERT_CALL, _padded(row), mark)]


def _padded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A spooled row written before the ledger grew columns: the new ones are NULL (or
    their `_PAD_DEFAULTS`)."""
    missing = CALL_COLUMNS[len(row) :]
    return tuple(row) + tuple(_PAD_DEFAULTS.get(name) for name in missing)


def write_calls(path: Path, calls: Iterable[Call]) -> None:
    """Write calls synchronously (imports, tests, benchmarks)."""
    conn = connect(path)
    conn.execute("BEGIN")
    insert_calls(conn, [call_row(c) for c in calls])
    conn.execute("COMMIT")
    conn.close()
