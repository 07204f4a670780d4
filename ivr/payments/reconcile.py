"""Settling payments whose outcome is unknown.

With a real processor a timed-out charge may still have gone through, and a process that
died mid-charge leaves its row ``pending``. :func:`reconcile` (run by ``ivr serve`` every
``payment_reconcile_interval`` seconds, and by ``ivr payments reconcile``) asks the gateway
what became of each such payment once it is ``payment_reconcile_after`` seconds old,
credits the ones that were charged (once: the ledger ref is the payment id) and closes the
others, so a customer is never charged for credit they did not get.

:func:`list_payments` is the operators' view of the payments (``ivr payments list``, the
console's payments page): only the last four digits of a card, never a token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from ..db import Database
from ..db.models import Account, Payment, PaymentStatus, RatingPlan
from ..db.types import as_utc
from .gateway import ChargeResult, ChargeStatus, PaymentGateway
from .service import TopUpResult, finish

log = logging.getLogger("ivr.payments")

UNRESOLVED = (PaymentStatus.PENDING, PaymentStatus.TIMEOUT)


def _unresolved(db: Database, before: datetime) -> list[str]:
    """Payment ids left pending or timed out, created at or before ``before``."""
    with db.transaction() as s:
        return list(s.scalars(select(Payment.payment_id).where(
            Payment.status.in_(UNRESOLVED), Payment.created_at <= before)
            .order_by(Payment.id)))


async def reconcile(db: Database, gateway: PaymentGateway, *, older_than: timedelta,
                    now: datetime | None = None) -> list[TopUpResult]:
    """Settle payments left ``pending`` (the process died mid-charge) or ``timeout`` (the
    gateway did not answer in time) once they are ``older_than``: a charge the gateway
    approved is credited (idempotent per payment id), anything else is closed as declined
    with the reason. Returns what was decided, one result per payment."""
    now = now or datetime.now(UTC)
    decided: list[TopUpResult] = []
    for payment_id in await db.run(_unresolved, db, now - older_than):
        result = await gateway.lookup(payment_id)
        if result is None:
            status = PaymentStatus.DECLINED
            result = ChargeResult(ChargeStatus.DECLINED,
                                  reason="not charged (no record at the gateway)")
        else:
            status = PaymentStatus(result.status.value)
            if status is PaymentStatus.ERROR:
                status = PaymentStatus.DECLINED
        outcome = await db.run(finish, db, payment_id, status, result, save=False, expiry="",
                               now=now, only_if=UNRESOLVED)
        if outcome is not None:
            log.info("payment %s reconciled: %s %s", payment_id, outcome.verdict.value,
                     outcome.amount)
            decided.append(outcome)
    return decided


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PaymentInfo:
    """A payment as operators see it (the card's last four digits only)."""

    id: int
    payment_id: str
    at: datetime
    account: str  # the account's number
    source: str  # card, stored, auto
    amount: Decimal
    currency: str
    decimals: int  # the account's plan's, to show the amount with
    status: PaymentStatus
    last4: str
    reason: str


def list_payments(
    db: Database,
    *,
    status: PaymentStatus | None = None,
    account: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[PaymentInfo]:
    """Payments, the newest first (keyset pages: ``before`` an id): of ``status``, of
    ``account`` (its number; ivr.money.accounts.NotFound if none), made in [``start``,
    ``end``)."""
    from ..money.listing import newest_page

    with db.reading() as s:
        query = newest_page(
            s, select(Payment, Account.number, RatingPlan.decimals)
            .join(Account, Account.id == Payment.account_id)
            .join(RatingPlan, RatingPlan.id == Account.plan_id),
            id_column=Payment.id, created_column=Payment.created_at,
            account_column=Payment.account_id, account=account, start=start, end=end,
            before=before, limit=limit)
        if status is not None:
            query = query.where(Payment.status == status)
        return [PaymentInfo(p.id, p.payment_id, as_utc(p.created_at), number, p.source,
                            p.amount, p.currency, decimals, PaymentStatus(p.status), p.last4,
                            p.reason)
                for p, number, decimals in s.execute(query).all()]


def payment_decimals(db: Database, payment_ids: Iterable[str]) -> dict[str, int]:
    """The decimals each payment's amount is shown with (its account's plan's)."""
    ids = list(payment_ids)
    if not ids:
        return {}
    with db.reading() as s:
        return {payment_id: int(decimals) for payment_id, decimals in s.execute(
            select(Payment.payment_id, RatingPlan.decimals)
            .join(Account, Account.id == Payment.account_id)
            .join(RatingPlan, RatingPlan.id == Account.plan_id)
            .where(Payment.payment_id.in_(ids))).all()}
