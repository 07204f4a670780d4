"""Rate decks against live calls, on SQLite and on a real PostgreSQL: a call keeps the
rates it was authorized with, and a rate table is never compiled under a transaction's
locks."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from ivr.db import Database
from ivr.db.models import EntryKind, RatingPlan, Reservation
from ivr.money import rates_store
from ivr.money.accounts import create_account
from ivr.money.ledger import Grant, Ledger, credit
from ivr.money.rates_store import RatingCache, create_plan, import_rows
from ivr.rating import parse_deck

AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # a Wednesday
UK = "447700900123"
# 0.60/min in 1 s steps; the London prefix is dearer by day only: at night a London call
# falls back to the 44 row.
DECK = """\
plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,start,end,service
retail,44,UK,0,{rate},60,1,0,,,,
retail,4420,London,0,{day},60,1,0,,08:00,20:00,
retail,1,USA,0,0.06,60,6,0,,,,
"""


def deck(rate: str, day: str = "1.20") -> str:
    return DECK.format(rate=rate, day=day)


def setup(db: Database, balance: str = "5.00") -> tuple[int, int]:
    with db.transaction() as s:
        plan = create_plan(s, "retail", "USD", decimals=2, rounding="up")
        import_rows(s, parse_deck(deck("0.60")))
        account = create_account(s, "retail", balance=Decimal(balance))
        return plan.id, account.id


def reimport(db: Database, rate: str, day: str = "1.20") -> None:
    with db.transaction() as s:
        import_rows(s, parse_deck(deck(rate, day)))


def test_a_deck_imported_during_a_call_does_not_reprice_it(db: Database):
    _, account_id = setup(db)
    ledger = Ledger(db, RatingCache(db, ttl=0))
    grant = ledger.authorize(UK, account_id=account_id, at=AT, hold=60)
    assert isinstance(grant, Grant) and grant.amount == Decimal("0.60")
    with db.transaction() as s:
        res = s.get(Reservation, grant.reservation_id)
        assert res is not None and res.rates_version == 1 and res.rate_snapshot
    reimport(db, "6.00")  # ten times dearer, mid-call; the old rows are deleted
    # A renewal re-grants on the call's own rates: 120 s at 0.60/min, not 12 s at 6.00.
    renewed = ledger.extend(grant.reservation_id, hold=120)
    assert (renewed.seconds, renewed.amount) == (120, Decimal("1.20"))
    # So does settling, even by a restarted server (a fresh cache that never saw v1).
    restarted = Ledger(db, RatingCache(db, ttl=0))
    done = restarted.settle(grant.reservation_id, 20, uniqueid="call-1", answered_at=AT,
                            ended_at=AT + timedelta(seconds=20))
    assert done.cost == Decimal("0.20")  # 2.00 at the new rate
    # A call authorized after the import pays the new rate: 4.80 left buys 48 s.
    second = restarted.authorize(UK, account_id=account_id, at=AT, hold=60)
    assert isinstance(second, Grant)
    assert (second.seconds, second.amount) == (48, Decimal("4.80"))


def test_the_snapshot_keeps_time_windows_and_shorter_prefixes(db: Database):
    """A London call answered at 19:59 runs into the night, where 44 rates it: the
    snapshot holds both prefixes' rows, so the price is the one of the old deck."""
    _, account_id = setup(db)
    ledger = Ledger(db, RatingCache(db, ttl=0))
    evening = AT.replace(hour=19, minute=59)
    london = "442079460000"
    grant = ledger.authorize(london, account_id=account_id, at=evening, hold=600)
    assert isinstance(grant, Grant)
    reimport(db, "9.00", day="9.00")
    done = ledger.settle(grant.reservation_id, 120, uniqueid="call-2", answered_at=evening)
    # 60 s at 1.20/min (day, 4420) then 60 s at 0.60/min (night, 44).
    assert done.cost == Decimal("1.80")
    with db.transaction() as s:
        assert s.scalar(select(RatingPlan.rates_version)) == 2


def test_reservations_without_a_snapshot_use_the_current_rates(db: Database):
    _, account_id = setup(db)
    ledger = Ledger(db, RatingCache(db, ttl=0))
    grant = ledger.authorize(UK, account_id=account_id, at=AT, hold=60)
    assert isinstance(grant, Grant)
    with db.transaction() as s:  # as made before snapshots were kept
        res = s.get(Reservation, grant.reservation_id)
        assert res is not None
        res.rate_snapshot, res.rates_version = None, None
    reimport(db, "1.20")
    restarted = Ledger(db, RatingCache(db, ttl=0))
    done = restarted.settle(grant.reservation_id, 20, uniqueid="call-3", answered_at=AT)
    assert done.cost == Decimal("0.40")


class CompileWatch:
    """Stands in for rates_store.load_table: while a table is being compiled, a top-up of
    the caller's own account must go through (it could not while the compile ran inside
    authorize's transaction: SQLite's write lock, PostgreSQL's row lock on the account)."""

    def __init__(self, db: Database, account_id: int) -> None:
        self.db = db
        self.account_id = account_id
        self.compiles = 0
        self.credited: list[bool] = []
        self.workers: list[threading.Thread] = []
        self.real = rates_store.load_table

    def __call__(self, session, plans):  # noqa: ANN001, ANN204
        self.compiles += 1
        done = threading.Event()

        def top_up() -> None:
            with self.db.transaction() as s:
                credit(s, self.account_id, Decimal("1"), EntryKind.TOPUP,
                       ref=f"during-compile-{self.compiles}")
            done.set()

        worker = threading.Thread(target=top_up)
        self.workers.append(worker)
        worker.start()
        self.credited.append(done.wait(10))  # an event, not a timing: it completes or not
        return self.real(session, plans)


def test_rates_are_compiled_outside_the_ledgers_transaction(db: Database, monkeypatch):
    plan_id, account_id = setup(db)
    watch = CompileWatch(db, account_id)
    monkeypatch.setattr(rates_store, "load_table", watch)
    cache = RatingCache(db, ttl=0)
    ledger = Ledger(db, cache)

    # First use: the table is compiled before authorize takes its locks.
    try:
        first = ledger.authorize(UK, account_id=account_id, at=AT, hold=60)
    finally:
        for worker in watch.workers:
            worker.join()
    assert isinstance(first, Grant) and first.amount == Decimal("0.60")
    assert watch.credited == [True]

    # A deck swap: the call that notices it goes on with the previous table while the
    # new one compiles in the background, under no lock either.
    reimport(db, "1.20")
    try:
        second = ledger.authorize(UK, account_id=account_id, at=AT, hold=60)
        assert cache.wait(30)
    finally:
        for worker in watch.workers:
            worker.join()
    assert isinstance(second, Grant) and second.amount == Decimal("0.60")
    assert watch.credited == [True, True]
    assert cache.get(plan_id).version == 2
    third = ledger.authorize(UK, account_id=account_id, at=AT, hold=60)
    assert isinstance(third, Grant) and third.amount == Decimal("1.20")
    assert watch.compiles == 2



def test_a_streamed_import_is_all_or_nothing(db: Database):
    from ivr.db.models import Rate
    from ivr.money.rates_store import PlanError, import_deck
    from ivr.rating import DeckError

    plan_id, _ = setup(db)
    result = import_deck(db, io.StringIO(deck("0.70")))
    assert (result.plans, result.versions) == ({"retail": 3}, {"retail": 2})
    bad = deck("0.80") + (
        "retail,33,France,0,0.0000001,60,1,0,,,,\n"  # 5: more decimals than kept
        "retail,44,UK,0,0.60,60,1,0,,,,\n"  # 6: duplicate of line 2
        "retail,34,Spain,0,0.1,60,1,0,mon-fri,,,\n"
        "retail,34,Spain,0,0.2,60,1,0,fri,,,\n"  # 8: overlaps line 7
    )
    with pytest.raises(DeckError) as info:
        import_deck(db, io.StringIO(bad))
    assert [line for line, _ in info.value.problems] == [5]  # lines first, then groups
    with pytest.raises(DeckError) as info:
        import_deck(db, io.StringIO(bad.replace("0.0000001", "0.000001")))
    assert [line for line, _ in info.value.problems] == [6, 8]
    with pytest.raises(PlanError, match="no plan named 'other'"):
        import_deck(db, io.StringIO(deck("0.80") + "other,1,USA,0,0.1,60,1,0,,,,\n"))
    with db.transaction() as s:
        rates = s.scalars(select(Rate.rate).where(Rate.plan_id == plan_id)).all()
        assert sorted(rates) == [Decimal("0.06"), Decimal("0.70"), Decimal("1.20")]
        assert s.scalar(select(RatingPlan.rates_version)) == 2
    made = import_deck(db, io.StringIO(deck("0.80") + "other,1,USA,0,0.1,60,1,0,,,,\n"),
                       currency="EUR")
    assert made.plans == {"retail": 3, "other": 1}
    assert made.versions == {"retail": 3, "other": 1}
    assert Ledger(db).rates.get(plan_id).version == 3


def test_a_server_compiles_every_plan_before_its_first_call(db: Database, monkeypatch):
    """`ivr serve` loads every plan's table at start (RatingCache.load_all), so the
    first caller does not wait for a big deck to compile."""
    _, account_id = setup(db)
    with db.transaction() as s:
        create_plan(s, "wholesale", "USD", decimals=4, rounding="up")
    compiled: list[str] = []
    real = rates_store.load_table

    def counting(session, plans):  # type: ignore[no-untyped-def]
        plans = list(plans)
        compiled.extend(p.name for p in plans)
        return real(session, plans)

    monkeypatch.setattr(rates_store, "load_table", counting)
    cache = RatingCache(db, ttl=60)
    assert cache.load_all() == 2
    assert sorted(compiled) == ["retail", "wholesale"]
    grant = Ledger(db, cache).authorize(UK, account_id=account_id, at=AT, hold=60)
    assert isinstance(grant, Grant) and grant.amount == Decimal("0.60")
    assert sorted(compiled) == ["retail", "wholesale"]  # the call compiled nothing
