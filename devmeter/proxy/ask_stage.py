"""The ask stage (devmeter/ask.py): a request past a scope's `ask_usd` is held, without
blocking other flows, until the user answers Continue, Stop or Switch (control.json),
or the ask times out; then it is sent, or refused in the provider's error shape.

Fails open: an ask that fails lets the call through, and the row says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import http

from devmeter.alerts import Alert, Block
from devmeter.ask import Ask, AskBook
from devmeter.control import Control
from devmeter.proxy.flow_state import FlowState, short_traceback
from devmeter.proxy.refusal import refuse

log = logging.getLogger(__name__)

# How often a request held by an ask looks for the answer (control.json is re-read at most
# twice a second anyway).
ASK_POLL_SECONDS = 0.25

# The block a cap or a pause puts on the call meanwhile (the guard stage's `check`).
CheckCaps = Callable[[FlowState, float], Block | None]


class AskStage:
    def __init__(
        self,
        asks: AskBook | None,
        clock: Callable[[], float],
        on_alert: Callable[[Alert], None] | None,
        on_asks_changed: Callable[[list[dict[str, Any]]], None] | None,
    ) -> None:
        self.asks = asks
        self._clock = clock
        self._on_alert = on_alert
        self._on_asks_changed = on_asks_changed
        self._asks_shown = 0  # the AskBook version last handed to on_asks_changed

    def request(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        now: float,
        switch: Callable[[], str | None] | None = None,
    ) -> Ask | None:
        """The ask this request must wait for, or None to send it now (or refused)."""
        if self.asks is None or state.blocked is not None:
            return None
        try:
            verdict = self.verdict(state, now, switch)
        except Exception:
            state.tap_error = f"devmeter ask failed (call let through): {short_traceback()}"
            return None
        if isinstance(verdict, Block):
            refuse(flow, state, verdict)
            return None
        return verdict

    def verdict(
        self, state: FlowState, now: float, switch: Callable[[], str | None] | None = None
    ) -> Ask | Block | None:
        """The AskBook's answer for this request; a new ask's alert goes out here, once,
        offering Switch when `switch` names a cheaper model a rule would route it to."""
        if self.asks is None:
            return None
        verdict = self.asks.check(state.attribution, now)
        if verdict is None or isinstance(verdict, Block):
            return verdict
        ask, new = verdict
        if new and switch is not None:
            try:
                ask = self.asks.offer_switch(ask, switch())
            except Exception:  # routing's problem: ask without the offer
                log.warning("devmeter: no switch offered: %s", short_traceback())
        if new and self._on_alert is not None:
            self._on_alert(ask.alert(self.asks.advice))
        self.publish()
        return ask

    async def hold(
        self,
        ask: Ask,
        flow: http.HTTPFlow,
        state: FlowState,
        apply_control: Callable[[], None],
        check_caps: CheckCaps,
        then: Callable[[float], Coroutine[None, None, None] | None],
    ) -> None:
        """Wait for the answer without blocking other flows, then refuse the request or
        go on with it (`then`: the stages after this one)."""
        try:
            block = await self.answer_to(ask, state, apply_control, check_caps)
            if block is not None:
                refuse(flow, state, block)
                return
            going_on = then(self._clock())
            if going_on is not None:  # routing tokenizes the prompt off the event loop
                await going_on
        except Exception:
            state.tap_error = f"devmeter ask failed (call let through): {short_traceback()}"
        finally:
            self.publish()

    async def answer_to(
        self,
        ask: Ask,
        state: FlowState,
        apply_control: Callable[[], None],
        check_caps: CheckCaps,
    ) -> Block | None:
        """Poll control.json until `ask` is answered: None to go on, or the Block to refuse
        with (Stop; no answer by the deadline; a stop, cap or pause meanwhile). Continue
        can lead straight to another scope's ask, which is waited for in turn."""
        current: Ask | None = ask
        while current is not None:
            await asyncio.sleep(ASK_POLL_SECONDS)
            apply_control()
            now = self._clock()
            block = check_caps(state, now)
            if block is not None:
                return block
            if not self._answered(current) and now < current.deadline:
                continue
            if not self._answered(current) and self.asks is not None:
                self.asks.expire(current)
            verdict = self.verdict(state, now)
            if isinstance(verdict, Block):
                return verdict
            current = verdict
        return None

    def apply(self, control: Control) -> list[str]:
        """The user's answers in control.json; the sessions they switched to a cheaper model."""
        if self.asks is None:
            return []
        self.asks.apply(control)
        self.publish()
        return self.asks.take_switched()

    def _answered(self, ask: Ask) -> bool:
        return self.asks is None or self.asks.answered(ask)

    def publish(self) -> None:
        """Hand the open asks to the tray (on_asks_changed), when they changed."""
        book = self.asks
        if book is None or self._on_asks_changed is None or book.version == self._asks_shown:
            return
        self._asks_shown = book.version
        try:
            self._on_asks_changed(book.pending())
        except Exception:
            log.warning("devmeter: could not publish open asks: %s", short_traceback())
