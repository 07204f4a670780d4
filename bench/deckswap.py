"""Deck-swap bench: what a large rate import does to the calls and credits that follow.

    python bench/deckswap.py [--rows 1000000] [--db-dir DIR] [--postgres]

A plan gets a deck of ``--rows`` prefixes (bench/gendeck.py) and the server's rating cache
compiles it; then a second deck of the same size, ten times dearer, replaces it. Timed,
with the cache checking versions at every call (ttl 0):

- credits of another account during the import of the second deck (every 0.2 s): the
  longest wait is how long the import holds the write lock;
- the first authorize after the swap (it is the one that notices the new version);
- a credit of another account, started the moment the new table starts compiling;
- the compile itself, and when a call first gets the new rates.

The imports run as ``ivr rates import`` in their own process. Before issue 9 the table was
compiled inside authorize's transaction: on SQLite under the write lock, so the credit
waited for the whole compile. Runs against whatever ``ivr`` is importable
(PYTHONPATH=... to measure another tree).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gendeck import write_deck  # noqa: E402

from ivr.db import Database  # noqa: E402
from ivr.db.migrate import upgrade  # noqa: E402
from ivr.db.models import EntryKind  # noqa: E402
from ivr.money import rates_store  # noqa: E402
from ivr.money.accounts import create_account  # noqa: E402
from ivr.money.ledger import Grant, Ledger, credit  # noqa: E402
from ivr.money.rates_store import RatingCache, create_plan  # noqa: E402

AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
NUMBER = "93751234567"  # Afghanistan Cellular-AT: 0.2204/min in the first deck


def import_file(url: str, path: Path) -> tuple[float, float]:
    """``ivr rates import`` in its own process, as an operator runs it: (seconds, peak RSS
    of that process in MB)."""
    env = os.environ | {"IVR_DATABASE_URL": url, "IVR_DATA_DIR": str(path.parent / "data")}
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "ivr.cli",
                           "rates", "import", str(path)],
                          env=env, check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    return took, int(done.stderr.split()[-1]) / 1024  # GNU time's peak RSS, in KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db-dir", type=Path, default=None)
    parser.add_argument("--postgres", action="store_true",
                        help="a fresh database on the server of IVR_TEST_POSTGRES_URL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deckswap-", dir=args.db_dir))
    first, second = work / "deck1.csv", work / "deck2.csv"
    write_deck(first, args.rows, "bench")
    write_deck(second, args.rows, "bench", rate_scale=Decimal(10))
    if args.postgres:
        from ivr.testing.postgres import fresh_postgres_database

        ctx = fresh_postgres_database()
        url = ctx.__enter__()
    else:
        url = f"sqlite:///{work / 'bench.sqlite3'}"
    db = Database(url)
    upgrade(db.engine)
    with db.transaction() as s:
        create_plan(s, "bench", "USD", decimals=4)
        caller = create_account(s, "bench", balance=Decimal("100")).id
        other = create_account(s, "bench", balance=Decimal("100")).id
    print(f"deck-swap bench: {args.rows:,} rows per deck; {db.engine.dialect.name}; "
          f"Python {platform.python_version()}, {platform.system()} {platform.release()}")
    took, rss = import_file(url, first)
    print(f"import of deck 1: {took:.1f} s, peak RSS {rss:.0f} MB")

    compiling = threading.Event()
    compile_times: list[float] = []
    real = rates_store.load_table

    def watched(session, plans):  # noqa: ANN001, ANN202
        compiling.set()
        start = time.perf_counter()
        table = real(session, plans)
        compile_times.append(time.perf_counter() - start)
        return table

    rates_store.load_table = watched
    cache = RatingCache(db, ttl=0)
    ledger = Ledger(db, cache)
    start = time.perf_counter()
    grant = ledger.authorize(NUMBER, account_id=caller, at=AT, hold=60)
    assert isinstance(grant, Grant)
    print(f"first authorize after start (cold cache): {time.perf_counter() - start:.2f} s "
          f"(compile {compile_times[-1]:.2f} s); held {grant.amount} for 60 s")
    ledger.release(grant.reservation_id)

    importing = threading.Event()
    importing.set()
    waits: list[float] = []
    failed: list[str] = []

    def credits_meanwhile() -> None:
        while importing.is_set():
            start = time.perf_counter()
            try:
                with db.transaction() as s:
                    credit(s, other, Decimal("0.01"), EntryKind.TOPUP)
            except Exception as exc:  # SQLite: "database is locked" after its busy wait
                failed.append(f"{time.perf_counter() - start:.1f} s: {str(exc)[:60]}")
            else:
                waits.append(time.perf_counter() - start)
            time.sleep(0.2)

    worker = threading.Thread(target=credits_meanwhile)
    worker.start()
    try:
        took, rss = import_file(url, second)
    finally:
        importing.clear()
        worker.join()
    print(f"import of deck 2 (10x dearer): {took:.1f} s, peak RSS {rss:.0f} MB; meanwhile "
          f"{len(waits)} credits of another account went through, the longest in "
          f"{max(waits, default=0):.2f} s; {len(failed)} failed"
          + "".join(f"\n  credit failed after {f}" for f in failed))
    compiling.clear()
    credit_time: list[float] = []

    def unrelated_credit() -> None:
        compiling.wait()
        start = time.perf_counter()
        with db.transaction() as s:
            credit(s, other, Decimal("1"), EntryKind.TOPUP, ref="deckswap")
        credit_time.append(time.perf_counter() - start)

    worker = threading.Thread(target=unrelated_credit)
    worker.start()
    start = time.perf_counter()
    grant = ledger.authorize(NUMBER, account_id=caller, at=AT, hold=60)
    first_call = time.perf_counter() - start
    assert isinstance(grant, Grant)
    worker.join()
    print(f"first authorize after the swap: {first_call:.3f} s; held {grant.amount} for 60 s "
          f"({'old' if grant.amount < Decimal('1') else 'new'} rates)")
    print(f"credit of another account, started as the compile started: "
          f"{credit_time[0]:.3f} s")
    if hasattr(cache, "wait"):
        cache.wait()
    print(f"compile of deck 2: {compile_times[-1]:.2f} s")
    ledger.release(grant.reservation_id)
    grant = ledger.authorize(NUMBER, account_id=caller, at=AT, hold=60)
    assert isinstance(grant, Grant)
    print(f"next authorize: held {grant.amount} for 60 s "
          f"({'old' if grant.amount < Decimal('1') else 'new'} rates)")
    ledger.release(grant.reservation_id)
    db.dispose()
    if args.postgres:
        ctx.__exit__(None, None, None)


if __name__ == "__main__":
    main()
