"""A fresh PostgreSQL database per test, on the server named by IVR_TEST_POSTGRES_URL
(scripts/test starts one). Tests that use it carry the ``postgres`` marker and fail,
never skip, without the URL."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError


def postgres_admin_url() -> str:
    url = os.environ.get("IVR_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("IVR_TEST_POSTGRES_URL is not set: run `bash scripts/test`, or start "
                    "PostgreSQL with scripts/postgres-up and export the URL it prints")
    return url


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database; yield its URL; drop it (even with open connections)."""
    admin_url = make_url(postgres_admin_url())
    name = f"ivr_test_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            _drop(admin, name)
        finally:
            admin.dispose()


def _drop(admin: Engine, name: str, attempts: int = 20) -> None:
    """Drop a test database. FORCE ends our own sessions; an autovacuum worker busy in
    it is ended too when the role has pg_signal_backend (scripts/postgres-up grants it),
    else the drop is retried until the worker is done."""
    for attempt in range(attempts):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
