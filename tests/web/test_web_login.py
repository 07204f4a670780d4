"""Log-in, roles and CSRF in a real Chromium: a user logs in and out; a wrong password
is refused and repeated failures are throttled; a viewer cannot reach an admin action,
even by posting the form directly; a form posted without its CSRF token is refused; the
audit log shows changes; a dead database gives an error page, not a traceback."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select

from ivr.app import App
from ivr.config import load_settings
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.db.models import AuditEntry, WebSession
from ivr.testing.browser import ConsoleSite, console_site
from ivr.testing.dbfaults import private_postgres
from ivr.web import users

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_log_in_and_out(site: ConsoleSite, page):
    await page.goto(f"{site.url}/audit")
    assert "/login" in page.url  # not logged in: sent to the log-in page
    await site.log_in(page, "admin", then="/audit")
    assert page.url == f"{site.url}/audit"
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["ivr_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert "admin (admin)" in await page.inner_text("header")
    async with page.expect_navigation():
        await page.click("header button[type=submit]")  # log out
    assert "/login" in page.url
    with site.app.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0
    await page.goto(f"{site.url}/audit")
    assert "/login" in page.url


async def test_a_wrong_password_is_refused_then_throttled(site: ConsoleSite, page):
    for _ in range(users.MAX_FAILURES):
        await page.goto(f"{site.url}/login")
        await page.fill("input[name=name]", "admin")
        await page.fill("input[name=password]", "not-the-password")
        await page.click("button[type=submit]")
        await page.wait_for_selector("p.error")
        assert "wrong user name or password" in await page.inner_text("p.error")
    # Now even the right password is refused, from this address, for a while.
    await page.goto(f"{site.url}/login")
    await page.fill("input[name=name]", "admin")
    await page.fill("input[name=password]", site.passwords["admin"])
    await page.click("button[type=submit]")
    await page.wait_for_selector("p.error")
    assert "too many failed log-ins" in await page.inner_text("p.error")


async def _posted(page, url: str, data: dict[str, str]) -> tuple[int, str]:
    """POST a form from the page's own session (its cookies), as a script would."""
    response = await page.request.post(url, form=data, max_redirects=0)
    return response.status, await response.text()


async def test_a_viewer_cannot_post_an_admin_action_nor_a_form_without_csrf(
    site: ConsoleSite, page,
):
    await site.log_in(page, "viewer", then="/audit")
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    assert csrf
    # The viewer posts an admin action directly, with a valid CSRF token: refused.
    status, body = await _posted(page, f"{site.url}/web-users/reset",
                                 {"csrf": csrf, "name": "admin", "reason": "x"})
    assert status == 403, (status, body[:300])
    assert "cannot do this" in body
    await site.log_in(page, "admin", then="/audit")
    # The admin posts a form without its token, or with another one: refused, nothing done.
    for token in ("", "forged"):
        status, body = await _posted(page, f"{site.url}/web-users/reset",
                                     {"csrf": token, "name": "viewer", "reason": "x"})
        assert status == 403, (status, body[:300])
        assert "did not come from this console" in body
    assert users.password_ok(site.app.db, "viewer", site.passwords["viewer"])
    with site.app.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0


async def test_the_admin_resets_a_password_and_the_audit_log_shows_it(site: ConsoleSite, page):
    await site.log_in(page, "admin", then="/web-users")
    await page.goto(f"{site.url}/web-users")
    await page.fill("form#reset input[name=name]", "viewer")
    await page.fill("form#reset input[name=reason]", "forgot it")
    async with page.expect_navigation():
        await page.click("form#reset button[type=submit]")
    shown = await page.inner_text("#new-password")
    assert not users.password_ok(site.app.db, "viewer", site.passwords["viewer"])
    assert users.password_ok(site.app.db, "viewer", shown.strip())
    await page.goto(f"{site.url}/audit")
    row = await page.inner_text("#audit tbody tr:first-child")
    assert "web-user.reset" in row and "viewer" in row and "forgot it" in row
    assert "admin (admin)" in row and "127.0.0.1" in row


@pytest.mark.postgres
async def test_a_dead_database_gives_an_error_page(browser, tmp_path):
    """A PostgreSQL server that stops answering (SIGSTOP): the page says so within the
    database timeout (503, no traceback), and the console works again once it answers."""
    with private_postgres() as server:
        db = Database(server.url)
        await asyncio.to_thread(upgrade, db.engine)
        db.dispose()
        settings = load_settings(environ={}).replace(
            data_dir=tmp_path / "data", database_url=server.url, web_bind="", db_timeout=2)
        app = await asyncio.to_thread(App.build, settings)
        try:
            async with console_site(app) as site:
                context = await browser.new_context()
                page = await context.new_page()
                await site.log_in(page, "admin", then="/audit")
                server.stop_processes()
                try:
                    response = await page.goto(f"{site.url}/audit", timeout=30_000)
                    assert response is not None and response.status == 503
                    text = await page.inner_text("main")
                    assert "database is not answering" in text and "Traceback" not in text
                finally:
                    server.resume_processes()
                response = await page.goto(f"{site.url}/audit", timeout=30_000)
                assert response is not None and response.status == 200
                await context.close()
        finally:
            await app.close()
            app.dispose()


async def test_static_files_are_served_locally(site: ConsoleSite):
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{site.url}/static/htmx-2.0.11.min.js")
    assert r.status_code == 200 and "htmx" in r.text[:200]
