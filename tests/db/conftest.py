"""Databases for the money tests: a fresh SQLite file, and a fresh PostgreSQL database
(on the server named by IVR_TEST_POSTGRES_URL, which scripts/test starts). Tests on
PostgreSQL carry the ``postgres`` marker; without the URL they fail, never skip."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ivr.db import Database
from ivr.db.migrate import upgrade


def _postgres_url() -> str:
    url = os.environ.get("IVR_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("IVR_TEST_POSTGRES_URL is not set: run `bash scripts/test`, or start "
                    "PostgreSQL with scripts/postgres-up and export the URL it prints")
    return url


@pytest.fixture
def sqlite_db(tmp_path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    upgrade(db.engine)
    yield db
    db.dispose()


@pytest.fixture
def postgres_db() -> Iterator[Database]:
    admin_url = make_url(_postgres_url())
    name = f"ivr_test_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(admin_url.set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(db.engine)
        yield db
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request) -> Database:
    """The same test on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_db")
