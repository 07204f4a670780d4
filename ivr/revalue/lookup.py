"""Which mobile operator a number belongs to: the revalue line's operator lookup.

A recharge goes to the operator the number is with *now*, which is not always the one its
range was given to (number portability). A real answer comes from the operator's network
(an HLR or number-portability query, sold by lookup providers); without one, the default
:class:`LocalLookup` answers from what this server knows, and says so (``verified`` is
False):

1. the local table of ported numbers (``ivr ported add|list|remove``): ``ported=True``;
2. else phonenumbers' carrier data, the operator the number's range was allocated to
   (``mccmnc`` unknown: "").

Neither can tell whether the phone is reachable (``reachable`` is None: unknown).

Plugging in a provider: write a class with the one coroutine of :class:`NumberLookup`,
raise :class:`LookupFailed` when the provider does not answer (in time), and point the
``revalue_lookup`` setting at a factory: ``revalue_lookup = "myhlr.ivr:make_lookup"``,
where ``make_lookup(settings)`` returns the lookup (as the ``payment_gateway`` setting
names a card processor). :class:`SimulatedHlr` answers from a table, for tests and demos.

Numbers are E.164 with the ``+`` (:func:`parse_msisdn`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import phonenumbers
from phonenumbers import PhoneNumberType, carrier
from sqlalchemy import delete, select

from ..config import ConfigError, Settings, plugin_factory
from ..db import Database, rows_changed
from ..db.models import PortedNumber

# Number types a mobile phone may have: where the numbering plan does not tell mobile
# from fixed numbers (the US, Canada) a number is both.
MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
MAX_OPERATOR = 64


class InvalidMsisdn(ValueError):
    """Not a (mobile) telephone number."""


class LookupFailed(Exception):
    """The lookup provider did not answer (in time), or answered nonsense: the operator is
    not known. Nothing was changed anywhere."""


@dataclass(frozen=True)
class Lookup:
    """Which operator ``msisdn`` is with. ``operator`` "" when not known; ``mccmnc`` the
    operator's network code (MCC and MNC, 5 or 6 digits), "" when not known; ``reachable``
    None when the source cannot tell; ``verified`` True only when the operator's network
    answered (an HLR), never for the local table and carrier data."""

    msisdn: str
    operator: str
    mccmnc: str
    ported: bool
    reachable: bool | None
    verified: bool

    def as_dict(self) -> dict[str, object]:
        return {"msisdn": self.msisdn, "operator": self.operator, "mccmnc": self.mccmnc,
                "ported": self.ported, "reachable": self.reachable,
                "verified": self.verified}


class NumberLookup(Protocol):
    """An operator lookup (HLR / number-portability query)."""

    async def lookup(self, msisdn: str) -> Lookup:
        """The answer for ``msisdn`` (E.164 with ``+``); :class:`LookupFailed` when
        there is none."""
        ...


# --------------------------------------------------------------------------- numbers


def parse_msisdn(text: str, region: str, *, check: str = "mobile") -> str:
    """``text`` as E.164 with the ``+``: international (``+44 7912 345678``, or with
    ``region``'s international prefix) or national in ``region`` (``07912 345678`` in
    GB). Refused (:class:`InvalidMsisdn`, saying why), by ``check``: "mobile", no valid
    number of its country (phonenumbers' metadata) or one that cannot be a mobile's (a
    fixed line, a freephone number...); "valid", no valid number; "none", no number at
    all (to find what was stored under older metadata)."""
    raw = (text or "").strip()
    if not raw or len(raw) > 32:
        raise InvalidMsisdn(f"not a telephone number: {text!r}")
    try:
        number = phonenumbers.parse(raw, region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidMsisdn(f"not a telephone number: {text!r} ({exc})") from None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if check == "none":
        return e164
    if not phonenumbers.is_valid_number(number):
        raise InvalidMsisdn(f"{text!r} ({e164}) is not a valid number (as dialled in "
                            f"{region.upper()}, or give it with +country code)")
    kind = phonenumbers.number_type(number)
    if check == "mobile" and kind not in MOBILE_TYPES:
        raise InvalidMsisdn(f"{e164} is not a mobile number ({_kind_name(kind)})")
    return e164


def as_msisdn(number: str) -> str:
    """An E.164 number with or without its ``+`` (a caller ID's digits) as stored:
    with the ``+``. No check beyond that; :func:`parse_msisdn` checks."""
    digits = number.strip().removeprefix("+")
    return f"+{digits}" if digits.isdigit() else number.strip()


def _kind_name(kind: int) -> str:
    for name, value in vars(PhoneNumberType).items():
        if value == kind and name.isupper():
            return name.lower().replace("_", " ")
    return "unknown type"


def carrier_name(msisdn: str) -> str:
    """The operator phonenumbers' carrier data names for the number's range ("" when it
    has none, for example where ranges are not per operator)."""
    try:
        number = phonenumbers.parse(msisdn, None)
    except phonenumbers.NumberParseException:
        return ""
    return str(carrier.name_for_number(number, "en"))


def check_mccmnc(mccmnc: str) -> str:
    """A network code: 5 or 6 ASCII digits, or "" (not known)."""
    value = mccmnc.strip()
    if value and not (value.isascii() and value.isdigit() and len(value) in (5, 6)):
        raise ValueError(f"mccmnc: {mccmnc!r} is not a network code (5 or 6 digits: "
                         "the MCC, then the MNC)")
    return value


def check_operator(operator: str) -> str:
    value = " ".join(operator.split())
    if not value or len(value) > MAX_OPERATOR:
        raise ValueError(f"operator: give a name of 1 to {MAX_OPERATOR} characters")
    return value


# --------------------------------------------------------------------------- the local table


@dataclass(frozen=True)
class Ported:
    msisdn: str
    operator: str
    mccmnc: str
    updated_at: datetime


def add_ported(db: Database, msisdn: str, operator: str, mccmnc: str = "", *,
               now: datetime | None = None) -> tuple[Ported, bool]:
    """Record that ``msisdn`` (E.164 with ``+``, already checked) is with ``operator``
    now; an existing entry is replaced. Returns the entry and whether it is new."""
    operator, mccmnc = check_operator(operator), check_mccmnc(mccmnc)
    now = now or datetime.now(UTC)
    with db.transaction() as s:
        row = s.get(PortedNumber, msisdn, with_for_update=True)
        new = row is None
        if row is None:
            row = PortedNumber(msisdn=msisdn)
            s.add(row)
        row.operator, row.mccmnc, row.updated_at = operator, mccmnc, now
        s.flush()
        return _ported(row), new


def list_ported(db: Database) -> list[Ported]:
    with db.transaction() as s:
        return [_ported(r) for r in s.scalars(select(PortedNumber)
                                              .order_by(PortedNumber.msisdn))]


def remove_ported(db: Database, msisdn: str) -> bool:
    """Forget ``msisdn``'s entry; False when there was none."""
    with db.transaction() as s:
        return rows_changed(s.execute(delete(PortedNumber)
                                      .where(PortedNumber.msisdn == msisdn))) > 0


def _ported(row: PortedNumber) -> Ported:
    return Ported(row.msisdn, row.operator, row.mccmnc, row.updated_at)


def local_answer(db: Database, msisdn: str) -> Lookup:
    """What :class:`LocalLookup` answers (blocking: one short read)."""
    with db.transaction() as s:
        row = s.get(PortedNumber, msisdn)
        if row is not None:
            return Lookup(msisdn, row.operator, row.mccmnc, True, None, False)
    return Lookup(msisdn, carrier_name(msisdn), "", False, None, False)


# --------------------------------------------------------------------------- lookups


class LocalLookup:
    """The default: the ported-numbers table, else phonenumbers' carrier data. Never
    verified, reachability unknown."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(self, msisdn: str) -> Lookup:
        return await self.db.run(local_answer, self.db, as_msisdn(msisdn))


class SimulatedHlr:
    """An HLR for tests and demos: answers from ``answers`` (msisdn -> :class:`Lookup`, or
    an exception to raise, a :class:`LookupFailed` for a provider that does not answer),
    each made ``verified``. A number not in the table is an unknown subscriber: no
    operator, not reachable. ``delay`` seconds pass before each answer; ``asked`` lists
    the numbers asked, in order."""

    def __init__(self, answers: Mapping[str, Lookup | BaseException] | None = None, *,
                 delay: float = 0.0) -> None:
        self.answers: dict[str, Lookup | BaseException] = {
            as_msisdn(k): v for k, v in (answers or {}).items()}
        self.delay = delay
        self.asked: list[str] = []

    async def lookup(self, msisdn: str) -> Lookup:
        msisdn = as_msisdn(msisdn)
        self.asked.append(msisdn)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers.get(msisdn)
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            return Lookup(msisdn, "", "", False, False, True)
        return replace(answer, msisdn=msisdn, verified=True)


SIMULATED_HLR_FILE = "simulated-hlr.json"


def simulated_hlr(settings: Settings) -> SimulatedHlr:
    """A factory for ``revalue_lookup = "ivr.revalue.lookup:simulated_hlr"`` (demos): a
    :class:`SimulatedHlr` answering from ``data_dir/simulated-hlr.json``, an object
    ``{"+447912345678": {"operator": "O2", "mccmnc": "23410", "ported": false,
    "reachable": true}, ...}`` (no file: every number is an unknown subscriber)."""
    path = Path(settings.data_dir) / SIMULATED_HLR_FILE
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return SimulatedHlr()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: not a JSON object of numbers")
    answers: dict[str, Lookup | BaseException] = {}
    for msisdn, entry in table.items():
        try:
            answers[msisdn] = Lookup(
                as_msisdn(msisdn), str(entry.get("operator", "")),
                check_mccmnc(str(entry.get("mccmnc", ""))), bool(entry.get("ported", False)),
                None if entry.get("reachable") is None else bool(entry["reachable"]), True)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"{path}: {msisdn}: {exc}") from None
    return SimulatedHlr(answers)


def lookup_from_settings(settings: Settings, db: Database) -> NumberLookup:
    """The lookup the ``revalue_lookup`` setting names: "" for :class:`LocalLookup`, or
    "package.module:factory" (a callable taking the settings)."""
    name = settings.revalue_lookup.strip()
    if not name:
        return LocalLookup(db)
    factory = plugin_factory("revalue_lookup", name, "'' (the local lookup)")
    lookup: NumberLookup = factory(settings)
    return lookup
