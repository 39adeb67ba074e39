"""The tray icon: today's spend as a figure you can read at 22 px, on a state colour.

Pure Pillow, no pystray: `render_icon` returns an RGBA image the tray app hands to
pystray. The font is the one Pillow bundles (`ImageFont.load_default(size=...)`, a
scalable sans since Pillow 10.1, when Pillow has FreeType); without FreeType the old
bitmap font is scaled up instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from devmeter.money import format_usd

State = Literal["normal", "warning", "critical", "blocked", "paused"]
RGB = tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
INK: RGB = (17, 17, 17)


@dataclass(frozen=True)
class Palette:
    background: RGB
    text: RGB


# Text clears WCAG AA's 4.5:1 on every background with room to spare. The states also
# differ in lightness (green, red and charcoal are dark at different depths, amber is
# the one light one), and blocked has its own shape, so none of them relies on telling
# red from green.
PALETTES: dict[State, Palette] = {
    "normal": Palette((21, 101, 52), WHITE),  # green 800: 7.1:1
    "warning": Palette((255, 179, 0), INK),  # amber 600: 10.5:1
    # A quota window nearly spent: red, and a bar along the foot (see `render_badge`).
    "critical": Palette((198, 40, 40), WHITE),  # red 800: 5.6:1
    "blocked": Palette((198, 40, 40), WHITE),  # red 800: 5.6:1, and an octagon
    "paused": Palette((48, 48, 48), WHITE),  # charcoal: 13.2:1
}


def relative_luminance(rgb: RGB) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: RGB, b: RGB) -> float:
    """WCAG 2 contrast ratio, 1 (none) to 21 (black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


# --- the figure ----------------------------------------------------------------------------


def format_spend(amount: Decimal) -> str:
    """Spend in at most five characters: `$0` `$4` `$12` `$128` `$1.2k` `$12k` `$1.2M`.

    Rounded down, so the icon never shows a dollar that has not been spent yet.
    """
    if amount < 1000:
        return f"${max(amount, Decimal(0)).to_integral_value(ROUND_DOWN)}"
    for unit, scale in (("k", Decimal(1000)), ("M", Decimal(1_000_000))):
        scaled = amount / scale
        if scaled < 10:
            return f"${scaled.quantize(Decimal('0.1'), ROUND_DOWN)}{unit}"
        if scaled < 1000:
            return f"${scaled.to_integral_value(ROUND_DOWN)}{unit}"
    return "$1B+"  # the runaway of runaways


def tooltip(
    session_usd: Decimal | None,
    today_usd: Decimal,
    month_usd: Decimal,
    mode: str,
    *,
    paused: bool = False,
    billing: str | None = None,
    config_problem: str | None = None,
    secrets: int = 0,
) -> str:
    """The icon's hover text, one line under Windows' 128-character limit.

    `devmeter · session $3.21 · today $12.40 · month $310.55 · routing shadow`;
    `session_usd` is the live session's (None when there is none), `mode` the routing
    mode. A `config_problem` (short: `config.toml, line 4 [key]: ...`) goes last, where
    the limit cuts it rather than the figures; the menu has it whole. `secrets`, today's
    secret findings, comes before the figures: a key that left matters more than a sum.
    """
    parts = ["devmeter"]
    if paused:
        parts.append("PAUSED")
    if config_problem:
        parts.append("CONFIG EDIT NOT APPLIED")
    if secrets:
        parts.append(f"{secrets} SECRET{'S' if secrets > 1 else ''} SENT TODAY")
    if session_usd is not None:
        parts.append(f"session {format_usd(session_usd)}")
    parts += [f"today {format_usd(today_usd)}", f"month {format_usd(month_usd)}"]
    parts.append(f"routing {mode}")
    if billing:
        parts.append(billing)  # `TraySnapshot.billing_line`: billed, covered, quota
    if config_problem:
        parts.append(config_problem)
    return " \u00b7 ".join(parts)[:127]


# --- rendering -----------------------------------------------------------------------------

# Glyphs are drawn this many times larger, then scaled down: smooth edges at any size and
# a figure that can be stretched to fill the icon exactly.
_SUPERSAMPLE = 4
# The narrowest a figure may be squeezed horizontally before it is made smaller instead.
_MIN_SQUEEZE = 0.72


def render_icon(spend_usd: Decimal, state: State, size: int) -> Image.Image:
    """A `size` x `size` RGBA icon: `format_spend(spend_usd)` on the state's colour.

    Below 32 px a figure of four or more characters drops its `$` (`128`, `1.2k`): the
    digits get a third more room, and the badge colour and tooltip say it is dollars.
    """
    return render_badge(icon_text(spend_usd, size), state, size)


def icon_text(spend_usd: Decimal, size: int) -> str:
    """What a `size` px icon reads for `spend_usd` (README.md describes it: keep the two
    in step, tests/test_tray_icon.py checks they are)."""
    text = format_spend(spend_usd)
    return text[1:] if size < 32 and len(text) > 3 else text


def render_badge(text: str, state: State, size: int) -> Image.Image:
    """`text` as large as fits on the state's shape and colour.

    A rounded square, except `blocked`: a stop-sign octagon, so it does not rely on
    telling red from green; `critical` (a quota window nearly spent) is the red square
    with a bar along its foot, for the same reason.
    """
    if size < 8:
        raise ValueError(f"an icon needs at least 8 px, got {size}")
    palette = PALETTES[state]
    icon = Image.new("RGBA", (size, size), palette.background + (0,))
    icon.putalpha(_shape(state, size))
    pad = max(2, round(size * 0.1))
    mask = _fit(_glyphs(text), size - 2 * pad, size - 2 * pad)
    left = (size - mask.width) // 2
    top = (size - mask.height) // 2
    icon.paste(palette.text, (left, top, left + mask.width, top + mask.height), mask)
    if state == "critical":
        foot = max(1, round(size * 0.08))
        ImageDraw.Draw(icon).rectangle(
            (pad + 1, size - pad - foot, size - pad - 2, size - pad - 1), fill=palette.text
        )
    return icon


@lru_cache(maxsize=16)
def _shape(state: State, size: int) -> Image.Image:
    """The badge's alpha: drawn large and scaled down, for smooth edges at 16 px."""
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if state == "blocked":
        cut = round(big * 0.24)
        end = big - 1
        draw.polygon(
            [
                (cut, 0),
                (end - cut, 0),
                (end, cut),
                (end, end - cut),
                (end - cut, end),
                (cut, end),
                (0, end - cut),
                (0, cut),
            ],
            fill=255,
        )
    else:
        draw.rounded_rectangle((0, 0, big - 1, big - 1), big // 6, fill=255)
    return mask.resize((size, size), Image.Resampling.LANCZOS)


def _fit(glyphs: Image.Image, width: int, height: int) -> Image.Image:
    """Scale the text mask to fill `height` (digits tall), squeezing or shrinking to fit."""
    aspect = glyphs.width / glyphs.height
    h = height * 0.72  # clear of the rounded corners and the octagon's cuts
    w = h * aspect
    if w > width:
        if w * _MIN_SQUEEZE <= width:
            w = width  # condense a little: taller digits read better than wider ones
        else:
            h = width / (aspect * _MIN_SQUEEZE)
            w = width
    return glyphs.resize((max(1, round(w)), max(1, round(h))), Image.Resampling.LANCZOS)


@lru_cache(maxsize=64)
def _glyphs(text: str) -> Image.Image:
    """The text's ink as an L mask cropped tight, drawn large."""
    font = _font(24 * _SUPERSAMPLE)
    # A stroke in the same colour makes the bundled regular weight read as semi-bold.
    # (The bitmap fallback has no strokes; it is scaled up from its 11 px instead.)
    if isinstance(font, ImageFont.FreeTypeFont):
        stroke = _SUPERSAMPLE
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    else:
        stroke = 0
        left, top, right, bottom = (int(v) for v in font.getbbox(text))
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text(
        (1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255
    )
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: no size, only the bitmap font
        return ImageFont.load_default()
