"""Accounts in a real Chromium: an admin credits and debits an account with a reason (the
ledger entries show it, the audit log has the line, the balance is the ledger's sum); a
bad amount is shown next to the field and writes nothing; a viewer's or support's
direct POST of an adjustment is refused; auto-recharge and notice settings are saved
and audited, and refused settings are shown next to their field."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from ivr.db.models import Account, AuditEntry, EntryKind, LedgerEntry
from ivr.testing.access import account_state, new_account
from ivr.testing.browser import ConsoleSite, screenshot

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


def _written(site: ConsoleSite) -> tuple[int, int]:
    """Ledger entries and audit lines in the database."""
    with site.app.db.reading() as s:
        return (s.scalar(select(func.count()).select_from(LedgerEntry)) or 0,
                s.scalar(select(func.count()).select_from(AuditEntry)) or 0)


async def _submit(page, form: str) -> int:
    async with page.expect_navigation() as nav:
        await page.click(f"form#{form} button[type=submit]")
    response = await nav.value
    return response.status if response else 0


async def test_credit_and_debit_an_account_with_a_reason(site: ConsoleSite, page):
    number = await asyncio.to_thread(new_account, site.app.db, Decimal("10"))
    await site.log_in(page, "admin", then="/accounts")
    assert number in await page.inner_text("#accounts")
    await page.fill("form#search input[name=q]", number)
    async with page.expect_navigation():
        await page.click("form#search button[type=submit]")
    assert page.url == f"{site.url}/accounts/{number}"
    assert await page.inner_text("#balance") == "10.0000"

    await page.select_option("form#adjust select[name=direction]", "credit")
    await page.fill("form#adjust input[name=amount]", "2.50")
    await page.fill("form#adjust input[name=reason]", "goodwill: call dropped")
    assert await _submit(page, "adjust") == 200
    assert page.url.endswith(f"/accounts/{number}?done=adjusted")
    assert await page.inner_text("#balance") == "12.5000"
    newest = page.locator("#ledger tbody tr").first
    assert await newest.get_attribute("data-kind") == "adjustment"
    text = await newest.inner_text()
    assert "2.5000" in text and "12.5000" in text and "goodwill: call dropped" in text

    await page.select_option("form#adjust select[name=direction]", "debit")
    await page.fill("form#adjust input[name=amount]", "0.75")
    await page.fill("form#adjust input[name=reason]", "duplicate refund")
    # The same form sent twice (a double click, a resubmitted page): one entry.
    sent = {"csrf": await page.input_value("form#adjust input[name=csrf]"),
            "once": await page.input_value("form#adjust input[name=once]"),
            "direction": "debit", "amount": "0.75", "reason": "duplicate refund"}
    for _ in range(2):
        response = await page.request.post(f"{site.url}/accounts/{number}/adjust",
                                           form=sent, max_redirects=0)
        assert response.status == 303
    await page.reload()
    assert await page.inner_text("#balance") == "11.7500"
    assert "-0.7500" in await page.locator("#ledger tbody tr").first.inner_text()
    await screenshot(page, "account")

    balance, reserved, entries = await asyncio.to_thread(account_state, site.app.db, number)
    assert (balance, reserved) == (Decimal("11.75"), Decimal(0))
    assert [(e.kind, e.amount, e.note) for e in entries[1:]] == [
        (EntryKind.ADJUSTMENT, Decimal("2.50"), "goodwill: call dropped"),
        (EntryKind.ADJUSTMENT, Decimal("-0.75"), "duplicate refund")]

    await page.goto(f"{site.url}/audit")
    rows = page.locator("#audit tbody tr")
    first, second = await rows.nth(0).inner_text(), await rows.nth(1).inner_text()
    assert "account.adjust" in first and number in first and "duplicate refund" in first
    assert "account.adjust" in second and "goodwill: call dropped" in second
    assert "admin (admin)" in second and "2.5" in second

    # Bad amounts: the message next to the field, status 400, nothing written.
    before = _written(site)
    await page.goto(f"{site.url}/accounts/{number}")
    for amount, message in (("1.23456", "more decimals than the account's plan"),
                            ("abc", "not an amount"), ("-3", "give a positive amount"),
                            ("50", "the available balance (11.75 USD) below zero"),
                            ("1e3", "not an amount")):
        await page.select_option("form#adjust select[name=direction]",
                                 "debit" if amount == "50" else "credit")
        await page.fill("form#adjust input[name=amount]", amount)
        await page.fill("form#adjust input[name=reason]", "typo test")
        assert await _submit(page, "adjust") == 400
        error = await page.inner_text("form#adjust em.error[data-field=amount]")
        assert message in error, (amount, error)
        # The form keeps what was typed.
        assert await page.input_value("form#adjust input[name=amount]") == amount
    assert _written(site) == before
    assert await page.inner_text("#balance") == "11.7500"


async def test_only_an_admin_can_post_an_adjustment(site: ConsoleSite, page):
    number = await asyncio.to_thread(new_account, site.app.db, Decimal("10"))
    before = _written(site)
    for role in ("viewer", "support"):
        await site.log_in(page, role, then=f"/accounts/{number}")
        assert await page.inner_text("#balance") == "10.0000"  # they can read it
        assert await page.locator("form#adjust").count() == 0  # and have no form
        csrf = await page.get_attribute("header input[name=csrf]", "value")
        for action in ("adjust", "auto-recharge", "notices"):
            response = await page.request.post(
                f"{site.url}/accounts/{number}/{action}", max_redirects=0, form={
                    "csrf": csrf or "", "direction": "credit", "amount": "100",
                    "threshold": "1", "below": "1", "reason": "free money"})
            assert response.status == 403, (role, action, response.status)
            assert "cannot do this" in await response.text()
    # An admin's post without the session's CSRF token is refused too.
    await site.log_in(page, "admin", then=f"/accounts/{number}")
    response = await page.request.post(
        f"{site.url}/accounts/{number}/adjust", max_redirects=0,
        form={"csrf": "forged", "direction": "credit", "amount": "100", "reason": "x"})
    assert response.status == 403
    assert _written(site) == before
    with site.app.db.reading() as s:
        account = s.scalar(select(Account).where(Account.number == number))
        assert account is not None and account.balance == Decimal("10")
        assert account.auto_recharge_threshold is None and account.low_balance_notice is None


async def test_auto_recharge_and_notice_settings(site: ConsoleSite, page):
    number = await asyncio.to_thread(new_account, site.app.db, Decimal("10"))
    await site.log_in(page, "admin", then=f"/accounts/{number}")
    assert await page.inner_text("#auto-recharge-state") == "Off."

    # A threshold without an amount could never fire: refused next to the amount.
    await page.fill("form#auto-recharge input[name=threshold]", "2")
    await page.fill("form#auto-recharge input[name=reason]", "customer asked")
    assert await _submit(page, "auto-recharge") == 400
    assert "needs both" in await page.inner_text(
        "form#auto-recharge em.error[data-field=amount]")
    await page.fill("form#auto-recharge input[name=amount]", "10")
    await page.fill("form#auto-recharge input[name=daily_cap]", "5")
    assert await _submit(page, "auto-recharge") == 400
    assert "could never fire" in await page.inner_text(
        "form#auto-recharge em.error[data-field=daily_cap]")
    await page.fill("form#auto-recharge input[name=daily_cap]", "x")
    assert await _submit(page, "auto-recharge") == 400
    assert "not an amount" in await page.inner_text(
        "form#auto-recharge em.error[data-field=daily_cap]")
    await page.fill("form#auto-recharge input[name=daily_cap]", "30")
    assert await _submit(page, "auto-recharge") == 200
    state = await page.inner_text("#auto-recharge-state")
    assert "10.0000 USD" in state and "below 2.0000" in state and "30.0000 a day" in state

    await page.fill("form#notices input[name=below]", "1.50")
    await page.fill("form#notices input[name=email]", "not-an-address")
    await page.fill("form#notices input[name=reason]", "customer asked")
    assert await _submit(page, "notices") == 400
    assert "not an e-mail address" in await page.inner_text(
        "form#notices em.error[data-field=email]")
    await page.fill("form#notices input[name=email]", "ana@example.com")
    assert await _submit(page, "notices") == 200
    state = await page.inner_text("#notices-state")
    assert "below 1.5000 USD" in state and "ana@example.com" in state

    with site.app.db.reading() as s:
        account = s.scalar(select(Account).where(Account.number == number))
        lines = list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    assert account is not None
    assert (account.auto_recharge_threshold, account.auto_recharge_amount,
            account.auto_recharge_daily_cap) == (Decimal(2), Decimal(10), Decimal(30))
    assert (account.low_balance_notice, account.email) == (Decimal("1.5"), "ana@example.com")
    assert account.balance == Decimal(10)  # settings move no money
    assert [(x.action, x.target, x.reason) for x in lines] == [
        ("account.auto-recharge", number, "customer asked"),
        ("account.notices", number, "customer asked")]

    # Off again.
    await page.check("form#auto-recharge input[name=off]")
    await page.fill("form#auto-recharge input[name=reason]", "card expired")
    assert await _submit(page, "auto-recharge") == 200
    assert await page.inner_text("#auto-recharge-state") == "Off."
