"""Column types. Money is stored as integer micro-units: exact on SQLite and PostgreSQL
alike (SQLite has no exact decimal type, and SQLAlchemy's Numeric there goes through
float)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, overload

from sqlalchemy import BigInteger
from sqlalchemy.types import TypeDecorator

MONEY_SCALE = 6  # decimal places kept: 0.000001 of the currency unit
_FACTOR = 10**MONEY_SCALE


class MoneyPrecisionError(ValueError):
    """An amount has more decimal places than the database keeps."""


def to_micros(amount: Decimal) -> int:
    if not isinstance(amount, Decimal):
        raise TypeError(f"money must be a Decimal, not {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"money must be finite: {amount}")
    scaled = amount * _FACTOR
    if scaled != scaled.to_integral_value():
        raise MoneyPrecisionError(f"{amount} has more than {MONEY_SCALE} decimal places")
    return int(scaled)


def from_micros(value: int) -> Decimal:
    return Decimal(value).scaleb(-MONEY_SCALE)


class Money(TypeDecorator[Decimal]):
    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else from_micros(int(value))


def display(amount: Decimal, min_decimals: int = 2) -> str:
    """An amount for people: no trailing zeros beyond ``min_decimals`` (5.000000 -> 5.00)."""
    text = f"{amount:f}"
    if "." not in text:
        return text + ("." + "0" * min_decimals if min_decimals else "")
    whole, frac = text.split(".")
    frac = frac.rstrip("0")
    frac = frac + "0" * max(0, min_decimals - len(frac))
    return f"{whole}.{frac}" if frac else whole


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """A time read from a timezone-aware column, made aware: SQLite returns naive
    datetimes, and they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
