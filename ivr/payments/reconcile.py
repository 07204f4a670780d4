"""Settling payments whose outcome is unknown.

With a real processor a timed-out charge may still have gone through, and a process that
died mid-charge leaves its row ``pending``. :func:`reconcile` (run by ``ivr serve`` every
``payment_reconcile_interval`` seconds, and by ``ivr payments reconcile``) asks the gateway
what became of each such payment once it is ``payment_reconcile_after`` seconds old,
credits the ones that were charged (once: the ledger ref is the payment id) and closes the
others, so a customer is never charged for credit they did not get.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from ..db import Database
from ..db.models import Payment, PaymentStatus
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
