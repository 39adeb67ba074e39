"""Where devmeter keeps its state: platformdirs by default, one folder with DEVMETER_HOME."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

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


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) readable by the user alone, or make it so.

    The ledger names every repo, branch and session you work in: the data and spool
    folders are 0700 and their files 0600, whatever the umask.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _POSIX and path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


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


LOOP_KEY_BYTES = 16


def read_loop_key(where: Paths) -> bytes | None:
    """The data folder's loop-fingerprint key, made (random, 0600) on first use.

    Fingerprints are stored in the ledger so a restarted proxy goes on counting a loop;
    they must hash the same across runs, yet a fingerprint of a short prompt must not be
    reversible by hashing guesses: a random key kept beside the ledger does both. None
    when it can be neither read nor made (the caller keeps a per-process key).
    """
    path = where.loop_key
    try:
        make_private_dir(where.data_dir)
        key = path.read_bytes() if path.exists() else b""
        if len(key) == LOOP_KEY_BYTES:
            return key
        # Missing or damaged: a fresh key (the old fingerprints just stop matching).
        key = os.urandom(LOOP_KEY_BYTES)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        os.replace(tmp, path)
        return key
    except OSError:
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
