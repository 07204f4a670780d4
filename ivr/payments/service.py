"""The payment service: a top-up paid by a typed card or by the account's linked payment
method, as a ``Payment`` row per attempt and a ledger credit per approval.

A charge is done in three steps so that no database transaction is held open while the
gateway is working (which may take ``payment_timeout`` seconds):

1. :func:`_start`: a transaction inserts the ``Payment`` row as ``pending`` (or finds the
   earlier attempt with this ``payment_id``: an approved or declined payment is answered
   from the database without charging again);
2. the gateway is called, with ``payment_id`` as its idempotency key, so a retried
   payment is charged at most once;
3. :func:`finish`: a second transaction records the outcome and, on approval, credits the
   ledger with ``ref=payment_id`` (idempotent) and saves or refreshes the payment method.
   The credit goes through :func:`ivr.money.ledger.credit`, which also re-arms the low-balance
   notice: nothing here deals with notices.

A timeout leaves the row ``timeout`` and credits nothing; :mod:`ivr.payments.reconcile`
settles such rows later.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import overload

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import ConfigError
from ..db import Database, lock_account
from ..db.models import Account, EntryKind, Payment, PaymentMethod, PaymentStatus
from ..db.types import to_micros
from ..money.ledger import LedgerError, credit
from .cards import CardDetails
from .gateway import ChargeResult, ChargeStatus, GatewayTimeout, PaymentGateway

log = logging.getLogger("ivr.payments")

PAYMENT_ID_MAX = 64  # Payment.payment_id


class TopUpVerdict(enum.StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    ERROR = "error"
    NO_METHOD = "no_method"  # no payment method linked to the account


@dataclass(frozen=True)
class TopUpResult:
    verdict: TopUpVerdict
    amount: Decimal
    balance: Decimal  # the account's balance after (unchanged unless approved)
    last4: str
    payment_id: str
    duplicate: bool = False  # this payment_id had been credited before: nothing added now
    reason: str = ""


def parse_topup_amounts(text: str) -> list[Decimal]:
    """The ``topup_amounts`` setting as amounts ("5,10,20" -> [5, 10, 20]): what the
    top-up menu offers to pay."""
    amounts: list[Decimal] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = Decimal(part)
            to_micros(value)
        except (ArithmeticError, ValueError):
            raise ConfigError(f"topup_amounts: {part!r} is not an amount") from None
        if value <= 0:
            raise ConfigError(f"topup_amounts: {part!r} is not a positive amount")
        amounts.append(value)
    if not amounts:
        raise ConfigError("topup_amounts: no amounts")
    return amounts


@dataclass(frozen=True)
class _Started:
    """Step 1's outcome: either a final answer, or what to charge."""

    done: TopUpResult | None = None
    currency: str = ""
    token: str = ""  # stored method's token (stored/auto payments)
    last4: str = ""


def _check_payment_id(payment_id: str) -> None:
    if not payment_id or len(payment_id) > PAYMENT_ID_MAX:
        raise ValueError(f"a payment id is 1 to {PAYMENT_ID_MAX} characters")


def _check_amount(amount: Decimal) -> None:
    if not isinstance(amount, Decimal):
        raise TypeError("amounts are Decimal, never float")
    to_micros(amount)
    if amount <= 0:
        raise LedgerError(f"a top-up must be a positive amount, not {amount}")


def _answer_existing(s: Session, payment: Payment, account_id: int, amount: Decimal
                     ) -> TopUpResult | None:
    """A final answer for a payment_id seen before, or None to (re)try the gateway."""
    if payment.account_id != account_id or payment.amount != amount:
        raise LedgerError(f"payment {payment.payment_id!r} was already used for another top-up")
    if payment.status in (PaymentStatus.APPROVED, PaymentStatus.DECLINED):
        account = s.get(Account, account_id)
        assert account is not None
        return TopUpResult(TopUpVerdict(payment.status), amount, account.balance, payment.last4,
                           payment.payment_id, duplicate=payment.status == PaymentStatus.APPROVED,
                           reason=payment.reason)
    return None  # pending, timeout, error: the gateway's idempotency makes a retry safe


def _start(db: Database, account_id: int, amount: Decimal, payment_id: str, source: str,
           last4: str, now: datetime) -> _Started:
    """Step 1: insert the pending Payment, or answer from an earlier attempt."""
    for attempt in range(2):
        try:
            with db.transaction() as s:
                account = s.get(Account, account_id)
                if account is None:
                    raise LookupError(f"no account {account_id}")
                token = ""
                payment = s.scalar(select(Payment).where(Payment.payment_id == payment_id))
                if payment is not None:
                    done = _answer_existing(s, payment, account_id, amount)
                    if done is not None:
                        return _Started(done=done)
                if source != "card":
                    method = active_method(s, account_id)
                    if method is None:
                        return _Started(done=TopUpResult(TopUpVerdict.NO_METHOD, amount,
                                                         account.balance, "", payment_id))
                    token, last4 = method.token, method.last4
                if payment is None:
                    s.add(Payment(payment_id=payment_id, account_id=account_id, source=source,
                                  amount=amount, currency=account.currency,
                                  status=PaymentStatus.PENDING, last4=last4, created_at=now))
                    s.flush()
                else:
                    payment.status = PaymentStatus.PENDING
                return _Started(currency=account.currency, token=token, last4=last4)
        except IntegrityError:
            if attempt:  # the row exists now; the second pass reads it
                raise
    raise AssertionError("unreachable")


@overload
def finish(db: Database, payment_id: str, status: PaymentStatus, result: ChargeResult | None,
           *, save: bool, expiry: str, now: datetime) -> TopUpResult: ...


@overload
def finish(db: Database, payment_id: str, status: PaymentStatus, result: ChargeResult | None,
           *, save: bool, expiry: str, now: datetime,
           only_if: tuple[PaymentStatus, ...]) -> TopUpResult | None: ...


def finish(db: Database, payment_id: str, status: PaymentStatus, result: ChargeResult | None,
           *, save: bool, expiry: str, now: datetime,
           only_if: tuple[PaymentStatus, ...] | None = None) -> TopUpResult | None:
    """Step 3: record the outcome; on approval credit the ledger and keep the method.
    With ``only_if``: nothing (None) unless the payment's status is one of those (a
    concurrent attempt may have settled it meanwhile). Also used by reconciliation."""
    with db.transaction() as s:
        account_id = s.scalar(select(Payment.account_id).where(Payment.payment_id == payment_id))
        if account_id is None:
            raise LookupError(f"no payment {payment_id!r}")
        account = lock_account(s, account_id)  # lock order: account, then payment
        payment = s.execute(select(Payment).where(Payment.payment_id == payment_id)
                            .with_for_update()
                            .execution_options(populate_existing=True)).scalar_one()
        if only_if is not None and payment.status not in only_if:
            return None
        if payment.status == PaymentStatus.APPROVED and status is not PaymentStatus.APPROVED:
            # A concurrent attempt with this id was approved: that stands.
            return TopUpResult(TopUpVerdict.APPROVED, payment.amount, account.balance,
                               payment.last4, payment_id, duplicate=True)
        payment.status = status
        if result is not None:
            payment.gateway_ref = result.gateway_ref[:128]
            payment.reason = result.reason[:128]
            payment.last4 = result.last4 or payment.last4
        elif status is PaymentStatus.TIMEOUT:
            payment.reason = "gateway timeout"
        duplicate = False
        if status is PaymentStatus.APPROVED:
            # credit() also runs the after-credit rules (the low-balance notice).
            _, new = credit(s, account.id, payment.amount, EntryKind.TOPUP, ref=payment_id,
                            note=f"{payment.source} payment ...{payment.last4}", now=now)
            duplicate = not new
            if save and result is not None and result.token:
                _save_method(s, account.id, result, expiry, now)
        return TopUpResult(TopUpVerdict(status.value), payment.amount, account.balance,
                           payment.last4, payment_id, duplicate=duplicate, reason=payment.reason)


def _save_method(s: Session, account_id: int, result: ChargeResult, expiry: str,
                 now: datetime) -> None:
    """Link the card to the account (its one active method), or refresh it."""
    methods = s.scalars(select(PaymentMethod).where(PaymentMethod.account_id == account_id)).all()
    current = next((m for m in methods if m.token == result.token), None)
    for m in methods:
        if m is not current:
            m.active = False
    if current is None:
        current = PaymentMethod(account_id=account_id, token=result.token, created_at=now)
        s.add(current)
    current.last4, current.brand, current.active = result.last4, result.brand[:16], True
    current.expiry = expiry or current.expiry or ""


def active_method(s: Session, account_id: int) -> PaymentMethod | None:
    """The payment method linked to the account (the newest active one)."""
    return s.scalar(select(PaymentMethod)
                    .where(PaymentMethod.account_id == account_id, PaymentMethod.active)
                    .order_by(PaymentMethod.id.desc()).limit(1))


async def _charge(db: Database, started: _Started,
                  charge: Callable[[], Awaitable[ChargeResult]], payment_id: str,
                  *, save: bool, expiry: str, now: datetime) -> TopUpResult:
    """Step 2 and 3: call the gateway (no transaction open), then record the outcome."""
    result: ChargeResult | None = None
    try:
        result = await charge()
        assert result is not None
        status = PaymentStatus(result.status.value if isinstance(result.status, ChargeStatus)
                               else str(result.status))
    except GatewayTimeout:
        status = PaymentStatus.TIMEOUT
    except asyncio.CancelledError:
        # The caller hung up mid-charge: the row stays pending; a retry with this
        # payment_id (or an operator) settles it.
        raise
    except Exception as exc:  # a broken gateway: nothing credited; its message may echo data
        log.error("payment %s: gateway failed (%s)", payment_id, type(exc).__name__)
        result = ChargeResult(ChargeStatus.ERROR, last4=started.last4,
                              reason=f"gateway failure ({type(exc).__name__})")
        status = PaymentStatus.ERROR
    if status is PaymentStatus.PENDING:
        status = PaymentStatus.ERROR
    outcome = await db.run(finish, db, payment_id, status, result, save=save, expiry=expiry,
                           now=now)
    log.info("payment %s: %s %s card ...%s%s%s", payment_id, outcome.verdict.value,
             outcome.amount, outcome.last4, f" ({outcome.reason})" if outcome.reason else "",
             " (already credited)" if outcome.duplicate else "")
    return outcome


async def pay_with_card(
    db: Database,
    gateway: PaymentGateway,
    account_id: int,
    card: CardDetails,
    amount: Decimal,
    *,
    payment_id: str,
    save: bool = True,
    now: datetime | None = None,
) -> TopUpResult:
    """Charge a typed card and credit the account. With ``save`` the card's token becomes
    the account's linked payment method. Idempotent per ``payment_id``."""
    _check_amount(amount)
    _check_payment_id(payment_id)
    now = now or datetime.now(UTC)
    started = await db.run(_start, db, account_id, amount, payment_id, "card", card.last4, now)
    if started.done is not None:
        return started.done
    return await _charge(
        db, started,
        lambda: gateway.charge_card(card, amount, started.currency, payment_id),
        payment_id, save=save, expiry=card.expiry, now=now)


async def pay_with_stored(
    db: Database,
    gateway: PaymentGateway,
    account_id: int,
    amount: Decimal,
    *,
    payment_id: str,
    now: datetime | None = None,
) -> TopUpResult:
    """Charge the account's linked payment method (NO_METHOD if it has none)."""
    return await charge_method(db, gateway, account_id, amount, payment_id, "stored",
                               now or datetime.now(UTC))


async def charge_method(db: Database, gateway: PaymentGateway, account_id: int,
                        amount: Decimal, payment_id: str, source: str,
                        now: datetime) -> TopUpResult:
    """Charge the linked payment method, the ``Payment`` row marked with ``source``
    ("stored" when the caller asked, "auto" for an auto-recharge)."""
    _check_amount(amount)
    _check_payment_id(payment_id)
    started = await db.run(_start, db, account_id, amount, payment_id, source, "", now)
    if started.done is not None:
        return started.done
    return await _charge(
        db, started,
        lambda: gateway.charge_token(started.token, amount, started.currency, payment_id),
        payment_id, save=False, expiry="", now=now)
