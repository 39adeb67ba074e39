"""Anthropic Messages requests adapted to another Claude model (routing's rewrite): beta
headers naming features the target lacks, thinking, effort, context editing, fast mode
and sampling parameters. In place; the caller copies the request first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devmeter import model_limits
from devmeter.model_limits import ModelSpec
from devmeter.providers.rewrite_common import IncompatibleRequest, drop_keys, nearest_effort

# Beta header prefixes that turn on a model feature, and whether the target has it.
_BETA_FEATURES: tuple[tuple[str, str, Callable[[ModelSpec, int], bool]], ...] = (
    ("interleaved-thinking-", "no interleaved thinking", lambda s, w: s.interleaved_thinking),
    ("effort-", "no effort parameter", lambda s, w: bool(s.effort)),
    ("context-1m-", "no 1M context", lambda s, w: s.context_1m_beta or w >= 1_000_000),
    ("context-management-", "no context editing", lambda s, w: s.context_management),
    ("thinking-token-count-", "no extended thinking", lambda s, w: s.thinking != "none"),
    ("thinking-binding-controls-", "no extended thinking", lambda s, w: s.thinking != "none"),
)


def adapt(
    body: dict[str, Any],
    headers: dict[str, str],
    spec: ModelSpec,
    provider: str,
    target: str,
    changes: list[str],
) -> None:
    tool_choice = body.get("tool_choice")
    forced = isinstance(tool_choice, dict) and tool_choice.get("type") in ("any", "tool")
    if forced and not spec.forced_tool_use:
        raise IncompatibleRequest(f"{target} rejects forced tool use (tool_choice {tool_choice!r})")

    window = model_limits.model_limits(provider, target) or model_limits.ModelLimits(0, 0, 0)
    beta_key = next((k for k in headers if k.lower() == "anthropic-beta"), None)
    if beta_key is not None:
        kept: list[str] = []
        for beta in (b.strip() for b in headers[beta_key].split(",")):
            if not beta:
                continue
            lacking = next(
                (
                    why
                    for prefix, why, has in _BETA_FEATURES
                    if beta.startswith(prefix) and not has(spec, window.context_window)
                ),
                None,
            )
            if lacking is None:
                kept.append(beta)
            else:
                changes.append(f"anthropic-beta: dropped {beta} ({target} has {lacking})")
        if kept:
            headers[beta_key] = ",".join(kept)
        else:
            del headers[beta_key]
    interleaved = beta_key in headers and any(
        b.strip().startswith("interleaved-thinking-") for b in headers[beta_key].split(",")
    )

    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        _adapt_thinking(body, thinking, spec, target, interleaved, changes)
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    will_think = kind in ("enabled", "adaptive") or (
        kind is None and spec.thinking == "adaptive_only"
    )

    output_config = body.get("output_config")
    if isinstance(output_config, dict) and "effort" in output_config:
        effort = output_config["effort"]
        if not spec.effort:
            del output_config["effort"]
            changes.append(f"output_config.effort: dropped {effort!r} ({target} has no effort)")
            if not output_config:
                del body["output_config"]
        elif effort not in spec.effort:
            output_config["effort"] = nearest_effort(effort, spec.effort)
            changes.append(
                f"output_config.effort: {effort!r} -> {output_config['effort']!r} "
                f"({target} takes {', '.join(spec.effort)})"
            )

    management = body.get("context_management")
    if management is not None and not spec.context_management:
        del body["context_management"]
        changes.append(f"context_management: dropped ({target} has no context editing)")
    elif isinstance(management, dict) and not will_think:
        edits = management.get("edits")
        if isinstance(edits, list):
            kept_edits = [
                e
                for e in edits
                if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))
            ]
            if len(kept_edits) < len(edits):
                changes.append("context_management: dropped clear_thinking (no thinking to clear)")
                if kept_edits:
                    management["edits"] = kept_edits
                else:
                    del body["context_management"]

    if body.get("speed") == "fast" and not model_limits.supports_fast_mode(provider, target):
        del body["speed"]
        changes.append(f"speed: dropped 'fast' ({target} has no fast mode)")
    if not spec.sampling:
        drop_keys(body, ("temperature", "top_p", "top_k"), target, changes)


def _adapt_thinking(
    body: dict[str, Any],
    thinking: dict[str, Any],
    spec: ModelSpec,
    target: str,
    interleaved: bool,
    changes: list[str],
) -> None:
    kind = thinking.get("type")
    if spec.thinking == "none":
        del body["thinking"]
        changes.append(f"thinking: dropped ({target} has no extended thinking)")
        return
    if kind == "adaptive" and spec.thinking == "manual":
        del body["thinking"]
        changes.append(f"thinking: dropped adaptive ({target} takes budget_tokens thinking only)")
        return
    if kind == "disabled" and not spec.can_disable_thinking:
        del body["thinking"]
        changes.append(f"thinking: dropped disabled ({target} cannot turn thinking off)")
        return
    if kind == "enabled" and spec.thinking == "adaptive_only":
        budget = thinking.get("budget_tokens")
        adapted = {"type": "adaptive"}
        if "display" in thinking:
            adapted["display"] = thinking["display"]
        body["thinking"] = thinking = adapted
        changes.append(
            f"thinking: enabled (budget_tokens {budget}) -> adaptive ({target} takes adaptive only)"
        )
    if "display" in thinking and not spec.thinking_display:
        display = thinking.pop("display")
        changes.append(f"thinking.display: dropped {display!r} ({target} does not take it)")
    budget = thinking.get("budget_tokens")
    max_tokens = body.get("max_tokens")
    if (
        thinking.get("type") == "enabled"
        and isinstance(budget, int)
        and isinstance(max_tokens, int)
        and budget >= max_tokens
        and not interleaved
    ):
        if max_tokens - 1 >= 1024:  # the smallest budget the API takes
            thinking["budget_tokens"] = max_tokens - 1
            changes.append(
                f"thinking.budget_tokens: {budget} -> {max_tokens - 1} (must be below max_tokens "
                f"without interleaved thinking)"
            )
        else:
            del body["thinking"]
            changes.append(f"thinking: dropped (max_tokens {max_tokens} leaves no budget)")
