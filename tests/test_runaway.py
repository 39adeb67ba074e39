"""Runaway detection: recorded sessions in, the warnings a developer gets (and when) out."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from devmeter.alerts import Alert
from devmeter.budget import BudgetTracker
from devmeter.config_error import ConfigError
from devmeter.runaway import (
    RunawayConfig,
    RunawayDetector,
    is_human_turn,
    parse_runaway,
    request_fingerprint,
)
from devmeter.usage import Attribution, Call, Usage

D = Decimal
T0 = 1_795_000_000.0
MIN = 60.0
AGENT = Attribution(tool="claude-code", session="c94186ab-2b3f-417d", repo="/home/dev/src/acme")


def call(ts: float, cost: str, who: Attribution = AGENT) -> Call:
    return Call(
        ts=ts,
        provider="anthropic",
        endpoint="anthropic.messages",
        host="api.anthropic.com",
        requested_model="claude-opus-5-5",
        model="claude-opus-5-5",
        attribution=who,
        usage=Usage(input_tokens=50_000, output_tokens=800),
        cost_usd=D(cost),
        price_source="genai-prices 0.2.3",
        status=200,
    )


def steady(start: float, every_s: float, count: int, cost: str) -> list[Call]:
    return [call(start + i * every_s, cost) for i in range(count)]


def kinds(alerts: list[Alert]) -> list[tuple[str, Decimal]]:
    return [(a.kind, a.figure_usd) for a in alerts]


# --- burn rate and projection ----------------------------------------------------------------


def test_a_fast_burn_is_projected_before_the_spend_gets_there():
    """$1 every 30 s is $120/hour: say so in the session's first minute, over its real age
    (not over a 10-minute window it has not lived yet), long before $50 has gone."""
    detector, budgets = RunawayDetector(), BudgetTracker()
    timeline: list[tuple[float, Alert]] = []
    spent = D(0)
    for c in steady(T0, 30, 40, "1.00"):
        spent += c.cost_usd
        for alert in detector.observe(c) + budgets.observe(c):
            timeline.append((spent, alert))

    assert [(s, a.kind, a.figure_usd) for s, a in timeline] == [
        (D(3), "projection", D(50)),  # $3 in its first 60 s: $180/hour
        (D(5), "threshold", D(5)),
        (D(20), "threshold", D(20)),
    ]
    projection = timeline[0][1]
    assert projection.ts == T0 + 2 * 30
    assert (projection.scope, projection.key, projection.session) == (
        "session",
        AGENT.session,
        AGENT.session,
    )
    assert projection.message == (
        "Session c94186ab (claude-code in acme) is burning $180.00/hour ($3.00 in the last "
        "60 s, $3.00 so far): at this rate it passes $183.00 within the hour. To stop it: "
        "`devmeter stop c94186ab`."
    )


def test_a_runaway_at_370_dollars_an_hour_alerts_within_its_first_minute():
    """The issue's runaway: every answer a tool call, ~$0.11 a call, a call a second."""
    detector = RunawayDetector()
    alerts = [
        (c.ts - T0, a)
        for c in [call(T0 + i * 1.07, "0.11") for i in range(120)]
        for a in detector.observe(c)
    ]
    # Both levels at once (one alert naming the higher), 20 s in, $2.20 spent.
    assert [a.figure_usd for _, a in alerts] == [D(200)]
    assert all(seconds < 60 for seconds, _ in alerts)
    # The figure it prints is the real rate: ~$370/hour, not a tenth of it.
    last = alerts[-1][1]
    assert "is burning $3" in last.message


def test_the_rate_is_over_the_window_once_the_session_is_older():
    detector = RunawayDetector()
    for c in steady(T0, 60, 30, "0.50"):  # $30/hour for half an hour
        detector.observe(c)
    burn = detector.burn(AGENT.session, T0 + 29 * 60)
    assert burn is not None and burn.rate_usd_per_hour == D("30.00")  # $5 in 10 min


def test_one_expensive_call_among_cheap_ones_does_not_page():
    """Minimum evidence: the rate must pass a level without the window's largest call."""
    detector = RunawayDetector()
    calls = [call(T0, "3.00"), call(T0 + 20, "0.01"), call(T0 + 40, "0.01")]
    assert [a for c in calls for a in detector.observe(c)] == []
    burn = detector.burn(AGENT.session, T0 + 40)
    assert burn is not None and burn.rate_usd_per_hour > 50  # the rate is high, the proof thin


def test_a_busy_but_sane_session_never_triggers_a_projection():
    """$0.15 every 30 s ($18/hour) for three hours: a long day, not a runaway."""
    detector = RunawayDetector()
    alerts = [a for c in steady(T0, 30, 360, "0.15") for a in detector.observe(c)]
    assert alerts == []
    burn = detector.burn(AGENT.session, T0 + 359 * 30)
    assert burn is not None
    assert burn.rate_usd_per_hour == D("18.00")
    assert burn.spent_usd == D("54.00")


def test_one_expensive_call_is_not_a_rate():
    detector = RunawayDetector()
    assert detector.observe(call(T0, "15.00")) == []
    assert detector.observe(call(T0 + 30, "0.01")) == []


def test_a_rate_jumping_two_levels_alerts_once_naming_the_higher():
    detector = RunawayDetector()
    alerts = [a for c in steady(T0, 10, 3, "15.00") for a in detector.observe(c)]
    assert kinds(alerts) == [("projection", D(200))]  # $45 in 10 min = $270/hour
    assert [a for c in steady(T0 + 30, 10, 10, "15.00") for a in detector.observe(c)] == []


def test_a_rate_hovering_at_a_level_does_not_flap_but_a_new_burst_after_a_lull_alerts_again():
    detector = RunawayDetector()
    # ~$50/hour: $0.42 every 30 s puts $8.40 in the window, then the rate wobbles around
    # $50 as cheaper and dearer calls come and go.
    costs = ["0.42"] * 20 + ["0.30", "0.55"] * 20
    calls = [call(T0 + i * 30, cost) for i, cost in enumerate(costs)]
    alerts = [a for c in calls for a in detector.observe(c)]
    assert kinds(alerts) == [("projection", D(50))]

    # Forty minutes of quiet: the rate falls to $0, below half the level, so it re-arms.
    restart = calls[-1].ts + 40 * MIN
    burst = [a for c in steady(restart, 20, 30, "0.60") for a in detector.observe(c)]
    assert kinds(burst) == [("projection", D(50))]


def test_sessions_are_rated_separately():
    detector = RunawayDetector()
    others = [
        Attribution(tool="codex", session=f"worker-{i}", repo="/home/dev/src/acme")
        for i in range(6)
    ]
    # Six workers at $30/hour each: $180/hour together, no single one running away.
    alerts = [
        a
        for i in range(60)
        for who in others
        for a in detector.observe(call(T0 + i * 30, "0.25", who))
    ]
    assert alerts == []


# --- loops ---------------------------------------------------------------------------------


def test_the_same_request_eight_times_in_five_minutes_is_a_loop_reported_once():
    detector = RunawayDetector()
    alerts = [
        a
        for i, c in enumerate(steady(T0, 20, 14, "0.10"))
        for a in detector.observe(c, fingerprint="same-failing-call", human_turn=False)
    ]
    assert kinds(alerts) == [("loop", D("0.80"))]
    assert alerts[0].ts == T0 + 7 * 20
    assert alerts[0].message == (
        "Session c94186ab (claude-code in acme) sent 8 near-identical requests in 5 min "
        "($0.80): it may be stuck in a loop. To stop it: `devmeter stop c94186ab`."
    )


def test_repeats_spread_out_or_interleaved_with_progress_are_not_a_loop():
    detector = RunawayDetector()
    slow = [
        a
        for c in steady(T0, 50, 20, "0.10")  # every 50 s: 6 in any 5 minutes
        for a in detector.observe(c, fingerprint="poll-ci")
    ]
    varied = [
        a
        for i, c in enumerate(steady(T0 + 3600, 5, 40, "0.10"))
        for a in detector.observe(c, fingerprint=f"step-{i % 6}")
    ]
    assert slow == varied == []


def test_a_loop_that_stops_and_starts_again_is_reported_again():
    detector = RunawayDetector()
    first = steady(T0, 10, 9, "0.05")
    again = steady(T0 + 20 * MIN, 10, 9, "0.05")
    alerts = [a for c in first + again for a in detector.observe(c, fingerprint="retry")]
    assert [a.ts for a in alerts] == [first[7].ts, again[7].ts]


def test_a_loop_seeded_from_the_ledger_counts_on_and_old_prints_do_not():
    """After a restart: 5 repeats in the window plus 3 more is a loop of 8; repeats that
    left the loop window before the restart count for nothing."""
    key = "c94186ab-2b3f-417d"
    before = steady(T0, 20, 5, "0.10")
    prints = [(key, c.ts, "retry", D("0.10")) for c in before]
    stale = [(key, T0 - 10 * MIN + i, "stale", D("0.10")) for i in range(7)]
    now = before[-1].ts + 5
    seeded = RunawayDetector()
    seeded.seed([(key, c.ts, c.ts, D("0.10")) for c in before], [], now, stale + prints)
    after = steady(now + 5, 20, 3, "0.10")
    alerts = [a for c in after for a in seeded.observe(c, fingerprint="retry")]
    assert kinds(alerts) == [("loop", D("0.80"))]
    assert alerts[0].ts == after[2].ts
    assert seeded.observe(call(now + 80, "0.10"), fingerprint="stale") == []


def test_a_loop_already_announced_before_a_restart_is_not_announced_again():
    key = "c94186ab-2b3f-417d"
    before = steady(T0, 10, 9, "0.10")
    detector = RunawayDetector()
    now = before[-1].ts + 1
    detector.seed(
        [(key, c.ts, c.ts, D("0.10")) for c in before],
        [("loop", key, D("0.80"), before[7].ts)],
        now,
        [(key, c.ts, "retry", D("0.10")) for c in before],
    )
    assert detector.observe(call(now + 5, "0.10"), fingerprint="retry") == []


# --- unattended sessions -------------------------------------------------------------------


def test_an_hour_without_a_human_turn_is_reported_once_and_a_human_turn_resets_it():
    detector = RunawayDetector()
    alerts: list[Alert] = []
    # A prompt, then 70 minutes of tool calls every 30 s.
    alerts += detector.observe(call(T0, "0.05"), human_turn=True)
    for c in steady(T0 + 30, 30, 140, "0.05"):
        alerts += detector.observe(c, human_turn=False)
    assert kinds(alerts) == [("long_running", D("6.05"))]
    assert alerts[0].ts == T0 + 120 * 30
    assert alerts[0].message.startswith(
        "Session c94186ab (claude-code in acme) has run 60 min and 121 calls ($6.05) with no "
        "human turn."
    )
    # The developer answers; the clock starts again.
    later = T0 + 75 * MIN
    alerts = detector.observe(call(later, "0.05"), human_turn=True)
    for c in steady(later + 30, 30, 100, "0.05"):
        alerts += detector.observe(c, human_turn=False)
    assert alerts == []


def test_too_many_calls_without_a_human_turn_is_reported_even_inside_the_hour():
    detector = RunawayDetector(parse_runaway({"long_running_calls": 50}))
    alerts = [a for c in steady(T0, 2, 80, "0.001") for a in detector.observe(c, human_turn=False)]
    assert [(a.kind, a.ts) for a in alerts] == [("long_running", T0 + 49 * 2)]


def test_long_running_limits_can_be_turned_off():
    detector = RunawayDetector(parse_runaway({"long_running_minutes": 0, "long_running_calls": 0}))
    assert [
        a for c in steady(T0, 30, 400, "0") for a in detector.observe(c, human_turn=False)
    ] == []


# --- memory --------------------------------------------------------------------------------


def test_idle_sessions_are_evicted_and_the_session_count_is_capped():
    detector = RunawayDetector(RunawayConfig(max_sessions=100))
    for i in range(1000):
        detector.observe(call(T0, "0.01", Attribution(tool="sdk", session=f"s{i}")))
    assert len(detector) == 100
    detector.observe(call(T0 + 3 * 3600, "0.01"))  # three hours later
    assert len(detector) == 1
    assert detector.burn("s999", T0 + 3 * 3600) is None


def test_a_long_loop_keeps_bounded_windows():
    detector = RunawayDetector()
    for c in steady(T0, 0.01, 20_000, "0.0001"):
        detector.observe(c, fingerprint="x", human_turn=False)
    state = detector._session(AGENT.session)
    assert state is not None
    assert len(state.prints) <= 4 * 8 + 64
    assert len(state.costs) <= 4096


# --- fingerprints --------------------------------------------------------------------------


def anthropic_tool_turn(n: int, tool_id: str, output: str, command: str = "npm test") -> dict:
    """A Claude Code request after n turns of running a tool that keeps failing."""
    history = []
    for i in range(n):
        history += [
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": f"try {i}", "signature": f"sig{i}"},
                    {
                        "type": "tool_use",
                        "id": f"toolu_0{i}{tool_id}",
                        "name": "Bash",
                        "input": {"command": command},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"toolu_0{i}{tool_id}",
                        "content": output,
                        "is_error": True,
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ]
    return {
        "model": "claude-opus-5-5",
        "max_tokens": 32000,
        "metadata": {"user_id": f'{{"session_id": "{tool_id}"}}'},
        "messages": [{"role": "user", "content": "fix the tests"}, *history],
    }


def test_a_failing_tool_retried_with_new_ids_and_timestamps_has_one_fingerprint():
    first = anthropic_tool_turn(
        1,
        "1AbC",
        "FAIL src/api.test.ts (3.21 s)\n  at 2026-11-23T10:15:02.120Z run 4f3e9a2b1c0d9e8f",
    )
    tenth = anthropic_tool_turn(
        10,
        "9XyZ",
        "FAIL src/api.test.ts (2.97 s)\n  at 2026-11-23T10:19:44.881Z run 0d1e2f3a4b5c6d7e",
    )
    assert request_fingerprint(first) == request_fingerprint(tenth)


def test_a_different_command_output_or_model_is_a_different_request():
    base = request_fingerprint(anthropic_tool_turn(2, "a", "FAIL"))
    assert request_fingerprint(anthropic_tool_turn(2, "a", "PASS")) != base
    assert request_fingerprint(anthropic_tool_turn(2, "a", "FAIL", "npm run lint")) != base
    other_model = anthropic_tool_turn(2, "a", "FAIL") | {"model": "claude-haiku-5"}
    assert request_fingerprint(other_model) != base
    assert request_fingerprint(anthropic_tool_turn(2, "a", "FAIL"), model="gemini-3") != base


def test_numbers_in_tool_input_matter_numbers_in_tool_output_do_not():
    def read(offset: int, output: str) -> dict:
        body = anthropic_tool_turn(1, "a", output)
        body["messages"][1]["content"][1]["input"] = {"file_path": "/a.py", "offset": offset}
        return body

    assert request_fingerprint(read(100, "line 100")) != request_fingerprint(read(200, "line 200"))
    assert request_fingerprint(read(100, "took 1.2s")) == request_fingerprint(read(100, "took 9s"))


def test_openai_chat_tool_loops_ignore_call_ids():
    def body(call_id: str, extra_history: int) -> dict:
        return {
            "model": "gpt-6.1",
            "messages": [{"role": "user", "content": "deploy"}]
            + [{"role": "assistant", "content": "working"}] * extra_history
            + [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "deploy", "arguments": '{"env": "prod"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": "error: locked"},
            ],
        }

    assert request_fingerprint(body("call_abc", 0)) == request_fingerprint(body("call_xyz", 5))


def test_responses_and_gemini_bodies_fingerprint_their_last_turn():
    def responses(call_id: str, args: str) -> dict:
        return {
            "type": "response.create",
            "model": "gpt-6.1-sol",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "go"}],
                },
                {"type": "reasoning", "encrypted_content": call_id},
                {"type": "function_call", "call_id": call_id, "name": "shell", "arguments": args},
                {"type": "function_call_output", "call_id": call_id, "output": "exit 1"},
            ],
        }

    assert request_fingerprint(responses("call_1", '{"cmd":["ls"]}')) == request_fingerprint(
        responses("call_2", '{"cmd": ["ls"]}')
    )
    assert request_fingerprint(responses("call_1", '{"cmd":["ls"]}')) != request_fingerprint(
        responses("call_1", '{"cmd":["pwd"]}')
    )

    def gemini(result: str) -> dict:
        return {
            "contents": [
                {"role": "user", "parts": [{"text": "go"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "ls", "args": {}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "ls", "response": result}}],
                },
            ]
        }

    assert request_fingerprint(gemini("a")) != request_fingerprint(gemini("b"))


def test_fingerprints_keep_no_text_and_are_keyed_per_process():
    body = {"model": "m", "messages": [{"role": "user", "content": "my secret plan"}]}
    fp = request_fingerprint(body)
    assert len(fp) == 32 and "secret" not in fp
    assert request_fingerprint(body) == fp
    assert request_fingerprint(body, key=b"another process") != fp


def test_fingerprinting_a_huge_body_is_bounded_and_does_not_mutate_it():
    body = anthropic_tool_turn(3, "a", "x" * 5_000_000)
    before = copy.deepcopy(body)
    assert len(request_fingerprint(body)) == 32
    assert body == before


def nested(depth: int) -> dict:
    body: dict = {"x": 1}
    for _ in range(depth):
        body = {"content": [body]}
    return body


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "2 messages"},
        {"input": 3},
        {"model": "m\ud800", "messages": [{"role": "user", "content": "lone \udc00 surrogate"}]},
        {"messages": [{"role": "user", "content": [nested(5000)]}]},
        [1, 2, 3],
        None,
    ],
)
def test_fingerprint_of_an_unreadable_body_is_still_a_fingerprint(body):
    assert len(request_fingerprint(body)) == 32
    assert is_human_turn(body) in (True, False)


# --- human turns ---------------------------------------------------------------------------

HUMAN = [
    {"messages": [{"role": "user", "content": "say hi"}]},
    # Claude Code: reminders ride along with the typed prompt
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>todo list</system-reminder>"},
                    {"type": "text", "text": "now fix the bug"},
                ],
            }
        ]
    },
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    {"input": "say hi"},
    {
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "say hi"}],
            }
        ]
    },
    {"input": [{"role": "user", "content": "say hi"}]},
    {"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]},
    {"request": {"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}},
]

MACHINE = [
    anthropic_tool_turn(1, "a", "ok"),
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "ok"},
                    {"type": "text", "text": "<system-reminder>…</system-reminder>"},
                ],
            }
        ]
    },
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}]},
    {"messages": [{"role": "tool", "tool_call_id": "c", "content": "ok"}]},
    {"messages": [{"role": "user", "content": "   "}]},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": "ok"}]},
    {"input": [{"type": "custom_tool_call_output", "call_id": "c", "output": "ok"}]},
    {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "ls"}}]}]},
    {},
    {"messages": "2 messages"},
    {"input": []},
]


@pytest.mark.parametrize("body", HUMAN)
def test_a_person_typing_is_a_human_turn(body):
    assert is_human_turn(body) is True


@pytest.mark.parametrize("body", MACHINE)
def test_tool_results_and_unreadable_bodies_are_not_human_turns(body):
    assert is_human_turn(body) is False


# --- config --------------------------------------------------------------------------------


def test_runaway_defaults_and_overrides():
    assert parse_runaway(None) == parse_runaway({}) == RunawayConfig()
    config = parse_runaway(
        {"window_minutes": 15, "projection_usd": [30, 100.5], "loop_count": 0, "rearm_ratio": 0.25}
    )
    assert config.window_minutes == 15
    assert config.projection_usd == (D(30), D("100.5"))
    assert config.loop_count == 0
    assert config.rearm_ratio == D("0.25")


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ({"window": 10}, "runaway.window", "valid keys in [runaway]: window_minutes"),
        ({"window_minutes": 0}, "runaway.window_minutes", "above 0"),
        ({"window_minutes": "10"}, "runaway.window_minutes", "expected a number"),
        ({"projection_usd": [200, 50]}, "runaway.projection_usd", "ascending"),
        ({"projection_usd": 50}, "runaway.projection_usd", "a list"),
        ({"loop_count": 2.5}, "runaway.loop_count", "whole number"),
        ({"loop_count": True}, "runaway.loop_count", "whole number"),
        ({"min_calls": 0}, "runaway.min_calls", "above 0"),
        ({"long_running_calls": -1}, "runaway.long_running_calls", "or 0 for off"),
        ({"rearm_ratio": 1}, "runaway.rearm_ratio", "between 0 and 1"),
        ({"idle_evict_minutes": 5}, "runaway.idle_evict_minutes", "at least window_minutes"),
    ],
)
def test_bad_runaway_config_names_the_key(table, key, says):
    with pytest.raises(ConfigError) as caught:
        parse_runaway(table)
    assert caught.value.key == key
    assert says in caught.value.message


def test_texts_are_normalised_as_the_regexes_say() -> None:
    """The per-pattern cache of short strings, and the split/join that collapses
    whitespace, must give exactly what the two regexes give: for strings whose ids hide
    without any digit, and for every kind of Unicode whitespace."""
    import re

    from devmeter import runaway

    space = re.compile(r"\s+")

    def uncached(value: str, pattern: re.Pattern[str]) -> str:
        return space.sub(" ", pattern.sub("#", value)).strip()

    samples = [
        "hi",
        "user",
        "  two\tspaces \n here ",
        "deadbeefcafe",  # a hash of letters only
        "abcdefab-abcd-abcd-abcd-abcdefabcdef",  # a UUID of letters only
        "toolu_abc",
        "page 2 of 10",
        "2026-01-02T03:04:05Z",
        "",
        "x" * runaway._SHORT_TEXT,
        "9" * (runaway._SHORT_TEXT + 1),
    ]
    every_space = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
    samples += [every_space, f"a{every_space}b{every_space}", "long text  " * 50]
    for pattern in (runaway._IDS_ONLY, runaway._IDS_AND_NUMBERS):
        for value in samples:
            first = runaway._text(value, pattern)
            assert first == uncached(value, pattern)
            assert runaway._text(value, pattern) == first  # now from the cache


def test_fingerprint_is_the_keyed_hash_of_the_sorted_compact_json_shape() -> None:
    import hashlib
    import json

    from devmeter import runaway

    body = {
        "model": "claude-opus-4-1",
        "messages": [
            {"role": "user", "content": "run the tests 3 times"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                               "name": "Bash", "input": {"cmd": "pytest -x 2"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": "failed in 1.2s \udc80"}]},
        ],
    }  # fmt: skip
    key = b"k" * 16
    turn = runaway._normal(runaway._last_turn(body["messages"]), free_text=True)
    shape = json.dumps(
        ["claude-opus-4-1", turn], sort_keys=True, separators=(",", ":"), default=str
    )
    expected = hashlib.blake2b(shape.encode(), digest_size=16, key=key).hexdigest()
    assert request_fingerprint(body, key=key) == expected


# Digests of these bodies under key b"k" * 16, as devmeter 2026-12-07 (main d5ee777)
# wrote them to the ledger: a restarted proxy goes on counting a loop only if it still
# computes the same ones.
_PINNED_BODIES: list[tuple[dict, str]] = [
    (
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are Claude Code."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "say hi"}]}],
        },
        "d94679ed4cad75cdc75fd36a9025031f",
    ),
    (
        {
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "run the tests at 2026-12-07T10:00:00Z"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "x", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_01ABC", "name": "Bash",
                     "input": {"command": "pytest -x", "timeout": 120}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01ABC",
                     "content": "3 failed in 1.2s /tmp/tmp.x8 deadbeefdeadbeef",
                     "is_error": True}]},
            ],
        },
        "58d3051c275d43708a50ca02bde122e9",
    ),
    (
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {
                        "name": "f", "arguments": "{\"a\": 1, \"b\": [1.5, true, null]}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok 42"},
            ],
        },
        "79680c033bedeccff5cd6a26e6f00aae",
    ),
    (
        {
            "contents": [
                {"role": "user", "parts": [{"text": "hello 12"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "g", "args": {"x": 3}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "g", "response": {"v": 3.25}}}]},
            ]
        },
        "5c8fd72f3a3b71d04a605e96907e43c2",
    ),
    ({"model": "gpt-5-mini", "input": "say hi", "stream": True},
     "9447a10ef9e31089ae6c8d8cca729688"),
    ({}, "3635ecdd799028bd0229b40c5873c538"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "digest"), _PINNED_BODIES)
def test_fingerprints_are_those_the_ledger_already_holds(body: dict, digest: str) -> None:
    from devmeter.guard import request_signals

    key = b"k" * 16
    assert request_fingerprint(body, key=key) == digest
    # The guard's path (one conversation look-up for both signals) gives the same.
    assert request_signals(body, "main", key) == (digest, is_human_turn(body))
    assert request_signals(body, "title", key) == (digest, None)


def test_subclassed_containers_and_strings_fingerprint_as_plain_ones() -> None:
    """The fast path picks exact types first; a hand-built body of subclasses (a
    Mapping, a str subclass) must still normalise alike."""

    class Text(str):
        pass

    class Items(list):  # type: ignore[type-arg]
        pass

    class Doc(dict):  # type: ignore[type-arg]
        pass

    plain = anthropic_tool_turn(3, "a", "FAIL 12 at 10:01")
    dressed = copy.deepcopy(plain)
    last = dressed["messages"][-1]
    last["content"] = Items([Doc(part) for part in last["content"]])
    last["content"][0]["content"] = Text(last["content"][0]["content"])
    assert request_fingerprint(dressed) == request_fingerprint(plain)


def test_skipping_the_rate_below_the_lowest_level_changes_no_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call's burn rate is not worked out when the window's spend cannot reach the
    lowest level: every projection alert still fires at the same call, with the same
    figure, as when the rate is worked out for every call. Sessions hover around the
    levels (bursts, lulls, re-arming), with calls a few seconds apart."""
    import random

    from devmeter import runaway

    def alerts_of(calls: list[Call]) -> list[tuple[float, str, Decimal, str]]:
        detector = RunawayDetector(RunawayConfig(projection_usd=(D(5), D(50), D(200))))
        return [
            (c.ts, a.kind, a.figure_usd, a.message)
            for c in calls
            for a in detector.observe(c)
            if a.kind == "projection"
        ]

    rng = random.Random(16)
    calls, ts = [], T0
    regimes = [
        (0.5, "0.4"),
        (2.0, "0.09"),
        (7.0, "0.02"),
        (30.0, "0.001"),
        (1.0, "0.001"),
        (1.0, "0.01"),
        (0.5, "0.02"),
    ]  # the last three: levels reached young
    for stretch in range(60):  # stretches of one pace, from a runaway to a lull
        every, cost = rng.choice(regimes)
        # Some stretches are a new session: a young one's rate is over its age, not the
        # window, which is where a bound on the rate is tightest.
        who = AGENT if stretch % 3 else Attribution(tool="codex", session=f"s{stretch}")
        for _ in range(rng.choice((8, 30, 80))):
            ts += every * rng.uniform(0.5, 1.5)
            calls.append(call(ts, str(D(cost) * D(rng.randint(1, 30)) / 10), who))
    skipping = alerts_of(calls)
    monkeypatch.setattr(runaway, "_RATE_BOUND", D("1e30"))  # never skips
    assert skipping == alerts_of(calls)
    assert len({figure for _, _, figure, _ in skipping}) == 3  # every level was reached
