"""What a model accepts, for deciding whether a rewritten request will still work.

genai-prices decides which models exist at a provider, their context windows and
their prices; nothing here prices anything. It does not record output limits or
which request parameters a model understands, so this module holds a small table
of exactly that, keyed by genai-prices' model id (which already folds dated
snapshots and aliases together, e.g. `claude-haiku-4-5-20251001` ->
`claude-haiku-4-5`). A model missing from the table has unknown limits, and
routing never rewrites to it.

Sources, read November 2026:
  Anthropic: platform.claude.com model overview pages ("Context window · Max
    output"), the effort page (which levels each model accepts), the adaptive and
    extended thinking pages, and "What's new in Claude Sonnet 5.5" (thinking
    `disabled` and forced tool use return 400 there).
  OpenAI: developers.openai.com model pages (context window, max output,
    `reasoning.effort` values; GPT-6 models accept 922K input of their 1.05M).
Add a row when a new model should be a routing target; leave a model out rather
than guess its limits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# genai-prices is asked through pricing, the one module that looks anything up in it.
from devmeter.pricing import bare_model_name, find_model

# How a model takes Anthropic's `thinking` parameter (OpenAI reasoning models: "adaptive").
#   none           no extended thinking at all
#   manual         {"type": "enabled", "budget_tokens": N} only
#   adaptive       {"type": "adaptive"} and the deprecated manual form
#   adaptive_only  {"type": "adaptive"}; manual thinking returns 400
Thinking = Literal["none", "manual", "adaptive", "adaptive_only"]

# Effort and reasoning-effort levels, least to most.
EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@dataclass(frozen=True)
class ModelSpec:
    max_output_tokens: int
    # Input cap when it is below the context window (OpenAI GPT-5/6); None: the window.
    max_input_tokens: int | None = None
    thinking: Thinking = "none"
    # `output_config.effort` (Anthropic) / `reasoning.effort` (OpenAI) values; () = none.
    effort: tuple[str, ...] = ()
    # Accepts thinking {"type": "disabled"} (the 5.5 Opus and Sonnet do not).
    can_disable_thinking: bool = True
    # Accepts thinking.display ("omitted", "summarized"), new with the Claude 5 models.
    thinking_display: bool = False
    # Accepts the interleaved-thinking beta (thinking between tool calls).
    interleaved_thinking: bool = False
    # Accepts `context_management` (context editing) and its beta.
    context_management: bool = False
    # Reaches 1M tokens of context only with the context-1m beta.
    context_1m_beta: bool = False
    # Accepts non-default temperature / top_p / top_k.
    sampling: bool = True
    # Accepts tool_choice "any" / "tool" (forced tool use).
    forced_tool_use: bool = True
    # Accepts OpenAI's verbosity (`text.verbosity`, chat `verbosity`).
    verbosity: bool = False


_ANTHROPIC_5 = ("low", "medium", "high", "xhigh", "max")
_ANTHROPIC_46 = ("low", "medium", "high", "max")
_GPT6 = ("none", "low", "medium", "high", "xhigh", "max")
_GPT5 = ("minimal", "low", "medium", "high")

_CLAUDE_5 = ModelSpec(
    max_output_tokens=128_000,
    thinking="adaptive_only",
    effort=_ANTHROPIC_5,
    thinking_display=True,
    interleaved_thinking=True,
    context_management=True,
    # Sonnet 5 and Fable 5 reject non-default sampling; assumed for the rest of 5.x.
    sampling=False,
)
_CLAUDE_4_MANUAL = ModelSpec(
    max_output_tokens=64_000,
    thinking="manual",
    interleaved_thinking=True,
    context_management=True,
)
_GPT6_SPEC = ModelSpec(
    max_output_tokens=128_000,
    max_input_tokens=922_000,
    thinking="adaptive",
    effort=_GPT6,
    sampling=False,
    verbosity=True,
)
_GPT5_SPEC = ModelSpec(
    max_output_tokens=128_000,
    max_input_tokens=272_000,
    thinking="adaptive",
    effort=_GPT5,
    sampling=False,
    verbosity=True,
)

SPECS: dict[str, ModelSpec] = {
    # Anthropic, current (all 1M context in genai-prices).
    "claude-opus-5-5": replace(_CLAUDE_5, can_disable_thinking=False),  # "always on"
    "claude-sonnet-5-5": replace(_CLAUDE_5, can_disable_thinking=False, forced_tool_use=False),
    "claude-haiku-5-5": _CLAUDE_5,
    "claude-opus-5": _CLAUDE_5,
    "claude-sonnet-5": _CLAUDE_5,
    "claude-fable-5": replace(_CLAUDE_5, can_disable_thinking=False),
    "claude-fable-5-1": replace(_CLAUDE_5, can_disable_thinking=False),
    # Anthropic, legacy.
    "claude-opus-4-6": ModelSpec(
        max_output_tokens=128_000,
        thinking="adaptive",
        effort=_ANTHROPIC_46,
        interleaved_thinking=True,
        context_management=True,
    ),
    "claude-sonnet-4-6": ModelSpec(
        max_output_tokens=64_000,
        thinking="adaptive",
        effort=_ANTHROPIC_46,
        interleaved_thinking=True,
        context_management=True,
    ),
    "claude-opus-4-5": replace(_CLAUDE_4_MANUAL, effort=("low", "medium", "high")),
    "claude-sonnet-4-5": replace(_CLAUDE_4_MANUAL, context_1m_beta=True),
    "claude-haiku-4-5": _CLAUDE_4_MANUAL,
    "claude-sonnet-4-0": replace(_CLAUDE_4_MANUAL, context_1m_beta=True),
    "claude-opus-4-1": replace(_CLAUDE_4_MANUAL, max_output_tokens=32_000),
    "claude-opus-4-0": replace(_CLAUDE_4_MANUAL, max_output_tokens=32_000),
    "claude-3-7-sonnet-latest": ModelSpec(max_output_tokens=64_000, thinking="manual"),
    "claude-3-5-haiku-latest": ModelSpec(max_output_tokens=8_192),
    "claude-3-haiku": ModelSpec(max_output_tokens=4_096),
    # OpenAI.
    "gpt-6-sol": _GPT6_SPEC,
    "gpt-6-luna": _GPT6_SPEC,
    "gpt-6.1-terra": _GPT6_SPEC,
    "gpt-5": _GPT5_SPEC,
    "gpt-5-mini": _GPT5_SPEC,
    "gpt-5-nano": _GPT5_SPEC,
    "gpt-4.1": ModelSpec(max_output_tokens=32_768),
    "gpt-4.1-mini": ModelSpec(max_output_tokens=32_768),
    "gpt-4.1-nano": ModelSpec(max_output_tokens=32_768),
    "gpt-4o": ModelSpec(max_output_tokens=16_384),
    "gpt-4o-mini": ModelSpec(max_output_tokens=16_384),
}


@dataclass(frozen=True)
class ModelLimits:
    context_window: int  # input + output, from genai-prices
    max_output_tokens: int
    max_input_tokens: int  # the context window unless the provider caps input lower


def canonical_id(provider: str | None, model: str) -> str | None:
    """genai-prices' id for `model` at `provider` (or wherever its name points), else None."""
    found = find_model(provider, model)
    return found[1].id if found else None


def model_spec(provider: str | None, model: str) -> ModelSpec | None:
    """What `model` accepts, or None when devmeter does not know (then never rewrite to it)."""
    return SPECS.get(canonical_id(provider, model) or bare_model_name(model))


def model_limits(provider: str | None, model: str) -> ModelLimits | None:
    """Context window (genai-prices) and output limit (SPECS); None when either is unknown."""
    found = find_model(provider, model)
    spec = model_spec(provider, model)
    if found is None or spec is None or found[1].context_window is None:
        return None
    window = found[1].context_window
    max_input = min(window, spec.max_input_tokens) if spec.max_input_tokens else window
    return ModelLimits(window, spec.max_output_tokens, max_input)


def supports_fast_mode(provider: str | None, model: str) -> bool:
    """Whether genai-prices prices `speed: fast` for this model (Anthropic fast mode)."""
    found = find_model(provider, model)
    variants = (found[1].price_variants or ()) if found else ()
    return any(variant.when.get("speed") == "fast" for variant in variants)


def natively_priced(provider: str, model: str) -> bool:
    """Whether `provider` itself lists `model`, not through another provider's prices."""
    found = find_model(provider, model)
    return found is not None and any(m is found[1] for m in found[0].models)
