"""A real `devmeter proxy` process for end-to-end tests, mapped to a fake upstream."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmeter.money import PICO
from devmeter.paths import paths
from devmeter.providers import INTERCEPT_HOSTS
from devmeter.shellenv import proxy_environment

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

REPO_ROOT = Path(__file__).resolve().parent.parent
# Until proxy.json names the new proxy. A few seconds on a quiet machine; 33 s was measured
# on a loaded 2-core machine (load 10), where 30 s failed tests for slowness alone.
START_SECONDS = 90
# A WebSocket's opening through the proxy (CONNECT, TLS, the upgrade to the fake upstream)
# and each turn: a few hundred ms on a quiet machine; on a loaded 2-core machine (load 10)
# several times longer, and 10 s timed out in a handshake. A real hang still fails.
SOCKET_SECONDS = 60


@dataclass
class RunningProxy:
    proc: subprocess.Popen[bytes]
    home: Path
    host: str
    port: int
    log: Path
    _seen_id: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bundle(self) -> Path:
        return paths({"DEVMETER_HOME": str(self.home)}).ca_bundle

    @property
    def ca_cert(self) -> Path:
        return paths({"DEVMETER_HOME": str(self.home)}).ca_cert

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment `devmeter env` would give a client of this proxy."""
        env = dict(os.environ if base is None else base)
        env["DEVMETER_HOME"] = str(self.home)
        env.update(proxy_environment(paths(env), self.host, self.port))
        return env

    def responses_socket(
        self, session: str, headers: dict[str, str] | None = None, timeout: float = SOCKET_SECONDS
    ) -> ClientConnection:
        """A Responses WebSocket to api.openai.com through this proxy, as Codex opens one,
        in `session` (X-Devmeter-Session); `headers` add to the handshake's."""
        from websockets.sync.client import connect

        return connect(
            "wss://api.openai.com/v1/responses",
            ssl=ssl.create_default_context(cafile=str(self.bundle)),
            proxy=self.url,
            additional_headers={
                "X-Devmeter-Session": session,
                "Authorization": "Bearer sk-t",
                **(headers or {}),
            },  # fmt: skip
            open_timeout=timeout,
        )

    def rows(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        ledger = self.home / "ledger.sqlite"
        if not ledger.exists():
            return []
        conn = sqlite3.connect(f"{ledger.as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(f"SELECT * FROM calls WHERE {where} ORDER BY id", params).fetchall()
        except sqlite3.OperationalError:
            return []  # the proxy has not created its tables yet
        finally:
            conn.close()
        result = []
        for row in rows:
            item = dict(row)
            for money in ("cost", "alt_cost"):
                pusd = item[f"{money}_pusd"]
                item[f"{money}_usd"] = None if pusd is None else Decimal(pusd) / PICO
            result.append(item)
        return result

    def new_calls(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for `count` rows written since the last call, and return them."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows("id > ?", (self._seen_id,))
            if len(rows) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if len(rows) < count:
            raise AssertionError(
                f"expected {count} new ledger rows, got {len(rows)}: {rows}\n"
                f"proxy log:\n{self.log.read_text(errors='replace')[-4000:]}"
            )
        if rows:
            self._seen_id = rows[-1]["id"]
        return rows

    def skip_existing(self) -> None:
        rows = self.rows()
        self._seen_id = rows[-1]["id"] if rows else 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_proxy(
    home: Path,
    upstream_url: str | None,
    hosts: tuple[str, ...] = INTERCEPT_HOSTS,
    extra_args: tuple[str, ...] = (),
    python: str = sys.executable,
    launcher: tuple[str, ...] | None = None,
    env: dict[str, str] | None = None,
) -> RunningProxy:
    """Start `devmeter proxy` on a free port with every provider host mapped to the upstream.

    `launcher` replaces `python -m devmeter` (e.g. `python -c CODE` that patches devmeter
    first); `env` adds to the proxy's environment.
    """
    home.mkdir(parents=True, exist_ok=True)
    args = [*(launcher or (python, "-m", "devmeter")), "proxy", "--listen", "127.0.0.1:0"]
    if upstream_url:
        for host in hosts:
            args += ["--upstream", f"{host}={upstream_url}"]
    args += list(extra_args)
    full_env = dict(os.environ, DEVMETER_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
    state = home / "proxy.json"
    state.unlink(missing_ok=True)
    log = home / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if state.exists():
            info = json.loads(state.read_text())
            if info.get("pid") == proc.pid:
                return RunningProxy(proc, home, info["host"], int(info["port"]), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"devmeter proxy did not start:\n{log.read_text(errors='replace')}")
