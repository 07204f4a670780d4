"""A real headless Chromium for the console's tests (marker ``web``), driven by
Playwright's async API, and the console served for it.

Playwright's own browser download is not used (and cannot be here): the browser is
Debian's ``chromium`` package, started by path. Its background networking (updates,
safe browsing, sync) is switched off: the tests talk to loopback only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..web import users
from ..web.users import Role

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

    from ..ami import AmiClient
    from ..app import App
    from ..revalue.callbacks import LoopbackServer

CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium_path() -> str:
    """Debian's Chromium (``IVR_CHROMIUM`` overrides); RuntimeError naming the package
    when it is missing (scripts/setup installs it as root)."""
    path = os.environ.get("IVR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise RuntimeError("no Chromium: install Debian's `chromium` package "
                           "(bash scripts/setup test does, as root)")
    return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium with its own empty profile, closed afterwards."""
    from playwright.async_api import async_playwright

    # Playwright gives each launch a new empty profile of its own (a temporary
    # directory); the downloads go to another, removed with it.
    with tempfile.TemporaryDirectory(prefix="ivr-chromium-") as downloads:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=chromium_path(), headless=True, args=list(CHROMIUM_ARGS),
                downloads_path=downloads)
            try:
                yield browser
            finally:
                await browser.close()


@dataclass
class ConsoleSite:
    """The console of one application, served on a free loopback port, with a user of
    each role (name = role, password kept here for the tests)."""

    app: App
    server: LoopbackServer
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    async def log_in(self, page: Page, role: Role | str = Role.ADMIN,
                     then: str = "/") -> None:
        """Log ``page`` in as the user of ``role`` through the log-in form, landing on
        ``then``."""
        name = Role(role).value
        await page.goto(f"{self.url}/login?next={then}")
        await page.fill("input[name=name]", name)
        await page.fill("input[name=password]", self.passwords[name])
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        if "/login" in page.url:
            raise AssertionError(f"log-in as {name} failed: {await page.inner_text('main')}")


@asynccontextmanager
async def console_site(app: App, ami: AmiClient | None = None) -> AsyncIterator[ConsoleSite]:
    """Serve ``app``'s console on 127.0.0.1:<free port>, with users admin, support and
    viewer; stopped afterwards."""
    import asyncio

    from ..revalue.callbacks import LoopbackServer
    from ..web import create_app

    passwords = {}
    for role in Role:
        passwords[role.value] = await asyncio.to_thread(users.add_user, app.db, role.value,
                                                        role)
    server = LoopbackServer(create_app(app, ami=ami), "127.0.0.1", 0, name="web console")
    await server.start()
    try:
        yield ConsoleSite(app, server, passwords)
    finally:
        await server.stop()


def screenshot_dir() -> Path | None:
    """Where the tests save the screenshots shown in the docs (``IVR_SCREENSHOTS``, e.g.
    docs/screenshots); None: not saved."""
    where = os.environ.get("IVR_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


async def screenshot(page: Page, name: str) -> None:
    """Save the page as ``<IVR_SCREENSHOTS>/<name>.png`` when that is set."""
    where = screenshot_dir()
    if where is not None:
        await page.screenshot(path=str(where / f"{name}.png"), full_page=True)
