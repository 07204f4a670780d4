"""Rate decks against live calls in a real Asterisk: a deck imported during a call does
not re-price it."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import select

from ivr.db.models import EntryKind, RatingPlan
from ivr.money.rates_store import import_rows
from ivr.rating import parse_deck
from ivr.testing.access import AccessLine, Caller, account_state, cdrs, open_reservations
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk

TEN_TIMES_DEARER = """\
plan,prefix,destination,rate,increment
retail,1,USA,6.00,1
retail,44,United Kingdom,12.00,1
"""


async def test_a_deck_imported_mid_call_does_not_reprice_it(
    access_line: AccessLine, phone: Phone
):
    card = access_line.card("5.00")
    call = await phone.call("ivr-access", callerid="15550001111")
    caller = Caller(call)
    await caller.log_in(card)
    # 19996 08 ...: the test trunk answers and hangs up after 8 seconds.
    await caller.dial("9996081234")
    await caller.wait_prompt("connecting")
    # Authorized at 0.60/min; the operator now imports a deck ten times dearer, and the
    # server has compiled it before the call ends.
    with access_line.db.transaction() as s:
        assert import_rows(s, parse_deck(TEN_TIMES_DEARER)).versions == {"retail": 2}
        plan_id = s.scalar(select(RatingPlan.id).where(RatingPlan.name == "retail"))
    rates = access_line.ledger.rates
    rates.invalidate()
    assert (await asyncio.to_thread(rates.get, plan_id)).version == 2
    await caller.wait_prompt("another-call")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()

    (cdr,) = cdrs(access_line)
    assert cdr.billable_seconds == 8
    assert cdr.cost == Decimal("0.08")  # 0.80 at the new rate
    balance, reserved, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert balance == Decimal("4.92") and reserved == 0
    assert not open_reservations(access_line)
