"""One helper keeps every salt and key devmeter hashes with (paths.load_key): made once,
0600, never replaced, and an existing user's files read exactly as they are."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from devmeter import billing
from devmeter.export import counters
from devmeter.paths import KeyFileError, load_key, load_key_or_ephemeral, paths, read_loop_key
from devmeter.secrets import inspector

POSIX = os.name == "posix"


def test_existing_salt_files_are_read_as_they_are(tmp_path: Path) -> None:
    # The formats each module wrote before they shared one helper.
    export_salt = bytes(range(32))
    (tmp_path / "export_salt").write_text(export_salt.hex() + "\n", encoding="ascii")
    account_salt = os.urandom(32)
    (tmp_path / "account-salt").write_bytes(account_salt)
    secrets_salt = os.urandom(32)
    (tmp_path / "secrets.salt").write_bytes(secrets_salt)
    loop_key = os.urandom(16)
    (tmp_path / "loop.key").write_bytes(loop_key)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    assert counters.load_salt(tmp_path) == export_salt
    assert billing.load_salt(tmp_path) == account_salt
    assert inspector.load_salt(tmp_path) == secrets_salt
    assert read_loop_key(paths({"DEVMETER_HOME": str(tmp_path)})) == loop_key
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_key_is_made_once_private_and_whole(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        key = load_key(tmp_path / "data" / "k.salt", 32)
    finally:
        os.umask(old)
    path = tmp_path / "data" / "k.salt"
    assert len(key) == 32 and path.read_bytes() == key
    if POSIX:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path, 32) == key
    assert [p.name for p in path.parent.iterdir()] == ["k.salt"]  # no temporary left

    text = load_key(tmp_path / "hex", 32, hex_text=True)
    assert (tmp_path / "hex").read_text(encoding="ascii") == text.hex() + "\n"


def test_processes_starting_together_share_the_first_key(tmp_path: Path) -> None:
    path = tmp_path / "shared.salt"
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        keys.append(load_key(path, 32))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and set(keys) == {path.read_bytes()}


def test_a_damaged_key_is_never_replaced_and_the_error_says_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets.salt"
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError) as raised:
        load_key(path, 32)
    assert str(path) in str(raised.value) and "Delete it" in str(raised.value)

    with caplog.at_level(logging.WARNING, logger="devmeter.paths"):
        one, two = inspector.load_salt(tmp_path), inspector.load_salt(tmp_path)
    assert len(one) == 32 and one != two  # a key for this run only, each time asked
    assert path.read_bytes() == b"short"
    assert "for this run only" in caplog.text and str(path) in caplog.text

    (tmp_path / "export_salt").write_text("not hex\n")
    with pytest.raises(KeyFileError, match="64 hex digits"):
        load_key(tmp_path / "export_salt", 32, hex_text=True)


def test_an_unreadable_key_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "account-salt"
    path.mkdir()  # unreadable as a file, even for root
    with pytest.raises(KeyFileError, match="cannot read .*account-salt.*readable by you"):
        load_key(path, 32)
    assert len(load_key_or_ephemeral(path, 32)) == 32


def test_a_key_that_cannot_be_made_says_where(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(KeyFileError, match="cannot create .*file/home/loop.key"):
        load_key(blocked / "home" / "loop.key", 16)
    assert read_loop_key(paths({"DEVMETER_HOME": str(blocked / "home")})) is None


@pytest.mark.skipif(not POSIX, reason="mode bits")
def test_a_folder_of_the_users_is_never_tightened(tmp_path: Path) -> None:
    # DEVMETER_HOME=~ : devmeter's files go in the user's home, which must stay as it was.
    home = tmp_path / "me"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    where = paths({"DEVMETER_HOME": str(home)})
    assert read_loop_key(where) is not None  # makes the data folder (it exists)
    from devmeter.paths import make_private_dir

    make_private_dir(where.data_dir)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    assert stat.S_IMODE(where.loop_key.stat().st_mode) == 0o600

    # What devmeter makes itself is private, whatever the umask, and so is a folder it
    # names itself that an older devmeter left 0755.
    old = os.umask(0o000)
    try:
        make_private_dir(home / "fresh")
    finally:
        os.umask(old)
    assert stat.S_IMODE((home / "fresh").stat().st_mode) == 0o700
    for own in ("devmeter", "ca", "ledger.sqlite.spool"):
        (home / own).mkdir(mode=0o755)
        os.chmod(home / own, 0o755)
        make_private_dir(home / own)
        assert stat.S_IMODE((home / own).stat().st_mode) == 0o700, own
