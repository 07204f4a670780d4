"""Call records and reports (``ivr cdrs list``, ``ivr reports``) on SQLite and PostgreSQL,
over calls made through the ledger (authorize, then settle or release) and credits."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import event

from ivr.db import Database
from ivr.db.models import Card, EntryKind
from ivr.money import reports
from ivr.money.accounts import create_account
from ivr.money.ledger import Grant, Ledger, credit
from ivr.money.rates_store import create_plan, import_rows
from ivr.rating import parse_deck

DECK = """\
plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,start,end,service
retail,1,USA,0,0.06,60,6,0,*,,,voice
retail,44,UK,0.10,0.60,60,60,0,,,,
"""
US, UK = "15551234567", "447700900123"
D1, D2 = datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 19, tzinfo=UTC)


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute)


# (card, number, started, answered seconds or None, cause when not answered)
CALLS = [
    ("c1", US, at(D1, 10), 125, ""),          # 126 s at 0.06/min: 0.13
    ("c1", UK, at(D1, 18, 40), None, "BUSY"),  # 00:10 next day in Kolkata (+05:30)
    ("c1", UK, at(D1, 23, 30), 61, ""),       # 0.10 + 2 x 0.60: 1.30; 18:30 in New York
    ("c2", US, at(D2, 0, 30), 60, ""),        # 0.06; still 18 Nov in New York
    ("c2", US, at(D2, 12), None, "NOANSWER"),
    ("c1", UK, datetime(2026, 12, 1, 10, tzinfo=UTC), 120, ""),  # 0.10 + 1.20: 1.30
]


def seed(db: Database) -> None:
    with db.transaction() as s:
        create_plan(s, "retail", "USD", decimals=2, rounding="up")
        import_rows(s, parse_deck(DECK))
        a = create_account(s, "retail", number="700001")
        b = create_account(s, "retail", number="700002")
        credit(s, a.id, Decimal("10"), EntryKind.TOPUP, ref="pay-1", now=at(D1, 9))
        credit(s, b.id, Decimal("5"), EntryKind.VOUCHER, ref="v-1", now=at(D2, 8))
        # Neither an adjustment nor a refund is a top-up.
        credit(s, b.id, Decimal("1"), EntryKind.ADJUSTMENT, now=at(D2, 9))
        for number, account in (("c1", a), ("c2", b)):
            s.add(Card(number=f"4000{number}", pin_hash="-", account_id=account.id,
                       created_at=D1))
    with db.transaction() as s:
        cards = {c.number[4:]: (c.id, c.account_id) for c in s.query(Card)}
    for n, (card, number, started, seconds, cause) in enumerate(CALLS):
        ledger = Ledger(db, clock=lambda started=started: started)
        card_id, account_id = cards[card]
        grant = ledger.authorize(number, account_id=account_id, card_id=card_id, at=started,
                                 hold=300)
        assert isinstance(grant, Grant), grant
        if seconds is None:
            ledger.release(grant.reservation_id, uniqueid=f"call-{n}", started_at=started,
                           hangup_cause=cause)
        else:
            ledger.settle(grant.reservation_id, seconds, uniqueid=f"call-{n}",
                          started_at=started, answered_at=started, hangup_cause="ANSWER")


@pytest.fixture
def ivr(db, tmp_path, monkeypatch, ivr_cli):
    seed(db)
    monkeypatch.setenv("IVR_DATABASE_URL", db.url)
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return ivr_cli


def listed(ivr, *args: str) -> list[dict]:
    return json.loads(ivr("cdrs", "list", "--json", *args))["cdrs"]


def calls(rows: list[dict]) -> list[str]:
    return [r["uniqueid"] for r in rows]


def test_cdrs_list_filters(ivr):
    rows = listed(ivr)
    assert calls(rows) == [f"call-{n}" for n in range(6)]
    first = rows[0]
    assert (first["account"], first["card"], first["destination"], first["destination_name"],
            first["status"], first["billable_seconds"], first["cost"], first["currency"],
            first["started_at"]) == ("700001", "4000c1", US, "USA", "answered", 125, "0.13",
                                     "USD", "2026-11-18T10:00:00+00:00")
    assert (rows[1]["status"], rows[1]["hangup_cause"], rows[1]["cost"]) == (
        "unanswered", "BUSY", "0.00")
    assert calls(listed(ivr, "--status", "answered")) == ["call-0", "call-2", "call-3",
                                                          "call-5"]
    assert calls(listed(ivr, "--status", "unanswered")) == ["call-1", "call-4"]
    assert calls(listed(ivr, "--cause", "noanswer")) == ["call-4"]
    assert calls(listed(ivr, "--destination", "44")) == ["call-1", "call-2", "call-5"]
    assert calls(listed(ivr, "--destination", "usa")) == ["call-0", "call-3", "call-4"]
    assert calls(listed(ivr, "--card", "4000c2")) == ["call-3", "call-4"]
    assert calls(listed(ivr, "--account", "700001", "--status", "answered")) == [
        "call-0", "call-2", "call-5"]
    # A day as --to includes it; the range is in --tz (UTC by default).
    assert calls(listed(ivr, "--from", "2026-11-19", "--to", "2026-11-19")) == [
        "call-3", "call-4"]
    assert calls(listed(ivr, "--from", "2026-11-18", "--to", "2026-11-18",
                        "--tz", "America/New_York")) == ["call-0", "call-1", "call-2", "call-3"]
    assert calls(listed(ivr, "--from", "2026-12")) == ["call-5"]
    assert calls(listed(ivr, "--from", "2026-11-18T23:00:00+00:00",
                        "--to", "2026-11-19T12:00:00+00:00")) == ["call-2", "call-3"]
    assert calls(listed(ivr, "--limit", "2")) == ["call-0", "call-1"]
    assert listed(ivr, "--card", "4000c2", "--status", "answered", "--destination", "44") == []
    text = ivr("cdrs", "list", "--account", "700002")
    assert "NOANSWER" in text and text.splitlines()[-1] == "2 call record(s), times in UTC"


def test_cdrs_list_csv(ivr):
    out = ivr("cdrs", "list", "--csv", "--status", "answered", "--tz", "America/New_York")
    lines = out.splitlines()
    assert lines[0] == ("id,uniqueid,started_at,answered_at,ended_at,account,card,caller,"
                        "destination,destination_name,prefix,plan,service,status,"
                        "billable_seconds,cost,currency,hangup_cause")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["uniqueid"], r["cost"], r["billable_seconds"], r["prefix"]) for r in rows] == [
        ("call-0", "0.13", "125", "1"), ("call-2", "1.30", "61", "44"),
        ("call-3", "0.06", "60", "1"), ("call-5", "1.30", "120", "44")]
    assert rows[1]["started_at"] == "2026-11-18T18:30:00-05:00"
    assert rows[0]["plan"] == "retail" and rows[0]["status"] == "answered"


def test_cdrs_list_refusals(ivr, capsys):
    from ivr.cli import main

    assert "no card 999" in ivr("cdrs", "list", "--card", "999", expect=1)
    # Under --json the refusal is a JSON object on stdout, before any record.
    assert main(["cdrs", "list", "--account", "999", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == {"code": "not_found",
                                                            "message": "no account 999"}
    out = ivr("cdrs", "list", "--tz", "Mars/Olympus", expect=1)
    assert "unknown time zone" in out
    assert "not a month, day or time" in ivr("cdrs", "list", "--from", "yesterday", expect=1)
    assert "--to is not after --from" in ivr("cdrs", "list", "--from", "2026-11-19",
                                             "--to", "2026-11-18", expect=1)


def test_cdrs_are_read_in_keyset_pages(db, monkeypatch):
    """Pages of ``page_size`` rows (WHERE id > last), each row once across page ends,
    and only the pages the reader gets to are read."""
    seed(db)
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001, ANN202
        if "FROM cdrs" in statement:
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.reading() as s:
            everything = [r.uniqueid for r in reports.iter_cdrs(s)]
            assert len(statements) == 1
            for size in (1, 2, 4, 5, 6):
                assert [r.uniqueid for r in reports.iter_cdrs(s, page_size=size)] == everything
            answered = reports.CdrFilter(status="answered")
            assert [r.uniqueid for r in reports.iter_cdrs(s, answered, page_size=3)] == [
                "call-0", "call-2", "call-3", "call-5"]
            assert [r.uniqueid for r in reports.iter_cdrs(s, answered, page_size=3,
                                                          limit=3)] == [
                "call-0", "call-2", "call-3"]
            statements.clear()
            rows = reports.iter_cdrs(s, page_size=2)
            assert [next(rows).uniqueid for _ in range(3)] == everything[:3]
            assert len(statements) == 2  # the third row needed the second page only
            assert "LIMIT" in statements[-1].upper()
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    # The CLI streams through the same pages.
    monkeypatch.setattr(reports, "PAGE_SIZE", 2)
    with db.reading() as s:
        assert len(list(reports.iter_cdrs(s, limit=5))) == 5


def report_rows(ivr, *args: str) -> list[dict]:
    data = json.loads(ivr("reports", *args, "--json"))
    return [{k: v for k, v in r.items() if v is not None} for r in data["rows"]]


def test_daily_and_monthly_reports(ivr):
    assert report_rows(ivr, "daily") == [
        {"period": "2026-11-18", "currency": "USD", "calls": 3, "answered": 2, "asr": "66.7",
         "minutes": "3.10", "seconds": 186, "acd": "93.0", "revenue": "1.43",
         "topups": "10.00"},
        {"period": "2026-11-19", "currency": "USD", "calls": 2, "answered": 1, "asr": "50.0",
         "minutes": "1.00", "seconds": 60, "acd": "60.0", "revenue": "0.06",
         "topups": "5.00"},
        {"period": "2026-12-01", "currency": "USD", "calls": 1, "answered": 1,
         "asr": "100.0", "minutes": "2.00", "seconds": 120, "acd": "120.0",
         "revenue": "1.30", "topups": "0.00"},
    ]
    assert report_rows(ivr, "monthly") == [
        {"period": "2026-11", "currency": "USD", "calls": 5, "answered": 3, "asr": "60.0",
         "minutes": "4.10", "seconds": 246, "acd": "82.0", "revenue": "1.49",
         "topups": "15.00"},
        {"period": "2026-12", "currency": "USD", "calls": 1, "answered": 1,
         "asr": "100.0", "minutes": "2.00", "seconds": 120, "acd": "120.0",
         "revenue": "1.30", "topups": "0.00"},
    ]
    # Days of another zone, with DST-free November offsets: New York (-05:00) moves the
    # 00:30 UTC call to the 18th; Kolkata (+05:30) moves the 18:40 UTC one to the 19th.
    ny = report_rows(ivr, "daily", "--tz", "America/New_York", "--to", "2026-11-30")
    assert [(r["period"], r["calls"], r["answered"], r["revenue"], r["topups"],
             r.get("acd")) for r in ny] == [
        ("2026-11-18", 4, 3, "1.49", "10.00", "82.0"),
        ("2026-11-19", 1, 0, "0.00", "5.00", None)]
    assert ny[1]["asr"] == "0.0"
    kolkata = report_rows(ivr, "daily", "--tz", "Asia/Kolkata", "--from", "2026-11-18",
                          "--to", "2026-11-19")
    assert [(r["period"], r["calls"], r["answered"], r["seconds"], r["topups"])
            for r in kolkata] == [("2026-11-18", 1, 1, 125, "10.00"),
                                  ("2026-11-19", 4, 2, 121, "5.00")]


def test_reports_by_destination_and_plan(ivr):
    by_dest = report_rows(ivr, "daily", "--by", "destination", "--to", "2026-11-18")
    assert by_dest == [
        {"period": "2026-11-18", "group": "UK", "currency": "USD", "calls": 2,
         "answered": 1, "asr": "50.0", "minutes": "1.02", "seconds": 61, "acd": "61.0",
         "revenue": "1.30"},
        {"period": "2026-11-18", "group": "USA", "currency": "USD", "calls": 1,
         "answered": 1, "asr": "100.0", "minutes": "2.08", "seconds": 125, "acd": "125.0",
         "revenue": "0.13"},
    ]
    by_plan = report_rows(ivr, "monthly", "--by", "plan", "--from", "2026-11",
                          "--to", "2026-11")
    assert [(r["period"], r["group"], r["calls"], r["revenue"], r["topups"])
            for r in by_plan] == [("2026-11", "retail", 5, "1.49", "15.00")]
    out = ivr("reports", "monthly", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0] == ("period,group,currency,calls,answered,asr,minutes,"
                                   "seconds,acd,revenue,topups")
    assert [(r["period"], r["calls"], r["revenue"], r["topups"]) for r in rows] == [
        ("2026-11", "5", "1.49", "15.00"), ("2026-12", "1", "1.30", "0.00")]
    text = ivr("reports", "daily", "--from", "2026-11-19", "--to", "2026-11-19")
    assert text.splitlines()[1].split() == ["2026-11-19", "USD", "2", "1", "50.0", "1.00",
                                            "60.0", "0.06", "5.00"]
    assert ivr("reports", "daily", "--from", "2027-01") == (
        "no calls or top-ups in this range\n")
