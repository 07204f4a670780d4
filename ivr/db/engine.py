"""Engines and transactions. One explicit session (transaction) per unit of work.

SQLite: every transaction starts with BEGIN IMMEDIATE, taking the write lock up front, so
two calls on one account serialize instead of failing to upgrade a read lock; WAL lets
readers go on meanwhile. PostgreSQL: accounts are locked with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .models import Account


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; nothing was written."""


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA busy_timeout = 30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Threads of this process queue on a lock and
        # wake the moment it is free, instead of polling in SQLite's busy handler with
        # sleeps of up to 100 ms (which made call set-up p99 jump behind one slow fsync).
        self._writer = threading.RLock() if self.is_sqlite else contextlib.nullcontext()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        try:
            with self._writer, self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            if _is_connection_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {exc.orig}") from exc
            raise

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
    """Load an account for update (row lock on PostgreSQL; SQLite holds the write lock)."""
    account = session.execute(
        select(Account).where(Account.id == account_id).with_for_update()
    ).scalar_one_or_none()
    if account is None:
        raise LookupError(f"no account {account_id}")
    return account


def _is_connection_error(exc: OperationalError) -> bool:
    return bool(getattr(exc, "connection_invalidated", False)) or "connect" in str(exc.orig).lower()
