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
from devmeter.spool import CAN_MAP, Mark, Spool, pending, spool_dir
from tests.test_ledger import make_call


def rows(ledger: Path) -> list[tuple[float, str]]:
    conn = sqlite3.connect(ledger)
    try:
        return conn.execute("SELECT ts, session FROM calls ORDER BY ts").fetchall()
    finally:
        conn.close()


def spool_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))


@pytest.mark.parametrize("mapped", [True, False])
def test_rows_come_back_in_order_from_the_mark_on(tmp_path: Path, mapped: bool) -> None:
    spool = Spool(tmp_path / "s", file_bytes=50, mapped=mapped)  # the rows span several files
    marks = [spool.append((i, f"session-{i}", None)) for i in range(10)]
    spool.close()
    assert len({m.file for m in marks}) > 2
    assert [row for _, row in pending(tmp_path / "s", None)] == [
        (i, f"session-{i}", None) for i in range(10)
    ]
    after_fourth = [row[0] for _, row in pending(tmp_path / "s", marks[3])]
    assert after_fourth == list(range(4, 10))
    assert [m for m, _ in pending(tmp_path / "s", None)] == marks


def test_replay_never_opens_this_runs_own_files(tmp_path: Path) -> None:
    # The replay at start runs beside this run's first rows: a file this run dropped
    # meanwhile (a full disk) made it report "cannot read the spool" and keep an earlier
    # run's rows out of the ledger. Files from `before` on are not opened at all.
    spool = Spool(tmp_path / "s", file_bytes=50, mapped=False)
    marks = [spool.append((i, f"session-{i}", None)) for i in range(10)]
    spool.close()
    cut = marks[5].file  # say this run began there
    for number in {m.file for m in marks if m.file >= cut}:
        (tmp_path / "s" / f"{number}.jsonl").unlink()
    (tmp_path / "s" / f"{cut}.jsonl").mkdir()  # what opening it would trip over
    earlier = [row[0] for m, row in pending(tmp_path / "s", None, before=cut)]
    assert earlier == [i for i, m in enumerate(marks) if m.file < cut] and earlier


@pytest.mark.parametrize("mapped", [True, False])
def test_release_deletes_only_files_wholly_behind_the_mark(tmp_path: Path, mapped: bool) -> None:
    spool = Spool(tmp_path / "s", file_bytes=100, mapped=mapped)
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


@pytest.mark.parametrize("mapped", [True, False])
def test_a_torn_last_line_is_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mapped: bool
) -> None:
    spool = Spool(tmp_path / "s", mapped=mapped)
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
    spool = Spool(tmp_path / "s", mapped=False)  # the path that writes each row
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

    spool = Spool(tmp_path / "s", mapped=False)  # the path that writes each row
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


needs_map = pytest.mark.skipif(not CAN_MAP, reason="no posix_fallocate: rows are written")


@needs_map
def test_a_mapped_file_left_by_a_killed_run_replays_every_row_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed without closing: the file keeps its reserved, zeroed tail; the rows before
    it come back (marks included) and the tail is not read as a torn row."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from pathlib import Path
        from devmeter.spool import Spool
        spool = Spool(Path({str(tmp_path / "s")!r}), file_bytes=4096)
        assert spool.mapped
        for i in range(100):
            print(tuple(spool.append((i, "x" * 50))), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    marks = [eval(line) for line in done.stdout.splitlines()]  # (file, offset) tuples
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "s").glob("*.jsonl")}
    assert sizes[f"{marks[-1][0]}.jsonl"] == 4096  # the last file: its zeroed tail is there
    replayed = list(pending(tmp_path / "s", None))
    assert [row for _, row in replayed] == [(i, "x" * 50) for i in range(100)]
    assert [tuple(mark) for mark, _ in replayed] == marks
    assert [row[0] for _, row in pending(tmp_path / "s", Mark(*marks[41]))] == list(range(42, 100))
    assert "unreadable" not in capsys.readouterr().err


@needs_map
def test_a_mapped_row_cut_short_by_a_kill_is_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(tmp_path / "s", file_bytes=4096)
    spool.append((1, "whole"))
    with (tmp_path / "s" / "1.jsonl").open("r+b") as f:  # what a kill mid-copy leaves
        f.seek(len(b'[1,"whole"]\n'))
        f.write(b'[2,"cut sh')
    assert [row for _, row in pending(tmp_path / "s", None)] == [(1, "whole")]
    assert "unreadable row" in capsys.readouterr().err
    spool.close()


@needs_map
def test_a_closed_mapped_spool_ends_at_its_last_row(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    assert spool.mapped
    marks = [spool.append((i, "row")) for i in range(3)]
    spool.close()
    assert (tmp_path / "s" / "1.jsonl").stat().st_size == marks[-1].offset
    assert (tmp_path / "s" / "1.jsonl").read_bytes().count(b"\n") == 3


@needs_map
def test_a_row_longer_than_a_file_gets_a_file_of_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", file_bytes=64)
    first = spool.append((1, "short"))
    long = spool.append((2, "y" * 500))
    after = spool.append((3, "short"))
    spool.close()
    assert first.file < long.file < after.file
    assert [row[0] for _, row in pending(tmp_path / "s", None)] == [1, 2, 3]


@needs_map
def test_a_full_disk_when_reserving_holds_the_row_and_the_spool_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No space to reserve the next file: append raises OSError (the writer holds the
    row in memory and says so), leaves no file behind, and tries again next row."""
    import errno

    import devmeter.spool as spool_module

    ledger = tmp_path / "ledger.sqlite"
    problems: list[str] = []
    writer = LedgerWriter(ledger, on_problem=problems.append)
    real = os.posix_fallocate

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(spool_module.os, "posix_fallocate", full)
        writer._spool._abandon()  # as when the current file is full  # type: ignore[union-attr]
        assert writer.add_call(make_call(1.0, "0.01", session="held")) is False
        assert spool_files(spool_dir(ledger)) == []
    assert os.posix_fallocate is real
    assert writer.add_call(make_call(2.0, "0.01", session="spooled")) is True
    assert writer._spool is not None and writer._spool.mapped  # still mapping
    assert writer.flush()
    writer.close()
    assert [s for _, s in rows(ledger)] == ["held", "spooled"]
    assert problems and "cannot write the spool" in problems[0]


def test_a_file_system_that_cannot_reserve_falls_back_to_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import devmeter.spool as spool_module

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(spool_module.os, "posix_fallocate", unsupported, raising=False)
    spool = Spool(tmp_path / "s", mapped=True)
    marks = [spool.append((i, "row")) for i in range(3)]
    assert not spool.mapped
    spool.close()
    assert [row[0] for _, row in pending(tmp_path / "s", None)] == [0, 1, 2]
    assert (tmp_path / "s" / "1.jsonl").stat().st_size == marks[-1].offset
