"""The pools of mobile operators' recharge codes (mode a of the revalue line).

An operator sells us recharge codes of fixed values; ``ivr codes import`` loads them
into a pool (one per operator, currency and value) and the line issues one to each
customer who buys that value, reads it out and sends it by SMS.

Secrecy. A code must be read back to its buyer, so it cannot be hashed only: it is kept
encrypted with AES-256-GCM (``cryptography``'s AESGCM) under a key derived (HKDF-SHA256)
from the server's secret key for this purpose alone, with a random 96-bit nonce per code
and the pool (operator, currency, value) as associated data: a ciphertext copied to a
row of another pool fails to decrypt, as does one altered in any way, or read under
another secret key. The column holds ``v1:`` + base64(nonce + ciphertext and tag), so
the scheme can change later without losing the codes stored under this one. The same
code twice is refused by ``code_mac``, HMAC-SHA256 of the operator and the code under a
second derived key: a duplicate is found without the code in clear, and a copy of the
database without the key cannot be searched for a given code. A code is never logged,
never printed by a command and never part of an error message (a bad line is named by
its number); the :class:`Issued` value keeps it out of its ``repr``.

Import (:func:`import_codes`): a text or one-column CSV file, one code per line; spaces
and dashes between digit groups are dropped; blank lines, ``#`` comments and a first
line ``code`` are skipped. The file is read line by line and written in chunks of
``CHUNK`` rows in one transaction: any bad line refuses the whole file (every bad line
is reported with its number, as for a rate deck) and nothing is imported. A code already
in the pool (or twice in the file) is skipped and counted in ``skipped``, so loading
the same file twice is harmless; a code that is in another pool of the same operator
(another value or currency) is a bad line, as one of the two files is wrong.

Exactly once (:func:`issue`): the oldest available code of the pool is taken with
``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1`` on PostgreSQL (concurrent buyers each take
another row, none waits for another's row; one who finds only rows being taken hears
that none is left, and if the taker rolls back the code is there for the next buyer),
and under the write lock on SQLite (BEGIN IMMEDIATE: one issue at a time). The code is
marked issued to the customer in the same transaction.

Low stock. When an issue leaves a pool at or below ``code_low_stock`` codes, the pool's
row in ``recharge_pools`` is marked (``low_stock_noticed_at``) in the issue's
transaction and the issue returns a :class:`LowStock` notice for the caller to send
(:func:`send_low_stock_notice`, async, after the transaction). The mark is taken by a
conditional UPDATE, so one issue only gets the notice per dip; an import that lifts the
pool above the level clears it. The count is made under the pool row's lock, so on
PostgreSQL the last of concurrent issues sees the others' codes gone: a dip is never
missed. The state is kept rather than derived from the counts: a pool imported already
below the level, or a level changed by the operator, would defeat a rule such as
"notice when the count goes from level + 1 to level". If the e-mail cannot be sent the
mark is cleared again (the next issue retries); with no SMTP server or no
``operator_email`` configured the notice is logged as a warning instead, once per dip.

:func:`reveal` gives the code again (the caller asks to hear it again, an SMS is resent)
only to the customer it was issued to. :func:`void_codes` takes available codes out of
a pool (the newest first; issues take the oldest first).
"""

from __future__ import annotations

import base64
import binascii
import csv
import enum
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.orm import Session

from ..db import Database, rows_changed
from ..db.models import Customer, RechargeCode, RechargePool
from ..db.types import display, to_micros
from ..money.notify import Sender

log = logging.getLogger("ivr.revalue.codes")

DEFAULT_LOW_STOCK = 20  # the code_low_stock setting's default
MIN_DIGITS, MAX_DIGITS = 6, 40
CHUNK = 500  # rows per INSERT (and per duplicate look-up) in an import
MAX_PROBLEMS_SHOWN = 50

AVAILABLE, ISSUED, VOID = "available", "issued", "void"

_VERSION = "v1"
_NONCE_BYTES = 12
_ENC_INFO = b"ivr recharge codes: AES-256-GCM key v1"
_MAC_INFO = b"ivr recharge codes: duplicate check key v1"
_AD_PREFIX = b"ivr recharge code v1\0"
_DIGITS = re.compile(r"[0-9]+")
_HEADERS = frozenset({"code", "codes"})


class CodeFileError(ValueError):
    """A code file was refused; ``problems`` lists every bad line as (line, reason)."""

    def __init__(self, problems: list[tuple[int, str]], total: int | None = None) -> None:
        self.problems = sorted(problems)
        self.total = max(total or 0, len(self.problems))
        shown = "\n".join(f"  line {line}: {reason}"
                          for line, reason in self.problems[:MAX_PROBLEMS_SHOWN])
        more = self.total - min(MAX_PROBLEMS_SHOWN, len(self.problems))
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"bad code file ({self.total} problems):\n{shown}{tail}")


class CodeUnreadable(RuntimeError):
    """A stored code does not decrypt: another secret key, an altered value, or a value
    moved from another pool's row."""


class RevealRefused(PermissionError):
    """The code was not issued to this customer (or there is no such issued code)."""


class NoneLeft(enum.Enum):
    NONE_LEFT = "none_left"


NONE_LEFT: Literal[NoneLeft.NONE_LEFT] = NoneLeft.NONE_LEFT


@dataclass(frozen=True)
class Pool:
    """The codes of one operator, currency and value (see :meth:`of`)."""

    operator: str
    currency: str
    value: Decimal

    @classmethod
    def of(cls, operator: str, value: Decimal, currency: str) -> Pool:
        """A checked pool: an operator name of 1 to 64 printable characters, a positive
        Decimal value with at most 6 decimals, a three-letter currency (upper-cased)."""
        operator = operator.strip()
        if not operator or len(operator) > 64 or not operator.isprintable():
            raise ValueError("operator: 1 to 64 printable characters")
        if not isinstance(value, Decimal):
            raise TypeError("a code's value is a Decimal")
        to_micros(value)  # MoneyPrecisionError (a ValueError) for too many decimals
        if value <= 0:
            raise ValueError(f"a code's value must be positive, not {value}")
        currency = currency.strip().upper()
        if len(currency) != 3 or not (currency.isascii() and currency.isalpha()):
            raise ValueError(f"currency must be three letters (ISO 4217), not {currency!r}")
        return cls(operator, currency, value)

    @property
    def associated_data(self) -> bytes:
        """What binds a ciphertext to its pool (the operator has no NUL: printable)."""
        return (_AD_PREFIX + self.operator.encode() + b"\0" + self.currency.encode() + b"\0"
                + str(to_micros(self.value)).encode())

    def label(self) -> str:
        return f"{self.operator} {display(self.value)} {self.currency}"


# --------------------------------------------------------------------------- crypto


@dataclass(frozen=True, repr=False)
class CodeKeys:
    """The two keys derived from the server's secret key (never the secret itself)."""

    enc: bytes
    mac: bytes

    @classmethod
    def derive(cls, secret: bytes) -> CodeKeys:
        if not secret:
            raise ValueError("the server's secret key is empty")
        return cls(_hkdf(secret, _ENC_INFO), _hkdf(secret, _MAC_INFO))


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def normalise(text: str) -> str:
    """A code as printed or typed, digits only; ValueError (which never quotes the
    text) if it is not digits with spaces or dashes between groups, or of a length no
    code has."""
    code = text.strip().replace(" ", "").replace("-", "")
    if not _DIGITS.fullmatch(code):
        raise ValueError("not a code (digits, with spaces or dashes between groups)")
    if not MIN_DIGITS <= len(code) <= MAX_DIGITS:
        raise ValueError(f"a code has {MIN_DIGITS} to {MAX_DIGITS} digits, not {len(code)}")
    return code


def code_mac(code: str, operator: str, keys: CodeKeys) -> str:
    """What stands for a code in the unique ``code_mac`` column: HMAC-SHA256 (hex) of the
    operator and the normalised code."""
    message = operator.encode() + b"\0" + code.encode()
    return hmac.new(keys.mac, message, hashlib.sha256).hexdigest()


def encrypt_code(code: str, pool: Pool, keys: CodeKeys) -> str:
    """``v1:`` + base64(nonce + AES-GCM ciphertext and tag), bound to ``pool``."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(keys.enc).encrypt(nonce, code.encode(), pool.associated_data)
    return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"


def decrypt_code(stored: str, pool: Pool, keys: CodeKeys) -> str:
    """The code in clear; :class:`CodeUnreadable` under another key, for an altered
    value or one from another pool."""
    version, _, payload = stored.partition(":")
    if version != _VERSION:
        raise CodeUnreadable(f"unknown code encryption {version!r}")
    try:
        raw = base64.b64decode(payload, validate=True)
        if len(raw) <= _NONCE_BYTES:
            raise ValueError("too short")
        plain = AESGCM(keys.enc).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                         pool.associated_data)
    except (InvalidTag, ValueError, binascii.Error):
        raise CodeUnreadable("a stored code does not decrypt: another secret key, or the "
                             "value was altered or moved from another pool") from None
    return plain.decode()


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportResult:
    imported: int
    skipped: int  # already in the pool, or earlier in the file
    available: int  # the pool's available codes after the import


def _read_codes(path: Path, problems: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(line number, normalised code) for each code line of ``path``, one at a time;
    each bad line's number and reason go to ``problems``."""
    first = True
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                problems.append((line_no, "not UTF-8 text"))
                continue
            if not text or text.startswith("#"):
                continue
            fields = next(csv.reader([text]))
            while fields and not fields[-1].strip():
                fields.pop()
            if len(fields) != 1:
                problems.append((line_no, f"expected one code, found {len(fields)} fields"))
                first = False
                continue
            if first and fields[0].strip().lower() in _HEADERS:
                first = False
                continue
            first = False
            try:
                yield line_no, normalise(fields[0])
            except ValueError as exc:
                problems.append((line_no, str(exc)))


def _chunks(items: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def import_codes(
    db: Database,
    path: Path,
    *,
    operator: str,
    value: Decimal,
    currency: str,
    key: bytes,
    low_stock: int = DEFAULT_LOW_STOCK,
) -> ImportResult:
    """Load the codes in ``path`` into the pool of ``operator``, ``value`` ``currency``,
    all or nothing (:class:`CodeFileError` with every bad line). ``low_stock`` is the
    ``code_low_stock`` setting: an import leaving more codes than that re-arms the
    pool's low-stock notice."""
    pool = Pool.of(operator, value, currency)
    keys = CodeKeys.derive(key)
    problems: list[tuple[int, str]] = []
    imported = skipped = 0
    now = datetime.now(UTC)
    with db.transaction() as s:
        _ensure_pool(s, pool)
        for chunk in _chunks(_read_codes(path, problems), CHUNK):
            fresh: dict[str, tuple[int, str]] = {}  # mac -> (line, code)
            for line, code in chunk:
                mac = code_mac(code, pool.operator, keys)
                if mac in fresh:
                    skipped += 1
                else:
                    fresh[mac] = (line, code)
            # Rows inserted by earlier chunks of this transaction are found here too.
            for mac, other_value, other_currency in s.execute(
                    select(RechargeCode.code_mac, RechargeCode.value, RechargeCode.currency)
                    .where(RechargeCode.code_mac.in_(list(fresh)))):
                line, _ = fresh.pop(mac)
                if other_value == pool.value and other_currency == pool.currency:
                    skipped += 1
                else:
                    problems.append((line, f"already in the pool of {pool.operator} "
                                           f"{display(other_value)} {other_currency}"))
            if problems or not fresh:
                continue  # refused anyway: the rest is read for its problems only
            s.execute(insert(RechargeCode), [
                {"operator": pool.operator, "value": pool.value, "currency": pool.currency,
                 "code_enc": encrypt_code(code, pool, keys), "code_mac": mac,
                 "status": AVAILABLE, "imported_at": now}
                for mac, (_, code) in fresh.items()
            ])
            imported += len(fresh)
        if problems:
            raise CodeFileError(problems[:1000], len(problems))
        _lock_pool(s, pool)
        available = _available(s, pool)
        if available > low_stock:
            s.execute(update(RechargePool).where(*_pool_is(pool))
                      .values(low_stock_noticed_at=None))
    log.info("%d recharge code(s) imported into %s (%d already there skipped); "
             "%d available", imported, pool.label(), skipped, available)
    return ImportResult(imported, skipped, available)


# --------------------------------------------------------------------------- issue


@dataclass(frozen=True)
class LowStock:
    """A low-stock notice due (claimed in the database): send it with
    :func:`send_low_stock_notice`. Nothing secret in it."""

    operator: str
    value: Decimal
    currency: str
    remaining: int
    level: int

    @property
    def pool(self) -> Pool:
        return Pool(self.operator, self.currency, self.value)

    @property
    def subject(self) -> str:
        return f"Recharge codes running low: {self.pool.label()}"

    @property
    def body(self) -> str:
        return (f"The pool of {self.operator} recharge codes of {display(self.value)} "
                f"{self.currency} has {self.remaining} code(s) left (notice level "
                f"{self.level}). Import more with: ivr codes import FILE --operator "
                f"{self.operator} --value {display(self.value)} --currency {self.currency}")


@dataclass(frozen=True)
class Issued:
    code_id: int
    code: str = field(repr=False)  # in clear, for the caller only: never log it
    remaining: int  # available codes left in the pool
    notice: LowStock | None = None  # a low-stock notice to send, if this issue claimed it


def issue(
    db: Database,
    *,
    operator: str,
    value: Decimal,
    currency: str,
    customer_id: int,
    key: bytes,
    low_stock: int = DEFAULT_LOW_STOCK,
) -> Issued | Literal[NoneLeft.NONE_LEFT]:
    """Issue one code of the pool to ``customer_id``, exactly once, or NONE_LEFT.
    LookupError for an unknown customer; :class:`CodeUnreadable` if the code taken does
    not decrypt (nothing is issued then)."""
    pool = Pool.of(operator, value, currency)
    keys = CodeKeys.derive(key)
    with db.transaction() as s:
        return issue_in(s, pool, keys, customer_id, low_stock, datetime.now(UTC))


def issue_in(s: Session, pool: Pool, keys: CodeKeys, customer_id: int, low_stock: int,
             now: datetime) -> Issued | Literal[NoneLeft.NONE_LEFT]:
    """:func:`issue` inside the caller's transaction ``s`` (the revaluation service issues
    a code and takes its price in one transaction): the code is issued when ``s``
    commits, and is available again if it rolls back."""
    if s.get(Customer, customer_id) is None:
        raise LookupError(f"no customer {customer_id}")
    row = s.execute(
        select(RechargeCode)
        .where(*_codes_of(pool), RechargeCode.status == AVAILABLE)
        .order_by(RechargeCode.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if row is None:
        log.info("no recharge code left in %s for customer %d", pool.label(), customer_id)
        return NONE_LEFT
    code = decrypt_code(row.code_enc, pool, keys)
    row.status, row.issued_at, row.customer_id = ISSUED, now, customer_id
    s.flush()
    _lock_pool(s, pool)  # before counting: see the module's "Low stock"
    remaining = _available(s, pool)
    notice = None
    if remaining <= low_stock and rows_changed(s.execute(
            update(RechargePool)
            .where(*_pool_is(pool), RechargePool.low_stock_noticed_at.is_(None))
            .values(low_stock_noticed_at=now))) == 1:
        notice = LowStock(pool.operator, pool.value, pool.currency, remaining, low_stock)
    code_id = row.id
    log.info("recharge code #%d of %s issued to customer %d; %d left", code_id, pool.label(),
             customer_id, remaining)
    return Issued(code_id, code, remaining, notice)


def reveal(db: Database, code_id: int, *, customer_id: int, key: bytes) -> str:
    """The code ``code_id`` in clear again, only for the customer it was issued to;
    :class:`RevealRefused` for anyone else (and for a code not issued)."""
    with db.reading() as s:
        row = s.get(RechargeCode, code_id)
        if row is None or row.status != ISSUED or row.customer_id != customer_id:
            log.warning("recharge code #%d not revealed to customer %d: not issued to them",
                        code_id, customer_id)
            raise RevealRefused(f"recharge code #{code_id} was not issued to customer "
                                f"{customer_id}")
        pool = Pool(row.operator, row.currency, row.value)
        stored = row.code_enc
    return decrypt_code(stored, pool, CodeKeys.derive(key))


async def send_low_stock_notice(
    db: Database, notice: LowStock, *, sender: Sender | None, to: str
) -> bool:
    """E-mail ``notice`` to ``to`` (the ``operator_email`` setting) with ``sender`` (the
    e-mail sender of ivr.money.notify.senders_from_settings). True if it went out. If
    sending fails the pool's mark is cleared, so the next issue claims the notice again;
    with no sender or no address it is only logged."""
    if sender is None or not to:
        log.warning("%s (no notice e-mailed: set smtp_host and operator_email)", notice.body)
        return False
    try:
        await sender.send(to, notice.subject, notice.body)
    except Exception as exc:
        log.warning("low-stock notice for %s not sent: %s", notice.pool.label(), exc)
        await db.run(_unclaim, db, notice.pool)
        return False
    log.info("low-stock notice for %s (%d left) sent to %s", notice.pool.label(),
             notice.remaining, to)
    return True


def _unclaim(db: Database, pool: Pool) -> None:
    with db.transaction() as s:
        s.execute(update(RechargePool).where(*_pool_is(pool))
                  .values(low_stock_noticed_at=None))


# --------------------------------------------------------------------------- stock


@dataclass(frozen=True)
class PoolStock:
    operator: str
    currency: str
    value: Decimal
    available: int
    issued: int
    void: int
    low_stock_noticed_at: datetime | None


def stock(db: Database) -> list[PoolStock]:
    """Every pool's codes by state, by operator, currency and value."""
    with db.reading() as s:
        counts: dict[tuple[str, str, Decimal], dict[str, int]] = {}
        for operator, currency, value, status, n in s.execute(
                select(RechargeCode.operator, RechargeCode.currency, RechargeCode.value,
                       RechargeCode.status, func.count())
                .group_by(RechargeCode.operator, RechargeCode.currency, RechargeCode.value,
                          RechargeCode.status)):
            counts.setdefault((operator, currency, value), {})[status] = n
        noticed = {(p.operator, p.currency, p.value): p.low_stock_noticed_at
                   for p in s.scalars(select(RechargePool))}
    rows = []
    for pool_key in sorted(set(counts) | set(noticed)):
        by_status = counts.get(pool_key, {})
        at = noticed.get(pool_key)
        rows.append(PoolStock(*pool_key, by_status.get(AVAILABLE, 0), by_status.get(ISSUED, 0),
                              by_status.get(VOID, 0),
                              at if at is None or at.tzinfo else at.replace(tzinfo=UTC)))
    return rows


def void_codes(db: Database, *, operator: str, value: Decimal, currency: str,
               count: int) -> int:
    """Take ``count`` available codes out of the pool (the newest first), or none at all
    (ValueError) when it has fewer. Returns the count voided."""
    pool = Pool.of(operator, value, currency)
    if isinstance(count, bool) or count < 1:
        raise ValueError("count must be at least 1")
    with db.transaction() as s:
        ids = list(s.scalars(
            select(RechargeCode.id)
            .where(*_codes_of(pool), RechargeCode.status == AVAILABLE)
            .order_by(RechargeCode.id.desc())
            .limit(count)
            .with_for_update(skip_locked=True)))
        if len(ids) < count:
            raise ValueError(f"{pool.label()} has {len(ids)} available code(s), not {count}; "
                             "none voided")
        s.execute(update(RechargeCode).where(RechargeCode.id.in_(ids))
                  .values(status=VOID).execution_options(synchronize_session=False))
    log.info("%d recharge code(s) of %s voided", count, pool.label())
    return count


# --------------------------------------------------------------------------- internals


def _codes_of(pool: Pool) -> tuple[ColumnElement[bool], ...]:
    return (RechargeCode.operator == pool.operator, RechargeCode.currency == pool.currency,
            RechargeCode.value == pool.value)


def _pool_is(pool: Pool) -> tuple[ColumnElement[bool], ...]:
    return (RechargePool.operator == pool.operator, RechargePool.currency == pool.currency,
            RechargePool.value == pool.value)


def _available(s: Session, pool: Pool) -> int:
    return s.scalar(select(func.count()).select_from(RechargeCode)
                    .where(*_codes_of(pool), RechargeCode.status == AVAILABLE)) or 0


def _ensure_pool(s: Session, pool: Pool) -> None:
    """The pool's row, made if missing (concurrent makers do not collide)."""
    values = {"operator": pool.operator, "currency": pool.currency, "value": pool.value}
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        s.execute(pg_insert(RechargePool).values(values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        s.execute(sqlite_insert(RechargePool).values(values).on_conflict_do_nothing())


def _lock_pool(s: Session, pool: Pool) -> None:
    """Lock the pool's row (PostgreSQL; SQLite holds the write lock), made if missing."""
    _ensure_pool(s, pool)
    s.execute(select(RechargePool.operator).where(*_pool_is(pool)).with_for_update())
