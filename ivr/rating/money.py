"""Exact money helpers: parsing, scaled integers and rounding.

The engine keeps amounts as integer numerators over one common denominator so that a
quote needs no Decimal arithmetic; these helpers convert between the two exactly.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal
from enum import StrEnum

_MONEY = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # ASCII digits only


class Rounding(StrEnum):
    """How a call's total is rounded to the plan's decimals (once per call)."""

    UP = "up"  # towards +infinity: the customer is never undercharged
    HALF_UP = "half-up"  # nearest, ties away from zero
    DOWN = "down"  # towards zero (truncate)


def parse_money(text: str) -> Decimal:
    """Parse a plain decimal literal (``1``, ``0.0125``, ``.5``) exactly; no exponents.

    Raises ValueError on anything else (empty, ``NaN``, ``1e3``, ``1,5``, digits of other
    scripts such as ``５``, which Decimal would read as 5). The sign is kept;
    callers decide whether negatives are allowed.
    """
    text = text.strip()
    if not _MONEY.fullmatch(text):
        raise ValueError(f"not a decimal amount: {text!r}")
    return Decimal(text)


def decimals_of(amount: Decimal) -> int:
    """Number of decimal places an amount is written with (0 for integers)."""
    exponent = amount.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {amount}")
    return max(0, -exponent)


def to_scaled(amount: Decimal, scale: int) -> int:
    """``amount * 10**scale`` as an exact int; ValueError if that is not an integer."""
    sign, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {amount}")
    value = int("".join(map(str, digits)) or "0")
    shift = exponent + scale
    if shift >= 0:
        value *= _ten_to(shift)
    else:
        value, rest = divmod(value, _ten_to(-shift))
        if rest:
            raise ValueError(f"{amount} has more than {scale} decimals")
    return -value if sign else value


def floor_scaled(amount: Decimal, scale: int) -> int:
    """``floor(amount * 10**scale)`` exactly (for balances with any number of decimals)."""
    sign, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {amount}")
    value = int("".join(map(str, digits)) or "0")
    if sign:
        value = -value
    shift = exponent + scale
    return value * _ten_to(shift) if shift >= 0 else value // _ten_to(-shift)


def _ten_to(power: int) -> int:
    """``10**power`` for ``power >= 0``, as an int: the type of ``int ** int`` is not known
    before run time (a negative power gives a float)."""
    factor: int = 10**power
    return factor


def round_ratio(numerator: int, denominator: int, method: Rounding) -> int:
    """Round the non-negative rational ``numerator / denominator`` to an integer."""
    if method is Rounding.UP:
        return -(-numerator // denominator)
    if method is Rounding.DOWN:
        return numerator // denominator
    return (2 * numerator + denominator) // (2 * denominator)


def max_numerator(limit: int, denominator: int, factor: int, method: Rounding) -> int:
    """Largest n >= -1 with ``round_ratio(n * factor, denominator, method) <= limit``.

    Used by max_seconds: the largest raw amount whose rounded cost fits the balance.
    ``limit`` is the balance in units of the rounded cost (may be negative).
    """
    if method is Rounding.UP:
        bound = limit * denominator
    elif method is Rounding.DOWN:
        bound = (limit + 1) * denominator - 1
    else:
        return max(-1, (2 * denominator * (limit + 1) - denominator - 1) // (2 * factor))
    return max(-1, bound // factor)


EXACT = Context(prec=60)
"""The context for Decimal.scaleb: exact below SCALEB_SAFE, whatever the caller's context."""
SCALEB_SAFE = 10**59


def from_scaled(value: int, scale: int) -> Decimal:
    """The Decimal ``value / 10**scale`` written with exactly ``scale`` decimals, exactly
    (Decimal.scaleb rounds to its context's precision, hence EXACT and the guard)."""
    if -SCALEB_SAFE < value < SCALEB_SAFE:
        return Decimal(value).scaleb(-scale, EXACT)
    return Decimal((value < 0, tuple(map(int, str(abs(value)))), -scale))
