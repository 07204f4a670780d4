"""Databases for the money tests: a fresh SQLite file, and a fresh PostgreSQL database
(on the server named by IVR_TEST_POSTGRES_URL, which scripts/test starts). Tests on
PostgreSQL carry the ``postgres`` marker; without the URL they fail, never skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.testing.postgres import fresh_postgres_database


@pytest.fixture
def sqlite_db(tmp_path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    upgrade(db.engine)
    yield db
    db.dispose()


@pytest.fixture
def postgres_db() -> Iterator[Database]:
    with fresh_postgres_database() as url:
        db = Database(url)
        try:
            upgrade(db.engine)
            yield db
        finally:
            db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request) -> Database:
    """The same test on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_db")
