"""Secret detection on a corpus of planted secrets and look-alikes, per detector."""

from __future__ import annotations

import re

import pytest

from devmeter.secrets.scan import UserRule, fingerprint, mask, redact, scan
from tests.secrets_corpus import CONTEXT, DOTENV_FILE, LOOKALIKES, PLANTED, numbered


def test_recall_and_false_positives_per_detector(capsys: pytest.CaptureFixture[str]) -> None:
    """Each kind's planted secret is found, whole (the exact span redaction removes), by
    the detector for its kind; no look-alike fires. The table is the report."""
    stats: dict[str, list[int]] = {}  # kind -> [found, planted, false positives]
    for kind, text in CONTEXT.items():
        found = scan(text)
        stats.setdefault(kind, [0, 0, 0])[1] += 1
        if any(f.kind == kind and f.secret == PLANTED[kind] for f in found):
            stats[kind][0] += 1
        for f in found:  # anything else in a planted text is a false positive...
            if f.kind != kind and not (kind == "gcp-service-account" and f.kind == "private-key"):
                stats.setdefault(f.kind, [0, 0, 0])[2] += 1
    for text in LOOKALIKES.values():
        for f in scan(text):
            stats.setdefault(f.kind, [0, 0, 0])[2] += 1
    with capsys.disabled():
        print("\nkind                      recall   false positives")
        for kind, (hit, planted, fp) in sorted(stats.items()):
            print(f"{kind:<25} {hit}/{planted}      {fp}")
    assert {k: v for k, v in stats.items() if v[0] != v[1] or v[2]} == {}
    assert len(stats) >= 16


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_look_alikes_do_not_fire(name: str) -> None:
    assert scan(LOOKALIKES[name]) == []


def test_a_dotenv_file_read_by_claude_code_finds_each_secret_once() -> None:
    found = scan(numbered(DOTENV_FILE))
    assert sorted(f.kind for f in found) == [
        "database-password", "dotenv-secret", "openai-api-key", "stripe-key",
    ]  # fmt: skip
    assert {f.secret for f in found} <= set(PLANTED.values())


def test_redaction_removes_each_secret_and_names_its_kind() -> None:
    text = numbered(DOTENV_FILE) + CONTEXT["private-key"] + CONTEXT["gcp-service-account"]
    out = redact(text, scan(text))
    for secret in PLANTED.values():
        assert secret not in out
    assert "[REDACTED by devmeter: stripe-key]" in out
    assert "[REDACTED by devmeter: private-key]" in out
    assert "PRIVATE KEY-----" not in out  # the whole block, not just its header
    assert "DEBUG=false" in out  # the rest of the file is left alone


def test_preview_masks_and_fingerprint_is_keyed() -> None:
    assert mask("AKIAZ3MHALJ3DEQ4XQ7Z") == "AKIA…XQ7Z"
    assert mask(PLANTED["private-key"]).startswith("OPENSSH PRIVATE KEY …")
    assert PLANTED["private-key"][40:60] not in mask(PLANTED["private-key"])
    a = fingerprint(b"1" * 32, "aws-access-key", "AKIAZ3MHALJ3DEQ4XQ7Z")
    assert a == fingerprint(b"1" * 32, "aws-access-key", "AKIAZ3MHALJ3DEQ4XQ7Z")
    assert a != fingerprint(b"2" * 32, "aws-access-key", "AKIAZ3MHALJ3DEQ4XQ7Z")


def test_user_rules_come_first_and_report_their_group() -> None:
    rule = UserRule("acme-token", re.compile(r"acme_tok=([a-z0-9]{24})"))
    found = scan("x acme_tok=k3j4h5g6f7d8s9a0q1w2e3r4 y", [rule])
    assert [(f.kind, f.rule, f.secret) for f in found] == [
        ("acme-token", "user:acme-token", "k3j4h5g6f7d8s9a0q1w2e3r4")
    ]
