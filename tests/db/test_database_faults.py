"""A database that does not answer (a locked SQLite file, a stopped PostgreSQL, a row
lock held too long) fails a step with DatabaseUnavailable within the database's timeout
instead of holding the caller; and the SQLite files are private (0700 directory, 0600
database, -wal and -shm)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from ivr.app import open_database
from ivr.config import Settings
from ivr.db import Database, DatabaseUnavailable, lock_account
from ivr.db.migrate import upgrade
from ivr.db.models import Account, EntryKind
from ivr.money.ledger import credit, ledger_sum
from ivr.testing.access import create_test_plan, new_account
from ivr.testing.dbfaults import private_postgres, sqlite_write_lock
from ivr.testing.postgres import fresh_postgres_database

# A bound for the tests' own waits: far beyond any timeout used here, so a step that
# ignores its timeout fails the test instead of hanging it.
NEVER = 60


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def settings_of(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(data_dir=tmp_path / "data")


def credit_one(db: Database, account_number: str) -> None:
    with db.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == account_number))
        assert account is not None
        credit(s, account.id, Decimal("1.00"), EntryKind.ADJUSTMENT)


# --------------------------------------------------------------------------- SQLite files


def test_a_new_sqlite_database_is_private_whatever_the_umask(umask_022, settings_of):
    db = open_database(settings_of)  # as the server makes it: the schema is created
    create_test_plan(db)
    new_account(db, Decimal("5.00"))  # something in the WAL
    path = Path(db.url.removeprefix("sqlite:///"))
    assert path.parent == settings_of.data_dir
    assert mode(settings_of.data_dir) == 0o700
    for name in ("ivr.sqlite3", "ivr.sqlite3-wal", "ivr.sqlite3-shm"):
        assert mode(settings_of.data_dir / name) == 0o600, name


def test_an_existing_readable_database_is_tightened_at_start(
    umask_022, settings_of, caplog: pytest.LogCaptureFixture
):
    settings_of.data_dir.mkdir(mode=0o755)
    os.chmod(settings_of.data_dir, 0o755)
    path = settings_of.data_dir / "ivr.sqlite3"
    old = Database(f"sqlite:///{path}")
    upgrade(old.engine)
    old.dispose()
    for name in ("ivr.sqlite3", "ivr.sqlite3-wal"):
        (settings_of.data_dir / name).touch()
        os.chmod(settings_of.data_dir / name, 0o644)

    caplog.set_level(logging.WARNING, "ivr.db")
    db = open_database(settings_of)
    create_test_plan(db)
    assert mode(settings_of.data_dir) == 0o700
    for name in ("ivr.sqlite3", "ivr.sqlite3-wal", "ivr.sqlite3-shm"):
        assert mode(settings_of.data_dir / name) == 0o600, name
    tightened = [r.getMessage() for r in caplog.records]
    assert len(tightened) == 3, tightened  # the directory, the database and its WAL
    assert all("was open to other users" in m for m in tightened)


# --------------------------------------------------------------------------- SQLite locks


async def test_a_database_locked_by_another_process_is_unavailable_within_the_timeout(
    tmp_path: Path,
):
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}", timeout=1)
    upgrade(db.engine)
    create_test_plan(db)
    number = new_account(db, Decimal("5.00"))
    with sqlite_write_lock(tmp_path / "ivr.sqlite3"), pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(db.run(credit_one, db, number), NEVER)
    # The step that gave up left its thread in SQLite's busy handler, holding this
    # process's writer lock; it ends on its own once the other process lets go (under a
    # loaded machine that can take longer than the timeout). Then the next step works.
    assert db._writer is not None and db._writer.acquire(timeout=NEVER)
    db._writer.release()
    await db.run(credit_one, db, number)  # and it works again
    db.dispose()


def test_the_writer_lock_of_this_process_is_waited_for_at_most_the_timeout(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}", timeout=1)
    upgrade(db.engine)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction():
            holding.set()
            done.wait(NEVER)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(NEVER)
        with pytest.raises(DatabaseUnavailable, match="write lock"), db.transaction():
            pass
    finally:
        done.set()
        holder.join()
    db.dispose()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_a_row_lock_held_too_long_makes_postgres_unavailable_not_a_wait():
    with fresh_postgres_database() as url:
        db = Database(url, timeout=1)
        holder = Database(url)
        try:
            upgrade(db.engine)
            create_test_plan(db)
            number = new_account(db, Decimal("5.00"))
            with holder.transaction() as s:
                account = s.scalar(select(Account).where(Account.number == number))
                assert account is not None
                lock_account(s, account.id)  # held until the block ends
                with pytest.raises(DatabaseUnavailable, match="lock timeout"):
                    credit_one(db, number)
            credit_one(db, number)
        finally:
            holder.dispose()
            db.dispose()


@pytest.mark.postgres
async def test_a_stopped_postgres_is_unavailable_within_the_timeout():
    with private_postgres() as server:
        db = Database(server.url, timeout=2)
        try:
            await asyncio.to_thread(upgrade, db.engine)
            await asyncio.to_thread(create_test_plan, db)
            number = await asyncio.to_thread(new_account, db, Decimal("5.00"))
            server.stop_processes()
            try:
                # Pooled connections (pre-ping) and new ones alike, more at once than the
                # event loop's default executor has threads.
                steps = [db.run(credit_one, db, number) for _ in range(12)]
                results = await asyncio.wait_for(
                    asyncio.gather(*steps, return_exceptions=True), NEVER)
                assert all(isinstance(r, DatabaseUnavailable) for r in results), results
                # The stuck workers are the database's own: other threads still run.
                assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42
            finally:
                server.resume_processes()

            def balance_and_ledger() -> tuple[Decimal, Decimal]:
                # One snapshot for both reads (REPEATABLE READ): an abandoned step may
                # still commit now, and under READ COMMITTED the two statements could see
                # the database before and after it.
                with db.reading() as s:
                    account = s.scalar(select(Account).where(Account.number == number))
                    assert account is not None
                    return account.balance, ledger_sum(s, account.id)

            # Once it runs again, each abandoned step has finished or failed as a whole:
            # the balance is 5.00 plus whole credits, and matches the ledger.
            # Read outside the 2 s step bound: the database's workers may still be busy
            # finishing the abandoned steps (a CI run under load took longer than 2 s).
            balance, ledger = await asyncio.wait_for(asyncio.to_thread(balance_and_ledger),
                                                     NEVER)
            assert balance == ledger
            assert Decimal("5.00") <= balance <= Decimal("17.00")
            assert balance % 1 == 0
        finally:
            await asyncio.to_thread(db.dispose)


def test_a_postgresql_nobody_answers_on_is_unavailable():
    """No server on the port: psycopg's error has no SQLSTATE, and that (not the words
    of its message) makes it "unavailable"."""
    from sqlalchemy import text

    from ivr.db import DatabaseUnavailable
    from ivr.testing import free_port

    db = Database(f"postgresql+psycopg://ivr:ivr@127.0.0.1:{free_port()}/postgres", timeout=2)
    try:
        with (pytest.raises(DatabaseUnavailable, match="database unavailable"),
              db.transaction() as s):
            s.execute(text("SELECT 1"))
    finally:
        db.dispose()
