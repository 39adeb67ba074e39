"""The tray icon: can you read today's spend on it at tray size? Checked structurally."""

from __future__ import annotations

import re
from decimal import Decimal
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFont

from devmeter.tray import icon as icon_module
from devmeter.tray.icon import (
    PALETTES,
    contrast_ratio,
    format_spend,
    icon_text,
    render_badge,
    render_icon,
    tooltip,
)

D = Decimal
STATES = ("normal", "warning", "blocked", "paused")
SIZES = (16, 22, 32, 64)


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        ("0", "$0"),
        ("0.99", "$0"),  # rounded down: never a dollar not yet spent
        ("4.70", "$4"),
        ("12.01", "$12"),
        ("128.50", "$128"),
        ("999.99", "$999"),
        ("1000", "$1.0k"),
        ("1234.56", "$1.2k"),
        ("9999.99", "$9.9k"),
        ("45678", "$45k"),
        ("999999", "$999k"),
        ("2500000", "$2.5M"),
        ("-3", "$0"),
        ("1e12", "$1B+"),
    ],
)
def test_format_spend(usd, shown):
    assert format_spend(D(usd)) == shown
    assert len(shown) <= 5


def test_tooltip_says_session_today_month_and_mode_within_windows_limit():
    assert tooltip(D("3.214"), D("12.4"), D("310.55"), "shadow") == (
        "devmeter · session $3.21 · today $12.40 · month $310.55 · routing shadow"
    )
    assert tooltip(None, D(0), D(0), "off", paused=True) == (
        "devmeter · PAUSED · today $0.00 · month $0.00 · routing off"
    )
    assert len(tooltip(D("1e9"), D("1e9"), D("1e9"), "on" * 100)) <= 127


@pytest.mark.parametrize("state", STATES)
def test_every_state_clears_wcag_aa_contrast(state):
    palette = PALETTES[state]
    assert contrast_ratio(palette.text, palette.background) >= 4.5


def test_states_differ_in_colour_and_without_colour_vision():
    shapes = {s: render_badge("", s, 64).getchannel("A") for s in STATES}
    for a, b in combinations(STATES, 2):
        bg_a, bg_b = PALETTES[a].background, PALETTES[b].background
        distance = sum((x - y) ** 2 for x, y in zip(bg_a, bg_b, strict=True)) ** 0.5
        assert distance > 50, (a, b)
        # Told apart in greyscale too: by lightness, or else by shape.
        same_shape = ImageChops.difference(shapes[a], shapes[b]).getbbox() is None
        assert contrast_ratio(bg_a, bg_b) >= 1.5 or not same_shape, (a, b)
    # Blocked is the stop-sign octagon: its corners are cut where the others are filled.
    assert shapes["normal"].getpixel((8, 2)) > 240 and shapes["blocked"].getpixel((8, 2)) == 0


def ink_mask(icon: Image.Image, state: str) -> Image.Image:
    """Pixels nearer the text colour than the background colour: 255, else 0."""
    palette = PALETTES[state]
    rgb = icon.convert("RGB")
    text, bg = palette.text, palette.background
    out = Image.new("L", icon.size, 0)
    alpha = icon.getchannel("A")
    for y in range(icon.height):
        for x in range(icon.width):
            if alpha.getpixel((x, y)) < 128:
                continue
            p = rgb.getpixel((x, y))
            if sum((a - b) ** 2 for a, b in zip(p, text, strict=True)) < sum(
                (a - b) ** 2 for a, b in zip(p, bg, strict=True)
            ):
                out.putpixel((x, y), 255)
    return out


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("usd", ["0", "4", "12", "128", "1234", "45678"])
def test_the_figure_fills_the_icon_inside_its_bounds(size, state, usd):
    icon = render_icon(D(usd), state, size)
    assert icon.size == (size, size) and icon.mode == "RGBA"
    ink = ink_mask(icon, state)
    box = ink.getbbox()
    assert box is not None, "no figure drawn"
    left, top, right, bottom = box
    # inside the badge, clear of its edges
    assert left >= 1 and top >= 1 and right <= size - 1 and bottom <= size - 1
    # big enough to read: most of the width, a good part of the height
    assert right - left >= 0.5 * size
    assert bottom - top >= 0.4 * size
    # strokes, not a smudge or a speck
    coverage = inked(ink) / ((right - left) * (bottom - top))
    assert 0.2 < coverage < 0.8


@pytest.mark.parametrize("state", STATES)
def test_text_pixels_contrast_with_the_badge_as_rendered(state):
    icon = render_icon(D(12), state, 64).convert("RGB")
    ink = ink_mask(render_icon(D(12), state, 64), state)
    colours_in = [icon.getpixel(p) for p in _points(ink, 255)]
    colours_out = [icon.getpixel(p) for p in _points(ink, 0) if 8 < p[0] < 56 and 8 < p[1] < 56]
    core_text = max(set(colours_in), key=colours_in.count)
    core_bg = max(set(colours_out), key=colours_out.count)
    assert contrast_ratio(core_text, core_bg) >= 4.5


def inked(mask: Image.Image) -> int:
    return mask.histogram()[255]


def _points(mask: Image.Image, value: int) -> list[tuple[int, int]]:
    return [
        (x, y)
        for y in range(mask.height)
        for x in range(mask.width)
        if mask.getpixel((x, y)) == value
    ]


def test_every_digit_looks_different_at_22_px():
    """No OCR here; the next best thing: each digit leaves a clearly different mark."""
    marks = {d: ink_mask(render_icon(D(d), "normal", 22), "normal") for d in range(10)}
    for a, b in combinations(range(10), 2):
        differing = inked(ImageChops.difference(marks[a], marks[b]))
        assert differing >= 8, f"${a} and ${b} differ in only {differing} pixels"


def test_the_readme_shows_the_figures_the_icon_draws_at_each_size():
    """README's examples of the icon are what it reads, large and at panel size."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = " ".join(readme.partition("The icon shows today's spend")[2][:400].split())
    amounts = (D(42), D(128), D(1234))
    large = ", ".join(icon_text(usd, 64) for usd in amounts)
    small = ", ".join(icon_text(usd, 22) for usd in amounts)
    assert re.search(rf"\({re.escape(large)}\)", section), section
    assert f": {small} (" in section and "32 px" in section, section


def test_small_icons_drop_the_dollar_sign_from_long_figures_only():
    # "$128" at 22 px would leave each digit 4 px wide; "128" gets a third more.
    assert (
        render_icon(D(128), "normal", 22).tobytes() == render_badge("128", "normal", 22).tobytes()
    )
    assert render_icon(D(12), "normal", 22).tobytes() == render_badge("$12", "normal", 22).tobytes()
    assert (
        render_icon(D(128), "normal", 64).tobytes() == render_badge("$128", "normal", 64).tobytes()
    )


def test_corners_are_transparent_so_the_icon_sits_on_any_tray():
    icon = render_icon(D(5), "normal", 22)
    assert icon.getpixel((0, 0))[3] == 0
    assert icon.getpixel((11, 11))[3] == 255


def test_too_small_an_icon_is_refused():
    with pytest.raises(ValueError):
        render_icon(D(1), "normal", 4)


def test_without_freetype_the_bitmap_font_still_draws_the_figure(monkeypatch):
    monkeypatch.setattr(icon_module, "_font", lambda size: ImageFont.load_default_imagefont())
    icon_module._glyphs.cache_clear()
    try:
        icon = render_icon(D(12), "normal", 22)
        box = ink_mask(icon, "normal").getbbox()
        assert box is not None and box[2] - box[0] >= 11
    finally:
        icon_module._glyphs.cache_clear()
