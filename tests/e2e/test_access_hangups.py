"""A caller hangs up at every step of the access line: the session ends cleanly, no
reservation is left behind, and nothing is charged unless the called party answered."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from ivr.db.models import EntryKind
from ivr.testing.access import AccessLine, Caller, account_state, open_reservations
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk

# (step, what the caller does before hanging up, whether a call was answered)
BEFORE_LOG_IN = ["welcome", "enter-card-number", "enter-pin"]
AFTER_LOG_IN = ["your-balance-is", "enter-destination"]
AFTER_DIAL = ["you-have", "for-this-call", "connecting", "ringing", "answered", "call-cost",
              "another-call"]
STEPS = BEFORE_LOG_IN + AFTER_LOG_IN + AFTER_DIAL


@pytest.mark.parametrize("step", STEPS)
async def test_hang_up_at(step: str, access_line: AccessLine, phone: Phone):
    card = access_line.card("5.00")
    call = await phone.call("ivr-access")
    caller = Caller(call)
    if step in BEFORE_LOG_IN:
        if step == "enter-pin":
            await caller.answer("enter-card-number", card.number + "#")
        await caller.wait_prompt(step)
    else:
        await caller.log_in(card)
        if step in AFTER_LOG_IN:
            await caller.wait_prompt(step)
        else:
            # 999 8..: rings without answer; anything else answers.
            await caller.dial("9998001234" if step == "ringing" else "9996031234")
            if step == "ringing":
                await call.wait_for(lambda c: any(x.verb == "EXEC" for x in c.commands), 60,
                                    "Dial")
                await asyncio.sleep(1)
            elif step == "answered":
                await call.wait_for(lambda c: any(x.verb == "EXEC" for x in c.commands), 60,
                                    "Dial")
                await asyncio.sleep(2)  # inside the 3-second call
            else:
                await caller.wait_prompt(step)
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()

    assert access_line.server.stats.failed == 0
    assert not access_line.server.sessions
    assert access_line.controller.live_calls == 0
    assert not open_reservations(access_line)
    _, reserved, entries = account_state(access_line, card.account)
    assert reserved == 0
    charges = [e for e in entries if e.kind is EntryKind.CALL]
    if step in ("answered", "call-cost", "another-call"):
        # The called party answered: charged once, for what was talked.
        assert len(charges) == 1 and Decimal(0) < -charges[0].amount <= Decimal("0.03")
    else:
        assert charges == []
