"""Routing for the proxy: per-session state around the pure rule engine (rules, decision,
rewrite in this package).

The proxy asks `plan` before forwarding a request, sends `plan.body` when the plan
rewrites, and hands each finished call to `settle`, which prices the other side of
the trade (what the requested model would have cost, or what the target would have)
and remembers the session's spend and prompt-cache state for the next decision.
Sessions are the guard's (`session_table.session_key`: the session id, or tool@repo
without one), kept in the session table the budgets and runaway detection share: its
entries hold each session's spend (counted by the guard, seeded from the ledger after a
restart, so spend rules survive one) and routing's own part (cache state, output sizes).
No mitmproxy here: bytes and headers in, a plan out.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from devmeter import fastjson, routing
from devmeter.pricing import PriceOverride, price
from devmeter.providers import Endpoint, request_uses_images
from devmeter.session_table import ROUTING_PART, SessionTable, session_key
from devmeter.tokens import PromptSize
from devmeter.usage import Attribution, Call, RequestInfo, Usage

REWRITABLE = routing.REWRITABLE_ENDPOINTS  # one list: what decide may rewrite
REQUEST_CLASS_HEADER = "x-claude-code-request-class"


@dataclass(frozen=True)
class RoutePlan:
    decision: routing.RouteDecision
    requested_model: str
    body: bytes | None = None  # the rewritten body to send, when routed
    headers: Mapping[str, str] = field(default_factory=dict)  # headers to set
    removed_headers: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()

    @property
    def rewrite(self) -> bool:
        return self.body is not None


@dataclass
class _Session:
    """What the rules may ask about a session's calls so far (its spend is the table's)."""

    caches: dict[str, routing.CacheState] = field(default_factory=dict)  # by model
    calls: int = 0  # calls that produced output, and their output tokens
    outputs: int = 0


class Router:
    def __init__(
        self,
        config: routing.RoutingConfig,
        overrides: tuple[PriceOverride, ...] = (),
        max_sessions: int = 4096,
        sessions: SessionTable | None = None,
    ) -> None:
        """`sessions`: the table shared with the guard, which then counts each session's
        spend (`Guard.observe`); None: a table of its own, and the router counts it."""
        self.config = config
        self.configured_mode = config.mode
        self._overrides = overrides
        self._lock = threading.Lock()
        # A proxy that runs for months meets sessions without end: the table holds at most
        # `max_sessions`, and one forgotten starts afresh if it returns.
        self._counts_spend = sessions is None
        self._sessions = (
            sessions if sessions is not None else SessionTable(max_sessions=max_sessions)
        )
        # Sessions whose user chose "Switch to a cheaper model" when devmeter asked before
        # spending more (devmeter/ask.py): routed as in mode "on", whatever the mode.
        self._switched: set[str] = set()

    def switch(self, session: str) -> None:
        """Route this session's requests from now on, as if the mode were "on"."""
        with self._lock:
            self._switched.add(session)

    def switch_target(
        self,
        endpoint: Endpoint,
        info: RequestInfo,
        attribution: Attribution,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        doc: Any = None,
    ) -> str | None:
        """The model a rule would route this request to if routing were on, else None:
        what an ask's Switch button offers."""
        plan = self.plan(endpoint, info, attribution, headers, body, now, doc, force_on=True)
        return plan.decision.target if plan is not None and plan.rewrite else None

    @property
    def mode(self) -> str:
        return self.config.mode

    def set_mode(self, mode: str) -> None:
        if mode not in routing.MODES:
            raise ValueError(f"routing mode must be one of {', '.join(routing.MODES)}")
        self.config = replace(self.config, mode=mode)  # type: ignore[arg-type]

    def reconfigure(
        self, config: routing.RoutingConfig, overrides: tuple[PriceOverride, ...]
    ) -> None:
        """A reloaded config's rules and prices. A mode set with `devmeter routing` stays
        set; sessions' spend and cache state are kept."""
        with self._lock:
            chosen = self.config.mode if self.config.mode != self.configured_mode else None
            self.configured_mode = config.mode
            self.config = replace(config, mode=chosen or config.mode)
            self._overrides = overrides

    def price(self, provider: str, model: str, usage: Usage) -> Decimal | None:
        return price(provider, model, usage, self._overrides).cost_usd

    def plan(
        self,
        endpoint: Endpoint,
        info: RequestInfo,
        attribution: Attribution,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        doc: Any = None,
        force_on: bool = False,
        prompt: PromptSize | None = None,
    ) -> RoutePlan | None:
        """What routing does with this request; None when no rule has anything to say.

        `doc` is the body already parsed, when the caller has it. `force_on`: as if the
        mode were "on" (a switched session always is). `prompt`: the prompt's size, when
        the caller sizes it (a `PromptSize` of `doc` that may raise `TokenizerNeeded`, so
        the proxy can run the tokenizer off its event loop and ask again)."""
        config = self.config
        if config.mode != "on" and (force_on or attribution.session in self._switched):
            config = replace(config, mode="on")
        if config.mode == "off" or endpoint.api not in REWRITABLE or not info.model:
            return None
        if not self.config.rules:
            return None  # what `decide` says without rules; skip building its context
        if "request_error" in info.facts:
            return None
        session = session_key(attribution)
        with self._lock:
            seen = self._sessions.part(session, ROUTING_PART) or _Session()
            spend, caches = self._sessions.spent(session), dict(seen.caches)
            calls, outputs = seen.calls, seen.outputs
        facts = info.facts
        if doc is None:
            doc = _parsed(body)
        if prompt is None and isinstance(doc, dict):
            prompt = PromptSize(doc)
        ctx = routing.RouteContext(
            provider=endpoint.provider,
            endpoint=endpoint.api,
            requested_model=info.model,
            tool=attribution.tool,
            request_class=_header(headers, REQUEST_CLASS_HEADER) or facts.get("request_kind"),
            repo=attribution.repo,
            # Sized from the parsed body, as far as a rule asks: not parsed again.
            prompt_tokens=info.prompt_tokens() if prompt is None else None,
            prompt_size=prompt,
            max_tokens=int(facts["max_tokens"]) if "max_tokens" in facts else None,
            uses_tools=facts.get("uses_tools") == "1",
            # A walk over every block of the conversation: only when a rule asks.
            uses_images=any(r.uses_images is not None for r in config.rules)
            and request_uses_images(endpoint, info, doc),
            uses_thinking=facts.get("uses_thinking") == "1",
            session_spend_usd=spend,
            cache_states=caches,
            now=now,
            expected_output_tokens=outputs // calls if calls else 0,
        )
        decision = routing.decide(config, ctx, self.price)
        if decision.rule is None:
            return None
        if not decision.rewrite or decision.target is None:
            return RoutePlan(decision, info.model)
        try:
            parsed: Any = fastjson.loads(body)  # a copy to rewrite: `doc` is the client's
            new_body, new_headers, changes = routing.adapt_request(
                parsed, dict(headers), endpoint.api, decision.target, provider=endpoint.provider
            )
        except (ValueError, routing.IncompatibleRequest) as exc:
            refused = replace(decision, applied=None, target=None, reason=f"not rewritten: {exc}")
            return RoutePlan(refused, info.model)
        lowered = {k.lower(): v for k, v in new_headers.items()}
        removed = tuple(k for k in headers if k.lower() not in lowered)
        changed = {k: v for k, v in new_headers.items() if headers.get(k) != v}
        return RoutePlan(
            decision,
            info.model,
            body=json.dumps(new_body, separators=(",", ":")).encode(),
            headers=changed,
            removed_headers=removed,
            changes=tuple(changes),
        )

    def settle(self, call: Call, plan: RoutePlan | None, fell_back: bool = False) -> Call:
        """The call with its routing columns filled in; and remember it for the session."""
        if plan is not None:
            call = self._annotate(call, plan, fell_back)
        # Only rules read what it remembers. Rules added by a config reload see each
        # session's calls from then on.
        if self.config.rules:
            self._observe(call)
        return call

    def seed(self, spend_by_session: Mapping[str, Decimal], now: float | None = None) -> None:
        """Start from the ledger's spend per session key (after a restart), so a
        `session_spend_over_usd` rule does not forget what a session already spent. A
        shared table is seeded by the guard (`Guard.seed_from_ledger`) instead."""
        self._sessions.seed_spend(spend_by_session, time.time() if now is None else now)

    def _annotate(self, call: Call, plan: RoutePlan, fell_back: bool) -> Call:
        decision = plan.decision
        note = _note(plan)
        if fell_back:
            return replace(
                call,
                routing="fallback",
                route_rule=decision.rule,
                route_target=decision.target,
                route_note=f"{decision.target} refused the rewritten request; "
                f"re-sent as {plan.requested_model}",
            )
        if decision.applied == "routed" and plan.rewrite:
            alt = self.price(call.provider, plan.requested_model, call.usage)
            return replace(
                call,
                requested_model=plan.requested_model,
                routing="routed",
                route_rule=decision.rule,
                route_target=decision.target,
                alt_cost_usd=alt,
                route_note=note,
            )
        if decision.applied == "shadow" and decision.target:
            alt = self.price(call.provider, decision.target, call.usage)
            return replace(
                call,
                routing="shadow",
                route_rule=decision.rule,
                route_target=decision.target,
                alt_cost_usd=alt,
                route_note=note,
            )
        return replace(call, route_rule=decision.rule, route_note=note)

    def _observe(self, call: Call) -> None:
        key = session_key(call.attribution)
        with self._lock:
            seen = self._sessions.own(key, ROUTING_PART, _Session, call.ts)
            if self._counts_spend and call.cost_usd is not None:
                self._sessions.add_spend(key, call.cost_usd, call.ts)
            if call.model:
                state = routing.next_cache_state(seen.caches.get(call.model), call.usage, call.ts)
                if state is not None:
                    seen.caches[call.model] = state
            if call.usage.output_tokens:
                seen.calls += 1
                seen.outputs += call.usage.output_tokens


def _note(plan: RoutePlan) -> str | None:
    decision = plan.decision
    parts = []
    if decision.reason:
        parts.append(decision.reason)
    if plan.changes:
        parts.append("; ".join(plan.changes))
    if decision.cache is not None:
        c = decision.cache
        parts.append(
            f"cache trade: saving ${c.saving_usd:.6f} vs cache loss ${c.cache_loss_usd:.6f}"
        )
    return " | ".join(parts) or None


def _parsed(body: bytes) -> Any:
    try:
        return fastjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
