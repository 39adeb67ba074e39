"""Text from the network made safe to print on a terminal: the one sanitiser.

Model names (from an upstream's response, or Gemini's URL path: `%1B...`), tool names,
repo paths, branches and alert messages reach the ledger as the wire sent them. Printed
raw, an escape sequence can clear the screen, retitle the window or forge report rows,
and a megabyte-long name makes every row a megabyte wide. `safe_text` replaces every
character that is not printable (C0 and C1 controls, DEL, bidi overrides and other
format characters, lone surrogates, line separators) with a visible `\\xNN` / `\\uNNNN`
escape, and caps the length with an ellipsis. JSON output needs none of this: `json.dumps`
escapes the same characters itself and stays exact.
"""

from __future__ import annotations

from typing import Literal

ELLIPSIS = "\u2026"
DEFAULT_LIMIT = 200


def safe_text(
    value: object, limit: int | None = DEFAULT_LIMIT, keep: Literal["head", "tail"] = "head"
) -> str:
    """`value` as printable text of at most `limit` characters (None: no cap).

    `keep="tail"` keeps the end (a path's last directories say more than its first)."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None:
        # Escapes only grow the text: look at no more than the cap needs.
        text = text[-(limit + 1) :] if keep == "tail" else text[: limit + 1]
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    if limit is not None and len(text) > limit:
        return ELLIPSIS + text[-(limit - 1) :] if keep == "tail" else text[: limit - 1] + ELLIPSIS
    return text


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
