"""WebSocket turns: Codex CLI keeps one Responses WebSocket for a session and sends each
turn (response.create) on it; OpenAI Realtime streams events both ways. The handshake is
let through (a refused one makes Codex reconnect); each turn is checked instead, by the
secret scan, the guard and the asks, refused on the socket itself in the API's error
shape, and recorded as its response completes, in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from decimal import Decimal

from mitmproxy import ctx, http, websocket

from devmeter import metering
from devmeter.alerts import Block
from devmeter.ask import Ask
from devmeter.attribution import Attribution, lower_headers
from devmeter.providers import new_response_parser, parse_request_doc
from devmeter.providers.refusal import refusal
from devmeter.proxy import streaming
from devmeter.proxy.ask_stage import AskStage
from devmeter.proxy.billing_reading import scan_ws_message
from devmeter.proxy.flow_state import Attribute, FlowState, short_traceback, state_of
from devmeter.proxy.guard_stage import GuardStage, Signals
from devmeter.proxy.recorder import Recorder
from devmeter.proxy.secrets_stage import SecretsStage
from devmeter.usage import RequestInfo, ResponseResult, Usage


@dataclass(slots=True)
class Turn:
    """One response.create let through: its request, with its own loop fingerprint and
    human turn (the handshake's are empty: it has no body), who sent it, and when (the
    row's time, as an HTTP call's is its request's)."""

    request: RequestInfo
    signals: Signals
    attribution: Attribution
    sent: float


@dataclass(slots=True)
class SocketTurns:
    """The turns under way on one socket, oldest first."""

    requests: list[Turn] = field(default_factory=list)
    # ... and what each reserved against its caps (burst caps), in the same order.
    reservations: list[int | None] = field(default_factory=list)
    refused: bool = False  # a Realtime socket's frames were refused (and said so once)


class WebSocketTurns:
    def __init__(
        self,
        clock: Callable[[], float],
        attribute: Attribute,
        secrets: SecretsStage,
        guards: GuardStage,
        ask: AskStage,
        recorder: Recorder,
        apply_control: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._attribute = attribute
        self._secrets = secrets
        self._guards = guards
        self._ask = ask
        self._recorder = recorder
        self._apply_control = apply_control

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        try:
            state.parser = new_response_parser(state.endpoint, state.request, "websocket")
        except Exception:
            state.tap_error = short_traceback()

    def websocket_message(self, flow: http.HTTPFlow) -> Coroutine[None, None, None] | None:
        # Sync, returning a coroutine only for a turn held by an ask: mitmproxy awaits it
        # before it forwards (or drops) the message.
        state = state_of(flow)
        if flow.websocket is None:
            return None
        if state is None or state.parser is None:
            streaming.drop_frames(flow.websocket.messages)  # nothing reads them
            return None
        try:
            message = flow.websocket.messages[-1]
            if message.injected:
                return None  # devmeter's own refusal, already recorded
            if message.from_client:
                request, doc = parse_request_doc(state.endpoint, message.content)
                signals = self._guards.turn_signals(flow, state, doc)
                now = self._clock()
                self._attribute_turn(flow, state, now)
                secret = self._secrets.websocket_message(state, message, now, doc)
                if secret is not None:
                    self._refuse_message(flow, state, message, request, secret, now)
                    return None
                if self._refuse_turn(flow, state, message, request):
                    return None
                held = self._ask_first(flow, state, message, request)
                if held is not None:
                    return self._hold_turn(held, flow, state, message, request, signals)
                if state.endpoint.api != "openai.realtime":  # events, not one per response
                    _turns(state).requests.append(Turn(request, signals, state.attribution, now))
            else:
                state.parser.feed_message(message.content)
                scan_ws_message(state, message.content, self._clock())
                for result in state.parser.take_completed():
                    self._record_turn(flow, state, result)
            # The socket can live for a whole Codex session: do not keep every frame.
            del flow.websocket.messages[:-1]
        except Exception:
            self._recorder.internal_error(flow, state.host, "websocket")
        return None

    def _attribute_turn(self, flow: http.HTTPFlow, state: FlowState, now: float) -> None:
        """Who sends this turn, asked again: Codex keeps its socket for the whole session,
        so the handshake's answer would keep a branch the developer has since left, the
        process session's idle restarts, and a first repo lookup that was too slow to wait
        for. (The Attributor remembers the connection's answer while nothing it read
        changed, so a turn costs a few microseconds.) Not a Realtime socket's frames: they
        are not turns, and its responses keep the handshake's answer."""
        if state.endpoint.api == "openai.realtime":
            return
        state.attribution = self._attribute(
            flow, state.request, lower_headers(flow.request.headers), state.host, now
        )

    def _ask_first(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        message: websocket.WebSocketMessage,
        request: RequestInfo,
    ) -> Ask | None:
        """Codex keeps one socket for a session: a turn past an ask level waits too. (Not a
        Realtime socket's frames, dozens a second: they are not one per response.)"""
        if state.endpoint.api == "openai.realtime":
            return None
        try:
            verdict = self._ask.verdict(state, self._clock())
        except Exception:
            state.tap_error = f"devmeter ask failed (call let through): {short_traceback()}"
            return None
        if isinstance(verdict, Block):
            self._unreserve_last_turn(state)
            self._refuse_message(flow, state, message, request, verdict, self._clock())
            return None
        return verdict

    def _unreserve_last_turn(self, state: FlowState) -> None:
        """The guard let the turn through and reserved for it; the ask refused it."""
        turns = _turns(state)
        if turns.reservations:
            self._guards.settle_reservation(turns.reservations.pop())

    async def _hold_turn(
        self,
        ask: Ask,
        flow: http.HTTPFlow,
        state: FlowState,
        message: websocket.WebSocketMessage,
        request: RequestInfo,
        signals: Signals,
    ) -> None:
        try:
            block = await self._ask.answer_to(ask, state, self._apply_control, self._guards.block)
            if block is not None:
                self._unreserve_last_turn(state)
                self._refuse_message(flow, state, message, request, block, self._clock())
            elif state.endpoint.api != "openai.realtime":  # events, not one per response
                sent = self._clock()  # when the ask let it go
                _turns(state).requests.append(Turn(request, signals, state.attribution, sent))
            if flow.websocket is not None:
                del flow.websocket.messages[:-1]
        except Exception:
            self._recorder.internal_error(flow, state.host, "websocket")
        finally:
            self._ask.publish()

    def _refuse_turn(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        message: websocket.WebSocketMessage,
        request: RequestInfo,
    ) -> bool:
        """A cap reached, or a pause, while Codex keeps its socket open: refuse the next turn
        on the socket itself (the handshake is let through). A turn let through reserves
        its estimated cost until it is recorded, as an HTTP call does."""
        if self._guards.guard is None:
            return False
        self._apply_control()
        now = self._clock()
        prewarm = request.facts.get("prewarm") == "1"  # generates nothing
        # A Realtime socket's events are not one per response (audio streams in dozens of
        # frames a second): they reserve nothing; each response.done is recorded as it is.
        realtime = state.endpoint.api == "openai.realtime"
        reserve = (
            Decimal(0)
            if prewarm or realtime
            else self._guards.estimate(state.endpoint.provider, request, len(message.content), now)
        )
        verdict = self._guards.check(state, now, reserve)
        block = verdict.block
        if block is None:
            if not realtime:
                _turns(state).reservations.append(verdict.reservation)
            return False
        self._refuse_message(flow, state, message, request, block, now)
        return True

    def _refuse_message(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        message: websocket.WebSocketMessage,
        request: RequestInfo,
        block: Block,
        now: float,
    ) -> None:
        """Drop the client's turn and answer it on the socket, in the API's error shape."""
        message.drop()
        realtime = state.endpoint.api == "openai.realtime"
        if realtime:
            # Refuse each frame, but answer and record once per socket and per response
            # the client asks for.
            asks = b"response.create" in (message.content or b"")
            if _turns(state).refused and not asks:
                return
            _turns(state).refused = True
        event = refusal(state.endpoint.api, state.attribution.tool, block.message).websocket_event
        ctx.master.commands.call("inject.websocket", flow, True, json.dumps(event).encode())
        status = event.get("status")
        if realtime:
            request = state.request  # its events name no model; the socket's URL does
        refused = metering.build_call(
            ts=now,
            host=state.host,
            endpoint=state.endpoint,
            request=request,
            result=ResponseResult(usage=None),
            status=status if isinstance(status, int) else 403,
            attribution=state.attribution,
            error=block.message,
        )
        self._recorder.record(replace(refused, **block.ledger_fields()))

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.parser is None or state.done:
            return
        state.done = True
        try:
            # Responses still in flight when the socket closed generated tokens too.
            for result in state.parser.take_unfinished():
                self._record_turn(flow, state, result)
            self._settle_turns(state, len(_turns(state).reservations))  # never answered
        except Exception:
            self._recorder.internal_error(flow, state.host, "websocket")

    def _record_turn(self, flow: http.HTTPFlow, state: FlowState, result: ResponseResult) -> None:
        turns = _turns(state)
        now = self._clock()
        turn = (
            turns.requests.pop(0)
            if turns.requests
            else Turn(state.request, self._guards.signals(state), state.attribution, now)
        )
        state.attribution = turn.attribution  # the row is its turn's, even with a later one sent
        if not turn.attribution.settled:  # a repo lookup had not answered: asked again
            self._attribute_turn(flow, state, turn.sent)
        self._settle_turns(state, 1)
        if turn.request.facts.get("prewarm") == "1" and not (
            result.usage and any(_counts(result.usage))
        ):
            return  # Codex's prewarm (generate: false) that reported no usage: nothing billed
        call = self._recorder.priced_call(
            state, result, 101, ts=turn.sent, request=turn.request,
            duration_ms=int((now - turn.sent) * 1000), error=state.tap_error,
        )  # fmt: skip
        self._recorder.record_settled(state, call, turn.signals)

    def _settle_turns(self, state: FlowState, count: int) -> None:
        """Hand back what the socket's oldest `count` turns reserved (they were answered)."""
        turns = _turns(state)
        taken, turns.reservations = turns.reservations[:count], turns.reservations[count:]
        for reservation in taken:
            self._guards.settle_reservation(reservation)


def _turns(state: FlowState) -> SocketTurns:
    if state.turns is None:
        state.turns = SocketTurns()
    return state.turns


def _counts(usage: Usage) -> tuple[int, ...]:
    return (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
            usage.output_tokens)  # fmt: skip
