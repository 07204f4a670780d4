"""Telephone numbers from a caller's keypad: filtered, then normalised to E.164.

Every number that reaches rating or Dial has passed :func:`normalise`: digits only, in
E.164 form without the ``+`` (``442079460000``), so a caller can never put dialplan
syntax (``&``, ``,``, ``/``) into a Dial string, and ``011 44 ...``, ``+44 ...`` and a
national ``0207 ...`` all rate the same. The parsing is Google's libphonenumber
(``phonenumbers``) in the operator's default region. A number is accepted when its length
is possible for its country; full validity is not required, because numbering plans change
faster than the library's metadata and the rate deck decides what may be called.

A caller ID is read the same way, but only when it is written like a number
(:func:`plausible_callerid`); anything else is treated as withheld.
"""

from __future__ import annotations

import re

import phonenumbers

MAX_DIGITS = 20  # longest entry read from the keypad
E164_MAX_DIGITS = 15  # country code included (ITU-T E.164)
MAX_CALLERID_CHARS = 32  # a caller ID with its separators, e.g. "+1 (212) 555-1234"

# A caller ID that looks like a telephone number: digits and separators only.
_CALLERID = re.compile(r"\+?[ ().\-]*[0-9][0-9 ().\-]*")


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
    return _e164(keypad_digits(typed), region)


def plausible_callerid(callerid: str | None) -> bool:
    """Whether a caller ID is written like a telephone number: an optional leading ``+``,
    then ASCII digits (at least one) and the usual separators (space, ``-``, ``.``,
    ``(``, ``)``), at most :data:`MAX_CALLERID_CHARS` characters. Anything else (letters,
    ``&``, ``,``, ``/``, ``@``, ``;``, ``#``, ``*``, a ``+`` inside, other scripts'
    digits) is no number, however many digits it holds."""
    raw = (callerid or "").strip()
    return len(raw) <= MAX_CALLERID_CHARS and _CALLERID.fullmatch(raw) is not None


def normalise_callerid(callerid: str | None, region: str = "US") -> str | None:
    """The E.164 digits of a caller ID, or None when it is withheld or not a number.

    Only a :func:`plausible_callerid` is read: ``1555,0001&Local/123@host`` is treated as
    withheld, never as its digits ``15550001123``, which could be another caller's
    registered caller ID. Unlike a keypad, a caller ID may come in international form
    (``+442079460000``): its ``+`` is honoured, so a foreign caller ID is never read as a
    national number of ``region``.
    """
    raw = (callerid or "").strip()
    if not plausible_callerid(raw):
        return None
    try:
        return _e164(keypad_digits(raw), region, international=raw.startswith("+"))
    except InvalidNumber:
        return None


def _e164(digits: str, region: str, *, international: bool = False) -> str:
    if not digits:
        raise InvalidNumber("no digits")
    if len(digits) > MAX_DIGITS:
        raise InvalidNumber(f"{len(digits)} digits is too long")
    try:
        parsed = phonenumbers.parse(("+" if international else "") + digits, region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(str(exc)) from None
    # IS_POSSIBLE only: a number possible for local dialling alone (a US 7-digit number)
    # has no E.164 form, since its area code is missing.
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidNumber(f"not a possible number in country code {parsed.country_code}")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    e164 = e164.removeprefix("+")
    # The library's metadata allows some national numbers (extension dialling in DE, JP,
    # ...) past E.164's length; no international trunk takes them.
    if len(e164) > E164_MAX_DIGITS:
        raise InvalidNumber(f"{len(e164)} digits is longer than E.164 allows")
    return e164
