"""Diagnostics are log records, written to stderr as the one line users have always
seen, and a broken stderr never raises into the code that logged."""

from __future__ import annotations

import errno
import logging
import sys

import pytest

from devmeter.diagnostics import StderrLineHandler, log_to_stderr


class FullDisk:
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_record_is_the_same_one_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    log_to_stderr()
    log_to_stderr()  # every entry point calls it: still one handler
    handlers = logging.getLogger("devmeter").handlers
    assert sum(isinstance(h, StderrLineHandler) for h in handlers) == 1
    logging.getLogger("devmeter.push").warning("devmeter: %s refused the alert", "slack")
    logging.getLogger("devmeter.config_reload").info("devmeter: config reloaded from x")
    assert capsys.readouterr().err.splitlines() == [
        "devmeter: slack refused the alert",
        "devmeter: config reloaded from x",
    ]


def test_a_full_or_missing_stderr_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    log_to_stderr()
    log = logging.getLogger("devmeter.proxy.streaming")
    monkeypatch.setattr(sys, "stderr", FullDisk())
    log.warning("devmeter: could not read the request")
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a detached process
    log.error("devmeter: %s", "cannot listen")
    # A format mistake in a log call is swallowed by the handler too.
    bad = logging.LogRecord("devmeter.x", logging.WARNING, __file__, 1, "%d", ("x",), None)
    StderrLineHandler().handle(bad)
