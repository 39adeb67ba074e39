"""The hosts that speak OpenAI's wire formats, and their metered paths.

OpenAI's own API and the OpenAI-compatible ones bill their calls under their own
genai-prices provider id; the wire formats are registered by openai_chat.py,
openai_responses.py, openai_media.py and openai_batch.py. A new OpenAI-compatible API is
one more `register_host` here.
"""

from __future__ import annotations

import re

from devmeter.providers.paths import READ, free_rules
from devmeter.providers.registry import Endpoint, fixed, register_host

# OpenAI-compatible APIs, under their own prefixes: reads of models, files and batches,
# and each one's account reads (OpenRouter's credits and generation stats, DeepSeek's
# balance).
COMPATIBLE_FREE = free_rules(
    (READ, r"(/api|/openai)?(/v1)?/models(/.*)?"),
    (READ + " DELETE", r"(/api|/openai)?(/v1)?/files(/.*)?"),
    ("POST", r"(/api|/openai)?(/v1)?/files"),
    (READ, r"(/api|/openai)?(/v1)?/batches(/[^/]+)?"),
    ("POST", r"(/api|/openai)?(/v1)?/batches/[^/]+/cancel"),
    (READ, r"/api/v1/(credits|generation|key|auth/key|providers)(/.*)?"),
    (READ, r"/user/balance"),
    ("POST", r"/v1/tokenize-text"),  # xAI
)


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
    family="openai",
    free_paths=free_rules(
        (READ, r"/v1/models(/[^/]+)?"),
        (READ + " POST DELETE", r"/v1/files(/.*)?"),
        (READ + " POST", r"/v1/uploads(/.*)?"),
        (READ, r"/v1/batches(/[^/]+)?"),
        ("POST", r"/v1/batches/[^/]+/cancel"),
        (READ + " DELETE", r"/v1/responses/[^/]+(/input_items)?"),
        ("POST", r"/v1/responses/[^/]+/cancel"),
        ("POST", r"/v1/responses/input_tokens"),  # token counting
        (READ + " DELETE", r"/v1/chat/completions(/[^/]+(/messages)?)?"),  # stored completions
        ("POST", r"/v1/moderations"),  # free of charge at OpenAI
        (READ, r"/v1/(fine_tuning|organization|conversations|vector_stores|containers)(/.*)?"),
        ("POST", r"/v1/fine_tuning/jobs/[^/]+/cancel"),
    ),
)
# Codex CLI signed in with a ChatGPT account. chatgpt.com is a website as well as Codex's
# API: only Codex's backend is gated, and its reads (model lists, settings) are free.
register_host(
    "chatgpt.com",
    "openai",
    {
        "/backend-api/codex/responses": "openai.responses",
        "/backend-api/codex/responses/compact": "openai.compact",
    },
    family="openai",
    free_paths=free_rules((READ, r"/backend-api/codex(/.*)?")),
    gate=(frozenset(), re.compile(r"/backend-api/codex(/.*)?")),  # any method
)
register_host(
    "openrouter.ai",
    "openrouter",
    {
        "/api/v1/chat/completions": "openai.chat",
        "/api/v1/completions": "openai.completions",
        "/api/v1/embeddings": "openai.embeddings",
    },
    family="openai",
    free_paths=COMPATIBLE_FREE,
)
register_host(
    "api.deepseek.com",
    "deepseek",
    {
        "/chat/completions": "openai.chat",
        "/v1/chat/completions": "openai.chat",
        "/beta/completions": "openai.completions",  # fill in the middle
    },
    family="openai",
    free_paths=COMPATIBLE_FREE,
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
    family="openai",
    free_paths=COMPATIBLE_FREE,
)
register_host(
    "api.mistral.ai",
    "mistral",
    {
        "/v1/chat/completions": "openai.chat",
        "/v1/fim/completions": "openai.chat",  # same response shape
        "/v1/embeddings": "openai.embeddings",
    },
    family="openai",
    free_paths=COMPATIBLE_FREE,
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
    family="openai",
    free_paths=COMPATIBLE_FREE,
)
