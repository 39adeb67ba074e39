"""What the rewrite adapters of every wire format share (see registry.WireFormat.rewrite)."""

from __future__ import annotations

from typing import Any

from devmeter.model_limits import EFFORT_ORDER


class IncompatibleRequest(ValueError):
    """The request uses something the target model rejects and no rewrite can keep."""


def drop_keys(body: dict[str, Any], keys: tuple[str, ...], target: str, changes: list[str]) -> None:
    for key in keys:
        if key in body:
            changes.append(f"{key}: dropped {body.pop(key)!r} ({target} takes only the default)")


def nearest_effort(value: Any, supported: tuple[str, ...]) -> str:
    """The supported level closest to `value`; a tie goes to the higher level."""
    if value not in EFFORT_ORDER:
        return "medium" if "medium" in supported else supported[len(supported) // 2]
    rank = EFFORT_ORDER.index(value)
    return min(supported, key=lambda s: (abs(EFFORT_ORDER.index(s) - rank), -EFFORT_ORDER.index(s)))
