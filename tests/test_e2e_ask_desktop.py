"""An ask on a real desktop: Xvfb, a D-Bus session, the dunst notification daemon, and
dbus-monitor recording what goes over the bus, with a real proxy and the anthropic SDK.

A session crosses its ask level -> its next request is held -> the notification, with its
Continue / Stop buttons, is seen on D-Bus -> Continue is chosen in dunst's own action menu
(dunst emits `ActionInvoked`) -> the held request completes. And with nobody there: the
held request is refused with the devmeter message once the ask times out.

DEVMETER_ASK_SCREENSHOT=PATH saves a screenshot of the popup there (assets/ask-popup.png
was taken so).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from devmeter.alert_delivery import read_status
from tests.desktop_bus import launch_session_bus
from tests.fake_upstream import FakeUpstream
from tests.proxy_harness import RunningProxy, start_proxy
from tests.test_proxy_ask import in_thread, open_asks
from tests.test_proxy_guard import USAGE, ask, client

pytestmark = [
    pytest.mark.proxy,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Xvfb and dunst: Linux"),
]

CONFIG = """
[budgets]
ask_timeout_seconds = {timeout}

[budgets.session]
notify_usd = []
ask_usd = [{first}, {second}]

[budgets.day]
notify_usd = []
ask_usd = []
"""


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian: xvfb dbus-x11 dunst imagemagick)")
    return path


@dataclass
class Desktop:
    env: dict[str, str]  # DISPLAY and DBUS_SESSION_BUS_ADDRESS
    monitor_log: Path
    menu_log: Path
    dunst_log: Path

    def bus(self) -> str:
        return self.monitor_log.read_text(errors="replace")

    def wait_for_bus(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.bus(), re.S):
                return found
            time.sleep(0.05)
        raise AssertionError(f"not seen on D-Bus: {pattern!r}\n{self.evidence()}")

    def evidence(self) -> str:
        """What the bus, dunst and the menu saw: a failure here is otherwise opaque."""
        menu = self.menu_log.read_text(errors="replace") if self.menu_log.exists() else "-"
        dunst = self.dunst_log.read_text(errors="replace")[-2000:]
        return f"{self.bus()[-3000:]}\n--- dunst menu ---\n{menu}\n--- dunst log ---\n{dunst}"

    def displayed(self) -> int:
        out = subprocess.run(
            ["dunstctl", "count", "displayed"], env=self.env, capture_output=True, text=True
        ).stdout.strip()
        return int(out) if out.isdigit() else 0

    def wait_until_none_displayed(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.displayed():
            assert time.monotonic() < deadline, f"a popup stays on screen\n{self.evidence()}"
            time.sleep(0.1)

    def choose_continue(self) -> None:
        """Open the popup's actions and pick Continue, as a user would: dunst runs its menu
        command (the chooser) and emits ActionInvoked itself (to the sender of the
        notification only, which dbus-monitor also sees). Notify is on the bus a while
        before a loaded machine's dunst shows the popup, and dunst 1.9 opens a menu only
        over popups on screen, so wait for one before opening the menu, and try again."""
        invoked = r'member=ActionInvoked\s+uint32 \d+\s+string "continue"'
        deadline = time.monotonic() + 40  # under the ask's 30 s plus a loaded machine
        while time.monotonic() < deadline:
            if not self.displayed():
                time.sleep(0.2)
                continue
            subprocess.run(["dunstctl", "context"], env=self.env, check=True, timeout=10)
            try:
                self.wait_for_bus(invoked, timeout=3)
                return
            except AssertionError:
                continue
        self.wait_for_bus(invoked, timeout=1)


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[Desktop]:
    """Xvfb (it picks a free display), a private D-Bus session, dunst and dbus-monitor."""
    xvfb, dbus_launch, dunst = need("Xvfb"), need("dbus-launch"), need("dunst")
    monitor, dunstctl = need("dbus-monitor"), need("dunstctl")
    procs: list[subprocess.Popen[bytes]] = []
    read_fd, write_fd = os.pipe()
    procs.append(
        subprocess.Popen(
            [
                xvfb,
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                "800x300x24",
                "-noreset",
                "-nolisten",
                "tcp",
            ],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    os.close(write_fd)
    bus_pid = None
    try:
        with os.fdopen(read_fd) as pipe:
            display = f":{pipe.readline().strip()}"
        env = {**os.environ, "DISPLAY": display}
        address, bus_pid = launch_session_bus(dbus_launch, env, tmp_path)
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        # dunst shows an action menu through a dmenu-like command: this one records the
        # menu and picks Continue, as a user clicking it would.
        menu_log = tmp_path / "dunst-menu.txt"
        chooser = tmp_path / "choose-continue"
        chooser.write_text(f"#!/bin/sh\ntee {menu_log} | grep -m1 '^#Continue'\n")
        chooser.chmod(0o755)
        rc = tmp_path / "dunstrc"
        rc.write_text(
            f"[global]\n    dmenu = {chooser}\n    width = 520\n    offset = 20x20\n"
            "    font = DejaVu Sans 11\n"
        )
        monitor_log = tmp_path / "dbus-monitor.log"
        with monitor_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [monitor, "interface='org.freedesktop.Notifications'"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        dunst_log = tmp_path / "dunst.log"
        with dunst_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [dunst, "-config", str(rc), "-verbosity", "info"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 10
        while subprocess.run([dunstctl, "is-paused"], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline, "dunst did not come up on the session bus"
            time.sleep(0.1)
        yield Desktop(env, monitor_log, menu_log, dunst_log)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if bus_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(bus_pid, 15)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=USAGE) as server:
        yield server


def desktop_proxy(
    desktop: Desktop,
    upstream: FakeUpstream,
    home: Path,
    timeout: int,
    levels: tuple[float, float] = (0.02, 0.04),
) -> RunningProxy:
    """A proxy on the test's desktop, asking at the session's two `levels`."""
    home.mkdir()
    first, second = levels
    (home / "config.toml").write_text(CONFIG.format(timeout=timeout, first=first, second=second))
    env = {k: desktop.env[k] for k in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS")}
    return start_proxy(home, upstream.url, env=env)


def test_continue_clicked_in_the_notification_lets_the_held_request_through(
    desktop: Desktop, upstream: FakeUpstream, tmp_path: Path
) -> None:
    proxy = desktop_proxy(desktop, upstream, tmp_path / "home", timeout=60)
    try:
        c = client(proxy, "desk-runaway")
        ask(c)
        ask(c)  # $0.0234: past $0.02
        sent = len(upstream.find("anthropic.messages"))
        thread, outcome = in_thread(lambda: ask(c))
        open_asks(proxy)
        notify = desktop.wait_for_bus(
            r'member=Notify\s.*?string "devmeter"\s.*?string "devmeter: Continue spending\?"'
            r'\s+string "([^"]*)"\s+array \[(.*?)\]\s+array \[(.*?)\]\s+int32 (-?\d+)'
        )
        message, actions, hints, expire = notify.groups()
        assert "desk-runaway" in message and "$0.02" in message and "$0.04" in message
        assert re.findall(r'string "([^"]*)"', actions) == [
            "default", "", "continue", "Continue", "stop", "Stop this session"
        ]  # fmt: skip
        assert re.search(r'string "urgency"\s+variant\s+byte 2', hints)  # critical
        assert expire == "0"  # stays until dismissed
        # Written once the daemon answered the Notify just seen: wait for it (a loaded
        # machine answers late).
        deadline = time.monotonic() + 30
        while (status := read_status(proxy.home)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status is not None and status["ok"] and status["backend"] == "desktop-notifier"

        time.sleep(1)
        assert thread.is_alive() and len(upstream.find("anthropic.messages")) == sent
        if shot := os.environ.get("DEVMETER_ASK_SCREENSHOT"):
            subprocess.run(["import", "-window", "root", shot], env=desktop.env, check=True)

        # The user opens the popup's actions and picks Continue: dunst runs its menu
        # command (our chooser) and emits ActionInvoked itself.
        desktop.choose_continue()
        assert "#Continue" in desktop.menu_log.read_text()
        thread.join(60)  # ends at once when answered; a loaded machine is slow
        assert outcome == [None], outcome
        assert len(upstream.find("anthropic.messages")) == sent + 1
        answers = json.loads((proxy.home / "control.json").read_text())["answers"]
        assert [(a[0], a[1]) for a in answers] == [("session:desk-runaway:0.02", "continue")]
        # Answered, its popup goes: dunst 1.9 keeps a popup whose button was pressed, and
        # a critical one never times out, so it would go on asking.
        desktop.wait_for_bus(r"member=CloseNotification")
        desktop.wait_until_none_displayed()
    finally:
        proxy.stop()


@pytest.mark.parametrize("command", ["allow", "stop"])
def test_an_ask_answered_on_the_command_line_takes_its_popup_down(
    desktop: Desktop, upstream: FakeUpstream, tmp_path: Path, command: str
) -> None:
    proxy = desktop_proxy(desktop, upstream, tmp_path / "home", timeout=60)
    try:
        c = client(proxy, "desk-cli")
        ask(c)
        ask(c)  # past $0.02
        thread, outcome = in_thread(lambda: ask(c))
        open_asks(proxy)
        desktop.wait_for_bus(r'member=Notify\s.*?string "devmeter: Continue spending\?"')
        deadline = time.monotonic() + 20
        while not desktop.displayed():
            assert time.monotonic() < deadline, desktop.evidence()
            time.sleep(0.1)
        # The user answers in a terminal: the popup's own advice, `devmeter allow
        # desk-cli`, or the threshold alerts' `devmeter stop desk-cli`.
        allowed = subprocess.run(
            [sys.executable, "-m", "devmeter", command, "desk-cli"],
            env={**os.environ, "DEVMETER_HOME": str(proxy.home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert allowed.returncode == 0, allowed.stderr
        thread.join(15)
        if command == "allow":
            assert outcome == [None], outcome
        else:
            (refused,) = outcome
            assert isinstance(refused, anthropic.APIStatusError), outcome
            assert "`devmeter allow desk-cli`" in refused.body["error"]["message"]  # type: ignore[index]
        desktop.wait_for_bus(r"member=CloseNotification")
        desktop.wait_until_none_displayed()
        assert "ActionInvoked" not in desktop.bus()
    finally:
        proxy.stop()


def test_with_nobody_there_the_held_request_is_refused_after_the_timeout(
    desktop: Desktop, upstream: FakeUpstream, tmp_path: Path
) -> None:
    proxy = desktop_proxy(desktop, upstream, tmp_path / "home", timeout=3)
    try:
        c = client(proxy, "desk-unattended")
        ask(c)
        ask(c)
        started = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as caught:
            ask(c)
        assert 2.5 < time.monotonic() - started < 8
        message = caught.value.body["error"]["message"]  # type: ignore[index]
        assert message.startswith("devmeter: Session desk-una (anthropic-sdk-python in ")
        assert "passed $0.02" in message and "nobody answered" in message
        assert "`devmeter allow desk-una`" in message
        desktop.wait_for_bus(r'member=Notify\s.*?string "devmeter: Continue spending\?"')
        assert "ActionInvoked" not in desktop.bus()
    finally:
        proxy.stop()


# --- the real Claude Code CLI in a runaway -------------------------------------------------

# Every answer is a tool call, so Claude Code never ends its turn: ~$0.03 a call on Opus
# (3,000 input and 600 output tokens at $5 / $25 per million).
RUNAWAY_USAGE = {
    "input_tokens": 3000, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 600, "reasoning_tokens": 0,
}  # fmt: skip
RUNAWAY_LEVELS = (0.2, 0.4)  # the runaways below cost ~$0.03 a call


def test_a_claude_code_runaway_is_asked_continues_on_a_click_and_stops_unanswered(
    desktop: Desktop, tmp_path: Path
) -> None:
    from tests.clients_env import _kill_tree, claude_env, cli, git_repo

    claude = cli("claude")
    loop = {"name": "Bash", "input": {"command": "ls", "description": "List files"}}
    with FakeUpstream(usage=RUNAWAY_USAGE, tool_use=loop) as fake:
        proxy = desktop_proxy(desktop, fake, tmp_path / "home", 30, RUNAWAY_LEVELS)
        repo = git_repo(tmp_path / "acme-api", "runaway")
        run = subprocess.Popen(
            [sys.executable, "-m", "devmeter", "run", "--", str(claude), "-p",
             "list the files, again and again", "--output-format", "json"],
            cwd=repo, env=claude_env(proxy, tmp_path), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            asked = r'member=Notify\s.*?string "devmeter: Continue spending\?"\s+string "([^"]*)"'
            first = desktop.wait_for_bus(asked, timeout=60).group(1)
            assert "claude-code in acme-api" in first and "passed $0.20" in first
            held_at = len(fake.find("anthropic.messages"))
            desktop.choose_continue()
            # Continued: it runs on to the next level, where it is asked again, and this
            # time nobody answers.
            second = desktop.wait_for_bus(asked + r".*?" + asked, timeout=60).group(2)
            assert "passed $0.40" in second
            assert len(fake.find("anthropic.messages")) > held_at
            stdout, stderr = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                _kill_tree(run)  # type: ignore[arg-type]
            proxy.stop()
        assert run.returncode != 0
        assert "devmeter:" in stdout + stderr and "nobody answered" in stdout + stderr
        refused = proxy.rows("error LIKE 'devmeter:%'")
        assert len(refused) == 1, refused  # Claude Code showed it; no retry storm
        spent = sum(r["cost_usd"] for r in proxy.rows("status = 200"))
        assert Decimal("0.40") <= spent < Decimal("0.60"), spent


CODEX_RUNAWAY_USAGE = {
    "input_tokens": 20000, "cache_read_tokens": 0, "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0, "output_tokens": 500, "reasoning_tokens": 0,
}  # fmt: skip


def test_a_codex_runaway_on_its_websocket_is_asked_and_stops_unanswered(
    desktop: Desktop, tmp_path: Path
) -> None:
    """Codex keeps one WebSocket for the session: the ask holds a turn on it, Continue
    (clicked in dunst) lets it through, and with no answer the turn is refused."""
    from tests.clients_env import _kill_tree, cli, codex_env, git_repo

    codex = cli("codex")
    loop = {"name": "shell", "input": {"command": ["ls"]}}
    with FakeUpstream(usage=CODEX_RUNAWAY_USAGE, tool_use=loop, websocket=True) as fake:
        proxy = desktop_proxy(desktop, fake, tmp_path / "home", 30, RUNAWAY_LEVELS)
        repo = git_repo(tmp_path / "payments", "runaway")
        run = subprocess.Popen(
            [sys.executable, "-m", "devmeter", "run", "--", str(codex), "exec", "--json",
             "list the files, again and again"],
            cwd=repo, env=codex_env(proxy, tmp_path), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip

        def turns() -> int:
            return len([r for r in fake.find() if b"response.create" in r.body])

        try:
            asked = r'member=Notify\s.*?string "devmeter: Continue spending\?"\s+string "([^"]*)"'
            first = desktop.wait_for_bus(asked, timeout=90).group(1)
            assert "passed $0.20" in first and "in payments" in first
            held_at = turns()
            desktop.choose_continue()
            second = desktop.wait_for_bus(asked + r".*?" + asked, timeout=90).group(2)
            assert "passed $0.40" in second
            assert turns() > held_at  # Continue let it run on
            at_second = turns()
            stdout, stderr = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                _kill_tree(run)  # type: ignore[arg-type]
            proxy.stop()
        assert run.returncode != 0
        assert "devmeter:" in stdout + stderr, (stdout[-2000:], stderr[-2000:])
        # Asked twice, no more: Codex shows the refusal on its WebSocket as it is, without
        # retrying it (a retry would be refused at once, not held and asked again).
        assert len(re.findall(r'string "devmeter: Continue spending\?"', desktop.bus())) == 2
        assert len(proxy.rows("error LIKE 'devmeter:%'")) == 1
        assert turns() == at_second  # nothing after the unanswered ask reached the provider
        spent = sum(r["cost_usd"] or 0 for r in proxy.rows("error IS NULL"))
        assert Decimal("0.40") <= spent < Decimal("0.60"), spent
