"""Live config reload through a real proxy: raising a cap as the refusal says lets the next
call through without a restart, spend counted so far is kept, and a broken edit keeps
the last good config and says where it is broken."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import pytest

from devmeter.config_reload import read_status
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy

pytestmark = pytest.mark.proxy

# One call: 1200 input + 345 output on Claude Opus 5.5 = $0.0117.
USAGE = {
    "input_tokens": 1200, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 345, "reasoning_tokens": 0,
}  # fmt: skip
CAP = """
[budgets.session]
notify_usd = []
block_usd = {cap}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


@pytest.fixture()
def proxy(upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningProxy]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(CAP.format(cap=0.02))
    running = start_proxy(home, upstream.url)
    yield running
    running.stop()


def client(proxy: RunningProxy) -> anthropic.Anthropic:
    http = anthropic.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.bundle))
    )
    return anthropic.Anthropic(
        api_key="sk-ant-test",
        http_client=http,
        default_headers={"X-Devmeter-Session": "reload-1"},
        max_retries=0,
    )


def ask(c: anthropic.Anthropic) -> None:
    c.messages.create(
        model="claude-opus-5-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )


def edit(path: Path, text: str) -> None:
    """Write the file the way an editor does, and make sure its stamp moves even on a
    filesystem with coarse timestamps."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def passes(c: anthropic.Anthropic) -> bool:
    try:
        ask(c)
    except anthropic.PaymentRequiredError:
        return False
    return True


def test_raising_the_cap_as_the_refusal_says_lets_the_next_call_in(proxy: RunningProxy) -> None:
    c = client(proxy)
    ask(c)
    ask(c)  # $0.0234: over the $0.02 cap
    with pytest.raises(anthropic.PaymentRequiredError) as refused:
        ask(c)
    config = proxy.home / "config.toml"
    assert f"raise budgets.session.block_usd in {config}" in refused.value.message

    edit(config, CAP.format(cap=0.04))
    wait_for(lambda: passes(c), "the raised cap never took effect")  # now $0.0351
    # The session's spend was kept across the reload: one more call passes the $0.04
    # cap, and the next is refused (from $0 it would take four).
    ask(c)
    with pytest.raises(anthropic.PaymentRequiredError):
        ask(c)
    assert "devmeter: config reloaded from" in proxy.log.read_text()
    status = read_status(proxy.home)
    assert status is not None and status["config_error"] is None


def test_a_broken_edit_keeps_the_last_good_config_and_says_where(proxy: RunningProxy) -> None:
    c = client(proxy)
    config = proxy.home / "config.toml"
    edit(config, '\n[budgets.session]\nnotify_usd = []\nblock_usd = "lots"\n')
    wait_for(
        lambda: (read_status(proxy.home) or {}).get("config_error") is not None,
        "the broken edit was never reported",
    )
    error = (read_status(proxy.home) or {})["config_error"]
    assert str(config) in error and "line 4" in error and "budgets.session.block_usd" in error
    log = proxy.log.read_text()
    lines = [line for line in log.splitlines() if "bad config" in line]
    assert len(lines) == 1 and "keeping the last good one" in lines[0]

    # The old $0.02 cap still holds, none of the broken edit applied.
    ask(c)
    ask(c)
    with pytest.raises(anthropic.PaymentRequiredError):
        ask(c)

    # A fix clears the error and applies.
    edit(config, CAP.format(cap=1))
    wait_for(lambda: passes(c), "the fixed config never took effect")
    assert (read_status(proxy.home) or {}).get("config_error", "no status") is None


def test_an_edit_half_valid_is_not_half_applied(proxy: RunningProxy) -> None:
    """A new cap beside an invalid routing rule: the cap must not apply alone."""
    c = client(proxy)
    config = proxy.home / "config.toml"
    ask(c)
    ask(c)
    with pytest.raises(anthropic.PaymentRequiredError):
        ask(c)
    edit(config, CAP.format(cap=5) + '\n[routing]\nmode = "sometimes"\n')
    wait_for(
        lambda: (read_status(proxy.home) or {}).get("config_error") is not None,
        "the broken edit was never reported",
    )
    assert "routing.mode" in json.dumps(read_status(proxy.home))
    with pytest.raises(anthropic.PaymentRequiredError):
        ask(c)


def test_a_cap_added_by_a_reload_counts_the_spend_already_in_the_ledger(
    proxy: RunningProxy,
) -> None:
    """Scopes without a cap or threshold are not counted while the proxy runs; a reload
    that adds a day cap must start from the day's spend, not from $0."""
    c = client(proxy)
    config = proxy.home / "config.toml"
    quiet = "[budgets.session]\nnotify_usd = []\n[budgets.day]\nnotify_usd = []\n"
    edit(config, quiet)
    wait_for(lambda: "config reloaded" in proxy.log.read_text(), "the first edit never applied")
    proxy.skip_existing()
    ask(c)
    ask(c)  # $0.0234 today, counted by no scope
    proxy.new_calls(2)  # committed to the ledger
    edit(config, quiet.replace("[budgets.day]\n", "[budgets.day]\nblock_usd = 0.02\n"))
    wait_for(lambda: proxy.log.read_text().count("config reloaded") == 2, "the cap never applied")
    # Refused at once: from $0 it would take two more calls to reach $0.02.
    with pytest.raises(anthropic.PaymentRequiredError):
        ask(c)


def test_upstream_and_price_edits_apply_to_the_next_call(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home2"
    home.mkdir()
    config = home / "config.toml"
    table = '[budgets.session]\nnotify_usd = []\n[upstream]\n"api.anthropic.com" = "{url}"\n'
    config.write_text(table.format(url=upstream.url))
    running = start_proxy(home, None)  # no --upstream flags: the file decides
    try:
        with FakeUpstream(usage=USAGE) as other:
            c = client(running)
            upstream.clear()
            ask(c)
            assert len(upstream.find("anthropic.messages")) == 1
            edit(config, table.format(url=other.url))
            wait_for(lambda: "config reloaded" in running.log.read_text(), "never reloaded")
            ask(c)
            assert len(other.find("anthropic.messages")) == 1
            assert len(upstream.find("anthropic.messages")) == 1
            free = table.format(url=other.url) + '[[prices]]\nmodel = "claude-*"\nfree = true\n'
            edit(config, free)
            wait_for(lambda: running.log.read_text().count("config reloaded") == 2, "no reload")
            ask(c)
            paid, _, now_free = running.new_calls(3)
            assert paid["cost_usd"] > 0 and now_free["cost_usd"] == 0
    finally:
        running.stop()


def test_a_proxy_started_with_listen_does_not_claim_the_files_listen_changed(
    proxy: RunningProxy,
) -> None:
    # `devmeter --listen …` (tray or headless) starts its proxy with --listen; the file
    # has no [proxy] listen. An unrelated edit must not say "listen applies when the
    # proxy restarts": nothing about listen changed, and the restart uses the flag.
    edit(proxy.home / "config.toml", CAP.format(cap=5))
    wait_for(lambda: "config reloaded" in proxy.log.read_text(), "never reloaded")
    reloaded = [ln for ln in proxy.log.read_text().splitlines() if "config reloaded" in ln]
    assert reloaded == [f"devmeter: config reloaded from {proxy.home / 'config.toml'}"]
