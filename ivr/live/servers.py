"""One ``ivr serve`` per database (until several servers are supported), and what its
background loops log when the database goes away.

Two servers on one database would each take the other's live calls for calls of a dead
server and settle or release them wrongly. So a server takes a lease at start: a row in
``servers`` whose heartbeat it renews every ``server_heartbeat`` seconds (:func:`keep_lease`).
A second server is refused while that heartbeat is fresh. A lease ends when its server
stops, when its heartbeat is older than ``LEASE_BEATS`` heartbeats, or at once when its
process is gone from this host (a ``kill -9``): the new server then takes over, and its
recovery settles or adopts the old server's calls. Each reservation names the server that
dialled it; recovery touches only those of its own server or of a server whose lease
ended (:meth:`Lease.live_others`).

The heartbeat also stamps each answered call the server follows, while Asterisk is
connected, with the time it was last seen up (``Reservation.alive_at``): a call Asterisk
lost without recording how it ended (Asterisk killed, the machine reset) is billed from
its answer up to then (ivr.live.recovery).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..db import Database, DatabaseUnavailable, rows_changed
from ..db.models import Reservation, ReservationStatus, Server
from ..db.types import as_utc as as_utc  # also for ivr.live.recovery, which imports it from here
from ..money.ledger import utcnow

log = logging.getLogger("ivr.live.servers")

LEASE_BEATS = 5  # heartbeats missed before a lease has expired


class LeaseRefused(RuntimeError):
    """Another server holds the database's lease."""


class Lease:
    """This server's lease on the database (a ``servers`` row)."""

    def __init__(self, db: Database, server_id: int, heartbeat: float,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.server_id = server_id
        self.heartbeat = heartbeat
        self.clock = clock

    @property
    def expiry(self) -> float:
        return LEASE_BEATS * self.heartbeat

    @classmethod
    def acquire(cls, db: Database, heartbeat: float, *, host: str | None = None,
                pid: int | None = None, clock: Callable[[], datetime] = utcnow) -> Lease:
        """Take the lease, or raise :class:`LeaseRefused` when a live server holds it.
        Leases that ended without their server stopping are closed (taken over)."""
        host = host or socket.gethostname()
        pid = os.getpid() if pid is None else pid
        expiry = LEASE_BEATS * heartbeat
        with db.transaction() as s:
            if not db.is_sqlite:  # SQLite's BEGIN IMMEDIATE already serializes this
                s.execute(text("LOCK TABLE servers IN SHARE ROW EXCLUSIVE MODE"))
            now = clock()
            for other in s.scalars(select(Server).where(Server.stopped_at.is_(None))):
                age = (now - as_utc(other.heartbeat_at)).total_seconds()
                if age <= expiry and not (other.host == host and not _pid_alive(other.pid)):
                    raise LeaseRefused(
                        f"another ivr serve is running on this database (pid {other.pid} on "
                        f"{other.host}, heartbeat {max(age, 0):.1f}s ago); stop it first (a "
                        f"crashed server's lease expires {expiry:g}s after its last heartbeat)"
                    )
                other.stopped_at = now
                log.warning("server %s (pid %s on %s, last heartbeat %.1fs ago) is gone: "
                            "taking over its calls", other.id, other.pid, other.host, age)
            me = Server(host=host, pid=pid, started_at=now, heartbeat_at=now)
            s.add(me)
            s.flush()
            log.info("server %s (pid %s on %s) holds the database's lease", me.id, pid, host)
            return cls(db, me.id, heartbeat, clock)

    def beat(self, seen_alive: Sequence[tuple[int, datetime]] = ()) -> bool:
        """Renew the lease and stamp the calls seen alive now, given as (reservation id,
        answer time). False when the lease was lost (another server took it over)."""
        with self.db.transaction() as s:
            now = self.clock()
            held = rows_changed(s.execute(
                update(Server)
                .where(Server.id == self.server_id, Server.stopped_at.is_(None))
                .values(heartbeat_at=now)
            )) == 1
            if held and seen_alive:
                # One executemany on the table (Core): a declarative model's __table__
                # is a Table, typed as the wider FromClause.
                table = cast(Table, Reservation.__table__)
                s.connection().execute(
                    update(table)
                    .where(table.c.id == bindparam("rid"),
                           table.c.status == ReservationStatus.ACTIVE.value)
                    .values(answered_at=bindparam("answered"), alive_at=now),
                    [{"rid": rid, "answered": answered} for rid, answered in seen_alive],
                )
            return held

    def release(self) -> None:
        """End the lease (at a clean stop): the next server starts at once."""
        with self.db.transaction() as s:
            s.execute(update(Server)
                      .where(Server.id == self.server_id, Server.stopped_at.is_(None))
                      .values(stopped_at=self.clock()))

    def live_others(self) -> set[int]:
        """Ids of the other servers whose lease is live: their calls are theirs."""
        with self.db.transaction() as s:
            rows = s.execute(select(Server.id, Server.heartbeat_at).where(
                Server.stopped_at.is_(None), Server.id != self.server_id)).all()
        now = self.clock()
        return {sid for sid, beat in rows
                if (now - as_utc(beat)).total_seconds() <= self.expiry}


async def keep_lease(lease: Lease, seen_alive: Callable[[], Sequence[tuple[int, datetime]]],
                     on_lost: Callable[[], None]) -> None:
    """Renew the lease every heartbeat until cancelled; ``on_lost()`` if it was lost.
    Its own thread: calls busy in the default pool (PIN checks) never delay it."""
    outage = DatabaseOutage("server heartbeat", log)
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1, thread_name_prefix="ivr-heartbeat")
    try:
        while True:
            await asyncio.sleep(lease.heartbeat)
            try:
                held = await loop.run_in_executor(thread, lease.beat, seen_alive())
            except Exception as exc:
                if not outage.failed(exc):
                    log.exception("server heartbeat failed")
                continue
            outage.ended()
            if not held:
                log.error("this server's lease was taken over by another server; stopping")
                on_lost()
                return
    finally:
        thread.shutdown(wait=False)  # a beat stuck on a hung database must not block


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------- outages


def is_database_error(exc: BaseException) -> bool:
    """The database is unreachable, locked or timing out (not a bug in our code)."""
    return isinstance(exc, DatabaseUnavailable | DBAPIError | PoolTimeout)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The driver's message on one line (not SQLAlchemy's, which quotes the statement
    and its parameters)."""
    orig = getattr(exc, "orig", None)
    message = " ".join(str(orig if orig is not None else exc).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


class DatabaseOutage:
    """For a loop that retries: one line when the database goes away, one when it is
    back, instead of a traceback at every try."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.since: float | None = None

    def failed(self, exc: BaseException) -> bool:
        """Note a failed try. False when ``exc`` is not the database's (log it yourself)."""
        if not is_database_error(exc):
            return False
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s: database unavailable, retrying until it is back: %s",
                             self.what, one_line(exc))
        return True

    def ended(self) -> None:
        """Note a try that reached the database."""
        if self.since is not None:
            self.log.info("%s: database back after %.0fs", self.what,
                          time.monotonic() - self.since)
            self.since = None
