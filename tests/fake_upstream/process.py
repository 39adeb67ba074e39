"""`FakeUpstreamProcess`: the fake upstream in its own process, scripted over ``/_fake/*``.

For benchmarks, where the server must not share the GIL with the code being measured::

    with FakeUpstreamProcess("--no-websocket") as up:
        up.set_defaults(delay_ms=5)
        ...  # point the proxy at up.url
        print(up.requests()[-1]["model"])
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class FakeUpstreamProcess:
    def __init__(self, *args: str, python: str = sys.executable, timeout: float = 15.0) -> None:
        self.args = args
        self.python = python
        self.timeout = timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeUpstreamProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-upstream-")
        port_file = Path(self._tmp.name) / "port"
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "tests.fake_upstream",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *self.args,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake upstream exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("fake upstream did not write its port file")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeUpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def requests(self) -> list[dict[str, Any]]:
        return self.control("GET", "/_fake/requests")

    def sent_events(self) -> list[dict[str, Any]]:
        return self.control("GET", "/_fake/events")

    def set_defaults(self, **directives: Any) -> dict[str, Any]:
        return self.control("POST", "/_fake/defaults", directives)

    def set_next(self, path: str | None = None, **directives: Any) -> None:
        self.control("POST", "/_fake/next", {**directives, "path": path})

    def reset(self) -> None:
        self.control("POST", "/_fake/reset", {})
