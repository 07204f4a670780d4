"""The reports page in a real Chromium, on SQLite and PostgreSQL: calls made through the
ledger and credits at known times give known figures per day and per month (calls,
answered, ASR, minutes, ACD, revenue, top-ups), by destination and by plan, with a chart
per figure; the CSV download has the columns of ``ivr reports --csv`` and the page's
figures; a bad date is shown next to its field."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from ivr.db import Database
from ivr.db.models import Card, EntryKind
from ivr.money.ledger import Grant, Ledger, credit
from ivr.testing.access import new_card
from ivr.testing.browser import ConsoleSite, screenshot

pytestmark = pytest.mark.asyncio(loop_scope="session")

US, UK = "15551230000", "447700900123"
D1, D2, D3 = (datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 19, tzinfo=UTC),
              datetime(2026, 12, 1, tzinfo=UTC))
HEADER = "period,group,currency,calls,answered,asr,minutes,seconds,acd,revenue,topups"
COLUMNS = ("calls", "answered", "asr", "minutes", "acd", "revenue", "topups")


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute)


# (card, number, started, answered seconds or None, cause). The test plan bills per
# second: 0.60/min to the US, 1.20/min to the UK.
CALLS = [
    ("a", US, at(D1, 10), 120, ""),             # 1.20
    ("a", UK, at(D1, 18, 40), None, "BUSY"),
    ("a", UK, at(D1, 23, 30), 61, ""),          # 1.22
    ("b", US, at(D2, 0, 30), 60, ""),           # 0.60
    ("b", US, at(D2, 12), None, "NOANSWER"),
    ("a", UK, at(D3, 10), 30, ""),              # 0.60
]


def seed(db: Database) -> None:
    cards = {name: new_card(db, Decimal(0)) for name in ("a", "b")}
    accounts = {}
    with db.transaction() as s:
        for name, card in cards.items():
            accounts[name] = s.scalar(select(Card.account_id).where(Card.id == card.card_id))
        credit(s, accounts["a"], Decimal("10"), EntryKind.TOPUP, ref="pay-1", now=at(D1, 9))
        credit(s, accounts["b"], Decimal("5"), EntryKind.VOUCHER, ref="v-1", now=at(D2, 0))
        # An adjustment is not a top-up.
        credit(s, accounts["b"], Decimal("1"), EntryKind.ADJUSTMENT, now=at(D2, 0, 10))
    for n, (name, number, started, seconds, cause) in enumerate(CALLS):
        ledger = Ledger(db, clock=lambda started=started: started)
        grant = ledger.authorize(number, account_id=accounts[name],
                                 card_id=cards[name].card_id, at=started, hold=300)
        assert isinstance(grant, Grant), grant
        if seconds is None:
            ledger.release(grant.reservation_id, uniqueid=f"call-{n}", started_at=started,
                           hangup_cause=cause)
        else:
            ledger.settle(grant.reservation_id, seconds, uniqueid=f"call-{n}",
                          started_at=started, answered_at=started, hangup_cause="ANSWER")


async def table(page) -> list[tuple[str, ...]]:
    """The report table: (period, group or "", currency, *COLUMNS) per row."""
    return [tuple(row) for row in await page.eval_on_selector_all(
        "#report tbody tr[data-period]",
        """(rows, columns) => rows.map(r => [r.dataset.period, r.dataset.group || "",
             r.dataset.currency, ...columns.map(c => r.querySelector(`[data-col=${c}]`)
             .textContent.trim())])""", list(COLUMNS))]


async def show(page, period: str, by: str = "", start: str = "", end: str = "") -> None:
    await page.select_option("#report-form select[name=period]", period)
    await page.select_option("#report-form select[name=by]", by)
    await page.fill("#report-form input[name=from]", start)
    await page.fill("#report-form input[name=to]", end)
    async with page.expect_navigation():
        await page.click("#show")


async def download(page) -> tuple[str, list[tuple[str, ...]]]:
    async with page.expect_download() as info:
        await page.click("#download")
    text = await asyncio.to_thread(Path(await (await info.value).path()).read_text)
    return text, [(r["period"], r["group"], r["currency"], *(r[c] or "-" for c in COLUMNS))
                  for r in csv.DictReader(io.StringIO(text))]


async def test_daily_and_monthly_reports_with_charts_and_csv(site: ConsoleSite, page):
    await asyncio.to_thread(seed, site.app.db)
    await site.log_in(page, "viewer", then="/reports")

    await show(page, "daily")
    daily = [
        ("2026-11-18", "", "USD", "3", "2", "66.7", "3.02", "90.5", "2.42", "10.00"),
        ("2026-11-19", "", "USD", "2", "1", "50.0", "1.00", "60.0", "0.60", "5.00"),
        ("2026-12-01", "", "USD", "1", "1", "100.0", "0.50", "30.0", "0.60", "0.00"),
    ]
    assert await table(page) == daily
    await screenshot(page, "reports")
    # Three charts (calls, minutes, revenue), one bar per day.
    assert len(await page.query_selector_all("section.charts[data-currency=USD] svg")) == 3
    bars = await page.query_selector_all("section.charts[data-currency=USD] svg rect")
    assert len(bars) == 9
    assert "2026-11-18: 3" in await bars[0].text_content()
    text, rows = await download(page)
    assert text.splitlines()[0] == HEADER
    assert rows == daily

    await show(page, "monthly")
    monthly = [
        ("2026-11", "", "USD", "5", "3", "60.0", "4.02", "80.3", "3.02", "15.00"),
        ("2026-12", "", "USD", "1", "1", "100.0", "0.50", "30.0", "0.60", "0.00"),
    ]
    assert await table(page) == monthly
    assert (await download(page))[1] == monthly

    # By destination (top-ups belong to accounts: not shown), one day.
    await show(page, "daily", "destination", "2026-11-18", "2026-11-18")
    by_destination = [
        ("2026-11-18", "USA", "USD", "1", "1", "100.0", "2.00", "120.0", "1.20", "-"),
        ("2026-11-18", "United Kingdom", "USD", "2", "1", "50.0", "1.02", "61.0", "1.22",
         "-"),
    ]
    assert await table(page) == by_destination
    text, rows = await download(page)
    assert rows == by_destination
    assert text.splitlines()[1] == "2026-11-18,USA,USD,1,1,100.0,2.00,120,120.0,1.20,"
    # The chart sums the groups: one bar, 3 calls.
    bars = await page.query_selector_all("section.charts svg rect")
    assert len(bars) == 3 and "2026-11-18: 3" in await bars[0].text_content()

    await show(page, "monthly", "plan", "2026-11", "2026-11")
    by_plan = [("2026-11", "retail", "USD", "5", "3", "60.0", "4.02", "80.3", "3.02",
                "15.00")]
    assert await table(page) == by_plan
    assert (await download(page))[1] == by_plan

    # Bad input: the message next to the field, no figures.
    await show(page, "daily", "", "18/11/2026")
    assert "not a month, day or time" in await page.inner_text("em[data-field=from]")
    assert await page.query_selector("#report") is None
    response = await page.goto(f"{site.url}/reports.csv?period=weekly")
    assert response is not None and response.status == 400
    assert "daily or monthly" in await page.inner_text("em[data-field=period]")
    await show(page, "daily", "", "2027-01")
    assert "No calls or top-ups" in await page.inner_text("#report")
