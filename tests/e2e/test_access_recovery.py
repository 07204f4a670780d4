"""Crash safety: kill -9 of `ivr serve` during live calls.

Five calls are answered, then the server is killed. Asterisk still ends each call at its
limit (the limit lives in Asterisk), and records how long it lasted in AstDB. The server
is restarted while some calls are still up and others have already ended: its recovery
sweep settles every call exactly once, and a second restart changes nothing. Each caller,
whose session the server can no longer finish, hears "service unavailable" from the
dialplan rather than silence.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ivr.ami import AmiClient
from ivr.app import open_database
from ivr.config import Settings
from ivr.db import Database
from ivr.db.models import Cdr, EntryKind, LedgerEntry
from ivr.testing import wait_listening
from ivr.testing.access import Caller, account_state, create_test_plan, new_card, open_reservations
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk

# Seconds each call may last (0.01 a second to the US). The callers dial together and
# are answered within a second or two of each other; the server is killed once all five are
# answered and restarted once the three short calls have ended without it, while the two
# long ones are still up: both recovery paths run.
GRANTS = (20, 21, 22, 45, 46)


class ServerProcess:
    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        self.settings = settings
        self.log = log
        self.extra_env = env
        self.proc: asyncio.subprocess.Process | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        return dict(
            os.environ,
            IVR_DATA_DIR=str(s.data_dir),
            IVR_DATABASE_URL=s.database_url,
            IVR_AGI_PORT=str(s.agi_port),
            IVR_AMI_PORT=str(s.ami_port),
            IVR_AMI_SECRET=s.ami_secret,
            IVR_ASTERISK_INSTANCE=s.asterisk_instance,
            IVR_ASTERISK_SANDBOX_DIR=str(s.asterisk_sandbox_dir),
            IVR_ACCESS_LANGUAGES="en",
            IVR_RECOVERY_INTERVAL="1",
            IVR_LOW_BALANCE_WARNING="0",
            IVR_FINAL_WARNING="0",
            IVR_WEB_BIND="127.0.0.1:0",  # the console on a free port
        ) | self.extra_env

    async def start(self) -> None:
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ivr.cli", "serve", env=self.env(), stdout=out, stderr=out,
        )
        out.close()
        if not await wait_listening(self.settings.agi_port, 20):
            raise AssertionError(f"server did not listen; log:\n{self.log.read_text()}")

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_kill_9_during_live_calls_then_restart_settles_each_call_once(
    asterisk, test_settings: Settings, instance_prompts, phone: Phone, ami: AmiClient,
    tmp_path: Path,
):
    settings = test_settings.replace(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    db: Database = await asyncio.to_thread(open_database, settings)
    create_test_plan(db)
    cards = [new_card(db, Decimal(seconds) / 100) for seconds in GRANTS]

    answered: dict[str, float] = {}  # caller uniqueid -> when the callee answered
    ended: dict[str, float] = {}  # callee channel -> when it hung up
    callee_of: dict[str, str] = {}

    def on_event(event: object) -> None:
        e = dict(event)  # type: ignore[call-overload]
        if e.get("Event") == "DialEnd" and e.get("DialStatus") == "ANSWER" and "Uniqueid" in e:
            answered[e["Uniqueid"]] = time.monotonic()
            callee_of[e["Uniqueid"]] = e["DestChannel"]
        elif e.get("Event") == "Hangup":
            ended[e.get("Channel", "")] = time.monotonic()

    offs = [ami.on_event(n, on_event) for n in ("DialEnd", "Hangup")]
    server = ServerProcess(settings, tmp_path / "serve.log")
    try:
        await server.start()
        calls = [await phone.call("ivr-access", callerid=f"1555000{i:04d}") for i in range(5)]

        everyone_logged_in = asyncio.Barrier(len(calls))

        async def place(call, card) -> None:
            caller = Caller(call)
            await caller.log_in(card)
            await caller.wait_prompt("enter-destination")
            await everyone_logged_in.wait()  # so the five are answered within a second or two
            await call.send_dtmf("2125550100#")  # answers and stays on the line

        await asyncio.gather(*(place(c, k) for c, k in zip(calls, cards, strict=True)))
        await until(lambda: len(answered) == 5, 60, "five answered calls")
        await server.kill9()
        assert not any(c.ended.is_set() for c in calls)
        # The short calls end at their limits with no server running.
        await until(lambda: sum(c.ended.is_set() for c in calls) == 3, 60,
                    "the three short calls to end")
        assert not any(c.ended.is_set() for c in calls[3:])
        await server.start()
        for call in calls:
            await call.wait_ended(timeout=60)

        await until(lambda: not open_reservations(db), 30, "every call settled")

        # A second restart finds nothing left to do.
        await server.kill9()
        await server.start()
        await asyncio.sleep(3)
    finally:
        for off in offs:
            off()
        await server.stop()

    for call, card, grant in zip(calls, cards, GRANTS, strict=True):
        # Each call ended at its limit, enforced by Asterisk with no server running.
        length = ended[callee_of[call.id]] - answered[call.id]
        assert abs(length - grant) <= 1.0, (grant, length)
        # The route's session was gone (AGISTATUS=SUCCESS all the same): the caller, cut
        # off at the limit, is told the service is unavailable, not left in silence.
        assert ("Playback", "ss-noservice") in call.applications, call.applications
        balance, reserved, entries = account_state(db, card.account)
        assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL], entries
        assert entries[1].amount == -Decimal(grant) / 100
        assert balance == 0 and reserved == 0
    with db.transaction() as s:
        assert s.scalar(select(func.count(Cdr.id))) == 5
        assert sorted(s.scalars(select(Cdr.billable_seconds))) == sorted(GRANTS)
        assert s.scalar(select(func.count(LedgerEntry.id))
                        .where(LedgerEntry.kind == EntryKind.CALL)) == 5


async def test_a_call_on_renewed_holds_outlives_a_server_restart(
    asterisk, test_settings: Settings, instance_prompts, phone: Phone, ami: AmiClient,
    tmp_path: Path,
):
    """The call holds 10 s at a time; the server dies just after the answer. Without a
    server the hold would not be renewed and Asterisk would cut the call at 10 s; the
    restarted server adopts the call, renews its holds, and the call runs until the
    money is spent (30 s), then is settled once."""
    settings = test_settings.replace(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    db: Database = await asyncio.to_thread(open_database, settings)
    create_test_plan(db)
    card = new_card(db, Decimal("0.30"))  # 30 s to the US at 0.01 a second
    times: dict[str, float] = {}
    callee: list[str] = []
    caller_id: list[str] = []

    def on_event(event: object) -> None:
        e = dict(event)  # type: ignore[call-overload]
        if (e.get("Event") == "DialEnd" and e.get("DialStatus") == "ANSWER"
                and e.get("Uniqueid") in caller_id):
            times["answered"] = time.monotonic()
            callee.append(e["DestChannel"])
        elif e.get("Event") == "Hangup" and callee and e.get("Channel") == callee[0]:
            times["ended"] = time.monotonic()

    offs = [ami.on_event(n, on_event) for n in ("DialEnd", "Hangup")]
    server = ServerProcess(settings, tmp_path / "serve.log", IVR_RESERVATION_HOLD="10")
    try:
        await server.start()
        call = await phone.call("ivr-access", callerid="15550007777")
        caller_id.append(call.id)
        caller = Caller(call)
        await caller.log_in(card)
        await caller.dial("2125550100")
        await until(lambda: "answered" in times, 30, "the answer")
        await server.kill9()
        await server.start()
        await call.wait_ended(timeout=60)
        await until(lambda: not open_reservations(db), 30, "the call settled")
    finally:
        for off in offs:
            off()
        await server.stop()

    assert "adopted" in (tmp_path / "serve.log").read_text()
    assert abs(times["ended"] - times["answered"] - 30) <= 1.0, times
    balance, reserved, entries = account_state(db, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert entries[1].amount == Decimal("-0.30") and balance == 0 and reserved == 0
    with db.transaction() as s:
        assert list(s.scalars(select(Cdr.billable_seconds))) == [30]


async def test_first_sweep_after_a_restart_runs_as_soon_as_ami_is_up(
    asterisk, test_settings: Settings, instance_prompts, phone: Phone, ami: AmiClient,
    tmp_path: Path,
):
    """The call holds 10 s at a time and its money buys 30 s; the server dies just after
    the answer and comes back with a recovery interval far longer than the call. Only a
    sweep as soon as AMI is logged in adopts the call (and renews its hold) before Asterisk
    cuts it at 10 s."""
    settings = test_settings.replace(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    db: Database = await asyncio.to_thread(open_database, settings)
    create_test_plan(db)
    card = new_card(db, Decimal("0.30"))  # 30 s to the US at 0.01 a second
    times: dict[str, float] = {}
    callee: list[str] = []
    caller_id: list[str] = []

    def on_event(event: object) -> None:
        e = dict(event)  # type: ignore[call-overload]
        if (e.get("Event") == "DialEnd" and e.get("DialStatus") == "ANSWER"
                and e.get("Uniqueid") in caller_id):
            times["answered"] = time.monotonic()
            callee.append(e["DestChannel"])
        elif e.get("Event") == "Hangup" and callee and e.get("Channel") == callee[0]:
            times["ended"] = time.monotonic()

    offs = [ami.on_event(n, on_event) for n in ("DialEnd", "Hangup")]
    server = ServerProcess(settings, tmp_path / "serve.log", IVR_RESERVATION_HOLD="10")
    try:
        await server.start()
        call = await phone.call("ivr-access", callerid="15550008888")
        caller_id.append(call.id)
        caller = Caller(call)
        await caller.log_in(card)
        await caller.dial("2125550100")
        await until(lambda: "answered" in times, 30, "the answer")
        await server.kill9()
        server.extra_env["IVR_RECOVERY_INTERVAL"] = "600"  # only the first sweep can help
        await server.start()
        await call.wait_ended(timeout=60)
        # The adopted call is settled by a later sweep: a server with a short interval.
        await server.stop()
        server.extra_env["IVR_RECOVERY_INTERVAL"] = "1"
        await server.start()
        await until(lambda: not open_reservations(db), 30, "the call settled")
    finally:
        for off in offs:
            off()
        await server.stop()

    assert abs(times["ended"] - times["answered"] - 30) <= 1.0, times
    balance, reserved, entries = account_state(db, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert entries[1].amount == Decimal("-0.30") and balance == 0 and reserved == 0


LOST_AFTER = 8  # seconds of talk before Asterisk is killed


async def test_answered_call_lost_with_asterisk_is_billed_until_asterisk_died(
    asterisk, test_settings: Settings, instance_prompts, phone: Phone, ami: AmiClient,
    tmp_path: Path,
):
    """kill -9 of Asterisk during an answered call: no hang-up handler runs, so no record
    of the call's length. The server (alive throughout) bills it up to the last time its
    heartbeat saw the call up with Asterisk connected, once Asterisk is back. This test
    restarts the session's Asterisk; it is up again, as before, when the test ends."""
    settings = test_settings.replace(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    db: Database = await asyncio.to_thread(open_database, settings)
    create_test_plan(db)
    card = new_card(db, Decimal("1.00"))  # 100 s to the US at 0.01 a second
    times: dict[str, float] = {}
    caller_id: list[str] = []

    def on_event(event: object) -> None:
        e = dict(event)  # type: ignore[call-overload]
        if (e.get("Event") == "DialEnd" and e.get("DialStatus") == "ANSWER"
                and e.get("Uniqueid") in caller_id):
            times["answered"] = time.monotonic()

    off = ami.on_event("DialEnd", on_event)
    server = ServerProcess(settings, tmp_path / "serve.log")
    try:
        await server.start()
        call = await phone.call("ivr-access", callerid="15550009999")
        caller_id.append(call.id)
        caller = Caller(call)
        await caller.log_in(card)
        await caller.dial("2125550100")
        await until(lambda: "answered" in times, 30, "the answer")
        await asyncio.sleep(LOST_AFTER)  # the call's own length
        pid = asterisk.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        times["killed"] = time.monotonic()
        await until(lambda: not asterisk.running(), 10, "Asterisk to die")
        await asyncio.to_thread(asterisk.start, 90)
        await until(lambda: not open_reservations(db), 30, "the call settled")
    finally:
        off()
        await server.stop()
        if not asterisk.running():
            await asyncio.to_thread(asterisk.start, 90)

    talked = times["killed"] - times["answered"]
    with db.transaction() as s:
        cdr = s.scalar(select(Cdr))
        assert cdr is not None
        assert cdr.hangup_cause == "recovered: asterisk lost"
        # Billed up to the last heartbeat (every second) before Asterisk died, in whole
        # seconds: at most 2 s short, never more than the call lasted.
        assert talked - 2.5 <= cdr.billable_seconds <= talked + 0.5, (cdr.billable_seconds,
                                                                      talked)
        seconds = cdr.billable_seconds
    balance, reserved, entries = account_state(db, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert entries[1].amount == -Decimal(seconds) / 100
    assert balance == Decimal("1.00") - Decimal(seconds) / 100 and reserved == 0
    log = (tmp_path / "serve.log").read_text()
    assert (f"WARNING ivr.live.recovery: [{caller_id[0]}-1] answered call gone without a "
            "record") in log
