"""Model routing: rules that send a request to a cheaper model, and what that saves.

One module per step. `rules` reads the `[routing]` table; the proxy builds a
`RouteContext` from a request and asks `decision.decide` what to do, calls
`rewrite.adapt_request` to rewrite the body and headers when the answer is "routed",
and asks `fallback.should_fallback` whether a failed rewritten request deserves one
retry with the original model. These four are pure. `session_router.Router` is the
stateful part the proxy holds: per-session spend and prompt-cache state around them.

    [routing]
    mode = "shadow"                      # off | shadow | on
    enable = ["claude-code-background-to-haiku"]

    [[routing.rules]]
    name = "opus-over-budget"
    provider = "anthropic"
    model = "claude-opus-*"
    session_spend_over_usd = 20
    to = "claude-sonnet-5-5"

Rules are tried in order (the file's rules, then the enabled built-ins in the
order `enable` names them); the first rule whose conditions all hold decides. A
matching rule still leaves the request alone when the rewrite would not be safe
(another provider or wire format, a prompt that would not fit, a max_tokens the
target cannot produce, unknown limits) or would not pay (a warm prompt cache worth
more than the saving); the decision then says why. In shadow mode nothing is
rewritten, but the decision names the model a rewrite would have used, so the
ledger can show what routing would save.
"""

from devmeter.routing.decision import (
    TTL_1H,
    TTL_5M,
    CacheChoice,
    CacheState,
    Pricer,
    RouteContext,
    RouteDecision,
    cache_aware_choice,
    decide,
    genai_price,
    next_cache_state,
    unsafe_reason,
)
from devmeter.routing.fallback import should_fallback
from devmeter.routing.rewrite import IncompatibleRequest, adapt_request
from devmeter.routing.rules import (
    BUILTIN_RULES,
    MODES,
    REQUEST_CLASSES,
    REWRITABLE_ENDPOINTS,
    Mode,
    RoutingConfig,
    Rule,
    parse_routing,
)

__all__ = [
    "BUILTIN_RULES",
    "MODES",
    "REQUEST_CLASSES",
    "REWRITABLE_ENDPOINTS",
    "TTL_1H",
    "TTL_5M",
    "CacheChoice",
    "CacheState",
    "IncompatibleRequest",
    "Mode",
    "Pricer",
    "RouteContext",
    "RouteDecision",
    "Rule",
    "RoutingConfig",
    "adapt_request",
    "cache_aware_choice",
    "decide",
    "genai_price",
    "next_cache_state",
    "parse_routing",
    "should_fallback",
    "unsafe_reason",
]
