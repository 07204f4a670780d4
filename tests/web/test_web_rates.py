"""Rates in a real Chromium: a bad deck shows each bad line and changes nothing; a good
one shows what it adds, removes and changes and applies only on Confirm (audited); a
viewer cannot apply it even by posting directly; the simulator prices a call and gives
the longest call a balance pays for."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from ivr.db.models import AuditEntry, RatingPlan
from ivr.money.rates_store import quote_call
from ivr.testing.browser import ConsoleSite, screenshot

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

HEADER = ("plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,"
          "start,end,service\n")
GOOD = HEADER + (
    "retail,1,USA,0,0.50,60,1,0,,,,\n"  # changed: 0.60 -> 0.50
    "retail,44,United Kingdom,0,1.20,60,1,0,,,,\n"  # unchanged
    "retail,33,France,0,0.90,60,30,0,,,,\n"  # added
    # 19999, 19998, 19997, 19995 removed
)
BAD = HEADER + (
    "retail,1,USA,0,0.50,60,1,0,,,,\n"
    "retail,33,France,x,0.90,60,1,0,,,,\n"  # line 3: bad connect fee
    "retail,34,Spain,0,0.10,60,1,0,funday,,,\n"  # line 4: bad day
    "retail,35,Portugal,0,-1,60,1,0,,,,\n"  # line 5: negative rate
)


def minute_to_us(site: ConsoleSite) -> Decimal:
    _, q = quote_call(site.app.db, "retail", "12125550123", 60, datetime.now(UTC))
    return q.cost


def rates_version(site: ConsoleSite) -> int:
    with site.app.db.reading() as s:
        return s.scalar(select(RatingPlan.rates_version).where(RatingPlan.name == "retail"))


async def upload(page, name: str, text: str, reason: str) -> None:
    await page.select_option("form#upload select[name=plan]", "retail")
    await page.set_input_files("form#upload input[name=deck]", files=[
        {"name": name, "mimeType": "text/csv", "buffer": text.encode()}])
    await page.fill("form#upload input[name=reason]", reason)
    async with page.expect_navigation():
        await page.click("form#upload button[type=submit]")


async def test_a_deck_is_checked_compared_then_applied_on_confirm(site: ConsoleSite, page):
    await site.log_in(page, "admin", then="/rates")
    row = page.locator("#plans tr[data-plan=retail]")
    assert await row.locator("[data-prefixes]").inner_text() == "6"
    assert await row.locator("[data-version]").inner_text() == "1"

    # A bad deck: every bad line with its number; nothing applied.
    await upload(page, "bad.csv", BAD, "new prices")
    lines = await page.locator("#deck-problems tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.line, r.innerText])")
    assert [line for line, _ in lines] == ["3", "4", "5"], lines
    assert "connect_fee" in lines[0][1] and "funday" in lines[1][1]
    assert "negative rate" in lines[2][1]
    assert "3 bad lines" in await page.inner_text("em.error[data-field=deck]")
    assert rates_version(site) == 1 and minute_to_us(site) == Decimal("0.60")

    # A good deck: the diff, and still nothing applied.
    await upload(page, "march.csv", GOOD, "new prices for March")
    assert "Nothing is applied yet" in await page.inner_text("#staged")
    added = await page.locator("#diff-added tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.prefix)")
    removed = await page.locator("#diff-removed tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.prefix)")
    assert added == ["33"] and removed == ["19995", "19997", "19998", "19999"]
    changed = page.locator("#diff-changed tbody tr")
    assert await changed.count() == 1
    assert await changed.get_attribute("data-prefix") == "1"
    assert await changed.locator("[data-old]").inner_text() == "0.60/min"
    assert await changed.locator("[data-new]").inner_text() == "0.50/min"
    assert "0.90/min by 30 s" in await page.inner_text("#diff-added")
    assert await page.inner_text("[data-count=unchanged]") == "1"
    await screenshot(page, "rate-diff")
    assert rates_version(site) == 1 and minute_to_us(site) == Decimal("0.60")
    token = await page.get_attribute("#staged", "data-token")

    # Confirm: applied, and audited with the reason.
    async with page.expect_navigation():
        await page.click("form#confirm button[type=submit]")
    assert "applied" in await page.inner_text("#notice")
    assert rates_version(site) == 2 and minute_to_us(site) == Decimal("0.50")
    assert await row.locator("[data-prefixes]").inner_text() == "3"
    with site.app.db.reading() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "rates.apply")).one()
        assert (entry.user, entry.target, entry.reason) == (
            "admin", "plan:retail", "new prices for March")
        assert '"version": 2' in entry.detail and "march.csv" in entry.detail

    # The same deck cannot be applied twice.
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    response = await page.request.post(f"{site.url}/rates/apply", max_redirects=0, form={
        "csrf": csrf, "token": token, "reason": "again"})
    assert response.status == 410
    assert rates_version(site) == 2


async def test_a_stale_diff_and_a_viewer_cannot_apply(site: ConsoleSite, page):
    await site.log_in(page, "admin", then="/rates")
    await upload(page, "march.csv", GOOD, "first")
    first = await page.get_attribute("#staged", "data-token")
    await page.goto(f"{site.url}/rates")
    await upload(page, "march.csv", GOOD.replace("0.50", "0.55"), "second")
    second = await page.get_attribute("#staged", "data-token")

    # A viewer posts the apply directly, with its own valid CSRF token: refused.
    await site.log_in(page, "viewer", then="/rates")
    assert await page.locator("form#upload").count() == 0
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    response = await page.request.post(f"{site.url}/rates/apply", max_redirects=0, form={
        "csrf": csrf, "token": first, "reason": "sneaky"})
    assert response.status == 403
    assert rates_version(site) == 1 and minute_to_us(site) == Decimal("0.60")

    # The admin applies the first; the second was compared with rates now replaced.
    await site.log_in(page, "admin", then="/rates")
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    response = await page.request.post(f"{site.url}/rates/apply", max_redirects=0, form={
        "csrf": csrf, "token": first, "reason": "first"})
    assert response.status == 303
    response = await page.request.post(f"{site.url}/rates/apply", max_redirects=0, form={
        "csrf": csrf, "token": second, "reason": "second"})
    assert response.status == 409 and "changed since" in await response.text()
    assert rates_version(site) == 2 and minute_to_us(site) == Decimal("0.50")


async def test_the_simulator_prices_a_call_and_the_longest_call(site: ConsoleSite, page):
    await site.log_in(page, "viewer", then="/rates")
    await page.fill("form#simulate input[name=number]", "12125550123")
    await page.fill("form#simulate input[name=seconds]", "60")
    await page.fill("form#simulate input[name=at]", "2026-03-02 10:00")
    await page.fill("form#simulate input[name=balance]", "1.00")
    async with page.expect_navigation():
        await page.click("form#simulate button[type=submit]")
    assert Decimal(await page.get_attribute("#cost", "data-cost")) == Decimal("0.60")
    assert "USD" in await page.inner_text("#cost")
    assert await page.inner_text("#prefix") == "1"
    assert await page.inner_text("#destination") == "USA"
    assert await page.inner_text("#sim-at") == "2026-03-02 10:00:00"
    piece = await page.inner_text("#pieces tbody tr")
    assert "0.60" in piece and "60" in piece
    # 1.00 at 0.60/min, per second: 100 s.
    assert await page.get_attribute("#max-seconds", "data-seconds") == "100"
    # A number the plan does not rate: said next to the field.
    await page.fill("form#simulate input[name=number]", "999")
    async with page.expect_navigation():
        await page.click("form#simulate button[type=submit]")
    assert await page.locator("em.error[data-field=number]").count() == 1
