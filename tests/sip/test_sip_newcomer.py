"""The newcomer's path (issue 12): `ivr run` on an empty data directory prints a ready
softphone account and a demo card; a real SIP phone (baresip) registers with nothing but
what was printed, calls the access number, logs in with the printed card, calls the
printed destination on the sandbox test carrier, and the call is charged exactly.

`ivr run` runs as a subprocess, as a newcomer starts it, on an Asterisk instance of its
own (``test-<pid>-newcomer``: the session's SIP instance is rendered with the tests' trunk
and AMI user, which `ivr run` would render away), on free ports and an empty SQLite
database. The test follows the call over AMI with the harness user, added to the
instance's manager.conf once `ivr run` has brought it up (an observer only: it reads the
AGI commands to know when a prompt is waiting for keys).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance, instance_for
from ivr.asterisk.instance import HARNESS_AMI_USER, HARNESS_SECTION, write_private
from ivr.config import Settings, load_settings
from ivr.db import Database
from ivr.db.models import Account, EntryKind
from ivr.prompts import PromptStore
from ivr.testing import free_port, wait_listening
from ivr.testing.access import Caller, CardInHand, account_state, cdrs, open_reservations
from ivr.testing.phone import Call, split_agi_command
from ivr.testing.sipua import SipUA

pytestmark = pytest.mark.sip

PHONE_HOST = "127.0.0.2"  # a phone's address: not 127.0.0.1 (no test trunk here anyway)
START_TIMEOUT = 240  # seconds for `ivr run` to bring Asterisk up and print the demo


@pytest.fixture
def newcomer_settings(tmp_path: Path) -> Settings:
    start = random.randrange(30000, 59000, 2)
    return load_settings(environ={}).replace(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'ivr.sqlite3'}",
        asterisk_instance=f"test-{os.getpid()}-newcomer",
        ami_port=free_port(),
        agi_port=free_port(),
        ami_secret=secrets.token_hex(12),
        sip_bind=f"127.0.0.1:{free_port()}",
        rtp_start=start,
        rtp_end=start + 199,
    )


@pytest.fixture
def newcomer_instance(newcomer_settings: Settings) -> Iterator[AsteriskInstance]:
    """The instance `ivr run` will start, its prompts copied from the operator's store
    when set-up built one (else `ivr run` speaks them, slower); stopped and removed at
    the end whatever happened."""
    instance = instance_for(newcomer_settings)
    store = PromptStore.for_instance(instance)
    main = PromptStore.for_instance(AsteriskInstance(
        newcomer_settings.replace(asterisk_instance="main"), instance.install))
    if main.host_dir.is_dir() and not store.host_dir.exists():
        shutil.copytree(main.host_dir, store.host_dir, symlinks=True)
    yield instance
    instance.stop()
    shutil.rmtree(instance.host(instance.base), ignore_errors=True)


class IvrRun:
    """`ivr run` in a subprocess with the settings as IVR_* variables, in a directory
    with no ivr.toml, its stdout read line by line."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    def env(self) -> dict[str, str]:
        s = self.settings
        return dict(
            os.environ,
            XDG_CONFIG_HOME=str(self.workdir / "config"),
            IVR_DATA_DIR=str(s.data_dir),
            IVR_DATABASE_URL=s.database_url,
            IVR_AGI_PORT=str(s.agi_port),
            IVR_AMI_PORT=str(s.ami_port),
            IVR_AMI_SECRET=s.ami_secret,
            IVR_ASTERISK_INSTANCE=s.asterisk_instance,
            IVR_ASTERISK_SANDBOX_DIR=str(s.asterisk_sandbox_dir),
            IVR_SIP_BIND=s.sip_bind,
            IVR_RTP_START=str(s.rtp_start),
            IVR_RTP_END=str(s.rtp_end),
            IVR_ACCESS_LANGUAGES="en",  # no language menu: straight to the card number
            IVR_WEB_BIND="127.0.0.1:0",  # the console on a free port (printed)
        )

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        err = (self.workdir / "stderr.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ivr.cli", "run", cwd=self.workdir, env=self.env(),
            stdout=asyncio.subprocess.PIPE, stderr=err)
        err.close()

    async def read_until(self, marker: str, timeout: float) -> str:
        """Lines printed until one holds ``marker``; all of stdout so far."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.lines):
            left = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raise AssertionError(f"no {marker!r} in {timeout}s:\n{self.output()}") from None
            if not raw:
                raise AssertionError(f"`ivr run` exited ({await self.proc.wait()}):\n"
                                     f"{self.output()}")
            self.lines.append(raw.decode())
        return "".join(self.lines)

    def output(self) -> str:
        err = self.workdir / "stderr.log"
        return "".join(self.lines) + "\n--- stderr:\n" + (
            err.read_text(errors="replace")[-4000:] if err.exists() else "")

    async def wait_listening(self, timeout: float = 30) -> None:
        if not await wait_listening(self.settings.agi_port, timeout):
            raise AssertionError(f"the FastAGI server did not listen:\n{self.output()}")

    async def stop(self) -> int | None:
        """SIGTERM, as Ctrl-C or a service manager stops it; kill if it hangs."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"`ivr run` ignored SIGTERM:\n{self.output()}") from None
        assert self.proc.stdout is not None
        rest = await self.proc.stdout.read()
        self.lines.extend(line.decode() for line in rest.splitlines(True))
        return self.proc.returncode


@dataclass(frozen=True)
class Printed:
    domain: str
    user: str
    password: str
    access: str
    card: str
    pin: str
    destination: str


def parse_demo(text: str) -> Printed:
    """What a newcomer reads off the screen."""
    def find(pattern: str) -> str:
        match = re.search(pattern, text)
        assert match, f"{pattern!r} not in:\n{text}"
        return match.group(1)

    return Printed(
        domain=find(r"domain\s+(\S+)"), user=find(r"user\s+(\S+)"),
        password=find(r"password\s+(\S+)"), access=find(r"dial (\d+) for the access line"),
        card=find(r"number (\d+), PIN"), pin=find(r"PIN (\d+)"),
        destination=find(r"then (\d+) #"))


async def log_in_to_the_console(run: IvrRun, text: str) -> None:
    """The web console `ivr run` serves answers on the address it printed, and the first
    admin's printed password logs in (through the log-in form, its CSRF token and all)."""
    password = re.search(r"web console log-in .*user admin, password (\S+)", text)
    assert password, text
    shown = await run.read_until("web console on", 30)
    url = re.search(r"web console on (http://127\.0\.0\.1:\d+)/", shown)
    assert url, shown
    async with httpx.AsyncClient(base_url=url.group(1)) as client:
        form = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert form.status_code == 200 and csrf
        done = await client.post("/login", data={
            "csrf": csrf.group(1), "name": "admin", "password": password.group(1),
            "next": "/audit"})
        assert done.status_code == 303 and done.headers["location"] == "/audit", done.text
        audit = await client.get("/audit")
        assert audit.status_code == 200 and "Audit log" in audit.text


def add_observer(instance: AsteriskInstance) -> AmiClient:
    """The harness's AMI user in the running instance's manager.conf (read-only use
    here: AGI and call events), applied with a manager reload."""
    secret = secrets.token_hex(12)
    path = instance.host(instance.etc_dir) / "manager.conf"
    write_private(path, path.read_text() + HARNESS_SECTION.format(user=HARNESS_AMI_USER,
                                                                  secret=secret))
    instance.cli("manager reload")
    s = instance.settings
    return AmiClient(s.ami_host, s.ami_port, HARNESS_AMI_USER, secret)


@dataclass
class PhoneCall(Call):
    """The softphone's call as Asterisk runs it, its keys typed by the UA."""

    ua: SipUA | None = None
    answered: asyncio.Event | None = None

    async def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 80) -> None:
        assert self.ua is not None
        await self.ua.send_dtmf(digits)


def follow(ami: AmiClient, ua: SipUA, channel_prefix: str) -> list[PhoneCall]:
    """The calls whose channel starts with ``channel_prefix``, filled from AMI events."""
    calls: list[PhoneCall] = []

    def on_event(event: Mapping[str, str]) -> None:
        name = event.get("Event", "")
        uniqueid = event.get("Uniqueid", "")
        if name == "Newchannel" and event.get("Channel", "").startswith(channel_prefix):
            calls.append(PhoneCall(phone=None, id=uniqueid, handset_id="",  # type: ignore[arg-type]
                                   channel=event.get("Channel", ""), ua=ua,
                                   answered=asyncio.Event()))
        call = next((c for c in calls if c.id == uniqueid), None)
        if call is None:
            return
        if name == "AGIExecStart":
            call.commands.append(split_agi_command(event.get("Command", "")))
        elif name == "DialEnd" and event.get("DialStatus") == "ANSWER":
            assert call.answered is not None
            call.answered.set()
        elif name == "Hangup":
            call.hangup_cause = event.get("Cause-txt", "") or event.get("Cause", "")
            call.ended.set()
        asyncio.ensure_future(call._notify())

    ami.on_event("*", on_event)
    return calls


async def test_ivr_run_prints_an_account_and_a_card_that_a_softphone_calls_with(
    newcomer_settings: Settings, newcomer_instance: AsteriskInstance, tmp_path: Path,
):
    run = IvrRun(newcomer_settings, tmp_path / "run")
    ami: AmiClient | None = None
    ua: SipUA | None = None
    try:
        await run.start()
        text = await run.read_until("--no-demo", START_TIMEOUT)
        print(text)
        printed = parse_demo(text)
        sip_bind = newcomer_settings.sip_bind
        assert printed.domain == sip_bind and printed.user == "softphone"
        assert printed.access == "100" and "300 for the operator" in text
        # Kept for the next runs, private.
        kept = newcomer_settings.data_dir / "softphone.txt"
        assert oct(kept.stat().st_mode & 0o777) == "0o600"
        await run.wait_listening()
        assert newcomer_instance.running()
        await log_in_to_the_console(run, text)
        assert "softphone" in newcomer_instance.cli("pjsip show endpoints")

        ami = add_observer(newcomer_instance)
        await ami.connect(timeout=15)
        rtp = newcomer_settings.rtp_end + 1
        ua = SipUA(tmp_path / "ua", user=printed.user, listen_host=PHONE_HOST,
                   domain=printed.domain, password=printed.password,
                   rtp_ports=(rtp, rtp + 99), register=True)
        await ua.start()
        # It registers with the printed account, as a softphone does (at start, before
        # the test is on its control socket): Asterisk then holds its contact.
        contact = f"@{PHONE_HOST}:{ua.sip_port}"  # sip:softphone-<id>@127.0.0.2:<port>
        deadline = time.monotonic() + 15
        while contact not in (shown := newcomer_instance.cli(f"pjsip show aor {printed.user}")):
            assert time.monotonic() < deadline, f"no {contact} in: {shown}"
            await asyncio.sleep(0.2)
        calls = follow(ami, ua, f"PJSIP/{printed.user}-")

        await ua.dial(f"sip:{printed.access}@{printed.domain}")
        await ua.wait_established()
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.1)
        (call,) = calls
        caller = Caller(call)
        await caller.log_in(CardInHand(printed.card, printed.pin, "", 0))
        await caller.dial(printed.destination)
        assert call.answered is not None
        await asyncio.wait_for(call.answered.wait(), 30)  # the test carrier answered
        await asyncio.sleep(3)  # talk
        await ua.hangup()
        await ua.wait_closed()
        await call.wait_ended()
        assert caller.heard[:3] == ["welcome", "enter-card-number", "enter-pin"]

        # Settled in the database `ivr run` made: one CDR, charged exactly per second
        # at the demo plan's 0.60 a minute to the US.
        db = Database(newcomer_settings.database_url)
        try:
            deadline = time.monotonic() + 20
            while not (rows := cdrs(db)) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            (cdr,) = rows
            print(f"CDR: {cdr.destination} {cdr.billable_seconds}s {cdr.cost} {cdr.currency}")
            assert cdr.destination == "1" + printed.destination
            assert cdr.plan == "demo" and cdr.currency == "USD"
            assert 3 <= cdr.billable_seconds <= 5, cdr.billable_seconds
            assert cdr.cost == Decimal(cdr.billable_seconds) * Decimal("0.01")
            with db.reading() as s:
                account = s.get(Account, cdr.account_id)
                assert account is not None
                number = account.number
            balance, reserved, entries = account_state(db, number)
            assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
            assert entries[1].amount == -cdr.cost
            assert balance == Decimal("5.00") - cdr.cost and reserved == 0
            assert not open_reservations(db)
        finally:
            db.dispose()
    finally:
        if ua is not None:
            await ua.stop()
        if ami is not None:
            await ami.close()
        status = await run.stop()
    # `ivr run` started this instance: SIGTERM stops the server and Asterisk with it.
    assert status == 0, run.output()
    assert "ivr: Asterisk stopped" in "".join(run.lines), run.output()
    assert not newcomer_instance.running()

    # The next run prints the same account and card (nothing new is made), with what
    # the call left on the card.
    again = IvrRun(newcomer_settings, tmp_path / "again")
    try:
        await again.start()
        text = await again.read_until("--no-demo", START_TIMEOUT)
        await again.wait_listening()  # serving: SIGTERM is the server's to handle
    finally:
        status = await again.stop()
    assert parse_demo(text) == printed
    assert f"({Decimal('5.00') - cdr.cost:.2f} USD left)" in text, text
    assert status == 0 and not newcomer_instance.running(), again.output()
