"""The dashboard's HTTP server: loopback only, one token per run, POST for changes.

Checks, in order, on every request:
- `Host` must be the exact `127.0.0.1:PORT` the URL was opened with, so a page on
  another name that resolves to 127.0.0.1 (DNS rebinding) is refused;
- the per-run token, from `?token=` (which sets an HttpOnly SameSite=Strict cookie and
  redirects to the URL without it) or from that cookie, on every page and API call;
- a state change (pause, resume, routing mode, lift a session's cap) only by POST, with
  the token in the form and an `Origin` that is this server's own.

Every page polls a fragment of itself (`?fragment=1`) and redraws in place; the server
answers 304 while its ETag (the ledger's last call and alert, and the minute) holds.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from html import escape
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from devmeter import control
from devmeter.config import Config
from devmeter.dashboard import pages
from devmeter.dashboard.findings import findings_html
from devmeter.ledger import connect_readonly
from devmeter.paths import Paths

LOOPBACK = "127.0.0.1"
MAX_FORM_BYTES = 4096


class Dashboard(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, where: Paths, config: Config, port: int = 0,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        super().__init__((LOOPBACK, port), Handler)
        self.where = where
        self.config = config
        self.clock = clock
        self.token = secrets.token_urlsafe(32)
        self.origin = f"http://{LOOPBACK}:{self.server_address[1]}"
        self.cookie_name = f"devmeter_dashboard_{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.token}"

    def token_ok(self, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode(), self.token.encode())


class Handler(BaseHTTPRequestHandler):
    server: Dashboard
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # request lines name sessions; nothing to the terminal the URL is printed on

    # --- checks --------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        return self.headers.get("Host") == self.server.origin.removeprefix("http://")

    def _cookie_token(self) -> str | None:
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except cookies.CookieError:
            return None
        morsel = jar.get(self.server.cookie_name)
        return morsel.value if morsel else None

    def _refuse(self, status: int, why: str) -> None:
        self._send(status, "text/plain; charset=utf-8", f"{why}\n".encode())

    def _send(
        self, status: int, kind: str, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        headers = {
            "Content-Type": kind,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null`
            # on the page's own form POSTs, which the Origin check then refuses.
            "Referrer-Policy": "same-origin",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
            "style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'",
            **(extra or {}),
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # --- GET -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._refuse(421, "wrong Host: open the URL `devmeter dashboard` printed")
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        offered = query.get("token", [None])[0]
        if offered is not None:
            if not self.server.token_ok(offered):
                return self._refuse(403, "wrong token: open the URL `devmeter dashboard` printed")
            rest = "&".join(
                f"{quote(k)}={quote(v)}" for k, vs in query.items() if k != "token" for v in vs
            )
            cookie = (
                f"{self.server.cookie_name}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
            )
            location = url.path + (f"?{rest}" if rest else "")
            return self._send(303, "text/plain", b"", {"Location": location, "Set-Cookie": cookie})
        if not self.server.token_ok(self._cookie_token()):
            return self._refuse(403, "no token: open the URL `devmeter dashboard` printed")
        try:
            self._page(url.path, query)
        except Exception as exc:  # a page that fails says so; the server keeps serving
            self._refuse(500, f"devmeter dashboard: could not read the ledger ({exc})")

    def _page(self, path: str, query: dict[str, list[str]]) -> None:
        server = self.server
        now = server.clock()
        form = f'<input type=hidden name=token value="{escape(server.token)}">'
        if path == "/dashboard.js":
            return self._send(200, "text/javascript", pages.SCRIPT.encode())
        state = control.load(control.control_path(server.where.data_dir))
        pinned = state.routing_mode is not None
        routing = (state.routing_mode or str(server.config.section("routing").mode), pinned)
        fragment = query.get("fragment", [""])[0] == "1"
        etag = ""
        conn = connect_readonly(server.where.ledger)
        try:
            if path == "/api/today":
                data = pages.today_data(conn, now)
                body = json.dumps(data, default=_json_default).encode()
                return self._send(200, "application/json", body)
            if fragment:
                # The page's poll: 304 while nothing it shows can have changed.
                etag = _version(conn, now)
                if self.headers.get("If-None-Match") == etag:
                    return self._send(304, "text/html; charset=utf-8", b"", {"ETag": etag})
            if path == "/":
                title, nav = "devmeter · today", pages.nav("today")
                main = pages.today_data(conn, now)["html"]
                poll = "/?fragment=1"
            elif path == "/period":
                by = query.get("by", ["repo"])[0]
                try:
                    chosen = pages.period(
                        query.get("p", ["7d"])[0],
                        now,
                        query.get("from", [""])[0],
                        query.get("to", [""])[0],
                    )
                except pages.PageError as exc:
                    return self._refuse(400, f"devmeter dashboard: {exc}")
                if by not in pages.PERIOD_BYS:
                    return self._refuse(400, "devmeter dashboard: by= is repo, model or tool")
                title = f"devmeter · {chosen.name}"
                nav = pages.nav(chosen.name, chosen)
                main = pages.period_html(conn, chosen, by)
                poll = f"/period?{chosen.query(by)}&fragment=1"
            elif path == "/findings":
                days = query.get("days", ["1"])[0]
                shown = int(days) if days in ("1", "7", "30") else 1
                title, nav = "devmeter · secrets", pages.nav("findings")
                main = findings_html(conn, now, shown, str(server.where.config_file))
                poll = f"/findings?days={shown}&fragment=1"
            elif path == "/session":
                session = query.get("id", [""])[0]
                title, nav = "devmeter · session", pages.nav("")
                main = pages.session_html(conn, session, form)
                poll = f"/session?id={quote(session)}&fragment=1"
            else:
                return self._refuse(404, "not found")
        finally:
            if conn is not None:
                conn.close()
        if fragment:
            return self._send(200, "text/html; charset=utf-8", main.encode(), {"ETag": etag})
        html = pages.layout(title, nav, main, form, state.paused, poll, routing)
        self._send(200, "text/html; charset=utf-8", html.encode())

    do_HEAD = do_GET

    # --- POST ----------------------------------------------------------------------------

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._refuse(421, "wrong Host")
        if self.headers.get("Origin") != self.server.origin:
            return self._refuse(403, "cross-origin request refused")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._refuse(400, "bad Content-Length")
        if not 0 <= length <= MAX_FORM_BYTES:
            return self._refuse(413, "form too large")
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if not self.server.token_ok(form.get("token", [None])[0]):
            return self._refuse(403, "no or wrong token")
        path = urlsplit(self.path).path
        where = self.server.where
        back = "/"
        if path in ("/api/pause", "/api/resume"):
            control.update(control.control_path(where.data_dir), paused=path == "/api/pause")
            back = _back(self.headers.get("Referer"), self.server.origin)
        elif path == "/api/routing":
            mode = form.get("mode", [""])[0]
            if mode not in (*control.ROUTING_MODES, "config"):
                return self._refuse(400, "mode is off, shadow, on or config")
            # As `devmeter routing MODE` does; "config": the config file's mode again.
            control.update(
                control.control_path(where.data_dir),
                routing_mode=None if mode == "config" else mode,
            )
            back = _back(self.headers.get("Referer"), self.server.origin)
        elif path == "/api/allow":
            from devmeter import guard_control

            session = form.get("session", [""])[0]
            try:
                key = guard_control.resolve_session(where, session)
            except guard_control.TargetError as exc:
                return self._refuse(404, str(exc))
            code, message = guard_control.allow(
                where, self.server.config, "session", key, None, self.server.clock()
            )
            if code != 0:
                return self._refuse(409, message)
            back = f"/session?id={quote(key)}"
        else:
            return self._refuse(404, "not found")
        self._send(303, "text/plain", b"", {"Location": back})


def _back(referer: str | None, origin: str) -> str:
    """The page a form was sent from, when it is one of ours; else the today view."""
    url = urlsplit(referer or "")
    if f"{url.scheme}://{url.netloc}" != origin or not url.path.startswith("/"):
        return "/"
    return url.path + (f"?{url.query}" if url.query else "")


def _version(conn: sqlite3.Connection | None, now: float) -> str:
    """An ETag for a page's poll: the last call and alert, and the minute (live
    sessions and burn rates age; a period that includes today ends at midnight)."""
    calls = alerts = 0
    if conn is not None:
        (calls,) = conn.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()
        (alerts,) = conn.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()
    return f'"{calls}.{alerts}.{int(now // 60)}"'


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(round(value, 12))
    raise TypeError(type(value).__name__)
