"""The dashboard's figures: calls up now, call attempts per second over the last minute,
today's traffic and money (UTC day) and the last 24 hours hour by hour.

Today's calls, minutes, revenue, top-ups, answer-seizure ratio and average call duration
are :func:`ivr.money.reports.report` over the day (the same answered rule and the same
top-up kinds as the reports); what is new here reads indexed columns only:

- calls up now: the ``active`` reservations (``reservations.status`` is indexed);
- attempts in the last minute: the call records started in it (``cdrs.started_at``) and
  the calls still up that started in it (active reservations, a handful);
- the last 24 hours: the call records per UTC hour and currency, grouped by the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.models import Cdr, Reservation, ReservationStatus
from ..db.types import as_utc
from .reports import ReportRow, _bucket, currency_decimals, report

ATTEMPT_WINDOW = timedelta(minutes=1)
HOURS = 24


@dataclass(frozen=True)
class Hour:
    """One UTC hour of the last 24: calls started in it, their billable seconds and their
    revenue per currency."""

    start: datetime
    calls: int = 0
    seconds: int = 0
    revenue: dict[str, Decimal] = field(default_factory=dict)

    @property
    def minutes(self) -> Decimal:
        return (Decimal(self.seconds) / 60).quantize(Decimal("0.01"))

    @property
    def label(self) -> str:
        return f"{self.start:%H}:00"


@dataclass(frozen=True)
class Figures:
    at: datetime  # when they were read (UTC)
    live_calls: int  # calls up now
    attempts: int  # call attempts started in the last minute
    today: list[ReportRow]  # per currency: every plan's currency, zeros included
    total: ReportRow  # today's calls of every currency together (no money in it)
    hours: list[Hour]  # the last 24 UTC hours, the current one last
    decimals: dict[str, int]  # per currency, as its plans show amounts

    @property
    def cps(self) -> Decimal:
        """Call attempts per second over the last minute (two decimals)."""
        seconds = int(ATTEMPT_WINDOW.total_seconds())
        return (Decimal(self.attempts) / seconds).quantize(Decimal("0.01"))

    @property
    def currencies(self) -> list[str]:
        return [row.currency for row in self.today]

    def revenue_per_hour(self, currency: str) -> list[Decimal]:
        return [h.revenue.get(currency, Decimal(0)) for h in self.hours]


def live_calls(s: Session) -> int:
    """Calls up now: their reservations are still active."""
    return int(s.scalar(select(func.count()).select_from(Reservation).where(
        Reservation.status == ReservationStatus.ACTIVE)) or 0)


def attempts_since(s: Session, since: datetime) -> int:
    """Call attempts started at or after ``since``: ended ones have a call record, the
    others are still up (an active reservation, without a record yet)."""
    since = since.astimezone(UTC)
    ended = s.scalar(select(func.count()).select_from(Cdr).where(Cdr.started_at >= since))
    up = s.scalar(select(func.count()).select_from(Reservation).where(
        Reservation.status == ReservationStatus.ACTIVE, Reservation.created_at >= since))
    return int(ended or 0) + int(up or 0)


def hourly(s: Session, now: datetime, hours: int = HOURS) -> list[Hour]:
    """The last ``hours`` UTC hours up to ``now`` (the current one last): calls started,
    billable seconds, revenue per currency; hours without calls are zeros."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    first = top - timedelta(hours=hours - 1)
    bucket = _bucket(s, Cdr.started_at, 3600).label("bucket")
    query = (select(bucket, Cdr.currency, func.count().label("calls"),
                    func.sum(Cdr.billable_seconds).label("seconds"),
                    func.sum(Cdr.cost).label("revenue"))
             .where(Cdr.started_at >= first, Cdr.started_at < top + timedelta(hours=1))
             .group_by(bucket, Cdr.currency))
    found: dict[int, list[tuple[str, int, int, Decimal]]] = {}
    for r in s.execute(query):
        found.setdefault(int(r.bucket), []).append(
            (r.currency, int(r.calls), int(r.seconds or 0), r.revenue or Decimal(0)))
    result = []
    for i in range(hours):
        start = first + timedelta(hours=i)
        rows = found.get(int(start.timestamp()) // 3600, [])
        result.append(Hour(start, sum(r[1] for r in rows), sum(r[2] for r in rows),
                           {currency: revenue for currency, _, _, revenue in rows}))
    return result


def figures(s: Session, now: datetime | None = None) -> Figures:
    """Everything the dashboard shows, read in ``s`` (a read-only session will do)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    decimals = currency_decimals(s)
    rows = {r.currency: r for r in report(s, "daily", start=midnight,
                                          end=midnight + timedelta(days=1))}
    label = f"{midnight:%Y-%m-%d}"
    today = [rows.get(currency) or ReportRow(label, None, currency)
             for currency in sorted(set(decimals) | set(rows))]
    total = ReportRow(label, None, "", calls=sum(r.calls for r in today),
                      answered=sum(r.answered for r in today),
                      seconds=sum(r.seconds for r in today), revenue=Decimal(0), topups=None)
    return Figures(as_utc(now), live_calls(s), attempts_since(s, now - ATTEMPT_WINDOW), today,
                   total, hourly(s, now), decimals)
