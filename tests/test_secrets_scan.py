"""Secret detection on a corpus of planted secrets and look-alikes, per detector."""

from __future__ import annotations

import re

import pytest

from devmeter.secrets.scan import (
    BUILTIN_NAMES,
    UserRule,
    builtin_detectors,
    fingerprint,
    mask,
    redact,
    scan,
)
from tests.secrets_corpus import CONTEXT, DOTENV_FILE, LOOKALIKES, PLANTED, VARIANTS, numbered


def test_recall_and_false_positives_per_detector(capsys: pytest.CaptureFixture[str]) -> None:
    """Each planted secret is found whole (the exact span redaction removes), with its
    kind; the detector that found it is credited. Anything else that fires, in a planted
    text or a look-alike, is that detector's false positive. Every built-in detector must
    find something in the corpus, and the table (per detector) is the report."""
    samples = [(kind, PLANTED[kind], text) for kind, text in CONTEXT.items()]
    samples += list(VARIANTS.values())
    found_by: dict[str, int] = {}  # rule -> planted secrets it found
    false: dict[str, int] = {}  # rule -> false positives
    missed: list[str] = []
    expected = {(kind, secret) for kind, secret, _ in samples}
    for kind, secret, text in samples:
        hits = scan(text)
        credited = [f for f in hits if f.kind == kind and f.secret == secret]
        if not credited:
            missed.append(f"{kind}: {secret[:6]}…")
        for f in credited:
            found_by[f.rule] = found_by.get(f.rule, 0) + 1
        for f in hits:  # a second planted secret in the same text (GCP's key) is no FP
            if (f.kind, f.secret) not in expected:
                false[f.rule] = false.get(f.rule, 0) + 1
    for text in LOOKALIKES.values():
        for f in scan(text):
            false[f.rule] = false.get(f.rule, 0) + 1
    kinds = {d.rule: d.kind for d in builtin_detectors()}
    with capsys.disabled():
        print(f"\n{'detector':<40}{'kind':<26}{'found':>6}{'false +':>9}")
        for rule, kind in kinds.items():
            print(f"{rule:<40}{kind:<26}{found_by.get(rule, 0):>6}{false.get(rule, 0):>9}")
        print(f"{len(samples)} planted, {len(samples) - len(missed)} found; "
              f"{len(LOOKALIKES)} look-alikes; false positives {sum(false.values())}")  # fmt: skip
    assert missed == []
    assert false == {}
    assert [rule for rule in kinds if not found_by.get(rule)] == []  # each detector works


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


def test_the_names_config_validation_knows_are_the_detectors_themselves() -> None:
    """[secrets.modes] is checked against BUILTIN_NAMES, which does not import
    detect-secrets (a second, on every CLI command that reads the config)."""
    assert tuple((d.kind, d.rule) for d in builtin_detectors()) == BUILTIN_NAMES


def test_checking_secrets_modes_does_not_import_detect_secrets(tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "config.toml"
    config.write_text('[secrets.modes]\n"private-key" = "block"\n')
    code = (
        "import sys; from pathlib import Path; from devmeter import config; "
        f"config.load(Path({str(config)!r})); "
        "print(any(m.startswith('detect_secrets') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
