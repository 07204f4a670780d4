"""The access-number line end to end in a real Asterisk: log-in, rating, Dial with the
limit enforced by Asterisk, settlement, failures that cost nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from ivr.db.models import EntryKind
from ivr.testing.access import (
    AccessLine,
    Caller,
    CardInHand,
    account_state,
    cdrs,
    open_reservations,
)
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk


async def test_call_of_known_length_is_charged_exactly(access_line: AccessLine, phone: Phone):
    card = access_line.card("5.00")
    call = await phone.call("ivr-access", callerid="15550001111")
    caller = Caller(call)
    await caller.log_in(card)
    # 999 605 ...: the test trunk answers and hangs up after 5 seconds.
    await caller.dial("9996051234")
    await caller.wait_prompt("another-call")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()

    said = caller.heard
    assert said[:3] == ["welcome", "enter-card-number", "enter-pin"]
    assert "your-balance-is" in said and "you-have" in said and "connecting" in said
    # After the call: its cost, then the new balance (4 dollars and 95 cents).
    after = said[said.index("call-cost"):]
    assert after[:4] == ["call-cost", "number:5", "unit-cents", "your-balance-is"]
    assert after[4:8] == ["number:4", "digits/dollars", "vm-and", "number:95"]
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


async def test_failed_dials_cost_nothing_and_the_caller_dials_again(
    access_line: AccessLine, phone: Phone
):
    card = access_line.card("2.00")
    call = await phone.call("ivr-access", callerid="15550002222")
    caller = Caller(call)
    await caller.log_in(card)
    # The test trunk: 999 9.. busy, 999 8.. rings (4 s dial timeout), 999 7.. congested,
    # 999 5.. unavailable. Each failure has its prompt and the caller may dial again.
    for digits, prompt in (("9999001234", "busy"), ("9998001234", "no-answer"),
                           ("9997001234", "congestion"), ("9995001234", "congestion")):
        await caller.dial(digits)
        await caller.wait_prompt(prompt)
        await caller.answer("another-call", "1")
    await caller.wait_prompt("enter-destination")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()

    balance, reserved, entries = account_state(access_line, card.account)
    assert balance == Decimal("2.00") and reserved == 0
    assert [e.kind for e in entries] == [EntryKind.TOPUP]
    records = cdrs(access_line)
    assert [c.hangup_cause for c in records] == ["BUSY", "NOANSWER", "CONGESTION", "CHANUNAVAIL"]
    assert all(c.cost == 0 and c.billable_seconds == 0 for c in records)
    assert not open_reservations(access_line)


async def test_unknown_and_invalid_destinations_get_another_try(
    access_line: AccessLine, phone: Phone
):
    card = access_line.card("2.00")
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.log_in(card)
    await caller.dial("01133123456789")  # France: not in the deck
    await caller.wait_prompt("unknown-destination")
    await caller.dial("12")  # not a possible number
    await caller.wait_prompt("invalid-number")
    await caller.dial("9996021234")  # a 2-second call
    await caller.wait_prompt("call-cost")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()
    balance, _, _ = account_state(access_line, card.account)
    assert balance == Decimal("1.98")
    assert [c.destination for c in cdrs(access_line)] == ["19996021234"]


@pytest.mark.parametrize(
    "access_line", [{}, pytest.param({"database": "postgres"}, marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"], indirect=True,
)
async def test_two_cards_of_one_shared_account_cannot_overdraw_it(
    access_line: AccessLine, phone: Phone
):
    # 0.10 buys 10 seconds to the US; two cards on the account dial at the same moment.
    first = access_line.card("0.10")
    second = access_line.card("0", account=first.account)
    calls = [await phone.call("ivr-access", callerid=f"1555000999{i}") for i in range(2)]
    together = asyncio.Barrier(2)

    async def place(call, card) -> Caller:
        caller = Caller(call)
        await caller.log_in(card)
        await caller.wait_prompt("enter-destination")
        await together.wait()
        await call.send_dtmf("2125550100#")
        return caller

    callers = await asyncio.gather(*(place(c, k) for c, k in zip(calls, (first, second),
                                                                  strict=True)))
    # One is granted the whole balance; the other is told it is not enough.
    outcomes = await asyncio.gather(*(
        c.call.wait_for(lambda x: next((p for p in Caller(x).heard
                                        if p in ("connecting", "not-enough-balance")), None),
                        60, "connect or refusal")
        for c in callers))
    assert sorted(outcomes) == ["connecting", "not-enough-balance"]
    winner = callers[outcomes.index("connecting")]
    await winner.wait_prompt("time-up", timeout=40)
    for call in calls:
        await call.hangup()
        await call.wait_ended()
    await access_line.server.wait_idle()

    balance, reserved, entries = account_state(access_line, first.account)
    assert balance == Decimal("0") and reserved == 0
    assert [e.amount for e in entries if e.kind is EntryKind.CALL] == [Decimal("-0.10")]
    assert all(e.balance_after >= 0 for e in entries)
    assert not open_reservations(access_line)


@pytest.mark.parametrize(
    "access_line",
    [{"reservation_hold": 8, "low_balance_warning": 2, "final_warning": 0},
     pytest.param({"reservation_hold": 8, "low_balance_warning": 2, "final_warning": 0,
                   "database": "postgres"}, marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"], indirect=True,
)
async def test_two_cards_of_one_account_call_at_once_on_renewed_holds(
    access_line: AccessLine, phone: Phone
):
    # 0.30 buys 30 seconds to the US. Each call holds 8 s at a time and the controller
    # renews the holds, so both calls go through and share the money to the second.
    first = access_line.card("0.30")
    second = access_line.card("0", account=first.account)
    calls = [await phone.call("ivr-access", callerid=f"1555000888{i}") for i in range(2)]
    callers = [Caller(c) for c in calls]

    async def log_in(caller: Caller, card: CardInHand) -> None:
        await caller.log_in(card)
        await caller.wait_prompt("enter-destination")

    await asyncio.gather(*(log_in(c, k) for c, k in zip(callers, (first, second), strict=True)))
    # The first caller is told what all the money buys, not the 8 s slice.
    await callers[0].call.send_dtmf("2125550100#")
    await callers[0].wait_prompt("connecting")
    await callers[1].call.send_dtmf("2125550101#")
    await callers[1].wait_prompt("connecting")
    assert "number:30" in callers[0].heard
    for caller in callers:
        await caller.wait_prompt("time-up", timeout=60)
    for call in calls:
        await call.hangup()
        await call.wait_ended()
    await access_line.server.wait_idle()

    balance, reserved, entries = account_state(access_line, first.account)
    assert balance == Decimal("0") and reserved == 0
    charges = [e.amount for e in entries if e.kind is EntryKind.CALL]
    assert len(charges) == 2 and sum(charges) == Decimal("-0.30")
    assert all(e.balance_after >= 0 for e in entries)
    seconds = [c.billable_seconds for c in cdrs(access_line)]
    assert sum(seconds) == 30 and min(seconds) > 8  # both outlived their first hold
    assert not open_reservations(access_line)


@pytest.mark.parametrize(
    "access_line", [{}, pytest.param({"database": "postgres"}, marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"], indirect=True,
)
async def test_two_cards_of_a_small_account_both_call_on_the_default_hold(
    access_line: AccessLine, phone: Phone
):
    # Issue 11: 0.40 buys 40 seconds to the US, far less than the default 300 s hold. The
    # first call holds only a share of it while the second card is idle, so the second
    # card gets through too (it used to hear "not enough balance").
    assert access_line.settings.reservation_hold == 300
    first = access_line.card("0.40")
    second = access_line.card("0", account=first.account)
    calls = [await phone.call("ivr-access", callerid=f"1555000777{i}") for i in range(2)]
    callers = [Caller(c) for c in calls]

    async def log_in(caller: Caller, card: CardInHand) -> None:
        await caller.log_in(card)
        await caller.wait_prompt("enter-destination")

    await asyncio.gather(*(log_in(c, k) for c, k in zip(callers, (first, second), strict=True)))
    await callers[0].call.send_dtmf("2125550100#")
    await callers[0].wait_prompt("connecting")
    await callers[1].call.send_dtmf("2125550101#")
    await callers[1].wait_prompt("connecting")
    assert "not-enough-balance" not in callers[1].heard
    assert "number:40" in callers[0].heard  # what all the money buys
    for caller in callers:
        await caller.wait_prompt("time-up", timeout=60)
    for call in calls:
        await call.hangup()
        await call.wait_ended()
    await access_line.server.wait_idle()

    balance, reserved, entries = account_state(access_line, first.account)
    assert balance == Decimal("0") and reserved == 0
    charges = [e.amount for e in entries if e.kind is EntryKind.CALL]
    assert len(charges) == 2 and sum(charges) == Decimal("-0.40")
    assert all(e.balance_after >= 0 for e in entries)
    assert sum(c.billable_seconds for c in cdrs(access_line)) == 40
    assert not open_reservations(access_line)


@pytest.mark.parametrize(
    "access_line", [{"low_balance_warning": 16, "final_warning": 4}], indirect=True
)
async def test_a_calls_trace_tells_its_story_with_the_pin_masked(
    access_line: AccessLine, phone: Phone
):
    from ivr.live.trace import MASK, read_trace

    # 1.20 a minute to the UK, per second: 0.40 buys 20 seconds, cut by Asterisk, with a
    # warning 16 s and a last one 4 s before the cut.
    card = access_line.card("0.40")
    call = await phone.call("ivr-access", callerid="15550004444")
    caller = Caller(call)
    await caller.log_in(card)
    await caller.dial("011442079460000")
    await caller.wait_prompt("call-cost", timeout=90)
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()
    await access_line.app.trace.flush()

    events = await asyncio.to_thread(read_trace, access_line.db, call.id)
    kinds = [e.kind for e in events]
    prompts = [e.detail.get("prompt") for e in events if e.kind == "prompt"]
    assert prompts[:3] == ["welcome", "enter-card-number", "enter-pin"]
    keys = [e.detail for e in events if e.kind == "keys"]
    assert keys[0] == {"keys": MASK * len(card.number), "count": len(card.number),
                       "masked": True}
    assert keys[1] == {"keys": MASK * len(card.pin), "count": len(card.pin), "masked": True}
    assert keys[2]["keys"] == "011442079460000"
    (grant,) = [e.detail for e in events if e.kind == "grant"]
    assert (grant["seconds"], grant["amount"], grant["currency"]) == (20, "0.40", "USD")
    assert [e.detail["warning"] for e in events if e.kind == "warning"] == [
        "warning", "final"]
    (end,) = [e.detail for e in events if e.kind == "end"]
    assert (end["status"], end["seconds"], end["cost"], end["currency"]) == (
        "ANSWER", 20, "0.40", "USD")
    assert (kinds.index("grant") < kinds.index("dial") < kinds.index("answer")
            < kinds.index("warning") < kinds.index("end"))
    # No PIN or card digits in anything stored about the call (ids and channels aside).
    for e in events:
        for name, value in e.detail.items():
            if name not in ("call", "channel", "target") and isinstance(value, str):
                assert card.pin not in value and card.number not in value, (e.kind, name)
