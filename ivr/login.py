"""Who is calling: a card recognised by caller ID (pinless), or a card number and PIN.

Blocking functions; the access flow runs them in a worker thread. A card number and its
PIN are checked together (:func:`log_in`), so a caller learns nothing about a number
before its right PIN: an unknown number and a wrong PIN are answered alike, after the
same work (a PIN hash is checked for an unknown number too), and a card's state (locked,
expired) is told only with the right PIN. Guessing is slowed twice: consecutive wrong PINs
lock the card (``pin_max_failures``), and wrong PINs or card numbers from one caller ID,
on any cards, are counted in ``auth_failures``; past ``callerid_max_failures`` within
``callerid_failure_window`` seconds that caller ID is refused until the window has
passed. Neither card numbers nor PINs are logged: a card appears in logs as its last
four digits.

A card's PIN is checked against its keyed hash under the PIN key ring handed in with the
policy (:attr:`LoginPolicy.pin_keys`, ``App.pin_keys``; ivr.secrets.PinKeys); a hash of
an older kind (scrypt) or of an older key is re-keyed to the newest key in the
transaction that records the successful log-in.

The revalue line's customers (ivr.revalue.customers) share the caller-ID count, the
throttle and the hash checks (:func:`record_failure`, :func:`throttled`,
:func:`secret_ok`, :func:`decoy_hash`): a caller guessing there is slowed here too.
"""

from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, joinedload

from .config import Settings
from .db import Database, rows_changed
from .db.models import Account, AccountStatus, AuthFailure, Card, CardStatus
from .money.accounts import count_pin_result, lock_card
from .money.ledger import utcnow
from .secrets import PinKeyError, PinKeys, hash_pin, is_keyed_hash, pin_check

log = logging.getLogger("ivr.login")

ANONYMOUS = "anonymous"


class Verdict(enum.StrEnum):
    OK = "ok"
    UNKNOWN_CARD = "unknown_card"
    WRONG_PIN = "wrong_pin"
    LOCKED = "locked"  # by wrong PINs or an operator; blocked cards too
    EXPIRED = "expired"
    EMPTY = "empty"  # logged in, but nothing left to call with
    THROTTLED = "throttled"  # too many failures from this caller ID


@dataclass(frozen=True)
class Cardholder:
    """A logged-in card, with what its account can spend now."""

    card_id: int
    account_id: int
    last4: str
    available: Decimal  # balance less what live calls hold
    currency: str


@dataclass(frozen=True)
class LoginResult:
    verdict: Verdict
    card_id: int | None = None
    holder: Cardholder | None = None  # set when the card may be used (OK or EMPTY)


@dataclass(frozen=True)
class LoginPolicy:
    pin_max_failures: int = 5
    callerid_max_failures: int = 10
    callerid_failure_window: int = 3600  # seconds
    # The PIN key ring (App.pin_keys): card PINs' keyed hashes are checked under it and
    # older hashes re-keyed to its newest key. Without it only older (scrypt) hashes
    # can be checked, and are not re-keyed.
    pin_keys: PinKeys | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, pin_keys: PinKeys | None = None) -> LoginPolicy:
        return cls(
            settings.pin_max_failures,
            settings.callerid_max_failures,
            settings.callerid_failure_window,
            pin_keys,
        )


def pinless(
    db: Database, callerid: str | None, *, today: datetime | None = None
) -> LoginResult | None:
    """The card registered to this caller ID (E.164 digits), or None."""
    if not callerid:
        return None
    with db.reading() as s:
        return _pinless(s, callerid, (today or utcnow()).date())


def throttled(db: Database, callerid: str | None, policy: LoginPolicy,
              *, now: datetime | None = None) -> bool:
    """Too many failed log-ins from this caller ID lately."""
    with db.reading() as s:
        return _throttled(s, callerid, policy, now or utcnow())


@dataclass(frozen=True)
class Arrival:
    """What a call's caller ID says before anything is asked: its registered card's
    log-in (pinless), else whether log-ins from it are throttled."""

    pinless: LoginResult | None
    throttled: bool


def arrival(db: Database, callerid: str | None, policy: LoginPolicy,
            *, now: datetime | None = None) -> Arrival:
    """:func:`pinless`, then (without a registered card) :func:`throttled`, in one read:
    one database step for a call's start instead of two."""
    now = now or utcnow()
    with db.reading() as s:
        found = _pinless(s, callerid, now.date()) if callerid else None
        if found is not None:
            return Arrival(found, False)
        return Arrival(None, _throttled(s, callerid, policy, now))


def _pinless(s: Session, callerid: str, today: date) -> LoginResult | None:
    card = s.scalar(_with_account.where(Card.callerid == callerid))
    return None if card is None else _usable(s, card, today)


def _throttled(s: Session, callerid: str | None, policy: LoginPolicy, now: datetime) -> bool:
    since = now - timedelta(seconds=policy.callerid_failure_window)
    count = s.scalar(
        select(func.count(AuthFailure.id)).where(
            AuthFailure.callerid == (callerid or ANONYMOUS), AuthFailure.at > since
        )
    )
    return bool(count and count >= policy.callerid_max_failures)


def log_in(db: Database, number: str, pin: str, callerid: str | None, policy: LoginPolicy,
           *, now: datetime | None = None) -> LoginResult:
    """Check a typed card number and PIN together.

    A wrong PIN is WRONG_PIN whatever the card's state (the one that locks the card too):
    it counts against the card and the caller ID. An unknown number is UNKNOWN_CARD after
    the same work, a PIN checked against a hash of the same cost, and counts against the
    caller ID only; the caller is to hear the same refusal for both. With the right PIN a
    card that cannot call is LOCKED or EXPIRED (nothing counted), else OK or EMPTY.
    """
    now = now or utcnow()
    with db.reading() as s:
        card = s.scalar(_with_account.where(Card.number == number)) if number else None
        card_id, stored = ((card.id, card.pin_hash) if card is not None
                           else (None, decoy_hash(policy.pin_keys)))
        ok = card_pin_ok(pin, stored, number, policy.pin_keys)
        if ok and card is not None and card.failed_pins == 0 and policy.pin_keys is not None \
                and policy.pin_keys.is_current(stored):
            # The usual log-in: the right PIN under the newest key, nothing to count or
            # re-key. The PIN took microseconds to check, in the same snapshot as the
            # card's state: no write (and on SQLite no write lock) for it.
            return _usable(s, card, now.date())
    if card_id is None:
        with db.transaction() as s:
            record_failure(s, callerid, None, now)
        return LoginResult(Verdict.UNKNOWN_CARD)
    return _count_pin(db, card_id, ok, callerid, policy, now, tell_state=False,
                      rekey=(pin, stored))


def verify_pin(db: Database, card_id: int, pin: str, callerid: str | None, policy: LoginPolicy,
               *, now: datetime | None = None) -> LoginResult:
    """Check the PIN of a card already identified (a logged-in caller confirming a
    payment). A wrong one counts against the card and the caller ID; a right one resets
    the card's count. A card that cannot call is told so (its PIN is not checked).

    The hash is checked between two short transactions, so an older hash's ~60 ms of
    scrypt never holds a database lock. The result is counted under the card's row lock (SELECT ...
    FOR UPDATE; on SQLite the write lock), so concurrent wrong PINs are counted one after
    the other: exactly ``pin_max_failures - 1`` of them are told WRONG_PIN, then LOCKED.
    The card's state is checked again under that lock: a card locked while this PIN was
    being checked stays locked, even when the PIN was right (LOCKED, nothing counted).
    """
    now = now or utcnow()
    with db.transaction() as s:
        card = s.get(Card, card_id)
        if card is None:
            return LoginResult(Verdict.UNKNOWN_CARD)
        state = _card_state(s, card, now.date())
        if state is not None:
            return LoginResult(state, card.id)
        stored, number = card.pin_hash, card.number
    ok = card_pin_ok(pin, stored, number, policy.pin_keys)
    return _count_pin(db, card_id, ok, callerid, policy, now, tell_state=True,
                      rekey=(pin, stored))


def holder(db: Database, card_id: int) -> Cardholder:
    """The card's account as it is now (after a call, for the new balance)."""
    with db.reading() as s:
        card = s.scalar(_with_account.where(Card.id == card_id))
        if card is None:
            raise LookupError(f"no card {card_id}")
        return _holder(card, card.account)


# A card with its account, in one query (the call flow reads both at each step).
_with_account = select(Card).options(joinedload(Card.account))


def forget_failures(db: Database, older_than: datetime) -> int:
    """Housekeeping: drop failure records past any window."""
    with db.transaction() as s:
        return rows_changed(
            s.execute(delete(AuthFailure).where(AuthFailure.at < older_than)))


# --------------------------------------------------------------------------- helpers


def secret_ok(pin: str, stored: str) -> bool:
    """A typed secret (a card's PIN, a revalue customer's first code) against its
    stored hash; an empty one is wrong without a check."""
    return bool(pin) and pin_check(pin, stored)


def card_pin_ok(pin: str, stored: str, number: str, keys: PinKeys | None) -> bool:
    """A typed card PIN against the card's stored hash: keyed (under ``keys``, over the
    card's ``number``) or older scrypt (:func:`secret_ok`). An empty PIN is wrong."""
    if not is_keyed_hash(stored):
        return secret_ok(pin, stored)
    if keys is None:
        raise PinKeyError("a card's keyed PIN hash was checked without the PIN key ring "
                          "(LoginPolicy.pin_keys)")
    if keys.key(stored.split("$")[1]) is None:
        log.error("card ...%s: its PIN key is not in the key ring (restore pin.key)",
                  number[-4:])
    return bool(pin) and keys.verify(pin, stored, number)


def decoy_hash(keys: PinKeys | None = None) -> str:
    """A PIN hash of the current kind that no typed PIN is checked against in earnest:
    an unknown card number's PIN (or, without ``keys``, an unknown customer's first
    code) costs what a real one does. Under ``keys``, a keyed hash of the newest key."""
    if keys is not None:
        return keys.hash("0000", "decoy")
    return _scrypt_decoy()


@functools.cache
def _scrypt_decoy() -> str:
    return hash_pin("0000")


def _count_pin(db: Database, card_id: int, ok: bool, callerid: str | None,
               policy: LoginPolicy, now: datetime, *, tell_state: bool,
               rekey: tuple[str, str]) -> LoginResult:
    """Count a checked PIN under the card's row lock. A card that cannot call is told so
    after a right PIN (nothing counted), and after a wrong one only when ``tell_state``;
    otherwise a wrong PIN is WRONG_PIN and counted, whatever the card's state. A right
    PIN whose hash (``rekey``: the PIN and the hash it was checked against) is older
    than the newest key is re-keyed here, in the transaction that records the success,
    unless the hash changed meanwhile."""
    with db.transaction() as s:
        card = lock_card(s, card_id)
        state = _card_state(s, card, now.date())  # maybe locked meanwhile by another call
        if state is not None and (ok or tell_state):
            return LoginResult(state, card.id)
        count_pin_result(card, ok, policy.pin_max_failures)
        if ok:
            pin, checked = rekey
            keys = policy.pin_keys
            if keys is not None and not keys.is_current(checked) \
                    and card.pin_hash == checked:
                card.pin_hash = keys.hash(pin, card.number)
            return _usable(s, card, now.date())
        record_failure(s, callerid, card.id, now)
        if state is None and card.status is CardStatus.LOCKED:
            log.warning("card ...%s locked after %d wrong PINs", card.number[-4:],
                        card.failed_pins)
            if tell_state:
                return LoginResult(Verdict.LOCKED, card.id)
        return LoginResult(Verdict.WRONG_PIN, card.id)


def _card_state(s: Session, card: Card, today: date) -> Verdict | None:
    """Why a card cannot log in, or None."""
    if card.status in (CardStatus.LOCKED, CardStatus.BLOCKED):
        return Verdict.LOCKED
    if card.status is CardStatus.EXPIRED or (card.expires_on and card.expires_on < today):
        return Verdict.EXPIRED
    if card.account.status is not AccountStatus.ACTIVE:
        return Verdict.LOCKED
    return None


def _usable(s: Session, card: Card, today: date) -> LoginResult:
    state = _card_state(s, card, today)
    if state is not None:
        return LoginResult(state, card.id)
    info = _holder(card, card.account)
    return LoginResult(Verdict.OK if info.available > 0 else Verdict.EMPTY, card.id, info)


def _holder(card: Card, account: Account) -> Cardholder:
    return Cardholder(card.id, account.id, card.number[-4:], account.balance - account.reserved,
                      account.currency)


def record_failure(s: Session, callerid: str | None, card_id: int | None,
                   now: datetime) -> None:
    """Count a failed log-in (a wrong PIN, card number or first code) against the
    caller ID, for :func:`throttled`; ``card_id`` when a card's PIN was wrong."""
    s.add(AuthFailure(callerid=callerid or ANONYMOUS, card_id=card_id, at=now))
