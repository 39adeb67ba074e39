"""`devmeter import cursor-csv`: Cursor's usage export as exact, idempotent ledger rows."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from devmeter.importers import CursorCSVError, import_cursor_csv, read_cursor_csv
from devmeter.money import from_pusd
from devmeter.pricing import price
from devmeter.usage import Usage

FIXTURES = Path(__file__).parent / "fixtures" / "cursor"
HEADER = (
    "Date,Kind,Model,Max Mode,Input (w/ Cache Write),Input (w/o Cache Write),Cache Read,"
    "Output Tokens,Total Tokens,Cost\n"
)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


def rows(path: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    found = [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY ts, id")]
    conn.close()
    return found


def write_csv(tmp_path: Path, text: str, name: str = "usage.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_import_the_dashboard_export(ledger_path: Path) -> None:
    summary = import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv")
    assert (summary.rows, summary.imported, summary.duplicates, summary.bad) == (6, 6, 0, ())
    assert summary.unpriced == 1 and summary.unpriced_models == ("auto",)
    included, billed, gpt, errored, auto, composer = rows(ledger_path)

    # Included: priced at list price, and price_source says so.
    assert included["tool"] == "cursor" and included["endpoint"] == "cursor.import"
    assert included["provider"] == "anthropic"
    assert included["requested_model"] == "claude-4.5-sonnet-thinking"
    assert included["model"] == "claude-sonnet-4-5"
    assert included["ts"] == ts("2026-03-02T09:15:04.120")
    tokens = (included["input_tokens"], included["cache_write_tokens"],
              included["cache_read_tokens"], included["output_tokens"])  # fmt: skip
    assert tokens == (3000, 12000, 250000, 1800)
    assert included["estimated"] == 0
    expected = price(
        "anthropic",
        "claude-sonnet-4-5",
        Usage(input_tokens=3000, cache_write_tokens=12000, cache_read_tokens=250000,
              output_tokens=1800),
        when=datetime.fromtimestamp(ts("2026-03-02T09:15:04.120"), UTC),
    )  # fmt: skip
    assert from_pusd(included["cost_pusd"]) == expected.cost_usd  # type: ignore[arg-type]
    assert included["price_source"] == f"{expected.source} list price (Cursor: Included)"

    # A cost Cursor billed is kept as billed.
    assert from_pusd(billed["cost_pusd"]) == Decimal("0.16")  # type: ignore[arg-type]
    assert billed["price_source"] == "cursor csv (Usage-based)"
    assert from_pusd(gpt["cost_pusd"]) == Decimal("0.09")  # type: ignore[arg-type]
    assert gpt["provider"] == "openai"

    # Not charged: $0, and the kind is kept as the row's error.
    assert errored["cost_pusd"] == 0
    assert errored["error"] == "Cursor: Errored, Not Charged"

    # "auto" names no model anyone prices: unpriced, flagged, not $0.
    assert auto["cost_pusd"] is None and auto["provider"] == "cursor"
    # Cursor's own model, from genai-prices' cursor provider.
    assert composer["provider"] == "cursor" and composer["cost_pusd"] > 0  # type: ignore[operator]
    assert composer["price_source"].endswith("list price (Cursor: Free)")  # type: ignore[union-attr]

    text = summary.describe()
    assert text.startswith("imported 6 Cursor calls from ")
    assert "1 rows have no cost" in text and "auto" in text


def test_importing_twice_adds_nothing(ledger_path: Path) -> None:
    import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv")
    again = import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv")
    assert (again.imported, again.duplicates) == (0, 6)
    assert len(rows(ledger_path)) == 6
    assert "6 rows were already in the ledger" in again.describe()


def test_an_overlapping_export_adds_only_new_rows(ledger_path: Path, tmp_path: Path) -> None:
    import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv")
    lines = (FIXTURES / "usage_export.csv").read_text().splitlines()
    newer = lines[0].split(",")
    extra = ",".join(
        ['"2026-03-03T08:00:00.000Z"', '""', '""', '""', '"Usage-based"', '"o3"', '"No"',
         '"0"', '"1000"', '"0"', '"100"', '"1100"', '"$0.01"']
    )  # fmt: skip
    assert len(extra.split(",")) == len(newer)
    path = write_csv(tmp_path, "\n".join([*lines[:4], extra]) + "\n")
    summary = import_cursor_csv(ledger_path, path)
    assert (summary.imported, summary.duplicates) == (1, 3)
    assert len(rows(ledger_path)) == 7


def test_identical_rows_in_one_export_are_all_kept(ledger_path: Path, tmp_path: Path) -> None:
    row = "2026-03-02T09:00:00Z,Included,gpt-5,No,0,100,0,10,110,Included\n"
    path = write_csv(tmp_path, HEADER + row + row)
    assert import_cursor_csv(ledger_path, path).imported == 2
    again = import_cursor_csv(ledger_path, path)
    assert (again.imported, again.duplicates) == (0, 2)
    parsed, _, _, _ = read_cursor_csv(path.read_text())
    assert parsed[0].import_key != parsed[1].import_key  # deterministic, one per row
    assert [r.import_key for r in read_cursor_csv(path.read_text())[0]] == [
        r.import_key for r in parsed
    ]


def test_an_older_export_with_requests_and_cost_dollars(ledger_path: Path) -> None:
    summary = import_cursor_csv(ledger_path, FIXTURES / "usage_export_old.csv")
    assert (summary.imported, summary.bad) == (2, ())
    billed, included = rows(ledger_path)
    assert billed["ts"] == ts("2025-06-10T14:03:22")  # a date without a zone is UTC
    assert from_pusd(billed["cost_pusd"]) == Decimal("0.08")  # type: ignore[arg-type]
    assert billed["price_source"] == "cursor csv (2 requests)"
    assert billed["model"] == "claude-sonnet-4-0"
    # No tokens and no figure: nothing to price it by, so unpriced rather than $0.
    assert included["cost_pusd"] is None
    assert summary.unpriced == 1


def test_cache_write_column_that_includes_plain_input() -> None:
    rows_text = [
        # Total = w/ + cache read + output: this export's "w/" column is all input.
        "2026-03-02T09:00:00Z,Included,gpt-5,No,1200,1000,5000,300,6500,0.01\n",
        # Total = w/ + w/o + cache read + output: the columns are disjoint.
        "2026-03-02T09:01:00Z,Included,gpt-5,No,200,1000,5000,300,6500,0.01\n",
        # Neither sum: the documented (disjoint) reading.
        "2026-03-02T09:02:00Z,Included,gpt-5,No,1200,1000,5000,300,99,0.01\n",
    ]
    parsed, bad, _, _ = read_cursor_csv(HEADER + "".join(rows_text))
    assert not bad
    split = [(r.call.usage.input_tokens, r.call.usage.cache_write_tokens) for r in parsed]
    assert split == [(1000, 200), (1000, 200), (1000, 1200)]


def test_headers_are_matched_case_insensitively() -> None:
    header = "DATE,model,INPUT (W/O CACHE WRITE),output,cost\n"
    text = header + "2026-03-02 09:00:00,o3,1000,50,$1,000.50\n"
    # A thousands separator inside an unquoted field splits it: that row is bad, said so.
    parsed, bad, count, _ = read_cursor_csv(text)
    assert count == 1 and not parsed and bad[0].line == 2 and "has 6 fields" in bad[0].reason
    text = header + '2026-03-02 09:00:00,o3,"1,000",50,"$1,000.50"\n'
    [row], bad, _, _ = read_cursor_csv(text)
    assert not bad
    assert row.call.usage.input_tokens == 1000 and row.call.cost_usd == Decimal("1000.50")


def test_bad_rows_are_skipped_by_line_and_reason(ledger_path: Path, tmp_path: Path) -> None:
    text = (
        HEADER
        + "2026-03-02T09:00:00Z,Included,gpt-5,No,0,100,0,10,110,Included\n"
        + "yesterday,Included,gpt-5,No,0,100,0,10,110,Included\n"
        + "2026-03-02T09:01:00Z,Included,gpt-5,No,0,lots,0,10,110,Included\n"
        + "\n"
        + '2026-03-02T09:02:00Z,Included,"gpt-5\nwith a newline",No,0,-5,0,10,110,Included\n'
        + "2026-03-02T09:03:00Z,Included,gpt-5\n"
        + "2026-03-02T09:04:00Z,Included,gpt-5,No,0,1.5,0,10,110,Included\n"
        + "2026-03-02T09:05:00Z,Included,gpt-5,No,0,100,0,10,110,$0.02\n"
    )
    summary = import_cursor_csv(ledger_path, write_csv(tmp_path, text))
    assert summary.imported == 2 and summary.rows == 7
    assert [(b.line, b.reason) for b in summary.bad] == [
        (3, "Date 'yesterday' is not a date"),
        (4, "Input (w/o Cache Write) is 'lots', not a number"),
        (6, "Input (w/o Cache Write) is '-5', not a whole number of tokens"),
        (8, "has 3 fields, the header has 10"),
        (9, "Input (w/o Cache Write) is '1.5', not a whole number of tokens"),
    ]
    text = summary.describe()
    assert "! 5 bad lines skipped:" in text and "line 8: has 3 fields" in text


def test_not_a_cursor_export_names_what_is_missing_and_found(ledger_path: Path) -> None:
    with pytest.raises(CursorCSVError) as err:
        import_cursor_csv(ledger_path, FIXTURES / "not_cursor.csv")
    message = str(err.value)
    assert "is not a Cursor usage export: missing column(s) Date, Model, one of" in message
    assert "found 'Transaction Date', 'Description', 'Amount'" in message
    assert not ledger_path.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"\n \n", "is empty"),
        (b"PK\x03\x04\x00\x00binary", "not a CSV file"),
    ],
)
def test_unusable_files(ledger_path: Path, tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "usage.csv"
    path.write_bytes(content)
    with pytest.raises(CursorCSVError, match=problem):
        import_cursor_csv(ledger_path, path)


def test_missing_file(ledger_path: Path, tmp_path: Path) -> None:
    with pytest.raises(CursorCSVError, match="cannot read .*nope.csv: No such file"):
        import_cursor_csv(ledger_path, tmp_path / "nope.csv")


def test_header_only(ledger_path: Path, tmp_path: Path) -> None:
    summary = import_cursor_csv(ledger_path, write_csv(tmp_path, HEADER))
    assert (summary.rows, summary.imported) == (0, 0)
    assert "no usage rows" in summary.describe()


def test_dry_run_writes_nothing(ledger_path: Path) -> None:
    summary = import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv", dry_run=True)
    assert summary.imported == 6 and summary.describe().startswith("would import 6")
    assert not ledger_path.exists()
    import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv")
    again = import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv", dry_run=True)
    assert (again.imported, again.duplicates) == (0, 6)


def test_team_export_is_flagged(tmp_path: Path, ledger_path: Path) -> None:
    text = (
        "Date,User,Kind,Model,Input (w/o Cache Write),Output Tokens,Cost\n"
        "2026-03-02T09:00:00Z,a@example.com,Included,gpt-5,100,10,0.01\n"
        "2026-03-02T09:01:00Z,b@example.com,Included,gpt-5,100,10,0.01\n"
    )
    summary = import_cursor_csv(ledger_path, write_csv(tmp_path, text))
    assert summary.users == 2 and "team export with 2 users" in summary.describe()
    assert "example.com" not in str(rows(ledger_path))  # the user is never stored


def test_summary_as_dict(ledger_path: Path) -> None:
    summary = import_cursor_csv(ledger_path, FIXTURES / "usage_export.csv")
    assert summary.as_dict()["imported"] == 6
    assert summary.as_dict()["bad_lines"] == []


def test_proxied_days_are_not_counted_twice(ledger_path: Path, tmp_path: Path) -> None:
    """Cursor calls the proxy metered live (estimates) and the export's rows for them:
    the live rows stay, the export adds only the calls the proxy did not see."""
    from devmeter.ledger import write_calls
    from devmeter.usage import Attribution, Call

    def live(at: str, model: str) -> Call:
        return Call(
            ts=ts(at), provider="openai", endpoint="cursor.chat", host="api2.cursor.sh",
            requested_model=model, model=model, attribution=Attribution(tool="cursor"),
            usage=Usage(input_tokens=90, output_tokens=12, estimated=True),
            cost_usd=Decimal("0.001"), price_source="x", status=200,
        )  # fmt: skip

    # Two calls proxied at 09:00 and 09:00:30; the export also has one at 15:00 (Cursor
    # was started without the proxy then).
    write_calls(
        ledger_path, [live("2026-03-02T09:00:01", "gpt-5"), live("2026-03-02T09:00:31", "gpt-5")]
    )
    path = write_csv(
        tmp_path,
        HEADER
        + "2026-03-02T09:00:00Z,Included,gpt-5,No,0,100,0,10,110,Included\n"
        + "2026-03-02T09:00:30Z,Included,gpt-5,No,0,100,0,10,110,Included\n"
        + "2026-03-02T15:00:00Z,Included,gpt-5,No,0,100,0,10,110,Included\n",
    )
    summary = import_cursor_csv(ledger_path, path)
    assert (summary.imported, summary.live, summary.duplicates) == (1, 2, 0)
    assert "2 rows were already metered live" in summary.describe()
    got = rows(ledger_path)
    assert [(r["endpoint"], r["source"]) for r in got] == [
        ("cursor.chat", None), ("cursor.chat", None), ("cursor.import", "import"),
    ]  # fmt: skip
    assert got[2]["import_key"].startswith("cursor-csv:")
    again = import_cursor_csv(ledger_path, path)
    assert (again.imported, again.live, again.duplicates) == (0, 2, 1)
    assert len(rows(ledger_path)) == 3
