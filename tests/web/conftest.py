"""The web console in a real headless Chromium (marker ``web``, added to every test
here): the console of a fresh application on SQLite and on PostgreSQL (``site``), with a
user of each role, and a browser page (``page``). Nothing here skips: a missing Chromium
or PostgreSQL fails the test with the reason.

One Chromium serves a whole test session (a pytest-xdist worker): starting it takes 1-2 s,
more than most tests here. So these tests and their fixtures run in the session's event
loop (each module has ``pytestmark = pytest.mark.asyncio(loop_scope="session")``), and
each test gets a fresh browser context (its own cookies, storage and downloads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from ivr.app import App
from ivr.config import Settings, load_settings
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.testing.access import create_test_plan
from ivr.testing.browser import ConsoleSite, chromium, console_site
from ivr.testing.postgres import fresh_postgres_database


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.web)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the current schema: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ivr.sqlite3'}"
        return
    with fresh_postgres_database() as url:
        db = Database(url)
        upgrade(db.engine)
        db.dispose()
        yield url


@pytest.fixture
def web_settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(environ={}).replace(
        data_dir=tmp_path / "data", database_url=database_url, web_bind="")


@pytest_asyncio.fixture(loop_scope="session")
async def app(web_settings: Settings) -> AsyncIterator[App]:
    """An application with the test plan (retail, USD: 1 -> 0.60/min, 44 -> 1.20/min)."""
    app = await asyncio.to_thread(App.build, web_settings)
    await asyncio.to_thread(create_test_plan, app.db)
    yield app
    await app.close()
    app.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def site(app: App) -> AsyncIterator[ConsoleSite]:
    async with console_site(app) as served:
        yield served


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def browser():
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser):
    context = await browser.new_context(accept_downloads=True)
    p = await context.new_page()
    p.set_default_timeout(15_000)
    yield p
    await context.close()
