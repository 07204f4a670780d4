"""Fixtures for real calls: an Asterisk instance, the FastAGI server, AMI and a test phone.

The Asterisk is the project's own (system or sandbox, built when missing), run as a
separate instance named ``test`` on free ports with a random AMI secret, so it never
disturbs an operator's running instance. Nothing here skips: when Asterisk cannot be
brought up the tests error with the reason.

Two AMI users, as in production: the server's (``server_ami``, the call controller; only
the classes it needs) and the test phone's own (``ami``, the harness: it places calls,
types keys and records, which needs more).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ivr.agi import AgiServer
from ivr.ami import AmiClient
from ivr.app import App
from ivr.asterisk import AsteriskInstance, instance_for
from ivr.config import Settings, load_settings
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.prompts import PromptStore, Voice, load_catalogue
from ivr.prompts.build import build
from ivr.service import SERVER_AMI_EVENTS
from ivr.testing import free_port
from ivr.testing.access import AccessLine, create_test_plan
from ivr.testing.phone import Phone, harness_ami
from ivr.testing.postgres import fresh_postgres_database


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = load_settings(environ={})
    return base.replace(
        data_dir=tmp_path_factory.mktemp("ivr-data"),
        # One instance per test session: two sessions on one machine (a developer's and
        # a helper's) never stop each other's Asterisk.
        asterisk_instance=f"test-{os.getpid()}",
        ami_port=free_port(),
        agi_port=free_port(),
        ami_secret=secrets.token_hex(12),
        # Its own SIP port: never 5060, an operator's instance's (or another session's).
        sip_bind=f"127.0.0.1:{free_port()}",
    )


@pytest.fixture(scope="session")
def asterisk(test_settings: Settings) -> Iterator[AsteriskInstance]:
    instance = instance_for(test_settings)
    instance.harness_secret = secrets.token_hex(12)
    stop_abandoned_test_instances(instance)
    instance.start(timeout=90)
    yield instance
    instance.stop()
    shutil.rmtree(instance.host(instance.base), ignore_errors=True)


def stop_abandoned_test_instances(current: AsteriskInstance) -> None:
    """Stop and remove test instances whose pytest process is gone (an interrupted run)."""
    parent = current.host(current.base).parent
    for path in parent.glob("test-*"):
        pid = path.name.split("-")[1]  # test-<pid> or test-<pid>-<what>
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        old = AsteriskInstance(current.settings.replace(asterisk_instance=path.name),
                               current.install)
        old.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def agi_server(
    asterisk: AsteriskInstance, test_settings: Settings, instance_voice: Voice,
    tmp_path: Path,
) -> AsyncIterator[AgiServer]:
    """Every route, served by an application of its own (no AMI, a fresh database)."""
    settings = test_settings.replace(database_url=f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    app = await asyncio.to_thread(App.build, settings, voice=instance_voice)
    server = AgiServer(app.routes(), "127.0.0.1", test_settings.agi_port, header_timeout=2)
    await server.start()
    yield server
    await server.shutdown(grace=5)
    await app.close()
    app.dispose()


@pytest.fixture
async def ami(asterisk: AsteriskInstance) -> AsyncIterator[AmiClient]:
    """The test harness's AMI user (the phone's): all events, calls, keys, recording."""
    client = harness_ami(asterisk)
    await client.connect(timeout=15)
    yield client
    await client.close()


@pytest.fixture
async def server_ami(
    asterisk: AsteriskInstance, test_settings: Settings
) -> AsyncIterator[AmiClient]:
    """The server's AMI user, with the server's event filter, as `ivr serve` logs in."""
    client = AmiClient.from_settings(test_settings, events=SERVER_AMI_EVENTS)
    await client.connect(timeout=15)
    yield client
    await client.close()


KEYPADS = 8  # AMI connections typing DTMF (see Phone)


@pytest.fixture
async def phone(ami: AmiClient, asterisk: AsteriskInstance) -> AsyncIterator[Phone]:
    keypads = [harness_ami(asterisk) for _ in range(KEYPADS)]
    await asyncio.gather(*(k.connect(timeout=15) for k in keypads))
    p = Phone(ami, keypads=keypads)
    yield p
    p.close()
    await asyncio.gather(*(k.close() for k in keypads))



@pytest.fixture(scope="session")
def instance_prompts(asterisk: AsteriskInstance) -> PromptStore:
    """The test instance's prompt store, complete: copied from the operator's store when
    `ivr prompts build` made one (set-up does), then brought up to date offline."""
    store = PromptStore.for_instance(asterisk)
    main = PromptStore.for_instance(AsteriskInstance(
        asterisk.settings.replace(asterisk_instance="main"), asterisk.install))
    if main.host_dir.is_dir() and not store.host_dir.exists():
        shutil.copytree(main.host_dir, store.host_dir, symlinks=True)
    catalogue = load_catalogue()
    build(catalogue, store, progress=False)
    assert not store.missing(catalogue)
    return store


@pytest.fixture(scope="session")
def instance_voice(instance_prompts: PromptStore) -> Voice:
    """What the flows of the test instance speak with."""
    return Voice(load_catalogue(), instance_prompts)


@pytest.fixture
async def access_line(
    asterisk: AsteriskInstance, test_settings: Settings, instance_voice: Voice,
    server_ami: AmiClient, tmp_path: Path, request: pytest.FixtureRequest,
) -> AsyncIterator[AccessLine]:
    overrides = dict(getattr(request, "param", {}))
    with contextlib.ExitStack() as stack:
        if overrides.pop("database", "sqlite") == "postgres":
            url = stack.enter_context(fresh_postgres_database())
        else:
            url = f"sqlite:///{tmp_path / 'ivr.sqlite3'}"
        async for line in _access_line(test_settings, server_ami, url, overrides,
                                       instance_voice):
            yield line


async def _access_line(
    test_settings: Settings, ami: AmiClient, url: str, overrides: dict[str, object],
    voice: Voice,
) -> AsyncIterator[AccessLine]:
    settings = test_settings.replace(**{
        "database_url": url,
        "dial_timeout": 4,
        "access_languages": "en",  # the language menu has its own test
        **overrides,
    })
    if not url.startswith("sqlite"):  # PostgreSQL is migrated by `ivr db upgrade`
        fresh = Database(url)
        await asyncio.to_thread(upgrade, fresh.engine)
        fresh.dispose()
    app = await asyncio.to_thread(App.build, settings, voice=voice)
    create_test_plan(app.db)
    controller = app.add_asterisk(ami)
    server = AgiServer(app.routes(), "127.0.0.1", settings.agi_port, header_timeout=2)
    await server.start()
    yield AccessLine(settings, app.db, app.ledger, controller, server, app)
    await server.shutdown(grace=5)
    await app.close()
    app.dispose()
