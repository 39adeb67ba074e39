"""The real Gemini CLI through `devmeter run`, logged in both ways it can be.

`gemini -p PROMPT --output-format json` first asks a small router model to classify the
prompt (`generateContent`, JSON mode), then streams each turn of the model it picked
(`streamGenerateContent?alt=sse`), running the tools the model calls in between. It prints
its `session_id` and, per model, the tokens it was told (`stats.models.<m>.tokens`). The
ledger must hold every call, attributed to `gemini-cli`, the repo and branch it ran in, and
with the same tokens per model as the CLI's own stats, priced at list price.

- API key: generativelanguage.googleapis.com. Gemini CLI 0.61.0 sends no session id there
  (only its installation id, `x-gemini-api-privileged-user-id`), so the session is
  devmeter's per-process one (`proc-…`), as the README says.
- Google login: cloudcode-pa.googleapis.com (Code Assist), each request wrapped as
  `{"model", "project", "user_prompt_id", "request": {..., "session_id"}}` and each answer
  as `{"response": …}`. `GOOGLE_GENAI_USE_GCA` with `GOOGLE_CLOUD_ACCESS_TOKEN` makes the
  real CLI use that path offline: it takes the token as it is, with no OAuth round trip
  (its user-info lookup at www.googleapis.com fails quietly); the fake upstream answers
  loadCodeAssist and the other setup calls. The session is the CLI's own `session_id`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.clients_env import (
    cli,
    client_env,
    describe,
    devmeter_run,
    git_repo,
    last_id,
    report,
    rows_after,
)
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy

pytestmark = [pytest.mark.proxy, pytest.mark.e2e]

BRANCH = "feat/gemini-metering"
M = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """List prices, USD per million tokens (genai-prices, Google's pricing page; below the
    200k-token prompt tier of the Pro models, which these prompts are far from)."""

    input: Decimal
    cached: Decimal
    output: Decimal


@dataclass(frozen=True)
class Login:
    env: dict[str, str]
    fake_endpoint: str  # the fake upstream's name for the model calls
    router_model: str
    router_text: str  # valid JSON for the router's schema, else the CLI retries 5 times
    main_model: str  # what the router's answer picks
    prices: dict[str, Price]
    cli_session: bool  # the ledger's session is the CLI's `session_id`


LOGINS = {
    "api-key": Login(
        env={"GEMINI_API_KEY": "fake"},
        fake_endpoint="gemini.",
        router_model="gemini-3.5-flash-lite",
        router_text=json.dumps({"complexity_reasoning": "Needs the repo.", "complexity_score": 90}),
        # Gemini 3.1 Pro's variant for agents with their own tools (without a valid router
        # answer the CLI falls back to gemini-3.1-pro-preview).
        main_model="gemini-3.1-pro-preview-customtools",
        prices={
            "gemini-3.5-flash-lite": Price(Decimal("0.3"), Decimal("0.03"), Decimal("2.5")),
            "gemini-3.1-pro-preview-customtools": Price(Decimal(2), Decimal("0.2"), Decimal(12)),
        },
        cli_session=False,
    ),
    "google-login": Login(
        env={"GOOGLE_GENAI_USE_GCA": "true", "GOOGLE_CLOUD_ACCESS_TOKEN": "ya29.devmeter-e2e"},
        fake_endpoint="cloudcode.",
        router_model="gemini-3.1-flash-lite",
        router_text=json.dumps({"reasoning": "Needs the repo.", "model_choice": "pro"}),
        main_model="gemini-2.5-pro",
        prices={
            "gemini-3.1-flash-lite": Price(Decimal("0.25"), Decimal("0.025"), Decimal("1.5")),
            "gemini-2.5-pro": Price(Decimal("1.25"), Decimal("0.125"), Decimal(10)),
        },
        cli_session=True,
    ),
}

ROUTER_USAGE = {"input_tokens": 812, "cache_read_tokens": 0, "output_tokens": 41,
                "reasoning_tokens": 17}  # fmt: skip
TURN_USAGE = {"input_tokens": 2109, "cache_read_tokens": 4096, "output_tokens": 183,
              "reasoning_tokens": 64, "tool_use_prompt_tokens": 0}  # fmt: skip
# The turn after the tool ran: more context, more of it cached, and Gemini's own tool
# tokens (`tool` in the CLI's stats), which bill as input.
ANSWER_USAGE = {"input_tokens": 2533, "cache_read_tokens": 6144, "output_tokens": 95,
                "reasoning_tokens": 30, "tool_use_prompt_tokens": 321}  # fmt: skip


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream) -> None:
    upstream.reset()


def gemini_env(proxy: RunningProxy, tmp: Path, login: Login) -> dict[str, str]:
    """Gemini CLI logged in as `login` says, with a throwaway HOME (no settings or login of
    the developer's leak in). No base URL: it goes through the proxy to Google's host, which
    the proxy maps to the fake upstream."""
    home = tmp / "home"
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True)
    # No usage statistics to Google (play.googleapis.com) from a test.
    settings.write_text(json.dumps({"privacy": {"usageStatisticsEnabled": False}}))
    return client_env(
        proxy,
        home,
        GEMINI_CLI_TRUST_WORKSPACE="true",  # headless runs need a trusted folder
        **login.env,
    )


def run_gemini(
    proxy: RunningProxy,
    upstream: FakeUpstream,
    tmp_path: Path,
    cwd: Path,
    login: Login,
    prompt: str,
    calls: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`devmeter run -- gemini -p PROMPT --output-format json`: its JSON and the ledger rows
    (`calls` model calls: the router's and the turns)."""
    gemini = cli("gemini")
    mark = last_id(proxy)
    done = devmeter_run(
        [str(gemini), "-p", prompt, "--output-format", "json"],
        cwd=cwd,
        env=gemini_env(proxy, tmp_path, login),
    )
    start = done.stdout.find("{")
    assert start >= 0, done.stdout + done.stderr
    out = json.loads(done.stdout[start:])
    sent = upstream.find(login.fake_endpoint)
    assert len(sent) == calls, [(r.path, r.model, r.status) for r in upstream.requests]
    return out, rows_after(proxy, mark, at_least=calls)


def check_against_cli_stats(login: Login, out: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Per model, the ledger's tokens and requests are the CLI's own, priced at list price."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    stats = out["stats"]["models"]
    assert set(by_model) == set(stats) == {login.router_model, login.main_model}, describe(rows)
    for model, model_rows in by_model.items():
        tokens = stats[model]["tokens"]
        assert len(model_rows) == stats[model]["api"]["totalRequests"], describe(rows)

        def total(column: str, mine: list[dict[str, Any]] = model_rows) -> int:
            return sum(r[column] for r in mine)

        # devmeter's input is the uncached prompt plus Gemini's tool tokens; its output
        # includes thoughts.
        assert total("input_tokens") == tokens["prompt"] - tokens["cached"] + tokens["tool"]
        assert total("cache_read_tokens") == tokens["cached"]
        assert total("cache_write_tokens") == 0
        assert total("output_tokens") == tokens["candidates"] + tokens["thoughts"]
        assert total("reasoning_tokens") == tokens["thoughts"]
        price = login.prices[model]
        cli_cost = (
            (tokens["prompt"] - tokens["cached"] + tokens["tool"]) * price.input
            + tokens["cached"] * price.cached
            + (tokens["candidates"] + tokens["thoughts"]) * price.output
        ) / M
        assert sum(r["cost_usd"] for r in model_rows) == cli_cost, describe(model_rows)
        for row in model_rows:
            assert row["price_source"].startswith("genai-prices"), describe(rows)
            assert (row["complete"], row["estimated"], row["error"]) == (1, 0, None)


def check_attribution(
    login: Login, out: dict[str, Any], rows: list[dict[str, Any]], repo: Path
) -> None:
    """Gemini CLI's calls, in its repo and branch, all in one session: the CLI's own where
    it sends it, else the process's."""
    sessions = {r["session"] for r in rows}
    assert len(sessions) == 1, describe(rows)
    (session,) = sessions
    if login.cli_session:
        assert session == out["session_id"], describe(rows)
    else:
        assert session.startswith("proc-") and session != out["session_id"], describe(rows)
    for row in rows:
        assert row["tool"] == "gemini-cli", describe(rows)
        assert row["endpoint"] == "gemini.generate"
        assert row["status"] == 200
        assert (row["repo"], row["branch"]) == (str(repo), BRANCH), describe(rows)
        assert row["repo_source"] == "process"


@pytest.mark.parametrize("login_name", LOGINS)
def test_gemini_cli_prompt_metered_per_model_like_its_stats(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, login_name: str
) -> None:
    login = LOGINS[login_name]
    upstream.set_next(path=":generateContent", text=login.router_text, usage=ROUTER_USAGE)
    upstream.set_next(path=":streamGenerateContent", usage=TURN_USAGE)
    repo = git_repo(tmp_path / "billing", BRANCH)
    workdir = repo / "src"  # a subdirectory: the repo is the top level
    workdir.mkdir()

    out, rows = run_gemini(proxy, upstream, tmp_path, workdir, login, "say hi", calls=2)

    router, turn = upstream.find(login.fake_endpoint)
    assert router.endpoint.endswith(".generateContent") and router.model == login.router_model
    assert turn.endpoint.endswith(".streamGenerateContent") and turn.model == login.main_model
    assert turn.query.get("alt") in ("sse", ["sse"]), turn.path
    assert turn.headers["user-agent"].startswith("GeminiCLI-tui/0.61.0/")
    if login.cli_session:  # Code Assist: the session id is in the wrapped request
        assert turn.json["request"]["session_id"] == out["session_id"]
    assert out["response"], out

    assert len(rows) == 2, describe(rows)
    check_attribution(login, out, rows, repo)
    check_against_cli_stats(login, out, rows)
    (main,) = [r for r in rows if r["model"] == login.main_model]
    assert main["requested_model"] == login.main_model
    assert main["input_tokens"] == TURN_USAGE["input_tokens"]
    price = login.prices[login.main_model]
    assert main["cost_usd"] == (2109 * price.input + 4096 * price.cached + 183 * price.output) / M


@pytest.mark.parametrize("login_name", LOGINS)
def test_gemini_cli_tool_call_streamed_turns_metered_like_its_stats(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, login_name: str
) -> None:
    """The model calls `list_directory`; the CLI runs it on the repo and streams a second
    turn with the result. Both streamed turns and the router call are billed."""
    login = LOGINS[login_name]
    upstream.set_next(path=":generateContent", text=login.router_text, usage=ROUTER_USAGE)
    upstream.set_next(
        path=":streamGenerateContent",
        text="Let me look at the repository.",
        tool_use={"name": "list_directory", "input": {"dir_path": "."}},
        usage=TURN_USAGE,
    )
    upstream.set_next(
        path=":streamGenerateContent", text="It holds a README.md.", usage=ANSWER_USAGE
    )
    repo = git_repo(tmp_path / "billing", BRANCH)

    out, rows = run_gemini(
        proxy, upstream, tmp_path, repo, login, "list the files in this repo", calls=3
    )

    _, first, second = upstream.find(login.fake_endpoint)
    assert {first.model, second.model} == {login.main_model}
    assert first.endpoint == second.endpoint
    assert first.endpoint.endswith(".streamGenerateContent")
    # The tool really ran: its result went back to the model in the second turn.
    contents = (second.json.get("request") or second.json)["contents"]
    responses = [
        part["functionResponse"]
        for content in contents
        for part in content.get("parts", ())
        if "functionResponse" in part
    ]
    assert [r["name"] for r in responses] == ["list_directory"], contents
    assert "README.md" in json.dumps(responses)
    assert out["stats"]["tools"]["byName"]["list_directory"]["count"] == 1, out["stats"]

    assert len(rows) == 3, describe(rows)
    check_attribution(login, out, rows, repo)
    check_against_cli_stats(login, out, rows)
    # Gemini's tool tokens were counted by the CLI, and billed by devmeter.
    assert out["stats"]["models"][login.main_model]["tokens"]["tool"] == 321

    # What `devmeter report` shows for the session: the three calls, all priced.
    (session,) = {r["session"] for r in rows}
    by_session = {r["key"]: r for r in json.loads(report(proxy, "--by", "session", "--json"))}
    assert by_session[session]["requests"] == 3
    assert by_session[session]["unpriced"] == 0
    assert Decimal(repr(by_session[session]["cost_usd"])) == sum(r["cost_usd"] for r in rows)


def test_gemini_cli_turn_cut_off_mid_stream_is_still_in_the_ledger(
    proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The upstream drops the connection two chunks into the streamed turn. Gemini CLI
    0.61.0 does not retry it: it exits 1 ("terminated"). The turn generated tokens all the
    same: the ledger keeps it, with the usage Google had reported so far and the error."""
    login = LOGINS["api-key"]
    upstream.set_next(path=":generateContent", text=login.router_text, usage=ROUTER_USAGE)
    upstream.set_next(path=":streamGenerateContent", cut_after=2, usage=TURN_USAGE)
    repo = git_repo(tmp_path / "billing", BRANCH)
    mark = last_id(proxy)

    with pytest.raises(AssertionError, match=r'(?s)exited 1 .*"message": "terminated"'):
        devmeter_run(
            [str(cli("gemini")), "-p", "say hi", "--output-format", "json"],
            cwd=repo,
            env=gemini_env(proxy, tmp_path, login),
        )

    rows = rows_after(proxy, mark, at_least=2)
    assert len(rows) == 2, describe(rows)
    check_attribution(login, {"session_id": None}, rows, repo)
    router, cut = rows
    assert (router["model"], router["complete"], router["error"]) == (login.router_model, 1, None)
    assert cut["model"] == login.main_model
    assert cut["complete"] == 0 and cut["error"], describe(rows)
    # Every chunk carries the usage so far: the prompt in full, the thoughts streamed.
    assert cut["input_tokens"] == TURN_USAGE["input_tokens"]
    assert cut["cache_read_tokens"] == TURN_USAGE["cache_read_tokens"]
    assert cut["output_tokens"] > 0
    assert cut["cost_usd"] is not None and cut["cost_usd"] > 0
