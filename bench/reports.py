"""Call records and reports bench: stream every CDR and build the reports over a large
table, with the memory it takes.

    python bench/reports.py [--cdrs 500000] [--days 60] [--postgres URL]

Seeds a fresh SQLite file (and, with ``--postgres`` naming a server as scripts/postgres-up
prints it, a fresh database there) with ``--cdrs`` call records over ``--days`` days, 40
destinations and one top-up per 20 calls, inserted in bulk; then times, each in the same
process: ``iter_cdrs`` over all of them (pages of 1000) and ``report`` daily, monthly by
destination and daily in Asia/Kolkata (quarter-hour buckets). Memory is the peak of what
Python allocated during a second run of each (tracemalloc), i.e. what streaming and
grouping hold at once.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from ivr.db import Database  # noqa: E402
from ivr.db.migrate import upgrade  # noqa: E402
from ivr.db.models import Account, Cdr, EntryKind, LedgerEntry, RatingPlan  # noqa: E402
from ivr.money import reports  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 20_000


def seed(db: Database, count: int, days: int) -> None:
    rnd = random.Random(7)
    now = datetime.now(UTC)
    with db.transaction() as s:
        plan = s.execute(insert(RatingPlan).values(
            name="retail", currency="USD", tz="UTC", decimals=4, rounding="up",
            rates_version=0, created_at=now).returning(RatingPlan.id)).scalar_one()
        account = s.execute(insert(Account).values(
            number="700001", name="", currency="USD", plan_id=plan, status="active",
            balance=Decimal(0), reserved=Decimal(0), created_at=now)
            .returning(Account.id)).scalar_one()
    span = days * 86400
    for first in range(0, count, BATCH):
        cdrs, credits = [], []
        for n in range(first, min(first + BATCH, count)):
            started = START + timedelta(seconds=rnd.randrange(span))
            seconds = rnd.choice((0, 0, rnd.randrange(1, 1800)))
            dest = rnd.randrange(40)
            cdrs.append({"uniqueid": f"b-{n}", "account_id": account, "card_id": None,
                         "reservation_id": None, "caller": "", "destination": f"{dest + 20}5550100",
                         "destination_name": f"Destination {dest}", "prefix": str(dest + 20),
                         "plan": "retail", "service": "voice", "started_at": started,
                         "answered_at": started if seconds else None,
                         "ended_at": started + timedelta(seconds=seconds),
                         "billable_seconds": seconds,
                         "cost": Decimal(seconds) * Decimal("0.0011"), "currency": "USD",
                         "hangup_cause": "ANSWER" if seconds else "NOANSWER"})
            if n % 20 == 0:
                credits.append({"account_id": account, "kind": EntryKind.TOPUP,
                                "amount": Decimal("10.00"), "balance_after": Decimal(0),
                                "ref": f"p-{n}", "note": "", "created_at": started})
        with db.transaction() as s:
            s.execute(insert(Cdr), cdrs)
            s.execute(insert(LedgerEntry), credits)


def timed(name: str, func: Callable[[], Any]) -> None:
    """Time ``func``, then run it again under tracemalloc for its peak Python memory."""
    started = time.perf_counter()
    result = func()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  {name:34} {elapsed:7.2f} s  {result:>12}  peak {peak / 2**20:6.1f} MiB",
          flush=True)


def run(db: Database, label: str, count: int, days: int) -> None:
    upgrade(db.engine)
    started = time.perf_counter()
    seed(db, count, days)
    print(f"{label}: {count} CDRs over {days} days seeded in "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    def stream() -> str:
        with db.reading() as s:
            n = sum(1 for _ in reports.iter_cdrs(s))
        return f"{n} rows"

    def report(period: str, by: str | None = None, tz: str = "UTC") -> Callable[[], str]:
        def go() -> str:
            with db.reading() as s:
                rows = reports.report(s, period, by=by, tz=ZoneInfo(tz))  # type: ignore[arg-type]
            return f"{len(rows)} rows"
        return go

    timed("cdrs list (all, streamed)", stream)
    timed("reports daily", report("daily"))
    timed("reports monthly --by destination", report("monthly", "destination"))
    timed("reports daily --tz Asia/Kolkata", report("daily", tz="Asia/Kolkata"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cdrs", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a fresh database is made)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.sqlite3")
        run(db, "SQLite", args.cdrs, args.days)
        db.dispose()
    if args.postgres:
        import os

        from ivr.testing.postgres import fresh_postgres_database

        os.environ["IVR_TEST_POSTGRES_URL"] = args.postgres
        with fresh_postgres_database() as url:
            db = Database(url)
            run(db, "PostgreSQL", args.cdrs, args.days)
            db.dispose()


if __name__ == "__main__":
    main()
