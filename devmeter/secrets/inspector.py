"""The proxy's side of secret inspection: policy, dedupe, ledger rows and alerts around
the pure scan. Meter calls `inspect` once per request (and per Codex WebSocket turn).

warn: only the user's new content is scanned, on a worker thread, after the request
is on its way; nothing waits for it. block/redact: the whole request is scanned before
it is forwarded (a secret sent in an earlier turn is still in the history the client
re-sends), and that delay is the price of those modes.

Each secret is reported once per (fingerprint, action) while the proxy runs, and the
ledger's fingerprints are loaded at start so a restart does not report it again.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from devmeter.alerts import Alert, Block
from devmeter.paths import load_key_or_ephemeral
from devmeter.secrets.new_content import Piece, all_pieces, new_pieces
from devmeter.secrets.policy import SecretsPolicy, strictest
from devmeter.secrets.scan import Finding, fingerprint, redact, scan
from devmeter.usage import Attribution

log = logging.getLogger(__name__)

SALT_FILE = "secrets.salt"


def load_salt(data_dir: Path) -> bytes:
    """The fingerprint key: 32 random bytes in a 0600 file, made on first use (for this
    run only, said in the log, when the file cannot be used)."""
    return load_key_or_ephemeral(data_dir / SALT_FILE, 32)


@dataclass(frozen=True)
class Reported:
    """One finding as stored and shown: no secret, no surrounding text."""

    ts: float
    kind: str
    rule: str
    preview: str
    location: str
    tool: str | None
    repo: str | None
    session: str | None
    action: str  # warned, blocked, redacted
    fingerprint: str

    def row(self) -> tuple[Any, ...]:
        return (self.ts, self.kind, self.rule, self.preview, self.location, self.tool,
                self.repo, self.session, self.action, self.fingerprint)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    block: Block | None = None
    redacted: bool = False  # the document was changed in place


PASS = Outcome()
_ACTION = {"warn": "warned", "block": "blocked", "redact": "redacted"}


class SecretInspector:
    def __init__(
        self,
        policy: SecretsPolicy,
        salt: bytes,
        on_finding: Callable[[Reported], None],
        on_alert: Callable[[Alert], None] | None = None,
        seen: set[tuple[str, str]] | None = None,
        config_path: str = "config.toml",
    ) -> None:
        # What was scanned before, by digest (long strings: block/redact re-scan the whole
        # conversation every turn, and a 1 MB history then costs a hash, not a scan), and
        # the short strings found clean (Claude Code's first system block, "continue"):
        # sent again, they are not handed to the worker at all. Both hold for one policy
        # (its own rules): a reload sets `policy`, which forgets them.
        self._scanned: OrderedDict[bytes, list[Finding]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._clean: set[str] = set()
        self.policy = policy
        self._salt = salt
        # Named in a refusal's advice: "config.toml" alone does not say which folder.
        self._config_path = config_path
        self._on_finding = on_finding
        self._on_alert = on_alert
        self._seen = seen if seen is not None else set()
        self._lock = threading.Lock()
        # One worker: scans are short and ordered; a burst queues rather than competing
        # with the event loop for the GIL on several threads.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devmeter-secrets")

    @property
    def policy(self) -> SecretsPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: SecretsPolicy) -> None:
        """From the next request on; what the old policy's rules found (or did not) is
        scanned again."""
        self._policy = policy
        # A new set rather than cleared: a scan under way adds to the one it started with.
        self._clean = set()
        with self._cache_lock:
            self._scanned.clear()

    def inspect(
        self, api: str, doc: Any, who: Attribution, now: float, can_refuse: bool = True
    ) -> Outcome:
        """Scan a parsed request (or WebSocket frame). warn: returns at once, the scan runs
        on the worker; block/redact: returns what to do with the request. `can_refuse`
        False: part of a request whose answer already streams (a Cursor stream's frame),
        so a secret to block is redacted instead, and recorded as redacted."""
        mode = self.policy.strictest_possible(who.repo)
        if mode == "off":
            return PASS
        if mode == "warn":
            clean = self._clean
            pieces = [(p.where, p.text) for p in new_pieces(api, doc) if p.text not in clean]
            if pieces:
                self._worker.submit(self._scan_beside, pieces, who, now)
            return PASS
        return self._scan_before(api, doc, who, now, can_refuse)

    def inspect_beside(
        self, pieces: Callable[[], list[tuple[str, str]]], who: Attribution, now: float
    ) -> None:
        """warn for a request whose strings cost something to pick out (a Cursor frame to
        inflate and walk): `pieces` runs on the worker too, and nothing waits for it."""
        if self.policy.strictest_possible(who.repo) != "off":
            self._worker.submit(self._pieces_beside, pieces, who, now)

    def _pieces_beside(
        self, pieces: Callable[[], list[tuple[str, str]]], who: Attribution, now: float
    ) -> None:
        try:
            found = pieces()
        except Exception as exc:  # fail open, as a scan does
            log.warning("devmeter: secret scan failed: %s", type(exc).__name__)
            return
        self._scan_beside(found, who, now)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def wait_idle(self) -> None:
        """For tests and shutdown: every scan queued so far has finished."""
        self._worker.submit(lambda: None).result()

    def _scan_beside(self, pieces: list[tuple[str, str]], who: Attribution, now: float) -> None:
        clean = self._clean  # before the scan: a reload meanwhile starts a new set
        try:
            for where, text in pieces:
                findings = self._scan_cached(text)
                for finding in findings:
                    self._consider(finding, where, who, now)
                if not findings and len(text) < _CACHE_FROM:
                    if len(clean) >= _CLEAN_ENTRIES:
                        clean = self._clean = set()  # bounded: start over
                    clean.add(text)
        except Exception as exc:  # fail open: a scanner bug never touches the request
            log.warning("devmeter: secret scan failed: %s", type(exc).__name__)

    def _consider(
        self, finding: Finding, where: str, who: Attribution, now: float, can_refuse: bool = True
    ) -> str:
        """The mode that applies to this finding ("off" when allowed); reports it once."""
        mark = fingerprint(self._salt, finding.kind, finding.secret)
        mode = self.policy.mode_for(finding, who.repo)
        if mode == "off" or self.policy.allowed(finding, mark):
            return "off"
        if mode == "block" and not can_refuse:
            mode = "redact"
        action = _ACTION[mode]
        with self._lock:
            first = (mark, action) not in self._seen
            self._seen.add((mark, action))
        if first:
            reported = Reported(now, finding.kind, finding.rule, finding.preview, where,
                                who.tool, who.repo, who.session, action, mark)  # fmt: skip
            self._on_finding(reported)
            if self._on_alert is not None:
                self._on_alert(_alert(reported))
        return mode

    def _scan_before(
        self, api: str, doc: Any, who: Attribution, now: float, can_refuse: bool
    ) -> Outcome:
        new = {(id(p.container), p.key): p.where for p in new_pieces(api, doc)}
        hits: list[tuple[Piece, list[Finding], list[str]]] = []
        for piece in all_pieces(api, doc):
            where = new.get((id(piece.container), piece.key), "earlier in the conversation")
            findings = self._scan_cached(piece.text)
            if findings:
                modes = [self._consider(f, where, who, now, can_refuse) for f in findings]
                hits.append((piece, findings, modes))
        decided = strictest([m for _, _, modes in hits for m in modes])
        if decided == "block":
            found = [(f, m) for _, fs, ms in hits for f, m in zip(fs, ms, strict=True)]
            blocked = [f for f, m in found if m == "block"]
            return Outcome(block=_block(blocked, self._salt, self._config_path))
        redacted = False
        for piece, findings, modes in hits:
            chosen = [f for f, m in zip(findings, modes, strict=True) if m == "redact"]
            if chosen:
                piece.container[piece.key] = redact(piece.text, chosen)  # type: ignore[index]
                redacted = True
        return Outcome(redacted=redacted)

    def _scan_cached(self, text: str) -> list[Finding]:
        """Used by the worker (warn) and the event loop (block/redact) alike: a config
        reload can switch modes while a scan is queued, hence the lock."""
        if len(text) < _CACHE_FROM:
            return scan(text, self.policy.user_rules)
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._cache_lock:
            found = self._scanned.get(key)
            if found is not None:
                self._scanned.move_to_end(key)
                return found
        found = scan(text, self.policy.user_rules)
        with self._cache_lock:
            self._scanned[key] = found
            if len(self._scanned) > _CACHE_ENTRIES:
                self._scanned.popitem(last=False)
        return found


_CACHE_FROM = 256  # shorter strings scan faster than they hash
_CACHE_ENTRIES = 20_000
_CLEAN_ENTRIES = 20_000  # short strings found clean: at most ~5 MB


def _alert(found: Reported) -> Alert:
    where = found.location
    verb = {"warned": "was sent", "blocked": "was refused", "redacted": "was redacted"}
    message = (
        f"{found.kind} ({found.preview}) in a {where} from {found.tool or 'unknown tool'}"
        f" ({found.repo or 'no repo'}, session {found.session or '-'}) {verb[found.action]}"
    )
    return Alert(found.ts, "secret", "session", found.session or found.repo or "-", Decimal(0),
                 message, found.tool, found.repo, found.session)  # fmt: skip


def _block(findings: list[Finding], salt: bytes, config_path: str) -> Block:
    first = findings[0]
    more = f" and {len(findings) - 1} more" if len(findings) > 1 else ""
    mark = fingerprint(salt, first.kind, first.secret)
    message = (
        f"devmeter: refused: the request holds a secret, {first.kind} {first.preview}{more}. "
        f'Remove it from what the agent reads, or allow it: add "{mark}" to '
        f'allow_fingerprints under [secrets] in {config_path} (or set mode = "warn" there); '
        "`devmeter findings` lists what was found."
    )
    return Block("secret", first.kind, None, None, message, "other")


def seen_in_ledger(ledger: Path) -> set[tuple[str, str]]:
    """(fingerprint, action) already reported, so a restarted proxy does not repeat them."""
    try:
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT fingerprint, action FROM findings").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return set()
    return {(str(f), str(a)) for f, a in rows}
