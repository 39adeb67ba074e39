"""`devmeter report`, `sessions` and `alerts` as a person reads them, and as tools read them.

Snapshots of `report` over a seeded ledger for the request, session, repo and day
groupings, each as a table, JSON and CSV (tests/snapshots/report/); run with
DEVMETER_UPDATE_SNAPSHOTS=1 to rewrite them after an intended change, and read the diff.
Then the rules behind them (dollars, tokens, labels, --since, --limit) and hostile names:
whatever the wire sent, nothing a terminal obeys reaches stdout.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter import reports
from devmeter.cli import main
from devmeter.ledger import connect, connect_readonly, write_calls
from devmeter.reports import format_usd, parse_since, session_labels
from devmeter.safe_text import safe_text
from devmeter.text_table import TextTable, render
from devmeter.usage import Attribution, Call, Usage

SNAPSHOTS = Path(__file__).parent / "snapshots" / "report"
DAY = 86400.0
T0 = 1_793_610_000.0  # 2026-11-02 09:00 UTC
SESSION_A = "3f2a9c1e-0b7d-4a55-9e61-1c2d3e4f5a6b"
SESSION_B = "3f2a9c1e-0b7d-4a55-9e61-ffffffffffff"  # shares 25 characters with A


def call(
    ts: float,
    cost: str | None,
    *,
    tool: str = "claude-code",
    session: str | None = SESSION_A,
    repo: str | None = "/home/dev/src/acme-api",
    model: str = "claude-opus-4-1",
    provider: str = "anthropic",
    tokens: tuple[int, int, int, int] = (1200, 3000, 500, 345),
    estimated: bool = False,
    status: int = 200,
    complete: bool = True,
) -> Call:
    fresh, cache_read, cache_write, output = tokens
    return Call(
        ts=ts,
        provider=provider,
        endpoint=f"{provider}.messages",
        host="api.example.com",
        requested_model=model,
        model=model,
        attribution=Attribution(tool=tool, session=session, repo=repo, branch="main"),
        usage=Usage(
            input_tokens=fresh,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            output_tokens=output,
            estimated=estimated,
        ),
        cost_usd=None if cost is None else Decimal(cost),
        price_source=None if cost is None else "test",
        status=status,
        complete=complete,
    )


SEED = [
    call(T0, "70.4598", tokens=(4_000_000, 12_000_000, 14_721, 250_000)),
    call(T0 + 60, "0.003376", model="claude-sonnet-4-5", tokens=(120, 0, 0, 45)),
    call(T0 + 120, "1.5", tool="codex", session=SESSION_B, repo="/home/dev/src/web",
         model="gpt-5", provider="openai"),
    call(T0 + 180, None, tool="curl", session="proc-2130-1793610000", repo=None,
         model="my-local-llama", provider="openai"),
    call(T0 + 240, "0", tool="anthropic-sdk-python", session="proc-2131-1793610000",
         estimated=True, tokens=(10, 0, 0, 2)),
    call(T0 + 300, "0.25", tool="gemini-cli", session=None, repo=None,
         model="gemini-2.5-pro", provider="google", estimated=True, complete=False),
    call(T0 + DAY, "12.5", tokens=(1_000, 2_500_000, 0, 9_000)),
    call(T0 + DAY + 60, "0.02", status=429, tokens=(0, 0, 0, 0)),
]  # fmt: skip


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC, so snapshots do not depend on the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def seeded(devmeter_home: Path, utc: None) -> Path:
    write_calls(devmeter_home / "ledger.sqlite", SEED)
    return devmeter_home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("DEVMETER_UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path}; run with DEVMETER_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its snapshot"


@pytest.mark.parametrize("by", ["request", "session", "repo", "day"])
@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_report_snapshots(
    seeded: Path, capsys: pytest.CaptureFixture[str], by: str, fmt: str
) -> None:
    flags = [] if fmt == "table" else [f"--{fmt}"]
    out = run(capsys, "report", "--by", by, *flags)
    check_snapshot(f"{by}.{'txt' if fmt == 'table' else fmt}", out)
    if fmt == "json":
        rows = json.loads(out)
        fields = reports.REQUEST_FIELDS if by == "request" else reports.GROUP_FIELDS
        assert all(list(row) == list(fields) for row in rows)  # names tools read: unchanged
    if fmt == "csv":
        header = out.splitlines()[0].split(",")
        assert header == list(reports.REQUEST_FIELDS if by == "request" else reports.GROUP_FIELDS)


def test_tables_read_like_a_report(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = run(capsys, "report", "--by", "repo").splitlines()
    header = ["repo", "calls", "in", "cache", "r", "cache", "w", "out", "cost", "flags"]
    assert table[0].split() == header
    body = {line.split()[0]: line for line in table[1:] if line}
    assert "$82.98" in body["/home/dev/src/acme-api"]  # 70.4598 + 0.003376 + 0 + 12.5 + 0.02
    assert "4,001,130" in body["/home/dev/src/acme-api"]  # tokens: one unit system
    # One word for no repo; a group whose calls all lack a price says so, not "$0.00".
    assert "(unattributed)" in body and "!1 unpriced" in body["(unattributed)"]
    total = next(line for line in table if line.startswith("total"))
    assert total.split()[1] == "8" and "$84.73" in total and "!1 unpriced" in total
    assert "! 1 call used a model with no known price and is not in the total" in "\n".join(table)

    requests = run(capsys, "report", "--by", "request")
    assert "$0.003376" in requests and "$70.46" in requests  # cents; six places under one
    assert "unpriced" in requests and "$0.0000" not in requests
    assert requests.splitlines()[-4].split()[:3] == ["total", "8", "calls"]


def test_on_a_narrow_terminal_text_columns_give_way_and_numbers_stay_whole(
    seeded: Path,
) -> None:
    conn = connect_readonly(seeded / "ledger.sqlite")
    assert conn is not None
    rows = reports.query(conn, "request")
    plain = reports.to_table(rows, "request")
    assert max(len(line) for line in plain.splitlines()) > 150
    fitted = reports.to_table(rows, "request", width=120)
    table = fitted.split("\n\n")[0].splitlines()
    assert max(map(len, table)) <= 120
    assert fitted.split("\n\n")[1] == plain.split("\n\n")[1]  # the notes, unchanged
    for figure in ("4,000,000", "12,000,000", "$70.46", "$0.003376", "4,004,730", "$84.73"):
        assert figure in fitted, figure
    assert table[1].startswith("2026-11-02 09:00:00  ")  # the time is never cut
    assert "\u2026cme-api  " in table[1]  # a path keeps its end
    # Wide enough already: the same as plain.
    assert reports.to_table(rows, "request", width=500) == plain


def test_the_cli_fits_tables_to_a_terminal_and_not_to_a_pipe(
    seeded: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    piped = run(capsys, "report", "--by", "request")
    assert max(len(line) for line in piped.split("\n\n")[0].splitlines()) > 150
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    for argv in (["report", "--by", "request"], ["sessions", "--since", "2026-01-01"]):
        table = run(capsys, *argv).split("\n\n")[0].splitlines()
        assert max(map(len, table)) <= 120, argv


def test_todays_calls_show_their_time_and_older_ones_their_date(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    write_calls(devmeter_home / "ledger.sqlite", [call(now - 1, "1")])
    row = run(capsys, "report", "--by", "request").splitlines()[1]
    assert row.startswith(time.strftime("%H:%M:%S  ", time.localtime(now - 1))), row
    write_calls(devmeter_home / "ledger.sqlite", [call(now - 3 * DAY, "1")])
    row = run(capsys, "report", "--by", "request").splitlines()[1]
    assert row.startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 3 * DAY)))


def test_session_labels_tell_sessions_apart() -> None:
    labels = session_labels([SESSION_A, SESSION_B, "proc-2130-1793610000", "proc-2131-1", "ab"])
    assert labels["proc-2130-1793610000"] == "proc-2130"
    assert labels["proc-2131-1"] == "proc-2131-1"  # twelve characters or fewer: whole
    assert labels[SESSION_A] == SESSION_A[:25] != labels[SESSION_B] == SESSION_B[:25]
    assert labels["ab"] == "ab"
    assert session_labels(["c94186ab-aaaa"]) == {"c94186ab-aaaa": "c94186ab"}
    assert len(set(labels.values())) == len(labels)
    # Each label is a prefix of its id alone (what `devmeter allow` and `stop` take).
    for session, label in labels.items():
        assert [s for s in labels if s.startswith(label)] == [session]


def test_dollars() -> None:
    assert format_usd(Decimal("70.4598")) == "$70.46"
    assert format_usd(Decimal("1234.5")) == "$1,234.50"
    assert format_usd(Decimal("0.003376")) == "$0.003376"
    assert format_usd(Decimal("0.0000004")) == "<$0.000001"
    assert format_usd(Decimal("0.0099999")) == "$0.01"
    assert format_usd(Decimal(0)) == "$0.00"
    assert format_usd(Decimal("-2.5")) == "-$2.50"
    assert format_usd(None) == "unpriced"


def test_since_spellings(utc: None) -> None:
    now = T0 + 40 * 60  # 09:40 UTC
    midnight = T0 - 9 * 3600
    assert parse_since("today", now) == midnight
    assert parse_since("yesterday", now) == midnight - DAY
    assert parse_since("1w", now) == now - 7 * DAY
    assert parse_since("7d", now) == now - 7 * DAY
    assert parse_since("2h", now) == now - 7200
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2026-11-01", now) == midnight - DAY
    assert parse_since("2026-11-02T08:00", now) == midnight + 8 * 3600
    with pytest.raises(reports.ReportError, match="today, yesterday, 1w"):
        parse_since("last tuesday", now)


def test_limit_on_every_grouping(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The crash: `no such column: id`.
    last = json.loads(run(capsys, "report", "--by", "request", "--limit", "4", "--json"))
    assert [r["ts"][:16] for r in last] == [
        "2026-11-02T09:04", "2026-11-02T09:05", "2026-11-03T09:00", "2026-11-03T09:01",
    ]  # fmt: skip
    for by in reports.GROUPINGS[1:]:
        rows = json.loads(run(capsys, "report", "--by", by, "--limit", "2", "--json"))
        everything = json.loads(run(capsys, "report", "--by", by, "--json"))
        assert rows == everything[:2], by
    table = run(capsys, "report", "--by", "session", "--limit", "2")
    assert "Showing the most expensive 2 rows (--limit 2)." in table
    assert main(["report", "--limit", "0"]) == 2
    assert "--limit 0 shows nothing" in capsys.readouterr().err


def test_csv_booleans_and_an_empty_csv_has_its_header(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys, "report", "--by", "request", "--csv")  # no ledger yet
    assert out == ",".join(reports.REQUEST_FIELDS) + "\n"
    write_calls(devmeter_home / "ledger.sqlite", SEED[:2])
    rows = list(csv.DictReader(io.StringIO(run(capsys, "report", "--by", "request", "--csv"))))
    assert [(r["estimated"], r["complete"]) for r in rows] == [("false", "true")] * 2
    assert run(capsys, "report", "--since", "2h", "--csv") == ",".join(reports.GROUP_FIELDS) + "\n"


def test_alerts_table_has_a_header(devmeter_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = connect(devmeter_home / "ledger.sqlite")
    conn.execute(
        "INSERT INTO alerts (ts, kind, scope, key, figure_pusd, message) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), "threshold", "day", "2026-11-02", 50 * 10**12, "today passed $50.00"),
    )
    conn.commit()
    conn.close()
    lines = run(capsys, "alerts").splitlines()
    assert lines[0].split() == ["time", "kind", "scope", "about", "figure", "message"]
    assert "threshold" in lines[1] and "$50.00" in lines[1] and "today passed $50.00" in lines[1]
    assert lines[-1] == "1 alert"


# -- hostile names -------------------------------------------------------------------------

ESCAPES = "\x1b[2J\x1b[H\x1b]0;pwned\x07"
HOSTILE = f"gpt-5{ESCAPES}\u202efake\u009b31m"


def _terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


def test_safe_text_escapes_visibly_and_caps() -> None:
    assert safe_text("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert safe_text("\u202e\u009b\udcff\x7f") == "\\u202e\\x9b\\udcff\\x7f"
    assert safe_text("x" * 1000, 10) == "x" * 9 + "\u2026"
    assert safe_text("/a/" + "b" * 50 + "/repo", 8, "tail") == "\u2026bb/repo"
    assert safe_text("plain café 日本") == "plain café 日本"


def test_hostile_names_never_reach_the_terminal(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = "m" * 1_000_000
    write_calls(
        devmeter_home / "ledger.sqlite",
        [
            call(T0, "1", model=HOSTILE, tool=f"tool{ESCAPES}", session=f"s{ESCAPES}",
                 repo=f"/src/{ESCAPES}repo"),
            call(T0 + 60, "2", model=huge, session="s2"),
        ],
    )  # fmt: skip
    conn = connect(devmeter_home / "ledger.sqlite")
    conn.execute(
        "INSERT INTO alerts (ts, kind, scope, key, figure_pusd, message) VALUES (?, ?, ?, ?, ?, ?)",
        (T0, f"loop{ESCAPES}", "session", f"s{ESCAPES}", None, f"model {HOSTILE} loops"),
    )
    conn.commit()
    conn.close()
    since = ["--since", "2026-01-01"]
    for argv in (
        *(["report", "--by", by, *since] for by in reports.GROUPINGS),
        ["report", "--savings", *since],
        ["sessions", *since],
        ["alerts", *since],
    ):
        out = run(capsys, *argv)
        assert _terminal_safe(out), argv
        if argv[1:3] not in (["--by", "day"], ["--by", "provider"]) and "--savings" not in argv:
            assert "\\x1b[2J" in out, argv  # shown, visibly
        assert max(map(len, out.splitlines())) < 1_000, argv  # not a megabyte a row
    # CSV keeps whole values (tools read it) with control characters shown, not obeyed.
    out = run(capsys, "report", "--by", "request", "--csv", *since)
    assert _terminal_safe(out)
    assert f",{safe_text(HOSTILE, None)}," in out and f",{huge}," in out
    # JSON stays exact: the same names, escaped by JSON itself.
    out = run(capsys, "report", "--by", "request", "--json", *since)
    assert _terminal_safe(out) and "\x1b" not in out
    rows = json.loads(out)
    assert rows[0]["model"] == HOSTILE and rows[1]["model"] == huge
    sessions = json.loads(run(capsys, "sessions", "--json", *since))
    assert {s["model"] for s in sessions} == {HOSTILE, huge}


def test_a_table_too_wide_to_fit_narrows_what_it_can_and_keeps_every_figure() -> None:
    table = TextTable(
        headers=["model", "path", "cost"],
        rows=[["claude-opus-4-1-20250805", "/home/dev/src/acme-api", "$1,234.56"]],
        right=frozenset({2}),
        tail=frozenset({1}),
    )
    # Text columns stop at six characters; the figure is never cut.
    assert (
        render(table, width=10)
        == "model   path         cost\nclaud\u2026  \u2026e-api  $1,234.56\n"
    )
    assert render(table) == render(table, width=200)  # room enough: unchanged


def test_the_billed_line_accounts_for_calls_whose_payer_is_unknown(
    devmeter_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A new user's ledger after `devmeter import claude-code`: the imported calls say
    # nobody's credential, so billed + covered fell short of the total with no word why.
    from dataclasses import replace

    now = time.time()
    write_calls(
        devmeter_home / "ledger.sqlite",
        [
            replace(call(now - 60, "1.25"), billing="api"),
            replace(call(now - 50, "0.50"), billing="subscription"),
            replace(call(now - 40, "2.00", tokens=(1, 2, 3, 4)), source="import"),
        ],
    )
    out = run(capsys, "report", "--by", "tool")
    assert "$3.75" in out  # the total
    assert (
        "billed $1.25 (API keys and extra usage) · covered $0.50 (list-price equivalent of "
        "subscription calls) · payer not known $2.00 (imported history, or a credential "
        "devmeter could not read)"
    ) in " ".join(out.split())


def test_who_paid_splits_billed_covered_and_the_rest_whose_payer_is_not_known() -> None:
    def row(cost: str | None, billed: str = "0", covered: str = "0") -> dict[str, object]:
        return {"cost_usd": None if cost is None else Decimal(cost),
                "billed_usd": Decimal(billed), "covered_usd": Decimal(covered)}  # fmt: skip

    rows = [row("1.25", billed="1.25"), row("0.50", covered="0.50"), row("2"), row(None)]
    assert reports.who_paid(rows) == reports.WhoPaid(Decimal("1.25"), Decimal("0.50"), Decimal(2))
    assert reports.who_paid([row("3"), row(None)]) is None  # no payer known: nothing to split
    # Every payer known: no rest (never a negative one from rounding).
    assert reports.who_paid([row("1", billed="1.000001")]).unknown == 0  # type: ignore[union-attr]


def test_the_report_and_the_dashboard_show_one_who_paid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The payer not known is worked out once, for `devmeter report` and the dashboard alike."""
    from devmeter.dashboard import pages

    paid = reports.WhoPaid(Decimal(1), Decimal(2), Decimal("3.21"))
    monkeypatch.setattr(reports, "who_paid", lambda rows: paid)
    rows = [{"key": "claude-code", "requests": 1, "input_tokens": 1, "cache_read_tokens": 0,
             "cache_write_tokens": 0, "output_tokens": 1, "cost_usd": Decimal(6),
             "billed_usd": Decimal(1), "covered_usd": Decimal(2), "unpriced": 0,
             "estimated": 0}]  # fmt: skip
    text = " ".join(reports.to_table(rows, "tool").split())
    assert "subscription calls) · payer not known $3.21 (imported history" in text
    line = pages._billed_line(rows)
    assert 'payer not known <span class="usd" data-figure="unknown" data-usd="3.21">$3.21' in line
