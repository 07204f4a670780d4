"""Engines and transactions. One explicit session (transaction) per unit of work.

SQLite: every transaction starts with BEGIN IMMEDIATE, taking the write lock up front, so
two calls on one account serialize instead of failing to upgrade a read lock; WAL lets
readers go on meanwhile. The file is private: its directory is made 0700, the database
(and so its -wal and -shm files, which SQLite gives the database's mode) 0600.
PostgreSQL: accounts are locked with SELECT ... FOR UPDATE.

A :class:`Database` made with a ``timeout`` (the server's, ``db_timeout``) waits at most
that long for anything: a connection, a lock (SQLite's write lock, a PostgreSQL row lock)
and, through :meth:`Database.run`, the whole unit of work, since a stopped PostgreSQL
(SIGSTOP, a frozen VM) keeps its sockets open and enforces none of its own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Connection, CursorResult, Engine, Result, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from .models import Account

log = logging.getLogger("ivr.db")

P = ParamSpec("P")
T = TypeVar("T")

# Without a timeout (operator commands): how long SQLite waits for another writer.
SQLITE_BUSY_WAIT = 30.0
# PostgreSQL cancels a statement running longer than this (or than the timeout, if
# longer): a runaway statement gives its worker and connection back. Longer than
# db_timeout, as reading a large rate deck may take a few seconds.
STATEMENT_TIMEOUT = 60.0
POOL_SIZE, MAX_OVERFLOW = 10, 20
# Threads of Database.run: as many as the event loop's default executor has (what the
# flows used before). More buy nothing on two cores (one SQLite writer; the PIN checks
# have their own threads) and cost memory (a malloc arena and a connection each) and
# latency: 30 made call set-up p50 twice as slow and took memory per live call from 13
# to 190-350 KB (bench/callsetup.py). Workers stuck on a stopped server make new work
# time out queued, which is what a caller should hear then.
WORKERS = min(32, (os.cpu_count() or 1) + 4)
# SQLite result codes (primary) meaning the database cannot be used now.
_SQLITE_UNAVAILABLE = {5, 6, 10, 14}  # BUSY, LOCKED, IOERR, CANTOPEN


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (or did not answer in time); nothing was written
    by the failed step, unless it was abandoned at its deadline and committed later."""


def make_engine(url: str, timeout: float | None = None) -> Engine:
    """An engine for ``url``; with ``timeout``, connecting, waiting for a lock or for a
    pooled connection give up after about that many seconds."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            secure_sqlite_file(Path(parsed.database))
        wait = SQLITE_BUSY_WAIT if timeout is None else timeout
        engine = create_engine(url, connect_args={"timeout": wait})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Database.reading: a deferred BEGIN reads a WAL snapshot, taking no write lock.
            read_only = conn.get_execution_options().get("ivr_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    options: dict[str, Any] = {}
    if timeout is not None and parsed.get_backend_name() == "postgresql":
        statement_ms = int(max(STATEMENT_TIMEOUT, timeout) * 1000)
        options = {
            "pool_timeout": timeout,
            "connect_args": {
                "connect_timeout": max(2, math.ceil(timeout)),  # libpq's minimum is 2
                "options": f"-c lock_timeout={int(timeout * 1000)}"
                           f" -c statement_timeout={statement_ms}",
            },
        }
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE,
                         max_overflow=MAX_OVERFLOW, **options)


def secure_sqlite_file(path: Path) -> None:
    """Make ``path``'s directory (0700) and the database file (0600) if missing, before
    SQLite opens it: its -wal and -shm files then get the same mode whatever the umask.
    Existing files readable by others are tightened to 0600, with a warning."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError, IsADirectoryError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, *(path.with_name(path.name + x) for x in ("-wal", "-shm", "-journal"))):
        private_path(file)


def private_path(path: Path) -> None:
    """Take group and other permissions off ``path`` (a regular file or a directory
    of ours) if it has any, logging it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or st.st_uid != os.getuid():
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700)
        except OSError as exc:
            log.warning("%s is open to other users (mode %04o): %s", path, mode, exc)
            return
        log.warning("%s was open to other users (mode %04o): now %04o", path, mode,
                    mode & 0o700)


async def run_bounded(
    timeout: float | None, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """``func(*args, **kwargs)`` on a database worker thread, waited for at most
    ``timeout`` seconds (None: as long as it takes), else :class:`DatabaseUnavailable`.

    Work not started by then is dropped; work under way goes on in its thread and
    commits or fails later (each ledger and log-in step is safe to complete after its
    caller gave up: docs/design.md, "A database that does not answer"). The workers are
    the database's own and bounded, so threads stuck on a stopped server never starve
    the event loop's default executor: when all are stuck, new work times out queued."""
    ctx = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(
        _executor(), functools.partial(ctx.run, func, *args, **kwargs))
    if timeout is None:
        return await future
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise DatabaseUnavailable(
            f"database unavailable: no answer within {timeout:g} s") from None


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="ivr-db")
        return _pool


class Database:
    def __init__(self, url: str, timeout: float | None = None) -> None:
        """``timeout``: seconds any step may wait (see the module); None, as for operator
        commands, waits as long as it takes (SQLite: 30 s for another writer)."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"database timeout must be positive, not {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.engine = make_engine(url, timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Threads of this process queue on a lock and
        # wake the moment it is free, instead of polling in SQLite's busy handler with
        # sleeps of up to 100 ms (which made call set-up p99 jump behind one slow fsync).
        self._writer = threading.RLock() if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        with _unavailable_as_such(), self._write_lock(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """One transaction, as :meth:`transaction`, on a plain Connection for SQLAlchemy
        Core statements: the call set-up path's steps (ivr.money.ledger), where an ORM
        Session's unit of work cost more than the SQL it sends."""
        with _unavailable_as_such(), self._write_lock(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction that locks nothing, for long reads (compiling a rate
        deck) done outside any unit of work: on SQLite a deferred BEGIN, which reads one
        WAL snapshot while writers go on (no write lock, in SQLite or in this process);
        on PostgreSQL READ ONLY at REPEATABLE READ (one snapshot, no row locks)."""
        with (_unavailable_as_such(),
              Session(self._read_engine, expire_on_commit=False) as session, session.begin()):
            yield session

    @functools.cached_property
    def _read_engine(self) -> Engine:
        if self.is_sqlite:
            return self.engine.execution_options(ivr_read_only=True)
        return self.engine.execution_options(isolation_level="REPEATABLE READ",
                                             postgresql_readonly=True)

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``func(*args, **kwargs)`` (database work) on a worker thread, within this
        database's timeout (:func:`run_bounded`)."""
        return await run_bounded(self.timeout, func, *args, **kwargs)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        if self._writer is None:
            yield
            return
        if not self._writer.acquire(timeout=-1 if self.timeout is None else self.timeout):
            raise DatabaseUnavailable(
                f"database unavailable: busy for {self.timeout:g} s (write lock)")
        try:
            yield
        finally:
            self._writer.release()

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            raise DatabaseUnavailable(
                f"database unavailable ({self.safe_url}): {exc.orig}"
            ) from exc

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def lock_account(session: Session, account_id: int) -> Account:
    """Load an account for update (row lock on PostgreSQL; SQLite holds the write lock),
    as committed by any transaction that held the lock before: an Account this session
    had loaded already is refreshed (``populate_existing``), else its balance would be
    the one read before the lock, and a credit written from it would undo another's."""
    account = session.execute(
        select(Account).where(Account.id == account_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if account is None:
        raise LookupError(f"no account {account_id}")
    return account


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched. ``Session.execute()`` is typed to return
    a Result, but for these statements it gives a CursorResult, the kind with a rowcount."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"a {type(result).__name__} has no row count")
    return result.rowcount


@contextmanager
def _unavailable_as_such() -> Iterator[None]:
    """Raise :class:`DatabaseUnavailable` for errors meaning the database cannot be used
    now (as opposed to a bad statement)."""
    try:
        yield
    except OperationalError as exc:
        if _is_unavailable(exc):
            raise DatabaseUnavailable(f"database unavailable: {exc.orig}") from exc
        raise
    except PoolTimeout as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc


def _is_unavailable(exc: OperationalError) -> bool:
    """The database is down, unreachable, busy past our timeout or shutting down (as
    opposed to a bad statement)."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_UNAVAILABLE
    state = getattr(orig, "sqlstate", None)
    if state:  # PostgreSQL: connection (08), resources (53), shutdown (57P), time-outs
        return state[:2] in ("08", "53") or state.startswith("57P") or state in (
            "55P03", "57014")
    # A failed connect has no SQLSTATE: no server answered. psycopg's errors carry one
    # whenever the server sent it, so none at all means the server was not reached.
    return state is None and type(orig).__module__.split(".")[0] == "psycopg"
