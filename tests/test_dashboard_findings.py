"""The dashboard's Secrets page: findings a real inspector recorded, masked, escaped,
newest first, and the same rows `devmeter findings --json` lists; never a secret."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from devmeter.dashboard.server import Dashboard
from devmeter.ledger import INSERT_ALERT, INSERT_FINDING, alert_row, connect
from devmeter.secrets.inspector import SecretInspector, load_salt
from devmeter.secrets.policy import SecretsPolicy
from devmeter.usage import Attribution
from tests.secrets_corpus import PLANTED
from tests.test_dashboard import dashboard, page  # noqa: F401 - the fixture, by name
from tests.test_secrets_inspect import claude_code_read_env

EVIL_REPO = "/src/<script>alert(1)</script>"


def record_findings(home: Path, ts: float, repo: str = EVIL_REPO) -> None:
    """Findings (and their alerts) as the proxy records them: a real inspector on Claude
    Code's read of a .env file, in warn mode."""
    conn = connect(home / "ledger.sqlite")
    inspector = SecretInspector(
        SecretsPolicy(),
        load_salt(home),
        lambda found: conn.execute(INSERT_FINDING, found.row()),
        lambda alert: conn.execute(INSERT_ALERT, alert_row(alert)),
    )
    who = Attribution(tool="claude-code", session="sess-env", repo=repo)
    inspector.inspect("anthropic.messages", claude_code_read_env(), who, ts)
    inspector.wait_idle()
    inspector.close()
    conn.commit()
    conn.close()


def test_the_secrets_page_lists_todays_findings_masked_and_escaped(
    dashboard: Dashboard,  # noqa: F811
    devmeter_home: Path,
) -> None:
    now = time.time()
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0).timestamp()
    record_findings(devmeter_home, max(midnight + 1, now - 5))  # today's, even at 00:00:02
    html = page(dashboard, "/findings")
    assert '<a href="/findings" class=on>Secrets</a>' in html  # in the nav, current
    assert "<span data-figure=findings>4</span> found" in html
    stripe = PLANTED["stripe-key"]
    assert f"<code>{stripe[:4]}…{stripe[-4:]}</code>" in html
    assert "tool result (/home/dev/acme/.env)" in html and "warned" in html
    assert f"of <code>{devmeter_home / 'config.toml'}</code>" in html  # which file to edit
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    for kind, secret in PLANTED.items():
        assert secret not in html, kind
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "devmeter", "findings", "--json"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    for row in shown:  # the CLI's rows, every one on the page
        assert f'data-fingerprint="{row["fingerprint"]}"' in html
    assert len(shown) == 4


def test_older_findings_show_under_a_longer_window_only(
    dashboard: Dashboard,  # noqa: F811
    devmeter_home: Path,
) -> None:
    record_findings(devmeter_home, time.time() - 3 * 86400)
    assert "No secrets found." in page(dashboard, "/findings")
    assert "<span data-figure=findings>4</span>" in page(dashboard, "/findings?days=7")
    assert "No secrets found." in page(dashboard, "/findings?days=bogus")
