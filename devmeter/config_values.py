"""Checks on single values and tables of the config file, shared by every section's
parser: each failure is a `ConfigError` naming the key (config.py adds file and line).

Base layer: imports nothing of the project but `config_error`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from devmeter.config_error import ConfigError


def config_usd(key: str, value: object) -> Decimal:
    """A positive, finite dollar amount from TOML (int or float; never bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number of US dollars, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number of US dollars, got {value!r}")
    # str() first: 0.1 is Decimal("0.1"), not 0.1000000000000000055511151231257827...
    amount = Decimal(str(value))
    if amount <= 0:
        raise ConfigError(key, f"must be above 0, got {value!r}")
    return amount


def config_table(key: str, value: object) -> Mapping[str, Any]:
    """`[key]`, which must be a table."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table ([{key}]), got {value!r}")
    return value


def config_bool(key: str, value: object, meaning: str = "") -> bool:
    """A TOML boolean; `meaning` (what true does) goes in the error, when given."""
    if not isinstance(value, bool):
        said = f" ({meaning})" if meaning else ""
        raise ConfigError(key, f"expected true or false{said}, got {value!r}")
    return value


def reject_unknown(prefix: str, table: Mapping[str, object], valid: Iterable[str]) -> None:
    """Raise on the first key of `[prefix]` that is not one of `valid`, listing them."""
    valid = list(valid)
    for name in table:
        if name not in valid:
            raise ConfigError(
                f"{prefix}.{name}",
                f"unknown key {name!r}; {did_you_mean(name, valid)}valid keys in [{prefix}]: "
                f"{', '.join(valid)}",
            )


def did_you_mean(name: str, valid: Iterable[str], cutoff: float = 0.7) -> str:
    """ "did you mean 'block_usd'? " for a misspelt name, else "": a typo among a dozen
    keys is easier fixed when its word is named. `cutoff`: how alike (difflib's ratio)."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}? " if close else ""


def url_problem(url: str) -> str | None:
    """Why an http(s) URL cannot be sent to, in words for an error; None when it can.
    urllib and mitmproxy read the port only when they send: a port out of range failed
    every send (or stopped the proxy) long after the file was accepted."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname or any(c.isspace() for c in parts.netloc):
        return "has no valid host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "has no valid port (1-65535)"
    return None
