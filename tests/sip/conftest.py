"""Fixtures for the real-phone layer: the project's Asterisk speaking SIP, and baresip
user agents that call it over loopback with RTP audio and RFC 4733 DTMF.

The Asterisk instance is this session's own (``test-<pid>-sip``, so it never meets the
Local-channel layer's ``test-<pid>`` in the same worker), on free AMI/AGI/SIP ports and
an RTP range of its own, with the tests' SIP trunk rendered (``test_trunk``: requests
from 127.0.0.1 land in the inbound context). The other fixtures (the prompt store, the
access line as `ivr serve` wires it, the AMI clients) are the Local-channel layer's own,
loaded from tests/e2e/conftest.py so the two layers cannot drift apart.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance, instance_for
from ivr.config import Settings, load_settings
from ivr.testing import free_port
from ivr.testing.phone import Call, split_agi_command
from ivr.testing.sipua import SipUA


def _load_e2e_fixtures():
    path = Path(__file__).resolve().parent.parent / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("ivr_e2e_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_e2e = _load_e2e_fixtures()
# Re-exported: pytest finds fixtures by name in this module.
ami = _e2e.ami
server_ami = _e2e.server_ami
instance_prompts = _e2e.instance_prompts
instance_voice = _e2e.instance_voice
access_line = _e2e.access_line
agi_server = _e2e.agi_server


def rtp_range(size: int = 200) -> tuple[int, int]:
    """An even-aligned RTP port range for this session, away from the usual 10000-20000."""
    start = random.randrange(30000, 60000 - 2 * size, 2)
    return start, start + size - 1


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = load_settings(environ={})
    start, end = rtp_range()
    return base.replace(
        data_dir=tmp_path_factory.mktemp("ivr-sip-data"),
        asterisk_instance=f"test-{os.getpid()}-sip",
        ami_port=free_port(),
        agi_port=free_port(),
        ami_secret=secrets.token_hex(12),
        sip_bind=f"127.0.0.1:{free_port()}",
        rtp_start=start,
        rtp_end=end,
    )


@pytest.fixture(scope="session")
def asterisk(test_settings: Settings) -> Iterator[AsteriskInstance]:
    instance = instance_for(test_settings)
    instance.harness_secret = secrets.token_hex(12)
    instance.test_trunk = True
    _e2e.stop_abandoned_test_instances(instance)
    instance.start(timeout=90)
    yield instance
    instance.stop()
    shutil.rmtree(instance.host(instance.base), ignore_errors=True)


@pytest.fixture(scope="session")
def sip_port(test_settings: Settings) -> int:
    return int(test_settings.sip_bind.rpartition(":")[2])


@pytest.fixture
async def user_agent(
    tmp_path: Path, test_settings: Settings, asterisk: AsteriskInstance
) -> AsyncIterator[SipUA]:
    """A baresip UA (the caller) with a 440 Hz tone as its microphone; RTP ports just
    above the instance's range."""
    first = test_settings.rtp_end + 1
    ua = SipUA(tmp_path / "ua", rtp_ports=(first, first + 199))
    await ua.start()
    yield ua
    await ua.stop()


@dataclass
class SipCall(Call):
    """An inbound SIP call as the AGI server drives it (followed over AMI like the
    Local-channel phone's calls), whose keys are typed by a real UA."""

    ua: SipUA | None = None

    async def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 80) -> None:
        assert self.ua is not None
        await self.ua.send_dtmf(digits)

    async def hangup(self) -> None:
        assert self.ua is not None
        if not self.ended.is_set():
            await self.ua.hangup()


@dataclass
class SipCalls:
    """Follows the PJSIP channels the test trunk's calls create: the AGI commands each
    runs (AGIExecStart), and its hang-up."""

    ami: AmiClient
    calls: list[SipCall] = field(default_factory=list)
    by_id: dict[str, SipCall] = field(default_factory=dict)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: Mapping[str, str]) -> None:
        name = event.get("Event", "")
        uniqueid = event.get("Uniqueid", "")
        call = self.by_id.get(uniqueid)
        if name == "Newchannel" and event.get("Channel", "").startswith("PJSIP/"):
            call = SipCall(phone=None, id=uniqueid, handset_id="",  # type: ignore[arg-type]
                           channel=event.get("Channel", ""))
            self.by_id[uniqueid] = call
            self.calls.append(call)
            self._new.set()
        if call is None:
            return
        if name == "AGIExecStart":
            call.commands.append(split_agi_command(event.get("Command", "")))
        elif name == "Newexten":
            call.applications.append((event.get("Application", ""), event.get("AppData", "")))
        elif name == "Hangup":
            call.hangup_cause = event.get("Cause-txt", "") or event.get("Cause", "")
            call.ended.set()
        asyncio.ensure_future(call._notify())

    async def next_call(self, ua: SipUA, timeout: float = 10) -> SipCall:
        """The first call not yet claimed, given to ``ua`` to type its keys."""
        async def wait() -> SipCall:
            while True:
                for call in self.calls:
                    if call.ua is None:
                        call.ua = ua
                        return call
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def sip_calls(ami: AmiClient) -> AsyncIterator[SipCalls]:
    calls = SipCalls(ami)
    unsubscribe = ami.on_event("*", calls.on_event)
    yield calls
    unsubscribe()
