"""Card top-ups, stored payment methods and auto-recharge, on SQLite and on a real
PostgreSQL: what is credited, what is recorded, and that card numbers and CVVs are not."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from ivr.cli.topups import add_commands
from ivr.config import Settings
from ivr.db import Database
from ivr.db.models import Account, Base, EntryKind, LedgerEntry, Payment, PaymentMethod
from ivr.money.accounts import create_account
from ivr.money.ledger import Ledger, LedgerError
from ivr.payments import (
    SANDBOX_APPROVE,
    SANDBOX_DECLINE,
    SANDBOX_TIMEOUT,
    CardDetails,
    ChargeStatus,
    SandboxGateway,
    TopUpVerdict,
    maybe_auto_recharge,
    pay_with_card,
    pay_with_stored,
    reconcile,
)
from ivr.testing.access import balance_of, create_test_plan

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EXPIRY = "1230"
CVV = "913"


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)  # "retail", USD
    return db


@pytest.fixture
def gw() -> SandboxGateway:
    return SandboxGateway(b"topup-tests", delay=0.01, timeout=0.5)


def new_account(db: Database, balance: str, **values: object) -> int:
    with db.transaction() as s:
        account = create_account(s, "retail", balance=Decimal(balance))
        for key, value in values.items():
            setattr(account, key, value)
        return account.id


def typed(number: str = SANDBOX_APPROVE, cvv: str = CVV) -> CardDetails:
    return CardDetails(number, EXPIRY, cvv)


def payments(db: Database, account_id: int) -> list[Payment]:
    with db.transaction() as s:
        return list(s.scalars(select(Payment).where(Payment.account_id == account_id)
                              .order_by(Payment.id)))


def methods(db: Database, account_id: int) -> list[PaymentMethod]:
    with db.transaction() as s:
        return list(s.scalars(select(PaymentMethod)
                              .where(PaymentMethod.account_id == account_id)
                              .order_by(PaymentMethod.id)))


def topups(db: Database, account_id: int) -> list[LedgerEntry]:
    with db.transaction() as s:
        return list(s.scalars(select(LedgerEntry).where(
            LedgerEntry.account_id == account_id, LedgerEntry.kind == EntryKind.TOPUP,
            LedgerEntry.ref.is_not(None), LedgerEntry.ref.not_like("opening:%"))))


def link_method(db: Database, account_id: int, token: str, last4: str = "1111") -> None:
    with db.transaction() as s:
        s.add(PaymentMethod(account_id=account_id, token=token, last4=last4, brand="visa",
                            expiry=EXPIRY, active=True, created_at=NOW))


# --------------------------------------------------------------------------- card


async def test_approved_card_payment_credits_once(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "1.50")
    result = await pay_with_card(plan, gw, account, typed(), Decimal("10"), payment_id="pay-1")
    assert result.verdict is TopUpVerdict.APPROVED
    assert (result.amount, result.balance, result.last4) == (Decimal(10), Decimal("11.50"),
                                                             "1111")
    assert result.payment_id == "pay-1" and not result.duplicate
    assert balance_of(plan, account) == Decimal("11.50")
    [entry] = topups(plan, account)
    assert (entry.ref, entry.amount) == ("pay-1", Decimal(10))
    [payment] = payments(plan, account)
    assert (payment.status, payment.source, payment.last4) == ("approved", "card", "1111")
    assert payment.gateway_ref.startswith("sbxch_") and payment.currency == "USD"
    [method] = methods(plan, account)
    assert (method.token, method.last4, method.brand, method.expiry, method.active) == (
        gw.token_for(SANDBOX_APPROVE), "1111", "visa", EXPIRY, True)

    # The same payment id again (a retry, or after a restart with a new gateway): nothing
    # more is charged or credited.
    for gateway in (gw, SandboxGateway(b"topup-tests", delay=0)):
        again = await pay_with_card(plan, gateway, account, typed(), Decimal("10"),
                                    payment_id="pay-1")
        assert again.verdict is TopUpVerdict.APPROVED and again.duplicate
        assert again.balance == Decimal("11.50")
    assert gw.charges == 1
    assert balance_of(plan, account) == Decimal("11.50")
    assert len(topups(plan, account)) == 1 and len(payments(plan, account)) == 1
    assert len(methods(plan, account)) == 1


async def test_concurrent_attempts_with_one_payment_id_credit_once(plan: Database,
                                                                  gw: SandboxGateway):
    account = new_account(plan, "0")
    results = await asyncio.gather(*(
        pay_with_card(plan, gw, account, typed(), Decimal("5"), payment_id="pay-race")
        for _ in range(4)))
    assert all(r.verdict is TopUpVerdict.APPROVED for r in results)
    assert sum(not r.duplicate for r in results) <= 1
    assert gw.charges == 1
    assert balance_of(plan, account) == Decimal(5)
    assert len(topups(plan, account)) == 1 and len(payments(plan, account)) == 1


async def test_a_payment_id_cannot_be_reused_for_another_top_up(plan: Database,
                                                                gw: SandboxGateway):
    account = new_account(plan, "0")
    other = new_account(plan, "0")
    await pay_with_card(plan, gw, account, typed(), Decimal("5"), payment_id="pay-1")
    with pytest.raises(LedgerError):
        await pay_with_card(plan, gw, account, typed(), Decimal("20"), payment_id="pay-1")
    with pytest.raises(LedgerError):
        await pay_with_card(plan, gw, other, typed(), Decimal("5"), payment_id="pay-1")
    assert balance_of(plan, account) == Decimal(5) and balance_of(plan, other) == 0


async def test_declined_card_credits_nothing(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "2")
    result = await pay_with_card(plan, gw, account, typed(SANDBOX_DECLINE), Decimal("10"),
                                 payment_id="pay-d")
    assert result.verdict is TopUpVerdict.DECLINED
    assert (result.balance, result.last4, result.reason) == (Decimal(2), "0002",
                                                             "card declined")
    [payment] = payments(plan, account)
    assert (payment.status, payment.reason, payment.last4) == ("declined", "card declined",
                                                               "0002")
    assert balance_of(plan, account) == Decimal(2)
    assert topups(plan, account) == [] and methods(plan, account) == []
    # Asked again, the decline stands (answered from the database).
    again = await pay_with_card(plan, gw, account, typed(SANDBOX_DECLINE), Decimal("10"),
                                payment_id="pay-d")
    assert again.verdict is TopUpVerdict.DECLINED and gw.charges == 1


async def test_timeout_credits_nothing(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "2")
    started = asyncio.get_running_loop().time()
    result = await pay_with_card(plan, gw, account, typed(SANDBOX_TIMEOUT), Decimal("10"),
                                 payment_id="pay-t")
    assert asyncio.get_running_loop().time() - started < 5
    assert result.verdict is TopUpVerdict.TIMEOUT and result.balance == Decimal(2)
    [payment] = payments(plan, account)
    assert (payment.status, payment.last4) == ("timeout", "0119")
    assert balance_of(plan, account) == Decimal(2)
    assert topups(plan, account) == [] and methods(plan, account) == []


async def test_gateway_failure_is_an_error_and_credits_nothing(plan: Database):
    class Broken:
        async def charge_card(self, card, amount, currency, payment_id):
            raise ConnectionResetError(f"peer reset while sending {card.number}")

        charge_token = charge_card

    account = new_account(plan, "2")
    result = await pay_with_card(plan, Broken(), account, typed(), Decimal("10"),
                                 payment_id="pay-e")
    assert result.verdict is TopUpVerdict.ERROR and result.balance == Decimal(2)
    assert payments(plan, account)[0].status == "error"
    assert SANDBOX_APPROVE not in payments(plan, account)[0].reason


async def test_save_false_links_no_method(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "0")
    result = await pay_with_card(plan, gw, account, typed(), Decimal("5"), payment_id="p",
                                 save=False)
    assert result.verdict is TopUpVerdict.APPROVED
    assert methods(plan, account) == []


async def test_a_new_card_replaces_the_linked_method(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "0")
    link_method(plan, account, "sbx_old", "4242")
    await pay_with_card(plan, gw, account, typed(), Decimal("5"), payment_id="p")
    old, new = methods(plan, account)
    assert (old.token, old.active) == ("sbx_old", False)
    assert (new.last4, new.active) == ("1111", True)


async def test_card_number_and_cvv_are_in_no_table_and_no_log(plan: Database,
                                                              gw: SandboxGateway, caplog):
    caplog.set_level(logging.DEBUG)
    # SQL statements and their parameters too (SQLAlchemy logs them at INFO).
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    account = new_account(plan, "1")
    typed_cards = [typed(number) for number in (SANDBOX_APPROVE, SANDBOX_DECLINE,
                                                SANDBOX_TIMEOUT)]
    for i, card in enumerate(typed_cards):
        await pay_with_card(plan, gw, account, card, Decimal("10"), payment_id=f"pay-{i}")
    await pay_with_stored(plan, gw, account, Decimal("5"), payment_id="pay-stored")
    await maybe_auto_recharge(plan, gw, account, call_key="call-1")
    assert [p.status for p in payments(plan, account)] == ["approved", "declined", "timeout",
                                                           "approved"]

    cvv = re.compile(rf"(?<!\d){CVV}(?!\d)")
    values: list[str] = []
    with plan.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                values.extend(str(v) for v in row)
    assert len(values) > 50
    # SQLAlchemy's timings ("[cached since 0.913s ago]") are no CVV: left out.
    timing = re.compile(r"\[(generated in|cached since) [^\]]*\]")
    records = [timing.sub("", r.getMessage()) for r in caplog.records]
    assert any("pay-0" in r for r in records)  # the payments were logged...
    assert any("INSERT INTO payments" in r for r in records)  # ...and the SQL...
    for text in values + records:
        for card in typed_cards:
            assert card.number not in text  # ...but never a card number
        assert not cvv.search(text), text  # nor the CVV


# --------------------------------------------------------------------------- stored


async def test_pay_with_stored_method(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "0")
    none = await pay_with_stored(plan, gw, account, Decimal("5"), payment_id="s-0")
    assert none.verdict is TopUpVerdict.NO_METHOD and none.balance == 0
    assert payments(plan, account) == []

    await pay_with_card(plan, gw, account, typed(), Decimal("5"), payment_id="c-1")
    result = await pay_with_stored(plan, gw, account, Decimal("10"), payment_id="s-1")
    assert result.verdict is TopUpVerdict.APPROVED and not result.duplicate
    assert (result.balance, result.last4) == (Decimal(15), "1111")
    again = await pay_with_stored(plan, gw, account, Decimal("10"), payment_id="s-1")
    assert again.duplicate and again.balance == Decimal(15)
    assert [(p.source, p.status) for p in payments(plan, account)] == [
        ("card", "approved"), ("stored", "approved")]
    assert balance_of(plan, account) == Decimal(15)


async def test_stored_method_declined(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "3")
    link_method(plan, account, gw.token_for(SANDBOX_DECLINE), "0002")
    result = await pay_with_stored(plan, gw, account, Decimal("10"), payment_id="s-1")
    assert result.verdict is TopUpVerdict.DECLINED and result.balance == Decimal(3)
    assert payments(plan, account)[0].status == "declined"


async def test_inactive_method_is_not_used(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "3")
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    with plan.transaction() as s:
        for m in s.scalars(select(PaymentMethod)):
            m.active = False
    result = await pay_with_stored(plan, gw, account, Decimal("10"), payment_id="s-1")
    assert result.verdict is TopUpVerdict.NO_METHOD


# --------------------------------------------------------------------------- auto-recharge


def auto(threshold: str, amount: str, cap: str | None = None) -> dict[str, object]:
    return {"auto_recharge_threshold": Decimal(threshold),
            "auto_recharge_amount": Decimal(amount),
            "auto_recharge_daily_cap": None if cap is None else Decimal(cap)}


async def test_auto_recharge_fires_once_per_call(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "3", **auto("5", "1"))
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    first = await maybe_auto_recharge(plan, gw, account, call_key="call-1/1", now=NOW)
    assert first is not None and first.verdict is TopUpVerdict.APPROVED
    assert first.payment_id == "auto:call-1/1" and first.balance == Decimal(4)
    # Still below the threshold, but this call had its recharge.
    assert await maybe_auto_recharge(plan, gw, account, call_key="call-1/1", now=NOW) is None
    second = await maybe_auto_recharge(plan, gw, account, call_key="call-2/1", now=NOW)
    assert second is not None and second.balance == Decimal(5)
    # At the threshold: not below it, nothing due.
    assert await maybe_auto_recharge(plan, gw, account, call_key="call-3/1", now=NOW) is None
    assert [(p.payment_id, p.source) for p in payments(plan, account)] == [
        ("auto:call-1/1", "auto"), ("auto:call-2/1", "auto")]
    assert balance_of(plan, account) == Decimal(5)


async def test_auto_recharge_when_a_call_crosses_the_threshold(plan: Database,
                                                               gw: SandboxGateway):
    """A live call's hold takes the available balance below the threshold: one recharge,
    after which the call can be re-granted from the new balance."""
    account = new_account(plan, "6", **auto("5", "10"))
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    ledger = Ledger(plan)
    assert await maybe_auto_recharge(plan, gw, account, call_key="k0") is None  # 6 >= 5
    grant = ledger.authorize("15551234567", account_id=account, limit=300, call_key="k1")
    assert grant.amount == Decimal(3)  # 300 s at 0.60/min: available 3 < 5
    results = [await maybe_auto_recharge(plan, gw, account, call_key="k1") for _ in range(3)]
    assert results[0] is not None and results[0].verdict is TopUpVerdict.APPROVED
    assert results[1:] == [None, None]
    assert balance_of(plan, account) == Decimal(16)
    extended = ledger.extend(grant.reservation_id, limit=3600)
    assert extended.seconds == 1600  # 16.00 at 1 cent a second
    assert len(payments(plan, account)) == 1


async def test_auto_recharge_respects_the_daily_cap(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "0", **auto("5", "2", cap="4"))
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    fired = [await maybe_auto_recharge(plan, gw, account, call_key=f"c{i}", now=NOW)
             for i in range(3)]
    assert [r is not None for r in fired] == [True, True, False]
    assert balance_of(plan, account) == Decimal(4)
    tomorrow = NOW.replace(hour=0, minute=0) + timedelta(days=1)
    next_day = await maybe_auto_recharge(plan, gw, account, call_key="c3", now=tomorrow)
    assert next_day is not None and next_day.verdict is TopUpVerdict.APPROVED
    assert balance_of(plan, account) == Decimal(6)


async def test_declined_auto_recharges_do_not_count_toward_the_cap(plan: Database,
                                                                   gw: SandboxGateway):
    account = new_account(plan, "0", **auto("5", "2", cap="2"))
    link_method(plan, account, gw.token_for(SANDBOX_DECLINE), "0002")
    declined = await maybe_auto_recharge(plan, gw, account, call_key="c1", now=NOW)
    assert declined is not None and declined.verdict is TopUpVerdict.DECLINED
    assert await maybe_auto_recharge(plan, gw, account, call_key="c1", now=NOW) is None
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    approved = await maybe_auto_recharge(plan, gw, account, call_key="c2", now=NOW)
    assert approved is not None and approved.verdict is TopUpVerdict.APPROVED


async def test_auto_recharge_with_a_long_call_key(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "0", **auto("5", "1"))
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    key = "x" * 150  # the longest call key (Reservation.call_key)
    first = await maybe_auto_recharge(plan, gw, account, call_key=key)
    assert first is not None and first.verdict is TopUpVerdict.APPROVED
    assert first.payment_id.startswith("auto:") and len(first.payment_id) <= 64
    assert await maybe_auto_recharge(plan, gw, account, call_key=key) is None
    with pytest.raises(ValueError):
        await pay_with_stored(plan, gw, account, Decimal(1), payment_id="p" * 65)


@pytest.mark.parametrize("values", [{}, auto("5", "10") | {"auto_recharge_amount": None}])
async def test_auto_recharge_off(plan: Database, gw: SandboxGateway, values):
    account = new_account(plan, "0", **values)
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    assert await maybe_auto_recharge(plan, gw, account, call_key="c1") is None
    assert payments(plan, account) == []


async def test_auto_recharge_without_a_method(plan: Database, gw: SandboxGateway):
    account = new_account(plan, "0", **auto("5", "10"))
    assert await maybe_auto_recharge(plan, gw, account, call_key="c1") is None
    assert payments(plan, account) == []


async def test_auto_recharge_waits_for_another_calls_recharge(plan: Database,
                                                              gw: SandboxGateway):
    account = new_account(plan, "0", **auto("5", "10"))
    link_method(plan, account, gw.token_for(SANDBOX_APPROVE))
    with plan.transaction() as s:
        s.add(Payment(payment_id="auto:other", account_id=account, source="auto",
                      amount=Decimal(10), currency="USD", status="pending", created_at=NOW))
    assert await maybe_auto_recharge(plan, gw, account, call_key="c1", now=NOW) is None
    # A pending one long abandoned no longer blocks.
    later = NOW + timedelta(minutes=30)
    assert await maybe_auto_recharge(plan, gw, account, call_key="c1", now=later) is not None


# --------------------------------------------------------------------------- CLI


def run_cli(db: Database, capsys, *argv: str, expect: int = 0) -> str:
    parser = argparse.ArgumentParser(prog="ivr")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code = args.func(Settings(database_url=db.url), args)
    out, err = capsys.readouterr()
    assert code == expect, (argv, out, err)
    return out if expect == 0 else err


async def test_cli(plan: Database, gw: SandboxGateway, capsys):
    account = new_account(plan, "0")
    with plan.transaction() as s:
        number = s.get(Account, account).number

    out = run_cli(plan, capsys, "auto-recharge", number, "--threshold", "2", "--amount", "10",
                  "--daily-cap", "30")
    assert "no payment method linked" in out
    await pay_with_card(plan, gw, account, typed(), Decimal("5"), payment_id="cli-1")
    data = json.loads(run_cli(plan, capsys, "auto-recharge", number, "--json"))
    assert data["threshold"] == "2.00" and data["daily_cap"] == "30.00"
    assert data["payment_method"]["last4"] == "1111"
    err = run_cli(plan, capsys, "auto-recharge", number, "--threshold", "2", expect=1)
    assert "both --threshold and --amount" in err
    run_cli(plan, capsys, "auto-recharge", number, "--threshold", "2", "--amount", "10",
            "--daily-cap", "5", expect=1)
    assert "auto-recharge off" in run_cli(plan, capsys, "auto-recharge", number, "--off")
    with plan.transaction() as s:
        assert s.get(Account, account).auto_recharge_threshold is None

    out = run_cli(plan, capsys, "notices", number, "--email", "holder@example.test", "--sms",
                  "+1 202 555 0143", "--below", "3")
    assert "holder@example.test" in out and "12025550143" in out
    run_cli(plan, capsys, "notices", number, "--email", "nobody", expect=1)
    assert "off" in run_cli(plan, capsys, "notices", number, "--off")
    with plan.transaction() as s:
        a = s.get(Account, account)
        assert (a.low_balance_notice, a.email) == (None, "holder@example.test")

    out = run_cli(plan, capsys, "payments", "list", "--account", number)
    assert "...1111" in out and "approved" in out and SANDBOX_APPROVE not in out
    rows = json.loads(run_cli(plan, capsys, "payments", "list", "--json"))["payments"]
    assert [(r["payment_id"], r["status"], r["last4"]) for r in rows] == [
        ("cli-1", "approved", "1111")]
    assert "no account" in run_cli(plan, capsys, "payments", "list", "--account", "404",
                                   expect=1)


# --------------------------------------------------------------------------- reconcile


def unresolved_payment(db: Database, account_id: int, payment_id: str, status: str,
                       age: timedelta) -> None:
    """A payment row as a process leaves it when it dies mid-charge (pending) or when the
    gateway did not answer in time (timeout)."""
    with db.transaction() as s:
        s.add(Payment(payment_id=payment_id, account_id=account_id, source="card",
                      amount=Decimal("10"), currency="USD", status=status, last4="1111",
                      created_at=NOW - age))


async def test_reconcile_credits_what_the_gateway_charged_and_closes_the_rest(
    plan: Database, gw: SandboxGateway
):
    account = new_account(plan, "2")
    # The gateway charged this one, but the process died before recording it.
    unresolved_payment(plan, account, "pay-died", "pending", timedelta(minutes=10))
    charged = await gw.charge_card(typed(), Decimal("10"), "USD", "pay-died")
    assert charged.status is ChargeStatus.APPROVED
    # This one timed out and the gateway never took it.
    unresolved_payment(plan, account, "pay-lost", "timeout", timedelta(minutes=10))
    # Too young: it may still be in flight.
    unresolved_payment(plan, account, "pay-young", "pending", timedelta(seconds=30))

    decided = await reconcile(plan, gw, older_than=timedelta(minutes=5), now=NOW)
    assert [(r.payment_id, r.verdict) for r in decided] == [
        ("pay-died", TopUpVerdict.APPROVED), ("pay-lost", TopUpVerdict.DECLINED)]
    assert balance_of(plan, account) == Decimal(12)
    assert [e.ref for e in topups(plan, account)] == ["pay-died"]
    statuses = {p.payment_id: (p.status, p.reason) for p in payments(plan, account)}
    assert statuses == {
        "pay-died": ("approved", ""),
        "pay-lost": ("declined", "not charged (no record at the gateway)"),
        "pay-young": ("pending", ""),
    }
    # Once settled, a payment is not looked at again: no second credit.
    assert await reconcile(plan, gw, older_than=timedelta(minutes=5), now=NOW) == []
    assert balance_of(plan, account) == Decimal(12)


def test_cli_reconcile(plan: Database, capsys):
    account = new_account(plan, "2")
    unresolved_payment(plan, account, "pay-cli", "timeout", timedelta(days=1))
    # A new process's sandbox has no record of any charge: the payment is closed.
    data = json.loads(run_cli(plan, capsys, "payments", "reconcile", "--json"))
    assert [(r["payment_id"], r["verdict"], r["amount"], r["balance"])
            for r in data["reconciled"]] == [("pay-cli", "declined", "10.00", "2.00")]
    assert run_cli(plan, capsys, "payments", "reconcile").strip() == (
        "no payments left to reconcile")
