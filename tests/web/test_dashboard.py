"""The dashboard in a real Chromium: its figures match the calls and credits made
through the ledger, and they refresh by themselves when a call ends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from ivr.db.models import Account
from ivr.money.ledger import Grant, Ledger
from ivr.testing.access import new_card
from ivr.testing.browser import ConsoleSite, screenshot

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

US = "15551234567"  # 0.60/min, per second: n seconds cost n cents


def call(ledger: Ledger, account_id: int, uniqueid: str, seconds: int | None) -> int:
    """A call to the US started now: answered and ended after ``seconds``, or still up
    (None). Returns its reservation."""
    now = datetime.now(UTC)
    grant = ledger.authorize(US, account_id=account_id, at=now, hold=300)
    assert isinstance(grant, Grant), grant
    if seconds is not None:
        ledger.settle(grant.reservation_id, seconds, uniqueid=uniqueid, started_at=now,
                      answered_at=now, hangup_cause="ANSWER")
    return grant.reservation_id


async def cell(page, column: str) -> str:
    return (await page.inner_text(f"#today tr[data-currency=USD] [data-col={column}]")).strip()


async def figure(page, name: str) -> str:
    return (await page.inner_text(f"[data-figure={name}] b")).strip()


async def test_the_dashboard_shows_todays_figures_and_refreshes(site: ConsoleSite, page):
    db = site.app.db
    card = await asyncio.to_thread(new_card, db, Decimal("10"))  # a 10.00 top-up today
    with db.reading() as s:
        account_id = s.scalar(select(Account.id).where(Account.number == card.account))
    ledger = Ledger(db)
    await asyncio.to_thread(call, ledger, account_id, "call-1", 90)  # 0.90
    await asyncio.to_thread(call, ledger, account_id, "call-up", None)  # up now

    await site.log_in(page, "viewer", then="/")
    assert await figure(page, "live") == "1"
    assert await figure(page, "cps") == "0.03"  # 2 attempts in the last minute
    assert await figure(page, "calls") == "1"
    assert await figure(page, "minutes") == "1.50"
    assert await figure(page, "asr") == "100.0 %"
    assert await figure(page, "acd") == "90.0 s"
    assert (await cell(page, "revenue"), await cell(page, "topups")) == ("0.9000", "10.0000")
    # Calls, minutes and the USD revenue per hour over the last 24 hours.
    captions = await page.locator("#charts figcaption").all_inner_texts()
    assert captions == ["Calls per hour", "Minutes per hour", "Revenue per hour, USD"]
    assert await page.locator("#charts figure:first-child rect").count() == 24
    await screenshot(page, "dashboard")

    # Another call ends: the figures change by themselves (htmx polls every 5 s).
    await asyncio.to_thread(call, ledger, account_id, "call-2", 30)
    await page.wait_for_function(
        "document.querySelector('#today tr[data-currency=USD] [data-col=calls]')"
        ".textContent.trim() === '2'", timeout=15_000)
    assert await cell(page, "revenue") == "1.2000"
    assert await figure(page, "minutes") == "2.00"
    assert page.url == f"{site.url}/"  # swapped in place, no navigation

    # The partial the page polls: the figures alone, for a logged-in user only.
    response = await page.request.get(f"{site.url}/dashboard/figures")
    body = await response.text()
    assert response.status == 200 and "<html" not in body and 'data-figure="live"' in body
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{site.url}/dashboard/figures")
    assert r.status_code == 303 and "/login" in r.headers["location"]
