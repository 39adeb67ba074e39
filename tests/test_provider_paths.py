"""No side doors: every spelling of a paid path is matched, and only listed paths are free."""

from __future__ import annotations

import pytest

from devmeter.providers import costs_nothing, match_endpoint, normalise_path, unmetered_endpoint

VARIANTS = [
    "/v1/messages",
    "//v1/messages",
    "/v1//messages",
    "/v1/%6Dessages",
    "/v1/%6dessages",
    "/v1/%256Dessages",  # encoded twice
    "/V1/MESSAGES",
    "/v1/messages;x",
    "/v1;a=b/messages",
    "/v1/messages/",
    "/v1/messages/.",
    "/v1/./messages",
    "/v1/x/../messages",
    "/v1/models/..%2Fmessages",
    "/v1\\messages",
    "/v1/messages?beta=true",
    "/v1/messages/?beta=true#frag",
]


@pytest.mark.parametrize("path", VARIANTS)
def test_every_spelling_of_messages_is_metered_and_not_free(path: str) -> None:
    endpoint = match_endpoint("api.anthropic.com", "POST", path)
    assert endpoint is not None and endpoint.api == "anthropic.messages"
    assert normalise_path(path) == "/v1/messages"
    assert not costs_nothing("api.anthropic.com", "POST", normalise_path(path))


def test_a_path_that_climbs_out_of_a_free_one_is_not_free() -> None:
    path = normalise_path("/v1/messages/count_tokens/../../messages")
    assert path == "/v1/messages"
    assert not costs_nothing("api.anthropic.com", "POST", path)
    assert costs_nothing("api.anthropic.com", "POST", normalise_path("/v1/messages/count_tokens/"))


@pytest.mark.parametrize(
    ("host", "method", "path"),
    [
        ("api.anthropic.com", "GET", "/v1/models"),
        ("api.anthropic.com", "GET", "/v1/models/claude-opus-5-5"),
        ("api.anthropic.com", "POST", "/v1/messages/count_tokens"),
        ("api.anthropic.com", "GET", "/v1/files/file_1/content"),
        ("api.anthropic.com", "GET", "/v1/messages/batches/msgbatch_1"),
        ("api.anthropic.com", "GET", "/v1/messages/batches/msgbatch_1/results"),
        ("api.anthropic.com", "POST", "/v1/messages/batches/msgbatch_1/cancel"),
        ("api.anthropic.com", "GET", "/api/claude_code/settings"),
        ("api.anthropic.com", "POST", "/api/event_logging/v2/batch"),
        ("api.openai.com", "GET", "/v1/models"),
        ("api.openai.com", "GET", "/v1/files/file-1/content"),
        ("api.openai.com", "GET", "/v1/batches/batch_1"),
        ("api.openai.com", "POST", "/v1/moderations"),
        ("api.openai.com", "POST", "/v1/responses/input_tokens"),
        ("openrouter.ai", "GET", "/api/v1/models"),
        ("openrouter.ai", "GET", "/api/v1/credits"),
        ("api.deepseek.com", "GET", "/user/balance"),
        ("generativelanguage.googleapis.com", "GET", "/v1beta/models"),
        ("generativelanguage.googleapis.com", "POST", "/v1beta/models/gemini-2.5-pro:counttokens"),
        ("cloudcode-pa.googleapis.com", "POST", "/v1internal:loadcodeassist"),
        ("chatgpt.com", "GET", "/"),  # the website, not Codex's API
        ("chatgpt.com", "POST", "/backend-api/conversation"),
        ("chatgpt.com", "GET", "/backend-api/codex/models"),
        ("api2.cursor.sh", "POST", "/aiserver.v1.dashboardservice/getteams"),
    ],
)
def test_the_free_list(host: str, method: str, path: str) -> None:
    assert costs_nothing(host, method, path)


@pytest.mark.parametrize(
    ("host", "method", "path"),
    [
        ("api.anthropic.com", "POST", "/v1/messages"),
        ("api.anthropic.com", "POST", "/v1/complete"),
        ("api.anthropic.com", "POST", "/v1/messages/batches"),
        ("api.anthropic.com", "POST", "/v1/some-new-paid-api"),
        ("api.anthropic.com", "PUT", "/v1/models"),
        ("api.openai.com", "POST", "/v1/completions"),
        ("api.openai.com", "POST", "/v1/images/generations"),
        ("api.openai.com", "POST", "/v1/audio/speech"),
        ("api.openai.com", "POST", "/v1/batches"),
        ("api.openai.com", "POST", "/v1/fine_tuning/jobs"),
        ("api.openai.com", "POST", "/v1/realtime/calls"),
        ("generativelanguage.googleapis.com", "POST", "/v1beta/models/imagen-4:predict"),
        ("cloudcode-pa.googleapis.com", "POST", "/v1internal:generatecontent"),
        ("chatgpt.com", "POST", "/backend-api/codex/responses"),
        ("api2.cursor.sh", "POST", "/aiserver.v1.chatservice/streamunifiedchatwithtools"),
    ],
)
def test_everything_else_costs_money(host: str, method: str, path: str) -> None:
    assert not costs_nothing(host, method, path)


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("api.openai.com", "/v1/realtime"),
        ("api.openai.com", "/v1/responses"),
        ("api.anthropic.com", "/v1/models"),
        (
            "generativelanguage.googleapis.com",
            "/ws/google.ai.generativelanguage.v1beta.generativeservice.bidigeneratecontent",
        ),
    ],
)
def test_a_websocket_upgrade_is_never_a_free_read(host: str, path: str) -> None:
    assert not costs_nothing(host, "GET", path, upgrade=True)


@pytest.mark.parametrize(
    ("host", "method", "path", "api"),
    [
        ("api.anthropic.com", "POST", "/v1/complete", "anthropic.complete"),
        ("api.anthropic.com", "GET", "/v1/messages/batches/b1/results", "anthropic.batch_results"),
        ("api.openai.com", "POST", "/v1/completions", "openai.completions"),
        ("api.openai.com", "POST", "/v1/images/generations", "openai.images"),
        ("api.openai.com", "POST", "/v1/images/edits", "openai.images"),
        ("api.openai.com", "POST", "/v1/images/variations", "openai.images"),
        ("api.openai.com", "POST", "/v1/audio/transcriptions", "openai.transcription"),
        ("api.openai.com", "POST", "/v1/audio/translations", "openai.transcription"),
        ("api.openai.com", "POST", "/v1/audio/speech", "openai.speech"),
        ("api.openai.com", "GET", "/v1/realtime?model=gpt-realtime", "openai.realtime"),
        ("openrouter.ai", "POST", "/api/v1/embeddings", "openai.embeddings"),
        ("api.mistral.ai", "POST", "/v1/embeddings", "openai.embeddings"),
        ("api.x.ai", "POST", "/v1/embeddings", "openai.embeddings"),
        (
            "generativelanguage.googleapis.com",
            "POST",
            "/v1beta/models/gemini-embedding-001:embedContent",
            "gemini.embed",
        ),
        (
            "generativelanguage.googleapis.com",
            "POST",
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            "gemini.embed",
        ),
    ],
)
def test_the_other_paid_endpoints_are_metered(host: str, method: str, path: str, api: str) -> None:
    endpoint = match_endpoint(host, method, path)
    assert endpoint is not None and endpoint.api == api


def test_realtime_reads_its_model_from_the_query_and_gemini_from_the_path() -> None:
    realtime = match_endpoint("api.openai.com", "GET", "/v1/realtime?model=gpt-realtime")
    assert realtime is not None and realtime.path_model == "gpt-realtime"
    gemini = match_endpoint(
        "generativelanguage.googleapis.com",
        "POST",
        "/v1beta/models/gemini-2.5-flash:generateContent",
    )
    assert gemini is not None and gemini.path_model == "gemini-2.5-flash"


def test_a_refusal_on_an_unmetered_path_speaks_the_hosts_error_format() -> None:
    assert unmetered_endpoint("api.anthropic.com").api == "anthropic.unmetered"
    assert unmetered_endpoint("api.openai.com:443").api == "openai.unmetered"
    assert unmetered_endpoint("openrouter.ai").provider == "openrouter"
    gemini = unmetered_endpoint("cloudcode-pa.googleapis.com")
    assert gemini.api == "gemini.unmetered" and gemini.provider == "google"
