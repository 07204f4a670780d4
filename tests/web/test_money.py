"""Payments, vouchers and revaluations in a real Chromium: a voucher batch generated
from the page, its codes downloaded once and redeemable; voiding a voucher; the list's
filters and keyset pages; payments listed (last four digits only) and reconciled from
the page, audited; revaluations with their state history; a viewer's POST refused."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ivr.db.models import (
    Account,
    AuditEntry,
    Customer,
    Payment,
    Revaluation,
    RevaluationEvent,
    Voucher,
    VoucherStatus,
)
from ivr.money import vouchers
from ivr.payments import SANDBOX_APPROVE, CardDetails, TopUpVerdict, pay_with_card
from ivr.testing.access import balance_of, new_card
from ivr.testing.browser import ConsoleSite

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

CARD = CardDetails(SANDBOX_APPROVE, "1230", "913")


def account_id_of(site: ConsoleSite, number: str) -> int:
    with site.app.db.reading() as s:
        found = s.scalar(select(Account.id).where(Account.number == number))
    assert found is not None
    return found


def audit_lines(site: ConsoleSite, action: str) -> list[AuditEntry]:
    with site.app.db.reading() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)
                              .order_by(AuditEntry.id)))


async def submit(page, selector: str) -> None:
    async with page.expect_navigation():
        await page.click(f"{selector} button[type=submit]")


async def test_vouchers_generate_download_once_redeem_and_void(site: ConsoleSite, page):
    db, key = site.app.db, site.app.secret_key
    card = await asyncio.to_thread(new_card, db, Decimal("1"))
    account_id = account_id_of(site, card.account)
    # An older batch of 50, so that the list has two pages.
    with db.transaction() as s:
        vouchers.issue(s, 50, Decimal("1"), "USD", batch="OLD", key=key)

    await site.log_in(page, "admin", then="/vouchers")
    # Bad input: each message next to its field, status 400, nothing issued.
    await page.fill("#generate input[name=count]", "lots")
    await page.fill("#generate input[name=value]", "2.123456")
    await page.fill("#generate input[name=reason]", "spring promotion")
    async with page.expect_navigation() as nav:
        await page.click("#generate button[type=submit]")
    assert (await nav.value).status == 400
    assert "whole number" in await page.inner_text("#generate em[data-field=count]")
    await page.fill("#generate input[name=count]", "3")
    await submit(page, "#generate")  # 2.123456 is finer than the USD plans' 4 decimals
    assert "more decimals" in await page.inner_text("#generate em[data-field=value]")
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Voucher)) == 50

    await page.fill("#generate input[name=value]", "2.50")
    await page.fill("#generate input[name=expires]", "2099-12-31")
    await page.fill("#generate input[name=batch]", "SPRING")
    await submit(page, "#generate")
    assert await page.get_attribute("#issued", "data-batch") == "SPRING"
    async with page.expect_download() as info:
        await page.click("#codes-link")
    download = await info.value
    assert download.suggested_filename == "vouchers-SPRING.csv"
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["value"], r["currency"], r["expires_on"], r["batch"]) for r in rows] == [
        ("2.50", "USD", "2099-12-31", "SPRING")] * 3
    codes = [r["code"] for r in rows]
    # Given once: the same link again is gone.
    link = await page.get_attribute("#codes-link", "href")
    again = await page.request.get(f"{site.url}{link}")
    assert again.status == 410

    # A code from the file redeems, once.
    done = await asyncio.to_thread(vouchers.redeem, db, codes[0], account_id=account_id,
                                   key=key)
    assert (done.verdict, done.amount) == (vouchers.RedeemVerdict.OK, Decimal("2.50"))
    assert balance_of(db, account_id) == Decimal("3.50")

    # The list: newest first, last four digits only, redeemed by whom.
    await page.goto(f"{site.url}/vouchers?batch=SPRING")
    listed = page.locator("#vouchers tbody tr")
    assert await listed.count() == 3
    redeemed = page.locator(f"#vouchers tr[data-last4='{codes[0][-4:]}']")
    assert await redeemed.get_attribute("data-status") == "redeemed"
    assert card.account in await redeemed.inner_text()
    html = await page.content()
    assert not any(code in html for code in codes)
    await page.goto(f"{site.url}/vouchers?status=redeemed")
    assert await page.locator("#vouchers tbody tr[data-voucher]").count() == 1
    await page.goto(f"{site.url}/vouchers?account={card.account}")
    assert await page.locator("#vouchers tbody tr[data-voucher]").count() == 1
    response = await page.goto(f"{site.url}/vouchers?account=404&from=yesterday")
    assert response is not None and response.status == 400
    assert await page.locator("em[data-field=from]").count() == 1
    # Keyset pages of 50: 53 vouchers are 50, then 3.
    await page.goto(f"{site.url}/vouchers")
    assert await page.locator("#vouchers tbody tr[data-voucher]").count() == 50
    await page.click("#older")
    await page.wait_for_url("**/vouchers?before=*")
    assert await page.locator("#vouchers tbody tr[data-voucher]").count() == 3

    # Void an unused one, with a reason.
    await page.goto(f"{site.url}/vouchers?batch=SPRING")
    row = f"#vouchers tr[data-last4='{codes[1][-4:]}']"
    await page.fill(f"{row} input[name=reason]", "printed twice")
    await submit(page, f"{row} form.void")
    assert "void" in await page.inner_text("#voided")
    assert await page.get_attribute(row, "data-status") == "void"
    assert await page.locator("#vouchers tbody tr[data-voucher]").count() == 3  # filter kept
    assert (await asyncio.to_thread(vouchers.redeem, db, codes[1], account_id=account_id,
                                    key=key)).verdict is vouchers.RedeemVerdict.VOID

    # Audited, without a code.
    [generated] = audit_lines(site, "vouchers.generate")
    assert (generated.target, generated.reason, generated.user) == (
        "SPRING", "spring promotion", "admin")
    assert json.loads(generated.detail)["count"] == 3
    [voided] = audit_lines(site, "vouchers.void")
    assert voided.reason == "printed twice" and codes[1][-4:] in voided.detail
    with db.reading() as s:
        everything = " ".join(f"{a.target} {a.detail} {a.reason}"
                              for a in s.scalars(select(AuditEntry)))
    assert not any(code in everything for code in codes)

    # A viewer sees no form and cannot post one.
    await site.log_in(page, "viewer", then="/vouchers")
    assert await page.locator("#generate").count() == 0
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    for url, data in (("/vouchers/generate", {"count": "1", "value": "1", "currency": "USD",
                                              "reason": "x"}),
                      (f"/vouchers/{generated.id}/void", {"reason": "x"}),
                      ("/payments/reconcile", {"reason": "x"})):
        response = await page.request.post(f"{site.url}{url}", form={"csrf": csrf, **data},
                                           max_redirects=0)
        assert response.status == 403, (url, response.status)
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Voucher)) == 53
        assert s.scalar(select(func.count()).select_from(Voucher).where(
            Voucher.status == VoucherStatus.VOID)) == 1


async def test_payments_listed_and_reconciled_and_revaluations(site: ConsoleSite, page):
    db, gateway = site.app.db, site.app.gateway
    card = await asyncio.to_thread(new_card, db, Decimal("2"))
    account_id = account_id_of(site, card.account)
    paid = await pay_with_card(db, gateway, account_id, CARD, Decimal("5"),
                               payment_id="pay-web-1")
    assert paid.verdict is TopUpVerdict.APPROVED
    # Left pending by a process that died after the gateway charged it, and one the
    # gateway never saw: reconciliation credits the first and closes the second.
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    charged = await gateway.charge_card(CARD, Decimal("10"), "USD", "pay-died")
    assert charged.status.value == "approved"
    with db.transaction() as s:
        for payment_id in ("pay-died", "pay-lost"):
            s.add(Payment(payment_id=payment_id, account_id=account_id, source="card",
                          amount=Decimal("10"), currency="USD", status="pending",
                          last4="1111", created_at=long_ago))

    await site.log_in(page, "admin", then="/payments")
    rows = page.locator("#payments tbody tr[data-payment]")
    assert [await r.get_attribute("data-payment") for r in await rows.all()] == [
        "pay-lost", "pay-died", "pay-web-1"]
    first = await page.inner_text("#payments tr[data-payment=pay-web-1]")
    assert "...1111" in first and "approved" in first and "5.0000" in first
    assert card.account in first
    html = await page.content()
    assert SANDBOX_APPROVE not in html and "sbx_" not in html  # no card number, no token
    await page.goto(f"{site.url}/payments?status=pending")
    assert await rows.count() == 2
    await page.goto(f"{site.url}/payments?status=approved&account={card.account}")
    assert await rows.count() == 1
    response = await page.goto(f"{site.url}/payments?account=404")
    assert response is not None and response.status == 400
    assert "no account 404" in await page.inner_text("em[data-field=account]")

    # Without a reason: refused, nothing settled.
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    response = await page.request.post(f"{site.url}/payments/reconcile",
                                       form={"csrf": csrf, "reason": " "}, max_redirects=0)
    assert response.status == 400
    assert balance_of(db, account_id) == Decimal("7")

    await page.goto(f"{site.url}/payments")
    await page.fill("#reconcile input[name=reason]", "gateway outage this morning")
    await submit(page, "#reconcile")
    settled = {await r.get_attribute("data-payment"): await r.inner_text()
               for r in await page.locator("#settled tr[data-payment]").all()}
    assert set(settled) == {"pay-died", "pay-lost"}
    assert "approved" in settled["pay-died"] and "17.0000" in settled["pay-died"]
    assert "declined" in settled["pay-lost"]
    assert balance_of(db, account_id) == Decimal("17")
    assert await page.get_attribute("#payments tr[data-payment=pay-died]",
                                    "data-status") == "approved"
    [line] = audit_lines(site, "payments.reconcile")
    assert line.reason == "gateway outage this morning" and line.user == "admin"
    assert [(p["payment_id"], p["verdict"]) for p in json.loads(line.detail)["settled"]] == [
        ("pay-died", "approved"), ("pay-lost", "declined")]
    # Run again: nothing left, said so.
    await page.fill("#reconcile input[name=reason]", "again")
    await submit(page, "#reconcile")
    assert "no payment was left" in await page.inner_text("#settled")
    assert balance_of(db, account_id) == Decimal("17")

    # Revaluations: the list (as `ivr revaluations list` shows them) and one's history.
    now = datetime.now(UTC)
    with db.transaction() as s:
        customer = Customer(msisdn="+447700900123", code_hash="-", account_id=account_id,
                            created_at=now)
        s.add(customer)
        s.flush()
        for n, state in enumerate(("completed", "declined")):
            rev = Revaluation(request_id=f"rv-{n}", customer_id=customer.id,
                              msisdn="447700900123", operator="acme", mode="direct",
                              amount=Decimal("5"), currency="USD", account_id=account_id,
                              pay="account", state=state, reason="" if n == 0 else "refused",
                              created_at=now, updated_at=now)
            s.add(rev)
            s.flush()
            for step, note in (("held", "5.00 held"), (state, "operator answered")):
                s.add(RevaluationEvent(revaluation_id=rev.id, at=now, state=step, note=note))
    await page.goto(f"{site.url}/revaluations")
    listed = page.locator("#revaluations tbody tr[data-revaluation]")
    assert [await r.get_attribute("data-state") for r in await listed.all()] == [
        "declined", "completed"]
    await page.goto(f"{site.url}/revaluations?status=completed")
    assert await listed.count() == 1
    text = await listed.first.inner_text()
    assert "447700900123" in text and "acme" in text and "direct" in text
    await page.click("#revaluations a")
    await page.wait_for_url("**/revaluations/*")
    assert [await e.get_attribute("data-state")
            for e in await page.locator("#events li").all()] == ["held", "completed"]
    assert "rv-0" in await page.inner_text("#revaluation")
    response = await page.goto(f"{site.url}/revaluations/999999")
    assert response is not None and response.status == 404
