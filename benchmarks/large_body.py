"""A late-session Claude Code request body, about 1 MB: the whole conversation re-sent.

The shape follows a captured Claude Code request (tests/fixtures/runaway/claude-code-*.json
and the messages request those fixtures were cut from): system blocks with cache markers,
a tool list with JSON schemas, metadata with the session id, adaptive thinking, streaming,
then a long run of turns: the assistant's text and a `tool_use` (Read, Bash, Grep), the
user's `tool_result` holding a numbered source file or command output. The last turn is a
small tool result, as it is when Claude Code runs a command and sends its output back.

Deterministic (no randomness), so every process and round sends the same bytes.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

SESSION_ID = "c94186ab-2b3f-417d-a580-48a4be19ff53"
ENVIRONMENT = (
    "# Environment\nYou have been invoked in the following environment: \n"
    " - Primary working directory: /home/dev/src/acme-api\n - Is a git repository: true\n"
    " - Platform: linux\n - Shell: bash\n - OS Version: Linux 6.18.44\n"
)


def _sources() -> list[tuple[str, str]]:
    """(path, text) of real code for the model to 'read': the standard library's asyncio
    and email packages, which do not change with this repository's commits (so the body
    is the same before and after a change to devmeter)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted([*(stdlib / "asyncio").glob("*.py"), *(stdlib / "email").glob("*.py")])
    return [
        (str(p.relative_to(stdlib)), p.read_text(encoding="utf-8"))
        for p in files
        if p.stat().st_size > 2000
    ]


def _numbered(text: str) -> str:
    """Claude Code's Read tool output: right-aligned line numbers and a tab."""
    return "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(text.splitlines(), start=1))


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": list(properties)[:1],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


TOOLS = [
    _tool("Bash", "Executes a given bash command and returns its output. " * 20,
          {"command": {"type": "string"}, "timeout": {"type": "number"},
           "description": {"type": "string"}}),
    _tool("Read", "Reads a file from the local filesystem. " * 20,
          {"file_path": {"type": "string"}, "offset": {"type": "number"},
           "limit": {"type": "number"}}),
    _tool("Grep", "A powerful search tool built on ripgrep. " * 20,
          {"pattern": {"type": "string"}, "path": {"type": "string"},
           "glob": {"type": "string"}}),
    _tool("Edit", "Performs exact string replacements in files. " * 20,
          {"file_path": {"type": "string"}, "old_string": {"type": "string"},
           "new_string": {"type": "string"}}),
]  # fmt: skip


def _turn(i: int, path: str, text: str) -> list[dict[str, Any]]:
    """One assistant tool call and its result: a Read, a Grep or a Bash, in turn."""
    tool_id = f"toolu_01{i:022d}"
    kind = i % 3
    if kind == 0:
        call = {"file_path": f"/home/dev/src/acme-api/{path}"}
        name, output = "Read", _numbered(text[:12000])
    elif kind == 1:
        call = {"pattern": "def ", "path": f"/home/dev/src/acme-api/{path}"}
        hits = [
            f"{path}:{n}:{line}" for n, line in enumerate(text.splitlines(), 1) if "def " in line
        ]
        name, output = "Grep", "\n".join(hits)
    else:
        call = {"command": f"git log --oneline -20 -- {path} && wc -l {path}"}
        name = "Bash"
        output = "\n".join(f"{i * 7919 + n:07x} change {n} to {path}" for n in range(20))
    return [
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "", "signature": "EqQBCkgIAxABGAIiQ" + "A" * 200},
                {"type": "text", "text": f"Let me look at {path} next."},
                {"type": "tool_use", "id": tool_id, "name": name, "input": call},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": output}],
        },
    ]


def conversation_body(size: int = 1_000_000, model: str = "claude-opus-5-5") -> bytes:
    """A Claude Code Messages request of at least `size` bytes (a little over), the last
    turn a short command output."""
    body, messages = _request(model)
    sources = _sources()
    budget = size - len(_compact(body))
    i = 0
    while budget > 0:
        path, text = sources[i % len(sources)]
        turn = _turn(i, path, text)
        budget -= len(_compact(turn)) + 1
        messages += turn
        i += 1
    last = messages[-1]["content"][-1]
    last["content"] = "12 passed in 0.41s"
    last["cache_control"] = {"type": "ephemeral"}
    return _compact(body)


def conversation_bodies(
    count: int, size: int = 1_000_000, model: str = "claude-opus-5-5"
) -> list[bytes]:
    """`count` successive requests of one Claude Code session, as the CLI sends them: the
    first of at least `size` bytes, each next one the same conversation plus one turn (an
    assistant's Bash call and its ~1 KB output), the `cache_control` marker moved from the
    previous last message to the new one. Each body differs from the one before from
    inside its last message on, as the real CLI's do (tests/fixtures/runaway/claude-code-*)."""
    body, messages = _request(model)
    sources = _sources()
    budget = size - len(_compact(body))
    turns: list[list[dict[str, Any]]] = []
    i = 0
    while budget > 0 or len(turns) < count:
        path, text = sources[i % len(sources)]
        turn = _turn(i, path, text)
        if budget > 0:
            budget -= len(_compact(turn)) + 1
            messages += turn
        elif i % 3 == 2:  # a command and its short output: the body stays about `size`
            turns.append(turn)
        i += 1
    bodies = []
    for turn in [[], *turns[: count - 1]]:
        messages += turn
        last = messages[-1]["content"][-1]
        last["cache_control"] = {"type": "ephemeral"}
        bodies.append(_compact(body))
        del last["cache_control"]
    return bodies


def _request(model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The request's keys, in the CLI's order (the conversation last), and its first
    user message; the caller appends the turns."""
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"<system-reminder>\n{ENVIRONMENT}</system-reminder>\n"},
                {"type": "text", "text": "Find why the proxy is slow on long sessions and fix it."},
            ],
        }
    ]
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 32000,
        "stream": False,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "metadata": {
            "user_id": json.dumps(
                {"device_id": "337c304ac325" * 5, "account_uuid": "", "session_id": SESSION_ID}
            )
        },
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {
                "type": "text",
                "text": "You are an interactive agent that helps users with software tasks. " * 60,
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": TOOLS,
        "messages": messages,
    }
    return body, messages


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


if __name__ == "__main__":
    data = conversation_body()
    print(f"{len(data):,} bytes, {len(json.loads(data)['messages'])} messages")
