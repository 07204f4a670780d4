"""Web console bench: the CDR page, its filtered searches and the CSV export over a million
call records, on SQLite and PostgreSQL.

    python bench/web.py [--rows 1000000] [--requests 100] [--postgres URL] [--rebuild]

Fills a database with ``--rows`` call records (90 days, written in about the order the
calls started; 10,000 cards on as many accounts, 40 destinations, a third answered; SQLite
by Core executemany in chunks, PostgreSQL by COPY), kept between runs (SQLite:
~/.cache/ivr/bench-web/cdrs-v2-ROWS.sqlite3; PostgreSQL: the database
ivr_bench_web_v2_ROWS on the server ``--postgres`` names, default $IVR_TEST_POSTGRES_URL)
unless ``--rebuild``. PostgreSQL is ANALYZEd after the fill (as autovacuum would); SQLite
is not (the product never runs ANALYZE: its planner has no statistics in production
either).

Then serves the console in this process (uvicorn on a loopback port, the product's own
App and database settings) and, logged in as a support user, times with httpx
``--requests`` GETs of each: the first page, a deep page (``?before=`` a random record),
and the filtered searches (a card, a destination prefix, a day, a status, ...), each
request with a different random value; p50/p99 in ms (a search stopped at the page's
time limit, ivr.web.pages.cdrs.SEARCH_SECONDS, counts with the time it took and is
reported). Then the CSV export of every record: time, records, and the peak RSS growth
of this process (server and client; the client only counts lines) during it, read from
VmHWM after resetting it (/proc/self/clear_refs). ``--plans`` prints the query plans of
the searches (the page's query).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from sqlalchemy import event, func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from ivr.app import App  # noqa: E402
from ivr.config import load_settings  # noqa: E402
from ivr.db import Database  # noqa: E402
from ivr.db.migrate import upgrade  # noqa: E402
from ivr.db.models import Account, Card, Cdr, RatingPlan  # noqa: E402
from ivr.money import reports  # noqa: E402
from ivr.testing.access import create_test_plan  # noqa: E402
from ivr.web import create_app, users  # noqa: E402

CACHE = Path.home() / ".cache" / "ivr" / "bench-web"
START = datetime(2026, 8, 1, tzinfo=UTC)
DAYS = 90
CARDS = 10_000
DESTINATIONS = 40
CHUNK = 50_000
CAUSES = ("NOANSWER", "BUSY", "CONGESTION")
COLUMNS = ("uniqueid", "account_id", "card_id", "reservation_id", "caller", "destination",
           "destination_name", "prefix", "plan", "service", "started_at", "answered_at",
           "ended_at", "billable_seconds", "cost", "currency", "hangup_cause")


# --------------------------------------------------------------------------- the data


def generate(count: int, first_account: int, first_card: int) -> Iterator[list[dict[str, Any]]]:
    """The call records in chunks, the same for a given count (seeded). Written as a
    switch writes them, in about the order the calls started (a record is written when
    its call ends: up to 10 minutes out of order), so ids rise with start times."""
    rnd = random.Random(11)
    span = DAYS * 86400 - 600
    for first in range(0, count, CHUNK):
        chunk = []
        for n in range(first, min(first + CHUNK, count)):
            started = START + timedelta(seconds=n * span // count + rnd.randrange(600))
            card = rnd.randrange(CARDS)
            dest = rnd.randrange(DESTINATIONS)
            seconds = rnd.randrange(1, 1800) if rnd.random() < 1 / 3 else 0
            chunk.append({
                "uniqueid": f"bench-{n}", "account_id": first_account + card,
                "card_id": first_card + card, "reservation_id": None,
                "caller": f"3361{rnd.randrange(10**6):06d}",
                "destination": f"{dest + 20}{rnd.randrange(10**8):08d}",
                "destination_name": f"Destination {dest + 20}", "prefix": str(dest + 20),
                "plan": "retail", "service": "voice", "started_at": started,
                "answered_at": started + timedelta(seconds=4) if seconds else None,
                "ended_at": started + timedelta(seconds=4 + seconds),
                "billable_seconds": seconds,
                "cost": (Decimal(seconds) * Decimal("0.0011")).quantize(Decimal("0.0001")),
                "currency": "USD",
                "hangup_cause": "ANSWER" if seconds else rnd.choice(CAUSES)})
        yield chunk


def fill(db: Database, count: int) -> None:
    upgrade(db.engine)
    create_test_plan(db)
    now = datetime.now(UTC)
    with db.transaction() as s:
        plan = s.scalar(select(RatingPlan.id).where(RatingPlan.name == "retail"))
        s.execute(insert(Account), [
            {"number": f"70{n:08d}", "name": "", "currency": "USD", "plan_id": plan,
             "status": "active", "balance": Decimal(0), "reserved": Decimal(0),
             "created_at": now} for n in range(CARDS)])
        ids = {number: id_ for number, id_ in s.execute(select(Account.number, Account.id))}
        s.execute(insert(Card), [
            {"number": f"40{n:010d}", "pin_hash": "-", "account_id": ids[f"70{n:08d}"],
             "created_at": now} for n in range(CARDS)])
        first_account = s.scalar(select(func.min(Account.id)).where(
            Account.number.like("70%")))
        first_card = s.scalar(select(func.min(Card.id)).where(Card.number.like("40%")))
    assert first_account is not None and first_card is not None
    done = 0
    for chunk in generate(count, first_account, first_card):
        if db.is_sqlite:
            with db.transaction() as s:
                s.execute(insert(Cdr), chunk)
        else:
            _copy(db, chunk)
        done += len(chunk)
        print(f"\r  {done:,} records", end="", flush=True)
    print()
    if not db.is_sqlite:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))


def _copy(db: Database, chunk: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY, the values as stored (money in micro-units)."""
    raw = db.engine.raw_connection()
    try:
        with (raw.cursor() as cur,
              cur.copy(f"COPY cdrs ({', '.join(COLUMNS)}) FROM STDIN") as copy):
            for row in chunk:
                copy.write_row([int(row[c] * 1_000_000) if c == "cost" else row[c]
                                for c in COLUMNS])
        raw.commit()
    finally:
        raw.close()


def count_cdrs(db: Database) -> int:
    try:
        with db.reading() as s:
            return s.scalar(select(func.count()).select_from(Cdr)) or 0
    except Exception:  # no table yet
        return -1


def sqlite_url(rows: int, rebuild: bool) -> str:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"cdrs-v2-{rows}.sqlite3"
    if path.exists() and not rebuild:
        db = Database(f"sqlite:///{path}")
        found = count_cdrs(db)
        db.dispose()
        if found == rows:
            print(f"SQLite: reusing {path} ({rows:,} records)")
            return f"sqlite:///{path}"
    for old in CACHE.glob(f"cdrs-v2-{rows}.sqlite3*"):
        old.unlink()
    building = CACHE / f"building-{rows}.sqlite3"
    for old in CACHE.glob(f"building-{rows}.sqlite3*"):
        old.unlink()
    db = Database(f"sqlite:///{building}")
    started = time.perf_counter()
    print(f"SQLite: filling {building}")
    fill(db, rows)
    db.dispose()
    building.rename(path)
    print(f"SQLite: {rows:,} records in {time.perf_counter() - started:.0f} s")
    return f"sqlite:///{path}"


def postgres_url(server: str, rows: int, rebuild: bool) -> str:
    name = f"ivr_bench_web_v2_{rows}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    admin = Database(server)
    try:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                 {"n": name})
            if exists and not rebuild:
                db = Database(url)
                found = count_cdrs(db)
                db.dispose()
                if found == rows:
                    print(f"PostgreSQL: reusing database {name} ({rows:,} records)")
                    return url
            if exists:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    db = Database(url)
    started = time.perf_counter()
    print(f"PostgreSQL: filling database {name}")
    fill(db, rows)
    db.dispose()
    print(f"PostgreSQL: {rows:,} records in {time.perf_counter() - started:.0f} s")
    return url


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    label: str
    timings: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # p50, p99, n
    refused: dict[str, int] = field(default_factory=dict)  # stopped at the time limit
    export: str = ""
    plans: dict[str, str] = field(default_factory=dict)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@contextmanager
def captured(db: Database) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "FROM cdrs" in statement and "ORDER BY" in statement:
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", grab)


def plan_of(db: Database, f: reports.CdrFilter) -> str:
    """The database's plan for the page query of ``f`` (newest first, 51 records)."""
    with captured(db) as seen, db.reading() as s:
        list(reports.iter_cdrs(s, f, newest_first=True, limit=51, page_size=51))
    statement, parameters = seen[-1]
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        if db.is_sqlite:
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            lines = [row[-1] for row in cur.fetchall()]
        else:
            cur.execute("EXPLAIN " + statement, parameters)
            lines = [row[0] for row in cur.fetchall()]
        cur.close()
    finally:
        raw.close()
    return "\n".join(lines)


def rss_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset VmHWM (the peak RSS) to the current RSS; False if the kernel will not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def log_in(client: httpx.AsyncClient, name: str, password: str) -> None:
    page = await client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    r = await client.post("/login", data={"csrf": token.group(1), "name": name,
                                          "password": password, "next": "/cdrs"})
    assert r.status_code == 303 and "ivr_session" in client.cookies, r.text[:300]


async def measure(label: str, url: str, requests: int, export: bool, plans: bool,
                  rows: int, traced: bool = False) -> Result:
    result = Result(label)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={}).replace(
            data_dir=Path(tmp), database_url=url, web_bind="")
        app = await asyncio.to_thread(App.build, settings)
        db = app.db
        name = "bench"
        try:
            password = await asyncio.to_thread(users.reset_password, db, name)
        except users.UserError:
            password = await asyncio.to_thread(users.add_user, db, name, users.Role.SUPPORT)
        with db.reading() as s:
            cards = list(s.scalars(select(Card.number).where(Card.number.like("40%"))))
            top = s.scalar(select(func.max(Cdr.id))) or 1
        from ivr.revalue.callbacks import LoopbackServer

        server = LoopbackServer(create_app(app), "127.0.0.1", 0, name="bench console")
        await server.start()
        rnd = random.Random(5)

        def day() -> str:
            d = START + timedelta(days=rnd.randrange(DAYS))
            return f"{d:%Y-%m-%d}"

        cases: list[tuple[str, Callable[[], dict[str, str]], int]] = [
            ("first page", lambda: {}, requests),
            ("deep page (?before= a random record)",
             lambda: {"before": str(rnd.randrange(1, top))}, requests),
            ("card", lambda: {"card": rnd.choice(cards)}, requests),
            ("destination prefix (2.5% of records)",
             lambda: {"destination": str(rnd.randrange(20, 20 + DESTINATIONS))}, requests),
            ("destination name", lambda: {
                "destination": f"destination {rnd.randrange(20, 20 + DESTINATIONS)}"},
             requests),
            ("time range (one day)", lambda: {"from": (d := day()), "to": d}, requests),
            ("status answered", lambda: {"status": "answered"}, requests),
            ("status unanswered", lambda: {"status": "unanswered"}, requests),
            ("card + status answered", lambda: {"card": rnd.choice(cards),
                                                "status": "answered"}, requests),
            ("destination prefix, no match (worst case)",
             lambda: {"destination": "99"}, max(3, requests // 10)),
        ]
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                await log_in(client, name, password)
                print(f"  {label}: load average {os.getloadavg()[0]:.1f}", flush=True)
                for case, params, n in cases if requests else []:
                    await client.get("/cdrs", params=params())  # warm-up
                    took, refused = [], 0
                    for _ in range(n):
                        query = params()
                        began = time.perf_counter()
                        r = await client.get("/cdrs", params=query)
                        took.append((time.perf_counter() - began) * 1000)
                        if r.status_code == 400 and 'id="search-error"' in r.text:
                            refused += 1  # stopped at the search's time limit
                            continue
                        assert r.status_code == 200, (case, query, r.status_code)
                        assert "data-uniqueid" in r.text or "+" in case or "no match" in case
                    result.timings[case] = (statistics.median(took), percentile(took, 99), n)
                    if refused:
                        result.refused[case] = refused
                    print(f"  {label:10} {case:44} p50 {result.timings[case][0]:7.1f} ms  "
                          f"p99 {result.timings[case][1]:7.1f} ms  (n={n}"
                          + (f", {refused} stopped at the limit" if refused else "") + ")",
                          flush=True)
                print(f"  {label}: load average {os.getloadavg()[0]:.1f}", flush=True)
                if export:
                    result.export = await export_all(client, rows, traced)
                    print(f"  {label:10} CSV export: {result.export}", flush=True)
        finally:
            await server.stop()
            if plans:
                for case, f in (
                    ("first page", reports.CdrFilter()),
                    ("card", reports.CdrFilter(card=cards[0])),
                    ("destination prefix", reports.CdrFilter(destination="33")),
                    ("time range", reports.CdrFilter(
                        start=START + timedelta(days=30), end=START + timedelta(days=31))),
                    ("status answered", reports.CdrFilter(status="answered")),
                ):
                    result.plans[case] = plan_of(db, f)
            await app.close()
            app.dispose()
    return result


async def export_all(client: httpx.AsyncClient, rows: int, traced: bool = False) -> str:
    """GET /cdrs.csv, counting lines as they come; the peak RSS growth meanwhile (and with
    ``traced``, the peak of what Python allocated, by tracemalloc: slower)."""
    before = rss_kib("VmRSS")
    peak_source = "VmHWM" if reset_peak() else "VmRSS at the end (no clear_refs)"
    if traced:
        tracemalloc.start()
    began = time.perf_counter()
    lines = size = 0
    async with client.stream("GET", "/cdrs.csv") as r:
        if r.status_code != 200:
            return f"refused: {r.status_code}"
        async for chunk in r.aiter_bytes():
            lines += chunk.count(b"\n")
            size += len(chunk)
    took = time.perf_counter() - began
    python = ""
    if traced:
        python = f", Python peak {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB"
        tracemalloc.stop()
    peak = rss_kib("VmHWM") if peak_source == "VmHWM" else rss_kib("VmRSS")
    records = lines - 1
    assert records == rows, (records, rows)
    return (f"{records:,} records, {size / 2**20:.0f} MiB in {took:.1f} s "
            f"({records / took:,.0f}/s), peak RSS +{(peak - before) / 1024:.0f} MiB "
            f"(from {before / 1024:.0f} MiB){python}")


def table(results: list[Result]) -> str:
    head = "| | " + " | ".join(f"{r.label} p50 / p99 (ms)" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for case in results[0].timings if results else []:
        cells = [f"{r.timings[case][0]:.1f} / {r.timings[case][1]:.1f}"
                 + (f" ({r.refused[case]} stopped)" if case in r.refused else "")
                 if case in r.timings else "-" for r in results]
        n = results[0].timings[case][2]
        lines.append(f"| {case} (n={n}) | " + " | ".join(cells) + " |")
    lines.append("| CSV export, all records | " + " | ".join(r.export or "-" for r in results)
                 + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100,
                        help="requests per search (0: the export only)")
    parser.add_argument("--postgres", default=os.environ.get("IVR_TEST_POSTGRES_URL"),
                        help="PostgreSQL server URL (default $IVR_TEST_POSTGRES_URL)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="fill the databases again")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--plans", action="store_true", help="print the query plans")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="the export's peak Python allocations too (slower)")
    args = parser.parse_args()
    targets = []
    if not args.no_sqlite:
        targets.append(("SQLite", sqlite_url(args.rows, args.rebuild)))
    if args.postgres and not args.no_postgres:
        targets.append(("PostgreSQL", postgres_url(args.postgres, args.rows, args.rebuild)))
    results = [asyncio.run(measure(label, url, args.requests, not args.no_export, args.plans,
                                   args.rows, args.tracemalloc)) for label, url in targets]
    print()
    print(f"{args.rows:,} call records; {args.requests} requests per search")
    print(table(results))
    if args.plans:
        for r in results:
            for case, plan in r.plans.items():
                print(f"\n{r.label}, {case}:\n{plan}")


if __name__ == "__main__":
    main()
