"""OpenAI Chat Completions and Responses requests adapted to another OpenAI model
(routing's rewrite): reasoning effort, verbosity, max_tokens naming and sampling
parameters. In place; the caller copies the request first."""

from __future__ import annotations

from typing import Any

from devmeter.model_limits import ModelSpec
from devmeter.providers.rewrite_common import drop_keys, nearest_effort


def adapt_chat(
    body: dict[str, Any],
    headers: dict[str, str],
    spec: ModelSpec,
    provider: str,
    target: str,
    changes: list[str],
) -> None:
    if "reasoning_effort" in body:
        effort = body["reasoning_effort"]
        if not spec.effort:
            del body["reasoning_effort"]
            changes.append(f"reasoning_effort: dropped {effort!r} ({target} does not reason)")
        elif effort not in spec.effort:
            body["reasoning_effort"] = nearest_effort(effort, spec.effort)
            changes.append(f"reasoning_effort: {effort!r} -> {body['reasoning_effort']!r}")
    if "verbosity" in body and not spec.verbosity:
        changes.append(f"verbosity: dropped {body.pop('verbosity')!r} ({target} does not take it)")
    if spec.effort and "max_tokens" in body and "max_completion_tokens" not in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
        changes.append("max_tokens -> max_completion_tokens (reasoning models take only that)")
    if not spec.sampling:
        drop_keys(body, ("temperature", "top_p"), target, changes)


def adapt_responses(
    body: dict[str, Any],
    headers: dict[str, str],
    spec: ModelSpec,
    provider: str,
    target: str,
    changes: list[str],
) -> None:
    reasoning = body.get("reasoning")
    if reasoning is not None and not spec.effort:
        del body["reasoning"]
        changes.append(f"reasoning: dropped ({target} does not reason)")
        include = body.get("include")
        if isinstance(include, list) and "reasoning.encrypted_content" in include:
            include.remove("reasoning.encrypted_content")
            changes.append("include: dropped reasoning.encrypted_content")
            if not include:
                del body["include"]
    elif isinstance(reasoning, dict) and "effort" in reasoning:
        effort = reasoning["effort"]
        if effort not in spec.effort:
            reasoning["effort"] = nearest_effort(effort, spec.effort)
            changes.append(f"reasoning.effort: {effort!r} -> {reasoning['effort']!r}")
    text = body.get("text")
    if isinstance(text, dict) and "verbosity" in text and not spec.verbosity:
        changes.append(
            f"text.verbosity: dropped {text.pop('verbosity')!r} ({target} does not take it)"
        )
        if not text:
            del body["text"]
    if not spec.sampling:
        drop_keys(body, ("temperature", "top_p"), target, changes)
