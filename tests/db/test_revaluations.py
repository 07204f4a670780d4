"""Revaluations (ivr.revalue.service): the money around each recharge and its state
history, on SQLite and PostgreSQL, against the real simulated operator served on loopback
(ivr.revalue.simulator) with the real HTTP client, its callbacks taken by the real
callbacks endpoint (ivr.revalue.callbacks) handing them to the service."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from ivr.db import Database
from ivr.db.models import (
    Account,
    Customer,
    EntryKind,
    LedgerEntry,
    LoyaltyEntry,
    PaymentMethod,
    Revaluation,
    RevaluationEvent,
)
from ivr.money.accounts import create_account
from ivr.payments.sandbox import SANDBOX_APPROVE, SANDBOX_DECLINE, SandboxGateway
from ivr.revalue import codes, loyalty
from ivr.revalue.callbacks import LoopbackServer, callback_server
from ivr.revalue.direct import HttpOperatorApi, RechargeAnswer, RechargeState
from ivr.revalue.messages import sms_notifier
from ivr.revalue.service import (
    Outcome,
    Reason,
    State,
    apply_answer,
    callback_handler,
    fulfil_code,
    fulfil_direct,
    get_revaluation,
    reconcile,
    request,
)
from ivr.revalue.simulator import SimulatedOperator
from ivr.testing import free_port
from ivr.testing.access import create_test_plan

OPERATOR = "SimOp"
SECRET = b"callback-secret"
KEY = b"k" * 32
_numbers = itertools.count(1)


# --------------------------------------------------------------------------- set-up


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)  # "retail", USD
    return db


def new_customer(db: Database, balance: str, *, mode: str = "code",
                 pay: str = "account") -> int:
    with db.transaction() as s:
        account = create_account(s, "retail", balance=Decimal(balance))
        row = Customer(msisdn=f"+1555200{next(_numbers):04d}", code_hash="not-used",
                       mode=mode, pay=pay, account_id=account.id, language="en",
                       failures=0, locked=False, created_at=datetime.now(UTC))
        s.add(row)
        s.flush()
        return row.id


def load_codes(db: Database, tmp_path: Path, codes_: list[str], value: str = "10") -> None:
    path = tmp_path / f"codes-{value}.txt"
    path.write_text("\n".join(codes_) + "\n")
    codes.import_codes(db, path, operator=OPERATOR, value=Decimal(value), currency="USD",
                       key=KEY, low_stock=0)


@dataclass(frozen=True)
class Money:
    balance: Decimal
    reserved: Decimal
    captured: int  # REVALUATION ledger entries
    refunded: int  # REFUND ledger entries


def money(db: Database, customer_id: int) -> Money:
    with db.reading() as s:
        account = s.get_one(Account, s.get_one(Customer, customer_id).account_id)
        kinds = list(s.scalars(select(LedgerEntry.kind)
                               .where(LedgerEntry.account_id == account.id)))
        total = sum(s.scalars(select(LedgerEntry.amount)
                              .where(LedgerEntry.account_id == account.id)), Decimal(0))
        assert total == account.balance  # the cached balance is the ledger's sum
        return Money(account.balance, account.reserved, kinds.count(EntryKind.REVALUATION),
                     kinds.count(EntryKind.REFUND))


def history(db: Database, request_id: str) -> list[str]:
    """The states of the revaluation's events, checked against its state now."""
    with db.reading() as s:
        rev = s.scalar(select(Revaluation).where(Revaluation.request_id == request_id))
        assert rev is not None
        states = list(s.scalars(select(RevaluationEvent.state)
                                .where(RevaluationEvent.revaluation_id == rev.id)
                                .order_by(RevaluationEvent.id)))
        assert states[-1] == rev.state
        return states


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll for something the operator's callbacks do (bounded)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@dataclass
class Operator:
    sim: SimulatedOperator
    api: HttpOperatorApi
    callbacks: LoopbackServer


@pytest_asyncio.fixture
async def operator(plan: Database) -> AsyncIterator[Operator]:
    """The simulated operator and our callbacks endpoint, on loopback, for this test's
    database."""
    callbacks = callback_server({OPERATOR: SECRET}, callback_handler(plan),
                                f"127.0.0.1:{free_port()}")
    await callbacks.start()
    sim = SimulatedOperator(callback_url=f"{callbacks.url}/callbacks/{OPERATOR}",
                            callback_secret=SECRET, name=OPERATOR)
    try:
        async with sim.serving(port=free_port()) as server, \
                HttpOperatorApi(server.url, timeout=0.5, operator=OPERATOR) as api:
            yield Operator(sim, api, callbacks)
    finally:
        await callbacks.stop()


LATER = timedelta(seconds=0)  # the reconciler's age limit in tests: settle every one


async def direct(db: Database, op: Operator, balance: str = "50", amount: str = "10"
                 ) -> tuple[int, Outcome]:
    customer = new_customer(db, balance, mode="direct")
    held = await request(db, customer_id=customer, amount=Decimal(amount), operator=OPERATOR)
    assert held.state is State.HELD
    return customer, await fulfil_direct(db, op.api, held.request_id)


# --------------------------------------------------------------------------- code mode


async def test_code_mode_held_issued_and_captured_once(plan: Database, tmp_path: Path):
    load_codes(plan, tmp_path, ["111122223333", "444455556666"])
    customer = new_customer(plan, "50")
    held = await request(plan, customer_id=customer, amount=Decimal("10"), operator=OPERATOR)
    assert (held.state, held.balance, held.available) == (State.HELD, 50, 40)
    assert money(plan, customer) == Money(Decimal(50), Decimal(10), 0, 0)
    issued = await fulfil_code(plan, held.request_id, key=KEY, low_stock=0)
    assert issued.state is State.ISSUED and issued.code == "111122223333"
    assert issued.code not in repr(issued)
    assert (issued.balance, issued.available) == (40, 40)
    again = await fulfil_code(plan, held.request_id, key=KEY, low_stock=0)
    assert (again.state, again.changed, again.code, again.code_id) == (
        State.ISSUED, False, "", issued.code_id)
    # The same request made again changes nothing.
    repeat = await request(plan, customer_id=customer, amount=Decimal("10"),
                           operator=OPERATOR, request_id=held.request_id)
    assert (repeat.state, repeat.changed) == (State.ISSUED, False)
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)
    assert history(plan, held.request_id) == ["requested", "held", "issued"]
    assert codes.reveal(plan, issued.code_id or 0, customer_id=customer,
                        key=KEY) == "111122223333"


async def test_code_mode_none_left_is_released_and_nothing_charged(plan: Database,
                                                                   tmp_path: Path):
    load_codes(plan, tmp_path, ["999988887777"], value="20")  # another value only
    customer = new_customer(plan, "50")
    held = await request(plan, customer_id=customer, amount=Decimal("10"), operator=OPERATOR)
    refused = await fulfil_code(plan, held.request_id, key=KEY)
    assert (refused.state, refused.reason, refused.code) == (State.REFUSED, "none_left", "")
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    assert history(plan, held.request_id) == ["requested", "held", "refused"]


async def test_twenty_concurrent_requests_for_the_last_code(plan: Database, tmp_path: Path):
    load_codes(plan, tmp_path, ["123412341234"])
    customers = [new_customer(plan, "25") for _ in range(20)]
    held = await asyncio.gather(*(
        request(plan, customer_id=c, amount=Decimal("10"), operator=OPERATOR)
        for c in customers))
    assert all(h.state is State.HELD for h in held)
    done = await asyncio.gather(*(fulfil_code(plan, h.request_id, key=KEY) for h in held))
    issued = [d for d in done if d.state is State.ISSUED]
    refused = [d for d in done if d.state is State.REFUSED]
    assert len(issued) == 1 and len(refused) == 19
    assert issued[0].code == "123412341234"
    assert {r.reason for r in refused} == {Reason.NONE_LEFT}
    states = [money(plan, c) for c in customers]
    assert sorted(m.balance for m in states) == [Decimal(15)] + [Decimal(25)] * 19
    assert all(m.reserved == 0 for m in states)
    assert sum(m.captured for m in states) == 1
    for h, d in zip(held, done, strict=True):
        assert history(plan, h.request_id) == ["requested", "held", d.state.value]


# --------------------------------------------------------------------------- direct mode


async def test_direct_approved_is_completed_and_captured(plan: Database, operator: Operator):
    customer, done = await direct(plan, operator)
    assert done.state is State.COMPLETED
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)
    assert operator.sim.recharges == 1
    info = get_revaluation(plan, done.request_id)
    assert info.operator_ref.startswith("SIM")
    assert [e.state for e in info.events] == ["requested", "held", "completed"]
    # The flow asking again does not go to the operator again.
    again = await fulfil_direct(plan, operator.api, done.request_id)
    assert (again.state, again.changed) == (State.COMPLETED, False)
    assert operator.sim.requests == 1


async def test_direct_declined_is_released(plan: Database, operator: Operator):
    operator.sim.set_behaviour("decline")
    customer, done = await direct(plan, operator)
    assert (done.state, done.reason) == (State.DECLINED, "subscriber barred")
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    assert history(plan, done.request_id) == ["requested", "held", "declined"]


async def test_timeout_stays_held_until_the_reconciler_completes_it_once(
        plan: Database, operator: Operator):
    operator.sim.callback_url = ""  # only the reconciler tells us
    operator.sim.set_behaviour("timeout:3000")  # recharged, but the answer comes late
    customer, done = await direct(plan, operator)
    assert done.state is State.UNKNOWN
    assert money(plan, customer) == Money(Decimal(50), Decimal(10), 0, 0)
    apis = {OPERATOR.lower(): operator.api}  # names match ignoring case
    # Not old enough yet: left alone.
    assert await reconcile(plan, apis, older_than=timedelta(hours=1)) == []
    settled = await reconcile(plan, apis, older_than=LATER)
    assert [(o.request_id, o.state) for o in settled] == [(done.request_id, State.COMPLETED)]
    assert await reconcile(plan, apis, older_than=LATER) == []  # twice: nothing more
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)
    assert history(plan, done.request_id) == ["requested", "held", "unknown", "completed"]


async def test_unknown_then_declined_by_status_is_released(plan: Database,
                                                           operator: Operator):
    operator.sim.callback_url = ""
    operator.sim.set_behaviour("unknown")
    customer, done = await direct(plan, operator)
    assert done.state is State.UNKNOWN
    apis = {OPERATOR: operator.api}
    assert await reconcile(plan, apis, older_than=LATER) == []  # still unknown: held
    assert money(plan, customer).reserved == 10
    operator.sim.settle(done.request_id, RechargeState.DECLINED)
    settled = await reconcile(plan, apis, older_than=LATER)
    assert [o.state for o in settled] == [State.DECLINED]
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    assert history(plan, done.request_id) == ["requested", "held", "unknown", "declined"]


async def test_reversed_is_refunded_once(plan: Database, operator: Operator):
    operator.sim.set_behaviour("reverse:50")  # COMPLETED, then REVERSED by callback
    customer, done = await direct(plan, operator)
    assert done.state is State.COMPLETED
    await until(lambda: get_revaluation(plan, done.request_id).state == "reversed")
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 1, 1)
    # The same REVERSED again (a repeated callback, the reconciler) changes nothing.
    again = await apply_answer(plan, RechargeAnswer(done.request_id, RechargeState.REVERSED,
                                                    operator=OPERATOR))
    assert again is not None and not again.changed
    late = await apply_answer(plan, RechargeAnswer(done.request_id, RechargeState.DECLINED))
    assert late is not None and (late.state, late.changed) == (State.REVERSED, False)
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 1, 1)
    assert history(plan, done.request_id) == ["requested", "held", "completed", "reversed"]


async def test_a_callback_twice_captures_once(plan: Database, operator: Operator):
    operator.sim.set_behaviour("callback-twice")
    customer, done = await direct(plan, operator)
    assert done.state is State.COMPLETED
    await until(lambda: operator.sim.callbacks_sent == 2)
    assert await reconcile(plan, {OPERATOR: operator.api}, older_than=LATER) == []
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)
    assert history(plan, done.request_id) == ["requested", "held", "completed"]


async def test_created_then_completed_by_callback(plan: Database, operator: Operator):
    operator.sim.set_behaviour("pending:50")
    customer, done = await direct(plan, operator)
    assert done.state is State.CREATED
    await until(lambda: get_revaluation(plan, done.request_id).state == "completed")
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)
    assert history(plan, done.request_id) == ["requested", "held", "created", "completed"]


async def test_an_answer_from_another_operator_or_a_declined_after_completed_changes_nothing(
        plan: Database, operator: Operator):
    operator.sim.callback_url = ""
    operator.sim.set_behaviour("unknown")
    customer, done = await direct(plan, operator)
    other = await apply_answer(plan, RechargeAnswer(done.request_id, RechargeState.COMPLETED,
                                                    operator="Another"))
    assert other is not None and (other.state, other.changed) == (State.UNKNOWN, False)
    completed = await apply_answer(plan, RechargeAnswer(done.request_id,
                                                        RechargeState.COMPLETED))
    assert completed is not None and completed.state is State.COMPLETED
    declined = await apply_answer(plan, RechargeAnswer(done.request_id,
                                                       RechargeState.DECLINED))
    assert declined is not None and (declined.state, declined.changed) == (
        State.COMPLETED, False)
    assert await apply_answer(plan, RechargeAnswer("rv-nobody", RechargeState.COMPLETED)) \
        is None
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)


# --------------------------------------------------------------------------- the SMS later


class Texts:
    """An SMS sender that keeps what it is given (the real HTTP one: tests/e2e)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, to: str, subject: str, body: str) -> None:
        self.sent.append((to, body))


def msisdn_of(db: Database, customer_id: int) -> str:
    with db.reading() as s:
        return s.get_one(Customer, customer_id).msisdn


async def test_a_pending_one_settled_by_the_reconciler_is_texted_once(
        plan: Database, operator: Operator):
    operator.sim.callback_url = ""
    operator.sim.set_behaviour("unknown")  # the caller hears "pending"
    customer, done = await direct(plan, operator)
    assert done.state is State.UNKNOWN
    texts = Texts()
    notify = sms_notifier(lambda: texts)
    apis = {OPERATOR: operator.api}
    assert await reconcile(plan, apis, older_than=LATER, notify=notify) == []
    assert texts.sent == []  # still unknown: nothing to tell
    operator.sim.settle(done.request_id, RechargeState.COMPLETED)
    settled = await reconcile(plan, apis, older_than=LATER, notify=notify)
    assert [o.state for o in settled] == [State.COMPLETED]
    assert texts.sent == [(msisdn_of(plan, customer),
                           f"Your {OPERATOR} mobile was recharged with 10.00 USD.")]
    # Another pass, and the operator's late callback: nothing more is sent.
    assert await reconcile(plan, apis, older_than=LATER, notify=notify) == []
    await callback_handler(plan, notify=notify)(
        RechargeAnswer(done.request_id, RechargeState.COMPLETED, operator=OPERATOR))
    assert len(texts.sent) == 1
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)


async def test_a_duplicated_callback_racing_the_reconciler_texts_once(
        plan: Database, operator: Operator):
    operator.sim.callback_url = ""
    operator.sim.set_behaviour("unknown")
    customer, done = await direct(plan, operator)
    operator.sim.settle(done.request_id, RechargeState.DECLINED)
    texts = Texts()
    notify = sms_notifier(lambda: texts)
    on_answer = callback_handler(plan, notify=notify)
    answer = RechargeAnswer(done.request_id, RechargeState.DECLINED, reason="barred",
                            operator=OPERATOR)
    await asyncio.gather(on_answer(answer), on_answer(answer),
                         reconcile(plan, {OPERATOR: operator.api}, older_than=LATER,
                                   notify=notify))
    assert texts.sent == [(msisdn_of(plan, customer),
                           f"Your {OPERATOR} recharge of 10.00 USD could not be made. "
                           "You have not been charged.")]
    await on_answer(answer)
    assert len(texts.sent) == 1
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    assert history(plan, done.request_id) == ["requested", "held", "unknown", "declined"]


async def test_a_settlement_heard_in_the_call_is_not_texted_later(plan: Database,
                                                                  operator: Operator):
    customer, done = await direct(plan, operator)  # COMPLETED in the call (its SMS: the line)
    assert (done.state, done.changed) == (State.COMPLETED, True)
    texts = Texts()
    notify = sms_notifier(lambda: texts)
    await callback_handler(plan, notify=notify)(
        RechargeAnswer(done.request_id, RechargeState.COMPLETED, operator=OPERATOR))
    assert await reconcile(plan, {OPERATOR: operator.api}, older_than=LATER,
                           notify=notify) == []
    assert texts.sent == []
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)


async def test_a_failing_sender_does_not_undo_the_settlement(plan: Database,
                                                             operator: Operator):
    operator.sim.callback_url = ""
    operator.sim.set_behaviour("unknown")
    customer, done = await direct(plan, operator)

    class Broken:
        async def send(self, to: str, subject: str, body: str) -> None:
            raise OSError("gateway down")

    on_answer = callback_handler(plan, notify=sms_notifier(lambda: Broken()))
    await on_answer(RechargeAnswer(done.request_id, RechargeState.COMPLETED,
                                   operator=OPERATOR))
    assert get_revaluation(plan, done.request_id).state == "completed"
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)


# --------------------------------------------------------------------------- paying


async def test_insufficient_funds_is_refused(plan: Database):
    customer = new_customer(plan, "5")
    refused = await request(plan, customer_id=customer, amount=Decimal("10"),
                            operator=OPERATOR)
    assert (refused.state, refused.reason) == (State.REFUSED, "insufficient_funds")
    assert money(plan, customer) == Money(Decimal(5), Decimal(0), 0, 0)
    assert history(plan, refused.request_id) == ["requested", "refused"]
    # A refused one is not fulfilled later.
    late = await fulfil_code(plan, refused.request_id, key=KEY)
    assert (late.state, late.changed) == (State.REFUSED, False)


def link_card(db: Database, customer_id: int, token: str) -> None:
    with db.transaction() as s:
        account_id = s.get_one(Customer, customer_id).account_id
        s.add(PaymentMethod(account_id=account_id, token=token, last4=token[-4:],
                            brand="visa", expiry="1230", active=True,
                            created_at=datetime.now(UTC)))


async def test_saved_method_approved_pays_then_holds(plan: Database, tmp_path: Path):
    gateway = SandboxGateway(b"revalue-tests", delay=0.0)
    load_codes(plan, tmp_path, ["555566667777"])
    customer = new_customer(plan, "0", pay="saved-method")
    link_card(plan, customer, gateway.token_for(SANDBOX_APPROVE))
    held = await request(plan, customer_id=customer, amount=Decimal("10"),
                         operator=OPERATOR, gateway=gateway)
    assert held.state is State.HELD
    assert money(plan, customer) == Money(Decimal(10), Decimal(10), 0, 0)  # paid, held
    issued = await fulfil_code(plan, held.request_id, key=KEY)
    assert issued.state is State.ISSUED
    assert money(plan, customer) == Money(Decimal(0), Decimal(0), 1, 0)
    # Asked again: the card is not charged again.
    again = await request(plan, customer_id=customer, amount=Decimal("10"),
                          operator=OPERATOR, gateway=gateway, request_id=held.request_id)
    assert not again.changed and gateway.charges == 1
    assert history(plan, held.request_id) == ["requested", "held", "issued"]


async def test_saved_method_declined_is_refused(plan: Database):
    gateway = SandboxGateway(b"revalue-tests", delay=0.0)
    customer = new_customer(plan, "3", pay="saved-method")
    link_card(plan, customer, gateway.token_for(SANDBOX_DECLINE))
    refused = await request(plan, customer_id=customer, amount=Decimal("10"),
                            operator=OPERATOR, gateway=gateway)
    assert (refused.state, refused.reason) == (State.REFUSED, "payment_declined")
    assert money(plan, customer) == Money(Decimal(3), Decimal(0), 0, 0)
    assert history(plan, refused.request_id) == ["requested", "refused"]
    nocard = new_customer(plan, "3", pay="saved-method")
    none = await request(plan, customer_id=nocard, amount=Decimal("10"), operator=OPERATOR,
                         gateway=gateway)
    assert (none.state, none.reason) == (State.REFUSED, "no_saved_method")


async def test_unfinished_ones_are_abandoned_by_the_reconciler(plan: Database,
                                                               tmp_path: Path):
    load_codes(plan, tmp_path, ["246824682468"])
    customer = new_customer(plan, "50")
    held = await request(plan, customer_id=customer, amount=Decimal("10"), operator=OPERATOR)
    settled = await reconcile(plan, {}, older_than=LATER)  # the flow never fulfilled it
    assert [(o.state, o.reason) for o in settled] == [(State.DECLINED, "abandoned")]
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    late = await fulfil_code(plan, held.request_id, key=KEY)  # no code issued after that
    assert (late.state, late.changed) == (State.DECLINED, False)
    assert [s.available for s in codes.stock(plan)] == [1]


async def test_a_direct_one_never_sent_is_declined_by_the_operators_no_record(
        plan: Database, operator: Operator):
    customer = new_customer(plan, "50", mode="direct")
    held = await request(plan, customer_id=customer, amount=Decimal("10"), operator=OPERATOR)
    # The process stopped before the request reached the operator.
    settled = await reconcile(plan, {OPERATOR: operator.api}, older_than=LATER)
    assert [o.state for o in settled] == [State.DECLINED]
    assert "no record" in settled[0].reason
    assert money(plan, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    assert operator.sim.recharges == 0
    assert history(plan, held.request_id) == ["requested", "held", "declined"]


# --------------------------------------------------------------------------- loyalty


def points_of(db: Database, customer_id: int) -> int:
    return loyalty.statement(db, customer_id).points


async def test_loyalty_points_granted_reversed_and_redeemed(plan: Database,
                                                            operator: Operator):
    rates = loyalty.LoyaltyRates(Decimal("1"), {OPERATOR.casefold(): Decimal("2.5")})
    customer = new_customer(plan, "50", mode="direct")
    held = await request(plan, customer_id=customer, amount=Decimal("10.50"),
                         operator=OPERATOR, rates=rates)
    assert held.points == 26 and points_of(plan, customer) == 0  # announced, not granted
    done = await fulfil_direct(plan, operator.api, held.request_id)
    assert done.state is State.COMPLETED and points_of(plan, customer) == 26
    # A reversal takes them back, once.
    operator.sim.callback_url = ""
    reversed_ = await apply_answer(plan, RechargeAnswer(held.request_id,
                                                        RechargeState.REVERSED))
    assert reversed_ is not None and reversed_.state is State.REVERSED
    await apply_answer(plan, RechargeAnswer(held.request_id, RechargeState.REVERSED))
    assert points_of(plan, customer) == 0
    # Earn again, then redeem.
    again = await request(plan, customer_id=customer, amount=Decimal("20"),
                          operator=OPERATOR, rates=rates)
    await fulfil_direct(plan, operator.api, again.request_id)
    assert points_of(plan, customer) == 50
    before = money(plan, customer).balance
    spent = loyalty.redeem(plan, customer, 30, value=Decimal("0.01"), ref="r-1")
    assert (spent.points, spent.amount, spent.points_left) == (30, Decimal("0.30"), 20)
    assert money(plan, customer).balance == before + Decimal("0.30")
    repeat = loyalty.redeem(plan, customer, 30, value=Decimal("0.01"), ref="r-1")
    assert repeat.points_left == 20 and money(plan, customer).balance == before + \
        Decimal("0.30")
    with pytest.raises(loyalty.RedeemRefused):
        loyalty.redeem(plan, customer, 21, value=Decimal("0.01"))
    with plan.reading() as s:
        kinds = sorted(s.scalars(select(LoyaltyEntry.kind)
                                 .where(LoyaltyEntry.customer_id == customer)))
    assert kinds == ["grant", "grant", "redeem", "reverse"]


def test_loyalty_rates_from_settings():
    from ivr.config import ConfigError, Settings

    rates = loyalty.rates_from_settings(Settings(
        loyalty_points_per_unit="1.5", loyalty_operator_points="Vodafone=3; Orange = 0"))
    assert rates.points(Decimal("10"), "VODAFONE") == 30
    assert rates.points(Decimal("10"), "orange") == 0
    assert rates.points(Decimal("9.99"), "Other") == 14
    assert loyalty.rates_from_settings(Settings()).points(Decimal(100), "x") == 0
    with pytest.raises(ConfigError, match="loyalty_operator_points"):
        loyalty.rates_from_settings(Settings(loyalty_operator_points="Vodafone"))
    with pytest.raises(ConfigError, match="loyalty_points_per_unit"):
        loyalty.rates_from_settings(Settings(loyalty_points_per_unit="-1"))


# --------------------------------------------------------------------------- commands


def test_commands_list_show_reconcile_and_loyalty(tmp_path: Path, monkeypatch, ivr_cli):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("IVR_DATABASE_URL", url)
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IVR_LOYALTY_POINT_VALUE", "0.05")
    from ivr.db.migrate import upgrade

    db = Database(url)
    upgrade(db.engine)
    create_test_plan(db)
    load_codes(db, tmp_path, ["135713571357"])
    customer = new_customer(db, "50")
    rates = loyalty.LoyaltyRates(Decimal(1))

    async def recharges() -> tuple[Outcome, Outcome]:
        held = await request(db, customer_id=customer, amount=Decimal("10"),
                             operator=OPERATOR, rates=rates)
        await fulfil_code(db, held.request_id, key=KEY)
        return held, await request(db, customer_id=customer, amount=Decimal("5"),
                                   operator=OPERATOR)

    held, pending = asyncio.run(recharges())
    with db.reading() as s:
        msisdn = s.get_one(Customer, customer).msisdn

    listed = json.loads(ivr_cli("revaluations", "list", "--json"))
    assert [r["state"] for r in listed["revaluations"]] == ["held", "issued"]
    only = json.loads(ivr_cli("revaluations", "list", "--state",
                                              "issued", "--json"))
    assert [r["request_id"] for r in only["revaluations"]] == [held.request_id]
    shown = ivr_cli("revaluations", "show", held.request_id,
                                    "--json")
    data = json.loads(shown)
    assert (data["amount"], data["state"], data["points"]) == ("10.00", "issued", 10)
    assert [e["state"] for e in data["events"]] == ["requested", "held", "issued"]
    assert "135713571357" not in shown
    text = ivr_cli("revaluations", "show", str(data["id"]))
    assert "issued" in text and "135713571357" not in text
    bad = ivr_cli("revaluations", "list", "--state", "nope",
                                  expect=1)
    assert "nope" in bad

    # The held one is abandoned (code mode never fulfilled) by the command.
    out = json.loads(ivr_cli("revaluations", "reconcile",
                                             "--older-than", "0", "--json"))
    assert [(r["request_id"], r["state"]) for r in out["reconciled"]] == [
        (pending.request_id, "declined")]

    show = json.loads(ivr_cli("loyalty", "show", msisdn, "--json"))
    assert show["points"] == 10 and show["point_value"] == "0.05"
    red = json.loads(ivr_cli("loyalty", "redeem", msisdn,
                                             "--points", "4", "--json"))
    assert (red["points"], red["amount"], red["points_left"]) == (4, "0.20", 6)
    assert money(db, customer).balance == Decimal("40.20")
    err = ivr_cli("loyalty", "redeem", msisdn, "--points", "7",
                                  expect=1)
    assert "7 points asked, 6 available" in err
    db.dispose()


def test_reconcile_command_says_when_no_sms_can_be_sent(tmp_path: Path, monkeypatch,
                                                      capsys):
    from ivr.cli import main, revaluations
    from ivr.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("IVR_DATABASE_URL", url)
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IVR_SMS_MODE", "ami")
    monkeypatch.setenv("IVR_AMI_PORT", str(free_port()))  # no Asterisk there
    monkeypatch.setattr(revaluations, "AMI_TIMEOUT", 0.5)
    db = Database(url)
    upgrade(db.engine)
    create_test_plan(db)
    customer = new_customer(db, "50")
    held = asyncio.run(request(db, customer_id=customer, amount=Decimal("10"),
                               operator=OPERATOR))
    assert main(["revaluations", "reconcile", "--older-than", "0", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["reconciled"][0]["request_id"] == held.request_id
    assert "no SMS of settled recharges" in err and "AMI" in err
    assert money(db, customer) == Money(Decimal(50), Decimal(0), 0, 0)
    db.dispose()


async def test_the_server_reconciler_settles_in_the_background(plan: Database,
                                                              operator: Operator):
    """ivr serve's loop (ivr.service.reconcile_revaluations), every interval."""
    from types import SimpleNamespace

    from ivr import service
    from ivr.config import Settings

    operator.sim.callback_url = ""
    operator.sim.set_behaviour("unknown")
    customer, done = await direct(plan, operator)
    operator.sim.settle(done.request_id, RechargeState.COMPLETED)
    app = SimpleNamespace(db=plan, settings=Settings(revalue_reconcile_interval=0.02,
                                                     revalue_reconcile_after=0.0))
    task = asyncio.ensure_future(service.reconcile_revaluations(
        app, {OPERATOR: operator.api}))  # type: ignore[arg-type]
    try:
        await until(lambda: get_revaluation(plan, done.request_id).state == "completed")
    finally:
        task.cancel()
    assert money(plan, customer) == Money(Decimal(40), Decimal(0), 1, 0)
