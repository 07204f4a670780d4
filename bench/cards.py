"""Batch bench: issuing cards and generating vouchers, on SQLite and on PostgreSQL.

    python bench/cards.py [--count 100000] [--vouchers 100000] [--no-postgres]

Times what ``ivr cards issue --count N`` does (ivr.money.accounts.issue_card_file: N
cards, each with its own account and an opening balance, PINs keyed-hashed, the card
file streamed to disk) and ``ivr vouchers generate --count N``
(ivr.money.vouchers.generate), each in a fresh database: an SQLite file in a temporary
directory, and a scratch PostgreSQL database on the server named by
IVR_TEST_POSTGRES_URL (created and dropped here). Prints the figures beside the
baseline of issue 15 (scrypt PINs, one query and one ORM flush per card).
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.db.models import Card, LedgerEntry, Voucher
from ivr.money.accounts import issue_card_file
from ivr.money.vouchers import generate
from ivr.secrets import PinKeys
from ivr.testing.access import PLAN, create_test_plan

BASELINE = "before (issue 15): 500 cards 6.9 s; 100,000 cards over 20 min"


@contextmanager
def scratch_postgres(admin: str) -> Iterator[str]:
    url = make_url(admin)
    name = f"ivr_bench_cards_{secrets.token_hex(4)}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def run(label: str, url: str, tmp: Path, count: int, vouchers: int) -> None:
    db = Database(url)
    try:
        upgrade(db.engine)
        create_test_plan(db)
        keys = PinKeys.parse(os.urandom(32).hex())
        out = tmp / f"cards-{label}.csv"
        started = time.perf_counter()
        issue_card_file(db, PLAN, count, Decimal("5"), out, pin_keys=keys)
        took = time.perf_counter() - started
        with db.reading() as s:
            made = s.scalar(select(func.count()).select_from(Card))
            entries = s.scalar(select(func.count()).select_from(LedgerEntry))
        with out.open(newline="") as f:
            rows = sum(1 for _ in csv.reader(f)) - 1
        assert made == rows == count and entries == count, (made, rows, entries)
        print(f"{label:10} cards    {count:>7,}: {took:6.2f} s ({count / took:,.0f}/s; "
              f"file {out.stat().st_size / 1e6:.1f} MB)")
        if vouchers:
            started = time.perf_counter()
            generate(db, vouchers, Decimal("10"), "USD", tmp / f"vouchers-{label}.csv",
                     key=os.urandom(32))
            took = time.perf_counter() - started
            with db.reading() as s:
                assert s.scalar(select(func.count()).select_from(Voucher)) == vouchers
            print(f"{label:10} vouchers {vouchers:>7,}: {took:6.2f} s "
                  f"({vouchers / took:,.0f}/s)")
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--vouchers", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(BASELINE)
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", f"sqlite:///{Path(tmp) / 'ivr.sqlite3'}", Path(tmp), args.count,
            args.vouchers)
        admin = os.environ.get("IVR_TEST_POSTGRES_URL")
        if admin and not args.no_postgres:
            with scratch_postgres(admin) as url:
                run("postgresql", url, Path(tmp), args.count, args.vouchers)
        elif not args.no_postgres:
            print("postgresql: skipped (set IVR_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    main()
