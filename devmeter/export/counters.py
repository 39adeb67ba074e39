"""Counters for the exporters, read from the ledger: the one source of truth.

Totals are sums over every row of `calls`, so they never go backwards, across proxy
restarts too: a restart reads them again from the ledger. They are kept incrementally:
each refresh reads only the rows past the last id it saw (ids only grow: one writer at
a time), grouped in SQL, so a refresh costs the proxy a query, not a Python loop per call.

Labels are bounded: a session is never a label; a repo gets a label of its own only if it
is among the first `repo_limit` repos the ledger ever saw (so a label, once given, is
never taken back and no series is split or shrinks), the rest are `other`. What a repo
label shows is the user's choice: the path, the folder name, or a salted hash whose salt
never leaves the data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from devmeter.export.settings import Labels
from devmeter.ledger import SAVING_PUSD, connect_readonly, read_quota
from devmeter.live_window import ENDED_SINCE, LIVE_CALLS, ended_since_bounds, live_call_bounds
from devmeter.money import PICO
from devmeter.paths import load_key_or_ephemeral

SALT_FILE = "export_salt"  # the salt as hex digits and a newline
SALT_BYTES = 32
UNATTRIBUTED = "unattributed"
OTHER = "other"
TOKEN_TYPES = ("input", "cache_read", "cache_write", "output")
BURN_WINDOW_SECONDS = 600.0  # the burn-rate window `devmeter sessions` uses
# OpenTelemetry's advised bucket boundaries for gen_ai.client.token.usage.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip


class Key(NamedTuple):
    """One group of calls: what the exporters label a series with (before the repo is
    turned into its label)."""

    provider: str
    requested_model: str
    model: str
    tool: str
    repo: str  # the ledger's repo path; "" when unattributed
    status: str  # ok | error | blocked
    code: str  # an error's HTTP status; "none": no answer; "cut": cut off mid-stream
    routing: str  # routed | shadow | fallback | ""
    rule: str
    billing: str  # "" until the ledger records billing mode (see `_billing_expr`)


@dataclass
class Sums:
    requests: int = 0
    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    cost_pusd: int = 0  # priced calls only
    unpriced: int = 0
    saving_pusd: int = 0  # routed: saved; shadow: what routing would have saved

    def add(self, other: Sums) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def tokens(self, kind: str) -> int:
        return int(getattr(self, kind))


class HistKey(NamedTuple):
    provider: str
    requested_model: str
    model: str
    tool: str
    repo: str
    token_type: str


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(TOKEN_BUCKETS) + 1))
    count: int = 0
    total: int = 0


@dataclass(frozen=True)
class Gauges:
    live_sessions: dict[str, int]  # tool -> sessions with a call in the last 10 minutes
    burn_usd_per_hour: Decimal  # this machine's spend over the last 10 minutes, per hour
    max_session_burn_usd_per_hour: Decimal
    spent_usd: dict[str, Decimal]  # day, month: this period; session, repo: the highest


@dataclass(frozen=True)
class QuotaWindow:
    """A quota window's latest reading, as exported (devmeter/quota.py)."""

    provider: str
    account: str  # the user's label from `[accounts]`, else the salted fingerprint
    window: str  # 5h, 7d, weekly, requests, ...
    utilization: float  # 0..1
    resets_at: float | None  # epoch seconds


def _outcome_sql() -> str:
    # devmeter's own refusals carry its message, which always starts "devmeter:". A row
    # imported from a tool's history (source 'import') has no HTTP status because no proxy
    # saw it, not because it got no answer: the transcript recorded one.
    return """CASE WHEN error LIKE 'devmeter:%' THEN 'blocked'
                   WHEN (status IS NULL AND source IS NOT 'import') OR status >= 400
                        OR complete = 0 THEN 'error'
                   ELSE 'ok' END"""


_GROUPED = """
SELECT provider, coalesce(requested_model, model, ''), coalesce(model, requested_model, ''),
       tool, coalesce(repo, ''), {outcome} AS outcome,
       CASE WHEN {outcome} != 'error' THEN ''
            WHEN status IS NULL THEN 'none'
            WHEN status < 400 THEN 'cut'
            ELSE CAST(status AS TEXT) END,
       coalesce(routing, ''), coalesce(route_rule, ''), {billing},
       count(*), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(output_tokens), sum(coalesce(cost_pusd, 0)), sum(cost_pusd IS NULL),
       sum(coalesce(SAVING_PUSD, 0)),
       min(id), max(id)
FROM calls WHERE id > ? AND id <= ?
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
""".replace("SAVING_PUSD", SAVING_PUSD)

_COLUMN_OF = {
    "input": "input_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "output": "output_tokens",
}


def _bucket_sql(column: str) -> str:
    """The bucket index of a token count: how many boundaries it exceeds."""
    return " + ".join(f"({column} > {bound})" for bound in TOKEN_BUCKETS)


class LedgerCounters:
    """Everything the exporters report, read from the ledger at `path`.

    Thread-safe: the Prometheus server's threads and the OTLP thread call `refresh`.
    """

    def __init__(
        self, ledger: Path, data_dir: Path, labels: Labels, machine: str,
        budgets: object | None = None, histograms: bool = False,
        clock: Callable[[], float] = time.time, accounts: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.ledger = ledger
        self._data_dir = data_dir
        self.labels = labels
        self.machine = machine
        self.budgets = budgets  # devmeter.budget.Budgets, for caps per scope
        self.accounts: Mapping[str, str] = accounts or {}  # `[accounts]`: id -> label
        self._histograms = histograms
        self._clock = clock
        self._lock = threading.Lock()
        self.last_id = 0
        self.first_ts: float | None = None  # the ledger's first call: when counting began
        self.sums: dict[Key, Sums] = {}
        self.hists: dict[HistKey, Histogram] = {}
        self._repo_first: dict[str, int] = {}  # repo path -> the id of its first call
        self._labelled: set[str] = set()
        self._salt: bytes | None = None
        self._billing: bool | None = None

    # -- reading --------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Fold in the rows written since the last refresh; False if the ledger cannot
        be read now (what was counted so far stays)."""
        with self._lock:
            try:
                with self._connection() as conn:
                    if conn is None:
                        return False
                    self._fold(conn)
                    return True
            except sqlite3.Error:
                return False

    def gauges(self) -> Gauges:
        with self._lock:
            try:
                with self._connection() as conn:
                    if conn is not None:
                        return self._gauges(conn, self._clock())
            except sqlite3.Error:
                pass
            return Gauges({}, Decimal(0), Decimal(0), {})

    def quota_windows(self) -> list[QuotaWindow]:
        """The quota windows not yet past their reset, from the ledger's latest snapshot
        of each (a window past its reset is left out until an answer reports it again:
        its last figure would be stale). Two accounts given the same label are one
        series: the fuller window wins, the one that needs watching."""
        with self._lock:
            try:
                with self._connection() as conn:
                    snapshots = [] if conn is None else read_quota(conn)
            except sqlite3.Error:  # no quota table yet, or the ledger is busy: none now
                return []
        now = self._clock()
        found: dict[tuple[str, str, str], QuotaWindow] = {}
        for s in snapshots:
            if s.utilization is None or (s.resets_at is not None and s.resets_at <= now):
                continue
            window = QuotaWindow(
                s.provider, self.accounts.get(s.account, s.account), s.window,
                s.utilization, s.resets_at,
            )  # fmt: skip
            key = (window.provider, window.account, window.window)
            if key not in found or found[key].utilization < window.utilization:
                found[key] = window
        return [found[key] for key in sorted(found)]

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for one read. A new one each time: callers are whichever thread
        the HTTP server started for a scrape, and sqlite3 ties a connection to its
        thread; opening the ledger read-only costs well under a millisecond."""
        conn = connect_readonly(self.ledger)
        try:
            if conn is not None and self._billing is None:
                columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
                self._billing = "billing" in columns
            yield conn
        finally:
            if conn is not None:
                conn.close()

    def billing_known(self) -> bool:
        """Whether the ledger records billing mode (billed vs covered by a plan). Until a
        migration adds a `billing` column, cost carries no `billing` label."""
        return bool(self._billing)

    def _fold(self, conn: sqlite3.Connection) -> None:
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()
        if top <= self.last_id:
            return
        if self.first_ts is None:
            row = conn.execute("SELECT min(ts) FROM calls").fetchone()
            self.first_ts = row[0]
        billing = "coalesce(billing, '')" if self._billing else "''"
        sql = _GROUPED.format(outcome=_outcome_sql(), billing=billing)
        # One read transaction: the grouped sums and the histograms see the same rows.
        conn.execute("BEGIN")
        try:
            for row in conn.execute(sql, (self.last_id, top)):
                key = Key(*row[:10])
                sums = Sums(*row[10:18])
                self.sums.setdefault(key, Sums()).add(sums)
                first_id = row[18]
                if key.repo and (key.repo not in self._repo_first
                                 or first_id < self._repo_first[key.repo]):  # fmt: skip
                    self._repo_first[key.repo] = first_id
            if self._histograms:
                self._fold_histograms(conn, top)
        finally:
            conn.execute("COMMIT")
        self.last_id = top
        self._relabel()

    def _fold_histograms(self, conn: sqlite3.Connection, top: int) -> None:
        for kind, column in _COLUMN_OF.items():
            sql = f"""
                SELECT provider, coalesce(requested_model, model, ''),
                       coalesce(model, requested_model, ''), tool, coalesce(repo, ''),
                       {_bucket_sql(column)}, count(*), sum({column})
                FROM calls WHERE id > ? AND id <= ? GROUP BY 1, 2, 3, 4, 5, 6
            """
            for provider, requested, model, tool, repo, bucket, count, total in conn.execute(
                sql, (self.last_id, top)
            ):
                hist = self.hists.setdefault(
                    HistKey(provider, requested, model, tool, repo, kind), Histogram()
                )
                hist.counts[bucket] += count
                hist.count += count
                hist.total += total

    def _relabel(self) -> None:
        """The first `repo_limit` repos by first call keep a label of their own. A repo
        seen later never displaces one: its first id is larger than theirs."""
        ordered = sorted(self._repo_first, key=self._repo_first.__getitem__)
        self._labelled = set(ordered[: self.labels.repo_limit])

    # -- labels ---------------------------------------------------------------------------

    def repo_label(self, repo: str) -> str:
        if not repo:
            return UNATTRIBUTED
        if repo not in self._labelled:
            return OTHER
        mode = self.labels.repo_label
        if mode == "path":
            return repo
        if mode == "name":
            return repo.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or repo
        return (
            "repo-" + hmac.new(self._salt_bytes(), repo.encode(), hashlib.sha256).hexdigest()[:12]
        )

    def _salt_bytes(self) -> bytes:
        if self._salt is None:
            self._salt = load_salt(self._data_dir)
        return self._salt

    # -- gauges ---------------------------------------------------------------------------

    def _gauges(self, conn: sqlite3.Connection, now: float) -> Gauges:
        live: dict[str, int] = {}
        for tool, count in conn.execute(
            "SELECT tool, count(DISTINCT coalesce(session, tool || '@' || coalesce(repo, '?'))) "
            f"FROM calls WHERE {LIVE_CALLS} GROUP BY tool",
            live_call_bounds(now),
        ):
            live[tool] = count
        window = now - BURN_WINDOW_SECONDS
        (recent,) = conn.execute(
            f"SELECT coalesce(sum(cost_pusd), 0) FROM calls WHERE {ENDED_SINCE}",
            ended_since_bounds(window),
        ).fetchone()
        (top_session,) = conn.execute(
            "SELECT coalesce(max(s), 0) FROM (SELECT sum(cost_pusd) AS s FROM calls "
            f"WHERE {ENDED_SINCE} GROUP BY session)",
            ended_since_bounds(window),
        ).fetchone()
        per_hour = Decimal(3600) / Decimal(BURN_WINDOW_SECONDS)
        return Gauges(
            live_sessions=live,
            burn_usd_per_hour=Decimal(recent) / PICO * per_hour,
            max_session_burn_usd_per_hour=Decimal(top_session) / PICO * per_hour,
            spent_usd=self._spent(conn, now),
        )

    def _spent(self, conn: sqlite3.Connection, now: float) -> dict[str, Decimal]:
        from devmeter.budget import Budgets, BudgetTracker
        from devmeter.guard import spend_so_far

        budgets = self.budgets if isinstance(self.budgets, Budgets) else Budgets()
        totals = spend_so_far(conn, BudgetTracker(budgets), now)
        tracker = BudgetTracker(budgets)
        spent: dict[str, Decimal] = {}
        live_sessions = {
            s for (s,) in conn.execute(
                f"SELECT DISTINCT session FROM calls WHERE {LIVE_CALLS}", live_call_bounds(now)
            )
        }  # fmt: skip
        for (scope, key), usd in totals.items():
            if scope in ("day", "month"):
                if key == tracker.period(scope, now):
                    spent[scope] = usd
            elif scope == "repo" or key in live_sessions:
                spent[scope] = max(spent.get(scope, Decimal(0)), usd)
        for scope in ("session", "repo", "day", "month"):
            spent.setdefault(scope, Decimal(0))
        return spent


def load_salt(data_dir: Path) -> bytes:
    """The salt of hashed repo labels: made once, kept in the data dir, readable by the
    user alone, never exported. Stable, so a repo keeps its hash across restarts."""
    return load_key_or_ephemeral(data_dir / SALT_FILE, SALT_BYTES, hex_text=True)
