"""The access-number line end to end in a real Asterisk: log-in, rating, Dial with the
limit enforced by Asterisk, settlement, failures that cost nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from ivr.db.models import Account, Cdr, EntryKind, LedgerEntry, Reservation, ReservationStatus
from ivr.ledger import ledger_sum
from ivr.testing.access import AccessLine, Caller
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk


def account_state(line: AccessLine, number: str) -> tuple[Decimal, Decimal, list[LedgerEntry]]:
    with line.db.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == number))
        assert account is not None
        entries = list(s.scalars(select(LedgerEntry).where(LedgerEntry.account_id == account.id)
                                 .order_by(LedgerEntry.id)))
        assert ledger_sum(s, account.id) == account.balance
        return account.balance, account.reserved, entries


def cdrs(line: AccessLine) -> list[Cdr]:
    with line.db.transaction() as s:
        return list(s.scalars(select(Cdr).order_by(Cdr.id)))


def open_reservations(line: AccessLine) -> list[Reservation]:
    with line.db.transaction() as s:
        return list(s.scalars(select(Reservation).where(
            Reservation.status == ReservationStatus.ACTIVE)))


async def test_call_of_known_length_is_charged_exactly(access_line: AccessLine, phone: Phone):
    card = access_line.card("5.00")
    call = await phone.call("ivr-access", callerid="15550001111")
    caller = Caller(call)
    await caller.log_in(card)
    # 999 605 ...: the test trunk answers and hangs up after 5 seconds.
    await caller.dial("9996051234")
    await caller.wait_prompt("call-cost")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()

    said = caller.heard
    assert said[:3] == ["welcome", "enter-card-number", "enter-pin"]
    assert "your-balance-is" in said and "you-have" in said and "connecting" in said
    balance, reserved, entries = account_state(access_line, card.account)
    # 0.60 a minute, per second: 5 seconds cost exactly 0.05.
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert entries[1].amount == Decimal("-0.05")
    assert balance == Decimal("4.95") and reserved == 0
    (cdr,) = cdrs(access_line)
    assert cdr.billable_seconds == 5 and cdr.cost == Decimal("0.05")
    assert cdr.destination == "19996051234" and cdr.prefix == "1"
    assert cdr.answered_at is not None or cdr.hangup_cause == "ANSWER"
    assert not open_reservations(access_line)
    assert access_line.server.stats.failed == 0
