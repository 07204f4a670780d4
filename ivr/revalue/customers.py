"""The revalue line's registered customers: a mobile number, a first code, how their
operator account is recharged and what pays for it.

A customer is their mobile number (E.164 with ``+``, :func:`~.lookup.parse_msisdn`:
national numbers are read in ``default_region``, fixed lines and freephone numbers are
refused) and a first code of ``revalue_code_length`` digits from the CSPRNG. The code is
shown once, by :func:`add_customer` or :func:`reset_code`; the database keeps only its
salted scrypt hash, like a card's PIN, and nothing prints or logs it again (a customer
appears in logs as the last four digits of their number).

``mode`` is how a recharge is made: ``code`` (a recharge code from the operator's pool,
read out and sent by SMS) or ``direct`` (through the operator's interface). ``pay`` is
what pays for it, always through one of our accounts: ``account`` (its balance) or
``saved-method`` (the payment card saved on it, by a top-up paid by card). A saved card
is needed when a recharge is paid, not when the customer is added.

Checking a first code (:func:`verify`) follows the card log-in of ivr.login, whose
functions it uses: the throttle per caller ID first (THROTTLED, nothing checked), then the
code against its hash outside any transaction (an unknown number against a decoy hash of
the same cost: UNKNOWN, to be answered like WRONG), then the result counted under the
customer's row lock. ``pin_max_failures`` wrong codes in a row lock the customer; every
wrong code counts against the caller ID in ``auth_failures``. A locked customer is told
LOCKED only with the right code (a wrong one is WRONG), so a caller learns nothing about
a number before its right code.

Each function is one operation (the hash, then one transaction; :func:`verify`: up to
three short ones) and takes its database; the results are values.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import Account, AccountStatus, Customer
from ..login import LoginPolicy, decoy_hash, record_failure, secret_ok, throttled
from ..money.accounts import NotFound, create_account, find_account
from ..numbers import normalise_callerid
from ..payments.service import active_method
from ..secrets import hash_pin, random_digits
from .lookup import as_msisdn, parse_msisdn

log = logging.getLogger("ivr.revalue.customers")

MIN_CODE_LENGTH = 4
MAX_CODE_LENGTH = 12
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{1,4})?")


class Mode(enum.StrEnum):
    CODE = "code"  # a recharge code from the operator's pool
    DIRECT = "direct"  # through the operator's interface


class Pay(enum.StrEnum):
    ACCOUNT = "account"  # the account's balance
    SAVED_METHOD = "saved-method"  # the payment card saved on the account


class CustomerRefused(ValueError):
    """A customer the rules refuse (a bad mode, no account to draw on...): nothing done."""


class CustomerExists(CustomerRefused):
    """The number is already a customer's."""


class CodeVerdict(enum.StrEnum):
    OK = "ok"
    WRONG = "wrong"  # counted against the customer and the caller ID
    LOCKED = "locked"  # told only with the right code; nothing counted then
    UNKNOWN = "unknown"  # no such customer: answer it like WRONG
    THROTTLED = "throttled"  # too many failures from this caller ID: nothing checked


@dataclass(frozen=True)
class CustomerInfo:
    """A customer as shown and as the line uses them (never their code or its hash)."""

    id: int
    msisdn: str
    mode: Mode
    pay: Pay
    account_id: int
    account: str  # the account's number
    currency: str
    language: str
    locked: bool
    failures: int  # wrong first codes in a row
    created_at: datetime
    saved_card: str  # last four digits of the account's active payment card, "" if none

    def as_dict(self) -> dict[str, object]:
        return {"msisdn": self.msisdn, "mode": self.mode.value, "pay": self.pay.value,
                "account": self.account, "currency": self.currency,
                "language": self.language, "status": "locked" if self.locked else "active",
                "failures": self.failures, "saved_card": self.saved_card or None,
                "created_at": self.created_at}


@dataclass(frozen=True)
class WithCode:
    """A customer and their new first code: the one time the code exists in clear."""

    customer: CustomerInfo
    code: str
    account_created: bool = False


@dataclass(frozen=True)
class Verification:
    verdict: CodeVerdict
    customer: CustomerInfo | None = None  # set when OK
    failures: int = 0  # the customer's wrong codes in a row after this attempt


# --------------------------------------------------------------------------- admin


def new_first_code(length: int = 6) -> str:
    if not MIN_CODE_LENGTH <= length <= MAX_CODE_LENGTH:
        raise CustomerRefused(f"a first code has {MIN_CODE_LENGTH} to {MAX_CODE_LENGTH} "
                              f"digits, not {length}")
    return random_digits(length)


def add_customer(db: Database, msisdn: str, *, region: str, mode: str = Mode.CODE,
                 pay: str = Pay.ACCOUNT, account: str | None = None,
                 plan: str | None = None, language: str = "en", code_length: int = 6,
                 now: datetime | None = None) -> WithCode:
    """Register ``msisdn`` (as typed; national numbers in ``region``) with a new first
    code, returned once. The customer draws on ``account`` (an existing account's
    number), or on a new account made on ``plan`` (its currency) when ``account`` is
    None. Refused, nothing done: a number that is no mobile's
    (:class:`~.lookup.InvalidMsisdn`), a customer already (:class:`CustomerExists`), an
    unknown mode, way to pay or account, an account that is not active, neither or both
    of ``account`` and ``plan``."""
    number = parse_msisdn(msisdn, region)
    mode_, pay_ = _mode(mode), _pay(pay)
    language = _language(language)
    if (account is None) == (plan is None):
        raise CustomerRefused("give the account the customer draws on (--account), or "
                              "the plan of a new account for them (--plan, or the "
                              "revalue_plan setting), not both")
    code = new_first_code(code_length)
    digest = hash_pin(code)  # ~60 ms of scrypt, before any transaction
    now = now or datetime.now(UTC)
    try:
        with db.transaction() as s:
            if s.scalar(select(Customer.id).where(Customer.msisdn == number)) is not None:
                raise CustomerExists(f"{number} is a customer already (ivr customers show "
                                     f"{number}; a new first code: ivr customers reset-code)")
            if account is not None:
                owner = find_account(s, account)
                if owner.status is not AccountStatus.ACTIVE:
                    raise CustomerRefused(f"account {owner.number} is "
                                          f"{owner.status.value}: it cannot pay")
            else:
                assert plan is not None
                owner = create_account(s, plan, name=f"revalue {number}")
            row = Customer(msisdn=number, code_hash=digest, mode=mode_.value,
                           pay=pay_.value, account_id=owner.id, language=language,
                           failures=0, locked=False, created_at=now)
            s.add(row)
            s.flush()
            info = _info(s, row, owner)
    except IntegrityError:  # added at the same moment by someone else
        raise CustomerExists(f"{number} is a customer already") from None
    log.info("customer ...%s added (mode %s, pays by %s)", number[-4:], mode_, pay_)
    return WithCode(info, code, account_created=account is None)


def list_customers(db: Database) -> list[CustomerInfo]:
    with db.transaction() as s:
        rows = s.scalars(select(Customer).order_by(Customer.msisdn)).all()
        return [_info(s, r) for r in rows]


def get_customer(db: Database, msisdn: str, *, region: str) -> CustomerInfo:
    """The customer with this number (as typed; :class:`NotFound` if none)."""
    number = _typed(msisdn, region)
    with db.transaction() as s:
        return _info(s, _find(s, number))


def customer_for_callerid(db: Database, callerid: str | None, *,
                          region: str) -> CustomerInfo | None:
    """The customer a caller ID is (as Asterisk gives it), or None: withheld, not a
    number, or no customer's. Locked customers too: the first code decides."""
    digits = normalise_callerid(callerid, region)
    if digits is None:
        return None
    with db.transaction() as s:
        row = s.scalar(select(Customer).where(Customer.msisdn == f"+{digits}"))
        return _info(s, row) if row is not None else None


def set_locked(db: Database, msisdn: str, locked: bool, *, region: str) -> CustomerInfo:
    """Lock a customer (no first code is accepted), or unlock them (their count of wrong
    codes starts again)."""
    number = _typed(msisdn, region)
    with db.transaction() as s:
        row = _find(s, number, lock=True)
        row.locked = locked
        if not locked:
            row.failures = 0
        s.flush()
        info = _info(s, row)
    log.info("customer ...%s %s", number[-4:], "locked" if locked else "unlocked")
    return info


def reset_code(db: Database, msisdn: str, *, region: str, code_length: int = 6) -> WithCode:
    """A new first code for the customer, returned once; the old one no longer works and
    the count of wrong codes starts again. A locked customer stays locked (unlock them
    with :func:`set_locked`)."""
    number = _typed(msisdn, region)
    code = new_first_code(code_length)
    digest = hash_pin(code)
    with db.transaction() as s:
        row = _find(s, number, lock=True)
        row.code_hash, row.failures = digest, 0
        s.flush()
        info = _info(s, row)
    log.info("customer ...%s: new first code", number[-4:])
    return WithCode(info, code)


# --------------------------------------------------------------------------- the line


def verify(db: Database, msisdn: str, code: str, callerid: str | None,
           policy: LoginPolicy, *, now: datetime | None = None) -> Verification:
    """Check a customer's first code (``msisdn`` E.164, with or without its ``+``: the
    caller ID, or the number the caller keyed in, normalised). See the module's
    docstring for the verdicts; the caller is to hear UNKNOWN as WRONG."""
    now = now or datetime.now(UTC)
    if throttled(db, callerid, policy, now=now):
        return Verification(CodeVerdict.THROTTLED)
    number = as_msisdn(msisdn) if msisdn else ""
    with db.transaction() as s:
        row = s.scalar(select(Customer).where(Customer.msisdn == number)) if number else None
        customer_id, stored = ((row.id, row.code_hash) if row is not None
                               else (None, decoy_hash()))
    ok = secret_ok(code, stored)  # outside any transaction: scrypt holds no lock
    with db.transaction() as s:
        row = (s.get(Customer, customer_id, with_for_update=True, populate_existing=True)
               if customer_id is not None else None)
        if row is None:
            record_failure(s, callerid, None, now)
            return Verification(CodeVerdict.UNKNOWN)
        if ok:
            if row.locked:
                return Verification(CodeVerdict.LOCKED, failures=row.failures)
            row.failures = 0
            s.flush()
            return Verification(CodeVerdict.OK, _info(s, row))
        row.failures += 1
        record_failure(s, callerid, None, now)
        if not row.locked and row.failures >= policy.pin_max_failures:
            row.locked = True
            log.warning("customer ...%s locked after %d wrong first codes", row.msisdn[-4:],
                        row.failures)
        return Verification(CodeVerdict.WRONG, failures=row.failures)


# --------------------------------------------------------------------------- parts


def _mode(value: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise CustomerRefused(f"mode: {value!r} is neither 'code' nor 'direct'") from None


def _pay(value: str) -> Pay:
    try:
        return Pay(value)
    except ValueError:
        raise CustomerRefused(f"pay: {value!r} is neither 'account' nor "
                              "'saved-method'") from None


def _language(value: str) -> str:
    if not _LANGUAGE.fullmatch(value or ""):
        raise CustomerRefused(f"language: {value!r} is not a language code (en, fr, pt-BR)")
    return value


def _typed(msisdn: str, region: str) -> str:
    """A customer's number as an operator types it; not checked to be valid, so a
    customer registered under older metadata can still be found."""
    return parse_msisdn(msisdn, region, check="none")


def _find(s: Session, number: str, *, lock: bool = False) -> Customer:
    query = select(Customer).where(Customer.msisdn == number)
    if lock:
        query = query.with_for_update()
    row = s.scalar(query)
    if row is None:
        raise NotFound(f"no customer {number}")
    return row


def _info(s: Session, row: Customer, account: Account | None = None) -> CustomerInfo:
    account = account or s.get(Account, row.account_id)
    assert account is not None
    method = active_method(s, account.id)
    return CustomerInfo(row.id, row.msisdn, Mode(row.mode), Pay(row.pay), account.id,
                        account.number, account.currency, row.language, row.locked,
                        row.failures, row.created_at, method.last4 if method else "")
