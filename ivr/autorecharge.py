"""Auto-recharge during a call (seed 001): the call controller calls :func:`recharge`
when a live call takes its account's balance below the account's threshold. The linked
payment method is charged the account's amount, once per call (payment id
``auto:<call key>``) and within the daily cap (ivr.payments); the controller then renews
the call's hold from the new balance."""

from __future__ import annotations

import asyncio
import logging

from . import login, payments, runtime
from .calls import LiveCall

log = logging.getLogger("ivr.autorecharge")


async def recharge(call: LiveCall) -> bool:
    """True when the account was credited."""
    db = await asyncio.to_thread(runtime.get_database)
    if call.card_id is None:
        return False
    holder = await db.run(login.holder, db, call.card_id)
    result = await payments.maybe_auto_recharge(
        db, runtime.get_gateway(), holder.account_id, call_key=call.key)
    if result is None:
        return False
    log.info("[%s] auto-recharge %s: %s", call.uniqueid, result.payment_id, result.verdict.name)
    return result.verdict.name == "APPROVED"
