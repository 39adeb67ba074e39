"""New content per wire format, the [secrets] policy, and the inspector's warn/block/redact
on realistic agent requests (a Claude Code .env read, a Codex WebSocket turn with a PEM
key, a Gemini request with a service-account JSON)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from devmeter.config import parse
from devmeter.config_error import ConfigError
from devmeter.secrets.inspector import Reported, SecretInspector, load_salt
from devmeter.secrets.new_content import all_pieces, new_pieces
from devmeter.secrets.policy import SecretsPolicy, parse_secrets
from devmeter.usage import Attribution
from tests.secrets_corpus import CONTEXT, DOTENV_FILE, GCP_SERVICE_ACCOUNT, PLANTED, numbered

WHO = Attribution(tool="claude-code", session="s-1", repo="/home/dev/acme")


def claude_code_read_env(extra_turn: bool = False) -> dict[str, Any]:
    """Claude Code's Messages body after its Read tool returned a .env file."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "why does the app not start?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look at the config."},
            {"type": "tool_use", "id": "toolu_01", "name": "Read",
             "input": {"file_path": "/home/dev/acme/.env"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": numbered(DOTENV_FILE)},
        ]},
    ]  # fmt: skip
    if extra_turn:
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "PORT is 3000."}]},
            {"role": "user", "content": [{"type": "text", "text": "thanks, now fix it"}]},
        ]
    return {"model": "claude-sonnet-5-5", "system": [{"type": "text", "text": "You are Claude"}],
            "messages": messages, "max_tokens": 1024}  # fmt: skip


def codex_ws_turn() -> dict[str, Any]:
    """A Codex `response.create` frame whose shell call printed an SSH key."""
    return {
        "type": "response.create", "model": "gpt-6.1-sol", "stream": True, "store": False,
        "instructions": "You are Codex",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "sandbox"}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "deploy it"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"},
            {"type": "function_call", "name": "shell", "call_id": "call_1",
             "arguments": json.dumps({"command": ["cat", "deploy/id_ed25519"]})},
            {"type": "function_call_output", "call_id": "call_1", "output": CONTEXT["private-key"]},
        ],
    }  # fmt: skip


def gemini_request() -> dict[str, Any]:
    return {
        "contents": [
            {"role": "user",
             "parts": [{"text": "set up CI with this account:\n" + GCP_SERVICE_ACCOUNT}]}
        ],
        "systemInstruction": {"parts": [{"text": "You are Gemini CLI"}]},
    }  # fmt: skip


def test_new_content_is_the_turn_after_the_models_last() -> None:
    pieces = new_pieces("anthropic.messages", claude_code_read_env())
    assert [(p.where, p.text) for p in pieces] == [
        ("tool result (/home/dev/acme/.env)", numbered(DOTENV_FILE))
    ]
    later = new_pieces("anthropic.messages", claude_code_read_env(extra_turn=True))
    assert [p.text for p in later] == ["thanks, now fix it"]  # the .env is not new any more
    codex = new_pieces("openai.responses", codex_ws_turn())
    assert [(p.where, p.text) for p in codex] == [
        ("tool result (deploy/id_ed25519)", CONTEXT["private-key"])
    ]
    gemini = new_pieces("gemini.generate", gemini_request())
    assert [p.where for p in gemini] == ["system prompt", "message"]
    # The whole conversation, for block and redact, reaches the old .env too.
    assert any(DOTENV_FILE.splitlines()[0] in p.text
               for p in all_pieces("anthropic.messages", claude_code_read_env(True)))  # fmt: skip


def test_openai_chat_tool_results_name_the_file() -> None:
    doc = {"messages": [
        {"role": "user", "content": "read my creds"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "read_file",
                         "arguments": json.dumps({"path": "~/.aws/credentials"})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": CONTEXT["aws-access-key"]},
    ]}  # fmt: skip
    assert [(p.where, p.text) for p in new_pieces("openai.chat", doc)] == [
        ("tool result (~/.aws/credentials)", CONTEXT["aws-access-key"])
    ]


def test_config_section_parses_and_errors_name_the_key(tmp_path: Path) -> None:
    config = parse(
        '[secrets]\nmode = "block"\nallow = ["^sk_live_"]\n'
        '[secrets.repos]\n"/home/dev/fixtures" = "off"\n'
        '[[secrets.detect]]\nname = "acme"\nregex = "acme_[0-9]{8}"\nmode = "redact"\n',
        tmp_path / "config.toml",
    )
    policy: SecretsPolicy = config.section("secrets")
    assert policy.mode == "block" and policy.repos == {"/home/dev/fixtures": "off"}
    assert policy.modes == {"acme": "redact"} and policy.user_rules[0].name == "acme"
    assert parse("", tmp_path / "c.toml").section("secrets").mode == "warn"  # the default
    with pytest.raises(ConfigError) as bad:
        parse('[secrets]\nmode = "loud"\n', tmp_path / "config.toml")
    assert "[secrets.mode]" in str(bad.value) and "line 2" in str(bad.value)
    assert "off, warn, block, redact" in str(bad.value)
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        parse_secrets({"detect": [{"name": "x", "regex": "("}]})


class Sink:
    def __init__(self) -> None:
        self.found: list[Reported] = []
        self.alerts: list[Any] = []


def inspector(tmp_path: Path, policy: SecretsPolicy, sink: Sink) -> SecretInspector:
    return SecretInspector(policy, load_salt(tmp_path), sink.found.append, sink.alerts.append)


def test_warn_reports_each_secret_once_off_the_request_path(tmp_path: Path) -> None:
    sink = Sink()
    ins = inspector(tmp_path, SecretsPolicy(), sink)
    doc = claude_code_read_env()
    sent = copy.deepcopy(doc)
    outcome = ins.inspect("anthropic.messages", doc, WHO, 1000.0)
    assert outcome.block is None and not outcome.redacted and doc == sent
    # The next turn re-sends the .env; a retry re-sends the same turn: nothing new.
    ins.inspect("anthropic.messages", claude_code_read_env(extra_turn=True), WHO, 1001.0)
    ins.inspect("anthropic.messages", claude_code_read_env(), WHO, 1002.0)
    ins.wait_idle()
    assert sorted(f.kind for f in sink.found) == [
        "database-password",
        "dotenv-secret",
        "openai-api-key",
        "stripe-key",
    ]
    stripe = next(f for f in sink.found if f.kind == "stripe-key")
    assert (stripe.location, stripe.tool, stripe.repo, stripe.session, stripe.action) == (
        "tool result (/home/dev/acme/.env)",
        "claude-code",
        "/home/dev/acme",
        "s-1",
        "warned",
    )
    assert stripe.preview == PLANTED["stripe-key"][:4] + "…" + PLANTED["stripe-key"][-4:]
    assert [a.kind for a in sink.alerts] == ["secret"] * 4
    assert "tool result (/home/dev/acme/.env)" in sink.alerts[0].message
    for reported in sink.found:
        assert not any(s in repr(reported) for s in PLANTED.values())
    assert (tmp_path / "secrets.salt").stat().st_mode & 0o777 == 0o600


def test_a_clean_string_sent_again_is_not_scanned_again_until_the_policy_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude Code re-sends its short system block and agents their "continue" every turn:
    found clean once, they are not scanned again (warn hands them to no worker), but a
    reloaded policy with a rule of its own scans them again, short and long alike."""
    from devmeter.secrets import inspector as inspector_module

    scanned: list[str] = []
    real_scan = inspector_module.scan

    def counting(text: str, user_rules: Any = ()) -> Any:
        scanned.append(text)
        return real_scan(text, user_rules)

    monkeypatch.setattr(inspector_module, "scan", counting)
    long_text = "continue with the refactoring of the proxy module, " * 10  # over the cache size
    turn = [{"type": "text", "text": "continue"}, {"type": "text", "text": long_text}]
    doc = {"model": "claude-sonnet-5-5", "max_tokens": 64,
           "system": [{"type": "text", "text": "You are Claude Code"}],
           "messages": [{"role": "user", "content": turn}]}  # fmt: skip
    sink = Sink()
    ins = inspector(tmp_path, SecretsPolicy(), sink)
    for n in range(3):
        ins.inspect("anthropic.messages", copy.deepcopy(doc), WHO, 1000.0 + n)
        ins.wait_idle()
    assert sorted(scanned) == sorted(["You are Claude Code", "continue", long_text])
    assert sink.found == []
    # A rule added by a config reload finds what the old policy's scans found clean.
    rules = [{"name": "codename", "regex": r"Claude Code"},
             {"name": "chore", "regex": r"refactoring of"}]  # fmt: skip
    ins.policy = parse_secrets({"detect": rules})
    ins.inspect("anthropic.messages", copy.deepcopy(doc), WHO, 1010.0)
    ins.wait_idle()
    assert sorted(f.kind for f in sink.found) == ["chore", "codename"]
    assert scanned.count("continue") == 2


def test_block_refuses_with_how_to_allow_and_the_fingerprint_allows(tmp_path: Path) -> None:
    sink = Sink()
    config = "/home/ann/.config/devmeter/config.toml"
    ins = SecretInspector(
        SecretsPolicy(mode="block"), load_salt(tmp_path), sink.found.append, config_path=config
    )
    outcome = ins.inspect("openai.responses", codex_ws_turn(), WHO, 1.0)
    assert outcome.block is not None
    message = outcome.block.message
    assert message.startswith("devmeter: refused") and "private-key" in message
    assert "allow_fingerprints" in message and PLANTED["private-key"] not in message
    # Which file to edit, not a bare "config.toml" the user must go and find.
    assert f"under [secrets] in {config} (or set" in message
    assert [f.action for f in sink.found] == ["blocked"]
    allowed = SecretsPolicy(mode="block", allow_fingerprints=frozenset({sink.found[0].fingerprint}))
    again = SecretInspector(allowed, load_salt(tmp_path), sink.found.append)
    assert again.inspect("openai.responses", codex_ws_turn(), WHO, 2.0).block is None


def test_redact_replaces_secrets_in_the_whole_conversation(tmp_path: Path) -> None:
    sink = Sink()
    ins = inspector(tmp_path, SecretsPolicy(mode="redact"), sink)
    bodies = []
    for doc, api in ((claude_code_read_env(extra_turn=True), "anthropic.messages"),
                     (gemini_request(), "gemini.generate")):  # fmt: skip
        outcome = ins.inspect(api, doc, WHO, 1.0)
        assert outcome.redacted and outcome.block is None
        bodies.append(json.dumps(doc))
        assert not any(s in bodies[-1] for s in PLANTED.values())
    assert "[REDACTED by devmeter: stripe-key]" in bodies[0]
    assert "thanks, now fix it" in bodies[0] and "DEBUG=false" in bodies[0]
    assert "[REDACTED by devmeter: gcp-service-account]" in bodies[1]
    assert "[REDACTED by devmeter: private-key]" in bodies[1]
    assert "deployer@acme-prod-4471.iam.gserviceaccount.com" in bodies[1]
    assert {f.kind for f in sink.found} >= {"stripe-key", "gcp-service-account", "private-key"}
    earlier = [f for f in sink.found if f.kind == "stripe-key"]
    assert earlier[0].location == "earlier in the conversation"


def test_per_repo_and_per_rule_modes() -> None:
    policy = parse_secrets({"mode": "warn", "modes": {"private-key": "block"},
                            "repos": {"/fixtures": "off", "/prod": "redact"}})  # fmt: skip
    assert policy.strictest_possible("/fixtures") == "off"
    assert policy.strictest_possible("/elsewhere") == "block"  # a rule may block: scan first
    assert parse_secrets({}).strictest_possible(None) == "warn"
    assert policy.repo_mode("/prod") == "redact"


def test_findings_survive_a_restart_and_list_without_secrets(tmp_path: Path) -> None:
    """Rows go through the ledger writer; a restarted proxy loads what was reported and
    does not report it again; the table shows the masked preview only."""
    from devmeter.ledger import LedgerWriter, connect_readonly
    from devmeter.secrets.inspector import seen_in_ledger
    from devmeter.secrets.report import findings, findings_table

    ledger = tmp_path / "ledger.sqlite"
    writer = LedgerWriter(ledger)
    sink = Sink()
    ins = SecretInspector(
        SecretsPolicy(mode="block"), load_salt(tmp_path), lambda f: writer.add_finding(f.row())
    )
    ins.inspect("openai.responses", codex_ws_turn(), WHO, 1_800_000_000.0)
    writer.close()
    seen = seen_in_ledger(ledger)
    assert len(seen) == 1
    again = SecretInspector(
        SecretsPolicy(mode="block"), load_salt(tmp_path), sink.found.append, seen=seen
    )
    assert again.inspect("openai.responses", codex_ws_turn(), WHO, 1_800_000_100.0).block
    assert sink.found == []  # still refused, not reported twice
    conn = connect_readonly(ledger)
    assert conn is not None
    rows = findings(conn)
    assert [(r["kind"], r["action"], r["location"]) for r in rows] == [
        ("private-key", "blocked", "tool result (deploy/id_ed25519)")
    ]
    table = findings_table(rows, 200)
    assert "OPENSSH PRIVATE KEY …" in table and "1 finding" in table
    assert PLANTED["private-key"][40:60] not in table


def test_a_scanner_failure_lets_the_request_through_and_says_so_without_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail open, in block mode too: the request is forwarded as sent, the call's row is
    kept and names the failure by type only (its message could quote the request)."""
    from mitmproxy import http
    from mitmproxy.test import tflow, tutils

    from devmeter.proxy.meter import Meter
    from devmeter.secrets import inspector as inspector_module

    def broken(*_: Any) -> list[Any]:
        raise ValueError(PLANTED["stripe-key"])

    monkeypatch.setattr(inspector_module, "scan", broken)
    recorded: list[Any] = []
    ins = SecretInspector(SecretsPolicy(mode="block"), load_salt(tmp_path), lambda _: None)
    meter = Meter(recorded.append, lambda *_: WHO, secrets=ins)
    body = json.dumps(claude_code_read_env()).encode()
    flow = tflow.tflow(
        req=tutils.treq(
            host="api.anthropic.com", port=443, scheme=b"https", authority=b"api.anthropic.com",
            path=b"/v1/messages", method=b"POST", content=body,
            headers=http.Headers(host="api.anthropic.com", content_type="application/json"),
        )
    )  # fmt: skip
    meter.requestheaders(flow)
    meter.request(flow)
    assert flow.response is None and flow.request.content == body  # forwarded, untouched
    flow.response = tutils.tresp(
        content=b"{}", headers=http.Headers(content_type="application/json")
    )
    meter.responseheaders(flow)
    meter.response(flow)
    (call,) = recorded
    assert "devmeter secret scan failed (call let through): ValueError" in call.error
    assert PLANTED["stripe-key"] not in call.error


def test_count_tokens_and_embeddings_are_inspected_too(tmp_path: Path) -> None:
    sink = Sink()
    ins = inspector(tmp_path, SecretsPolicy(mode="redact"), sink)
    counted = claude_code_read_env()
    del counted["max_tokens"]
    assert ins.inspect("anthropic.count_tokens", counted, WHO, 1.0).redacted
    embedded = {"model": "text-embedding-3-small", "input": [CONTEXT["github-token"], "x"]}
    assert ins.inspect("openai.embeddings", embedded, WHO, 1.0).redacted
    assert PLANTED["github-token"] not in json.dumps(embedded)
    assert new_pieces("openai.embeddings", {"input": "a"})[0].where == "embedding input"


def test_realtime_client_events_yield_their_text_and_never_audio() -> None:
    """Each Realtime event is new content: items, response instructions and inputs,
    session instructions; audio (buffers, input_audio parts) is skipped, its transcript not."""
    stripe = PLANTED["stripe-key"]
    events = [
        {"type": "input_audio_buffer.append", "audio": "UklGR" * 400},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
         "content": [{"type": "input_audio", "audio": "AAAA" * 100, "transcript": "say hi"},
                     {"type": "input_text", "text": f"key {stripe}"}]}},
        {"type": "conversation.item.create", "item": {"type": "function_call_output",
         "call_id": "c1", "output": "DEBUG=1"}},
        {"type": "response.create", "response": {"instructions": "Be terse.", "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
        ]}},
        {"type": "session.update", "session": {"instructions": "You are a helpful voice."}},
    ]  # fmt: skip
    got = [[(p.where, p.text) for p in new_pieces("openai.realtime", e)] for e in events]
    assert got == [
        [],
        [("message", "say hi"), ("message", f"key {stripe}")],
        [("tool result", "DEBUG=1")],
        [("system prompt", "Be terse."), ("message", "x")],
        [("system prompt", "You are a helpful voice.")],
    ]
    assert [(p.text) for p in all_pieces("openai.realtime", events[1])] == [
        "say hi", f"key {stripe}",
    ]  # fmt: skip


def test_a_toy_wire_format_registered_from_a_test_has_its_new_turn_inspected(
    tmp_path: Path,
) -> None:
    # The inspector knows no API by name: a format's WireFormat says which of its
    # strings are the new turn and which were sent before (providers/registry.py).
    from collections.abc import Iterator

    from devmeter.providers import registry
    from devmeter.providers.turn_text import Piece, last_index, strings

    def said_by(turns: list[Any]) -> Iterator[Piece]:
        for turn in turns:
            if isinstance(turn, dict):
                yield from strings(turn.get("say"), "message", turn, "say")

    def new_turn(doc: dict[str, Any]) -> Iterator[Piece]:
        turns = doc.get("turns") or []
        yield from said_by(turns[last_index(turns, lambda t: t.get("who") == "bot") + 1 :])

    def sent(doc: dict[str, Any]) -> Iterator[Piece]:
        yield from said_by(doc.get("turns") or [])

    toy = "acme.secret_toy"
    registry.register(registry.WireFormat(
        toy, "acme", lambda *_: None, lambda s, m: {}, new_turn=new_turn, sent_text=sent,  # type: ignore[arg-type,return-value]
    ))  # fmt: skip
    try:
        stripe, key = PLANTED["stripe-key"], CONTEXT["private-key"]
        doc = {"turns": [{"who": "me", "say": f"use {stripe}"}, {"who": "bot", "say": "ok"},
                         {"who": "me", "say": f"and this key:\n{key}"}]}  # fmt: skip
        warned = Sink()
        warn = inspector(tmp_path, SecretsPolicy(), warned)
        warn.inspect(toy, copy.deepcopy(doc), WHO, 1.0)
        warn.wait_idle()
        assert [f.kind for f in warned.found] == ["private-key"]  # the new turn's only

        redacted = Sink()
        outcome = inspector(tmp_path, SecretsPolicy(mode="redact"), redacted).inspect(
            toy, doc, WHO, 2.0
        )
        assert outcome.redacted and stripe not in json.dumps(doc) and key not in json.dumps(doc)
        where = {f.kind: f.location for f in redacted.found}
        assert where == {"stripe-key": "earlier in the conversation", "private-key": "message"}
    finally:
        registry.unregister(toy)
    assert new_pieces(toy, doc) == [] and all_pieces(toy, {"turns": []}) == []
