"""The dashboard's figures (ivr.money.stats) on SQLite and PostgreSQL, over calls made
through the ledger (authorize, then settle or release, or still up) and credits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ivr.db import Database
from ivr.db.models import EntryKind
from ivr.money.accounts import create_account
from ivr.money.ledger import Grant, Ledger, credit
from ivr.money.stats import HOURS, figures
from ivr.testing.access import create_test_plan

NOW = datetime(2026, 11, 20, 14, 30, 20, tzinfo=UTC)
US = "15551234567"  # 0.60/min, per second: n seconds cost n cents


def call(db: Database, account_id: int, started: datetime, seconds: int | None,
         uniqueid: str | None) -> None:
    """A call to the US started at ``started``: answered for ``seconds``, or not answered
    (None), or still up (uniqueid None)."""
    ledger = Ledger(db, clock=lambda: started)
    grant = ledger.authorize(US, account_id=account_id, at=started)
    assert isinstance(grant, Grant), grant
    if uniqueid is None:
        return
    if seconds is None:
        ledger.release(grant.reservation_id, uniqueid=uniqueid, started_at=started,
                       hangup_cause="BUSY")
    else:
        ledger.settle(grant.reservation_id, seconds, uniqueid=uniqueid, started_at=started,
                      answered_at=started, hangup_cause="ANSWER")


def seed(db: Database) -> None:
    create_test_plan(db)  # retail, USD
    create_test_plan(db, "euro", "EUR")
    yesterday = NOW - timedelta(days=1)
    with db.transaction() as s:
        usd = create_account(s, "retail").id
        eur = create_account(s, "euro").id
        credit(s, usd, Decimal("50"), EntryKind.TOPUP, ref="old", now=yesterday)
        credit(s, eur, Decimal("50"), EntryKind.TOPUP, ref="old-eur", now=yesterday)
        # Today's top-ups: a payment and a voucher; an adjustment is not a top-up.
        credit(s, usd, Decimal("10"), EntryKind.TOPUP, ref="pay-1", now=NOW.replace(hour=9))
        credit(s, usd, Decimal("5"), EntryKind.VOUCHER, ref="v-1", now=NOW.replace(hour=11))
        credit(s, usd, Decimal("1"), EntryKind.ADJUSTMENT, now=NOW.replace(hour=12))
    at = NOW.replace
    call(db, usd, NOW - timedelta(hours=24, minutes=20), 30, "too-old")  # before the 24 h
    call(db, usd, yesterday.replace(hour=23, minute=50), 60, "late")  # yesterday, 0.60
    call(db, usd, at(hour=10, minute=0, second=0), 125, "morning")  # 1.25
    call(db, eur, at(hour=10, minute=30, second=0), 30, "euro")  # EUR 0.30
    call(db, usd, NOW - timedelta(seconds=30), None, "busy")  # an attempt, last minute
    call(db, usd, NOW - timedelta(seconds=40), None, None)  # up, started in the minute
    call(db, eur, NOW - timedelta(hours=1), None, None)  # up for an hour


def test_figures(db: Database):
    seed(db)
    with db.reading() as s:
        f = figures(s, NOW)
    assert f.at == NOW
    assert f.live_calls == 2
    assert f.attempts == 2 and f.cps == Decimal("0.03")
    assert f.decimals == {"EUR": 4, "USD": 4}
    assert f.currencies == ["EUR", "USD"]
    eur, usd = f.today
    assert (usd.period, usd.calls, usd.answered, usd.seconds, usd.revenue, usd.topups) == (
        "2026-11-20", 2, 1, 125, Decimal("1.25"), Decimal("15"))
    assert (usd.minutes, usd.asr, usd.acd) == (Decimal("2.08"), Decimal("50.0"),
                                               Decimal("125.0"))
    assert (eur.calls, eur.answered, eur.seconds, eur.revenue, eur.topups) == (
        1, 1, 30, Decimal("0.30"), Decimal(0))
    assert (f.total.calls, f.total.answered, f.total.seconds) == (3, 2, 155)
    assert (f.total.asr, f.total.acd, f.total.minutes) == (
        Decimal("66.7"), Decimal("77.5"), Decimal("2.58"))

    assert len(f.hours) == HOURS
    assert f.hours[0].start == datetime(2026, 11, 19, 15, tzinfo=UTC)
    assert f.hours[-1].start == datetime(2026, 11, 20, 14, tzinfo=UTC)
    busy = {h.label: (h.calls, h.seconds, h.revenue) for h in f.hours if h.calls}
    assert busy == {
        "23:00": (1, 60, {"USD": Decimal("0.60")}),
        "10:00": (2, 155, {"USD": Decimal("1.25"), "EUR": Decimal("0.30")}),
        "14:00": (1, 0, {"USD": Decimal(0)}),
    }
    assert f.hours[-1].minutes == Decimal("0.00")


def test_figures_of_an_empty_database(db: Database):
    create_test_plan(db)
    with db.reading() as s:
        f = figures(s, NOW)
    assert (f.live_calls, f.attempts, f.cps) == (0, 0, Decimal("0.00"))
    [usd] = f.today
    assert (usd.currency, usd.calls, usd.revenue, usd.topups, usd.asr, usd.acd) == (
        "USD", 0, Decimal(0), Decimal(0), None, None)
    assert f.total.asr is None
    assert [h.calls for h in f.hours] == [0] * HOURS
