"""Accounts and calling cards: creation, batches, look-up, lock and unlock."""

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

from .cli_common import money
from .db import Database
from .db.models import Account, AccountStatus, Card, CardStatus, EntryKind, LedgerEntry
from .ledger import LedgerError, credit
from .rates_store import get_plan
from .secrets import hash_pin, new_card_number, new_pin, verify_pin


class NotFound(LookupError):
    """No such account or card."""


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
            writer.writerow([c.number, c.pin, c.account, money(c.balance, c.decimals),
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


def check_pin(session: Session, card: Card, pin: str, max_failures: int = 5) -> bool:
    """Verify a PIN; consecutive failures lock the card, a success resets the count.
    The hash is checked before the card is locked for the count."""
    ok = verify_pin(pin, card.pin_hash)
    count_pin_result(lock_card(session, card.id), ok, max_failures)
    return ok


def count_pin_result(card: Card, ok: bool, max_failures: int = 5) -> None:
    """A right PIN resets the card's count; a wrong one adds to it and may lock it.
    ``card`` must be locked (:func:`lock_card`), or concurrent counts lose updates."""
    if ok:
        card.failed_pins = 0
        return
    card.failed_pins += 1
    if card.failed_pins >= max_failures and card.status is CardStatus.ACTIVE:
        card.status = CardStatus.LOCKED
