"""Tables for people: aligned columns, fitted to a terminal's width when there is one.

Without a width (a pipe, a file, a test, the tray's report) the columns are as wide as
their widest cell: the same bytes every time. With the terminal's width, text columns
are narrowed, the widest first, until a row fits, and their cells cut with an ellipsis
(paths keep their end); numbers and the columns in `keep` are never cut, so a 200-column
report stays one line a row in an 80-column terminal. Cells must already be printable
(`safe_text`). Plain alignment does all this in a few lines; a table library (rich) was
tried and dropped: given columns that must not wrap it cropped the numbers off instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from devmeter.safe_text import ELLIPSIS

GAP = "  "
MIN_WIDTH = 6  # a text column is never narrowed below this (or its header)


@dataclass(frozen=True)
class TextTable:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    right: frozenset[int] = frozenset()  # columns aligned right: the numbers, never cut
    total: Sequence[str] | None = None  # a last row, set apart by a rule
    footer: Sequence[str] = field(default_factory=tuple)  # lines after a blank one
    keep: frozenset[int] = frozenset()  # text columns never cut (times, markers)
    tail: frozenset[int] = frozenset()  # text columns cut at the start (paths)


def render(table: TextTable, width: int | None = None) -> str:
    """The table as text; with `width`, narrowed to fit that many columns if it can."""
    rows = [table.headers, *table.rows, *([table.total] if table.total is not None else [])]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    if width is not None:
        widths = _fit(widths, table, width)
        rows = [
            [_cut(cell, widths[i], i in table.tail) for i, cell in enumerate(row)] for row in rows
        ]
    lines = align(rows, table.right, widths, rule_before_last=table.total is not None)
    if table.footer:
        lines += ["", *table.footer]
    return "\n".join(lines) + "\n"


def align(
    table: Sequence[Sequence[str]],
    right: Iterable[int] = (),
    widths: Sequence[int] | None = None,
    rule_before_last: bool = False,
) -> list[str]:
    """Columns padded to `widths` (default: the widest cell), `right` ones on the right."""
    if widths is None:
        widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    right = set(right)
    # One format per line, built once: a report by session can have tens of thousands.
    line = GAP.join(f"{{:{'>' if i in right else '<'}{width}}}" for i, width in enumerate(widths))
    lines = [line.format(*row).rstrip() for row in table]
    if rule_before_last and len(lines) > 2:
        rule = GAP.join("-" * width for width in widths).rstrip()
        lines.insert(len(lines) - 1, rule)
    return lines


def _fit(widths: list[int], table: TextTable, width: int) -> list[int]:
    """Narrow the widest text column, one character at a time, until the row fits."""
    widths = list(widths)
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    floors = {
        i: max(MIN_WIDTH, len(header))
        for i, header in enumerate(table.headers)
        if i not in table.right and i not in table.keep
    }
    while excess > 0:
        narrowable = [i for i, floor in floors.items() if widths[i] > floor]
        if not narrowable:
            break  # as narrow as it goes: the terminal wraps the rest
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def _cut(cell: str, width: int, keep_end: bool) -> str:
    if len(cell) <= width:
        return cell
    return ELLIPSIS + cell[-(width - 1) :] if keep_end else cell[: width - 1] + ELLIPSIS
