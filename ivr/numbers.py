"""Telephone numbers from a caller's keypad: filtered, then normalised to E.164.

Every number that reaches rating or Dial has passed :func:`normalise`: digits only, in
E.164 form without the ``+`` (``442079460000``), so a caller can never put dialplan
syntax (``&``, ``,``, ``/``) into a Dial string, and ``011 44 ...``, ``+44 ...`` and a
national ``0207 ...`` all rate the same. The parsing is Google's libphonenumber
(``phonenumbers``) in the operator's default region. A number is accepted when its length
is possible for its country; full validity is not required, because numbering plans change
faster than the library's metadata and the rate deck decides what may be called.
"""

from __future__ import annotations

import phonenumbers

MAX_DIGITS = 20  # longest entry read from the keypad (E.164 allows 15 digits)


class InvalidNumber(ValueError):
    """Not a telephone number we can place a call to."""


def keypad_digits(raw: str | None) -> str:
    """Only the digits of what a caller typed (``#`` ends entry, ``*`` is not a digit)."""
    return "".join(ch for ch in raw or "" if "0" <= ch <= "9")


def normalise(typed: str, region: str = "US") -> str:
    """E.164 digits (no ``+``) for a number typed on a keypad in ``region``.

    ``typed`` may start with the region's international prefix (``011`` in the US,
    ``00`` in most of the world) or be a national number.
    """
    digits = keypad_digits(typed)
    if not digits:
        raise InvalidNumber("no digits")
    if len(digits) > MAX_DIGITS:
        raise InvalidNumber(f"{len(digits)} digits is too long")
    try:
        parsed = phonenumbers.parse(digits, region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(str(exc)) from None
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"not a possible number in country code {parsed.country_code}")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164.removeprefix("+")


def normalise_callerid(callerid: str | None, region: str = "US") -> str | None:
    """The E.164 digits of a caller ID, or None when it is withheld or not a number."""
    try:
        return normalise(callerid or "", region)
    except InvalidNumber:
        return None
