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
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    distinct,
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
from ..rating import (
    DeckError,
    Plan,
    Quote,
    RateRow,
    RateTable,
    Rounding,
    Window,
    max_seconds,
    parse_deck,
    quote,
)
from ..rating.deck import DeckFormat, check_rows, iter_deck, parse_days, parse_time, row_problems
from ..rating.diff import DeckDiff, diff_rows
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


class StaleRates(PlanError):
    """A plan's rates changed since a deck was compared with them: nothing applied."""

    def __init__(self, plan: str, expected: int, found: int) -> None:
        super().__init__(f"the rates of plan {plan!r} changed since this deck was compared "
                         f"with them (version {expected}, now {found}): nothing was applied; "
                         "upload the deck again to see what it changes now")
        self.plan = plan
        self.expected = expected
        self.found = found


def _locked_plan(session: Session, name: str) -> RatingPlan:
    """A plan, its row locked until the transaction ends (PostgreSQL; SQLite's writer
    holds the whole database already)."""
    row = session.scalar(select(RatingPlan).where(RatingPlan.name == name).with_for_update())
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
    only_plan: str | None = None,
    apply: bool = True,
    expect_versions: Mapping[str, int] | None = None,
    on_apply: Callable[[Session, ImportResult], None] | None = None,
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

    ``only_plan``: every line must be of that plan (others are bad lines). ``apply``
    False checks the deck and changes nothing (the result's versions are the plans'
    current ones). ``expect_versions``: refuse (:class:`StaleRates`, nothing changed) when
    a plan's rates version is no longer the one given, checked under the plan's row lock
    in the transaction that applies. ``on_apply(session, result)`` runs last in that
    transaction (an audit line written with the change).
    """
    stage = _stage_table()
    with db.engine.connect() as conn:
        conn.execution_options(ivr_read_only=True)  # SQLite: BEGIN, not BEGIN IMMEDIATE
        try:
            with conn.begin():
                stage.create(conn)
                counts, missing = _stage(conn, stage, source, format, plan, currency, tz,
                                         only_plan)
                if not apply:
                    now = dict(conn.execute(select(RatingPlan.name, RatingPlan.rates_version)
                                            .where(RatingPlan.name.in_(list(counts)))).all())
                    return ImportResult(counts, {name: now.get(name, 0) for name in counts})
            conn.execution_options(ivr_read_only=False)
            with conn.begin(), Session(bind=conn) as session:
                for name in missing:
                    if session.scalar(select(RatingPlan.id).where(RatingPlan.name == name)) is None:
                        create_plan(session, name, currency or "", tz)
                plans = {name: _locked_plan(session, name) for name in counts}
                for name, expected in (expect_versions or {}).items():
                    target = plans.get(name) or _locked_plan(session, name)
                    if target.rates_version != expected:
                        raise StaleRates(name, expected, target.rates_version)
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
                if on_apply is not None:
                    on_apply(session, ImportResult(counts, versions))
                    session.flush()
        finally:  # the connection goes back to the pool: leave no staged rows on it
            conn.execution_options(ivr_read_only=True)
            with contextlib.suppress(SQLAlchemyError), conn.begin():
                stage.drop(conn, checkfirst=True)
    return ImportResult(counts, versions)


def _stage(
    conn: Connection, stage: Table, source: Iterable[str], format: DeckFormat,
    plan: str | None, currency: str | None, tz: str, only_plan: str | None = None,
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
        if only_plan is not None and row.plan != only_plan:
            problems.append((row.line, f"plan {row.plan!r}: this deck is for plan "
                                       f"{only_plan!r} only"))
            continue
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

    def get(self, plan_id: int, session: Session | Connection | None = None) -> PlanRates:
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


def _version(session: Session | Connection, plan_id: int) -> int:
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


# --------------------------------------------------------------------------- plans listed


@dataclass(frozen=True)
class PlanSummary:
    name: str
    currency: str
    tz: str
    decimals: int
    rounding: str
    max_cost: Decimal | None
    rates_version: int
    rates: int  # rows
    prefixes: int  # distinct prefixes (all services)


def list_plans(db: Database) -> list[PlanSummary]:
    """Every plan with its rates version and how many rates and prefixes it has."""
    with db.reading() as s:
        counts = {plan_id: (rows, prefixes) for plan_id, rows, prefixes in s.execute(
            select(Rate.plan_id, func.count(), func.count(distinct(Rate.prefix)))
            .group_by(Rate.plan_id))}
        return [PlanSummary(p.name, p.currency, p.tz, p.decimals, p.rounding, p.max_cost,
                            p.rates_version, *counts.get(p.id, (0, 0)))
                for p in s.scalars(select(RatingPlan).order_by(RatingPlan.name))]


# --------------------------------------------------------------------------- quotes


def plan_table(db: Database, plan_name: str, cache: RatingCache | None = None
               ) -> tuple[Plan, RateTable]:
    """A plan and its compiled rates: from ``cache`` (refreshed when the plan's rates
    changed) or compiled here from the database."""
    if cache is not None:
        with db.reading() as s:
            plan_id = get_plan(s, plan_name).id
        rates = cache.load(plan_id)
        return rates.plan, rates.table
    with db.reading() as s:
        row = get_plan(s, plan_name)
        return plan_value(row), load_table(s, [row])


def quote_call(db: Database, plan_name: str, number: str, seconds: int, at: datetime,
               service: str = "voice", *, detail: bool = False,
               cache: RatingCache | None = None) -> tuple[Plan, Quote]:
    """What a call of ``seconds`` to ``number`` answered at ``at`` costs (NoRate when the
    plan has no rate for it); ``detail``: with its pieces."""
    plan, table = plan_table(db, plan_name, cache)
    return plan, quote(table, plan, number, seconds, at, service, detail=detail)


def longest_call(db: Database, plan_name: str, number: str, balance: Decimal, at: datetime,
                 service: str = "voice", *, cache: RatingCache | None = None
                 ) -> tuple[Plan, int, Quote]:
    """The longest call to ``number`` that ``balance`` pays for (0: refused, the balance
    does not cover the connect fee or first block), and the quote of that call (of 1 s
    when 0, for its prefix and destination)."""
    plan, table = plan_table(db, plan_name, cache)
    seconds = max_seconds(table, plan, number, balance, at, service)
    return plan, seconds, quote(table, plan, number, max(seconds, 1), at, service)


# --------------------------------------------------------------------------- staged decks
#
# A deck uploaded from the console is checked and compared with the plan's current rates,
# then kept (a file named by a random token, with its SHA-256 and the plan's rates version
# beside it) until someone confirms it: the confirmation applies exactly those bytes, and
# only if the plan's rates are still the ones it was compared with.

STAGED_TTL = 24 * 3600  # seconds an unconfirmed deck is kept
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


class DeckUnreadable(ValueError):
    """A deck file is not text this importer reads (not UTF-8, broken CSV quoting)."""


class StagedDeckGone(LookupError):
    """No staged deck with this token: applied already, expired, or never staged."""


@dataclass(frozen=True)
class StagedDeck:
    token: str
    plan: str
    format: str
    sha256: str
    version: int  # the plan's rates version the deck was compared with
    rows: int
    filename: str
    by: str
    diff: DeckDiff | None = None  # set when just staged


def stage_deck(db: Database, directory: Path, content: bytes, plan: str,
               format: DeckFormat = "ivr", *, filename: str = "", by: str = "") -> StagedDeck:
    """Check a deck for ``plan`` as ``ivr rates import`` does (DeckError with every bad
    line, PlanError, DeckUnreadable), compare it with the plan's current rates and keep
    it for :func:`apply_staged`. Nothing is applied."""
    text = _deck_text(content)
    try:
        import_deck(db, _lines(text), format, plan, only_plan=plan, apply=False)
        with db.reading() as s:
            row = get_plan(s, plan)
            version = row.rates_version
            old = load_rows(s, row)
        new = parse_deck(_lines(text), format=format, plan=plan)
    except csv.Error as exc:
        raise DeckUnreadable(f"not a CSV file this importer reads ({exc}); nothing was "
                             "imported") from None
    diff = diff_rows(old, new)
    _prune(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    staged = StagedDeck(token, plan, format, hashlib.sha256(content).hexdigest(), version,
                        len(new), filename[:200], by)
    _write_private(directory / f"{token}.csv", content)
    meta = {k: v for k, v in asdict(staged).items() if k != "diff"}
    _write_private(directory / f"{token}.json", json.dumps(meta).encode())
    return replace(staged, diff=diff)


def staged_deck(directory: Path, token: str) -> tuple[StagedDeck, bytes]:
    """A staged deck and its bytes, checked against the SHA-256 taken when staged."""
    if not _TOKEN.fullmatch(token):
        raise StagedDeckGone("no such staged deck")
    try:
        meta = json.loads((directory / f"{token}.json").read_text())
        content = (directory / f"{token}.csv").read_bytes()
    except (OSError, ValueError):
        raise StagedDeckGone("this deck is no longer waiting for confirmation (applied "
                             "already, or expired): upload it again") from None
    staged = StagedDeck(**meta)
    if hashlib.sha256(content).hexdigest() != staged.sha256:
        raise StagedDeckGone("the staged copy of this deck changed since it was compared: "
                             "upload it again")
    return staged, content


def apply_staged(db: Database, directory: Path, token: str, *,
                 on_apply: Callable[[Session, StagedDeck, ImportResult], None] | None = None,
                 ) -> tuple[StagedDeck, ImportResult]:
    """Apply the deck staged as ``token``: exactly the bytes that were compared, and only
    while the plan's rates version is still the one they were compared with
    (:class:`StaleRates` otherwise; nothing applied). ``on_apply`` runs in the
    transaction that applies. The staged copy is removed once applied or stale."""
    staged, content = staged_deck(directory, token)

    def hook(session: Session, result: ImportResult) -> None:
        if on_apply is not None:
            on_apply(session, staged, result)

    try:  # checked again as it is applied: the same bytes, the same checks
        result = import_deck(db, _lines(_deck_text(content)), cast(DeckFormat, staged.format),
                             staged.plan, only_plan=staged.plan,
                             expect_versions={staged.plan: staged.version}, on_apply=hook)
    except StaleRates:
        discard_staged(directory, token)
        raise
    discard_staged(directory, token)
    return staged, result


def discard_staged(directory: Path, token: str) -> None:
    if _TOKEN.fullmatch(token):
        for ext in ("csv", "json"):
            (directory / f"{token}.{ext}").unlink(missing_ok=True)


def _deck_text(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeckUnreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                             "nothing was imported") from None


def _lines(text: str) -> Iterable[str]:
    return io.StringIO(text, newline="")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _prune(directory: Path) -> None:
    """Remove staged decks older than STAGED_TTL."""
    if not directory.is_dir():
        return
    cutoff = time.time() - STAGED_TTL
    for path in directory.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
