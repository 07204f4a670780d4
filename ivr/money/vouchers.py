"""Recharge codes (vouchers): generated in batches, redeemed exactly once.

A code is ``length`` digits from the CSPRNG whose last digit is a Luhn check digit, so a
mistyped code is refused without looking it up. The database keeps only a keyed hash of
the code (HMAC-SHA256 under the server's secret key: ``App.secret_key``, from
ivr.secrets.load_secret_key) and its last four digits: the CSV made at generation (a
file of mode 0600, never overwritten, or the console's one-time download) is the one
clear copy. A plain hash would not do: codes are short digit strings, so anyone with a
copy of the database could try them all offline; without the key they cannot. Codes
stored by earlier versions under plain SHA-256 are still found (``_hashes``).

Exactly once: a redemption is a conditional ``UPDATE vouchers SET status='redeemed' ...
WHERE code_hash IN (:hashes) AND status = 'new'`` whose row count decides, and the credit is
written in the same transaction (ledger ref ``voucher:<id>``, itself idempotent). Two
attempts at once cannot both see ``new``: SQLite serializes writers (BEGIN IMMEDIATE),
and on PostgreSQL the second UPDATE waits for the first's row lock, then re-checks the
condition against the committed row.

Wrong codes typed with a card count towards a lock like wrong PINs (``card.failed_codes``,
reset by a good code). Codes are never logged: a voucher appears as its last four digits.

Lock order in :func:`redeem`: account, card, voucher (the credit locks the account
again, already held).
"""

from __future__ import annotations

import csv
import enum
import hashlib
import hmac
import io
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from ..db import Database, lock_account, rows_changed
from ..db.models import (
    Account,
    AccountStatus,
    Card,
    CardStatus,
    EntryKind,
    RatingPlan,
    Voucher,
    VoucherStatus,
)
from ..db.types import as_utc, display, to_micros
from ..secrets import luhn_valid, random_digits, with_check_digit
from .accounts import NotFound
from .ledger import LedgerError, credit
from .listing import newest_page

log = logging.getLogger("ivr.money.vouchers")

MIN_LENGTH = 12  # 11 random digits and the check digit
MAX_LENGTH = 32
MAX_COUNT = 100_000
_LOOKUP_CHUNK = 500


class RedeemVerdict(enum.StrEnum):
    OK = "ok"
    INVALID = "invalid"  # bad check digit, or no such code: counts as a failure
    USED = "used"  # already redeemed
    EXPIRED = "expired"
    VOID = "void"  # cancelled by an operator
    WRONG_CURRENCY = "wrong_currency"  # the voucher's currency is not the account's
    LOCKED = "locked"  # the card is locked (now or before), or the account not active


@dataclass(frozen=True)
class Redemption:
    verdict: RedeemVerdict
    amount: Decimal  # credited: the voucher's value when OK, else 0
    balance: Decimal  # the account's balance after
    currency: str  # the account's
    last4: str = ""  # of the code typed
    failures: int = 0  # the card's consecutive wrong codes after this attempt


@dataclass(frozen=True)
class IssuedVoucher:
    code: str
    value: Decimal
    currency: str
    expires_on: date | None
    batch: str


@dataclass(frozen=True)
class VoucherInfo:
    """A voucher as the database knows it (never the code itself)."""

    id: int
    last4: str
    value: Decimal
    currency: str
    batch: str
    status: VoucherStatus
    expires_on: date | None
    redeemed_at: datetime | None
    redeemed_by: str | None  # account number
    created_at: datetime


def code_hash(code: str, key: bytes) -> str:
    """What stands for a code in the database: HMAC-SHA256 under the server's key."""
    return hmac.new(key, code.encode(), hashlib.sha256).hexdigest()


def _hashes(code: str, key: bytes) -> list[str]:
    """The hashes a stored code may have: keyed, or plain SHA-256 (earlier versions)."""
    return [code_hash(code, key), hashlib.sha256(code.encode()).hexdigest()]


def normalise(code: str) -> str:
    """A code as typed or printed (spaces and dashes between groups allowed)."""
    return code.replace(" ", "").replace("-", "")


def new_code(length: int = 14) -> str:
    """``length`` random digits, the last a Luhn check digit. The first is never 0, so
    spreadsheets opening the CSV cannot drop it."""
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"code length must be between {MIN_LENGTH} and {MAX_LENGTH}")
    return with_check_digit(secrets.choice("123456789") + random_digits(length - 2))


# --------------------------------------------------------------------------- generate


def generate(
    db: Database,
    count: int,
    value: Decimal,
    currency: str,
    out: Path,
    *,
    length: int = 14,
    expires_on: date | None = None,
    batch: str | None = None,
    key: bytes,
    progress: Callable[[int], None] | None = None,
) -> list[IssuedVoucher]:
    """Create ``count`` vouchers worth ``value`` ``currency`` each and write their codes to
    ``out`` (CSV: code, value, currency, expires_on, batch; mode 0600; an existing file
    is never overwritten), in one transaction, by chunks of GENERATE_CHUNK written to the
    file as they are made (``progress(n)`` told of each). Only the codes' hashes reach
    the database; if the batch fails the file is removed."""
    _, batch = _check(count, value, currency, length, batch)
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite a voucher file")

    created = False
    issued: list[IssuedVoucher] = []
    try:
        with db.transaction() as s:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
            with os.fdopen(fd, "w", newline="") as f:
                for start in range(0, count, GENERATE_CHUNK):
                    n = min(GENERATE_CHUNK, count - start)
                    chunk = issue(s, n, value, currency, length=length,
                                  expires_on=expires_on, batch=batch, key=key)
                    s.flush()
                    text = voucher_csv(chunk)
                    f.write(text if start == 0 else text.split("\n", 1)[1])
                    issued.extend(chunk)
                    if progress is not None:
                        progress(n)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        if created:  # the codes in it were never committed
            out.unlink(missing_ok=True)
        raise
    return issued


GENERATE_CHUNK = 5000


def issue(
    s: Session,
    count: int,
    value: Decimal,
    currency: str,
    *,
    length: int = 14,
    expires_on: date | None = None,
    batch: str | None = None,
    key: bytes,
) -> list[IssuedVoucher]:
    """Create ``count`` vouchers in ``s`` (the caller's transaction) and return them with
    their codes, kept in memory only: the caller hands them out once (a file, a one-time
    download, :func:`voucher_csv`) in that transaction or not at all. Only the codes'
    hashes reach the database. :class:`VoucherRefused` for a bad count, value (finer than
    the currency's plans' unit too), currency, length or batch label."""
    currency, batch = _check(count, value, currency, length, batch)
    _check_decimals(s, value, currency)
    codes = _unused_codes(s, count, length, key)
    now = datetime.now(UTC)
    s.execute(insert(Voucher), [
        {"code_hash": code_hash(c, key), "last4": c[-4:], "value": value,
         "currency": currency, "batch": batch, "status": VoucherStatus.NEW,
         "expires_on": expires_on, "created_at": now}
        for c in codes
    ])
    log.info("%d voucher(s) of %s %s generated, batch %s", count, display(value), currency,
             batch)
    return [IssuedVoucher(c, value, currency, expires_on, batch) for c in codes]


class VoucherRefused(ValueError):
    """A batch that cannot be issued as asked; ``field`` names what is wrong (count,
    value, currency, length, batch) for a form."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _check(count: int, value: Decimal, currency: str, length: int,
           batch: str | None) -> tuple[str, str]:
    """The currency (upper case) and the batch label (given, or a new one);
    :class:`VoucherRefused` (TypeError for a value that is not a Decimal) for anything
    that cannot be issued."""
    if isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise VoucherRefused(f"count must be between 1 and {MAX_COUNT}", "count")
    if not isinstance(value, Decimal):
        raise TypeError("a voucher's value is a Decimal")
    try:
        to_micros(value)
    except ValueError as exc:  # too many decimals
        raise VoucherRefused(str(exc), "value") from None
    if value <= 0:
        raise VoucherRefused(f"a voucher's value must be positive, not {value}", "value")
    currency = currency.strip().upper()
    if len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
        raise VoucherRefused(f"currency must be three letters (ISO 4217), not {currency!r}",
                             "currency")
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise VoucherRefused(f"code length must be between {MIN_LENGTH} and {MAX_LENGTH}",
                             "length")
    batch = batch or f"V{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}"
    if len(batch) > 64:
        raise VoucherRefused("batch label is at most 64 characters", "batch")
    return currency, batch


def _check_decimals(s: Session, value: Decimal, currency: str) -> None:
    """A value finer than the smallest unit of the currency's plans is refused (any
    value in a currency no plan uses)."""
    decimals = s.scalar(select(func.max(RatingPlan.decimals))
                        .where(RatingPlan.currency == currency))
    if decimals is not None and value != value.quantize(Decimal(1).scaleb(-decimals)):
        raise VoucherRefused(f"{value} has more decimals than the {currency} plans allow "
                             f"({decimals})", "value")


def _unused_codes(s: Session, count: int, length: int, key: bytes) -> list[str]:
    """``count`` distinct codes not in the database yet (under either hash)."""
    codes: dict[str, str] = {}  # keyed hash -> code
    for _ in range(20):
        fresh: dict[str, str] = {}
        alias: dict[str, str] = {}  # any hash of a fresh code -> its keyed hash
        while len(codes) + len(fresh) < count:
            code = new_code(length)
            keyed, plain = _hashes(code, key)
            if keyed not in codes and keyed not in fresh:
                fresh[keyed] = code
                alias[keyed] = alias[plain] = keyed
        hashes = list(alias)
        for i in range(0, len(hashes), _LOOKUP_CHUNK):
            chunk = hashes[i:i + _LOOKUP_CHUNK]
            for taken in s.scalars(select(Voucher.code_hash).where(Voucher.code_hash.in_(chunk))):
                fresh.pop(alias[taken], None)
        codes.update(fresh)
        if len(codes) == count:
            return list(codes.values())
    raise RuntimeError("could not find enough unused codes; use a longer --length")


def voucher_csv(vouchers: list[IssuedVoucher]) -> str:
    """The codes file (CSV: code, value, currency, expires_on, batch): their one clear
    copy."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["code", "value", "currency", "expires_on", "batch"])
    for v in vouchers:
        writer.writerow([v.code, display(v.value), v.currency,
                         v.expires_on.isoformat() if v.expires_on else "", v.batch])
    return buffer.getvalue()


# --------------------------------------------------------------------------- redeem


def redeem(
    db: Database,
    code: str,
    *,
    account_id: int,
    card_id: int | None = None,
    max_failures: int = 5,
    today: date | None = None,
    key: bytes,
) -> Redemption:
    """Credit ``account_id`` with the voucher ``code``, exactly once per code.

    With ``card_id`` (the card the caller logged in with; it must belong to the account)
    a wrong code counts against the card: ``max_failures`` in a row lock it, a good code
    resets the count. A locked card redeems nothing. Every verdict but OK changes no
    money; only a wrong code changes anything (the card's count, and maybe its lock)."""
    today = today or datetime.now(UTC).date()
    code = normalise(code)
    last4 = code[-4:]
    with db.transaction() as s:
        try:
            account = lock_account(s, account_id)
        except LookupError:
            raise NotFound(f"no account {account_id}") from None
        card = _lock_card(s, card_id, account_id) if card_id is not None else None

        def result(verdict: RedeemVerdict, amount: Decimal = Decimal(0)) -> Redemption:
            return Redemption(verdict, amount, account.balance, account.currency, last4,
                              card.failed_codes if card is not None else 0)

        if card is not None and card.status in (CardStatus.LOCKED, CardStatus.BLOCKED):
            return result(RedeemVerdict.LOCKED)
        if account.status is not AccountStatus.ACTIVE:
            return result(RedeemVerdict.LOCKED)

        if not (code.isdigit() and luhn_valid(code)):  # a typo: no look-up needed
            return result(_wrong_code(card, max_failures, last4))
        hashes = _hashes(code, key)
        claimed = s.execute(
            update(Voucher)
            .where(
                Voucher.code_hash.in_(hashes),
                Voucher.status == VoucherStatus.NEW,
                Voucher.currency == account.currency,
                or_(Voucher.expires_on.is_(None), Voucher.expires_on >= today),
            )
            .values(status=VoucherStatus.REDEEMED, redeemed_by=account_id,
                    redeemed_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
        # Re-read after the UPDATE: on PostgreSQL a concurrent winner's commit is visible
        # to this statement.
        voucher = s.scalar(select(Voucher).where(Voucher.code_hash.in_(hashes))
                           .execution_options(populate_existing=True))
        if rows_changed(claimed) != 1:
            if voucher is None:
                return result(_wrong_code(card, max_failures, last4))
            return result(_why_not(voucher, account, today))
        assert voucher is not None
        credit(s, account_id, voucher.value, EntryKind.VOUCHER, ref=f"voucher:{voucher.id}",
               note=f"voucher ...{last4}")
        if card is not None:
            card.failed_codes = 0
        log.info("voucher ...%s redeemed: account %s credited %s %s", last4, account.number,
                 display(voucher.value), account.currency)
        return result(RedeemVerdict.OK, voucher.value)


def _lock_card(s: Session, card_id: int, account_id: int) -> Card:
    card = s.execute(
        select(Card).where(Card.id == card_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if card is None:
        raise NotFound(f"no card {card_id}")
    if card.account_id != account_id:
        raise LedgerError(f"card ...{card.number[-4:]} does not belong to account "
                          f"{account_id}")
    return card


def _wrong_code(card: Card | None, max_failures: int, last4: str) -> RedeemVerdict:
    """Count a wrong code against the card (if any); enough in a row lock it."""
    if card is None:
        log.info("wrong voucher code ...%s", last4)
        return RedeemVerdict.INVALID
    card.failed_codes += 1
    if card.failed_codes >= max_failures:
        if card.status is CardStatus.ACTIVE:
            card.status = CardStatus.LOCKED
        log.warning("card ...%s locked after %d wrong voucher codes", card.number[-4:],
                    card.failed_codes)
        return RedeemVerdict.LOCKED
    log.info("wrong voucher code ...%s with card ...%s (%d in a row)", last4,
             card.number[-4:], card.failed_codes)
    return RedeemVerdict.INVALID


def _why_not(voucher: Voucher, account: Account, today: date) -> RedeemVerdict:
    if voucher.status is VoucherStatus.REDEEMED:
        return RedeemVerdict.USED
    if voucher.status is VoucherStatus.VOID:
        return RedeemVerdict.VOID
    if voucher.expires_on is not None and voucher.expires_on < today:
        return RedeemVerdict.EXPIRED
    if voucher.currency != account.currency:
        return RedeemVerdict.WRONG_CURRENCY
    raise RuntimeError(f"voucher ...{voucher.last4} is redeemable but was not claimed")


# --------------------------------------------------------------------------- operators


def find(db: Database, code: str, *, key: bytes) -> VoucherInfo:
    with db.transaction() as s:
        return _info(s, _get(s, code, key))


def void(db: Database, code: str, *, key: bytes) -> VoucherInfo:
    """Cancel an unused voucher (lost, stolen, misprinted). Voiding twice is harmless; a
    redeemed voucher cannot be voided."""
    with db.transaction() as s:
        return _void(s, _get(s, code, key))


def void_voucher(s: Session, voucher_id: int) -> VoucherInfo:
    """:func:`void` by the voucher's id (as listed, where its code is not), in ``s`` (the
    caller's transaction); NotFound if there is none."""
    voucher = s.get(Voucher, voucher_id)
    if voucher is None:
        raise NotFound(f"no voucher #{voucher_id}")
    return _void(s, voucher)


def _void(s: Session, voucher: Voucher) -> VoucherInfo:
    claimed = s.execute(
        update(Voucher)
        .where(Voucher.id == voucher.id, Voucher.status == VoucherStatus.NEW)
        .values(status=VoucherStatus.VOID)
        .execution_options(synchronize_session=False)
    )
    s.refresh(voucher)
    changed = rows_changed(claimed)
    if changed != 1 and voucher.status is VoucherStatus.REDEEMED:
        raise LedgerError(f"voucher ...{voucher.last4} was already redeemed; "
                          "it cannot be voided")
    if changed == 1:
        log.info("voucher ...%s voided", voucher.last4)
    return _info(s, voucher)


def list_vouchers(
    db: Database,
    *,
    status: VoucherStatus | None = None,
    batch: str | None = None,
    account: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[VoucherInfo]:
    """Vouchers, the newest first (keyset pages: ``before`` an id), never their codes:
    of ``status``, of ``batch``, redeemed by ``account`` (its number; NotFound if none),
    created in [``start``, ``end``)."""
    with db.reading() as s:
        query = newest_page(
            s, select(Voucher, Account.number)
            .outerjoin(Account, Account.id == Voucher.redeemed_by),
            id_column=Voucher.id, created_column=Voucher.created_at,
            account_column=Voucher.redeemed_by, account=account, start=start, end=end,
            before=before, limit=limit)
        if status is not None:
            query = query.where(Voucher.status == status)
        if batch:
            query = query.where(Voucher.batch == batch)
        return [VoucherInfo(v.id, v.last4, v.value, v.currency, v.batch, v.status,
                            v.expires_on, as_utc(v.redeemed_at), number, as_utc(v.created_at))
                for v, number in s.execute(query)]


def _get(s: Session, code: str, key: bytes) -> Voucher:
    code = normalise(code)
    if not (code.isdigit() and luhn_valid(code)):
        raise ValueError(f"not a voucher code (check digit wrong): ...{code[-4:]}")
    voucher = s.scalar(select(Voucher).where(Voucher.code_hash.in_(_hashes(code, key))))
    if voucher is None:
        raise NotFound(f"no voucher ending {code[-4:]}")
    return voucher


def _info(s: Session, v: Voucher) -> VoucherInfo:
    by = s.scalar(select(Account.number).where(Account.id == v.redeemed_by)) \
        if v.redeemed_by is not None else None
    return VoucherInfo(v.id, v.last4, v.value, v.currency, v.batch, v.status, v.expires_on,
                       as_utc(v.redeemed_at), by, as_utc(v.created_at))
