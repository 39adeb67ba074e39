"""Money: dollars as `Decimal`, pico-dollars (integer USD * 10**12) as the ledger stores
them, and dollars as people read them.

Base layer: imports nothing of the project.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

ZERO = Decimal(0)
# The ledger's unit: integer pico-dollars, exact for any price per token.
PICO = Decimal(10) ** 12
# SQLite's integers are 64-bit: a larger one cannot be bound at all.
_SQLITE_MAX_INT = 2**63 - 1
_CENT = Decimal("0.01")
_MICRO = Decimal("0.000001")


def to_pusd(usd: Decimal | None) -> int | None:
    """USD as integer pico-dollars; None for what no ledger column can hold (NaN,
    infinities, past 64 bits). `metering.build_call` flags such costs on the row;
    this keeps any other amount (a routing alternative, an alert figure) from reaching
    SQLite, where it would raise in the writer."""
    if usd is None or not usd.is_finite():
        return None
    pusd = int((usd * PICO).to_integral_value(ROUND_HALF_EVEN))
    return pusd if -_SQLITE_MAX_INT <= pusd <= _SQLITE_MAX_INT else None


def from_pusd(pusd: int | None) -> Decimal | None:
    """Pico-dollars back to USD; None stays None (an unpriced call)."""
    return None if pusd is None else Decimal(pusd) / PICO


def usd(pusd: int | None) -> Decimal:
    """Pico-dollars as USD, with no figure (an empty SUM) as $0."""
    return Decimal(pusd or 0) / PICO


def format_usd(amount: Decimal) -> str:
    """`$1,234.57`: cents, rounded half up, thousands separated."""
    return f"${amount.quantize(_CENT, rounding=ROUND_HALF_UP):,}"


def format_usd_fine(amount: Decimal) -> str:
    """`$1,234.57`: two decimals, or six (`$0.003376`) for a figure under a cent that two
    would show as `$0.00`: what reports print, and import summaries the same way."""
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0.00"
    if amount < _MICRO:
        return f"{sign}<$0.000001"
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    if cents < _CENT:
        return f"{sign}${amount.quantize(_MICRO, rounding=ROUND_HALF_UP)}"
    return f"{sign}${cents:,}"
