"""The top-up menu (ivr.flows.topup) as a card with nothing left meets it at log-in on
the access line, against the scripted fake Asterisk: a recharge code, a payment card
through the sandbox gateway, and the refusals. Each case checks the money to the cent
(balance, ledger entries, payments) and what the caller heard, and the card-number case
that the number is kept nowhere (log, database)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from ivr.db.models import Card, EntryKind, Payment, PaymentMethod, PaymentStatus, Voucher
from ivr.money import vouchers
from ivr.payments.sandbox import SANDBOX_APPROVE, SANDBOX_DECLINE
from ivr.testing.access import account_state, cdrs, open_reservations
from ivr.testing.scripted import Line, LineFactory, Outcome, ScriptedCaller

US_NUMBER = "12125550100"
# What a caller with an empty card hears before the menu.
EMPTY_LOG_IN = ["welcome", "enter-card-number", "enter-pin", "your-balance-is", "number:0",
                "digits/dollars", "card-empty"]


def future_expiry() -> str:
    """MMYY, December two years on: always valid."""
    return f"12{(datetime.now(UTC).year + 2) % 100:02d}"


def recharge_code(line: Line, value: str, tmp_path: Path) -> str:
    [issued] = vouchers.generate(line.db, 1, Decimal(value), "USD", tmp_path / "codes.csv",
                                 key=line.app.secret_key)
    return issued.code


async def test_empty_card_recharge_code_then_a_call(line: Line, tmp_path: Path) -> None:
    card = line.card("0")
    code = recharge_code(line, "0.50", tmp_path)
    caller = ScriptedCaller({"enter-card-number": [card.number], "enter-pin": [card.pin],
                             "topup-menu": ["2"], "enter-voucher": [code],
                             "enter-destination": [US_NUMBER]},
                            dials=[Outcome.answered(20)])
    await line.call(caller)

    assert caller.heard == [
        *EMPTY_LOG_IN,
        "topup-menu", "enter-voucher", "topup-done", "your-new-balance-is",
        "number:50", "unit-cents",
        # With money, the caller goes on to call: 50 cents buy 50 s.
        "your-balance-is", "number:50", "unit-cents",
        "enter-destination", "you-have", "number:50", "seconds", "for-this-call",
        "connecting", "call-cost", "number:20", "unit-cents",
        "your-balance-is", "number:30", "unit-cents", "another-call", "goodbye",
    ]
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("0.30"), Decimal(0))
    assert [(e.kind, e.amount, e.balance_after) for e in entries
            if e.kind in (EntryKind.VOUCHER, EntryKind.CALL)] == [
        (EntryKind.VOUCHER, Decimal("0.50"), Decimal("0.50")),
        (EntryKind.CALL, Decimal("-0.20"), Decimal("0.30")),
    ]
    [cdr] = cdrs(line.db)
    assert (cdr.billable_seconds, cdr.cost) == (20, Decimal("0.20"))
    assert open_reservations(line.db) == []
    with line.db.transaction() as s:
        [voucher] = s.scalars(select(Voucher))
        assert voucher.status.value == "redeemed"


async def test_wrong_recharge_code_credits_nothing(line: Line, tmp_path: Path) -> None:
    card = line.card("0")
    code = recharge_code(line, "0.50", tmp_path)
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
    caller = ScriptedCaller({"enter-card-number": [card.number], "enter-pin": [card.pin],
                             "topup-menu": ["2"], "enter-voucher": [wrong]})
    await line.call(caller)

    assert caller.prompts == [
        "welcome", "enter-card-number", "enter-pin", "your-balance-is", "card-empty",
        "topup-menu", "enter-voucher", "invalid-voucher", "goodbye"]
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal(0), Decimal(0))
    assert [e for e in entries if e.kind is EntryKind.VOUCHER] == []
    with line.db.transaction() as s:
        row = s.get(Card, card.card_id)
        assert row is not None and row.failed_codes == 1  # counted like a wrong PIN


async def test_empty_card_pays_by_card_through_the_sandbox(make_line: LineFactory,
                                                           caplog) -> None:
    caplog.set_level(logging.DEBUG)
    line = await make_line(topup_amounts="3,7,25")
    card = line.card("0")
    expiry = future_expiry()
    caller = ScriptedCaller({
        "enter-card-number": [card.number], "enter-pin": [card.pin],
        "topup-menu": ["1"], "enter-credit-card": [SANDBOX_APPROVE],
        "enter-expiry": [expiry], "enter-cvv": ["123"], "confirm-or-reenter": ["1"],
        "choose-amount": ["2"],  # topup_amounts "3,7,25": key 2 is 7 dollars
        "enter-destination": [US_NUMBER],
    }, dials=[Outcome.answered(60)])
    await line.call(caller)

    assert caller.heard == [
        *EMPTY_LOG_IN,
        "topup-menu", "enter-credit-card", "enter-expiry", "enter-cvv",
        "card-ending-in", "digits:1111", "confirm-or-reenter",
        "choose-amount", "processing-payment",
        "topup-done", "your-new-balance-is", "number:7", "digits/dollars",
        "your-balance-is", "number:7", "digits/dollars",
        "enter-destination", "you-have", "number:11", "minutes", "for-this-call",
        "connecting", "call-cost", "number:60", "unit-cents",
        "your-balance-is", "number:6", "digits/dollars", "vm-and", "number:40", "unit-cents",
        "another-call", "goodbye",
    ]
    assert caller.left() == {}
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("6.40"), Decimal(0))
    topups = [e for e in entries if e.kind is EntryKind.TOPUP]
    assert [(e.amount, e.balance_after) for e in topups] == [(Decimal("7.00"), Decimal("7.00"))]
    assert [e.amount for e in entries if e.kind is EntryKind.CALL] == [Decimal("-0.60")]
    with line.db.transaction() as s:
        [payment] = s.scalars(select(Payment))
        methods = list(s.scalars(select(PaymentMethod)))
        stored = " ".join(
            " ".join(str(getattr(row, col.key)) for col in row.__table__.columns)
            for row in [payment, *methods])
    assert (payment.status, payment.amount, payment.source, payment.last4) == (
        PaymentStatus.APPROVED, Decimal("7.00"), "card", "1111")
    assert topups[0].ref == payment.payment_id  # credited once per payment id
    assert [(m.last4, m.expiry) for m in methods] == [("1111", expiry)]
    # The card number (and its security code) is kept nowhere: not in the log...
    assert SANDBOX_APPROVE not in caplog.text
    assert "-> GET DATA <redacted>" in caplog.text  # the debug log was on
    # ...not in the payment rows, not anywhere in the database file.
    assert SANDBOX_APPROVE not in stored
    db_files = list(line.app.settings.data_dir.glob("ivr.sqlite3*"))
    assert db_files
    for path in db_files:
        assert SANDBOX_APPROVE.encode() not in path.read_bytes(), path


async def test_declined_card_credits_nothing(line: Line) -> None:
    card = line.card("0")
    caller = ScriptedCaller({
        "enter-card-number": [card.number], "enter-pin": [card.pin],
        "topup-menu": ["1"], "enter-credit-card": [SANDBOX_DECLINE],
        "enter-expiry": [future_expiry()], "enter-cvv": ["123"], "confirm-or-reenter": ["1"],
        "choose-amount": ["1"],
    })
    await line.call(caller)

    assert caller.prompts[-4:] == [
        "choose-amount", "processing-payment", "payment-declined", "goodbye"]
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal(0), Decimal(0))
    assert [e for e in entries if e.kind is EntryKind.TOPUP] == []
    with line.db.transaction() as s:
        [payment] = s.scalars(select(Payment))
        assert (payment.status, payment.amount) == (PaymentStatus.DECLINED, Decimal("5.00"))
        assert list(s.scalars(select(PaymentMethod))) == []


async def test_saved_method_after_a_card_payment(make_line: LineFactory) -> None:
    """The card paid with once is linked to the account: on a later call the caller
    tops up with it by PIN alone (menu 3), and a wrong PIN charges nothing."""
    line = await make_line(reservation_hold=0)  # one hold of all the money: 500 s
    card = line.card("0")
    first = ScriptedCaller({
        "enter-card-number": [card.number], "enter-pin": [card.pin],
        "topup-menu": ["1"], "enter-credit-card": [SANDBOX_APPROVE],
        "enter-expiry": [future_expiry()], "enter-cvv": ["123"], "confirm-or-reenter": ["1"],
        "choose-amount": ["1"], "enter-destination": [US_NUMBER],
    }, dials=[Outcome.answered(500)])  # the whole 5.00
    await line.call(first, uniqueid="1700000000.1")
    assert first.prompts[-2:] == ["card-empty", "goodbye"]
    assert account_state(line.db, card.account)[:2] == (Decimal(0), Decimal(0))

    wrong = ScriptedCaller({"enter-card-number": [card.number], "enter-pin": [card.pin],
                            "topup-menu": ["3"], "enter-pin-to-confirm": ["0000"]})
    await line.call(wrong, uniqueid="1700000000.2")
    assert wrong.prompts[-4:] == ["topup-menu", "enter-pin-to-confirm", "wrong-pin", "goodbye"]
    assert account_state(line.db, card.account)[0] == Decimal(0)

    saved = ScriptedCaller({"enter-card-number": [card.number], "enter-pin": [card.pin],
                            "topup-menu": ["3"], "enter-pin-to-confirm": [card.pin],
                            "choose-amount": ["3"]})
    await line.call(saved, uniqueid="1700000000.3")
    assert saved.prompts[5:11] == ["topup-menu", "enter-pin-to-confirm", "choose-amount",
                                   "processing-payment", "topup-done", "your-new-balance-is"]
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("20.00"), Decimal(0))
    assert [(e.kind, e.amount) for e in entries if e.kind is not EntryKind.ADJUSTMENT] == [
        (EntryKind.TOPUP, Decimal("5.00")), (EntryKind.CALL, Decimal("-5.00")),
        (EntryKind.TOPUP, Decimal("20.00"))]
    with line.db.transaction() as s:
        sources = [(p.source, p.amount, p.status) for p in s.scalars(
            select(Payment).order_by(Payment.id))]
    assert sources == [("card", Decimal("5.00"), PaymentStatus.APPROVED),
                       ("stored", Decimal("20.00"), PaymentStatus.APPROVED)]
