"""The hosts that speak OpenAI's wire formats, and their metered paths.

OpenAI's own API and the OpenAI-compatible ones bill their calls under their own
genai-prices provider id; the wire formats are registered by openai_chat.py,
openai_responses.py, openai_media.py and openai_batch.py. A new OpenAI-compatible API is
one more `register_host` here.
"""

from __future__ import annotations

from devmeter.providers.registry import Endpoint, fixed, register_host

register_host(
    "api.openai.com",
    "openai",
    {
        "/v1/chat/completions": "openai.chat",
        "/v1/responses": "openai.responses",
        "/v1/embeddings": "openai.embeddings",
        "/v1/completions": "openai.completions",  # legacy
        "/v1/images/generations": "openai.images",
        "/v1/images/edits": "openai.images",
        "/v1/images/variations": "openai.images",
        "/v1/audio/transcriptions": "openai.transcription",
        "/v1/audio/translations": "openai.transcription",
        "/v1/audio/speech": "openai.speech",
        "/v1/realtime": "openai.realtime",  # a WebSocket
        # Codex's remote compaction of a long conversation: a paid Responses call.
        "/v1/responses/compact": "openai.compact",
    },
    # A Batch's status: it carries the usage once the batch has ended.
    patterns=((r"/v1/batches/[^/]+", fixed(Endpoint("openai", "openai.batch"))),),
)
# Codex CLI signed in with a ChatGPT account.
register_host(
    "chatgpt.com",
    "openai",
    {
        "/backend-api/codex/responses": "openai.responses",
        "/backend-api/codex/responses/compact": "openai.compact",
    },
)
register_host(
    "openrouter.ai",
    "openrouter",
    {
        "/api/v1/chat/completions": "openai.chat",
        "/api/v1/completions": "openai.completions",
        "/api/v1/embeddings": "openai.embeddings",
    },
)
register_host(
    "api.deepseek.com",
    "deepseek",
    {
        "/chat/completions": "openai.chat",
        "/v1/chat/completions": "openai.chat",
        "/beta/completions": "openai.completions",  # fill in the middle
    },
)
register_host(
    "api.groq.com",
    "groq",
    {
        "/openai/v1/chat/completions": "openai.chat",
        "/openai/v1/embeddings": "openai.embeddings",
        "/openai/v1/audio/transcriptions": "openai.transcription",
        "/openai/v1/audio/translations": "openai.transcription",
    },
)
register_host(
    "api.mistral.ai",
    "mistral",
    {
        "/v1/chat/completions": "openai.chat",
        "/v1/fim/completions": "openai.chat",  # same response shape
        "/v1/embeddings": "openai.embeddings",
    },
)
register_host(
    "api.x.ai",
    "x-ai",
    {
        "/v1/chat/completions": "openai.chat",
        "/v1/responses": "openai.responses",
        "/v1/completions": "openai.completions",
        "/v1/embeddings": "openai.embeddings",
        "/v1/images/generations": "openai.images",
    },
)
