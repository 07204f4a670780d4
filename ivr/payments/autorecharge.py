"""Auto-recharge: the account's linked payment method is charged the account's amount when
a live call takes its available balance below the account's threshold.

The policy (:func:`maybe_auto_recharge`): threshold and amount set, available balance below
the threshold, a linked method, no other call's auto-recharge in progress, the daily cap
(per UTC day) not exceeded, and at most once per call (payment id ``auto:<call key>``).
:func:`recharge` is what a charging session calls for its live call; it is handed the
database and gateway, so it needs no process-wide state. The session then renews the
call's hold from the new balance.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from ..db import Database, lock_account
from ..db.models import Payment, PaymentStatus
from .gateway import PaymentGateway
from .service import PAYMENT_ID_MAX, TopUpResult, TopUpVerdict, active_method, charge_method

log = logging.getLogger("ivr.payments.autorecharge")

# An auto-recharge still pending after this long is taken as abandoned (the process died
# mid-charge) and no longer stops another call's auto-recharge.
AUTO_PENDING_STALE = timedelta(minutes=5)


def auto_recharge_payment_id(call_key: str) -> str:
    """``auto:<call key>``; a key too long for the column is replaced by its digest."""
    payment_id = f"auto:{call_key}"
    if len(payment_id) > PAYMENT_ID_MAX:
        payment_id = "auto:" + hashlib.sha256(call_key.encode()).hexdigest()[:40]
    return payment_id


def _auto_due(db: Database, account_id: int, payment_id: str, now: datetime) -> Decimal | None:
    """The amount to auto-recharge now, or None. Runs with the account locked, so two calls
    on one account decide one after the other."""
    with db.transaction() as s:
        account = lock_account(s, account_id)
        threshold, amount = account.auto_recharge_threshold, account.auto_recharge_amount
        if threshold is None or amount is None or amount <= 0:
            return None
        if account.available >= threshold:
            return None
        if s.scalar(select(Payment.id).where(Payment.payment_id == payment_id)) is not None:
            return None  # this call already had its auto-recharge (whatever its outcome)
        if active_method(s, account_id) is None:
            return None
        day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        auto = (Payment.account_id == account_id, Payment.source == "auto")
        # Another call's auto-recharge is in progress: its credit may lift the balance.
        if s.scalar(select(Payment.id).where(*auto, Payment.status == PaymentStatus.PENDING,
                                             Payment.created_at >= now - AUTO_PENDING_STALE)
                    .limit(1)) is not None:
            return None
        if account.auto_recharge_daily_cap is not None:
            rows = s.scalars(select(Payment.amount).where(
                *auto, Payment.created_at >= day_start,
                Payment.status.in_([PaymentStatus.APPROVED, PaymentStatus.PENDING])))
            spent = sum(rows, Decimal(0))
            if spent + amount > account.auto_recharge_daily_cap:
                log.info("auto-recharge of account %s skipped: daily cap %s reached",
                         account.number, account.auto_recharge_daily_cap)
                return None
        return amount


async def maybe_auto_recharge(
    db: Database,
    gateway: PaymentGateway,
    account_id: int,
    *,
    call_key: str,
    now: datetime | None = None,
) -> TopUpResult | None:
    """Charge the linked payment method if the account's auto-recharge is due (see the
    module's docstring). None when nothing was due."""
    now = now or datetime.now(UTC)
    payment_id = auto_recharge_payment_id(call_key)
    amount = await db.run(_auto_due, db, account_id, payment_id, now)
    if amount is None:
        return None
    return await charge_method(db, gateway, account_id, amount, payment_id, "auto", now)


async def recharge(db: Database, gateway: PaymentGateway, *, account_id: int, call_key: str,
                   uniqueid: str = "") -> bool:
    """Auto-recharge the account of the live call ``call_key`` if it is due. True when the
    account was credited (so the caller renews the call's hold); ``uniqueid`` only names
    the call in the log."""
    result = await maybe_auto_recharge(db, gateway, account_id, call_key=call_key)
    if result is None:
        return False
    log.info("[%s] auto-recharge %s: %s", uniqueid or call_key, result.payment_id,
             result.verdict.name)
    return result.verdict is TopUpVerdict.APPROVED
