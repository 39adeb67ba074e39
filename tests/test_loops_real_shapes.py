"""Loop detection on the tool-result shapes the real CLIs send (tests/fixtures/runaway).

Each fixture holds consecutive requests of a real Claude Code or Codex CLI stuck running
one command: Codex's outputs start `Chunk ID: <6 random hex>` and `Wall time: ...`, `date`
prints the time and `mktemp` a new temp path each call, and every call has new ids.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from devmeter.runaway import RunawayDetector, request_fingerprint
from devmeter.usage import Attribution, Call, Usage

FIXTURES = Path(__file__).parent / "fixtures" / "runaway"
T0 = 1_796_000_000.0
CLIENTS = {"codex": "codex-0.169.0", "claude-code": "claude-code"}


def requests(client: str, command: str) -> list[dict[str, Any]]:
    doc = json.loads((FIXTURES / f"{CLIENTS[client]}-{command}.json").read_text())
    return doc["requests"]


def observe(client: str, bodies: list[dict[str, Any]], every_s: float = 2.0) -> list[Any]:
    detector = RunawayDetector()
    who = Attribution(tool=client, session="0bcf16ce-9d3e-4f0a-b1c2-d3e4f5a6b7c8", repo="/src/a")
    alerts = []
    for i, body in enumerate(bodies):
        call = Call(
            ts=T0 + i * every_s,
            provider="openai" if client == "codex" else "anthropic",
            endpoint="x",
            host="x",
            requested_model=body.get("model"),
            model=body.get("model"),
            attribution=who,
            usage=Usage(input_tokens=1000, output_tokens=50),
            cost_usd=Decimal("0.11"),
            price_source="test",
            status=200,
        )
        alerts += [a for a in detector.observe(call, fingerprint=request_fingerprint(body))
                   if a.kind == "loop"]  # fmt: skip
    return alerts


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("command", ["ls", "cat", "date"])
def test_a_stuck_real_client_is_one_fingerprint_and_one_loop_alert(
    client: str, command: str
) -> None:
    bodies = requests(client, command)
    prints = {request_fingerprint(b) for b in bodies[1:]}  # the first may carry a reminder
    assert len(prints) == 1, f"{client} {command}: {len(prints)} fingerprints"
    alerts = observe(client, bodies)
    assert len(alerts) == 1
    assert "near-identical requests" in alerts[0].message


def test_codex_outputs_differ_only_in_volatile_tokens() -> None:
    """The regression: Codex's `Chunk ID` made 80 identical `ls` calls look all different."""
    a, b = requests("codex", "date")[2:4]
    assert a["input"][-1]["output"] != b["input"][-1]["output"]
    assert "Chunk ID:" in a["input"][-1]["output"] and "/tmp/tmp." in a["input"][-1]["output"]
    assert request_fingerprint(a) == request_fingerprint(b)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_loop_cycling_over_two_commands_is_one_alert(client: str) -> None:
    ls, cat = requests(client, "ls")[1:], requests(client, "cat")[1:]
    cycling = [body for pair in zip(ls, cat, strict=False) for body in pair]
    assert len({request_fingerprint(b) for b in cycling}) == 2
    assert len(observe(client, cycling)) == 1


def _with_command(body: dict[str, Any], client: str, line: int) -> dict[str, Any]:
    """The same real request shape, asking for (and getting) a different line each time."""
    body = copy.deepcopy(body)
    items = body["input"] if client == "codex" else body["messages"]
    call, result = items[-2], items[-1]
    if client == "codex":
        call["arguments"] = json.dumps({"cmd": f"sed -n {line}p notes.txt"})
        result["output"] = result["output"].replace("notes.txt", f"line {line} of notes")
    else:
        tool_use = next(c for c in call["content"] if c.get("type") == "tool_use")
        tool_use["input"] = {"command": f"sed -n {line}p notes.txt"}
        result["content"][0]["content"] = f"line {line} of notes"
    return body


@pytest.mark.parametrize("client", CLIENTS)
def test_distinct_work_in_the_same_shape_is_not_a_loop(client: str) -> None:
    base = requests(client, "ls")[2]
    work = [_with_command(base, client, line) for line in range(1, 16)]
    assert len({request_fingerprint(b) for b in work}) == 15
    assert observe(client, work) == []
