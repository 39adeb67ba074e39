"""`devmeter quota`'s table: aligned by text_table.py like every CLI table, fitted to a
terminal's width, with each window's top sessions by share after it."""

from __future__ import annotations

from typing import Any

from devmeter.quota_report import to_table


def _row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "provider": "anthropic", "account": "acct-1a2b3c4d5e6f7a8b", "label": None,
        "window": "5h", "utilization": 0.62, "resets_at": "2026-12-07T12:30:00Z",
        "status": "allowed", "full_at": None, "runs_out_before_reset": False,
        "share_by_session": {},
    }  # fmt: skip
    return {**row, **kw}


def test_quota_windows_line_up_and_say_their_pace_and_share() -> None:
    rows = [
        _row(label="work", share_by_session={"sess-aaaaaaaaaaaaaaaaaaaa": 0.7, "sess-b": 0.3}),
        _row(provider="openai", account="acct-ff", window="7d", utilization=None,
             status="allowed_warning\x1b[31m", full_at="2026-12-07T11:00:00Z",
             runs_out_before_reset=True),
    ]  # fmt: skip
    text = to_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == [
        "provider",
        "account",
        "window",
        "used",
        "status",
        "resets",
        "at",
        "this",
        "pace",
    ]
    first, second = lines[1], lines[2]
    assert first.startswith("anthropic") and "work" in first and "62%" in first
    assert second.startswith("openai") and "full at " in second and "\x1b" not in text
    # Right-aligned percentages end in the same column as the header "used".
    assert first.index("62%") + 3 == lines[0].index("used") + 4 == second.index("?") + 1
    assert "work 5h: share (estimate) by session: sess-aaaaaaaaaaa 70%, sess-b 30%" in text

    narrow = to_table(rows, width=70).splitlines()
    assert all(len(line) <= 70 for line in narrow[:3])  # the table rows fit; "used" uncut
    assert "62%" in narrow[1]


def test_no_windows_yet_says_where_they_come_from() -> None:
    assert to_table([]).startswith("No quota windows seen yet")
