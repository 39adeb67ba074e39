"""A request-header deadline: a connection that has not sent its first request's headers
within `HEADER_TIMEOUT` seconds of connecting is closed.

mitmproxy closes a connection only after `IDLE_TIMEOUT` seconds *without any bytes*
(10 minutes; its `tcp_timeout` option in 12, a constant in 11), so a client sending its
headers a byte at a time (a stuck or hostile one, a thousand of them) holds a file
descriptor each for as long as it likes, until the proxy has none left for anyone. The
deadline covers the CONNECT, the TLS handshake and the first request's headers; a
tunnelled (not intercepted) host is past it once its CONNECT arrives. Later requests on a
kept-alive connection are covered by the idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from mitmproxy import connection, http

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 30.0  # seconds from connecting to the first request's headers
IDLE_TIMEOUT = 600  # seconds without a byte, mitmproxy's own default, set where it can be
HEADER_TIMEOUT_ENV = "DEVMETER_HEADER_TIMEOUT"  # seconds, to override HEADER_TIMEOUT


def header_timeout() -> float:
    """The deadline in seconds: `DEVMETER_HEADER_TIMEOUT` if it is a positive number."""
    raw = os.environ.get(HEADER_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else HEADER_TIMEOUT
    except ValueError:
        value = HEADER_TIMEOUT
    return value if value > 0 else HEADER_TIMEOUT


class HeaderDeadline:
    """Tracks connections still waiting for their first request's headers (the Meter calls
    these hooks); `watch` closes those past the deadline."""

    def __init__(
        self,
        intercepted: Callable[[str], bool],
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._intercepted = intercepted
        self.timeout = header_timeout() if timeout is None else timeout
        self._clock = clock
        self._waiting: dict[str, float] = {}  # client id -> when it connected
        self.closed = 0

    def client_connected(self, client: connection.Client) -> None:
        self._waiting[client.id] = self._clock()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not self._intercepted(flow.request.host.lower()):
            self._waiting.pop(flow.client_conn.id, None)  # a tunnel: its headers are in

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self._waiting:
            self._waiting.pop(flow.client_conn.id, None)

    def client_disconnected(self, client: connection.Client) -> None:
        self._waiting.pop(client.id, None)

    def overdue(self) -> list[str]:
        """Ids of the connections past the deadline, forgotten as they are returned."""
        limit = self._clock() - self.timeout
        late = [cid for cid, since in self._waiting.items() if since < limit]
        for cid in late:
            del self._waiting[cid]
        return late

    async def watch(self, connections: Callable[[], dict[object, object]]) -> None:
        """Close overdue connections, checking a few times per deadline, until cancelled."""
        period = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(period)
            late = set(self.overdue())
            if not late:
                continue
            try:
                for handler in list(connections().values()):
                    client = getattr(handler, "client", None)
                    if client is not None and client.id in late:
                        self.closed += 1
                        # mitmproxy's own inactivity close, in both 11 and 12.
                        asyncio.ensure_future(handler.on_timeout())  # type: ignore[attr-defined]
            except Exception as exc:  # never let the watchdog take the proxy down
                log.warning("devmeter: header deadline check failed: %r", exc)


def raise_file_limit(want: int = 65536) -> None:
    """Lift the soft open-file limit towards the hard one (1,024 by default on Linux):
    each client connection holds a descriptor, two when intercepted."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass  # keep what the system gave
