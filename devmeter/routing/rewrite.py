"""Request rewriting: a request's body and headers adapted to the model a rule routes it to.

Sets the model, then hands the body to its wire format's rewrite adapter
(`providers.registry.WireFormat.rewrite`), which drops or adapts what the target model
does not take (thinking, effort levels, beta headers, sampling parameters), from the
target's spec in model_limits. Pure: inputs are not modified.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from devmeter import model_limits
from devmeter.providers.registry import wire_format
from devmeter.providers.rewrite_common import IncompatibleRequest

__all__ = ["IncompatibleRequest", "adapt_request"]


def adapt_request(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    endpoint: str,
    target_model: str,
    *,
    provider: str | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """`body` and `headers` rewritten for `target_model`, and each change as ledger text.

    Sets the model, then drops or adapts what the target does not take: thinking
    it lacks, effort levels, beta headers naming features it lacks, sampling
    parameters it rejects. Inputs are not modified. Raises IncompatibleRequest when
    the request needs something the target refuses (send it unchanged then). A
    target model_limits has no spec for only gets its model set; `decide` never
    routes to one.
    """
    new_body: dict[str, Any] = copy.deepcopy(dict(body))
    new_headers = dict(headers)
    changes: list[str] = []
    old = new_body.get("model")
    if old != target_model:
        new_body["model"] = target_model
        changes.append(f"model: {old} -> {target_model}")
    provider = provider or ("anthropic" if endpoint.startswith("anthropic.") else "openai")
    spec = model_limits.model_spec(provider, target_model)
    if spec is None:
        return new_body, new_headers, changes
    wire = wire_format(endpoint)
    if wire is not None and wire.rewrite is not None:
        wire.rewrite(new_body, new_headers, spec, provider, target_model, changes)
    return new_body, new_headers, changes
