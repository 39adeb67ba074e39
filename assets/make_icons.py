"""Regenerate the app icons in this directory from the tray's own renderer.

    uv run python assets/make_icons.py

devmeter.png (512 px: Linux .desktop, README), devmeter.ico (16-256 px: Windows,
PyInstaller), devmeter.icns (macOS app bundle). The tray icon itself is drawn at run time
(today's spend changes); these are the fixed icon of the app: a "$" badge in the
tray's "normal" green.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from devmeter.tray.icon import render_badge  # noqa: E402

ICO_SIZES = [16, 24, 32, 48, 64, 128, 256]


def main() -> None:
    big = render_badge("$", "normal", 1024)
    big.resize((512, 512)).save(HERE / "devmeter.png", optimize=True)
    # Each ICO size drawn at its own size, not scaled down from one big image: the "$"
    # stays crisp at 16 px.
    frames = [render_badge("$", "normal", size) for size in ICO_SIZES]
    frames[-1].save(
        HERE / "devmeter.ico",
        sizes=[(s, s) for s in ICO_SIZES],
        append_images=frames[:-1],
    )
    big.save(HERE / "devmeter.icns")
    for name in ("devmeter.png", "devmeter.ico", "devmeter.icns"):
        print(f"wrote {HERE / name} ({(HERE / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
