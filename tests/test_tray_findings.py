"""Secret findings in the tray: today's count in the tooltip, the latest one (kind, masked
preview, repo, action) in the menu, a click that opens the dashboard's Secrets page."""

from __future__ import annotations

import http.client
import sqlite3
import time
import urllib.parse
from typing import Any

from devmeter import control
from devmeter.clock import local_midnight
from devmeter.ledger import write_calls
from devmeter.tray.menu import MenuItem, build_menu
from devmeter.tray.snapshot import snapshot
from tests.secrets_corpus import PLANTED
from tests.test_dashboard_findings import record_findings
from tests.test_tray_app import DAY, NOW, app_for, call, click, read, where  # noqa: F401 - fixtures


def all_text(items: list[MenuItem]) -> str:
    return "\n".join(i.text + "\n" + all_text(list(i.submenu)) for i in items)


def test_todays_findings_are_counted_and_the_latest_is_shown_masked(
    where: Any,  # noqa: F811
) -> None:
    now = NOW  # noon: "today" is never a few seconds old
    record_findings(where.data_dir, now - 2 * DAY, repo="/src/billing")  # not today's
    write_calls(where.ledger, [call(now - 60)])
    assert snapshot(read(where), now, control.Control()).secrets_today == 0
    # The same secrets again today: a new day's rows (a fresh salt would do the same).
    record_findings(where.data_dir, now - 30, repo="/src/billing")
    snap = snapshot(read(where), now, control.Control())
    assert snap.secrets_today == 4
    assert snap.latest_secret is not None
    kind, preview, *rest = snap.latest_secret.split(" ")
    assert kind in ("stripe-key", "openai-api-key", "database-password", "dotenv-secret")
    assert "…" in preview and " ".join(rest) == "· billing · warned"
    (item,) = [i for i in build_menu(snap) if i.action == "open_findings"]
    assert item.text.startswith("4 secrets in requests today · latest: ")
    for kind, secret in PLANTED.items():
        assert secret not in all_text(build_menu(snap)), kind


def test_the_tooltip_counts_them_and_a_click_opens_the_secrets_page(
    app_for: Any,  # noqa: F811
    where: Any,  # noqa: F811
) -> None:
    now = time.time()
    record_findings(where.data_dir, max(local_midnight(now) + 1, now - 30), repo="/src/billing")
    urls: list[str] = []
    app, icon, _ = app_for(url_opener=urls.append)
    app.refresh(force=True)
    assert icon.title.startswith("devmeter · 4 SECRETS SENT TODAY · ")
    items, _ = icon.menu
    text = next(i.text for i in items if i.action == "open_findings")
    click(icon, text)
    assert app.dashboard is not None
    assert urls == [app.dashboard.url.replace("/?", "/findings?", 1)]
    parts = urllib.parse.urlsplit(urls[0])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    response.read()
    assert response.status == 303 and response.getheader("Location") == "/findings"
    conn.request("GET", "/findings", headers={"Cookie": response.getheader("Set-Cookie")})
    page = conn.getresponse().read().decode()
    conn.close()
    assert "<span data-figure=findings>4</span> found" in page
    for kind, secret in PLANTED.items():
        assert secret not in page and secret not in icon.title, kind


def test_a_ledger_from_before_findings_shows_none(where: Any) -> None:  # noqa: F811
    """A ledger the proxy has not migrated yet (no findings table): nothing, no error."""
    write_calls(where.ledger, [call(NOW - 60)])
    conn = sqlite3.connect(where.ledger)
    conn.execute("DROP TABLE findings")
    conn.commit()
    snap = snapshot(conn, NOW, control.Control())
    assert snap.secrets_today == 0 and snap.latest_secret is None
    assert snap.today_usd > 0  # the rest of the snapshot is still read
