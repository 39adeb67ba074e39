"""The rates a history import priced with, kept beside the ledger for the next import.

A first import prices every response; the rates for a (provider, model, hour) come from
genai-prices, whose loading is half a second of CPU, more than the rest of a re-import of
a day's new lines. `recall` hands the rates of earlier imports to pricing.py before any
is needed, `keep` saves what this one added. They are valid only for the genai-prices
data they came from: the file names it (the path, size and time of its data module,
found without importing it), and rates from other data are ignored. A file that cannot
be read or written costs only the time it would have saved.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from devmeter import pricing
from devmeter.paths import write_private

FILE = "price-memory.json"


def _data_stamp() -> str | None:
    """Which genai-prices data is installed: its data module's path, size and mtime."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("genai_prices")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).with_name("data.py")
    try:
        st = data.stat()
    except OSError:
        return None
    return f"{data}:{st.st_size}:{st.st_mtime_ns}"


_loaded = 0  # how many rates the file held when recalled
_recalled: set[Path] = set()


def recall(folder: Path) -> None:
    """Give pricing.py the rates kept in `folder` for the installed genai-prices data
    (once per process: the tray's background import comes back every few minutes)."""
    global _loaded
    if folder in _recalled:
        return
    _recalled.add(folder)
    stamp = _data_stamp()
    pricing.remember_rates({}, None)  # remember what this import works out, to keep it
    try:
        kept = json.loads((folder / FILE).read_text(encoding="utf-8"))
        if stamp is None or not isinstance(kept, dict) or kept.get("genai_prices") != stamp:
            return
        tables = [
            tuple((int(start), {k: Decimal(v) for k, v in rates.items()}) for start, rates in t)
            for t in kept["tables"]
        ]
        hours = {(p, m, int(h)): tables[i] for p, m, h, i in kept["hours"]}
        source = str(kept["source"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, ArithmeticError):
        return  # no file yet, or one this cannot use: genai-prices prices everything
    pricing.remember_rates(hours, source)
    _loaded = len(hours)


def keep(folder: Path) -> None:
    """Save the rates known now, when there are more than were recalled."""
    rates, source = pricing.remembered_rates()
    stamp = _data_stamp()
    if len(rates) <= _loaded or source is None or stamp is None:
        return
    index: dict[str, int] = {}  # a table's JSON -> its place: most hours share one
    tables: list[Any] = []
    hours = []
    for (provider, model, hour), tiers in rates.items():
        table = [[start, {k: str(v) for k, v in r.items()}] for start, r in tiers]
        text = json.dumps(table, sort_keys=True)
        at = index.get(text)
        if at is None:
            at = index[text] = len(tables)
            tables.append(table)
        hours.append([provider, model, hour, at])
    text = json.dumps({"genai_prices": stamp, "source": source, "tables": tables,
                       "hours": hours}, separators=(",", ":"))  # fmt: skip
    tmp = folder / f"{FILE}.{os.getpid()}.tmp"
    try:
        write_private(tmp, text)  # public prices, but in the user's private folder: 0600
        tmp.replace(folder / FILE)
    except OSError:
        tmp.unlink(missing_ok=True)
