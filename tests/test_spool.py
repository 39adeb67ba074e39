"""The spool: rows on disk before SQLite commits them, replayed after a crash, once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devmeter.ledger import LedgerWriter, call_row
from devmeter.spool import Spool, pending, spool_dir
from tests.test_ledger import make_call


def rows(ledger: Path) -> list[tuple[float, str]]:
    conn = sqlite3.connect(ledger)
    try:
        return conn.execute("SELECT ts, session FROM calls ORDER BY ts").fetchall()
    finally:
        conn.close()


def spool_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))


def test_rows_come_back_in_order_from_the_mark_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", file_bytes=50)  # small files: the rows span several
    marks = [spool.append((i, f"session-{i}", None)) for i in range(10)]
    spool.close()
    assert len({m.file for m in marks}) > 2
    assert [row for _, row in pending(tmp_path / "s", None)] == [
        (i, f"session-{i}", None) for i in range(10)
    ]
    after_fourth = [row[0] for _, row in pending(tmp_path / "s", marks[3])]
    assert after_fourth == list(range(4, 10))
    assert [m for m, _ in pending(tmp_path / "s", None)] == marks


def test_release_deletes_only_files_wholly_behind_the_mark(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", file_bytes=100)
    marks = [spool.append((i, "x" * 40)) for i in range(6)]
    files_before = spool_files(tmp_path / "s")
    spool.release(marks[3])
    left = [row[0] for _, row in pending(tmp_path / "s", None)]
    assert 3 in left and left == sorted(left) and left[-1] == 5  # nothing past the mark lost
    assert len(spool_files(tmp_path / "s")) < len(files_before)
    spool.release(marks[-1], everything=True)
    assert spool_files(tmp_path / "s") == []
    spool.append((7, "after"))  # still usable: a new file
    assert [row for _, row in pending(tmp_path / "s", None)] == [(7, "after")]


def test_a_torn_last_line_is_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(tmp_path / "s")
    spool.append((1, "whole"))
    spool.close()
    with (tmp_path / "s" / "1.jsonl").open("ab") as f:
        f.write(b'[2,"cut sh')
    assert [row for _, row in pending(tmp_path / "s", None)] == [(1, "whole")]
    assert "unreadable row" in capsys.readouterr().err


def test_rows_spooled_but_not_committed_are_recovered_exactly_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    writer = LedgerWriter(ledger)
    for i in range(3):
        writer.add_call(make_call(1000.0 + i, "0.01", session=f"committed-{i}"))
    assert writer.flush()
    # The process dies here: two more answered calls are in the spool, not in SQLite.
    leftover = Spool(spool_dir(ledger))
    for i in range(2):
        leftover.append(call_row(make_call(2000.0 + i, "0.01", session=f"spooled-{i}")))
    leftover.close()
    del writer  # never closed, as after SIGKILL

    again = LedgerWriter(ledger)
    again.add_call(make_call(3000.0, "0.01", session="new"))
    assert again.flush()
    again.close()
    assert [s for _, s in rows(ledger)] == [
        "committed-0", "committed-1", "committed-2", "spooled-0", "spooled-1", "new"
    ]  # fmt: skip
    assert again.rows_recovered == 2
    assert spool_files(spool_dir(ledger)) == []  # a clean close leaves nothing to replay

    third = LedgerWriter(ledger)  # and nothing is replayed twice
    assert third.flush()
    third.close()
    assert len(rows(ledger)) == 6


def test_a_writer_killed_mid_load_loses_no_spooled_row(tmp_path: Path) -> None:
    """A real SIGKILL: every row add_call said was on disk is in the ledger afterwards."""
    ledger = tmp_path / "ledger.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from devmeter.ledger import LedgerWriter
        from tests.test_ledger import make_call
        writer = LedgerWriter(__import__("pathlib").Path({str(ledger)!r}))
        for i in range(3000):
            assert writer.add_call(make_call(float(i), "0.01", session=f"s{{i}}"))
            if i == 1500:
                print("halfway", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    before = len(rows(ledger)) if ledger.exists() else 0
    writer = LedgerWriter(ledger)
    assert writer.flush()
    writer.close()
    after = rows(ledger)
    assert [ts for ts, _ in after] == [float(i) for i in range(3000)]
    assert writer.rows_recovered == 3000 - before


def test_an_unwritable_spool_holds_rows_in_memory_and_says_so(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    spool_dir(ledger).write_text("not a directory")  # the spool cannot be created
    problems: list[str] = []
    writer = LedgerWriter(ledger, on_problem=problems.append)
    assert writer.add_call(make_call(1.0, "0.01")) is False
    assert writer.flush()
    writer.close()
    assert len(rows(ledger)) == 1  # still committed
    assert problems and "cannot write the spool" in problems[0]


def _disk_full_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import devmeter.spool as spool_module

    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])  # a short write, as when the disk fills

    monkeypatch.setattr(spool_module.os, "write", disk_full)


def test_a_failed_write_is_cut_back_and_the_spool_goes_on_in_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(tmp_path / "s")
    spool.append((1, "before"))
    with monkeypatch.context() as patch:
        _disk_full_for(patch)
        for _ in range(50):  # a full disk: every write fails, none leaves a file behind
            with pytest.raises(OSError):
                spool.append((2, "cut in half"))
    spool.append((3, "after"))  # space again: this row must survive replay
    spool.close()
    assert [row for _, row in pending(tmp_path / "s", None)] == [(1, "before"), (3, "after")]
    assert sorted(p.name for p in (tmp_path / "s").glob("*.jsonl")) == ["1.jsonl"]
    assert "unreadable row" not in capsys.readouterr().err  # nothing torn was left


def test_when_a_torn_row_cannot_be_cut_the_next_row_goes_to_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import devmeter.spool as spool_module

    spool = Spool(tmp_path / "s")
    spool.append((1, "before"))
    with monkeypatch.context() as patch:
        _disk_full_for(patch)

        def no_truncate(fd: int, length: int) -> None:
            raise OSError("cannot truncate")

        patch.setattr(spool_module.os, "ftruncate", no_truncate)
        for _ in range(50):
            with pytest.raises(OSError):
                spool.append((2, "cut in half"))
    spool.append((3, "after"))
    spool.close()
    assert [row for _, row in pending(tmp_path / "s", None)] == [(1, "before"), (3, "after")]
    assert "unreadable row" in capsys.readouterr().err  # the cut one, said out loud
    # One file for the torn row, one after it: not one new file per failed write.
    assert len(list((tmp_path / "s").glob("*.jsonl"))) <= 3


def test_a_second_process_cannot_write_the_same_ledger(tmp_path: Path) -> None:
    """Two writers would replay each other's spools and count calls twice: refused."""
    ledger = tmp_path / "ledger.sqlite"
    first = LedgerWriter(ledger)
    try:
        script = textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
            from pathlib import Path
            from devmeter.ledger import LedgerWriter
            from devmeter.spool import SpoolBusy
            try:
                LedgerWriter(Path({str(ledger)!r}))
            except SpoolBusy as exc:
                print(exc)
                sys.exit(3)
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 3, done.stderr
        assert f"pid {os.getpid()}" in done.stdout and "DEVMETER_HOME" in done.stdout
    finally:
        first.close()
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr  # free once the first closed


def test_a_new_writer_says_when_an_earlier_runs_spool_is_in_the_ledger(tmp_path: Path) -> None:
    """The proxy seeds budgets and quota windows from the ledger at start: it waits for
    the replay first, so a killed run's last calls count."""
    from devmeter.ledger import connect_readonly

    ledger = tmp_path / "ledger.sqlite"
    LedgerWriter(ledger).close()  # a ledger with its mark
    leftover = Spool(spool_dir(ledger))
    for i in range(200):
        leftover.append(call_row(make_call(2000.0 + i, "0.01", session=f"spooled-{i}")))
    leftover.close()

    writer = LedgerWriter(ledger)
    assert writer.wait_replayed(10)
    conn = connect_readonly(ledger)  # another reader, at once: no flush, no close
    assert conn is not None
    (count,) = conn.execute("SELECT count(*) FROM calls").fetchone()
    conn.close()
    writer.close()
    assert count == 200
