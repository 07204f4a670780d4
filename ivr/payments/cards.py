"""Typed payment cards: the caller's digits for one charge, and the checks made on them
before any gateway is asked.

A typed card number and CVV live only in a :class:`CardDetails` for the length of one
charge: they are never stored, never logged, and ``repr()`` shows only the last four
digits. What is kept is the gateway's token and the last four (``PaymentMethod``), and per
attempt the ``Payment`` row (status, gateway reference, last four).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from ..secrets import luhn_valid


class CardInvalid(ValueError):
    """A typed card was refused before any charge. ``reason`` is one of luhn, expiry (not
    a month), past (expired) or cvv; the message never contains the digits."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"card refused: {reason}")
        self.reason = reason


@dataclass(frozen=True, repr=False)
class CardDetails:
    """A card as typed by the caller, for one charge. Never stored nor logged."""

    number: str
    expiry: str  # MMYY
    cvv: str

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def brand(self) -> str:
        return card_brand(self.number)

    def __repr__(self) -> str:
        return f"CardDetails(...{self.last4})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # no pickling (to a cache, a queue...) of card data
        raise TypeError("card details are not serialisable")


def card_brand(number: str) -> str:
    """The card network from the number's leading digits (for reading back and reports)."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number.startswith(("6011", "65")) or "644" <= number[:3] <= "649":
        return "discover"
    return "card"


def expiry_month(expiry_mmyy: str) -> date:
    """The first day of the MMYY month; CardInvalid("expiry") when it is not one."""
    if len(expiry_mmyy) != 4 or not expiry_mmyy.isdigit():
        raise CardInvalid("expiry")
    month, year = int(expiry_mmyy[:2]), 2000 + int(expiry_mmyy[2:])
    if not 1 <= month <= 12:
        raise CardInvalid("expiry")
    return date(year, month, 1)


def validate_card(number: str, expiry_mmyy: str, cvv: str, today: date) -> None:
    """Check a typed card: 12-19 digits passing Luhn, an MMYY expiry not before this month
    (a card is valid through the last day of its expiry month), a 3-digit CVV (4 for
    American Express). Raises CardInvalid(reason)."""
    if not (12 <= len(number) <= 19 and luhn_valid(number)):
        raise CardInvalid("luhn")
    if expiry_month(expiry_mmyy) < today.replace(day=1):
        raise CardInvalid("past")
    cvv_length = 4 if card_brand(number) == "amex" else 3
    if len(cvv) != cvv_length or not cvv.isdigit():
        raise CardInvalid("cvv")
