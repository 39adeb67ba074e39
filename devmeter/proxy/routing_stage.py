"""The routing stage: a call's request rewritten to the model a rule picks (routing/),
and, when the provider refuses the rewrite where it would have taken the original, the
original sent once more (the fallback) and its answer given to the client instead.

Fails open: a routing bug sends the request as the client asked, and the row says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from mitmproxy import http

from devmeter.providers.lazy_doc import LazyDoc, plain
from devmeter.proxy import streaming
from devmeter.proxy.flow_state import FlowState, short_traceback
from devmeter.routing.fallback import should_fallback
from devmeter.routing.session_router import RoutePlan, Router
from devmeter.tokens import PromptSize, TokenizerNeeded
from devmeter.usage import Call

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RouteState:
    """A routed call: its plan, the request as the client sent it (while a fallback may
    still need it), and whether the fallback's answer is the one the client got."""

    plan: RoutePlan | None
    original: tuple[bytes, list[tuple[str, str]]] | None = None
    fell_back: bool = False


class RoutingStage:
    def __init__(self, router: Router | None) -> None:
        self.router = router

    def request(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        headers: Mapping[str, str],
        body: bytes,
        doc: dict[str, Any] | LazyDoc | None,
        now: float,
        prompt: PromptSize | None = None,
    ) -> Coroutine[None, None, None] | None:
        """Route the call (a parsed HTTP request only: a WebSocket's turns are not); a
        coroutine instead when a rule needs the prompt tokenized: tiktoken over a long
        conversation takes tens of milliseconds, which run on a worker thread (tiktoken
        lets go of the GIL) while the event loop serves other flows."""
        if self.router is not None and flow.websocket is None and doc is not None:
            if self.router.config.rules:
                doc = plain(doc)  # rules may read all of the conversation, rewrites copy it
            prompt = prompt or PromptSize(doc, tokenize=False)
            try:
                self._route(flow, state, headers, body, doc, now, prompt)
            except TokenizerNeeded:
                return self._route_once_sized(flow, state, headers, body, doc, now, prompt)
            except Exception:
                state.tap_error = (
                    f"devmeter routing failed (call sent as asked): {short_traceback()}"
                )
        return None

    async def _route_once_sized(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        headers: Mapping[str, str],
        body: bytes,
        doc: dict[str, Any],
        now: float,
        prompt: PromptSize,
    ) -> None:
        prompt.tokenize = True
        try:
            await asyncio.to_thread(prompt.exact)
        except Exception:
            state.tap_error = f"devmeter routing failed (call sent as asked): {short_traceback()}"
            return
        self.request(flow, state, headers, body, doc, now, prompt)

    def _route(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        headers: Mapping[str, str],
        body: bytes,
        doc: dict[str, Any] | None,
        now: float,
        prompt: PromptSize | None = None,
    ) -> None:
        router = self.router
        assert router is not None
        plan = router.plan(
            state.endpoint, state.request, state.attribution, headers, body, now, doc,
            prompt=prompt,
        )  # fmt: skip
        state.route = route = RouteState(plan)
        if plan is None or not plan.rewrite or plan.body is None:
            return
        original_headers = flow.request.headers.copy()
        try:
            flow.request.content = plan.body  # re-encoded if the client compressed it
            for name in plan.removed_headers:
                flow.request.headers.pop(name, None)
            for name, value in plan.headers.items():
                flow.request.headers[name] = value
        except Exception:
            # Put the request back exactly as the client sent it, then report.
            flow.request.headers = original_headers
            flow.request.content = body
            state.route = None
            raise
        route.original = (body, list(original_headers.items()))

    def switch_target(
        self,
        state: FlowState,
        headers: Mapping[str, str],
        body: bytes,
        doc: dict[str, Any] | LazyDoc | None,
        now: float,
    ) -> str | None:
        """The cheaper model a rule would route this call to (an ask's Switch button)."""
        if self.router is None:
            return None
        return self.router.switch_target(
            state.endpoint, state.request, state.attribution, headers, body, now, plain(doc)
        )

    def responseheaders(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """True to hold the answer whole: a refused rewrite whose (small) error body a
        fallback must read."""
        route = state.route
        assert flow.response is not None
        if route is None or route.original is None or not 400 <= flow.response.status_code < 500:
            return False
        if not streaming.fallback_body_too_large(flow.response):
            return True
        route.original = None  # too large to hold: the client gets it as it is
        return False

    def forget_original(self, state: FlowState) -> None:
        """Nothing to fall back from (devmeter answered in the provider's place)."""
        if state.route is not None:
            state.route.original = None

    def may_fall_back(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        return (
            state.route is not None
            and state.route.original is not None
            and (flow.response is not None)
        )

    async def response(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """The fallback, if the answer calls for one; a failure keeps the first answer."""
        try:
            await self._maybe_fall_back(flow, state)
        except Exception:
            log.warning("devmeter: routing fallback failed: %s", short_traceback())

    async def _maybe_fall_back(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """The rewritten request was refused where the original would not have been:
        send the original once, and give the client that answer instead."""
        route = state.route
        assert flow.response is not None and route is not None and route.original is not None
        status = flow.response.status_code
        if not 400 <= status < 500 or flow.response.stream:
            return  # not refused, or already passed on to the client
        if not should_fallback(status, streaming.fallback_error_text(flow.response)):
            return
        body, headers = route.original
        skip = {"content-length", "content-encoding", "host", "transfer-encoding", "connection"}
        async with httpx2.AsyncClient(timeout=600) as client:
            request = client.build_request(
                flow.request.method,
                flow.request.url,
                headers=[(k, v) for k, v in headers if k.lower() not in skip],
                content=body,
            )
            answer = await client.send(request, stream=True)
            try:
                # Held whole (the client gets it in one piece), so within a bound.
                raw, error = await streaming.read_capped(answer.aiter_raw())
            finally:
                await answer.aclose()
        fallback = http.Response.make(
            answer.status_code,
            b"",
            [
                (k.encode(), v.encode())
                for k, v in answer.headers.multi_items()
                if k.lower() not in ("content-length", "transfer-encoding")
            ],
        )
        # The bytes as the provider sent them: setting `content` would compress them
        # again per their content-encoding, and the client would get them twice encoded.
        fallback.raw_content = raw
        fallback.headers["content-length"] = str(len(raw))
        error = error or streaming.oversized_headers_error(fallback)
        if error is not None:  # the client gets the refusal instead; the row says why
            state.tap_error = f"routing fallback abandoned: {error}"
            return
        flow.response = fallback
        route.fell_back = True

    def settle(self, call: Call, state: FlowState) -> Call:
        """The row's routing columns (and the router's per-session bookkeeping)."""
        if self.router is None:
            return call
        route = state.route
        plan, fell_back = (route.plan, route.fell_back) if route is not None else (None, False)
        return self.router.settle(call, plan, fell_back)
