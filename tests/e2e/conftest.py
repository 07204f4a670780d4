"""Fixtures for real calls: an Asterisk instance, the FastAGI server, AMI and a test phone.

The Asterisk is the project's own (system or sandbox, built when missing), run as a
separate instance named ``test`` on free ports with a random AMI secret, so it never
disturbs an operator's running instance. Nothing here skips: when Asterisk cannot be
brought up the tests error with the reason.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from ivr.agi import AgiServer
from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance, instance_for
from ivr.config import Settings, load_settings
from ivr.flows import ROUTES
from ivr.testing import free_port
from ivr.testing.phone import Phone


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = load_settings(environ={})
    return base.replace(
        data_dir=tmp_path_factory.mktemp("ivr-data"),
        asterisk_instance="test",
        ami_port=free_port(),
        agi_port=free_port(),
        ami_secret=secrets.token_hex(12),
    )


@pytest.fixture(scope="session")
def asterisk(test_settings: Settings) -> Iterator[AsteriskInstance]:
    instance = instance_for(test_settings)
    instance.stop()  # a leftover test instance from an interrupted run
    instance.start(timeout=90)
    yield instance
    instance.stop()


@pytest.fixture
async def agi_server(
    asterisk: AsteriskInstance, test_settings: Settings
) -> AsyncIterator[AgiServer]:
    server = AgiServer(ROUTES, "127.0.0.1", test_settings.agi_port, header_timeout=2)
    await server.start()
    yield server
    await server.shutdown(grace=5)


@pytest.fixture
async def ami(asterisk: AsteriskInstance, test_settings: Settings) -> AsyncIterator[AmiClient]:
    client = AmiClient.from_settings(test_settings)
    await client.connect(timeout=15)
    yield client
    await client.close()


KEYPADS = 8  # AMI connections typing DTMF (see Phone)


@pytest.fixture
async def phone(ami: AmiClient, test_settings: Settings) -> AsyncIterator[Phone]:
    keypads = [AmiClient.from_settings(test_settings) for _ in range(KEYPADS)]
    await asyncio.gather(*(k.connect(timeout=15) for k in keypads))
    p = Phone(ami, keypads=keypads)
    yield p
    p.close()
    await asyncio.gather(*(k.close() for k in keypads))

