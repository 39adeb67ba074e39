"""Where devmeter keeps its state: platformdirs by default, one folder with DEVMETER_HOME."""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

# Windows has no mode bits to tighten: a user's profile folder is private already.
_POSIX = os.name == "posix"


@dataclass(frozen=True)
class Paths:
    config_file: Path
    data_dir: Path

    @property
    def ledger(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def ca_dir(self) -> Path:
        # mitmproxy's confdir: it writes mitmproxy-ca.pem (key + cert) and the public certs here.
        return self.data_dir / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "mitmproxy-ca-cert.pem"

    @property
    def ca_bundle(self) -> Path:
        """System roots plus devmeter's CA, for clients that take one bundle (SSL_CERT_FILE)."""
        return self.ca_dir / "bundle.pem"

    @property
    def proxy_state(self) -> Path:
        """Written by a running proxy: its address and pid, read by `env`, `run` and the tray."""
        return self.data_dir / "proxy.json"

    @property
    def loop_key(self) -> Path:
        """The key loop fingerprints are hashed with (see `read_loop_key`)."""
        return self.data_dir / "loop.key"


def paths(environ: dict[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ
    home = env.get("DEVMETER_HOME")
    if home:
        root = Path(home).expanduser().resolve()
        return Paths(config_file=root / "config.toml", data_dir=root)
    return Paths(
        config_file=Path(platformdirs.user_config_dir("devmeter")) / "config.toml",
        data_dir=Path(platformdirs.user_data_dir("devmeter")),
    )


# The folders devmeter names itself (platformdirs' data folder, mitmproxy's CA folder, a
# ledger's spool): tightened even when they exist, since a devmeter before issue 13 made
# them 0755. Any other folder that exists is the user's (DEVMETER_HOME=~) and left alone.
_OWN_DIR_NAMES = ("devmeter", "ca")
_OWN_DIR_SUFFIX = ".spool"


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) readable by the user alone.

    The ledger names every repo, branch and session you work in: the data and spool
    folders are 0700 and their files 0600, whatever the umask. A folder that already
    exists is tightened only when it is one devmeter names itself (see _OWN_DIR_NAMES):
    never a folder of the user's, such as their home with DEVMETER_HOME=~.
    """
    missing = list(itertools.takewhile(lambda p: not p.exists(), (path, *path.parents)))
    path.parent.mkdir(parents=True, exist_ok=True)  # parents keep the usual modes...
    _made_here.update(missing[1:])  # ...but are ours to tighten (the spool's first)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        if not _is_own_dir(path):
            return
    _made_here.add(path)
    if _POSIX and path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


# Folders this process made: a data folder made as the spool's parent is still ours.
_made_here: set[Path] = set()


def _is_own_dir(path: Path) -> bool:
    name = path.name
    return path in _made_here or name in _OWN_DIR_NAMES or name.endswith(_OWN_DIR_SUFFIX)


def make_private_file(path: Path) -> None:
    """Create `path` empty, or keep what it holds, with mode 0600 either way."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if _POSIX and os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write `path` (created 0600, whatever the umask) with `text`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if _POSIX and os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        f.write(text)


class KeyFileError(Exception):
    """A key or salt file devmeter keeps exists but cannot be used: unreadable, or not
    holding a key. Its text names the file and the fix."""


def load_key(path: Path, size: int, *, hex_text: bool = False) -> bytes:
    """The secret key kept in `path` (a salt, the loop key), made on first use.

    Made once: random `size` bytes, written to a private temporary file (0600) and linked
    into place, so a reader never sees half a key and two processes starting together
    both end up with the first one's. Never overwritten: every hash made with a key
    (repo labels, account ids, fingerprints) changes with it, so a file that cannot be
    read, or holds less than `size` bytes, raises `KeyFileError` instead of being
    replaced. `hex_text`: the file holds the key as hex digits and a newline (the
    export salt's format since it was introduced).
    """
    try:
        return _read_key(path, size, hex_text)
    except FileNotFoundError:
        pass
    key = os.urandom(size)
    try:
        make_private_dir(path.parent)
        if not _create_once(path, (key.hex() + "\n").encode("ascii") if hex_text else key):
            return _read_key(path, size, hex_text)  # another process made it first
    except OSError as exc:
        raise KeyFileError(
            f"devmeter: cannot create {path}: {exc.strerror or exc}. "
            f"Make {path.parent} writable by you."
        ) from exc
    return key


def load_key_or_ephemeral(path: Path, size: int, *, hex_text: bool = False) -> bytes:
    """`load_key`, or, when the file cannot be used, a key for this run only (said once in
    the log): what it hashes is then stable only within the run, which costs less than
    stopping metering over it."""
    try:
        return load_key(path, size, hex_text=hex_text)
    except KeyFileError as exc:
        log.warning("%s Using a key for this run only.", exc)
        return os.urandom(size)


def _read_key(path: Path, size: int, hex_text: bool) -> bytes:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise FileNotFoundError(str(path)) from exc  # not there: made by `load_key`
    except OSError as exc:
        raise KeyFileError(
            f"devmeter: cannot read {path}: {exc.strerror or exc}. "
            "Make it readable by you (chmod 600), or delete it to have a new one made."
        ) from exc
    try:
        key = bytes.fromhex(data.decode("ascii").strip()) if hex_text else data
    except ValueError:
        key = b""
    if len(key) < size:
        expected = f"{size * 2} hex digits" if hex_text else f"{size} bytes"
        raise KeyFileError(
            f"devmeter: {path} does not hold a key (at least {expected} expected). "
            "Delete it to have a new one made (what was hashed with the old one changes)."
        )
    return key


def _create_once(path: Path, content: bytes) -> bool:
    """Write `path` whole with `content`, 0600; False (and nothing written) if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if _POSIX and os.fstat(f.fileno()).st_mode & 0o077:
                os.fchmod(f.fileno(), 0o600)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if `path` exists: never replaces a key
        except FileExistsError:
            return False
        except OSError:
            # No hard links here (some network and FUSE file systems): exclusive create.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        return True
    finally:
        tmp.unlink(missing_ok=True)


LOOP_KEY_BYTES = 16


def read_loop_key(where: Paths) -> bytes | None:
    """The data folder's loop-fingerprint key, made (random, 0600) on first use.

    Fingerprints are stored in the ledger so a restarted proxy goes on counting a loop;
    they must hash the same across runs, yet a fingerprint of a short prompt must not be
    reversible by hashing guesses: a random key kept beside the ledger does both. None
    when it can be neither read nor made (the caller keeps a per-process key).
    """
    try:
        return load_key(where.loop_key, LOOP_KEY_BYTES)[:LOOP_KEY_BYTES]
    except KeyFileError as exc:
        log.warning("%s Loops are fingerprinted with a key for this run only.", exc)
        return None


def read_proxy_state(where: Paths) -> dict[str, object] | None:
    """The running proxy's address and pid, as it wrote them; None when there is none.

    Kept here, away from the proxy module, so that `devmeter env` and `devmeter run`
    answer without importing mitmproxy.
    """
    try:
        state = json.loads(where.proxy_state.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
