"""The CDR page in a real Chromium, on SQLite and PostgreSQL: call records made through
the ledger (settled and released calls) and written in bulk; the page lists them newest
first 50 at a time, and following "Older" walks every record once; the filters (card,
destination prefix or name, status, time range) pick the right ones; a bad date or an
unknown card is shown next to its field; each row links to its call's trace; the CSV
export (streamed in pieces) holds exactly the filtered records, as ``ivr cdrs list --csv``
writes them; a viewer cannot see call records; a search past its time limit stops (its
database worker is free again) and the page says how to narrow it."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from ivr.db import Database
from ivr.db.models import Card, Cdr, EntryKind
from ivr.money import reports
from ivr.money.ledger import Grant, Ledger, credit
from ivr.testing.access import new_card
from ivr.testing.browser import ConsoleSite, screenshot
from ivr.web.pages import cdrs as cdrs_page

pytestmark = pytest.mark.asyncio(loop_scope="session")

BASE = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
US, UK = "15551230000", "447700900123"
BULK = 120  # records of card B, three per minute from BASE (same start times: ties)
CSV_HEADER = ("id,uniqueid,started_at,answered_at,ended_at,account,card,caller,destination,"
              "destination_name,prefix,plan,service,status,billable_seconds,cost,currency,"
              "hangup_cause")


@dataclass
class Seeded:
    card_a: str
    account_a: str
    card_b: str


def seed(db: Database) -> Seeded:
    """Card A: three calls through the ledger (US answered 30 s, UK busy, UK answered
    61 s). Card B: BULK records inserted in shuffled order (ids unrelated to start
    times), even ones answered (10 s, 0.10), odd ones not (NOANSWER)."""
    a, b = new_card(db, Decimal(0)), new_card(db, Decimal(0))
    with db.transaction() as s:
        account_a = s.scalar(select(Card.account_id).where(Card.id == a.card_id))
        account_b = s.scalar(select(Card.account_id).where(Card.id == b.card_id))
        assert account_a is not None and account_b is not None
        credit(s, account_a, Decimal("50"), EntryKind.TOPUP, ref="pay-a", now=BASE)
    calls = [("a-us", US, BASE + timedelta(hours=1), 30, ""),
             ("a-uk-busy", UK, BASE + timedelta(hours=2), None, "BUSY"),
             ("a-uk", UK, BASE + timedelta(hours=3), 61, "")]
    for uniqueid, number, started, seconds, cause in calls:
        ledger = Ledger(db, clock=lambda started=started: started)
        grant = ledger.authorize(number, account_id=account_a, card_id=a.card_id, at=started,
                                 hold=300)
        assert isinstance(grant, Grant), grant
        if seconds is None:
            ledger.release(grant.reservation_id, uniqueid=uniqueid, started_at=started,
                           hangup_cause=cause)
        else:
            ledger.settle(grant.reservation_id, seconds, uniqueid=uniqueid, caller="3312345",
                          started_at=started, answered_at=started, hangup_cause="ANSWER")
    order = list(range(BULK))
    random.Random(3).shuffle(order)
    rows = []
    for i in order:
        started = BASE + timedelta(minutes=i // 3)
        answered = i % 2 == 0
        rows.append({
            "uniqueid": f"b-{i}", "account_id": account_b, "card_id": b.card_id,
            "reservation_id": None, "caller": "", "destination": "15557770000",
            "destination_name": "USA", "prefix": "1", "plan": "retail", "service": "voice",
            "started_at": started, "answered_at": started if answered else None,
            "ended_at": started + timedelta(seconds=10 if answered else 20),
            "billable_seconds": 10 if answered else 0,
            "cost": Decimal("0.10") if answered else Decimal(0), "currency": "USD",
            "hangup_cause": "ANSWER" if answered else "NOANSWER"})
    with db.transaction() as s:
        s.execute(insert(Cdr), rows)
    return Seeded(a.number, a.account, b.number)


def newest_first(db: Database) -> list[str]:
    """Every record's uniqueid by start time, latest first, ties by the higher id."""
    with db.reading() as s:
        rows = s.execute(select(Cdr.uniqueid, Cdr.started_at, Cdr.id)).all()
    return [u for u, _, _ in sorted(rows, key=lambda r: (r[1].replace(tzinfo=None), r[2]),
                                    reverse=True)]


async def shown(page) -> list[str]:
    return await page.eval_on_selector_all(
        "#cdrs tbody tr[data-uniqueid]", "rows => rows.map(r => r.dataset.uniqueid)")


async def search(page, **values: str) -> None:
    for name in ("from", "to", "card", "account", "destination", "cause"):
        await page.fill(f"#cdr-filter input[name={name}]", values.get(name, ""))
    await page.select_option("#cdr-filter select[name=status]", values.get("status", ""))
    async with page.expect_navigation():
        await page.click("#search")


async def test_cdr_pages_filters_and_trace_links(site: ConsoleSite, page):
    seeded = await asyncio.to_thread(seed, site.app.db)
    everything = await asyncio.to_thread(newest_first, site.app.db)
    assert len(everything) == BULK + 3

    await site.log_in(page, "support", then="/cdrs")
    first = await shown(page)
    assert first == everything[:50]
    assert first[:3] == ["a-uk", "a-uk-busy", "a-us"]
    row = await page.inner_text("#cdrs tr[data-uniqueid=a-uk]")
    assert "2026-11-20 11:00:00" in row and seeded.card_a in row and UK in row
    assert "1.2200 USD" in row and "61" in row
    assert "BUSY" in await page.inner_text("#cdrs tr[data-uniqueid=a-uk-busy]")
    assert await page.get_attribute("#cdrs tr[data-uniqueid=a-us] a",
                                    "href") == "/calls/a-us/trace"
    await screenshot(page, "cdrs")

    # "Older" walks the rest: no record twice, none missed, then no more link.
    walked = list(first)
    while await page.query_selector("#older"):
        async with page.expect_navigation():
            await page.click("#older")
        walked += await shown(page)
        assert "before=" in page.url
    assert walked == everything
    assert await page.query_selector("#newest") is not None

    await search(page, card=seeded.card_a)
    assert await shown(page) == ["a-uk", "a-uk-busy", "a-us"]
    await search(page, destination="44")
    assert await shown(page) == ["a-uk", "a-uk-busy"]
    await search(page, destination="44", status="answered")
    assert await shown(page) == ["a-uk"]
    await search(page, destination="usa", status="unanswered")
    unanswered = [u for u in everything if u.startswith("b-") and int(u[2:]) % 2]
    rows = await shown(page)
    assert rows == unanswered[:50]
    assert await page.get_attribute("#older", "href") is not None
    assert "status=unanswered" in (await page.get_attribute("#older", "href") or "")
    await search(page, account=seeded.account_a, cause="busy")
    assert await shown(page) == ["a-uk-busy"]
    # A time range in UTC, the end excluded: minutes 10 and 11 of card B.
    await search(page, **{"from": "2026-11-20T08:10", "to": "2026-11-20T08:12"})
    assert sorted(await shown(page)) == sorted(f"b-{i}" for i in range(30, 36))
    # A day as the end includes it.
    await search(page, **{"from": "2026-11-20", "to": "2026-11-20", "card": seeded.card_a})
    assert len(await shown(page)) == 3

    # Bad input: the message next to its field, and no listing.
    response = await page.goto(f"{site.url}/cdrs?from=yesterday&card={seeded.card_a}")
    assert response is not None and response.status == 400
    assert "not a month, day or time" in await page.inner_text("em[data-field=from]")
    assert await page.query_selector("#cdrs") is None
    assert await page.input_value("#cdr-filter input[name=card]") == seeded.card_a
    await search(page, **{"from": "2026-11-21", "to": "2026-11-20"})
    assert "not after" in await page.inner_text("em[data-field=to]")
    await search(page, card="999000")
    assert "no card 999000" in await page.inner_text("em[data-field=card]")
    response = await page.goto(f"{site.url}/cdrs?status=maybe")
    assert response is not None and response.status == 400
    assert await page.query_selector("em[data-field=status]") is not None

    # A viewer cannot see call records.
    await site.log_in(page, "viewer", then="/")
    response = await page.request.get(f"{site.url}/cdrs")
    assert response.status == 403


async def download_rows(page, click: str) -> tuple[str, list[dict[str, str]]]:
    async with page.expect_download() as info:
        await page.click(click)
    download = await info.value
    content = await asyncio.to_thread(Path(await download.path()).read_text)
    return content, list(csv.DictReader(io.StringIO(content)))


async def test_cdr_export_streams_the_filtered_records(site: ConsoleSite, page, monkeypatch):
    seeded = await asyncio.to_thread(seed, site.app.db)
    monkeypatch.setattr(reports, "CSV_CHUNK", 7)  # many pieces, each its own read
    await site.log_in(page, "admin", then="/cdrs")

    await page.fill("#cdr-filter input[name=destination]", "1")
    await page.select_option("#cdr-filter select[name=status]", "answered")
    content, rows = await download_rows(page, "#export")
    assert content.splitlines()[0] == CSV_HEADER
    expected = {"a-us"} | {f"b-{i}" for i in range(0, BULK, 2)}
    assert [r["uniqueid"] for r in rows if r["uniqueid"] in expected] == [
        r["uniqueid"] for r in rows]
    assert len(rows) == len(expected) == 61 and {r["uniqueid"] for r in rows} == expected
    ids = [int(r["id"]) for r in rows]
    assert ids == sorted(ids)  # oldest first, as `ivr cdrs list`
    us = next(r for r in rows if r["uniqueid"] == "a-us")
    assert (us["account"], us["card"], us["caller"], us["destination"],
            us["destination_name"], us["prefix"], us["status"], us["billable_seconds"],
            us["cost"], us["currency"], us["started_at"], us["hangup_cause"]) == (
        seeded.account_a, seeded.card_a, "3312345", US, "USA", "1", "answered", "30",
        "0.30", "USD", "2026-11-20T09:00:00+00:00", "ANSWER")
    bulk = next(r for r in rows if r["uniqueid"] == "b-4")
    assert (bulk["card"], bulk["cost"], bulk["started_at"]) == (
        seeded.card_b, "0.10", "2026-11-20T08:01:00+00:00")

    # Exactly what the CLI's reader gives in one pass, whatever the pieces.
    def cli_rows() -> list[dict[str, str]]:
        out = io.StringIO()
        f = reports.CdrFilter(destination="1", status="answered")
        with site.app.db.reading() as s:
            decimals = reports.currency_decimals(s)
            reports.write_csv(out, reports.CDR_FIELDS, (
                reports.cdr_record(r, reports.UTC_ZONE, decimals)
                for r in reports.iter_cdrs(s, f)))
        return list(csv.DictReader(io.StringIO(out.getvalue())))

    assert rows == await asyncio.to_thread(cli_rows)

    # No filter: every record; an unknown account is refused next to its field.
    await page.goto(f"{site.url}/cdrs")
    content, rows = await download_rows(page, "#export")
    assert len(rows) == BULK + 3 and len(content.splitlines()) == BULK + 4
    assert len({r["id"] for r in rows}) == BULK + 3
    response = await page.goto(f"{site.url}/cdrs.csv?account=12345")
    assert response is not None and response.status == 400
    assert "no account 12345" in await page.inner_text("em[data-field=account]")


def slow_sql(db: Database) -> str:
    """A statement that runs for minutes unless stopped."""
    if db.is_sqlite:
        return ("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                "WHERE x < 10000000000) SELECT count(*) FROM n")
    return "SELECT pg_sleep(600)"


async def test_a_search_past_its_time_limit_stops_and_says_so(site: ConsoleSite, page,
                                                              monkeypatch):
    db = site.app.db

    def stopped() -> float:
        began = time.monotonic()
        with db.reading() as s, pytest.raises(reports.TooSlow), reports.time_limit(s, 0.3):
            s.execute(text(slow_sql(db))).all()
        took = time.monotonic() - began
        with db.reading() as s:  # the connection goes on without the limit
            assert s.execute(text("SELECT 1")).scalar() == 1
        return took

    assert await asyncio.to_thread(stopped) < 3

    # The page: a search that would scan too long stops and says how to narrow it.
    await asyncio.to_thread(seed, db)
    real = reports.iter_cdrs

    def scanning(s, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        s.execute(text(slow_sql(db))).all()
        return real(s, *args, **kwargs)

    monkeypatch.setattr(cdrs_page, "SEARCH_SECONDS", 0.3)
    monkeypatch.setattr(cdrs_page, "_piece_seconds", lambda db: 0.4)
    monkeypatch.setattr(reports, "iter_cdrs", scanning)
    await site.log_in(page, "support", then="/cdrs?destination=99")
    assert "stopped after 0.3 s" in await page.inner_text("#search-error")
    assert await page.query_selector("#cdrs") is None
    response = await page.goto(f"{site.url}/cdrs.csv?destination=99")
    assert response is not None and response.status == 400
    message = await page.inner_text("#search-error")
    assert "stopped after 0.4 s" in message and "narrow it with a time range" in message
    monkeypatch.setattr(reports, "iter_cdrs", real)
    await page.goto(f"{site.url}/cdrs?destination=99")
    assert await page.query_selector("#search-error") is None
    assert await shown(page) == []
