"""The ledger and reservations on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from ivr.db import Database, MoneyPrecisionError
from ivr.db.migrate import current_revision, head_revision
from ivr.db.models import (
    Account,
    Card,
    CardStatus,
    Cdr,
    EntryKind,
    LedgerEntry,
    Rate,
    RatingPlan,
    Reservation,
    ReservationStatus,
)
from ivr.money.accounts import create_account, issue_cards
from ivr.money.ledger import Grant, Ledger, LedgerError, Refusal, credit, ledger_sum
from ivr.money.rates_store import RatingCache, create_plan, import_rows
from ivr.rating import DeckError, parse_deck
from ivr.testing.access import CardInHand, new_card

DECK = """\
plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,start,end,service
retail,1,USA,0,0.06,60,6,0,*,,,voice
retail,44,UK,0.10,0.60,60,60,0,,,,
retail,4420,London,0,0.30,60,1,0,,,,
"""
AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # a Wednesday
US = "15551234567"


def setup_plan(db: Database, deck: str = DECK) -> None:
    with db.transaction() as s:
        create_plan(s, "retail", "USD", decimals=2, rounding="up")
        import_rows(s, parse_deck(deck))


def new_account(db: Database, balance: str) -> int:
    with db.transaction() as s:
        return create_account(s, "retail", balance=Decimal(balance)).id


def account_state(db: Database, account_id: int) -> tuple[Decimal, Decimal, Decimal]:
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account.balance, account.reserved, ledger_sum(s, account_id)


def test_schema_is_at_head(db: Database):
    assert current_revision(db.engine) == head_revision()


def test_money_is_exact(db: Database):
    setup_plan(db)
    account_id = new_account(db, "0")
    with db.transaction() as s:
        for i in range(10):
            credit(s, account_id, Decimal("0.1"), EntryKind.TOPUP, ref=f"p{i}")
        credit(s, account_id, Decimal("0.000001"), EntryKind.ADJUSTMENT)
    balance, reserved, total = account_state(db, account_id)
    assert balance == Decimal("1.000001") == total
    assert reserved == 0
    with pytest.raises(MoneyPrecisionError), db.transaction() as s:
        credit(s, account_id, Decimal("0.0000001"), EntryKind.TOPUP)
    with pytest.raises(TypeError), db.transaction() as s:
        credit(s, account_id, 0.5, EntryKind.TOPUP)  # type: ignore[arg-type]
    assert account_state(db, account_id)[0] == Decimal("1.000001")


def test_credit_is_idempotent_per_ref(db: Database):
    setup_plan(db)
    account_id = new_account(db, "0")
    with db.transaction() as s:
        _, first = credit(s, account_id, Decimal("5"), EntryKind.TOPUP, ref="pay-1")
        _, again = credit(s, account_id, Decimal("5"), EntryKind.TOPUP, ref="pay-1")
    assert (first, again) == (True, False)
    with pytest.raises(LedgerError, match="already used"), db.transaction() as s:
        credit(s, account_id, Decimal("7"), EntryKind.TOPUP, ref="pay-1")
    assert account_state(db, account_id)[0] == Decimal("5")


def test_authorize_then_settle_charges_exactly(db: Database):
    setup_plan(db)
    account_id = new_account(db, "1.00")
    ledger = Ledger(db)
    grant = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(grant, Grant)
    # 6 s increments at 0.001/s: 996 s cost 0.996 -> 1.00 rounded up; 997 s would be 1.01.
    assert grant.seconds == 996 and grant.amount == Decimal("1.00")
    assert (grant.prefix, grant.destination) == ("1", "USA")
    assert account_state(db, account_id)[1] == Decimal("1.00")  # held
    done = ledger.settle(grant.reservation_id, 125, uniqueid="1700000000.1", caller="15550001",
                         answered_at=AT, ended_at=AT + timedelta(seconds=125),
                         hangup_cause="NORMAL_CLEARING")
    # 125 s -> 21 increments of 6 s = 126 s -> 0.126 -> 0.13 (rounded up once, per call).
    assert done.cost == Decimal("0.13") and done.seconds == 125 and not done.duplicate
    balance, reserved, total = account_state(db, account_id)
    assert balance == Decimal("0.87") == total and reserved == 0
    with db.transaction() as s:
        cdr = s.scalar(select(Cdr).where(Cdr.uniqueid == "1700000000.1"))
        assert cdr is not None
        assert (cdr.destination, cdr.prefix, cdr.plan, cdr.billable_seconds, cdr.cost) == (
            US, "1", "retail", 125, Decimal("0.13"))
        assert cdr.hangup_cause == "NORMAL_CLEARING" and cdr.caller == "15550001"


def test_settle_is_idempotent_per_uniqueid(db: Database):
    setup_plan(db)
    account_id = new_account(db, "1.00")
    ledger = Ledger(db)
    grant = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(grant, Grant)
    first = ledger.settle(grant.reservation_id, 60, uniqueid="u-1")
    again = ledger.settle(grant.reservation_id, 60, uniqueid="u-1")
    assert again.duplicate and again.cost == first.cost == Decimal("0.06")
    assert account_state(db, account_id)[0] == Decimal("0.94")
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(LedgerEntry)
                        .where(LedgerEntry.kind == EntryKind.CALL)) == 1


def test_a_settlement_says_what_the_account_can_spend_after_it(db: Database):
    """The caller hears the balance after a call from the settlement itself: the balance
    less what the account's other live calls hold, read under the settling lock."""
    setup_plan(db)
    account_id = new_account(db, "1.00")
    ledger = Ledger(db)
    first = ledger.authorize(US, account_id=account_id, at=AT, hold=120)
    second = ledger.authorize(US, account_id=account_id, at=AT, hold=120)
    assert isinstance(first, Grant) and isinstance(second, Grant)
    done = ledger.settle(first.reservation_id, 60, uniqueid="u-1")
    balance, reserved, _ = account_state(db, account_id)
    assert reserved == second.amount > 0
    assert done.balance == balance == Decimal("0.94")
    assert done.available == balance - reserved
    assert ledger.settle(first.reservation_id, 60, uniqueid="u-1").available is None  # again


@pytest.mark.postgres
def test_a_credit_after_an_unlocked_read_of_the_account_loses_no_other_credit(
    postgres_db: Database,
):
    """A transaction read the account (no lock), another credited it and committed, then
    the first credits it: the row lock must bring the committed balance into the
    session's Account, or the first credit is written over the second (5 + 1 + 1 = 6,
    the ledger saying 7). SQLite cannot interleave these: its writer lock is held from
    the first read."""
    db = postgres_db
    setup_plan(db)
    account_id = new_account(db, "5.00")
    with db.transaction() as first:
        seen = first.get(Account, account_id)
        assert seen is not None and seen.balance == Decimal("5.00")
        with db.transaction() as second:
            credit(second, account_id, Decimal("1.00"), EntryKind.ADJUSTMENT)
        credit(first, account_id, Decimal("1.00"), EntryKind.ADJUSTMENT)
    balance, _, total = account_state(db, account_id)
    assert balance == total == Decimal("7.00")


def test_billable_beyond_the_grant_is_not_charged(db: Database):
    setup_plan(db)
    account_id = new_account(db, "0.50")
    ledger = Ledger(db)
    grant = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(grant, Grant)
    done = ledger.settle(grant.reservation_id, grant.seconds + 3, uniqueid="u-2")
    assert done.seconds == grant.seconds
    balance, reserved, total = account_state(db, account_id)
    assert balance >= 0 and balance == total and reserved == 0


def test_release_costs_nothing_and_writes_a_cdr(db: Database):
    setup_plan(db)
    account_id = new_account(db, "1.00")
    ledger = Ledger(db)
    grant = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(grant, Grant)
    ledger.release(grant.reservation_id, uniqueid="u-busy", hangup_cause="BUSY")
    ledger.release(grant.reservation_id, uniqueid="u-busy", hangup_cause="BUSY")
    assert account_state(db, account_id) == (Decimal("1.00"), Decimal(0), Decimal("1.00"))
    with db.transaction() as s:
        cdr = s.scalar(select(Cdr).where(Cdr.uniqueid == "u-busy"))
        assert cdr is not None and cdr.cost == 0 and cdr.hangup_cause == "BUSY"
        res = s.get(Reservation, grant.reservation_id)
        assert res is not None and res.status is ReservationStatus.RELEASED


def test_refusals(db: Database):
    setup_plan(db)
    ledger = Ledger(db)
    rich = new_account(db, "10")
    poor = new_account(db, "0.05")
    assert ledger.authorize("999123", account_id=rich, at=AT) is Refusal.NO_RATE
    # UK: connect fee 0.10 plus a first block of 60 s at 0.60 does not fit 0.05.
    assert ledger.authorize("447700900123", account_id=poor, at=AT) is Refusal.INSUFFICIENT_FUNDS
    assert account_state(db, poor) == (Decimal("0.05"), Decimal(0), Decimal("0.05"))


def test_card_status_and_expiry_refuse(db: Database, tmp_path):
    setup_plan(db)
    cards = issue_cards(db, "retail", 2, Decimal("5"), tmp_path / "cards.csv",
                        expires_on=date(2026, 11, 17))
    ledger = Ledger(db)
    with db.transaction() as s:
        expired = s.scalar(select(Card).where(Card.number == cards[0].number))
        locked = s.scalar(select(Card).where(Card.number == cards[1].number))
        assert expired is not None and locked is not None
        locked.status = CardStatus.LOCKED
        ids = expired.id, locked.id
    for card_id in ids:
        assert ledger.authorize(US, card_id=card_id, at=AT) is Refusal.CARD_INACTIVE


def test_one_balance_two_calls(db: Database):
    """The first call holds what the balance buys; a second gets only what is left."""
    setup_plan(db)
    account_id = new_account(db, "1.00")
    ledger = Ledger(db)
    first = ledger.authorize(US, account_id=account_id, at=AT, limit=300)
    assert isinstance(first, Grant) and first.seconds == 300 and first.amount == Decimal("0.30")
    second = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(second, Grant) and second.amount == Decimal("0.70")
    assert ledger.authorize(US, account_id=account_id, at=AT) is Refusal.INSUFFICIENT_FUNDS
    ledger.settle(first.reservation_id, 100, uniqueid="a")  # 102 s -> 0.102 -> 0.11
    third = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(third, Grant) and third.amount == Decimal("0.19")


def test_extend_after_a_top_up(db: Database):
    setup_plan(db)
    account_id = new_account(db, "0.10")
    ledger = Ledger(db)
    grant = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(grant, Grant) and grant.seconds == 96  # 0.096 -> 0.10
    with db.transaction() as s:
        credit(s, account_id, Decimal("1.00"), EntryKind.TOPUP, ref="mid-call")
    longer = ledger.extend(grant.reservation_id)
    assert longer.seconds == 1098 and longer.amount == Decimal("1.10")
    assert account_state(db, account_id)[1] == Decimal("1.10")
    ledger.settle(grant.reservation_id, 200, uniqueid="x")  # 204 s -> 0.204 -> 0.21
    assert account_state(db, account_id) == (Decimal("0.89"), Decimal(0), Decimal("0.89"))


def test_capped_holds_let_two_calls_share_one_balance(db: Database):
    """Seed 002: cards of one account call at once. Each call holds a slice (``hold``)
    and renews it; together the holds never pass the balance."""
    setup_plan(db)
    account_id = new_account(db, "1.00")  # 996 s at 0.06/min in 6 s steps, cents up
    ledger = Ledger(db)
    first = ledger.authorize(US, account_id=account_id, at=AT, hold=300)
    second = ledger.authorize(US, account_id=account_id, at=AT, hold=300)
    assert isinstance(first, Grant) and isinstance(second, Grant)
    assert (first.seconds, first.amount, first.affordable) == (300, Decimal("0.30"), 996)
    assert (second.seconds, second.amount, second.affordable) == (300, Decimal("0.30"), 696)
    renewed = ledger.extend(first.reservation_id, hold=600)
    assert (renewed.seconds, renewed.affordable) == (600, 696)
    renewed = ledger.extend(second.reservation_id, hold=600)
    assert (renewed.seconds, renewed.affordable) == (396, 396)  # the rest: all held now
    assert account_state(db, account_id)[1] == Decimal("1.00")
    renewed = ledger.extend(first.reservation_id, hold=900)
    assert (renewed.seconds, renewed.affordable) == (600, 600)  # nothing more to hold
    # A renewal never takes back time already granted.
    assert ledger.extend(first.reservation_id, hold=60).seconds == 600
    ledger.settle(first.reservation_id, 600, uniqueid="a")
    done = ledger.settle(second.reservation_id, 396, uniqueid="b")
    assert done.granted == 396
    assert account_state(db, account_id) == (Decimal(0), Decimal(0), Decimal(0))


LONDON = "442071234567"  # 0.30 a minute, per second: 0.005 a second


def shared_cards(db: Database, balance: str, count: int) -> list[CardInHand]:
    first = new_card(db, Decimal(balance), plan="retail")
    return [first, *(new_card(db, Decimal(0), plan="retail", account=first.account)
                     for _ in range(count - 1))]


def test_a_small_shared_balance_lets_every_card_start_a_call(db: Database):
    """Issue 11: with the default 300 s hold, a balance buying 60 s is not all held by
    the first card: each card's call holds a share of what is not held."""
    setup_plan(db)
    cards = shared_cards(db, "0.30", 3)  # 60 s to London
    ledger = Ledger(db)
    grants = [ledger.authorize(LONDON, card_id=c.card_id, at=AT, hold=300) for c in cards]
    assert all(isinstance(g, Grant) for g in grants)
    assert [(g.seconds, g.amount) for g in grants] == [(20, Decimal("0.10"))] * 3
    # Each caller is told what all the money not yet held buys.
    assert [g.affordable for g in grants] == [60, 40, 20]
    account_id = grants[0].account_id
    assert account_state(db, account_id)[:2] == (Decimal("0.30"), Decimal("0.30"))
    # All of it is held now: renewals find nothing more, and settle exactly.
    for grant in grants:
        renewed = ledger.extend(grant.reservation_id, hold=320)
        assert (renewed.seconds, renewed.affordable) == (20, 20)
    for i, grant in enumerate(grants):
        ledger.settle(grant.reservation_id, 20, uniqueid=f"s{i}")
    assert account_state(db, account_id) == (Decimal(0), Decimal(0), Decimal(0))


def test_renewals_share_what_is_not_held_while_another_card_is_idle(db: Database):
    setup_plan(db)
    first, second = shared_cards(db, "0.30", 2)
    ledger = Ledger(db)
    a = ledger.authorize(LONDON, card_id=first.card_id, at=AT, hold=300)
    assert isinstance(a, Grant) and (a.seconds, a.affordable) == (30, 60)  # half
    # Renewed while the second card is idle: half of the 30 s left, but MIN_HOLD (20 s).
    renewed = ledger.extend(a.reservation_id, hold=315)
    assert (renewed.seconds, renewed.affordable) == (50, 60)
    b = ledger.authorize(LONDON, card_id=second.card_id, at=AT, hold=300)
    assert isinstance(b, Grant) and (b.seconds, b.affordable) == (10, 10)  # what is left
    assert ledger.extend(a.reservation_id, hold=330).seconds == 50  # nothing more to hold
    third = ledger.authorize(LONDON, card_id=first.card_id, at=AT, hold=300)
    assert third is Refusal.INSUFFICIENT_FUNDS
    ledger.settle(a.reservation_id, 50, uniqueid="a")
    ledger.settle(b.reservation_id, 10, uniqueid="b")
    assert account_state(db, a.account_id) == (Decimal(0), Decimal(0), Decimal(0))


def test_a_shared_hold_is_never_below_the_first_billing_block(db: Database):
    setup_plan(db)
    first, second = shared_cards(db, "0.70", 2)  # UK: 0.10 + 0.60 a minute, in minutes
    ledger = Ledger(db)
    a = ledger.authorize("447700900123", card_id=first.card_id, at=AT, hold=300)
    assert isinstance(a, Grant) and (a.seconds, a.amount) == (60, Decimal("0.70"))
    # The balance buys one first block: the second card is refused, as before.
    b = ledger.authorize("447700900123", card_id=second.card_id, at=AT, hold=300)
    assert b is Refusal.INSUFFICIENT_FUNDS
    ledger.release(a.reservation_id)


def test_a_card_alone_on_its_account_holds_all_it_may(db: Database):
    setup_plan(db)
    (card,) = shared_cards(db, "0.30", 1)
    grant = Ledger(db).authorize(LONDON, card_id=card.card_id, at=AT, hold=300)
    assert isinstance(grant, Grant) and (grant.seconds, grant.affordable) == (60, 60)


def test_renewed_holds_under_concurrency_never_overdraw(db: Database, tmp_path):
    setup_plan(db)
    account_id = new_account(db, "1.00")
    ledger = Ledger(db)
    barrier = threading.Barrier(8)

    def call(i: int) -> int:
        barrier.wait()
        grant = ledger.authorize(US, account_id=account_id, at=AT, hold=60)
        if not isinstance(grant, Grant):
            return 0
        seconds = grant.seconds
        while True:  # renew as the controller does, until nothing more is held
            renewed = ledger.extend(grant.reservation_id, hold=seconds + 60)
            if renewed.seconds == seconds:
                break
            seconds = renewed.seconds
        return ledger.settle(grant.reservation_id, seconds, uniqueid=f"h{i}").seconds

    with ThreadPoolExecutor(max_workers=8) as pool:
        seconds = list(pool.map(call, range(8)))
    balance, reserved, total = account_state(db, account_id)
    assert reserved == 0 and balance == total
    assert Decimal(0) <= balance < Decimal("0.08")  # at most a cent of rounding per call
    assert sum(seconds) >= 900 and sum(1 for n in seconds if n) >= 2
    with db.transaction() as s:
        afters = s.scalars(select(LedgerEntry.balance_after)
                           .where(LedgerEntry.account_id == account_id)).all()
    assert min(afters) >= 0


def test_deck_import_is_one_transaction(db: Database):
    setup_plan(db)
    with db.transaction() as s:
        version = s.scalar(select(RatingPlan.rates_version))
    bad = DECK + "retail,33,France,0,-1,60,1,0,,,,\nretail,34,Spain,0,0.1,60,0,0,,,,\n"
    with pytest.raises(DeckError) as info:
        parse_deck(bad)
    assert [line for line, _ in info.value.problems] == [5, 6]
    # A deck naming a plan that does not exist is refused as a whole, too.
    with pytest.raises(Exception, match="no plan named 'wholesale'"), db.transaction() as s:
        import_rows(s, parse_deck(DECK.replace("retail,44", "wholesale,44")))
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Rate)) == 3
        assert s.scalar(select(RatingPlan.rates_version)) == version


def test_rating_cache_follows_imports(db: Database):
    setup_plan(db)
    cache = RatingCache(db, ttl=0)
    with db.transaction() as s:
        plan_id = s.scalar(select(RatingPlan.id))
    assert plan_id is not None
    before = cache.get(plan_id)
    assert cache.get(plan_id) is before  # unchanged version: same table
    with db.transaction() as s:
        import_rows(s, parse_deck(DECK.replace("0.06,60,6", "0.12,60,6")))
    after = cache.get(plan_id)
    assert after.version == before.version + 1
    ledger = Ledger(db, cache)
    account_id = new_account(db, "1.00")
    grant = ledger.authorize(US, account_id=account_id, at=AT)
    assert isinstance(grant, Grant) and grant.seconds == 498


def test_concurrent_calls_on_one_shared_account_never_overdraw(db: Database, tmp_path):
    """50 authorize/settle cycles at once on an account funded for about 10 calls."""
    setup_plan(db)
    account_id = new_account(db, "0.60")  # ten one-minute calls at 0.06
    issue_cards(db, "retail", 5, Decimal(0), tmp_path / "shared.csv",
                account=_account_number(db, account_id))
    ledger = Ledger(db)
    rng = random.Random(7)
    plans = [(rng.choice([0, 30, 60, 90]), rng.random() < 0.2) for _ in range(50)]
    barrier = threading.Barrier(25)

    def cycle(i: int) -> tuple[str, int]:
        seconds, unanswered = plans[i]
        if i < 25:
            barrier.wait()
        grant = ledger.authorize(US, account_id=account_id, at=AT, limit=60)
        if not isinstance(grant, Grant):
            return grant.value, 0
        if unanswered or seconds == 0:
            ledger.release(grant.reservation_id, uniqueid=f"c{i}")
            return "released", 0
        done = ledger.settle(grant.reservation_id, seconds, uniqueid=f"c{i}")
        assert done.seconds <= grant.seconds
        return "settled", done.seconds

    with ThreadPoolExecutor(max_workers=25) as pool:
        outcomes = list(pool.map(cycle, range(50)))
    balance, reserved, total = account_state(db, account_id)
    assert balance >= 0 and reserved == 0
    assert balance == total  # the cached balance is the ledger's sum
    with db.transaction() as s:
        afters = s.scalars(select(LedgerEntry.balance_after)
                           .where(LedgerEntry.account_id == account_id)).all()
        assert min(afters) >= 0  # never below zero at any step
        charged = -sum(s.scalars(select(LedgerEntry.amount).where(
            LedgerEntry.account_id == account_id, LedgerEntry.kind == EntryKind.CALL)).all())
        assert s.scalar(select(func.count()).select_from(Reservation)
                        .where(Reservation.status == ReservationStatus.ACTIVE)) == 0
    assert charged == Decimal("0.60") - balance
    kinds = {kind for kind, _ in outcomes}
    assert "settled" in kinds and "insufficient_funds" in kinds  # the limit was reached


def _account_number(db: Database, account_id: int) -> str:
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account.number
