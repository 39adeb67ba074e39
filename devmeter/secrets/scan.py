"""Text -> findings. Detectors are Yelp's detect-secrets plugins where it has one
(AWS, Azure storage, GitHub, GitLab, Slack, Stripe, npm, PyPI, OpenAI, private-key
headers, JWT, URLs with credentials), plus rules for what it lacks: Anthropic and Google
API keys, GCP service-account JSON, whole PEM/OpenSSH blocks (so redaction removes the
key body, not only its header), and high-entropy `.env`-style assignments.

Pure: no I/O. A Finding carries the secret in memory only (for redaction and the keyed
fingerprint); callers store `preview` and `fingerprint`, never `secret`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import regex


@dataclass(frozen=True)
class Finding:
    kind: str  # aws-access-key, private-key, ...: what it is, also the placeholder's name
    rule: str  # which detector fired: detect-secrets:AWSKeyDetector, devmeter:dotenv, user:NAME
    start: int
    end: int
    secret: str  # in memory only: never stored, logged or shown

    @property
    def preview(self) -> str:
        return mask(self.secret)


@dataclass(frozen=True)
class UserRule:
    name: str
    pattern: re.Pattern[str]


# A detector: text -> (start, end) spans of secrets.
Spans = Callable[[str], Iterator[tuple[int, int]]]


def mask(secret: str) -> str:
    """`AKIA…XQ7Z`: enough to recognise which key, too little to use it."""
    pem = _PEM_LABEL.match(secret)
    if pem:
        body = re.sub(r"-----END.*|\\n|\s", "", secret[pem.end() :])
        return f"{pem.group(1)} …{body[-4:]}"
    flat = " ".join(secret.split())
    if len(flat) <= 12:
        return flat[:2] + "…"
    return f"{flat[:4]}…{flat[-4:]}"


_PEM_LABEL = re.compile(r"-----BEGIN ([ A-Z0-9]*PRIVATE KEY)-----")


def fingerprint(salt: bytes, kind: str, secret: str) -> str:
    """Keyed so that the ledger's fingerprints cannot be brute-forced back to keys."""
    return hmac.new(salt, f"{kind}\0{secret}".encode(), hashlib.sha256).hexdigest()[:32]


def placeholder(kind: str) -> str:
    return f"[REDACTED by devmeter: {kind}]"


def shannon_entropy(text: str) -> float:
    if not text:
        return 0.0
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# Providers' documented example keys, and values that are plainly placeholders.
_EXAMPLE = re.compile(
    r"EXAMPLE|x{8,}|0{12,}|your[-_]?(api[-_]?)?key|<[^>]*>|\$\{|changeme"
    r"|^(?:password|passwd|pass|secret|pwd|test|user|admin|root)$",
    re.IGNORECASE,
)


def is_example(secret: str) -> bool:
    return _EXAMPLE.search(secret) is not None


# On a worker thread (warn mode's scan), a text from this length is matched with the
# `regex` module, which lets go of the GIL while it matches: with `re` a pass over a long
# text is one call that holds it throughout (1-35 ms a pass over 200 KB of source on a
# loaded 2-core machine), stalling the proxy's event loop, and every stream in flight.
# Shorter texts hold it briefly, and on the main thread (the event loop's own block/redact
# scan) nothing waits for it: there `re` stays, faster (`regex` costs ~1.5x on 20 KB).
RELEASE_FROM = 16_384
_MAIN = threading.main_thread()


def _released(pattern: re.Pattern[str]) -> Any:
    """The same pattern in the `regex` module (tests/test_secrets_released.py: it matches
    what `re` matches)."""
    return regex.compile(pattern.pattern, pattern.flags)


def _finditer(pattern: re.Pattern[str], released: Any, text: str) -> Iterator[Any]:
    if len(text) >= RELEASE_FROM and threading.current_thread() is not _MAIN:
        return released.finditer(text, concurrent=True)
    return pattern.finditer(text)


def _regex_spans(pattern: re.Pattern[str], group: int = 0) -> Spans:
    released = _released(pattern)

    def spans(text: str) -> Iterator[tuple[int, int]]:
        for match in _finditer(pattern, released, text):
            if match.group(group):
                yield match.span(group)

    return spans


def _plugin_spans(plugin: Any) -> Spans:
    """Runs a detect-secrets plugin's own patterns and checks, keeping positions.

    Its `analyze_string` yields values (sometimes only an alternation group, `ghp`), so
    each pattern match is confirmed by the plugin and the secret is the longest value it
    yields when that value is key-sized, else the whole match.
    """

    denylist = [(pattern, _released(pattern)) for pattern in plugin.denylist]

    def spans(text: str) -> Iterator[tuple[int, int]]:
        for pattern, released in denylist:
            for match in _finditer(pattern, released, text):
                candidate = match.group(0)
                values = [v for v in plugin.analyze_string(candidate) if v]
                if not values:
                    continue
                value = max(values, key=len)
                offset = candidate.find(value) if len(value) >= 12 else -1
                if value.startswith("AccountKey="):
                    offset, value = offset + len("AccountKey="), value[len("AccountKey=") :]
                if offset < 0:
                    yield match.span()
                else:
                    yield match.start() + offset, match.start() + offset + len(value)

    return spans


def _jwt_spans(text: str) -> Iterator[tuple[int, int]]:
    """detect-secrets' JWT check on a greedy match: its own pattern stops before the
    signature, which redaction must remove too."""
    from detect_secrets.plugins.jwt import JwtTokenDetector

    for match in _finditer(_JWT, _JWT_RELEASED, text):
        if JwtTokenDetector.is_formally_valid(match.group(0)):
            yield match.span()


_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_JWT_RELEASED = _released(_JWT)
# Also the same key inside JSON (a service-account file), its newlines the two characters
# `\n`: `[\s\S]` takes those as well.
_PEM_BLOCK = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----[\s\S]{16,20000}?"
    r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
)
_GCP_SA_KEY = re.compile(
    r'"type"\s*:\s*"service_account"(?:.|\n){0,400}?"private_key_id"\s*:\s*"([0-9a-f]{40})"'
)
_ANTHROPIC = re.compile(r"\bsk-ant-(?:api|admin|oat|ort)\d\d-[A-Za-z0-9_-]{40,}")
_OPENAI_PROJECT = re.compile(r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}")
_GOOGLE_API = re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")
_DB_URL = re.compile(
    r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver)"
    r"://[^\s:/@'\"]+:([^\s@/'\"]{3,})@"
)
_AZURE_CONN = re.compile(r"(?:SharedAccessKey|AccountKey|ClientSecret)=([A-Za-z0-9+/=_~.-]{30,})")
# KEY=value lines where the name says secret; the value must look random (not `true`).
# A line may carry the line number agents' file readers add (`    12→`, `12\t`).
_DOTENV = re.compile(
    r"(?im)^[ \t]*(?:\d+(?:\u2192|\t|:|\|)[ \t]*)?(?:export[ \t]+)?[A-Za-z0-9_]*"
    r"(?:SECRET|TOKEN|PASSWORD|PASSWD|PWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?|AUTH)"
    r"[A-Za-z0-9_]*[ \t]*[=:][ \t]*['\"]?([A-Za-z0-9+/=_.~-]{12,})(?![^\s'\"#])"
)
_DOTENV_RELEASED = _released(_DOTENV)


def _dotenv_spans(text: str) -> Iterator[tuple[int, int]]:
    for match in _finditer(_DOTENV, _DOTENV_RELEASED, text):
        value = match.group(1)
        # Random values have digits and letters; code (`self.refresh_token`) does not.
        looks_random = any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
        if looks_random and shannon_entropy(value) >= 3.3:
            yield match.span(1)


@dataclass(frozen=True)
class Detector:
    kind: str
    rule: str
    # Substrings (upper-case) one of which any match contains: without one, skip.
    anchors: tuple[str, ...]
    spans: Spans


# (kind, rule) of each built-in detector, in builtin_detectors' order, without importing
# detect-secrets: what config validation names ([secrets.modes] takes a kind or a rule's
# name), which every CLI command runs. tests/test_secrets_scan.py keeps it equal.
BUILTIN_NAMES: tuple[tuple[str, str], ...] = (
    ("private-key", "devmeter:pem-block"),
    ("gcp-service-account", "devmeter:gcp-service-account"),
    ("anthropic-api-key", "devmeter:anthropic-key"),
    ("openai-api-key", "devmeter:openai-project-key"),
    ("openai-api-key", "detect-secrets:OpenAIDetector"),
    ("google-api-key", "devmeter:google-api-key"),
    ("aws-access-key", "detect-secrets:AWSKeyDetector"),
    ("azure-storage-key", "detect-secrets:AzureStorageKeyDetector"),
    ("azure-connection-secret", "devmeter:azure-connection-string"),
    ("github-token", "detect-secrets:GitHubTokenDetector"),
    ("gitlab-token", "detect-secrets:GitLabTokenDetector"),
    ("slack-token", "detect-secrets:SlackDetector"),
    ("stripe-key", "detect-secrets:StripeDetector"),
    ("npm-token", "detect-secrets:NpmDetector"),
    ("pypi-token", "detect-secrets:PypiTokenDetector"),
    ("jwt", "detect-secrets:JwtTokenDetector"),
    ("database-password", "devmeter:database-url"),
    ("dotenv-secret", "devmeter:dotenv"),
)


@lru_cache(maxsize=1)
def builtin_detectors() -> tuple[Detector, ...]:
    """(kind, rule, spans) in priority order: a span claimed by an earlier one is not
    reported again by a later, vaguer one (a `.env` line holding an AWS key is an AWS key)."""
    # Imported here: detect-secrets takes about a second to import, and only a proxy
    # with inspection on needs it.
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.stripe import StripeDetector

    def plugin(kind: str, cls: Any, *anchors: str) -> Detector:
        return Detector(kind, f"detect-secrets:{cls.__name__}", anchors, _plugin_spans(cls()))

    def own(kind: str, name: str, spans: Spans, *anchors: str) -> Detector:
        return Detector(kind, f"devmeter:{name}", anchors, spans)

    gitlab = ("GLPAT-", "GLDT-", "GLFT-", "GLSOAT-", "GLRT-", "GR1348941", "GLCBT-", "GLIMT-",
              "GLPTT-", "GLAGENT-", "GLOAS-")  # fmt: skip
    return (
        own("private-key", "pem-block", _regex_spans(_PEM_BLOCK), "PRIVATE KEY"),
        own(
            "gcp-service-account",
            "gcp-service-account",
            _regex_spans(_GCP_SA_KEY, 1),
            "SERVICE_ACCOUNT",
        ),  # fmt: skip
        own("anthropic-api-key", "anthropic-key", _regex_spans(_ANTHROPIC), "SK-ANT-"),
        own(
            "openai-api-key",
            "openai-project-key",
            _regex_spans(_OPENAI_PROJECT),
            "SK-PROJ-",
            "SK-SVCACCT-",
            "SK-ADMIN-",
        ),  # fmt: skip
        plugin("openai-api-key", OpenAIDetector, "T3BLBKFJ"),
        own("google-api-key", "google-api-key", _regex_spans(_GOOGLE_API), "AIZA"),
        plugin("aws-access-key", AWSKeyDetector, "AKIA", "ASIA", "ABIA", "ACCA", "A3T", "AWS"),
        plugin("azure-storage-key", AzureStorageKeyDetector, "ACCOUNTKEY="),
        own(
            "azure-connection-secret",
            "azure-connection-string",
            _regex_spans(_AZURE_CONN, 1),
            "SHAREDACCESSKEY=",
            "ACCOUNTKEY=",
            "CLIENTSECRET=",
        ),  # fmt: skip
        plugin("github-token", GitHubTokenDetector, "GHP_", "GHO_", "GHU_", "GHS_", "GHR_"),
        plugin("gitlab-token", GitLabTokenDetector, *gitlab),
        plugin("slack-token", SlackDetector, "XOX", "HOOKS.SLACK.COM"),
        plugin("stripe-key", StripeDetector, "K_LIVE_"),
        plugin("npm-token", NpmDetector, "_AUTHTOKEN"),
        plugin("pypi-token", PypiTokenDetector, "PYPI-"),
        Detector("jwt", "detect-secrets:JwtTokenDetector", ("EYJ",), _jwt_spans),
        own("database-password", "database-url", _regex_spans(_DB_URL, 1), "://"),
        own(
            "dotenv-secret",
            "dotenv",
            _dotenv_spans,
            "SECRET",
            "TOKEN",
            "PASSW",
            "PWD",
            "KEY",
            "CREDENTIAL",
            "AUTH",
        ),  # fmt: skip
    )


def scan(text: str, user_rules: Sequence[UserRule] = ()) -> list[Finding]:
    """Every secret in `text`, spans not overlapping, in text order."""
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []
    upper = text.upper()  # anchors are matched case-blind, in one pass per anchor
    detectors: Iterable[Detector] = [
        *(
            Detector(
                rule.name, f"user:{rule.name}", (), _regex_spans(rule.pattern, _group(rule.pattern))
            )  # fmt: skip
            for rule in user_rules
        ),
        *builtin_detectors(),
    ]
    for detector in detectors:
        if detector.anchors and not any(a in upper for a in detector.anchors):
            continue  # a substring test skips the regexes on text that cannot match
        for start, end in detector.spans(text):
            secret = text[start:end]
            if is_example(secret) or any(s < end and start < e for s, e in taken):
                continue
            taken.append((start, end))
            found.append(Finding(detector.kind, detector.rule, start, end, secret))
    found.sort(key=lambda f: f.start)
    return found


def _group(pattern: re.Pattern[str]) -> int:
    """A user rule with a capture group reports the group (`password=(\\S+)`), else all."""
    return 1 if pattern.groups >= 1 else 0


def redact(text: str, findings: Sequence[Finding]) -> str:
    """`text` with each finding's span replaced by its placeholder."""
    out: list[str] = []
    last = 0
    for finding in sorted(findings, key=lambda f: f.start):
        out.append(text[last : finding.start])
        out.append(placeholder(finding.kind))
        last = finding.end
    out.append(text[last:])
    return "".join(out)
