"""Accounts and calling cards: creation, batches, look-up, lock and unlock, and the
settings an operator gives them (a card's caller ID, an account's auto-recharge and
low-balance notices) with the rules they must follow."""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import Account, AccountStatus, Card, CardStatus, EntryKind, LedgerEntry
from ..db.types import display
from ..secrets import hash_pin, new_card_number, new_pin
from .ledger import LedgerError, credit
from .rates_store import get_plan


class NotFound(LookupError):
    """No such account or card."""


class SettingRefused(ValueError):
    """A setting the rules refuse (an auto-recharge that could never fire, a notice to
    something that is no address...). Its message names the settings as the operator
    gives them (``--threshold``), as the operator is who reads it."""


class CallerIdTaken(SettingRefused):
    """The caller ID is another card's: a caller ID logs in to one card only."""


def create_account(
    session: Session,
    plan: str,
    *,
    number: str | None = None,
    name: str = "",
    balance: Decimal = Decimal(0),
) -> Account:
    """A new account on ``plan`` (its currency), with an opening top-up when ``balance``."""
    plan_row = get_plan(session, plan)
    number = number or new_card_number(10, prefix="9")
    if session.scalar(select(Account.id).where(Account.number == number)) is not None:
        raise LedgerError(f"account {number} already exists")
    account = Account(
        number=number,
        name=name,
        currency=plan_row.currency,
        plan_id=plan_row.id,
        status=AccountStatus.ACTIVE,
        balance=Decimal(0),
        reserved=Decimal(0),
        created_at=datetime.now(UTC),
    )
    session.add(account)
    session.flush()
    if balance:
        credit(session, account.id, balance, EntryKind.TOPUP, ref=f"opening:{number}",
               note="opening balance")
    return account


def find_account(session: Session, number: str) -> Account:
    account = session.scalar(select(Account).where(Account.number == number))
    if account is None:
        raise NotFound(f"no account {number}")
    return account


def find_card(session: Session, number: str) -> Card:
    card = session.scalar(select(Card).where(Card.number == number))
    if card is None:
        raise NotFound(f"no card ending {number[-4:]}")
    return card


def history(session: Session, account: Account, limit: int = 50) -> Sequence[LedgerEntry]:
    return session.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.account_id == account.id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit)
    ).all()


@dataclass(frozen=True)
class IssuedCard:
    number: str
    pin: str
    account: str
    balance: Decimal
    currency: str
    expires_on: date | None
    decimals: int = 2  # the plan's: the balance is written as everywhere (5 -> 5.00)


def issue_cards(
    db: Database,
    plan: str,
    count: int,
    balance: Decimal,
    out: Path,
    *,
    account: str | None = None,
    pin_length: int = 4,
    number_length: int = 12,
    expires_on: date | None = None,
    batch: str | None = None,
    control: bool = False,
) -> list[IssuedCard]:
    """Issue ``count`` cards; each gets its own account with ``balance``, or all join
    ``account`` (a shared account; ``balance`` is then ignored). The CSV written to ``out``
    (mode 0600) is the only place the PINs exist in clear."""
    if count < 1 or count > 100_000:
        raise ValueError("count must be between 1 and 100000")
    if balance < 0:
        raise ValueError("balance cannot be negative")
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite a card file")
    batch = batch or f"B{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    pins = [new_pin(pin_length) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # scrypt frees the GIL
        hashes = list(pool.map(hash_pin, pins))
    issued: list[IssuedCard] = []
    with db.transaction() as s:
        shared = find_account(s, account) if account else None
        for i in range(count):
            owner = shared or create_account(s, plan, balance=balance)
            number = _unused_card_number(s, number_length)
            s.add(Card(
                number=number,
                pin_hash=hashes[i],
                status=CardStatus.ACTIVE,
                expires_on=expires_on,
                batch=batch,
                account_id=owner.id,
                is_control=control and i == 0,
                failed_pins=0,
                created_at=datetime.now(UTC),
            ))
            issued.append(IssuedCard(number, pins[i], owner.number, owner.balance,
                                     owner.currency, expires_on, owner.plan.decimals))
        s.flush()
        _write_card_file(out, issued)
    return issued


def _unused_card_number(session: Session, length: int) -> str:
    for _ in range(20):
        number = new_card_number(length)
        if session.scalar(select(Card.id).where(Card.number == number)) is None:
            return number
    raise RuntimeError("could not find an unused card number; use a longer --number-length")


def _write_card_file(out: Path, cards: list[IssuedCard]) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["card_number", "pin", "account", "balance", "currency", "expires_on"])
        for c in cards:
            # As every output shows an amount (ivr.cli.common.money): the plan's
            # decimals up to cents.
            writer.writerow([c.number, c.pin, c.account,
                             display(c.balance, min(c.decimals, 2)),
                             c.currency,
                             c.expires_on.isoformat() if c.expires_on else ""])


def set_card_status(session: Session, number: str, status: CardStatus) -> Card:
    card = find_card(session, number)
    if card.status is CardStatus.BLOCKED and status is not CardStatus.BLOCKED:
        raise LedgerError("a blocked card stays blocked")
    card.status = status
    if status is CardStatus.ACTIVE:
        card.failed_pins = 0
    return card


def lock_card(session: Session, card_id: int) -> Card:
    """Load a card for update (row lock on PostgreSQL; SQLite holds the write lock), as
    committed by any transaction that held the lock before."""
    card = session.get(Card, card_id, with_for_update=True, populate_existing=True)
    if card is None:
        raise NotFound(f"no card {card_id}")
    return card


def count_pin_result(card: Card, ok: bool, max_failures: int = 5) -> None:
    """A right PIN resets the card's count; a wrong one adds to it and may lock it.
    ``card`` must be locked (:func:`lock_card`), or concurrent counts lose updates."""
    if ok:
        card.failed_pins = 0
        return
    card.failed_pins += 1
    if card.failed_pins >= max_failures and card.status is CardStatus.ACTIVE:
        card.status = CardStatus.LOCKED


# --------------------------------------------------------------------------- settings


def set_card_callerid(session: Session, card: Card, callerid: str | None,
                      region: str) -> Card:
    """Register the caller ID ``card`` logs in from without its PIN (``callerid`` as
    dialled in ``region`` or with a leading +, kept as the E.164 digits login.pinless
    looks up), or with None remove it. A caller ID another card has is refused
    (:class:`CallerIdTaken`), as pinless log-in must find one card for it."""
    from ..numbers import normalise_callerid

    if callerid is None:
        card.callerid = None
        return card
    number = normalise_callerid(callerid, region)
    if number is None:
        raise ValueError(f"not a caller ID: {callerid!r} (a telephone number, as "
                         f"dialled in {region} or with a leading +)")
    other = session.scalar(select(Card).where(Card.callerid == number, Card.id != card.id))
    if other is not None:
        raise CallerIdTaken(f"caller ID {number} is already registered to card "
                            f"{other.number}; clear it there first (ivr cards set-callerid "
                            f"{other.number} --clear)")
    card.callerid = number
    return card


def set_auto_recharge(account: Account, threshold: Decimal | None, amount: Decimal | None,
                      daily_cap: Decimal | None = None) -> None:
    """Charge ``amount`` to the account's saved card when its balance falls below
    ``threshold`` (ivr.payments.autorecharge), at most ``daily_cap`` a UTC day (None: no cap); all
    three None turns auto-recharge off. Refused (:class:`SettingRefused`): a threshold
    without an amount, a negative threshold, an amount that is not positive, and a cap
    below one recharge (auto-recharge could never fire)."""
    if threshold is None and amount is None and daily_cap is None:
        account.auto_recharge_threshold = None
        account.auto_recharge_amount = None
        account.auto_recharge_daily_cap = None
        return
    if threshold is None or amount is None:
        raise SettingRefused("auto-recharge needs both --threshold and --amount")
    if threshold < 0:
        raise SettingRefused("--threshold cannot be negative")
    if amount <= 0:
        raise SettingRefused("--amount must be positive")
    if daily_cap is not None and daily_cap < amount:
        raise SettingRefused(f"--daily-cap {daily_cap} is below one recharge of {amount}: "
                             "auto-recharge could never fire")
    account.auto_recharge_threshold = threshold
    account.auto_recharge_amount = amount
    account.auto_recharge_daily_cap = daily_cap


def set_low_balance_notice(session: Session, account: Account, *,
                           below: Decimal | None = None, email: str | None = None,
                           sms: str | None = None, region: str = "US") -> None:
    """Send a notice (ivr.money.notify) to ``email`` and ``sms`` when the balance falls below
    ``below``. None leaves a setting as it is; an empty ``email`` or ``sms`` removes it.
    The SMS number is kept as E.164 digits (``sms`` as dialled in ``region`` or with a
    leading +). A new level re-arms a notice already sent if the balance is back above
    it. Refused (:class:`SettingRefused`), nothing changed: an e-mail address without
    "@", something that is no telephone number, a negative level."""
    from ..numbers import normalise_callerid
    from .notify import reset_notice_if_topped_up

    if email and "@" not in email:
        raise SettingRefused(f"not an e-mail address: {email!r}")
    if below is not None and below < 0:
        raise SettingRefused("--below cannot be negative")
    sms_number = sms
    if sms:
        sms_number = normalise_callerid(sms, region)
        if sms_number is None:
            raise SettingRefused(f"not a telephone number: {sms!r}")
    if email is not None:
        account.email = email or None
    if sms is not None:
        account.sms_number = sms_number or None
    if below is not None:
        account.low_balance_notice = below
        reset_notice_if_topped_up(session, account)


def low_balance_notice_off(account: Account) -> None:
    """No more low-balance notices (the e-mail address and SMS number are kept)."""
    account.low_balance_notice = None
    account.low_balance_notified_at = None
