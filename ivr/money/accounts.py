"""Accounts and calling cards: creation, batches, look-up, lock and unlock, operator
adjustments, and the settings an operator gives them (a card's caller ID, an account's
auto-recharge and low-balance notices) with the rules they must follow. The CLI and the
web console both call these; amounts typed by an operator are read by
:func:`read_amount` and held to their plan's decimals by :func:`check_decimals`."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    case,
    distinct,
    exists,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import (
    Account,
    AccountStatus,
    Card,
    CardStatus,
    Cdr,
    EntryKind,
    LedgerEntry,
    RatingPlan,
)
from ..db.types import MONEY_SCALE, as_utc, display
from ..secrets import PinKeys, hash_pin, new_card_number, random_digits, with_check_digit
from .ledger import LedgerError, credit, open_balances
from .rates_store import get_plan


class NotFound(LookupError):
    """No such account or card."""


class SettingRefused(ValueError):
    """A setting the rules refuse (an auto-recharge that could never fire, a notice to
    something that is no address...). Its message names the settings as the operator
    gives them (``--threshold``), as the operator is who reads it; ``field`` names the
    setting for a form (``threshold``), None when it is about several."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class IssueRefused(SettingRefused):
    """Card batch options the rules refuse; ``code`` tells the CLI's refusal apart
    (``missing_option``, ``conflicting_options``, ``refused``)."""

    def __init__(self, message: str, code: str = "refused", field: str | None = None) -> None:
        super().__init__(message, field)
        self.code = code


class BadAmount(ValueError):
    """An amount typed by an operator that cannot be taken: not a plain decimal, out of
    range, or finer than its plan's (currency's) smallest unit."""


# --------------------------------------------------------------------------- amounts

# Every amount an operator types (command line or console) is read here: plain ASCII
# decimals (no exponent, no digits of other scripts, which Python's Decimal would take),
# below a trillion, at most the 6 decimals the database keeps.
_AMOUNT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_AMOUNT = Decimal(10) ** 12


def read_amount(text: str, what: str = "amount") -> Decimal:
    """An amount typed by the operator, exactly; :class:`BadAmount` (one line) if it is
    not a plain decimal like 12.50, is out of range or has more than 6 decimals."""
    if not _AMOUNT.fullmatch(text.strip()):
        raise BadAmount(f"{what}: not an amount: {text!r} (digits with an optional "
                        "decimal point, like 12.50)")
    value = Decimal(text.strip())
    if abs(value) >= MAX_AMOUNT:
        raise BadAmount(f"{what}: {text} is out of range (below {MAX_AMOUNT:,})")
    if value != value.quantize(Decimal(1).scaleb(-MONEY_SCALE)):
        raise BadAmount(f"{what}: {text} has more than {MONEY_SCALE} decimals")
    return value


def read_optional_amount(text: str | None, what: str = "amount") -> Decimal | None:
    """:func:`read_amount`, or None for nothing typed."""
    if text is None or not text.strip():
        return None
    return read_amount(text, what)


def check_decimals(amount: Decimal, decimals: int, whose: str, what: str = "amount") -> None:
    """Refuse (:class:`BadAmount`) an amount finer than its plan's smallest unit."""
    if amount != amount.quantize(Decimal(1).scaleb(-decimals)):
        raise BadAmount(f"{what}: {amount} has more decimals than {whose} allows "
                        f"({decimals})")


def _plan_of(account: Account) -> str:
    return f"the account's plan ({account.plan.name}, {account.currency})"


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


def history(session: Session, account: Account, limit: int = 50,
            before: int | None = None) -> Sequence[LedgerEntry]:
    """The account's ledger, newest first; ``before``: an entry id (the next page)."""
    query = select(LedgerEntry).where(LedgerEntry.account_id == account.id)
    if before is not None:
        query = query.where(LedgerEntry.id < before)
    return session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit)).all()


def credit_account(session: Session, number: str, amount: Decimal,
                   kind: EntryKind = EntryKind.TOPUP, *, ref: str | None = None,
                   note: str = "") -> tuple[Account, LedgerEntry, bool]:
    """Credit (or, as an adjustment, debit) account ``number`` by ``amount``, held to its
    plan's decimals, through the ledger (:func:`ivr.money.ledger.credit`: idempotent per
    ``ref``). Returns the account, the entry and whether it is new."""
    account = find_account(session, number)
    check_decimals(amount, account.plan.decimals, _plan_of(account))
    entry, new = credit(session, account.id, amount, kind, ref=ref, note=note)
    return account, entry, new


def adjust_balance(session: Session, number: str, amount: str, *, debit: bool,
                   reason: str, ref: str | None = None) -> tuple[Account, LedgerEntry, bool]:
    """An operator's adjustment: ``amount`` (as typed, positive) credited, or debited
    when ``debit``, as an ``adjustment`` ledger entry whose note is the ``reason``. The
    balance is never set: only entries move it. Refused: a bad or non-positive amount,
    finer than the plan's decimals (:class:`BadAmount`); no reason
    (:class:`SettingRefused`); a debit of more than is available, the balance less what
    live calls hold (LedgerError). ``ref`` makes it idempotent (the form's one-time key:
    a form sent twice writes one entry); returns the account, the entry and whether it
    is new."""
    value = read_amount(amount)
    if value <= 0:
        raise BadAmount("amount: give a positive amount (and choose credit or debit)")
    reason = reason.strip()
    if not reason:
        raise SettingRefused("an adjustment needs its reason", "reason")
    account = find_account(session, number)
    places = min(account.plan.decimals, 2)
    if debit and value > account.available:  # checked again under the account's lock
        raise LedgerError(f"a debit of {display(value, places)} would take the available "
                          f"balance ({display(account.available, places)} "
                          f"{account.currency}) below zero")
    if ref is not None:  # sent before: that entry, whatever the balance is now
        account = find_account(session, number)
        done = session.scalar(select(LedgerEntry).where(
            LedgerEntry.kind == EntryKind.ADJUSTMENT, LedgerEntry.ref == ref))
        if done is not None and done.account_id == account.id:
            return account, done, False
    return credit_account(session, number, -value if debit else value,
                          EntryKind.ADJUSTMENT, ref=ref, note=reason)


def search_accounts(session: Session, text: str = "", limit: int = 50) -> list[Account]:
    """Accounts whose number starts with ``text`` or whose name contains it (any case),
    newest first; the newest ones when ``text`` is empty."""
    query = select(Account).order_by(Account.id.desc()).limit(limit)
    text = text.strip()
    if text:
        query = query.where(or_(
            Account.number.startswith(text, autoescape=True),
            func.lower(Account.name).contains(text.lower(), autoescape=True)))
    return list(session.scalars(query))


@dataclass(frozen=True)
class IssuedCard:
    number: str
    pin: str
    account: str
    balance: Decimal
    currency: str
    expires_on: date | None
    decimals: int = 2  # the plan's: the balance is written as everywhere (5 -> 5.00)


MAX_BATCH = 100_000
CARD_FILE_FIELDS = ("card_number", "pin", "account", "balance", "currency", "expires_on")


def issue_options(session: Session, *, plan: str | None, balance: str | None,
                  account: str | None, expires_on: date | None = None,
                  batch: str | None = None, today: date | None = None) -> tuple[str, Decimal]:
    """The plan and opening balance of a batch, as the operator gives them (``balance``
    as typed): new accounts on ``plan`` with ``balance`` each (0 when None), or cards
    joining existing ``account`` (its plan; they share its balance). Options that would
    be ignored are refused, not dropped (:class:`IssueRefused`): a ``balance`` with
    ``account``, another ``plan`` than the account's; so is no plan at all, an expiry
    date already past, and a ``batch`` label longer than 64 characters. A bad balance:
    :class:`BadAmount`."""
    from .rates_store import get_plan

    if batch is not None and not 0 < len(batch) <= 64:
        raise IssueRefused("a batch label has 1 to 64 characters", field="batch")
    if expires_on is not None and expires_on < (today or datetime.now(UTC).date()):
        raise IssueRefused(f"the expiry date {expires_on.isoformat()} is already past",
                           field="expires")
    if account is None:
        if plan is None:
            raise IssueRefused("give --plan (the new accounts' plan), or --account to add "
                               "the cards to an existing account", "missing_option", "plan")
        value = read_amount("0" if balance is None else balance, "--balance")
        plan_row = get_plan(session, plan)
        check_decimals(value, plan_row.decimals, f"plan {plan_row.name!r}", "--balance")
        return plan_row.name, value
    if balance is not None:
        raise IssueRefused(f"--balance cannot be used with --account: the cards share "
                           f"account {account}'s balance (top it up with: ivr accounts "
                           f"credit {account} AMOUNT)", "conflicting_options", "balance")
    plan_name = find_account(session, account).plan.name
    if plan is not None and plan != plan_name:
        raise IssueRefused(f"--plan {plan} does not match account {account}, which is on "
                           f"plan {plan_name} (leave --plan out with --account)",
                           "conflicting_options", "plan")
    return plan_name, Decimal(0)


def plan_names(session: Session) -> list[str]:
    """The rating plans' names, for a choice of plan."""
    return list(session.scalars(select(RatingPlan.name).order_by(RatingPlan.name)))


ISSUE_CHUNK = 2000  # cards generated, inserted (one statement per table) and written at once


def issue_batch(
    db: Database,
    plan: str,
    count: int,
    balance: Decimal,
    *,
    pin_keys: PinKeys | None = None,
    account: str | None = None,
    shared: bool = False,
    pin_length: int = 4,
    number_length: int = 12,
    expires_on: date | None = None,
    batch: str | None = None,
    control: bool = False,
    then: Callable[[Session, str, list[IssuedCard]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, list[IssuedCard]]:
    """Issue ``count`` cards in one transaction; each gets its own new account with
    ``balance``, or all share one: existing ``account`` (``balance`` then ignored), or with
    ``shared`` one new account opened with ``balance``. Returns the batch label and the
    cards with their PINs, which exist in clear only in what is returned: ``then(session,
    batch, cards)`` runs in the same transaction (to deliver them, and record who issued
    them), so if it fails no card is issued. PINs are hashed under ``pin_keys`` (the PIN
    key ring; without it as older scrypt hashes, ~60 ms each, re-keyed on their first
    log-in: for tests and tools that have no key ring). ``progress(n)`` is told of each
    chunk of ``n`` cards made."""
    issued: list[IssuedCard] = []

    def finish(s: Session, label: str) -> None:
        if then is not None:
            then(s, label, issued)

    label = _issue(db, plan, count, balance, pin_keys=pin_keys, account=account,
                   shared=shared, pin_length=pin_length, number_length=number_length,
                   expires_on=expires_on, batch=batch, control=control,
                   sink=lambda _, cards: issued.extend(cards), finish=finish,
                   progress=progress)
    return label, issued


def issue_card_file(
    db: Database,
    plan: str,
    count: int,
    balance: Decimal,
    out: Path,
    *,
    pin_keys: PinKeys | None = None,
    account: str | None = None,
    pin_length: int = 4,
    number_length: int = 12,
    expires_on: date | None = None,
    batch: str | None = None,
    control: bool = False,
    progress: Callable[[int], None] | None = None,
    keep: list[IssuedCard] | None = None,
) -> tuple[str, int]:
    """Issue ``count`` cards (as :func:`issue_batch`) straight into the card file ``out``
    (CSV, mode 0600, refused if it exists), written chunk by chunk as the cards are
    made, not built in memory: the only place their PINs exist in clear. If the batch
    fails the file is removed. Returns the batch label and the number of cards;
    ``keep`` (a list) also gets the cards."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{out} exists; refusing to overwrite a card file") from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CARD_FILE_FIELDS)

            def sink(_: Session, cards: list[IssuedCard]) -> None:
                writer.writerows(map(_card_row, cards))
                if keep is not None:
                    keep.extend(cards)

            def finish(_: Session, __: str) -> None:
                f.flush()
                os.fsync(f.fileno())

            label = _issue(db, plan, count, balance, pin_keys=pin_keys, account=account,
                           shared=False, pin_length=pin_length,
                           number_length=number_length, expires_on=expires_on,
                           batch=batch, control=control, sink=sink, finish=finish,
                           progress=progress)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return label, count


def issue_cards(
    db: Database,
    plan: str,
    count: int,
    balance: Decimal,
    out: Path,
    *,
    pin_keys: PinKeys | None = None,
    account: str | None = None,
    pin_length: int = 4,
    number_length: int = 12,
    expires_on: date | None = None,
    batch: str | None = None,
    control: bool = False,
) -> list[IssuedCard]:
    """Issue ``count`` cards (:func:`issue_card_file`) and return them; each gets its
    own account with ``balance``, or all join ``account`` (a shared account; ``balance``
    is then ignored). The CSV written to ``out`` (mode 0600) is the only place the PINs
    exist in clear."""
    cards: list[IssuedCard] = []
    issue_card_file(db, plan, count, balance, out, pin_keys=pin_keys, account=account,
                    pin_length=pin_length, number_length=number_length,
                    expires_on=expires_on, batch=batch, control=control, keep=cards)
    return cards


def _issue(
    db: Database, plan: str, count: int, balance: Decimal, *, pin_keys: PinKeys | None,
    account: str | None, shared: bool, pin_length: int, number_length: int,
    expires_on: date | None, batch: str | None, control: bool,
    sink: Callable[[Session, list[IssuedCard]], None],
    finish: Callable[[Session, str], None],
    progress: Callable[[int], None] | None,
) -> str:
    """The batch in one transaction, by chunks of ISSUE_CHUNK cards: numbers drawn
    at random and checked unused with one query a chunk, PINs hashed, the accounts, their
    opening balances (ledger entries, ivr.money.ledger.open_balances) and the cards
    inserted one statement per table; each chunk handed to ``sink``, then ``finish``."""
    if count < 1 or count > MAX_BATCH:
        raise IssueRefused(f"count must be between 1 and {MAX_BATCH}", field="count")
    if balance < 0:
        raise IssueRefused("balance cannot be negative", field="balance")
    if not 4 <= pin_length <= 12:
        raise IssueRefused("the PIN length must be between 4 and 12 digits",
                           field="pin_length")
    batch = batch or f"B{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    hasher = pin_keys.hasher() if pin_keys is not None else None
    accounts, cards = cast(Table, Account.__table__), cast(Table, Card.__table__)
    with contextlib.ExitStack() as stack, db.transaction() as s:
        pool = None if hasher else stack.enter_context(
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2))  # scrypt frees the GIL
        owner_of_all = find_account(s, account) if account else None
        if owner_of_all is None and shared:
            owner_of_all = create_account(s, plan, balance=balance, name=f"batch {batch}")
        plan_row = owner_of_all.plan if owner_of_all is not None else get_plan(s, plan)
        now = datetime.now(UTC)
        used_cards: set[str] = set()
        used_accounts: set[str] = set()
        for start in range(0, count, ISSUE_CHUNK):
            n = min(ISSUE_CHUNK, count - start)
            numbers = _unused_numbers(s, cards.c.number, n, number_length, "", used_cards)
            pins = [random_digits(pin_length) for _ in range(n)]
            if hasher is not None:
                hashes = [hasher(pin, number) for pin, number in zip(pins, numbers, strict=True)]
            else:
                assert pool is not None
                hashes = list(pool.map(hash_pin, pins))
            if owner_of_all is not None:
                owners = [(owner_of_all.id, owner_of_all.number)] * n
                opening = owner_of_all.balance
            else:
                owned = _unused_numbers(s, accounts.c.number, n, 10, "9", used_accounts)
                s.execute(insert(accounts), [
                    {"number": number, "name": "", "currency": plan_row.currency,
                     "plan_id": plan_row.id, "status": AccountStatus.ACTIVE,
                     "balance": Decimal(0), "reserved": Decimal(0), "created_at": now}
                    for number in owned])
                # Their ids read back by number (one query; RETURNING would have
                # psycopg parse one long statement, slower).
                made: dict[str, int] = {number: i for number, i in s.execute(
                    select(accounts.c.number, accounts.c.id)
                    .where(accounts.c.number.in_(owned)))}
                owners = [(made[number], number) for number in owned]
                opening = balance
                if balance:
                    open_balances(s, [(i, balance, f"opening:{number}")
                                      for i, number in owners], now=now)
            s.execute(insert(cards), [
                {"number": number, "pin_hash": pin_hash, "status": CardStatus.ACTIVE,
                 "expires_on": expires_on, "batch": batch, "account_id": owner_id,
                 "is_control": control and start + i == 0, "failed_pins": 0,
                 "failed_codes": 0, "created_at": now}
                for i, (number, pin_hash, (owner_id, _)) in enumerate(
                    zip(numbers, hashes, owners, strict=True))])
            sink(s, [IssuedCard(number, pin, owner, opening, plan_row.currency, expires_on,
                                plan_row.decimals)
                     for number, pin, (_, owner) in zip(numbers, pins, owners, strict=True)])
            if progress is not None:
                progress(n)
        finish(s, batch)
    return batch


def _unused_numbers(s: Session, column: ColumnElement[str], n: int, length: int,
                    prefix: str, used: set[str]) -> list[str]:
    """``n`` new numbers (``prefix``, random digits, Luhn digit) found in neither
    ``used`` (this batch's, updated) nor ``column``: one query a round, not one a card."""
    body = length - 1 - len(prefix)
    if body < 6:
        raise ValueError("card number too short for its prefix")
    fresh: list[str] = []
    for _ in range(20):
        wanted = n - len(fresh)
        drawn = {with_check_digit(prefix + random_digits(body)) for _ in range(wanted)}
        drawn -= used
        if drawn:
            drawn -= set(s.scalars(select(column).where(column.in_(drawn))))
        used |= drawn
        fresh.extend(drawn)
        if len(fresh) == n:
            return fresh
    raise RuntimeError("could not find enough unused numbers; use a longer --number-length")


def card_file(cards: list[IssuedCard]) -> bytes:
    """The card file (CSV: number, PIN, account, balance, currency, expiry) in memory."""
    buffer = io.StringIO(newline="")
    _write_rows(buffer, cards)
    return buffer.getvalue().encode()


def _write_rows(f: IO[str], cards: list[IssuedCard]) -> None:
    writer = csv.writer(f)
    writer.writerow(CARD_FILE_FIELDS)
    writer.writerows(map(_card_row, cards))


def _card_row(c: IssuedCard) -> list[str]:
    # As every output shows an amount (ivr.cli.common.money): the plan's decimals up to
    # cents.
    return [c.number, c.pin, c.account, display(c.balance, min(c.decimals, 2)),
            c.currency, c.expires_on.isoformat() if c.expires_on else ""]


@dataclass(frozen=True)
class BatchSummary:
    """A batch's cards, each counted once: ``expired`` (by status or date), else
    ``locked`` (locked or blocked), else ``used`` (it has made a call), else ``unused``."""

    batch: str
    plan: str
    currency: str
    created_at: datetime
    expires_on: date | None
    accounts: int
    cards: int
    used: int
    unused: int
    locked: int
    expired: int


def batch_summaries(session: Session, *, batch: str | None = None, limit: int = 200,
                    today: date | None = None) -> list[BatchSummary]:
    """The batches, newest first (or the one named ``batch``), with their counts."""
    today = today or datetime.now(UTC).date()
    expired = or_(Card.status == CardStatus.EXPIRED,
                  Card.expires_on.is_not(None) & (Card.expires_on < today))
    locked = Card.status.in_([CardStatus.LOCKED, CardStatus.BLOCKED])
    called = exists().where(Cdr.card_id == Card.id)
    state = case((expired, "expired"), (locked, "locked"), (called, "used"),
                 else_="unused")
    query = (select(Card.batch, func.min(RatingPlan.name), func.min(Account.currency),
                    func.min(Card.created_at), func.max(Card.expires_on),
                    func.count(distinct(Card.account_id)), func.count(),
                    *(func.sum(case((state == name, 1), else_=0))
                      for name in ("used", "unused", "locked", "expired")))
             .join(Account, Account.id == Card.account_id)
             .join(RatingPlan, RatingPlan.id == Account.plan_id)
             .group_by(Card.batch).order_by(func.min(Card.created_at).desc(),
                                            Card.batch).limit(limit))
    if batch is not None:
        query = query.where(Card.batch == batch)
    return [BatchSummary(name, plan, currency, as_utc(created), expires, int(accounts),
                         int(cards), int(used or 0), int(unused or 0), int(locked_ or 0),
                         int(expired_ or 0))
            for (name, plan, currency, created, expires, accounts, cards, used, unused,
                 locked_, expired_) in session.execute(query).all()]


def search_cards(session: Session, *, number: str = "", batch: str | None = None,
                 after: int | None = None, limit: int = 100) -> list[Card]:
    """Cards whose number starts with ``number`` (digits), or of ``batch``, by id;
    ``after``: the last id already shown."""
    query = select(Card).order_by(Card.id).limit(limit)
    number = number.strip()
    if number:
        query = query.where(Card.number.startswith(number, autoescape=True))
    if batch is not None:
        query = query.where(Card.batch == batch)
    if after is not None:
        query = query.where(Card.id > after)
    return list(session.scalars(query))


def cards_of(session: Session, account: Account, limit: int = 100) -> tuple[list[Card], int]:
    """The first ``limit`` cards of an account (by id) and how many it has in all."""
    total = session.scalar(select(func.count()).where(Card.account_id == account.id)) or 0
    cards = session.scalars(select(Card).where(Card.account_id == account.id)
                            .order_by(Card.id).limit(limit))
    return list(cards), total


def card_state(card: Card, today: date | None = None) -> str:
    """What a card is now: its status, or ``expired`` past its date."""
    today = today or datetime.now(UTC).date()
    if card.status is CardStatus.ACTIVE and card.expires_on is not None \
            and card.expires_on < today:
        return CardStatus.EXPIRED.value
    return card.status.value


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
        raise SettingRefused("auto-recharge needs both --threshold and --amount",
                             "threshold" if threshold is None else "amount")
    if threshold < 0:
        raise SettingRefused("--threshold cannot be negative", "threshold")
    if amount <= 0:
        raise SettingRefused("--amount must be positive", "amount")
    if daily_cap is not None and daily_cap < amount:
        raise SettingRefused(f"--daily-cap {daily_cap} is below one recharge of {amount}: "
                             "auto-recharge could never fire", "daily_cap")
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
        raise SettingRefused(f"not an e-mail address: {email!r}", "email")
    if below is not None and below < 0:
        raise SettingRefused("--below cannot be negative", "below")
    sms_number = sms
    if sms:
        sms_number = normalise_callerid(sms, region)
        if sms_number is None:
            raise SettingRefused(f"not a telephone number: {sms!r}", "sms")
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
