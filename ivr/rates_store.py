"""Rate decks in the database: plans, importing a deck (one transaction), and the
in-memory rate tables the call flows quote from.

A call never reads rates from the database: :class:`RatingCache` keeps one compiled
:class:`~ivr.rating.RateTable` per plan and rebuilds it when an import bumps the plan's
``rates_version`` (checked at most every ``ttl`` seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from .db import Database
from .db.models import Rate, RatingPlan
from .rating import DeckError, Plan, RateRow, RateTable, Rounding, Window
from .rating.deck import parse_days, parse_time


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


class RatingCache:
    """Compiled rate tables by plan id, shared by all calls of a process."""

    def __init__(self, db: Database, ttl: float = 5.0) -> None:
        self.db = db
        self.ttl = ttl
        self._lock = threading.Lock()
        self._tables: dict[int, PlanRates] = {}
        self._checked: dict[int, float] = {}

    def get(self, plan_id: int, session: Session | None = None) -> PlanRates:
        now = time.monotonic()
        cached = self._tables.get(plan_id)
        if cached is not None and now - self._checked.get(plan_id, 0) < self.ttl:
            return cached
        with self._lock:
            cached = self._tables.get(plan_id)
            if session is None:
                with self.db.transaction() as own:
                    fresh = self._refresh(own, plan_id, cached)
            else:
                fresh = self._refresh(session, plan_id, cached)
            self._tables[plan_id] = fresh
            self._checked[plan_id] = time.monotonic()
            return fresh

    def _refresh(self, session: Session, plan_id: int, cached: PlanRates | None) -> PlanRates:
        version = session.scalar(
            select(RatingPlan.rates_version).where(RatingPlan.id == plan_id)
        )
        if version is None:
            raise PlanError(f"no plan with id {plan_id}")
        if cached is not None and cached.version == version:
            return cached
        plan = session.get(RatingPlan, plan_id)
        assert plan is not None
        return PlanRates(plan_id, plan_value(plan), load_table(session, [plan]), version)

    def invalidate(self) -> None:
        with self._lock:
            self._tables.clear()
            self._checked.clear()


def bump_version(session: Session, plan_id: int) -> None:
    session.execute(
        update(RatingPlan)
        .where(RatingPlan.id == plan_id)
        .values(rates_version=RatingPlan.rates_version + 1)
    )
