"""Rating benchmark: in-process quotes per second on the ASTPP A-Z deck, side by side with
an A2Billing-style baseline (one SQL query per call over an indexed prefix table).

    python bench/rating.py [--seconds 3] [--count 100000] [--deck PATH] [--seed 1]

Both sides quote the same pre-generated calls (a random deck prefix plus random digits up
to 12 digits, 2 % fully random numbers; 1-3600 s) and must agree on every cost checked.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import sqlalchemy as sa

from ivr.rating import NoRate, Plan, RateRow, RateTable, Window, load_deck, max_seconds, quote

DEFAULT_DECK = (
    Path(__file__).resolve().parents[2] / "shared/data/ratedecks/astpp_outbound_routes_AZ.csv"
)
PLAN = Plan("bench", "USD", decimals=4, rounding="up")
AT = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)
WEEKDAYS = (0, 1, 2, 3, 4)
Call = tuple[str, int]


def make_calls(rows: Sequence[RateRow], count: int, seed: int) -> list[Call]:
    rnd = random.Random(seed)
    prefixes = [r.prefix for r in rows]
    calls = []
    for _ in range(count):
        if rnd.random() < 0.02:
            number = str(rnd.randrange(10**10, 10**11))
        else:
            prefix = rnd.choice(prefixes)
            number = prefix + "".join(rnd.choices("0123456789", k=max(0, 12 - len(prefix))))
        calls.append((number, rnd.randint(1, 3600)))
    return calls


def rate_loop(calls: list[Call], budget: float, run: Callable[[list[Call]], object]) -> float:
    """Quotes per second of ``run`` over ``calls``, repeated for at least ``budget`` s."""
    done, elapsed = 0, 0.0
    gc.collect()
    while elapsed < budget:
        start = time.perf_counter()
        run(calls)
        elapsed += time.perf_counter() - start
        done += len(calls)
    return done / elapsed


def engine_run(table: RateTable) -> Callable[[list[Call]], None]:
    def run(calls: list[Call]) -> None:
        for number, seconds in calls:
            try:
                quote(table, PLAN, number, seconds, AT)
            except NoRate:
                pass

    return run


def windowed_run(
    table: RateTable, plan: Plan, times: list[datetime]
) -> Callable[[list[Call]], None]:
    """quote() at the given times (random in a week), on a peak/night/weekend deck."""

    def run(calls: list[Call]) -> None:
        for (number, seconds), at in zip(calls, times, strict=True):
            try:
                quote(table, plan, number, seconds, at)
            except NoRate:
                pass

    return run


def windowed_table(rows: Sequence[RateRow]) -> tuple[RateTable, Plan]:
    peak, night = Window(WEEKDAYS, 7 * 60, 19 * 60), Window(WEEKDAYS, 19 * 60, 7 * 60)
    weekend = Window((5, 6))
    three = [
        replace(r, plan="windows", window=w, rate=r.rate * k)
        for r in rows
        for w, k in ((peak, 1), (night, Decimal("0.5")), (weekend, Decimal("0.25")))
    ]
    plan = Plan("windows", "USD", tz="Europe/London", decimals=4, rounding="up")
    return RateTable.build([plan], three), plan


def max_seconds_run(table: RateTable) -> Callable[[list[Call]], None]:
    balance = Decimal("5.00")

    def run(calls: list[Call]) -> None:
        for number, _ in calls:
            try:
                max_seconds(table, PLAN, number, balance, AT)
            except NoRate:
                pass

    return run


def engine_cost(table: RateTable, number: str, seconds: int) -> Decimal | None:
    try:
        return quote(table, PLAN, number, seconds, AT).cost
    except NoRate:
        return None


def each(one: Callable[[str, int], object]) -> Callable[[list[Call]], None]:
    def run(calls: list[Call]) -> None:
        for number, seconds in calls:
            one(number, seconds)

    return run


class Baseline:
    """A2Billing's way: for each call one query that ORs every prefix of the number, the
    longest match wins, then the cost in Decimal. sqlite3 of the standard library."""

    def __init__(self, rows: Sequence[RateRow], path: str) -> None:
        if any(r.from_second or r.window.label != "* 00:00-24:00" for r in rows):
            raise SystemExit("the baseline only rates single-step, all-week decks")
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE rates (prefix TEXT NOT NULL, destination TEXT, connect_fee TEXT,"
            " rate TEXT, rate_unit INTEGER, increment INTEGER)"
        )
        self.db.executemany(
            "INSERT INTO rates VALUES (?, ?, ?, ?, ?, ?)",
            [
                (r.prefix, r.destination, str(r.connect_fee), str(r.rate), r.rate_unit, r.increment)
                for r in rows
            ],
        )
        self.db.execute("CREATE INDEX rates_prefix ON rates (prefix)")
        self.db.commit()
        self.db.execute("ANALYZE")
        self.maxlen = max(len(r.prefix) for r in rows)
        self.quantum = Decimal(1).scaleb(-PLAN.decimals)
        self.queries: dict[int, str] = {}

    def sql(self, n: int) -> str:
        text = self.queries.get(n)
        if text is None:
            marks = ",".join("?" * n)
            text = (
                "SELECT prefix, connect_fee, rate, rate_unit, increment FROM rates"
                f" WHERE prefix IN ({marks}) ORDER BY length(prefix) DESC LIMIT 1"
            )
            self.queries[n] = text
        return text

    def __call__(self, number: str, seconds: int) -> Decimal | None:
        prefixes = [number[:n] for n in range(1, min(len(number), self.maxlen) + 1)]
        return self.cost(self.db.execute(self.sql(len(prefixes)), prefixes).fetchone(), seconds)

    def cost(self, row: Sequence | None, seconds: int) -> Decimal | None:
        if row is None:
            return None
        _, connect, rate, unit, increment = row
        charged = -(-seconds // increment) * increment
        cost = Decimal(connect) + Decimal(rate) * charged / unit
        return cost.quantize(self.quantum, rounding=ROUND_CEILING)

    def close(self) -> None:
        self.db.close()


class AlchemyBaseline(Baseline):
    """The same query through SQLAlchemy Core (the project's database layer)."""

    def __init__(self, rows: Sequence[RateRow], path: str) -> None:
        super().__init__(rows, path)
        self.db.close()
        rates = sa.table(
            "rates",
            *(sa.column(c) for c in ("prefix", "connect_fee", "rate", "rate_unit", "increment")),
        )
        self.engine = sa.create_engine(f"sqlite:///{path}")
        self.conn = self.engine.connect()
        self.stmt = (
            sa.select(
                rates.c.prefix,
                rates.c.connect_fee,
                rates.c.rate,
                rates.c.rate_unit,
                rates.c.increment,
            )
            .where(rates.c.prefix.in_(sa.bindparam("prefixes", expanding=True)))
            .order_by(sa.func.length(rates.c.prefix).desc())
            .limit(1)
        )

    def __call__(self, number: str, seconds: int) -> Decimal | None:
        prefixes = [number[:n] for n in range(1, min(len(number), self.maxlen) + 1)]
        row = self.conn.execute(self.stmt, {"prefixes": prefixes}).first()
        return self.cost(row, seconds)

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return float("nan"), peak


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per side (3)")
    parser.add_argument("--count", type=int, default=100_000, help="calls generated (100000)")
    parser.add_argument("--deck", type=Path, default=DEFAULT_DECK, help="ASTPP deck CSV")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core

    start = time.perf_counter()
    rows = load_deck(args.deck, format="astpp", plan=PLAN.name)
    parse_s = time.perf_counter() - start
    gc.collect()
    start = time.perf_counter()
    table = RateTable.build([PLAN], rows)
    build_s = time.perf_counter() - start
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    traced = RateTable.build([PLAN], rows)  # the same build again, traced for its memory
    gc.collect()
    table_mb = (tracemalloc.get_traced_memory()[0] - before) / 2**20
    tracemalloc.stop()
    del traced
    gc.collect()
    rss_loaded, _ = rss_mb()

    calls = make_calls(rows, args.count, args.seed)
    results = [("engine (RateTable, quote())", rate_loop(calls, args.seconds, engine_run(table)))]
    results.append(
        (
            "engine max_seconds(), balance 5.00",
            rate_loop(calls, args.seconds, max_seconds_run(table)),
        )
    )
    w_table, w_plan = windowed_table(rows)
    rnd = random.Random(args.seed)
    times = [AT + timedelta(seconds=rnd.randrange(7 * 86400)) for _ in calls]
    windowed = rate_loop(calls, args.seconds, windowed_run(w_table, w_plan, times))
    results.append(("engine, 3 windows/prefix, any time", windowed))
    sample = calls[:2000]
    expected = [engine_cost(table, n, s) for n, s in sample]
    mismatches = 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind in (
            ("baseline sqlite3, 1 query/call", Baseline),
            ("baseline SQLAlchemy Core, 1 query", AlchemyBaseline),
        ):
            base = kind(rows, os.path.join(tmp, f"{kind.__name__}.sqlite"))
            mismatches += sum(base(n, s) != e for (n, s), e in zip(sample, expected, strict=True))
            few = calls[: max(1000, min(len(calls), int(args.seconds * 10_000)))]
            results.append((label, rate_loop(few, args.seconds, each(base))))
            base.close()
    _, peak = rss_mb()

    engine_qps = results[0][1]
    print(
        f"rating bench: {args.deck.name}, {len(rows):,} prefixes, {len(calls):,} calls, "
        f"one core, Python {platform.python_version()}"
    )
    print(f"{'':36}{'quotes/s':>11}{'us/quote':>10}{'engine is':>11}")
    for label, qps in results:
        ratio = f"{engine_qps / qps:>10.1f}x" if label.startswith("baseline") else ""
        print(f"{label:36}{qps:>11,.0f}{1e6 / qps:>10.2f}{ratio}")
    print(
        f"deck parse {parse_s:.2f} s, table build {build_s:.2f} s, table memory "
        f"(tracemalloc delta of a build) {table_mb:.1f} MB, "
        f"process RSS {rss_loaded:.0f} MB with deck and table loaded "
        f"(peak of the whole run {peak:.0f} MB)"
    )
    refused = sum(e is None for e in expected)
    print(
        f"agreement on {len(sample):,} sampled calls x 2 baselines: {mismatches} different "
        f"costs ({refused} numbers refused by all)"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
