"""devmeter's block in a shell startup file: added once, found again, taken out exactly.

Pure functions on the file's text. The block sits between two marker lines; adding it
records the exact text inserted, so that taking it out gives back the original bytes
(including a newline devmeter had to add before it), even when the user edited other
parts of the file in between.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BEGIN = ">>> devmeter shell integration >>>"
END = "<<< devmeter shell integration <<<"
_BLOCK = re.compile(
    rf"(?m)^[^\n]*{re.escape(BEGIN)}[^\n]*\n(?:.*\n)*?[^\n]*{re.escape(END)}[^\n]*(?:\n|\Z)"
)


def block(comment: str, body: str) -> str:
    """The block: marker lines in the shell's comment syntax around `body` (one line or more)."""
    note = "added by `devmeter setup`; `devmeter uninstall` takes it out again"
    return f"{comment} {BEGIN}\n{comment} {note}\n{body.rstrip()}\n{comment} {END}\n"


@dataclass(frozen=True)
class Added:
    text: str  # the whole new file
    inserted: str  # exactly what went in (the block, after a newline if one was missing)


def add(original: str, new_block: str) -> Added:
    """Append the block; a block already there is replaced in place instead."""
    found = _BLOCK.search(original)
    if found:
        text = original[: found.start()] + new_block + original[found.end() :]
        return Added(text, new_block)
    inserted = new_block if original == "" or original.endswith("\n") else "\n" + new_block
    return Added(original + inserted, inserted)


def has_block(text: str) -> bool:
    return _BLOCK.search(text) is not None


def remove(text: str, inserted: str | None) -> str:
    """The text without devmeter's block.

    The exact text `add` inserted comes out first (so a file nobody else touched is back
    to its original bytes); a block the user edited is taken out from marker to marker.
    """
    if inserted and inserted in text:
        at = text.rindex(inserted)
        end = at + len(inserted)
        if inserted.startswith("\n") and end < len(text):
            at += 1  # lines added after the block need the newline devmeter put before it
        return text[:at] + text[end:]
    return _BLOCK.sub("", text)
