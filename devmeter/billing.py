"""Who pays for a call: its billing mode and account, read from the request's credential.

`subscription`: an Anthropic OAuth token (Claude Pro/Max: `Authorization: Bearer
sk-ant-oat…`, or an `anthropic-beta: oauth-…` flag), or Codex through chatgpt.com with a
ChatGPT login. `api`: an API key (`x-api-key`, `Authorization: Bearer sk-…`, a Gemini
key). `overage` is decided later, from the answer's headers (devmeter/quota.py), and
`unknown` is everything else.

The account is a keyed fingerprint of the credential (HMAC-SHA256 with a random salt
kept 0600 in the data folder): the same credential always gives the same account, two
credentials are told apart, and nothing stored leads back to the credential. The
credential itself never leaves this module; `key_tail` (its last four characters, for
a billing-switch alert's text) is the only part of it ever shown.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devmeter.config_error import ConfigError
from devmeter.paths import load_key_or_ephemeral

SUBSCRIPTION = "subscription"
API = "api"
OVERAGE = "overage"
UNKNOWN = "unknown"
MODES = (SUBSCRIPTION, API, OVERAGE, UNKNOWN)

SALT_FILE = "account-salt"
_SALT_BYTES = 32
_FINGERPRINT_HEX = 16  # 64 bits: no collision among one person's credentials
_CACHE_LIMIT = 64  # fingerprints kept in memory (one HMAC per new credential)
_CHATGPT_HOST = "chatgpt.com"


@dataclass(frozen=True)
class Billing:
    """A call's billing mode, its account and the credential's last four characters
    (kept in memory for the alert text only: never written)."""

    mode: str = UNKNOWN
    account: str | None = None
    key_tail: str | None = None


def credential(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the credential, where it came from: `x-api-key`, `bearer`, `goog`) from request
    headers with lower-case names; (None, None) when the request carries none."""
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return api_key, "x-api-key"
    goog = headers.get("x-goog-api-key", "").strip()
    if goog:
        return goog, "goog"
    auth = headers.get("authorization", "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), "bearer"
    return None, None


def mode_of(host: str, headers: Mapping[str, str], query_key: bool = False) -> str:
    """The billing mode a request's credential implies (pure).

    `query_key`: the request carried a Gemini `?key=` (an API key in the URL)."""
    token, source = credential(headers)
    beta = headers.get("anthropic-beta", "").lower()
    if token is None:
        # api.openai.com bills API keys only (a ChatGPT login goes to chatgpt.com), and
        # Codex 0.169's WebSocket handshake to it carries no credential devmeter can see.
        return API if query_key or host == "api.openai.com" else UNKNOWN
    if token.startswith("sk-ant-oat") or (source == "bearer" and "oauth-" in beta):
        return SUBSCRIPTION
    if host == _CHATGPT_HOST and source == "bearer":
        return SUBSCRIPTION  # Codex with a ChatGPT login: a ChatGPT access token (a JWT)
    if source in ("x-api-key", "goog"):
        return API
    if token.startswith(("sk-", "AIza", "gsk_", "xai-")):
        return API  # OpenAI, OpenRouter, DeepSeek, Gemini, Groq, xAI keys
    if source == "bearer" and host.endswith("googleapis.com"):
        return SUBSCRIPTION  # Gemini CLI with a Google login: an OAuth access token
    return UNKNOWN


def key_tail(token: str) -> str:
    """The last four characters, shown as `sk-…f3a9`: not enough to recover a key."""
    prefix = "sk-" if token.startswith("sk-") else ""
    return f"{prefix}…{token[-4:]}"


class Accounts:
    """Fingerprints credentials with the salt in `data_dir` (created on first use)."""

    def __init__(self, data_dir: Path) -> None:
        self._salt = load_salt(data_dir)
        self._cache: dict[str, str] = {}
        # A call's Billing by everything `billing` reads: a client sends the same
        # credential on every call, and working it out again cost ~6 us a call on the
        # proxy's loop. Billing is immutable, so calls share it. Nothing in the config
        # changes it (the salt is read once), so no reload clears it.
        self._billings: dict[tuple[str | None, ...], Billing] = {}

    def fingerprint(self, token: str) -> str:
        found = self._cache.get(token)
        if found is None:
            found = fingerprint(self._salt, token)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = found
        return found

    def billing(self, host: str, headers: Mapping[str, str], query_key: str | None) -> Billing:
        get = headers.get
        key = (
            host, get("x-api-key"), get("x-goog-api-key"), get("authorization"),
            get("anthropic-beta"), query_key,
        )  # fmt: skip
        found = self._billings.get(key)
        if found is None:
            found = self._billing(host, headers, query_key)
            if len(self._billings) >= _CACHE_LIMIT:
                self._billings.clear()
            self._billings[key] = found
        return found

    def _billing(self, host: str, headers: Mapping[str, str], query_key: str | None) -> Billing:
        token, _ = credential(headers)
        if token is None and query_key:
            token = query_key
        mode = mode_of(host, headers, query_key=bool(query_key))
        if token is None:
            return Billing(mode)
        return Billing(mode, self.fingerprint(token), key_tail(token) if mode == API else None)


def fingerprint(salt: bytes, token: str) -> str:
    digest = hmac.new(salt, token.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return "acct-" + digest.hexdigest()[:_FINGERPRINT_HEX]


def load_salt(data_dir: Path) -> bytes:
    """The salt, created readable by the user alone on first use. A salt that cannot be
    kept (read-only folder) is made up for this run: accounts are then stable only
    within the run, which is said by nothing worse than new account ids."""
    return load_key_or_ephemeral(data_dir / SALT_FILE, _SALT_BYTES)


def label(account: str | None, labels: Mapping[str, str]) -> str | None:
    """The user's name for an account (`[accounts] "acct-…" = "work"`), else the id."""
    if account is None:
        return None
    return labels.get(account, account)


def parse_accounts(table: Mapping[str, object] | None) -> dict[str, str]:
    """`[accounts]`: an account id (as `devmeter quota` prints it) -> the user's label."""
    labels: dict[str, str] = {}
    for account, name in (table or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"accounts.{account}", 'must be a label in quotes, e.g. "acct-1a2b…" = "work"'
            )
        labels[account] = name.strip()
    return labels
