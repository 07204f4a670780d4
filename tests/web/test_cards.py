"""Cards and batches in a real Chromium: an admin generates a batch and downloads its
PINs once (the numbers and PINs log in on the access line's own check; a second download
is refused); the batch list counts used, unused, locked and expired cards; support finds
a card by its number, sees its calls and ledger, and locks and unlocks it; a viewer
cannot, even by posting the form."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ivr import login
from ivr.db.models import Account, AuditEntry, Card, CardStatus, WebDownload
from ivr.money.accounts import set_card_status
from ivr.money.ledger import Grant
from ivr.testing.access import new_account, new_card
from ivr.testing.browser import ConsoleSite, screenshot

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


def _call(site: ConsoleSite, card_id: int, seconds: int, uniqueid: str) -> None:
    """A settled call of ``card_id`` to the US (1 cent a second): a call record."""
    grant = site.app.ledger.authorize("15551234567", card_id=card_id)
    assert isinstance(grant, Grant), grant
    site.app.ledger.settle(grant.reservation_id, seconds, uniqueid=uniqueid)


async def _counts(page, batch: str) -> dict[str, int]:
    row = page.locator(f"#batches tr[data-batch='{batch}']")
    return {name: int(await row.locator(f"td[data-count={name}]").inner_text())
            for name in ("cards", "used", "unused", "locked", "expired")}


async def test_generate_a_batch_and_download_its_pins_once(site: ConsoleSite, page,
                                                           tmp_path: Path):
    db = site.app.db
    await site.log_in(page, "admin", then="/cards")
    await page.fill("form#issue input[name=batch]", "SPRING-26")
    await page.fill("form#issue input[name=count]", "3")
    await page.fill("form#issue input[name=value]", "5")
    await page.fill("form#issue input[name=expires]", "2030-06-30")
    await page.select_option("form#issue select[name=accounts]", "each")
    await page.fill("form#issue input[name=reason]", "stock for shop 4")
    async with page.expect_navigation():
        await page.click("form#issue button[type=submit]")
    notice = page.locator("#issued")
    assert await notice.get_attribute("data-count") == "3"
    assert await notice.get_attribute("data-batch") == "SPRING-26"
    link = await page.get_attribute("#pin-download", "href")
    assert link and link.startswith("/downloads/")

    async with page.expect_download() as waiting:
        await page.click("#pin-download")
    download = await waiting.value
    saved = tmp_path / "pins.csv"
    await download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert len(rows) == 3
    assert {r["balance"] for r in rows} == {"5.00"} and {r["expires_on"] for r in rows} == {
        "2030-06-30"}
    assert len({r["account"] for r in rows}) == 3  # one account per card
    # Each number and PIN logs in, by the access line's own check.
    for r in rows:
        result = await asyncio.to_thread(login.log_in, db, r["card_number"], r["pin"], None,
                                         login.LoginPolicy(pin_keys=site.app.pin_keys))
        assert result.verdict is login.Verdict.OK, (r["card_number"][-4:], result)
        assert result.holder is not None and result.holder.available == Decimal("5")
    # Given once: the file is gone from the database, and the link answers 410.
    again = await page.request.get(f"{site.url}{link}")
    assert again.status == 410
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(WebDownload)) == 0
        cards = list(s.scalars(select(Card).where(Card.batch == "SPRING-26")))
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "cards.issue"))
    assert len(cards) == 3 and all(c.expires_on == date(2030, 6, 30) for c in cards)
    assert entry is not None and entry.target == "SPRING-26"
    assert entry.reason == "stock for shop 4" and entry.user == "admin"
    detail = json.loads(entry.detail)
    assert (detail["count"], detail["value"], detail["plan"]) == (3, "5", "retail")
    assert not any(r["pin"] in entry.detail for r in rows)

    # The counts: a card that made a call is used, a locked one locked.
    by_number = {c.number: c for c in cards}
    first, second = rows[0]["card_number"], rows[1]["card_number"]
    await asyncio.to_thread(_call, site, by_number[first].id, 30, "batch-call-1")
    with db.transaction() as s:
        set_card_status(s, second, CardStatus.LOCKED)
    await page.goto(f"{site.url}/cards")
    assert await _counts(page, "SPRING-26") == {"cards": 3, "used": 1, "unused": 1,
                                                 "locked": 1, "expired": 0}
    await page.click("#batches tr[data-batch='SPRING-26'] a")
    await page.wait_for_selector("#cards")
    states = {await row.get_attribute("data-card"):
              await row.locator("td[data-state]").get_attribute("data-state")
              for row in await page.locator("#cards tbody tr").all()}
    assert states[first] == "active" and states[second] == "locked" and len(states) == 3
    await screenshot(page, "card-batch")


async def test_bad_batch_options_are_shown_next_to_the_fields(site: ConsoleSite, page):
    await site.log_in(page, "admin", then="/cards")
    for field, value, message in (("count", "0", "between 1 and"),
                                  ("value", "1.2345678", "more than 6 decimals"),
                                  ("expires", "2001-01-01", "already past")):
        await page.goto(f"{site.url}/cards")
        await page.fill("form#issue input[name=count]", "2")
        await page.fill("form#issue input[name=value]", "1")
        await page.fill(f"form#issue input[name={field}]", value)
        await page.fill("form#issue input[name=reason]", "try")
        async with page.expect_navigation() as nav:
            await page.click("form#issue button[type=submit]")
        assert (await nav.value).status == 400
        error = await page.inner_text(f"form#issue em.error[data-field={field}]")
        assert message in error, (field, error)
    # Cards joining an existing account share its balance: a value would be dropped.
    shared = await asyncio.to_thread(new_account, site.app.db, Decimal("7"))
    await page.goto(f"{site.url}/cards")
    await page.fill("form#issue input[name=count]", "2")
    await page.fill("form#issue input[name=value]", "3")
    await page.select_option("form#issue select[name=accounts]", "existing")
    await page.fill("form#issue input[name=account]", shared)
    await page.fill("form#issue input[name=reason]", "family cards")
    async with page.expect_navigation() as nav:
        await page.click("form#issue button[type=submit]")
    assert (await nav.value).status == 400
    assert "cannot be used with" in await page.inner_text(
        "form#issue em.error[data-field=value]")
    with site.app.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Card)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0
    # Without the value: two cards on that account; and a batch sharing one new account.
    await page.fill("form#issue input[name=value]", "")
    async with page.expect_navigation():
        await page.click("form#issue button[type=submit]")
    assert await page.get_attribute("#issued", "data-count") == "2"
    await page.fill("form#issue input[name=batch]", "TEAM")
    await page.fill("form#issue input[name=count]", "4")
    await page.fill("form#issue input[name=value]", "20")
    await page.select_option("form#issue select[name=accounts]", "shared")
    await page.fill("form#issue input[name=reason]", "team cards")
    async with page.expect_navigation():
        await page.click("form#issue button[type=submit]")
    row = page.locator("#batches tr[data-batch='TEAM']")
    assert await row.locator("td[data-count=cards]").inner_text() == "4"
    assert (await row.locator("td").nth(4).inner_text()) == "1"  # one account
    with site.app.db.reading() as s:
        owners = {c.batch: c.account for c in s.scalars(select(Card))}
        assert owners["TEAM"].balance == Decimal("20")
        assert len({c.account_id for c in s.scalars(select(Card))}) == 2
        assert s.scalar(select(Account.balance).where(Account.number == shared)) == 7


async def test_support_finds_a_card_and_locks_it(site: ConsoleSite, page):
    db = site.app.db
    card = await asyncio.to_thread(new_card, db, Decimal("5"))
    other = await asyncio.to_thread(new_card, db, Decimal("5"))
    await asyncio.to_thread(_call, site, card.card_id, 42, "card-call-1")

    # A viewer sees the card but cannot lock it, even by posting the form.
    await site.log_in(page, "viewer", then="/cards")
    assert await page.locator("form#issue").count() == 0
    await page.goto(f"{site.url}/cards/{card.number}")
    assert await page.locator("form#lock").count() == 0
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    refused = await page.request.post(f"{site.url}/cards/{card.number}/lock",
                                      form={"csrf": csrf or "", "reason": "x"},
                                      max_redirects=0)
    assert refused.status == 403

    await site.log_in(page, "support", then="/cards")
    await page.fill("form#search input[name=q]", card.number)
    async with page.expect_navigation():
        await page.click("form#search button[type=submit]")
    assert page.url == f"{site.url}/cards/{card.number}"
    assert await page.inner_text("#card-state") == "active"
    # Its call and its account's ledger (opening top-up, the call's charge: 42 cents).
    call = page.locator("#calls tr[data-uniqueid='card-call-1']")
    assert "15551234567" in await call.inner_text() and "42" in await call.inner_text()
    ledger = await page.inner_text("#ledger tbody")
    assert "call" in ledger and "-0.4200" in ledger and "topup" in ledger

    await page.fill("form#lock input[name=reason]", "reported stolen")
    async with page.expect_navigation():
        await page.click("form#lock button[type=submit]")
    assert await page.inner_text("#card-state") == "locked"
    with db.reading() as s:
        statuses = dict(s.execute(select(Card.number, Card.status)).all())
        line = s.scalar(select(AuditEntry).where(AuditEntry.action == "card.lock"))
    assert statuses[card.number] is CardStatus.LOCKED
    assert statuses[other.number] is CardStatus.ACTIVE
    assert line is not None and line.target == card.number and line.user == "support"
    assert line.reason == "reported stolen"
    # Its log-in is now refused (the right PIN tells it is locked).
    result = await asyncio.to_thread(login.log_in, db, card.number, card.pin, None,
                                     login.LoginPolicy())
    assert result.verdict is login.Verdict.LOCKED

    async with page.expect_navigation():
        await page.click("form#unlock button[type=submit]")
    assert await page.inner_text("#card-state") == "active"
    # An unknown number finds nothing.
    await page.goto(f"{site.url}/cards?q=000000")
    assert "No card found" in await page.inner_text("#cards")
