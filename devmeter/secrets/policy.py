"""`[secrets]` in config.toml -> SecretsPolicy: which mode applies to a finding.

    [secrets]
    mode = "warn"                      # off | warn | block | redact
    allow = ["^sk_test_"]              # regexes: a secret matching one is never reported
    allow_fingerprints = ["3f9c…"]     # "this exact finding", as `devmeter findings` shows
    [secrets.modes]                    # per kind or rule: "dotenv-secret" = "off"
    [secrets.repos]                    # per repo path: "/home/me/fixtures" = "off"
    [[secrets.detect]]                 # user rules: name, regex, optional mode
    name = "acme-token"
    regex = "acme_[a-z0-9]{32}"

A repo's mode replaces the default for calls from that repo; a kind's or rule's mode
wins over both, except in a repo set to "off", where nothing is inspected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devmeter.config_error import ConfigError
from devmeter.config_values import config_table, did_you_mean, reject_unknown
from devmeter.secrets.scan import BUILTIN_NAMES, Finding, UserRule

MODES = ("off", "warn", "block", "redact")
# When findings of several modes meet in one request, the strictest decides.
_STRICTNESS = {"off": 0, "warn": 1, "redact": 2, "block": 3}
_KEYS = ("mode", "allow", "allow_fingerprints", "modes", "repos", "detect")


@dataclass(frozen=True)
class SecretsPolicy:
    mode: str = "warn"
    allow: tuple[re.Pattern[str], ...] = ()
    allow_fingerprints: frozenset[str] = frozenset()
    modes: Mapping[str, str] = field(default_factory=dict)  # kind or rule name -> mode
    repos: Mapping[str, str] = field(default_factory=dict)  # repo path -> mode
    user_rules: tuple[UserRule, ...] = ()

    def repo_mode(self, repo: str | None) -> str:
        return self.repos.get(repo or "", self.mode)

    def mode_for(self, finding: Finding, repo: str | None) -> str:
        base = self.repo_mode(repo)
        if base == "off":
            return "off"
        rule_name = finding.rule.split(":", 1)[-1]
        return self.modes.get(finding.kind, self.modes.get(rule_name, base))

    def strictest_possible(self, repo: str | None) -> str:
        """The strictest mode any finding could get in `repo`: decides whether the scan
        must finish before the request is forwarded (block, redact) or may run beside it."""
        base = self.repo_mode(repo)
        if base == "off":
            return "off"
        return max((base, *self.modes.values()), key=_STRICTNESS.__getitem__)

    def allowed(self, finding: Finding, fingerprint: str) -> bool:
        return fingerprint in self.allow_fingerprints or any(
            p.search(finding.secret) for p in self.allow
        )


def strictest(modes: list[str]) -> str:
    return max(modes, key=_STRICTNESS.__getitem__, default="off")


def parse_secrets(table: Mapping[str, Any]) -> SecretsPolicy:
    reject_unknown("secrets", table, _KEYS)
    mode = _mode("secrets.mode", table.get("mode", "warn"))
    allow = tuple(_regex(f"secrets.allow[{i}]", v) for i, v in enumerate(_list(table, "allow")))
    fingerprints = frozenset(_str(f"secrets.allow_fingerprints[{i}]", v)
                             for i, v in enumerate(_list(table, "allow_fingerprints")))  # fmt: skip
    modes = {str(k): _mode(f"secrets.modes.{k}", v) for k, v in _table(table, "modes").items()}
    repos = {str(k): _mode(f"secrets.repos.{k}", v) for k, v in _table(table, "repos").items()}
    rules = []
    for i, rule in enumerate(_list(table, "detect")):
        key = f"secrets.detect[{i}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("name"), str):
            raise ConfigError(key, 'each rule needs a name and a regex: {name = "…", regex = "…"}')
        reject_unknown(key, rule, ("name", "regex", "mode"))
        rules.append(UserRule(rule["name"], _regex(f"{key}.regex", rule.get("regex"))))
        if "mode" in rule:
            modes[rule["name"]] = _mode(f"{key}.mode", rule["mode"])
    _check_mode_names(table, rules)
    return SecretsPolicy(mode, allow, fingerprints, modes, repos, tuple(rules))


def _check_mode_names(table: Mapping[str, Any], rules: list[UserRule]) -> None:
    """A `[secrets.modes]` name that is no kind or rule would never apply: a typo there
    ("privat-key" = "block") left the kind at the default mode without a word."""
    written = [str(name) for name in _table(table, "modes")]
    if not written:
        return
    kinds = list(dict.fromkeys(kind for kind, _ in BUILTIN_NAMES))
    names = {*kinds, *(rule.split(":", 1)[-1] for _, rule in BUILTIN_NAMES)}
    names.update(rule.name for rule in rules)
    for name in written:
        if name not in names:
            hint = did_you_mean(name, sorted(names), cutoff=0.6)
            raise ConfigError(
                f"secrets.modes.{name}",
                f"no secret kind or rule is called {name!r}; {hint}kinds are "
                f"{', '.join(kinds)}, or the name of a [[secrets.detect]] rule",
            )


def _mode(key: str, value: Any) -> str:
    if value not in MODES:
        raise ConfigError(key, f"must be one of {', '.join(MODES)}, got {value!r}")
    return str(value)


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def _regex(key: str, value: Any) -> re.Pattern[str]:
    try:
        return re.compile(_str(key, value))
    except re.error as exc:
        raise ConfigError(key, f"not a valid regular expression: {exc}") from None


def _list(table: Mapping[str, Any], name: str) -> list[Any]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"secrets.{name}", f"must be a list, got {value!r}")
    return value


def _table(table: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return config_table(f"secrets.{name}", table.get(name, {}))
