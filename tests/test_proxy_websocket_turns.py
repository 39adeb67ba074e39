"""Who sends each turn on a long-lived WebSocket, through a real proxy.

Codex keeps one Responses WebSocket for a whole session. Each turn on it is attributed
when it is sent, not once at the handshake: a branch the developer switched to since is
the next turn's branch.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.clients_env import git_repo
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import SOCKET_SECONDS, RunningProxy

pytestmark = pytest.mark.proxy

TURN = {"type": "response.create", "model": "gpt-5", "input": "hi", "stream": True}
GIT_TTL = 2.0  # devmeter/gitinfo.py: a branch switch shows within this long


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def test_each_turn_on_one_socket_has_the_branch_it_was_sent_on(
    proxy: RunningProxy, tmp_path: Path
) -> None:

    repo = git_repo(tmp_path / "payments", "feature/one")
    session = f"ws-turns-{uuid.uuid4().hex[:8]}"

    def turn(socket: object) -> None:
        socket.send(json.dumps(TURN))  # type: ignore[attr-defined]
        while True:
            event = json.loads(socket.recv(timeout=SOCKET_SECONDS))  # type: ignore[attr-defined]
            if event["type"] == "response.completed":
                return

    with proxy.responses_socket(session, {"X-Devmeter-Project": str(repo)}) as socket:
        turn(socket)
        subprocess.run(
            ["git", "checkout", "-q", "-b", "feature/two"], cwd=repo, check=True, timeout=30
        )
        time.sleep(GIT_TTL + 0.3)
        turn(socket)

    deadline = time.monotonic() + 10
    while len(rows := proxy.rows("session = ?", (session,))) < 2:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert [(r["status"], r["repo"], r["branch"]) for r in rows] == [
        (101, str(repo), "feature/one"),
        (101, str(repo), "feature/two"),
    ]


def test_a_turn_row_has_the_time_it_was_sent_and_how_long_its_answer_took(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """As an HTTP call's row has its request's time: a row stamped when its answer ended
    (or when the socket closed) put a turn later than it was, and its duration at 0."""

    upstream.defaults.update(delay_ms=80)  # between events: an answer of about a second
    session = f"ws-time-{uuid.uuid4().hex[:8]}"
    with proxy.responses_socket(session) as socket:
        sent = time.time()
        socket.send(json.dumps(TURN))
        while json.loads(socket.recv(timeout=SOCKET_SECONDS))["type"] != "response.completed":
            pass
        answered = time.time()

    deadline = time.monotonic() + 10
    while not (rows := proxy.rows("session = ?", (session,))):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (row,) = rows
    took = answered - sent
    assert took > 0.5, "the fake upstream's answer was too quick to tell the times apart"
    # Nearer the send than the answer's end, however loaded the machine.
    assert sent - 0.05 <= row["ts"] < sent + took / 2, (row["ts"] - sent, took)
    assert took / 2 < row["duration_ms"] / 1000 <= took + 0.05, (row["duration_ms"], took)
