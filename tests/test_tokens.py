"""Token estimates: tiktoken only from a verified local cache, else the heuristic."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken_ext.openai_public

from devmeter import tokens
from devmeter.metering import conclude_usage
from devmeter.providers import Endpoint
from devmeter.providers.base import TEXT_CAP
from devmeter.usage import RequestInfo, ResponseResult, Usage

WIRE = Path(__file__).parent / "fixtures" / "wire"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts undecided, with an empty tiktoken cache of its own."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    tokens.reset_cache()
    yield
    tokens.reset_cache()


def tiny_encoding() -> tiktoken.Encoding:
    """A real tiktoken Encoding over a tiny vocabulary: every byte, plus "th", "he", "the"."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"th": 256, b"he": 257, b"the": 258})
    return tiktoken.Encoding(
        "tiny", pat_str=r"\s+|\S+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 259}
    )


@pytest.fixture
def cached_tiny(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend o200k_base's file is in the cache: write a file whose hash we declare expected.

    Returns the list of encodings tiktoken was asked to load.
    """
    content = b"fake bpe file"
    path = tokens.tiktoken_cache_path("o200k_base")
    assert path is not None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(content)
    url = tokens._TIKTOKEN_FILES["o200k_base"][0]
    monkeypatch.setitem(
        tokens._TIKTOKEN_FILES, "o200k_base", (url, hashlib.sha256(content).hexdigest())
    )
    loads: list[str] = []

    def get_encoding(name: str) -> tiktoken.Encoding:
        loads.append(name)
        return tiny_encoding()

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    return loads


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """tiktoken must not even be asked: asking is what downloads (and hangs offline).

    The stand-in fails like an offline download would; tokens.py swallows that, so
    the calls are recorded and checked after the test.
    """
    calls: list[str] = []

    def offline(name: str) -> None:
        calls.append(name)
        raise OSError("offline")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    yield calls
    assert calls == [], "tiktoken.get_encoding was called without a verified cached file"


class TestHeuristic:
    def test_ascii_is_four_chars_per_token(self) -> None:
        assert tokens.heuristic_tokens("abcd" * 10) == 10
        assert tokens.heuristic_tokens("abcde") == 2  # rounds up

    def test_cjk_is_one_token_per_char(self) -> None:
        assert tokens.heuristic_tokens("日本語のテスト") == 7
        assert tokens.heuristic_tokens("한국어") == 3

    def test_other_non_ascii_is_half_a_token_per_char(self) -> None:
        assert tokens.heuristic_tokens("привет") == 3
        # 8 ASCII chars (2 tokens) + 6 Cyrillic (3) + 2 CJK (2)
        assert tokens.heuristic_tokens("abcdefghпривет中文") == 7

    def test_empty_and_tiny(self) -> None:
        assert tokens.heuristic_tokens("") == 0
        assert tokens.heuristic_tokens("a") == 1
        assert tokens.heuristic_tokens("é") == 1


class TestOfflineFallback:
    def test_no_cached_file_uses_heuristic_without_asking_tiktoken(
        self, no_download: list[str]
    ) -> None:
        assert tokens.estimate_tokens("abcd" * 25, "gpt-4o") == 25
        assert tokens.preload() is False

    def test_file_with_wrong_hash_is_not_trusted(self, no_download: list[str]) -> None:
        # tiktoken would delete a mismatching file and download again: never let it try.
        path = tokens.tiktoken_cache_path("o200k_base")
        assert path is not None
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(b"truncated download")
        assert tokens.estimate_tokens("abcd" * 25) == 25

    def test_cache_disabled_means_heuristic(
        self, monkeypatch: pytest.MonkeyPatch, no_download: list[str]
    ) -> None:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken: "" disables its cache
        assert tokens.tiktoken_cache_dir() is None
        assert tokens.estimate_tokens("abcd") == 1

    def test_forced_fallback_by_monkeypatch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(tokens, "_cache_file_ok", lambda encoding: False)
        text = "The quick brown fox 日本"
        assert tokens.estimate_tokens(text, "gpt-4o") == tokens.heuristic_tokens(text)


class TestCachePath:
    URL_SHA1 = hashlib.sha1(
        b"https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    ).hexdigest()

    def test_tiktoken_cache_dir_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/cache/tk")
        assert tokens.tiktoken_cache_path("o200k_base") == f"/cache/tk/{self.URL_SHA1}"

    def test_data_gym_env_then_tempdir(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
        monkeypatch.setenv("DATA_GYM_CACHE_DIR", "/cache/dg")
        assert tokens.tiktoken_cache_dir() == "/cache/dg"
        monkeypatch.delenv("DATA_GYM_CACHE_DIR")
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        monkeypatch.setattr(tempfile, "tempdir", None)  # make tempfile re-read TMPDIR
        assert tokens.tiktoken_cache_dir() == str(tmp_path / "data-gym-cache")

    def test_urls_and_hashes_match_installed_tiktoken(self) -> None:
        source = inspect.getsource(tiktoken_ext.openai_public)
        for url, sha256 in tokens._TIKTOKEN_FILES.values():
            assert f'"{url}"' in source
            assert f'expected_hash="{sha256}"' in source


class TestWithTiktoken:
    def test_uses_tiktoken_when_cached(self, cached_tiny: list[str]) -> None:
        text = "the theme thesis"
        expected = len(tiny_encoding().encode_ordinary(text))
        assert tokens.estimate_tokens(text, "gpt-5") == expected
        assert expected != tokens.heuristic_tokens(text)  # the two paths really differ
        assert cached_tiny == ["o200k_base"]

    def test_special_tokens_in_text_are_plain_text(self, cached_tiny: list[str]) -> None:
        # encode() would raise on "<|endoftext|>" in a prompt; encode_ordinary must be used.
        assert tokens.estimate_tokens("say <|endoftext|> now") > 3

    def test_decision_is_cached(self, cached_tiny: list[str]) -> None:
        for _ in range(5):
            tokens.estimate_tokens("the", "gpt-4o")
        assert tokens.preload("gpt-4o") is True
        assert cached_tiny == ["o200k_base"]

    def test_falls_back_to_the_other_encoding(self, cached_tiny: list[str]) -> None:
        # gpt-4 wants cl100k_base, which is not cached: o200k_base answers instead.
        assert tokens.encoding_name("gpt-4-0613") == "cl100k_base"
        assert tokens.estimate_tokens("the", "gpt-4-0613") == 1

    def test_broken_tiktoken_degrades_to_heuristic(
        self, cached_tiny: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(name: str) -> None:
            raise OSError("network unreachable")

        monkeypatch.setattr(tiktoken, "get_encoding", broken)
        assert tokens.estimate_tokens("abcd" * 3) == 3

    def test_long_text_is_extrapolated_past_the_budget(
        self, cached_tiny: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(tokens, "_TIKTOKEN_BUDGET", 1_000)
        # The first 1,000 chars are "the " (2 tokens per 4 chars); the 3,000 "x" after
        # them would be 3,000 tokens if encoded, but are extrapolated at that ratio.
        text = "the " * 250 + "x" * 3_000
        assert tokens.estimate_tokens(text) == 500 + 1_500
        assert tokens.estimate_tokens("the " * 10_000) == 20_000


class TestEncodingChoice:
    @pytest.mark.parametrize(
        ("model", "encoding"),
        [
            ("gpt-4o", "o200k_base"),
            ("gpt-5.1", "o200k_base"),
            ("claude-opus-5-5", "o200k_base"),
            (None, "o200k_base"),
            ("gpt-4", "cl100k_base"),
            ("gpt-3.5-turbo", "cl100k_base"),
            ("openai/gpt-4-turbo", "cl100k_base"),
            ("text-embedding-3-small", "cl100k_base"),
        ],
    )
    def test_encoding_name(self, model: str | None, encoding: str) -> None:
        assert tokens.encoding_name(model) == encoding


class TestRequestEstimate:
    def test_counts_prompt_text_and_not_settings(self) -> None:
        small = {"model": "m", "messages": [{"role": "user", "content": "abcd" * 100}]}
        padded = dict(small, max_tokens=4096, temperature=0.2, metadata={"user_id": "x" * 400})
        assert tokens.estimate_request_tokens(small) == 100 + tokens.MESSAGE_OVERHEAD
        assert tokens.estimate_request_tokens(padded) == tokens.estimate_request_tokens(small)

    def test_images_count_fixed_and_base64_is_not_read(self) -> None:
        image = {"type": "image", "source": {"type": "base64", "data": "A" * 1_000_000}}
        body = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}]}
        assert tokens.estimate_request_tokens(body) == (
            tokens.IMAGE_TOKENS + 1 + tokens.MESSAGE_OVERHEAD
        )

    def test_data_urls_count_as_images(self) -> None:
        url = "data:image/png;base64," + "A" * 10_000
        body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": url}]}]}
        assert tokens.estimate_request_tokens(body) == tokens.IMAGE_TOKENS + tokens.MESSAGE_OVERHEAD

    def test_system_tools_and_instructions_count(self) -> None:
        base = {"messages": []}
        with_system = dict(base, system="abcd" * 10)
        tools = [{"name": "Bash", "input_schema": {"properties": {"command": {}}}}]
        with_tools = dict(base, tools=tools)
        assert tokens.estimate_request_tokens(with_system) == 10
        # Property names are prompt tokens too: "Bash" + "name" + "input_schema" + ...
        assert tokens.estimate_request_tokens(with_tools) >= 5
        assert tokens.estimate_request_tokens({"instructions": "abcd" * 3}) == 3

    def test_embeddings_token_arrays(self) -> None:
        assert tokens.estimate_request_tokens({"input": [[1, 2, 3], [4, 5]]}) == 5 + 2 * 4

    def test_gemini_and_cloudcode_envelope(self) -> None:
        inner = {"contents": [{"role": "user", "parts": [{"text": "abcd" * 5}]}]}
        direct = tokens.estimate_request_tokens(inner)
        assert direct == 5 + tokens.MESSAGE_OVERHEAD
        envelope = {"model": "gemini-2.5-pro", "project": "p", "request": inner}
        assert tokens.estimate_request_tokens(envelope) == direct

    def test_thinking_signatures_are_not_text(self) -> None:
        block = {"type": "thinking", "thinking": "abcd", "signature": "S" * 5000}
        body = {"messages": [{"role": "assistant", "content": [block]}]}
        assert tokens.estimate_request_tokens(body) == 1 + tokens.MESSAGE_OVERHEAD

    def test_fixture_requests_estimate_sensibly(self) -> None:
        body = json.loads((WIRE / "anthropic_request.json").read_text())
        # System, tools and an environment block: a few hundred tokens, not thousands.
        assert 150 < tokens.estimate_request_tokens(body) < 600

    def test_ten_megabyte_body_is_fast(self) -> None:
        body: dict[str, Any] = {
            "model": "claude-opus-5-5",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "word " * 2_000}]}
                for _ in range(1_000)
            ],
        }
        started = time.perf_counter()
        estimate = tokens.estimate_request_tokens(body)
        assert time.perf_counter() - started < 0.5
        assert estimate == 1_000 * (2_500 + tokens.MESSAGE_OVERHEAD)

    def test_not_a_dict(self) -> None:
        assert tokens.estimate_request_tokens([1, 2]) == 0  # type: ignore[arg-type]


class TestConcludeUsage:
    """`metering.conclude_usage` is devmeter's one estimator of a call's usage."""

    request = RequestInfo(model="gpt-4o", prompt_tokens_estimate=1200)
    endpoint = Endpoint("openai", "openai.chat")

    def conclude(self, result: ResponseResult) -> Usage:
        return conclude_usage(self.endpoint, self.request, result, 200)

    def test_no_usage_estimates_both_sides(self) -> None:
        result = ResponseResult(usage=None, output_chars=40, output_text="abcd" * 10)
        assert self.conclude(result) == Usage(input_tokens=1200, output_tokens=10, estimated=True)

    def test_bounded_text_is_extrapolated(self) -> None:
        result = ResponseResult(usage=None, output_chars=400, output_text="abcd" * 10)
        assert self.conclude(result).output_tokens == 100

    def test_a_million_characters_are_billed_as_such_not_as_the_text_kept(self) -> None:
        # The parser keeps TEXT_CAP characters and counts all of them: the estimate is
        # scaled to everything that streamed (issue 16: 65,536 tokens for 1M characters).
        kept = "abcd" * (TEXT_CAP // 4)
        result = ResponseResult(usage=None, output_chars=1_000_000, output_text=kept)
        assert self.conclude(result).output_tokens == 250_000

    def test_reported_usage_stands(self) -> None:
        usage = Usage(input_tokens=5, output_tokens=7)
        assert self.conclude(ResponseResult(usage=usage)) is usage

    def test_cut_stream_takes_the_larger_output(self) -> None:
        # Anthropic's message_start says output_tokens=1; 100 tokens of text arrived.
        usage = Usage(input_tokens=3, cache_read_tokens=100, output_tokens=1)
        result = ResponseResult(
            usage=usage, complete=False, output_chars=400, output_text="abcd" * 100
        )
        estimated = self.conclude(result)
        assert estimated.output_tokens == 100
        assert estimated.input_tokens == 3 and estimated.cache_read_tokens == 100
        assert estimated.estimated

    def test_a_hung_up_stream_is_billed_past_the_kept_text(self) -> None:
        usage = Usage(input_tokens=3, output_tokens=1)
        kept = "abcd" * (TEXT_CAP // 4)
        result = ResponseResult(
            usage=usage, complete=False, output_chars=2_000_000, output_text=kept
        )
        assert self.conclude(result).output_tokens == 500_000


class TestPromptSize:
    """A routing rule's prompt threshold: the tokenizer runs only near it."""

    BODY = {"model": "gpt-5", "messages": [{"role": "user", "content": "the " * 1000}]}

    @pytest.fixture
    def tokenized(self, cached_tiny: list[str], monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """The texts' lengths every tiktoken count was run on."""
        runs: list[int] = []
        real = tokens._count_texts

        def counting(texts: list[str], model: str | None) -> int:
            runs.append(sum(len(t) for t in texts))
            return real(texts, model)

        monkeypatch.setattr(tokens, "_count_texts", counting)
        return runs

    def test_far_thresholds_are_answered_without_the_tokenizer(self, tokenized: list[int]) -> None:
        size = tokens.PromptSize(self.BODY)
        rough = size.rough()
        assert rough == 1000 + tokens.MESSAGE_OVERHEAD  # "the " is 4 characters
        assert size.at_most(rough * tokens.HEURISTIC_SPREAD) is True
        assert size.at_most(rough // tokens.HEURISTIC_SPREAD - 1) is False
        assert size.at_least(rough // tokens.HEURISTIC_SPREAD - 1) is True
        assert tokenized == [] and not size.known()

    def test_near_a_threshold_the_tokenizer_decides_as_estimate_request_tokens(
        self, tokenized: list[int]
    ) -> None:
        exact = tokens.estimate_request_tokens(self.BODY)
        assert exact != tokens.PromptSize(self.BODY).rough()  # the tiny encoding differs
        size = tokens.PromptSize(self.BODY)
        assert size.at_most(exact) is True and size.at_most(exact - 1) is False
        assert size.at_least(exact) is True and size.at_least(exact + 1) is False
        assert size.exact() == exact and size.known()
        assert len(tokenized) == 2  # once above, once for this size: then remembered

    def test_without_tokenize_it_asks_for_a_worker_instead(self, tokenized: list[int]) -> None:
        size = tokens.PromptSize(self.BODY, tokenize=False)
        assert size.at_most(10**9) is True  # far: no tokenizer needed
        with pytest.raises(tokens.TokenizerNeeded):
            size.at_most(size.rough())
        size.tokenize = True  # what the worker thread does: work it out, then ask again
        assert size.exact() == tokens.estimate_request_tokens(self.BODY)
        size.tokenize = False
        assert size.at_most(size.exact()) is True

    def test_without_tiktoken_the_heuristic_is_the_estimate(self, no_download: list[str]) -> None:
        size = tokens.PromptSize(self.BODY, tokenize=False)
        assert size.exact() == size.rough() == tokens.estimate_request_tokens(self.BODY)
        assert size.at_most(size.rough()) is True and size.at_most(size.rough() - 1) is False
