"""Fixtures of the flow tests: an application built for each test on its own SQLite file
(no global state), serving the real routes over a FastAGI server on port 0, called by a
scripted caller through the fake Asterisk (ivr.testing.scripted).

The application's modules are imported inside the fixtures, so the other unit tests do
not load them (nor fail to collect when one of them does not import)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ivr.prompts import PromptStore
    from ivr.testing.scripted import Line, LineFactory


@pytest.fixture(scope="session")
def prompt_store(tmp_path_factory: pytest.TempPathFactory) -> PromptStore:
    """The English prompts, built once: the flows only read the store."""
    from ivr.prompts import PromptStore, load_catalogue
    from ivr.prompts.build import build

    path = tmp_path_factory.mktemp("prompts")
    store = PromptStore(path, str(path))
    build(load_catalogue(), store, langs=("en",), progress=False)
    return store


@pytest.fixture
async def make_line(prompt_store: PromptStore,
                    tmp_path: Path) -> AsyncIterator[LineFactory]:
    """Builds applications, each with its own data directory and database file, the test
    rating plan, and a started server; all are shut down and disposed after the test."""
    from ivr.agi import AgiServer
    from ivr.app import App
    from ivr.config import load_settings
    from ivr.prompts import Voice, load_catalogue
    from ivr.testing.access import create_test_plan
    from ivr.testing.scripted import Line

    lines: list[Line] = []

    async def make(name: str = "a", **changes: Any) -> Line:
        settings = load_settings(environ={}).replace(
            data_dir=tmp_path / name, access_languages="en", **changes)
        voice = Voice(load_catalogue(), prompt_store)
        app = await asyncio.to_thread(App.build, settings, voice=voice)
        await asyncio.to_thread(create_test_plan, app.db)
        server = AgiServer(app.routes(), "127.0.0.1", 0)
        await server.start()
        line = Line(app, server)
        lines.append(line)
        return line

    yield make
    for line in lines:
        await line.server.shutdown(grace=1)
        await line.app.close()
        line.app.dispose()


@pytest.fixture
async def line(make_line: LineFactory) -> Line:
    return await make_line()
