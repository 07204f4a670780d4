"""Rate decks in the database: plans, importing a deck (one transaction), and the
in-memory rate tables the call flows quote from.

A call never reads rates from the database: :class:`RatingCache` keeps one compiled
:class:`~ivr.rating.RateTable` per plan and rebuilds it, outside any transaction, when an
import bumps the plan's ``rates_version`` (checked at most every ``ttl`` seconds).

:func:`import_deck` streams a deck file in bounded memory: each line is parsed and checked
as it is read and staged in a temporary table, the checks across lines run group by group
from there, and only a deck with no problem replaces the plans' rates (one transaction).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import Rate, RatingPlan
from ..db.types import MONEY_SCALE, Money, to_micros
from ..rating import DeckError, Plan, RateRow, RateTable, Rounding, Window
from ..rating.deck import DeckFormat, check_rows, iter_deck, parse_days, parse_time, row_problems
from ..rating.money import decimals_of

log = logging.getLogger("ivr.rates")


class PlanError(ValueError):
    """A plan is unknown or its settings are invalid."""


def plan_value(row: RatingPlan) -> Plan:
    return Plan(
        name=row.name,
        currency=row.currency,
        tz=row.tz,
        decimals=row.decimals,
        rounding=Rounding(row.rounding),
        max_cost=row.max_cost,
    )


def create_plan(
    session: Session,
    name: str,
    currency: str,
    tz: str = "UTC",
    decimals: int = 4,
    rounding: str = "up",
    max_cost: Decimal | None = None,
) -> RatingPlan:
    try:
        value = Plan(name, currency.upper(), tz, decimals, Rounding(rounding), max_cost)
    except (ValueError, KeyError) as exc:
        raise PlanError(f"plan {name!r}: {exc}") from None
    if session.scalar(select(RatingPlan).where(RatingPlan.name == name)) is not None:
        raise PlanError(f"plan {name!r} already exists")
    row = RatingPlan(
        name=value.name,
        currency=value.currency,
        tz=value.tz,
        decimals=value.decimals,
        rounding=value.rounding.value,
        max_cost=value.max_cost,
        rates_version=0,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return row


def get_plan(session: Session, name: str) -> RatingPlan:
    row = session.scalar(select(RatingPlan).where(RatingPlan.name == name))
    if row is None:
        raise PlanError(f"no plan named {name!r} (create it with `ivr plans create`)")
    return row


@dataclass(frozen=True)
class ImportResult:
    plans: dict[str, int]  # plan name -> rows imported
    versions: dict[str, int]


def import_rows(session: Session, rows: Sequence[RateRow]) -> ImportResult:
    """Replace the rates of every plan named in ``rows``, inside the caller's transaction.

    The rows were parsed (and refused with line numbers) before this; here they are also
    compiled once against the plans, so a deck the engine cannot use never lands.
    """
    names = sorted({r.plan for r in rows})
    if not names:
        raise DeckError([(1, "the deck has no rate rows")])
    plans = {name: get_plan(session, name) for name in names}
    too_big = [(r.line, "; ".join(bad)) for r in rows if (bad := storage_problems(r))]
    if too_big:
        raise DeckError(too_big)
    RateTable.build([plan_value(p) for p in plans.values()], rows)  # raises DeckError
    counts: dict[str, int] = {}
    versions: dict[str, int] = {}
    for name, plan in plans.items():
        session.execute(delete(Rate).where(Rate.plan_id == plan.id))
        batch = [_rate_values(plan.id, r) for r in rows if r.plan == name]
        for start in range(0, len(batch), 5000):
            session.execute(insert(Rate), batch[start : start + 5000])
        plan.rates_version += 1
        counts[name] = len(batch)
        versions[name] = plan.rates_version
    session.flush()
    return ImportResult(counts, versions)


# What the rates table can hold (PostgreSQL's INTEGER, the Money type's micro-units, the
# column widths), and sane bounds: a rate unit or increment longer than a day, or an
# amount of a trillion, is a typo (and a unit that large slows every quote).
MAX_DIGITS = 12
MAX_AMOUNT = Decimal(10) ** MAX_DIGITS
_MICRO = Decimal(1).scaleb(-MONEY_SCALE)
MAX_UNIT = 86_400
MAX_INT = 2**31 - 1
WIDTHS = {"plan": 64, "prefix": 32, "destination": 128, "service": 16}
MAX_PROBLEMS = 1000  # a deck's problems kept (and counted beyond)
BATCH = 5000


def storage_problems(row: RateRow) -> list[str]:
    """What the database cannot keep of a row that is valid for the engine."""
    out = []
    for name in ("rate", "connect_fee"):
        value: Decimal = getattr(row, name)
        if not isinstance(value, Decimal) or not value.is_finite():
            continue  # row_problems says so
        if value and value.adjusted() >= MAX_DIGITS:
            out.append(f"{name} {value} is too large (below {MAX_AMOUNT:,} please)")
        elif decimals_of(value) > MONEY_SCALE and value != value.quantize(_MICRO):
            out.append(f"{name} {value} has more than {MONEY_SCALE} decimal places")
    for name, limit in (("rate_unit", MAX_UNIT), ("increment", MAX_UNIT),
                        ("from_second", MAX_INT)):
        value_ = getattr(row, name)
        if type(value_) is int and value_ > limit:
            out.append(f"{name} {value_} is too large (at most {limit:,})")
    for name, width in WIDTHS.items():
        text = getattr(row, name)
        if isinstance(text, str) and len(text) > width:
            out.append(f"{name} is longer than {width} characters")
    return out


class _Problems(list[tuple[int, str]]):
    """A deck's problems: the first MAX_PROBLEMS kept, all counted."""

    total = 0

    def append(self, item: tuple[int, str]) -> None:
        self.total += 1
        if len(self) < MAX_PROBLEMS:
            super().append(item)

    def extend(self, items: Iterable[tuple[int, str]]) -> None:
        for item in items:
            self.append(item)


def import_deck(
    db: Database,
    source: Iterable[str],
    format: DeckFormat = "ivr",
    plan: str | None = None,
    *,
    currency: str | None = None,
    tz: str = "UTC",
) -> ImportResult:
    """Replace the rates of every plan named in a deck read from ``source`` (lines of
    CSV), in bounded memory; all or nothing.

    First, with no write lock (SQLite: a deferred transaction that writes only this
    connection's temporary table): each line is parsed and checked as it is read (the
    engine's rules, and what the database can hold) and staged in batches, then the
    checks across lines (a from_second 0 row per window, no duplicate, no overlapping
    windows, one destination per prefix) run on the staged rows, group by group. Any
    problem raises DeckError with the line numbers, and nothing is changed. Then, in one
    short transaction, the staged rows replace the plans' rates. They passed every check
    RateTable.build makes, so the deck compiles. The plans a deck names must exist,
    unless ``currency`` is given: missing ones are then created with it (and ``tz``).
    """
    stage = _stage_table()
    with db.engine.connect() as conn:
        conn.execution_options(ivr_read_only=True)  # SQLite: BEGIN, not BEGIN IMMEDIATE
        try:
            with conn.begin():
                stage.create(conn)
                counts, missing = _stage(conn, stage, source, format, plan, currency, tz)
            conn.execution_options(ivr_read_only=False)
            with conn.begin(), Session(bind=conn) as session:
                for name in missing:
                    if session.scalar(select(RatingPlan.id).where(RatingPlan.name == name)) is None:
                        create_plan(session, name, currency or "", tz)
                plans = {name: get_plan(session, name) for name in counts}
                versions: dict[str, int] = {}
                for name, target in plans.items():
                    session.execute(delete(Rate).where(Rate.plan_id == target.id))
                    target.rates_version += 1
                    versions[name] = target.rates_version
                session.flush()
                columns = [c.name for c in stage.columns if c.name not in ("plan", "line")]
                session.execute(insert(Rate).from_select(
                    ["plan_id", *columns],
                    select(RatingPlan.id, *(stage.c[c] for c in columns))
                    .join(RatingPlan, RatingPlan.name == stage.c.plan)))
        finally:  # the connection goes back to the pool: leave no staged rows on it
            conn.execution_options(ivr_read_only=True)
            with contextlib.suppress(SQLAlchemyError), conn.begin():
                stage.drop(conn, checkfirst=True)
    return ImportResult(counts, versions)


def _stage(
    conn: Connection, stage: Table, source: Iterable[str], format: DeckFormat,
    plan: str | None, currency: str | None, tz: str,
) -> tuple[dict[str, int], list[str]]:
    """Parse, check and stage every line; (rows by plan, plans to create) or DeckError."""
    problems = _Problems()
    counts: dict[str, int] = {}
    missing: list[str] = []
    batch: list[tuple[object, ...]] = []
    texts: dict[Window, tuple[str, str, str]] = {}
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(f'"{c.name}"' for c in stage.columns)
    sql = f"INSERT INTO {stage.name} ({columns}) VALUES ({', '.join([mark] * len(stage.columns))})"
    for row in iter_deck(source, problems, format, plan):
        if row.plan not in counts:
            counts[row.plan] = 0
            if conn.scalar(select(RatingPlan.id).where(RatingPlan.name == row.plan)) is None:
                if not currency:
                    raise PlanError(f"no plan named {row.plan!r} (create it with "
                                    "`ivr plans create`, or import with --currency)")
                try:
                    Plan(row.plan, currency.upper(), tz)
                except (ValueError, KeyError) as exc:
                    raise PlanError(f"plan {row.plan!r}: {exc}") from None
                missing.append(row.plan)
        bad = row_problems(row) + storage_problems(row)
        if bad:
            problems.append((row.line, "; ".join(bad)))
        if problems.total:
            continue  # keep reading, to report every bad line; stage nothing more
        when = texts.get(row.window)
        if when is None:
            when = texts[row.window] = (row.window.days_text, row.window.start_text,
                                        row.window.end_text)
        batch.append((row.plan, row.prefix, row.destination, to_micros(row.connect_fee),
                      to_micros(row.rate), row.rate_unit, row.increment, row.from_second,
                      *when, row.service, row.line))
        counts[row.plan] += 1
        if len(batch) >= BATCH:
            conn.exec_driver_sql(sql, batch)  # executemany, as plain tuples: 3x faster
            batch.clear()
    if batch:
        conn.exec_driver_sql(sql, batch)
    if not problems.total and not counts:
        problems.append((1, "the deck has no rate rows"))
    if not problems.total:
        problems.extend(_check_groups(conn, stage))
    if problems.total:
        raise DeckError(problems, problems.total)
    return counts, missing


def _stage_table() -> Table:
    """The temporary table a deck is staged in (this connection's own)."""
    return Table(
        "ivr_deck_import", MetaData(),
        Column("plan", String), Column("prefix", String), Column("destination", String),
        Column("connect_fee", Money), Column("rate", Money), Column("rate_unit", Integer),
        Column("increment", Integer), Column("from_second", Integer), Column("days", String),
        Column("start", String), Column("end", String), Column("service", String),
        Column("line", Integer),
        prefixes=["TEMPORARY"],
    )


def _check_groups(conn: Connection, stage: Table) -> list[tuple[int, str]]:
    """check_rows on every (plan, service, prefix) that has several rows or a row from a
    later second (the others, one row from second 0, are fine on their own), streamed
    group by group."""
    c = stage.c
    key = (c.plan, c.service, c.prefix)
    suspect = (
        select(*key).group_by(*key)
        .having(or_(func.count() > 1, func.max(c.from_second) > 0))
        .subquery()
    )
    query = (
        select(stage)
        .join(suspect, (suspect.c.plan == c.plan) & (suspect.c.service == c.service)
              & (suspect.c.prefix == c.prefix))
        .order_by(*key, c.line)
    )
    windows: dict[tuple[str, str, str], Window] = {}
    problems: list[tuple[int, str]] = []
    result = conn.execute(query.execution_options(yield_per=BATCH))
    for _, group in itertools.groupby(result, key=lambda r: (r.plan, r.service, r.prefix)):
        problems += check_rows([_staged_row(r, windows) for r in group])
        if len(problems) >= MAX_PROBLEMS:
            break
    result.close()
    return problems


def _staged_row(r: Row[Any], windows: dict[tuple[str, str, str], Window]) -> RateRow:
    wkey = (r.days, r.start, r.end)
    window = windows.get(wkey)
    if window is None:
        window = windows[wkey] = Window(
            parse_days(wkey[0]), parse_time(wkey[1], end=False), parse_time(wkey[2], end=True))
    return RateRow(r.plan, r.prefix, r.rate, r.destination, r.connect_fee, r.rate_unit,
                   r.increment, r.from_second, window, r.service, r.line)


def _rate_values(plan_id: int, r: RateRow) -> dict[str, object]:
    return {
        "plan_id": plan_id,
        "prefix": r.prefix,
        "destination": r.destination,
        "connect_fee": r.connect_fee,
        "rate": r.rate,
        "rate_unit": r.rate_unit,
        "increment": r.increment,
        "from_second": r.from_second,
        "days": r.window.days_text,
        "start": r.window.start_text,
        "end": r.window.end_text,
        "service": r.service,
    }


def load_rows(session: Session, plan: RatingPlan) -> list[RateRow]:
    result = session.execute(
        select(
            Rate.prefix, Rate.destination, Rate.connect_fee, Rate.rate, Rate.rate_unit,
            Rate.increment, Rate.from_second, Rate.days, Rate.start, Rate.end, Rate.service,
        ).where(Rate.plan_id == plan.id)
    )
    windows: dict[tuple[str, str, str], Window] = {}
    rows = []
    for prefix, dest, fee, rate, unit, inc, frm, days, start, end, service in result:
        key = (days, start, end)
        window = windows.get(key)
        if window is None:
            window = Window(
                parse_days(days), parse_time(start, end=False), parse_time(end, end=True)
            )
            windows[key] = window
        rows.append(RateRow(plan.name, prefix, rate, dest, fee, unit, inc, frm, window, service))
    return rows


def load_table(session: Session, plans: Iterable[RatingPlan]) -> RateTable:
    plans = list(plans)
    rows: list[RateRow] = []
    for plan in plans:
        rows.extend(load_rows(session, plan))
    return RateTable.build([plan_value(p) for p in plans], rows)


@dataclass(frozen=True)
class PlanRates:
    plan_id: int
    plan: Plan
    table: RateTable
    version: int


class RatesNotLoaded(LookupError):
    """A plan's rate table was asked for inside a transaction before it was ever compiled.
    Nothing is compiled under a transaction's locks: leave the transaction, call
    :meth:`RatingCache.load` (no transaction open) and try again."""

    def __init__(self, plan_id: int) -> None:
        super().__init__(f"the rates of plan {plan_id} are not compiled yet")
        self.plan_id = plan_id


class RatingCache:
    """Compiled rate tables by plan id, shared by all calls of a process.

    A table is compiled outside any transaction, in a read-only snapshot of its own
    (:meth:`Database.reading`): never under the write lock or an account's row lock, so a
    deck of a million rows stalls no call or credit. Inside a transaction (``get`` with a
    session) the plan's version is checked at most every ``ttl`` seconds; when an import
    changed it, the table is recompiled in a background thread and calls go on with the
    previous table until the new one is ready (a live call keeps the rates it was
    authorized with anyway: its reservation holds a snapshot of them, ivr.money.ledger).
    """

    def __init__(self, db: Database, ttl: float = 5.0) -> None:
        self.db = db
        self.ttl = ttl
        self._lock = threading.Lock()  # one compile at a time
        self._tables: dict[int, PlanRates] = {}
        self._checked: dict[int, float] = {}
        self._loading: dict[int, threading.Thread] = {}
        self._starting = threading.Lock()

    def get(self, plan_id: int, session: Session | None = None) -> PlanRates:
        """The plan's table. With ``session`` (inside the caller's transaction) this only
        reads the plan's version, at most every ``ttl`` seconds, and never compiles:
        :class:`RatesNotLoaded` if the plan was never loaded. Without, it loads or
        refreshes the table itself (call it outside any transaction)."""
        cached = self._tables.get(plan_id)
        if cached is not None and time.monotonic() - self._checked.get(plan_id, 0) < self.ttl:
            return cached
        if session is None:
            return self.load(plan_id)
        version = _version(session, plan_id)
        if cached is None:
            raise RatesNotLoaded(plan_id)
        if cached.version == version:
            self._checked[plan_id] = time.monotonic()
        else:
            self._refresh_in_background(plan_id)
        return cached

    def load(self, plan_id: int) -> PlanRates:
        """Compile the plan's table if its version changed (or it was never loaded), in a
        read-only snapshot of its own; blocks while another thread compiles."""
        with self._lock:
            cached = self._tables.get(plan_id)
            with self.db.reading() as s:
                fresh = _compile(s, plan_id, cached)
            self._tables[plan_id] = fresh
            self._checked[plan_id] = time.monotonic()
            return fresh

    def load_all(self) -> int:
        """Compile every plan's table (at server start, so that no caller waits for a big
        deck to compile); returns how many plans were loaded."""
        with self.db.reading() as s:
            plan_ids = list(s.scalars(select(RatingPlan.id)))
        for plan_id in plan_ids:
            self.load(plan_id)
        return len(plan_ids)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for background compiles; False if one is still running at ``timeout``."""
        for thread in list(self._loading.values()):
            thread.join(timeout)
        return not any(t.is_alive() for t in self._loading.values())

    def _refresh_in_background(self, plan_id: int) -> None:
        with self._starting:
            thread = self._loading.get(plan_id)
            if thread is not None and thread.is_alive():
                return
            thread = threading.Thread(target=self._background_load, args=(plan_id,),
                                      name=f"ivr-rates-{plan_id}", daemon=True)
            self._loading[plan_id] = thread
            thread.start()

    def _background_load(self, plan_id: int) -> None:
        try:
            fresh = self.load(plan_id)
            log.info("rates of plan %s (version %s) compiled: %s prefixes", fresh.plan.name,
                     fresh.version, _prefixes(fresh))
        except Exception as exc:  # the previous table stays in use; retried on next check
            log.warning("rates of plan %s not recompiled: %s", plan_id, exc)

    def invalidate(self) -> None:
        with self._lock:
            self._tables.clear()
            self._checked.clear()


def _version(session: Session, plan_id: int) -> int:
    version = session.scalar(select(RatingPlan.rates_version).where(RatingPlan.id == plan_id))
    if version is None:
        raise PlanError(f"no plan with id {plan_id}")
    return version


def _compile(session: Session, plan_id: int, cached: PlanRates | None) -> PlanRates:
    version = _version(session, plan_id)
    if cached is not None and cached.version == version:
        return cached
    plan = session.get(RatingPlan, plan_id)
    assert plan is not None
    return PlanRates(plan_id, plan_value(plan), load_table(session, [plan]), version)


def _prefixes(rates: PlanRates) -> int:
    return sum(len(pr.entries) + (pr.fallback is not None) for pr in rates.table.index.values())
