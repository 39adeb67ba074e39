"""The scan matches with the `regex` module (which lets go of the GIL while it matches, so a
warn scan on its worker does not stall the proxy's event loop) and must find exactly what
Python's `re` finds with the same patterns: every pattern, over the planted secrets in
their contexts, the look-alikes, and ~400 KB of real source and docs."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devmeter.secrets import scan
from tests.secrets_corpus import CONTEXT, DOTENV_FILE, LOOKALIKES, VARIANTS

REPO = Path(__file__).resolve().parent.parent


def patterns() -> list[re.Pattern[str]]:
    """Every `re` pattern the scan runs: devmeter's own and each plugin's denylist."""
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.stripe import StripeDetector

    own = [v for k, v in vars(scan).items() if k.isupper() and isinstance(v, re.Pattern)]
    plugins = (AWSKeyDetector, AzureStorageKeyDetector, GitHubTokenDetector,
               GitLabTokenDetector, NpmDetector, OpenAIDetector, PypiTokenDetector,
               SlackDetector, StripeDetector)  # fmt: skip
    return own + [p for cls in plugins for p in cls().denylist]


def texts() -> list[str]:
    corpus = [*CONTEXT.values(), DOTENV_FILE, *LOOKALIKES.values()]
    corpus += [context for _, _, context in VARIANTS.values()]
    sources = sorted([*REPO.glob("devmeter/**/*.py"), *REPO.glob("*.md")])
    corpus.append("".join(p.read_text(encoding="utf-8") for p in sources)[:400_000])
    assert len(corpus[-1]) >= scan.RELEASE_FROM  # what the scan matches with `regex`
    return corpus


@pytest.mark.parametrize("pattern", patterns(), ids=lambda p: p.pattern[:40])
def test_the_released_pattern_matches_what_re_matches(pattern: re.Pattern[str]) -> None:
    # Every text, short ones included: the scan switches engines by length alone.
    released = scan._released(pattern)
    for text in texts():
        expected = [(m.span(), m.groups()) for m in pattern.finditer(text)]
        got = [(m.span(), m.groups()) for m in released.finditer(text, concurrent=True)]
        assert got == expected


def test_a_long_text_holding_every_planted_secret_scans_the_same_with_either_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = texts()[-1]
    long_text = "\n".join(source[i * 20_000 : (i + 1) * 20_000] + "\n" + context
                          for i, context in enumerate(CONTEXT.values()))  # fmt: skip
    assert len(long_text) >= scan.RELEASE_FROM
    with ThreadPoolExecutor(1) as worker:  # as warn scans: `regex`, off the main thread
        released = worker.submit(scan.scan, long_text).result()
        monkeypatch.setattr(scan, "RELEASE_FROM", len(long_text) + 1)  # `re` throughout
        assert released == worker.submit(scan.scan, long_text).result()
    assert released == scan.scan(long_text)  # the main thread's (block/redact) `re`
    assert len(released) >= len(CONTEXT)  # each planted secret found, not two empty lists
