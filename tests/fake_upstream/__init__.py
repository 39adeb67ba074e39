"""A fake LLM provider upstream: the far end of every end-to-end test and benchmark.

One plain-HTTP server (no TLS) on 127.0.0.1 speaks Anthropic, OpenAI (chat, embeddings,
Responses over HTTP and WebSocket), Gemini (incl. cloudcode-pa), OpenRouter and DeepSeek.
It tells them apart by path, and by the ``Host`` header where paths collide (the proxy keeps
the original host, e.g. ``api.deepseek.com``). Standard library + ``websockets`` only
(``brotli`` / ``zstandard``, which mitmproxy already needs, only for ``br`` / ``zstd``).

Starting it
-----------
In-process (a daemon thread with its own asyncio loop)::

    from tests.fake_upstream import FakeUpstream

    with FakeUpstream() as up:          # or up = FakeUpstream().start(); ...; up.stop()
        up.url                          # "http://127.0.0.1:PORT"
        # devmeter proxy --upstream api.anthropic.com=<up.url> --upstream api.openai.com=<up.url>

or the ``fake_upstream`` fixture from ``tests.fake_upstream.pytest_plugin``.

As a subprocess (benchmarks)::

    python -m tests.fake_upstream --port 0 --port-file F [--no-websocket]
                                  [--defaults '{"delay_ms": 5}'] [--usage '{"output_tokens": 9}']

prints ``fake upstream listening on http://127.0.0.1:PORT`` and writes PORT to F atomically.
``tests.fake_upstream.process.FakeUpstreamProcess`` wraps that and scripts it over HTTP:
``GET /_fake/requests``, ``GET /_fake/events``, ``POST /_fake/defaults`` (merge; ``PUT``
replaces), ``POST /_fake/next`` (``{"path": ..., **directives}``), ``POST /_fake/reset``.
``/_fake/*`` calls are not recorded.

Endpoints
---------
=============================================================  ================================
``POST /v1/messages`` (``?beta=true`` too), JSON or SSE         ``anthropic.messages``
``POST /v1/messages/count_tokens`` -> ``{"input_tokens": N}``   ``anthropic.count_tokens``
``POST /v1/complete`` (legacy; text, no usage)                   ``anthropic.complete``
``GET /v1/messages/batches/{id}/results`` (JSON Lines)           ``anthropic.batch_results``
``POST /v1/images/generations`` (usage for gpt-image-*)          ``openai.images``
``GET /v1/batches/{id}`` (completed with usage; ``running`` ids not) ``openai.batch``
``POST /v1/audio/transcriptions`` (multipart; usage in tokens)   ``openai.transcription``
``GET /v1/realtime?model=…`` + WebSocket upgrade                 ``openai.realtime.websocket``
   each client event on it (``response.create`` answered)        ``openai.realtime.ws``
``POST /v1/chat/completions``                                   ``openai.chat``
``POST /api/v1/chat/completions`` (or host openrouter.ai)       ``openrouter.chat`` (+ ``cost``)
``POST /chat/completions`` (or host *deepseek*)                 ``deepseek.chat`` (cache hit/miss)
``POST /v1/embeddings`` (float or base64)                       ``openai.embeddings``
``POST /v1/responses``, JSON or SSE                             ``openai.responses``
``GET /v1/responses`` + WebSocket upgrade                        ``openai.responses.websocket``
   each ``response.create`` message on it                        ``openai.responses.ws``
``POST /v1beta/models/{m}:generateContent``                      ``gemini.generateContent``
``POST /v1beta/models/{m}:streamGenerateContent[?alt=sse]``      ``gemini.streamGenerateContent``
``POST /v1beta/models/{m}:countTokens``                          ``gemini.countTokens``
``POST /v1internal:{generateContent,streamGenerateContent}``     ``cloudcode.*`` ({"response": …})
``POST /v1internal:loadCodeAssist`` / ``onboardUser`` / other   ``aux.cloudcode`` (Gemini CLI)
``/api/*``, ``/mcp-registry/*`` (Claude Code's side calls)       ``aux.anthropic``
``/otlp/*`` (Codex metrics)                                      ``aux.otlp``
anything else: 404 in the provider's error format               ``unknown``
=============================================================  ================================

``/backend-api/codex/responses`` (Codex with a ChatGPT login) is served like ``/v1/responses``.
Paths are routed leniently, as many web frameworks do: ``//v1/messages``, ``/v1/%6Dessages``,
``/V1/MESSAGES``, ``/v1/messages;x``, ``/v1/messages/`` and ``/v1/x/../messages`` all reach
Messages (``RecordedRequest.path`` keeps what was sent), so tests can show the proxy meters
and caps every spelling.
The reply's ``model`` echoes the request's (Gemini: the model in the path). Streams: Anthropic
``message_start`` (input + cache usage, ``cache_creation`` 5m/1h split), ``content_block_*``,
``ping``, ``message_delta`` (cumulative usage incl. ``server_tool_use.web_search_requests``),
``message_stop``; OpenAI chat ``data:`` chunks, a usage chunk only with
``stream_options.include_usage`` (OpenRouter: always, after an ``: OPENROUTER PROCESSING``
comment), then ``data: [DONE]``; Responses ``response.created`` … ``response.completed``;
Gemini ``data: …\\r\\n\\r\\n`` (CRLF, like Google) with partial ``usageMetadata`` on every chunk
and the full one on the last; without ``alt=sse`` one JSON array streamed element by element.

Scripting a reply: directives
-----------------------------
Resolved per request from, later wins: built-in defaults < ``up.defaults`` (a dict; every
request) < the next ``up.set_next(...)`` entry (one request; queue several to script a
sequence; ``path=`` limits which request takes it) < request headers ``x-fake-<name>``
(``_`` -> ``-``; values are JSON when they parse). Directives shape only the model endpoints;
the side calls are always answered plainly. Unknown names / values: ``ValueError`` in Python,
HTTP 400 over the wire.

=====================  ==========================================================================
``usage``              provider-neutral counts, merged key by key over `DEFAULT_USAGE`:
                       ``input_tokens`` 1200 (uncached), ``cache_read_tokens`` 3000,
                       ``cache_write_5m_tokens`` 300, ``cache_write_1h_tokens`` 200,
                       ``output_tokens`` 345 (incl. reasoning), ``reasoning_tokens`` 120,
                       ``web_search_requests`` 0, ``cost`` 0.0123 (OpenRouter),
                       ``tool_use_prompt_tokens`` 0 (Gemini's built-in tools). Mapping per
                       provider: see ``providers.py`` (OpenAI ``prompt_tokens`` = input + cache
                       read; no cache writes outside Anthropic).
``status``             e.g. 429, 500, 529: the provider's error body (``retry_after`` adds
                       ``retry-after``). On the WebSocket: an ``error`` message.
``delay_ms``           gap between SSE events / WebSocket messages; before a JSON body.
``cut_after``          N: send N events, then half of the next, then close (no final chunk).
``encoding``           ``gzip`` | ``deflate`` | ``br`` | ``zstd``: Content-Encoding; streams are
                       compressed as one stream, flushed after every event.
``chunking``           ``bytes`` (one write per byte) | ``random`` (1-24 byte pieces, ``seed``).
``malformed``          ``json`` (or ``1``): truncated JSON (in the first delta event of a
                       stream); ``sse``: a non-UTF-8 junk line and two events run together.
``text``               the answer (default `DEFAULT_TEXT`: multi-byte characters on purpose).
``tool_use``           ``{"name": "Bash", "input": {...}}`` adds a tool call (Anthropic
                       tool_use, chat tool_calls, Responses function_call, Gemini functionCall).
``stop_reason``        overrides the stop / finish reason; ``model`` overrides the echoed model.
``final_status``       Responses: ``completed`` | ``incomplete`` | ``failed`` (usage on all).
``prewarm_usage``      usage of a Codex ``generate: false`` prewarm (default all zero).
``websocket``          False refuses the upgrade with ``websocket_refuse_status`` (426).
``headers``            extra response headers (a dict).
=====================  ==========================================================================

``FakeUpstream(delay_ms=5, websocket=False)`` sets defaults at construction. Over the
WebSocket, the upgrade request's ``x-fake-*`` headers apply to every message on it, and each
``response.create`` takes one ``set_next`` entry (a ``generate: false`` prewarm takes none).
With the SDKs in this venv only ``gzip`` / ``deflate`` decode: httpx2 lacks zstd on 3.11
(needs ``backports.zstd``) and breaks on ``brotli`` 1.1 (``output_buffer_limit``); use ``br`` /
``zstd`` with raw clients or clients that ask for them (Claude Code accepts both).

What the server saw
-------------------
``up.requests``: `RecordedRequest` (method, path with query, ``route``, ``query``, ``host``,
``headers`` lower-cased, ``body`` (decoded, even if the client compressed it), ``json``,
``model``, ``endpoint``, ``stream``, ``status``, ``directives``, ``time``). Every WebSocket
message is its own record (method ``"WS"``, ``websocket_of`` = the upgrade's id).
``up.find("anthropic.")``, ``up.wait_for(lambda up: len(up.requests) > 1)``.
``up.sent_events``: `SentEvent` (``request_id``, ``index``, ``name``, ``size``, ``time``)
logged with ``time.monotonic()`` just before each event is written (so a client can never
see bytes whose event is not logged yet); a test can show the client received event *i*
before event *i+1* left here, i.e. the proxy does not buffer.
``up.events_of(request)``; ``up.clear()`` (logs), ``up.reset()`` (logs, queue, defaults).

Claude Code 2.1.197 against it
------------------------------
Directly: ``ANTHROPIC_BASE_URL=<up.url> ANTHROPIC_API_KEY=sk-ant-test`` (plus a throwaway
``CLAUDE_CONFIG_DIR``); then it only sends ``HEAD /`` (404 is fine) and
``POST /v1/messages?beta=true``. Through a proxy (``HTTPS_PROXY`` + ``NODE_EXTRA_CA_CERTS``,
no base URL) it believes it is on api.anthropic.com and also calls the side endpoints; the
answers here keep its debug log free of retries: ``/api/claude_code/settings`` 404 ("no
settings", cached as empty; a connection error makes it retry 5 times with backoff),
``policy_limits`` ``{"restrictions": {}}``, ``/api/eval/*`` ``{"features": {}}``,
``bootstrap``, ``penguin_mode``, ``metrics_enabled`` (false), ``event_logging`` ``{}``,
``/mcp-registry/v0/servers`` ``{"servers": []}``. ``claude -p "say hi" --output-format json``
finishes in ~1.5 s with ``subtype: success``, ``session_id`` and ``total_cost_usd`` 0.02 for
the default usage: it asks for ``claude-opus-4-8`` (reported as ``claude-opus-4-8[1m]``),
whose prices it knows. No ``DISABLE_TELEMETRY`` / ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``
needed. A proxy in front must use lazy upstream connections (mitmproxy
``connection_strategy=lazy``): with eager ones the CONNECT to the real host fails offline and
Claude Code hangs in retries.

Codex CLI 0.169.0 against it
----------------------------
``OPENAI_BASE_URL`` is ignored by 0.169. What works::

    CODEX_HOME=$(mktemp -d) OPENAI_API_KEY=sk-test \\
      codex exec --skip-git-repo-check -c 'openai_base_url="http://127.0.0.1:PORT/v1"' "say hi" \\
      < /dev/null

(``openai_base_url`` can also go in ``$CODEX_HOME/config.toml``; a custom ``model_provider``
is not needed, and the built-in provider keeps WebSockets on.) It opens ``GET /v1/responses``
as a WebSocket (``permessage-deflate``; headers ``openai-beta: responses_websockets=…``,
``session-id``, ``x-codex-turn-metadata``), sends a ``generate: false`` prewarm with empty
``input``, then the turn with ``previous_response_id`` = the prewarm's id. With
``websocket=False`` (or ``--no-websocket``) the 426 makes it log one "failed to connect to
Responses WebSocket" line and fall back at once to ``POST /v1/responses`` with SSE. Through a
proxy: ``HTTPS_PROXY`` + ``CODEX_CA_CERTIFICATE`` + ``SSL_CERT_FILE``, no base URL; it then
also calls ``chatgpt.com/backend-api/plugins/export/curated`` and ``ab.chatgpt.com/otlp/…``
(not LLM hosts). Either way ~0.6 s. With a ChatGPT login (an offline ``auth.json``, see
tests/test_e2e_billing_codex.py) it first asks ``GET /backend-api/wham/accounts/check``,
answered here for the ``chatgpt-account-id`` it sends, then talks to
``/backend-api/codex/responses`` on chatgpt.com. Do not send an ``openai-model`` header on
the WebSocket handshake: Codex compares it with the requested model and prints "model
rerouted" plus a cyber-safety warning when they differ.

Gemini CLI 0.61.0 against it
----------------------------
Through a proxy (``HTTPS_PROXY`` + ``NODE_EXTRA_CA_CERTS``, no base URL), headless:
``GEMINI_CLI_TRUST_WORKSPACE=true gemini -p "say hi" --output-format json``, with
``GEMINI_API_KEY=fake`` (generativelanguage.googleapis.com) or, for the Google-login path,
``GOOGLE_GENAI_USE_GCA=true GOOGLE_CLOUD_ACCESS_TOKEN=<anything>`` (cloudcode-pa: it takes the
token as it is; ``loadCodeAssist``, ``retrieveUserQuota``, ``listExperiments`` are answered
here; its user-info GET to www.googleapis.com fails quietly offline). It first asks a router
model (``gemini-3.5-flash-lite``; with Code Assist ``gemini-3.1-flash-lite``) to classify the
prompt in JSON mode: script that answer (``set_next(path=":generateContent", text=...)``)
with JSON of the router's schema, ``{"complexity_reasoning", "complexity_score"}`` (API key)
or ``{"reasoning", "model_choice": "flash"|"pro"}`` (Code Assist); the default text makes
it retry 5 times with backoff (~110 s) before it falls back. Then each turn is
``streamGenerateContent?alt=sse``; a ``tool_use`` such as ``{"name": "list_directory",
"input": {"dir_path": "."}}`` is run and answered in the next turn.
``{"privacy": {"usageStatisticsEnabled": false}}`` in ``$HOME/.gemini/settings.json`` keeps
it from play.googleapis.com. ~2 s a run.
"""

from .directives import DEFAULT_TEXT, DEFAULT_USAGE, DirectiveError, Directives
from .server import FakeUpstream, RecordedRequest, SentEvent

__all__ = [
    "DEFAULT_TEXT",
    "DEFAULT_USAGE",
    "DirectiveError",
    "Directives",
    "FakeUpstream",
    "RecordedRequest",
    "SentEvent",
]
