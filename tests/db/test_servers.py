"""One server per database (ivr.live.servers): the lease, its heartbeat and expiry; recovery
touching only its own server's calls; an answered call lost with Asterisk billed up to
when it was last seen alive. On SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ivr.ami import AmiActionError
from ivr.db import Database
from ivr.db.models import Account, Cdr, Reservation, ReservationStatus, Server
from ivr.live.calls import CallController, CallKey, LiveCall
from ivr.live.charging import Charging
from ivr.live.recovery import Recovery
from ivr.live.servers import LEASE_BEATS, Lease, LeaseRefused
from ivr.money.ledger import Grant, Ledger
from ivr.testing import free_port
from ivr.testing.access import create_test_plan, new_card

HEARTBEAT = 1.0
EXPIRY = LEASE_BEATS * HEARTBEAT
T0 = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def acquire(db: Database, clock: Clock, host: str, pid: int = 4242) -> Lease:
    return Lease.acquire(db, HEARTBEAT, host=host, pid=pid, clock=clock)


def test_second_lease_is_refused_while_the_first_heartbeats(db, clock):
    first = acquire(db, clock, "box-a", pid=os.getpid())
    for _ in range(3 * LEASE_BEATS):  # long past the expiry, heartbeat by heartbeat
        clock.advance(HEARTBEAT)
        assert first.beat()
        with pytest.raises(LeaseRefused, match=r"another ivr serve is running on this "
                                               rf"database \(pid {os.getpid()} on box-a"):
            acquire(db, clock, "box-b")
        # From the same host too, while the holder's process lives (this one).
        with pytest.raises(LeaseRefused):
            acquire(db, clock, "box-a")
    with db.transaction() as s:
        assert s.scalar(select(Server.id).where(Server.stopped_at.is_(None))) == first.server_id


def test_lease_is_taken_once_its_heartbeat_expired(db, clock):
    first = acquire(db, clock, "box-a")
    clock.advance(EXPIRY - 0.5)
    with pytest.raises(LeaseRefused):
        acquire(db, clock, "box-b")
    clock.advance(1.0)  # no heartbeat for more than LEASE_BEATS heartbeats
    second = acquire(db, clock, "box-b")
    assert second.server_id != first.server_id
    # The first server, if it comes back, finds its lease gone.
    assert not first.beat()
    assert second.beat()


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(db, clock):
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: like `ivr serve` after kill -9
    acquire(db, clock, host, pid=gone.pid)
    second = acquire(db, clock, host, pid=os.getpid())
    assert second.beat()


def test_released_lease_is_taken_at_once(db, clock):
    first = acquire(db, clock, "box-a")
    first.release()
    assert acquire(db, clock, "box-b").beat()


# --------------------------------------------------------------------------- recovery


class NoCallsAmi:
    """An Asterisk with no AstDB records and no channels."""

    connected = True
    logins = 1

    def on_event(self, pattern: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        return lambda: None

    async def action(self, name: str, **headers: Any) -> Any:
        message = {"DBGet": "Database entry not found", "Getvar": "No such channel"}[name]
        raise AmiActionError(name, {"Response": "Error", "Message": message})  # type: ignore[arg-type]


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)
    return db


def reserve(ledger: Ledger, card_id: int, key: str, server: Lease | None) -> Grant:
    ledger.server_id = server.server_id if server else None
    grant = ledger.authorize("12125550000", card_id=card_id, call_key=key,
                             channel=f"PJSIP/in-{key}", hold=20)
    assert isinstance(grant, Grant)
    return grant


def status(db: Database, grant: Grant) -> ReservationStatus:
    with db.transaction() as s:
        res = s.get(Reservation, grant.reservation_id)
        assert res is not None
        return res.status


async def test_recovery_leaves_another_live_servers_calls_alone(plan, clock):
    db = plan
    ledger = Ledger(db)
    card = new_card(db, Decimal("1.00"))
    other = acquire(db, clock, "box-a")
    # This server: on another box, with a lease of its own (several servers per database
    # are not allowed yet, but a server that took over an expired lease while the old
    # one was only cut off is the same situation).
    with db.transaction() as s:
        row = Server(host="box-b", pid=1, started_at=clock(), heartbeat_at=clock())
        s.add(row)
        s.flush()
        mine = Lease(db, row.id, HEARTBEAT, clock)
    theirs = reserve(ledger, card.card_id, "1700000000.1-1", other)
    own = reserve(ledger, card.card_id, "1700000000.2-1", mine)
    nobodys = reserve(ledger, card.card_id, "1700000000.3-1", None)
    recovery = Recovery(CallController(NoCallsAmi(), Charging(ledger)), mine)  # type: ignore[arg-type]

    report = await recovery.recover_once()
    # Its own call, and one no server claims, are gone without a record: released.
    assert report.released == ["1700000000.2-1", "1700000000.3-1"]
    assert status(db, theirs) is ReservationStatus.ACTIVE
    assert [status(db, own), status(db, nobodys)] == [ReservationStatus.RELEASED] * 2

    # The other server's heartbeat stops: once its lease expired, its call is recovered.
    clock.advance(EXPIRY - 0.5)
    assert other.beat() and mine.beat()
    clock.advance(EXPIRY - 0.5)
    assert (await recovery.recover_once()).released == []
    clock.advance(1.0)
    assert (await recovery.recover_once()).released == ["1700000000.1-1"]
    assert status(db, theirs) is ReservationStatus.RELEASED


async def test_answered_call_lost_with_asterisk_is_billed_until_last_seen_alive(
        plan, clock, caplog):
    db = plan
    ledger = Ledger(db)
    lease = acquire(db, clock, "box-a")
    ledger.server_id = lease.server_id
    card = new_card(db, Decimal("1.00"))  # 100 s at 0.01 a second
    lost = reserve(ledger, card.card_id, "1700000000.5-1", lease)
    unanswered = reserve(ledger, card.card_id, "1700000000.6-1", lease)
    ami = NoCallsAmi()
    controller = CallController(ami, Charging(ledger))  # type: ignore[arg-type]
    call = LiveCall(CallKey.parse("1700000000.5-1"), "PJSIP/in-5", lost.reservation_id,
                    lost.seconds)
    controller.track(call)
    controller.track(LiveCall(CallKey.parse("1700000000.6-1"), "PJSIP/in-6",
                              unanswered.reservation_id, unanswered.seconds))
    call.answered_at = controller.now() - 12.4  # answered 12.4 s ago
    answered = datetime.now(UTC) - timedelta(seconds=12.4)
    clock.now = datetime.now(UTC)
    assert lease.beat(controller.seen_alive())
    with db.transaction() as s:
        res = s.get(Reservation, lost.reservation_id)
        assert res is not None and res.answered_at is not None and res.alive_at is not None
        assert abs((res.answered_at.replace(tzinfo=UTC) - answered).total_seconds()) < 0.5
        assert res.alive_at.replace(tzinfo=UTC) == clock.now
        untouched = s.get(Reservation, unanswered.reservation_id)
        assert untouched is not None and untouched.alive_at is None
    # AMI down: Asterisk is not known to be alive, so the calls are not stamped.
    ami.connected = False
    assert controller.seen_alive() == []
    ami.connected = True

    # Asterisk dies; the flows end without a record; Asterisk comes back without them.
    controller.done("1700000000.5-1")
    controller.done("1700000000.6-1")
    with caplog.at_level(logging.INFO, logger="ivr.live.recovery"):
        report = await Recovery(controller, lease).recover_once()
    assert report.settled == ["1700000000.5-1"] and report.released == ["1700000000.6-1"]
    with db.transaction() as s:
        cdr = s.scalar(select(Cdr).where(Cdr.uniqueid == "1700000000.5-1"))
        assert cdr is not None
        assert (cdr.billable_seconds, cdr.cost, cdr.hangup_cause) == (
            12, Decimal("0.12"), "recovered: asterisk lost")
        account = s.scalar(select(Account).where(Account.number == card.account))
        assert account is not None
        assert (account.balance, account.reserved) == (Decimal("0.88"), Decimal(0))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "billed 12s" in warnings[0].getMessage()


# --------------------------------------------------------------------------- the command


@pytest.fixture
def first_server(db: Database, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`ivr serve` running on the database (no Asterisk: it waits for AMI meanwhile)."""
    env = dict(os.environ, IVR_DATABASE_URL=db.url, IVR_DATA_DIR=str(tmp_path / "data"),
               IVR_AGI_PORT=str(free_port()), IVR_AMI_PORT=str(free_port()),
               IVR_AMI_SECRET="a-secret-for-this-test", IVR_WEB_BIND="127.0.0.1:0")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ivr.cli", "serve"], env=env,
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "holds the database's lease" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        proc.wait(30)


def test_second_ivr_serve_on_one_database_exits_with_a_message(first_server, ivr_cli,
                                                               monkeypatch):
    for name, value in first_server.items():
        if name.startswith("IVR_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("IVR_AGI_PORT", str(free_port()))
    err = ivr_cli("serve", expect=1)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ivr serve: another ivr serve is running on this database")
    assert "stop it first" in lines[0]
