"""A fresh PostgreSQL database per test, on the server named by IVR_TEST_POSTGRES_URL
(scripts/test starts one). Tests that use it carry the ``postgres`` marker and fail,
never skip, without the URL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


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
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
