"""The web console over real calls (markers asterisk and web): the console of an access
line wired as `ivr serve` wires it (its AMI connection for hang-ups), in a real headless
Chromium, while the test phone calls the line through the real Asterisk; on SQLite and
on PostgreSQL.

- a card locked from the page is refused on the phone line;
- a paid call appears in Live calls while it is up, its trace shows the prompts, the
  masked keys and the warning, and a supporter hangs it up from the page;
- after it ends it is in the CDRs, linked to its trace, which shows what it cost; the
  CDR export has it.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.ami import AmiClient
from ivr.testing.access import AccessLine, Caller, account_state, cdrs, open_reservations
from ivr.testing.browser import chromium, console_site, screenshot
from ivr.testing.phone import Phone

pytestmark = [pytest.mark.asterisk, pytest.mark.web]

WARN, FINAL = 16, 4  # seconds before the cut: the first warning comes 4 s into a 20 s call
LINES = [
    pytest.param({"database": "sqlite", "low_balance_warning": WARN, "final_warning": FINAL},
                 id="sqlite"),
    pytest.param({"database": "postgres", "low_balance_warning": WARN,
                  "final_warning": FINAL}, id="postgres", marks=pytest.mark.postgres),
]


@pytest.mark.parametrize("access_line", LINES, indirect=True)
async def test_the_console_follows_real_calls(
    access_line: AccessLine, phone: Phone, server_ami: AmiClient,
):
    locked = access_line.card("5.00")
    paid = access_line.card("0.40")  # 1.20 a minute to the UK, per second: 20 seconds
    async with chromium() as browser, console_site(access_line.app, ami=server_ami) as site:
        context = await browser.new_context(accept_downloads=True)
        page = await context.new_page()
        page.set_default_timeout(20_000)

        # A supporter finds the first card by its number and locks it.
        await site.log_in(page, "support", then="/cards")
        await page.fill("form#search input[name=q]", locked.number)
        async with page.expect_navigation():
            await page.click("form#search button[type=submit]")
        await page.wait_for_url(f"**/cards/{locked.number}")  # a whole number: its page
        await page.fill("form#lock input[name=reason]", "reported stolen")
        async with page.expect_navigation():
            await page.click("form#lock button[type=submit]")
        assert await page.inner_text("#card-state") == "locked"
        # ... and its log-in on the phone line is refused.
        call = await phone.call("ivr-access")
        caller = Caller(call)
        await caller.answer("enter-card-number", locked.number + "#")
        await caller.answer("enter-pin", locked.pin + "#", timeout=15)
        await caller.wait_prompt("card-locked")
        await call.wait_ended()
        assert "card-locked" in caller.heard

        # A paid call to the UK: live on the page while it is up.
        call = await phone.call("ivr-access", callerid="15550004444")
        caller = Caller(call)
        await caller.log_in(paid)
        await caller.dial("011442079460000")
        await page.goto(f"{site.url}/calls")
        row = page.locator("#live-rows tr[data-channel]", has_text=paid.number)
        await row.wait_for()
        await screenshot(page, "live-calls")
        assert "20 s" in await row.inner_text()  # the grant
        # Its trace, live: the prompts, the keys masked, the grant, then the warning.
        trace_href = await row.locator("a", has_text="Trace").get_attribute("href")
        assert trace_href
        trace = await context.new_page()
        await trace.goto(f"{site.url}{trace_href}")
        await trace.locator("#trace li[data-kind=warning]").first.wait_for(timeout=20_000)
        timeline = await trace.inner_text("#trace")
        for prompt in ("welcome", "enter-card-number", "enter-pin"):
            assert prompt in timeline, timeline
        for secret in (paid.number, paid.pin):
            assert secret not in timeline, timeline
        assert "•" in timeline  # the keys typed, masked
        await trace.close()
        await page.bring_to_front()
        # Hung up from the page by the supporter, before the grant runs out.
        hang_up = row.locator("button", has_text="Hang up")
        await hang_up.hover()  # the rows stop refreshing under the pointer
        async with page.expect_navigation():
            await hang_up.click()
        await call.wait_ended(timeout=20)
        await access_line.server.wait_idle()
        assert not open_reservations(access_line)

        # Ended: in the CDRs, linked to its trace, which says what it cost.
        (cdr,) = [c for c in cdrs(access_line) if c.card_id == paid.card_id]
        assert 4 <= cdr.billable_seconds < 20, cdr.billable_seconds
        assert cdr.cost == Decimal(cdr.billable_seconds) * Decimal("0.02")
        balance, reserved, _ = account_state(access_line, paid.account)
        assert balance == Decimal("0.40") - cdr.cost and reserved == 0
        await page.goto(f"{site.url}/cdrs?card={paid.number}")
        cdr_row = page.locator(f"tr[data-uniqueid='{cdr.uniqueid}']")
        assert paid.number in await cdr_row.inner_text()
        async with page.expect_navigation():
            await cdr_row.locator("a", has_text="trace").click()
        ended = page.locator("#trace li[data-kind=end]")
        await ended.wait_for()  # the page follows the trace until its last steps are in
        assert f"{cdr.cost:.2f}" in await ended.inner_text()
        # The export, filtered by the card: this call, as the CDR has it.
        await page.goto(f"{site.url}/cdrs?card={paid.number}")
        async with page.expect_download() as download:
            await page.click("#export")
        path = await (await download.value).path()
        rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))  # noqa: ASYNC240
        assert [r["uniqueid"] for r in rows] == [cdr.uniqueid], rows
        await context.close()
