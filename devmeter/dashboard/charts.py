"""Stacked bar charts and sparklines as SVG text: no JavaScript, no network, nothing to
vendor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from html import escape

# Colour-blind-safe palette (Okabe-Ito), then grey for "everything else".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER_COLOUR = "#999999"
OTHER = "(other)"


def colours(keys: Sequence[str]) -> dict[str, str]:
    return {
        key: OTHER_COLOUR if key == OTHER else PALETTE[n % len(PALETTE)]
        for n, key in enumerate(keys)
    }


def top_keys(points: Sequence[tuple[str, str, Decimal]], most: int = 6) -> list[str]:
    """The `most` keys that cost the most; the rest are drawn together as (other)."""
    totals: dict[str, Decimal] = {}
    for _, key, value in points:
        totals[key] = totals.get(key, Decimal(0)) + value
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    return ranked[:most] + ([OTHER] if len(ranked) > most else [])


def usd(value: Decimal) -> str:
    return f"${value:.6f}"


def usd_axis(value: Decimal) -> str:
    return f"${float(value):,.2f}"


def tokens(value: Decimal) -> str:
    return f"{int(value):,} tokens"


def tokens_axis(value: Decimal) -> str:
    return f"{int(value):,}"


def stacked_bars(
    steps: Sequence[str],
    points: Sequence[tuple[str, str, Decimal]],
    title: str,
    width: int = 720,
    height: int = 220,
    label_every: int = 1,
    label_chars: int = 5,
    keys: Sequence[str] | None = None,
    figure: Callable[[Decimal], str] = usd,
    axis: Callable[[Decimal], str] = usd_axis,
) -> str:
    """A bar per step, stacked by key: each segment has a <title> with its exact figure.

    `keys` fixes the stacking order (tokens by kind); by default the six costliest keys
    stack, the rest as (other)."""
    keys = top_keys(points) if keys is None else list(keys)
    shown = set(keys)
    stack: dict[str, dict[str, Decimal]] = {step: {} for step in steps}
    for step, key, value in points:
        if step not in stack:
            continue
        key = key if key in shown else OTHER
        stack[step][key] = stack[step].get(key, Decimal(0)) + value
    peak = max((sum(v.values(), Decimal(0)) for v in stack.values()), default=Decimal(0))
    scale = float(peak) if peak > 0 else 1.0
    left, bottom, top = 56, 22, 8
    plot_h = height - bottom - top
    slot = (width - left) / max(len(steps), 1)
    bar_w = max(slot * 0.8, 1.0)
    palette = colours(keys)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 10}" text-anchor="end" font-size="11">'
        f"{escape(axis(peak))}</text>",
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="11">'
        f"{escape(axis(Decimal(0)))}</text>",
    ]
    for n, step in enumerate(steps):
        x = left + n * slot + (slot - bar_w) / 2
        y = float(top + plot_h)
        for key in keys:
            value = stack[step].get(key)
            if not value:
                continue
            h = float(value) / scale * plot_h
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{palette[key]}"><title>{escape(step)} · {escape(key)} · '
                f"{escape(figure(value))}</title></rect>"
            )
        if n % label_every == 0:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                f'font-size="10">{escape(step[-label_chars:])}</text>'
            )
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{palette[k]}"></i>{escape(k)}</span>' for k in keys
    )
    return "".join(out) + f'<div class="legend">{legend}</div>'


def sparkline(values: Sequence[Decimal], title: str, width: int = 120, height: int = 24) -> str:
    """A small line of `values` (oldest first), zero at the bottom; every value, exact,
    in `data-values` for tools."""
    peak = max(values, default=Decimal(0))
    scale = float(peak) if peak > 0 else 1.0
    step = width / max(len(values) - 1, 1)
    xy = " ".join(
        f"{n * step:.1f},{height - 1 - float(v) / scale * (height - 2):.1f}"
        for n, v in enumerate(values)
    )
    exact = " ".join(str(v) for v in values)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'data-values="{exact}"><title>{escape(title)}</title>'
        f'<polyline points="0,{height - 1} {xy} {width},{height - 1}" fill="#0072B233" '
        f'stroke="none"/><polyline points="{xy}" fill="none" stroke="{PALETTE[0]}" '
        'stroke-width="1.5"/></svg>'
    )
