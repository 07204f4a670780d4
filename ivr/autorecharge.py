"""Auto-recharge during a call (seed 001): the call controller calls :func:`recharge`
when a live call takes its account's balance below the account's threshold. The linked
payment method is charged the account's amount, once per call (payment id
``auto:<call key>``) and within the daily cap (ivr.payments); the call's grant then grows
to what the new balance buys."""

from __future__ import annotations

import asyncio
import logging

from . import login, payments, runtime
from .calls import LiveCall

log = logging.getLogger("ivr.autorecharge")


async def recharge(call: LiveCall) -> int | None:
    """The call's new grant in seconds from answer, or None when nothing was charged."""
    db, ledger = await asyncio.to_thread(lambda: (runtime.get_database(), runtime.get_ledger()))
    if call.card_id is None:
        return None
    holder = await asyncio.to_thread(login.holder, db, call.card_id)
    result = await payments.maybe_auto_recharge(
        db, runtime.get_gateway(), holder.account_id, call_key=call.key)
    if result is None:
        return None
    log.info("[%s] auto-recharge %s: %s", call.uniqueid, result.payment_id, result.verdict.name)
    if result.verdict.name != "APPROVED":
        return None
    grant = await asyncio.to_thread(ledger.extend, call.reservation_id)
    return grant.seconds
