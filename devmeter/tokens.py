"""Token estimates for calls whose response reports no usage.

tiktoken is exact for OpenAI models and a fair estimate for others, but its first
use of an encoding downloads the BPE file. devmeter runs inside a proxy, often
offline, and must never stall a request on that download, so tiktoken is used only
when the encoding's file is already in tiktoken's cache *and* matches the hash
tiktoken expects (a mismatch would make tiktoken delete it and download again).
Otherwise a documented heuristic answers. Which estimator is available is decided
once per encoding and cached.

Estimates bound their own cost: at most `_TIKTOKEN_BUDGET` characters per call go
through the tokenizer, the rest is extrapolated from the ratio seen, so a 10 MB
prompt costs milliseconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from devmeter.usage import ResponseResult

# What tiktoken's openai_public plugin downloads for each encoding, and the sha256 it
# checks. tests/test_tokens.py checks these against the installed tiktoken.
_TIKTOKEN_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

# Characters per call that go through tiktoken before extrapolating.
_TIKTOKEN_BUDGET = 200_000
# tiktoken's BPE slows down on very long single pieces: feed it bounded slices.
_SLICE = 32_768

# Fixed guesses for what a request carries besides text.
IMAGE_TOKENS = 1_600  # an image, PDF page or audio clip whose size we do not decode
MESSAGE_OVERHEAD = 4  # role and separators around each message

_lock = threading.Lock()
# encoding name -> loaded tiktoken Encoding, or None when only the heuristic is available
_encodings: dict[str, Any | None] = {}


def reset_cache() -> None:
    """Forget which estimators are available (tests, or after the cache was filled)."""
    with _lock:
        _encodings.clear()


def tiktoken_cache_dir() -> str | None:
    """Where tiktoken looks for its BPE files, by its own rules; None when disabled."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    # An empty value turns tiktoken's cache off: every load would download.
    return cache_dir or None


def tiktoken_cache_path(encoding: str) -> str | None:
    """The file tiktoken would read `encoding` from (sha1 of its URL), if caching is on."""
    cache_dir = tiktoken_cache_dir()
    if cache_dir is None or encoding not in _TIKTOKEN_FILES:
        return None
    url = _TIKTOKEN_FILES[encoding][0]
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def _cache_file_ok(encoding: str) -> bool:
    path = tiktoken_cache_path(encoding)
    if path is None:
        return False
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == _TIKTOKEN_FILES[encoding][1]


def _load(encoding: str) -> Any | None:
    """The tiktoken Encoding if it can load without the network, else None (cached)."""
    if encoding in _encodings:
        return _encodings[encoding]
    with _lock:
        if encoding in _encodings:
            return _encodings[encoding]
        enc = None
        if _cache_file_ok(encoding):
            try:
                import tiktoken

                enc = tiktoken.get_encoding(encoding)
            except Exception:  # a broken install must degrade to the heuristic, not fail
                enc = None
        _encodings[encoding] = enc
        return enc


@lru_cache(maxsize=1024)  # pure, and asked for every estimate
def encoding_name(model: str | None) -> str:
    """The tiktoken encoding that best fits `model`.

    Older OpenAI models use cl100k_base; everything newer, and every non-OpenAI
    model (where tiktoken is only an estimate anyway), uses o200k_base.
    """
    m = (model or "").lower().rpartition("/")[2]  # "openai/gpt-4" on OpenRouter
    if m.startswith(("gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-")) or m == "gpt-4":
        return "cl100k_base"
    return "o200k_base"


def _encoder(model: str | None) -> Any | None:
    preferred = encoding_name(model)
    enc = _load(preferred)
    if enc is None:
        other = "cl100k_base" if preferred == "o200k_base" else "o200k_base"
        enc = _load(other)
    return enc


def preload(model: str | None = None) -> bool:
    """Load the encoder now (e.g. in a background thread at startup); True if tiktoken."""
    return _encoder(model) is not None


# CJK ideographs, kana, Hangul and their compatibility / fullwidth forms: tokenizers
# spend about one token per character on these.
_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\uff00-\uffef\U00020000-\U0003ffff]"
)


def heuristic_tokens(text: str) -> int:
    """Offline estimate: ~4 ASCII chars per token, 1 per CJK char, 2 per other char.

    Other non-ASCII text (accented Latin, Cyrillic, Greek, emoji) tokenizes worse
    than English and better than CJK; half a token per character errs on the high
    side, which is the safe side for a cost estimate.
    """
    if not text:
        return 0
    n = len(text)
    if text.isascii():  # the common case, in C
        return -(-n // 4)
    ascii_chars = len(text.encode("ascii", "ignore"))
    cjk = len(_CJK.findall(text))
    other = n - ascii_chars - cjk
    return max(1, math.ceil(ascii_chars / 4 + cjk + other / 2))


def _count_texts(texts: Iterator[str] | list[str], model: str | None) -> int:
    enc = _encoder(model)
    if enc is None:
        return sum(heuristic_tokens(t) for t in texts)
    tokens = 0
    encoded_chars = 0
    rest: list[str] = []
    for text in texts:
        if encoded_chars >= _TIKTOKEN_BUDGET:
            rest.append(text)
            continue
        room = _TIKTOKEN_BUDGET - encoded_chars
        head, tail = text[:room], text[room:]
        for i in range(0, len(head), _SLICE):
            tokens += len(enc.encode_ordinary(head[i : i + _SLICE]))
        encoded_chars += len(head)
        if tail:
            rest.append(tail)
    if rest and encoded_chars:
        # Extrapolate the ratio seen so far over what the budget left out.
        tokens += math.ceil(sum(len(t) for t in rest) * tokens / encoded_chars)
    return tokens


def estimate_tokens(text: str, model: str | None = None) -> int:
    """Tokens in `text`: tiktoken when its encoding is cached locally, else the heuristic."""
    if not text:
        return 0
    return _count_texts([text], model)


# --- requests -------------------------------------------------------------------------

# Keys whose values are the prompt. Everything else in a request body is settings.
_TEXT_KEYS = (
    "messages",  # Anthropic, OpenAI chat and every compatible API
    "system",  # Anthropic
    "tools",  # every API: names, descriptions and JSON schemas all count
    "functions",  # legacy OpenAI chat
    "input",  # OpenAI Responses and embeddings
    "instructions",  # OpenAI Responses
    "prompt",  # legacy completions
    "contents",  # Gemini
    "systemInstruction",  # Gemini
    "system_instruction",
)
# Keys under those whose values are ids, enums or opaque blobs rather than prompt text.
_SKIP_KEYS = frozenset(
    {
        "type",
        "role",
        "id",
        "tool_use_id",
        "tool_call_id",
        "call_id",
        "signature",  # Anthropic thinking signatures
        "thoughtSignature",
        "encrypted_content",  # OpenAI reasoning items
        "cache_control",
        "media_type",
        "mime_type",
        "mimeType",
        "detail",
        "status",
    }
)
# Blocks that carry media: counted at IMAGE_TOKENS each, their base64 never read.
_MEDIA_TYPES = frozenset(
    {"image", "image_url", "input_image", "document", "input_file", "file", "input_audio"}
)
_MEDIA_KEYS = frozenset({"inlineData", "inline_data", "fileData", "file_data"})


def _walk(node: Any, texts: list[str], counts: list[int], keys_are_text: bool) -> None:
    """Collect the prompt strings under `node` (references, not copies) and count media.

    Iterative, so a deeply nested body cannot hit the recursion limit.
    counts = [media blocks, messages, bare integers (token ids in embeddings input)]
    """
    stack: list[tuple[Any, bool]] = [(node, keys_are_text)]
    while stack:
        item, keys_text = stack.pop()
        if isinstance(item, str):
            # Data URLs are images in disguise (OpenAI image_url, Responses input_image).
            if item.startswith("data:") and len(item) > 256:
                counts[0] += 1
            else:
                texts.append(item)
        elif isinstance(item, dict):
            # isdisjoint, not a generator over the keys: this walk covers every block of a
            # prompt it estimates.
            if item.get("type") in _MEDIA_TYPES or not _MEDIA_KEYS.isdisjoint(item):
                counts[0] += 1
                continue
            for key, value in item.items():
                if key in _SKIP_KEYS:
                    continue
                if keys_text:
                    texts.append(key)
                stack.append((value, keys_text))
        elif isinstance(item, list):
            for value in item:
                stack.append((value, keys_text))
        elif isinstance(item, int) and not isinstance(item, bool):
            counts[2] += 1


def estimate_request_tokens(body_json: dict[str, Any]) -> int:
    """Estimated prompt tokens of a request body of any supported API.

    Counts the text of messages, system, tools, input, instructions and contents
    (also inside Gemini CLI's `{"request": {...}}` envelope), a fixed amount per
    image or document, and a small overhead per message. Keeps no text.
    """
    texts, model, fixed = _prompt_parts(body_json)
    return _count_texts(texts, model) + fixed


def _prompt_parts(body_json: Any) -> tuple[list[str], str | None, int]:
    """(the prompt's strings, the model, the tokens counted without reading text: media,
    per-message overhead, token ids) of a request body."""
    if not isinstance(body_json, dict):
        return [], None, 0
    if isinstance(body_json.get("request"), dict):  # cloudcode-pa envelope
        model = body_json.get("model")
        body_json = body_json["request"]
    else:
        model = body_json.get("model")
    texts: list[str] = []
    counts = [0, 0, 0]
    for key in _TEXT_KEYS:
        value = body_json.get(key)
        if value is None:
            continue
        if key in ("messages", "contents", "input") and isinstance(value, list):
            counts[1] += len(value)
        # Tool schemas are sent as JSON: their property names are tokens too.
        _walk(value, texts, counts, keys_are_text=key in ("tools", "functions"))
    media, messages, token_ids = counts
    fixed = media * IMAGE_TOKENS + messages * MESSAGE_OVERHEAD + token_ids
    return texts, model if isinstance(model, str) else None, fixed


# How far tiktoken's count of a text can be from the heuristic's, either way: English and
# code run 3 to 5 characters a token against the heuristic's 4, CJK about one a character,
# as it counts them. A threshold further than this from the heuristic is answered without
# the tokenizer.
HEURISTIC_SPREAD = 4


class TokenizerNeeded(Exception):
    """A `PromptSize` made with `tokenize=False` was asked what only the tokenizer can say."""


class PromptSize:
    """A request's prompt in tokens, worked out only as far as a question needs.

    Routing rules ask whether the prompt is under or over a threshold. The heuristic over
    the prompt's text (one walk over the parsed body, no tokenizer) answers a threshold it
    is far from (`HEURISTIC_SPREAD`); `estimate_request_tokens`, with tiktoken when its
    file is cached, runs only near one, or when a value is asked for. Over a long
    conversation the walk costs about a millisecond, tiktoken tens of them.

    `tokenize=False`: raise `TokenizerNeeded` instead of running tiktoken here, so the
    proxy can run `exact` on a worker thread (tiktoken releases the GIL) and ask again.
    Every answer is remembered.
    """

    def __init__(self, body_json: Any, *, tokenize: bool = True) -> None:
        self._body = body_json
        self.tokenize = tokenize
        self._parts: tuple[list[str], str | None, int] | None = None
        self._rough: int | None = None
        self._exact: int | None = None

    def _prompt(self) -> tuple[list[str], str | None, int]:
        if self._parts is None:
            self._parts = _prompt_parts(self._body)
        return self._parts

    def rough(self) -> int:
        """The heuristic's count (what `exact` is when tiktoken is not available)."""
        if self._rough is None:
            texts, _, fixed = self._prompt()
            self._rough = sum(heuristic_tokens(t) for t in texts) + fixed
        return self._rough

    def _rough_bounds(self) -> tuple[int, int]:
        """Bounds on `rough` from the texts' lengths alone: the heuristic counts a quarter
        of a token to one token a character."""
        if self._rough is not None:
            return self._rough, self._rough
        texts, _, fixed = self._prompt()
        chars = sum(map(len, texts))
        return chars // 4 + fixed, chars + fixed

    def exact(self) -> int:
        """`estimate_request_tokens` of the body."""
        if self._exact is None:
            texts, model, fixed = self._prompt()
            if _encoder(model) is None:
                self._exact = self.rough()
            elif not self.tokenize:
                raise TokenizerNeeded
            else:
                self._exact = _count_texts(texts, model) + fixed
            self._parts = None  # the strings are the body's; hold them no longer
        return self._exact

    def known(self) -> bool:
        """Whether `exact` is worked out already (it costs nothing now)."""
        return self._exact is not None

    def at_most(self, limit: int) -> bool:
        """`exact() <= limit`, without the tokenizer when the heuristic is far from it."""
        if self._exact is None:
            low, high = self._rough_bounds()
            if high * HEURISTIC_SPREAD <= limit:
                return True
            if low > limit * HEURISTIC_SPREAD:
                return False
            rough = self.rough()
            if rough * HEURISTIC_SPREAD <= limit:
                return True
            if rough > limit * HEURISTIC_SPREAD:
                return False
        return self.exact() <= limit

    def at_least(self, limit: int) -> bool:
        """`exact() >= limit`, as `at_most`."""
        return not self.at_most(limit - 1)


# --- responses ------------------------------------------------------------------------


def estimate_output_tokens(result: ResponseResult, model: str | None = None) -> int:
    """Output tokens from the text a parser kept, extrapolated to all it saw.

    Parsers keep at most `providers.base.TEXT_CAP` characters but count every one
    (`output_chars`): a 1M-character answer is estimated at ~250k tokens, not at the
    ~65k of the part kept.
    """
    text = result.output_text
    if not text:
        # Nothing kept: fall back to the character count alone.
        return -(-result.output_chars // 4)
    tokens = estimate_tokens(text, model or result.model)
    if result.output_chars > len(text):  # the parser's text buffer is bounded
        tokens = math.ceil(tokens * result.output_chars / len(text))
    return tokens
